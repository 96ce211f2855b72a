package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/veil-tee/veil/kms/api"
	"github.com/veil-tee/veil/kms/audit"
)

func newKMSAuditCmd(env *Env, o *kmsOpts) *cobra.Command {
	c := &cobra.Command{Use: "audit", Short: "Read and verify the hash-chained audit log (admin)"}
	c.AddCommand(newAuditListCmd(env, o), newAuditVerifyCmd(env, o), newAuditCheckpointCmd(env, o))
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

// auditVerifyOptions are the flags of `veil kms audit verify`.
type auditVerifyOptions struct {
	*kmsOpts
	checkpointFile string
}

func newAuditVerifyCmd(env *Env, ko *kmsOpts) *cobra.Command {
	o := &auditVerifyOptions{kmsOpts: ko}
	c := &cobra.Command{
		Use:   "verify [--checkpoint FILE]",
		Short: "Recompute the chain; report edited, reordered, deleted or appended entries, a damaged head, a rollback",
		Args:  exactArgs(0),
		RunE:  func(c *cobra.Command, _ []string) error { return o.run(c.Context(), env) },
	}
	c.Flags().StringVar(&o.checkpointFile, "checkpoint", "", "also check that the log still holds this checkpoint (detects a rollback of the data directory)")
	return c
}

func (o *auditVerifyOptions) run(ctx context.Context, env *Env) error {
	cl, err := o.client()
	if err != nil {
		return err
	}
	var probs []audit.Problem
	var head api.AuditHead
	if o.checkpointFile != "" {
		b, err := os.ReadFile(o.checkpointFile)
		if err != nil {
			return fmt.Errorf("reading --checkpoint: %w", err)
		}
		cp, err := audit.ParseCheckpoint(b)
		if err != nil {
			return withHint(fmt.Errorf("reading --checkpoint %s: %w", o.checkpointFile, err), "give a file written by 'veil kms audit checkpoint'")
		}
		probs, head, err = cl.VerifyAuditCheckpoint(ctx, cp)
		if errors.Is(err, audit.ErrCheckpoint) {
			return fmt.Errorf("%w: %v", errAuditBroken, err)
		}
		if err != nil {
			return kmsErr(err)
		}
	} else if probs, head, err = cl.VerifyAudit(ctx); err != nil {
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

// auditCheckpointOptions are the arguments of `veil kms audit checkpoint` (none but the client's).
type auditCheckpointOptions struct{ *kmsOpts }

func newAuditCheckpointCmd(env *Env, ko *kmsOpts) *cobra.Command {
	o := &auditCheckpointOptions{ko}
	return &cobra.Command{
		Use:   "checkpoint",
		Short: "Print a signed checkpoint (seq, hash, time) of the log's head; store it away from the server",
		Args:  exactArgs(0),
		RunE:  func(c *cobra.Command, _ []string) error { return o.run(c.Context(), env) },
	}
}

func (o *auditCheckpointOptions) run(ctx context.Context, env *Env) error {
	cl, err := o.client()
	if err != nil {
		return err
	}
	cp, err := cl.AuditCheckpoint(ctx)
	if err != nil {
		return kmsErr(err)
	}
	b, err := json.MarshalIndent(cp, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(env.Stdout, "%s\n", b)
	return err
}
