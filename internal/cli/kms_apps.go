package cli

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

// kmsEnrollOptions are the flags of `veil kms enroll`.
type kmsEnrollOptions struct {
	*kmsOpts
	name string
}

func newKMSEnrollCmd(env *Env, ko *kmsOpts) *cobra.Command {
	o := &kmsEnrollOptions{kmsOpts: ko}
	c := &cobra.Command{
		Use: "enroll --name NAME", Short: "Enroll an app (admin); prints its id and API key once", Args: exactArgs(0),
		RunE: func(c *cobra.Command, _ []string) error { return o.run(c.Context(), env) },
	}
	c.Flags().StringVar(&o.name, "name", "", "app name")
	return c
}

func (o *kmsEnrollOptions) run(ctx context.Context, env *Env) error {
	if o.name == "" {
		return usageErrorf("--name is required")
	}
	cl, err := o.client()
	if err != nil {
		return err
	}
	r, err := cl.Enroll(ctx, o.name)
	if err != nil {
		return kmsErr(err)
	}
	return o.print(env, r, func(w io.Writer) {
		fmt.Fprintf(w, "export VEIL_APP_ID=%s\nexport VEIL_API_KEY=%s\n", r.AppID, r.APIKey)
		fmt.Fprintln(env.Stderr, "veil: the API key is shown only now; keep it secret")
	})
}

// kmsAppsOptions are the arguments of `veil kms apps` (none but the client's).
type kmsAppsOptions struct{ *kmsOpts }

func newKMSAppsCmd(env *Env, ko *kmsOpts) *cobra.Command {
	o := &kmsAppsOptions{ko}
	return &cobra.Command{
		Use: "apps", Short: "List enrolled apps (admin)", Args: exactArgs(0),
		RunE: func(c *cobra.Command, _ []string) error { return o.run(c.Context(), env) },
	}
}

func (o *kmsAppsOptions) run(ctx context.Context, env *Env) error {
	cl, err := o.client()
	if err != nil {
		return err
	}
	r, err := cl.ListApps(ctx)
	if err != nil {
		return kmsErr(err)
	}
	return o.print(env, r, func(w io.Writer) {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "APP ID\tNAME\tCREATED\tSTATE")
		for _, a := range r.Apps {
			state := "enrolled (key issued to the admin)"
			switch {
			case a.Disabled:
				state = "disabled"
			case a.SelfKeyed:
				state = "self-keyed"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", a.AppID, a.Name, a.Created.Format(time.RFC3339), state)
		}
		tw.Flush()
	})
}

func newKMSAppCmd(env *Env, o *kmsOpts) *cobra.Command {
	c := &cobra.Command{Use: "app", Short: "Manage an enrolled app's credentials"}
	c.AddCommand(newAppRotateKeyCmd(env, o), newAppDisableCmd(env, o))
	return c
}

// appRotateKeyOptions are the arguments of `veil kms app rotate-key`.
type appRotateKeyOptions struct {
	*kmsOpts
	appID string
}

func newAppRotateKeyCmd(env *Env, ko *kmsOpts) *cobra.Command {
	o := &appRotateKeyOptions{kmsOpts: ko}
	return &cobra.Command{
		Use:   "rotate-key APPID",
		Short: "Give an app a new API key (admin, or the app itself); the old key is refused at once",
		Args:  exactArgs(1),
		RunE:  oneArg(&o.appID, func(ctx context.Context) error { return o.run(ctx, env) }),
	}
}

func (o *appRotateKeyOptions) run(ctx context.Context, env *Env) error {
	cl, err := o.client()
	if err != nil {
		return err
	}
	r, err := cl.RotateAppKey(ctx, o.appID)
	if err != nil {
		return kmsErr(err)
	}
	return o.print(env, r, func(w io.Writer) {
		fmt.Fprintf(w, "export VEIL_APP_ID=%s\nexport VEIL_API_KEY=%s\n", r.AppID, r.APIKey)
		fmt.Fprintln(env.Stderr, "veil: the new API key is shown only now; the old one no longer works")
	})
}

// appDisableOptions are the arguments of `veil kms app disable`.
type appDisableOptions struct {
	*kmsOpts
	appID string
}

func newAppDisableCmd(env *Env, ko *kmsOpts) *cobra.Command {
	o := &appDisableOptions{kmsOpts: ko}
	return &cobra.Command{
		Use:   "disable APPID",
		Short: "Refuse every request signed by an app from now on (admin)",
		Args:  exactArgs(1),
		RunE:  oneArg(&o.appID, func(ctx context.Context) error { return o.run(ctx, env) }),
	}
}

func (o *appDisableOptions) run(ctx context.Context, env *Env) error {
	cl, err := o.client()
	if err != nil {
		return err
	}
	a, err := cl.DisableApp(ctx, o.appID)
	if err != nil {
		return kmsErr(err)
	}
	return o.print(env, a, func(w io.Writer) { fmt.Fprintf(w, "app %s (%s) disabled\n", a.AppID, a.Name) })
}
