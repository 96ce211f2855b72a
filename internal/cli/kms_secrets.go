package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/veil-tee/veil/kms"
	"github.com/veil-tee/veil/kms/client"
)

func newKMSSecretCmd(env *Env, o *kmsOpts) *cobra.Command {
	c := &cobra.Command{Use: "secret", Short: "Store and read versioned secrets (app)"}
	c.AddCommand(newSecretPutCmd(env, o), newSecretGetCmd(env, o), newSecretListCmd(env, o), newSecretDeleteCmd(env, o))
	return c
}

// secretPutOptions are the flags of `veil kms secret put`; the value is
// the file, else standard input.
type secretPutOptions struct {
	*kmsOpts
	name, file, desc string
}

func newSecretPutCmd(env *Env, ko *kmsOpts) *cobra.Command {
	o := &secretPutOptions{kmsOpts: ko}
	c := &cobra.Command{
		Use: "put NAME", Short: "Store a new version (value from --file or standard input)", Args: exactArgs(1),
		RunE: oneArg(&o.name, func(ctx context.Context) error { return o.run(ctx, env) }),
	}
	c.Flags().StringVar(&o.file, "file", "", "read the value from this file")
	c.Flags().StringVar(&o.desc, "description", "", "description")
	return c
}

func (o *secretPutOptions) run(ctx context.Context, env *Env) error {
	return o.call(func(cl *client.Client) error {
		var v []byte
		var err error
		if o.file != "" {
			v, err = os.ReadFile(o.file)
		} else {
			v, err = io.ReadAll(io.LimitReader(env.Stdin, kms.MaxSecretValue+1))
		}
		if err != nil {
			return err
		}
		s, err := cl.PutSecret(ctx, o.name, v, o.desc)
		clear(v)
		if err != nil {
			return err
		}
		return o.print(env, s, func(w io.Writer) { fmt.Fprintf(w, "%s %s version %d\n", s.ID, s.Name, s.Version) })
	})
}

// secretGetOptions are the flags of `veil kms secret get`.
type secretGetOptions struct {
	*kmsOpts
	secret  string
	version int
}

func newSecretGetCmd(env *Env, ko *kmsOpts) *cobra.Command {
	o := &secretGetOptions{kmsOpts: ko}
	c := &cobra.Command{
		Use: "get SECRET", Short: "Print a secret's value", Args: exactArgs(1),
		RunE: oneArg(&o.secret, func(ctx context.Context) error { return o.run(ctx, env) }),
	}
	c.Flags().IntVar(&o.version, "version", 0, "version (default: latest)")
	return c
}

func (o *secretGetOptions) run(ctx context.Context, env *Env) error {
	return o.call(func(cl *client.Client) error {
		s, err := cl.GetSecret(ctx, o.secret, o.version)
		if err != nil {
			return err
		}
		if o.json {
			return o.print(env, s, nil)
		}
		_, err = env.Stdout.Write(s.Value)
		return err
	})
}

// secretListOptions are the arguments of `veil kms secret list` (none but the client's).
type secretListOptions struct{ *kmsOpts }

func newSecretListCmd(env *Env, ko *kmsOpts) *cobra.Command {
	o := &secretListOptions{ko}
	return &cobra.Command{
		Use: "list", Short: "List secrets", Args: exactArgs(0),
		RunE: func(c *cobra.Command, _ []string) error { return o.run(c.Context(), env) },
	}
}

func (o *secretListOptions) run(ctx context.Context, env *Env) error {
	return o.call(func(cl *client.Client) error {
		r, err := cl.ListSecrets(ctx)
		if err != nil {
			return err
		}
		return o.print(env, r, func(w io.Writer) {
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tVERSION\tPOLICIES")
			for _, s := range r.Secrets {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%d\n", s.ID, s.Name, s.Version, len(s.Policies))
			}
			tw.Flush()
		})
	})
}

// secretDeleteOptions are the arguments of `veil kms secret delete`.
type secretDeleteOptions struct {
	*kmsOpts
	secret string
}

func newSecretDeleteCmd(env *Env, ko *kmsOpts) *cobra.Command {
	o := &secretDeleteOptions{kmsOpts: ko}
	return &cobra.Command{
		Use: "delete SECRET", Short: "Delete a secret and all its versions", Args: exactArgs(1),
		RunE: oneArg(&o.secret, func(ctx context.Context) error { return o.run(ctx, env) }),
	}
}

func (o *secretDeleteOptions) run(ctx context.Context, env *Env) error {
	return o.call(func(cl *client.Client) error {
		return cl.DeleteSecret(ctx, o.secret)
	})
}
