package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

func newKMSAuditCmd(env *Env, o *kmsOpts) *cobra.Command {
	c := &cobra.Command{Use: "audit", Short: "Read and verify the hash-chained audit log (admin)"}
	c.AddCommand(newAuditListCmd(env, o), newAuditVerifyCmd(env, o))
	return c
}

// auditListOptions are the flags of `veil kms audit list`.
type auditListOptions struct {
	*kmsOpts
	key string // only entries naming this key id
}

func newAuditListCmd(env *Env, ko *kmsOpts) *cobra.Command {
	o := &auditListOptions{kmsOpts: ko}
	c := &cobra.Command{
		Use: "list [--key KEYID]", Short: "List audit entries", Args: exactArgs(0),
		RunE: func(c *cobra.Command, _ []string) error { return o.run(c.Context(), env) },
	}
	c.Flags().StringVar(&o.key, "key", "", "only entries naming this key id")
	return c
}

func (o *auditListOptions) run(ctx context.Context, env *Env) error {
	cl, err := o.client()
	if err != nil {
		return err
	}
	es, err := cl.AuditEntries(ctx, o.key, 0, 0)
	if err != nil {
		return kmsErr(err)
	}
	return o.print(env, es, func(w io.Writer) {
		for _, e := range es {
			who := e.Actor.Kind
			if e.Actor.AppID != "" {
				who += ":" + e.Actor.AppID
			}
			if e.Actor.Workload != nil {
				who += ":" + e.Actor.Workload.TEE + ":" + e.Actor.Workload.Measurement
			}
			obj := strings.TrimSpace(strings.Join([]string{e.Key, e.Secret, e.Policy, e.App}, " "))
			line := fmt.Sprintf("%6d %s %-8s %-28s %s %s", e.Seq, e.Time.Format(time.RFC3339), e.Result, e.Op, who, obj)
			if e.Reason != "" {
				line += " (" + e.Reason + ")"
			}
			fmt.Fprintln(w, strings.TrimRight(line, " "))
		}
	})
}

// auditVerifyOptions are the arguments of `veil kms audit verify` (none but the client's).
type auditVerifyOptions struct{ *kmsOpts }

func newAuditVerifyCmd(env *Env, ko *kmsOpts) *cobra.Command {
	o := &auditVerifyOptions{ko}
	return &cobra.Command{
		Use: "verify", Short: "Recompute the chain; report edited, reordered or deleted entries", Args: exactArgs(0),
		RunE: func(c *cobra.Command, _ []string) error { return o.run(c.Context(), env) },
	}
}

func (o *auditVerifyOptions) run(ctx context.Context, env *Env) error {
	cl, err := o.client()
	if err != nil {
		return err
	}
	probs, head, err := cl.VerifyAudit(ctx)
	if err != nil {
		return kmsErr(err)
	}
	out := map[string]any{"entries": head.Seq, "head": head.Hash, "ok": len(probs) == 0, "problems": probs}
	if err := o.print(env, out, func(w io.Writer) {
		for _, p := range probs {
			fmt.Fprintln(w, p.String())
		}
		if len(probs) == 0 {
			fmt.Fprintf(w, "audit log intact: %d entries, head %s\n", head.Seq, head.Hash)
		}
	}); err != nil {
		return err
	}
	if len(probs) > 0 {
		return fmt.Errorf("%w: %d problem(s)", errAuditBroken, len(probs))
	}
	return nil
}
