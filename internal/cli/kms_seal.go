package cli

// The seal life cycle of the key service: init, unseal, seal, status.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/veil-tee/veil/kms"
	"github.com/veil-tee/veil/kms/api"
	"github.com/veil-tee/veil/kms/store"
)

// kmsInitOptions are the flags of `veil kms init`.
type kmsInitOptions struct {
	*kmsOpts
	dataDir, storeURL string
	shares, threshold int
}

func newKMSInitCmd(env *Env, ko *kmsOpts) *cobra.Command {
	o := &kmsInitOptions{kmsOpts: ko}
	c := &cobra.Command{
		Use:   "init (--data DIR | --store postgres://...) --shares N --threshold K",
		Short: "Create the root key of a stopped server's data directory and split it into shares",
		Args:  exactArgs(0),
		RunE:  func(c *cobra.Command, _ []string) error { return o.run(c.Context(), env) },
	}
	c.Flags().StringVar(&o.dataDir, "data", "", "data directory")
	c.Flags().StringVar(&o.storeURL, "store", "", "PostgreSQL store (postgres://...) instead of --data")
	c.Flags().IntVar(&o.shares, "shares", 5, "number of shares")
	c.Flags().IntVar(&o.threshold, "threshold", 3, "shares needed to unseal")
	return c
}

func (o *kmsInitOptions) run(ctx context.Context, env *Env) error {
	if (o.dataDir == "") == (o.storeURL == "") {
		return usageErrorf("give one of --data and --store")
	}
	if o.threshold < 1 || o.shares < o.threshold || o.shares > 255 {
		return usageErrorf("need 1 <= --threshold (%d) <= --shares (%d) <= 255", o.threshold, o.shares)
	}
	st, where, err := openKMSStore(ctx, o.dataDir, o.storeURL)
	if errors.Is(err, store.ErrLocked) {
		return withHint(err, "stop the server using "+o.dataDir+" first: init runs on the data directory directly")
	}
	if err != nil {
		return err
	}
	defer st.Close()
	res, err := kms.Initialize(ctx, st, kms.ModeShamir, o.shares, o.threshold, time.Now())
	if errors.Is(err, kms.ErrAlreadyInit) {
		return withHint(fmt.Errorf("%s is already initialized", where), "its root key cannot be re-created; unseal it with its shares")
	}
	if err != nil {
		return err
	}
	return o.print(env, map[string]any{"shares": res.Shares, "threshold": o.threshold, "admin_token": res.AdminToken}, func(w io.Writer) {
		for i, s := range res.Shares {
			fmt.Fprintf(w, "share %d: %s\n", i+1, s)
		}
		fmt.Fprintf(w, "admin token: %s\n", res.AdminToken)
		fmt.Fprintf(w, "\nGive each share to a different person; any %d of them unseal the server.\nThey are shown only now and are not stored anywhere.\n", o.threshold)
	})
}

func printStatus(w io.Writer, st api.Status) {
	switch {
	case !st.Initialized:
		fmt.Fprintln(w, "not initialized")
	case st.Sealed && st.Mode == kms.ModeShamir:
		fmt.Fprintf(w, "sealed (%d of %d shares given)\n", st.Progress, st.Threshold)
	case st.Sealed:
		fmt.Fprintln(w, "sealed")
	default:
		fmt.Fprintln(w, "unsealed")
	}
}

// kmsUnsealOptions are the flags of `veil kms unseal`; without shareFile
// the share is read from standard input.
type kmsUnsealOptions struct {
	*kmsOpts
	shareFile string
}

func newKMSUnsealCmd(env *Env, ko *kmsOpts) *cobra.Command {
	o := &kmsUnsealOptions{kmsOpts: ko}
	c := &cobra.Command{
		Use:   "unseal [--share-file FILE]",
		Short: "Give the server one share of its root key, read from standard input or --share-file",
		Long: "Give the server one share of its root key. The share is read from standard input, or from\n" +
			"--share-file; it is never taken from the command line, where other users see it (ps).",
		// A share on the command line is visible to other users (ps).
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return withHint(usageErrorf("veil kms unseal takes no share on the command line (other users see it in ps)"),
					"pipe it in (veil kms unseal < share.txt) or use --share-file FILE")
			}
			return nil
		},
		RunE: func(c *cobra.Command, _ []string) error { return o.run(c.Context(), env) },
	}
	c.Flags().StringVar(&o.shareFile, "share-file", "", "read the share from this file instead of standard input")
	return c
}

func (o *kmsUnsealOptions) run(ctx context.Context, env *Env) error {
	cl, err := o.client()
	if err != nil {
		return err
	}
	var share string
	if o.shareFile != "" {
		if share, err = readSecretFile(o.shareFile); err != nil {
			return fmt.Errorf("reading --share-file: %w", err)
		}
	} else {
		b, err := io.ReadAll(io.LimitReader(env.Stdin, 4096))
		if err != nil {
			return err
		}
		share = strings.TrimSpace(string(b))
	}
	st, err := cl.Unseal(ctx, share)
	if err != nil {
		return kmsErr(err)
	}
	return o.print(env, st, func(w io.Writer) { printStatus(w, st) })
}

// kmsSealOptions are the arguments of `veil kms seal` (none but the client's).
type kmsSealOptions struct{ *kmsOpts }

func newKMSSealCmd(env *Env, ko *kmsOpts) *cobra.Command {
	o := &kmsSealOptions{ko}
	return &cobra.Command{
		Use: "seal", Short: "Make the server forget its root key (admin)", Args: exactArgs(0),
		RunE: func(c *cobra.Command, _ []string) error { return o.run(c.Context(), env) },
	}
}

func (o *kmsSealOptions) run(ctx context.Context, env *Env) error {
	cl, err := o.client()
	if err != nil {
		return err
	}
	st, err := cl.Seal(ctx)
	if err != nil {
		return kmsErr(err)
	}
	return o.print(env, st, func(w io.Writer) { printStatus(w, st) })
}

// kmsStatusOptions are the arguments of `veil kms status` (none but the client's).
type kmsStatusOptions struct{ *kmsOpts }

func newKMSStatusCmd(env *Env, ko *kmsOpts) *cobra.Command {
	o := &kmsStatusOptions{ko}
	return &cobra.Command{
		Use: "status", Short: "Show whether the server is initialized and sealed", Args: exactArgs(0),
		RunE: func(c *cobra.Command, _ []string) error { return o.run(c.Context(), env) },
	}
}

func (o *kmsStatusOptions) run(ctx context.Context, env *Env) error {
	cl, err := o.client()
	if err != nil {
		return err
	}
	st, err := cl.Status(ctx)
	if err != nil {
		return kmsErr(err)
	}
	return o.print(env, st, func(w io.Writer) { printStatus(w, st) })
}
