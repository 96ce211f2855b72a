package cli

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/veil-tee/veil/kms"
	"github.com/veil-tee/veil/kms/api"
	"github.com/veil-tee/veil/kms/client"
)

func printKeys(w io.Writer, keys []api.Key) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tSPEC\tSTATE\tVERSION\tPOLICIES")
	for _, k := range keys {
		st := k.State
		if k.DeletionTime != nil {
			st += " (" + k.DeletionTime.Format(time.RFC3339) + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\n", k.ID, k.Name, k.Spec, st, k.PrimaryVersion, len(k.Policies))
	}
	tw.Flush()
}

func newKMSKeyCmd(env *Env, o *kmsOpts) *cobra.Command {
	c := &cobra.Command{Use: "key", Short: "Manage and use customer master keys (app)"}
	c.AddCommand(newKeyCreateCmd(env, o), newKeyListCmd(env, o), newKeyDescribeCmd(env, o))
	for _, a := range []struct{ verb, short string }{
		{"enable", "Enable a key"}, {"disable", "Disable a key (it can no longer encrypt or decrypt)"},
		{"rotate", "Add a new version; old versions keep decrypting"}, {"cancel-deletion", "Cancel a scheduled deletion (the key stays disabled)"},
	} {
		ao := &keyActionOptions{kmsOpts: o, action: a.verb}
		c.AddCommand(&cobra.Command{
			Use: a.verb + " KEY", Short: a.short, Args: exactArgs(1),
			RunE: oneArg(&ao.key, func(ctx context.Context) error { return ao.run(ctx, env) }),
		})
	}
	c.AddCommand(newKeyScheduleDeletionCmd(env, o), newKeyEncryptCmd(env, o), newKeyDecryptCmd(env, o),
		newKeyGenerateDataKeyCmd(env, o), newKeySignCmd(env, o), newKeyVerifyCmd(env, o), newKeyPublicKeyCmd(env, o))
	return c
}

// keyCreateOptions are the flags of `veil kms key create`.
type keyCreateOptions struct {
	*kmsOpts
	name, spec, desc string
}

func newKeyCreateCmd(env *Env, ko *kmsOpts) *cobra.Command {
	o := &keyCreateOptions{kmsOpts: ko}
	c := &cobra.Command{
		Use: "create --name NAME", Short: "Create a key", Args: exactArgs(0),
		RunE: func(c *cobra.Command, _ []string) error { return o.run(c.Context(), env) },
	}
	c.Flags().StringVar(&o.name, "name", "", "key name (unique for the app)")
	c.Flags().StringVar(&o.spec, "spec", api.SpecAES256GCM, "key spec: AES_256_GCM, EC_P256 or RSA_3072")
	c.Flags().StringVar(&o.desc, "description", "", "description")
	return c
}

func (o *keyCreateOptions) run(ctx context.Context, env *Env) error {
	return o.call(func(cl *client.Client) error {
		if o.name == "" {
			return usageErrorf("--name is required")
		}
		k, err := cl.CreateKey(ctx, o.name, o.spec, o.desc)
		if err != nil {
			return err
		}
		return o.print(env, k, func(w io.Writer) { printKeys(w, []api.Key{k}) })
	})
}

// keyListOptions are the arguments of `veil kms key list` (none but the client's).
type keyListOptions struct{ *kmsOpts }

func newKeyListCmd(env *Env, ko *kmsOpts) *cobra.Command {
	o := &keyListOptions{ko}
	return &cobra.Command{
		Use: "list", Short: "List the app's keys", Args: exactArgs(0),
		RunE: func(c *cobra.Command, _ []string) error { return o.run(c.Context(), env) },
	}
}

func (o *keyListOptions) run(ctx context.Context, env *Env) error {
	return o.call(func(cl *client.Client) error {
		r, err := cl.ListKeys(ctx)
		if err != nil {
			return err
		}
		return o.print(env, r, func(w io.Writer) { printKeys(w, r.Keys) })
	})
}

// keyDescribeOptions are the arguments of `veil kms key describe`.
type keyDescribeOptions struct {
	*kmsOpts
	key string
}

func newKeyDescribeCmd(env *Env, ko *kmsOpts) *cobra.Command {
	o := &keyDescribeOptions{kmsOpts: ko}
	return &cobra.Command{
		Use: "describe KEY", Short: "Show a key", Args: exactArgs(1),
		RunE: oneArg(&o.key, func(ctx context.Context) error { return o.run(ctx, env) }),
	}
}

func (o *keyDescribeOptions) run(ctx context.Context, env *Env) error {
	return o.call(func(cl *client.Client) error {
		k, err := cl.DescribeKey(ctx, o.key)
		if err != nil {
			return err
		}
		return o.print(env, k, func(w io.Writer) {
			printKeys(w, []api.Key{k})
			for _, v := range k.Versions {
				fmt.Fprintf(w, "version %d created %s\n", v.Version, v.Created.Format(time.RFC3339))
			}
			for _, p := range k.Policies {
				fmt.Fprintf(w, "policy %s\n", p)
			}
		})
	})
}

// keyActionOptions are the arguments of `veil kms key enable`, `disable`,
// `rotate` and `cancel-deletion` (action).
type keyActionOptions struct {
	*kmsOpts
	action, key string
}

func (o *keyActionOptions) run(ctx context.Context, env *Env) error {
	return o.call(func(cl *client.Client) error {
		k, err := cl.KeyAction(ctx, o.key, o.action)
		if err != nil {
			return err
		}
		return o.print(env, k, func(w io.Writer) { printKeys(w, []api.Key{k}) })
	})
}

// keyScheduleDeletionOptions are the flags of `veil kms key schedule-deletion`.
type keyScheduleDeletionOptions struct {
	*kmsOpts
	key  string
	days int
}

func newKeyScheduleDeletionCmd(env *Env, ko *kmsOpts) *cobra.Command {
	o := &keyScheduleDeletionOptions{kmsOpts: ko}
	c := &cobra.Command{
		Use: "schedule-deletion KEY", Short: "Delete a key after a grace period", Args: exactArgs(1),
		RunE: oneArg(&o.key, func(ctx context.Context) error { return o.run(ctx, env) }),
	}
	c.Flags().IntVar(&o.days, "days", 30, "grace period in days (1-30)")
	return c
}

func (o *keyScheduleDeletionOptions) run(ctx context.Context, env *Env) error {
	if o.days < 1 || o.days > 30 {
		return usageErrorf("--days must be 1 to 30, got %d", o.days)
	}
	return o.call(func(cl *client.Client) error {
		k, err := cl.ScheduleKeyDeletion(ctx, o.key, o.days)
		if err != nil {
			return err
		}
		return o.print(env, k, func(w io.Writer) { printKeys(w, []api.Key{k}) })
	})
}

const aadUsage = "additional authenticated data (text)"

// keyEncryptOptions are the flags of `veil kms key encrypt`; the plaintext
// is standard input.
type keyEncryptOptions struct {
	*kmsOpts
	key, aad string
}

func newKeyEncryptCmd(env *Env, ko *kmsOpts) *cobra.Command {
	o := &keyEncryptOptions{kmsOpts: ko}
	c := &cobra.Command{
		Use: "encrypt KEY", Short: "Encrypt standard input (at most 4 KiB); prints base64", Args: exactArgs(1),
		RunE: oneArg(&o.key, func(ctx context.Context) error { return o.run(ctx, env) }),
	}
	c.Flags().StringVar(&o.aad, "aad", "", aadUsage)
	return c
}

func (o *keyEncryptOptions) run(ctx context.Context, env *Env) error {
	return o.call(func(cl *client.Client) error {
		pt, err := io.ReadAll(io.LimitReader(env.Stdin, kms.MaxPlaintext+1))
		if err != nil {
			return err
		}
		r, err := cl.Encrypt(ctx, o.key, pt, []byte(o.aad))
		clear(pt)
		if err != nil {
			return err
		}
		return o.print(env, r, func(w io.Writer) { fmt.Fprintln(w, base64.StdEncoding.EncodeToString(r.Ciphertext)) })
	})
}

// keyDecryptOptions are the flags of `veil kms key decrypt`; the base64
// ciphertext is standard input.
type keyDecryptOptions struct {
	*kmsOpts
	aad string
}

func newKeyDecryptCmd(env *Env, ko *kmsOpts) *cobra.Command {
	o := &keyDecryptOptions{kmsOpts: ko}
	c := &cobra.Command{
		Use: "decrypt", Short: "Decrypt a base64 ciphertext from standard input (it names its key)", Args: exactArgs(0),
		RunE: func(c *cobra.Command, _ []string) error { return o.run(c.Context(), env) },
	}
	c.Flags().StringVar(&o.aad, "aad", "", aadUsage)
	return c
}

func (o *keyDecryptOptions) run(ctx context.Context, env *Env) error {
	return o.call(func(cl *client.Client) error {
		in, err := io.ReadAll(io.LimitReader(env.Stdin, 64<<10))
		if err != nil {
			return err
		}
		ct, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(in)))
		if err != nil {
			return usageErrorf("standard input is not base64: %v", err)
		}
		r, err := cl.Decrypt(ctx, ct, []byte(o.aad))
		if err != nil {
			return err
		}
		if o.json {
			return o.print(env, r, nil)
		}
		_, err = env.Stdout.Write(r.Plaintext)
		return err
	})
}

// keyGenerateDataKeyOptions are the flags of `veil kms key generate-data-key`.
type keyGenerateDataKeyOptions struct {
	*kmsOpts
	key, aad         string
	withoutPlaintext bool
}

func newKeyGenerateDataKeyCmd(env *Env, ko *kmsOpts) *cobra.Command {
	o := &keyGenerateDataKeyOptions{kmsOpts: ko}
	c := &cobra.Command{
		Use: "generate-data-key KEY", Short: "Generate a data key; prints it (base64) and its wrapped form", Args: exactArgs(1),
		RunE: oneArg(&o.key, func(ctx context.Context) error { return o.run(ctx, env) }),
	}
	c.Flags().StringVar(&o.aad, "aad", "", aadUsage)
	c.Flags().BoolVar(&o.withoutPlaintext, "without-plaintext", false, "return only the wrapped key")
	return c
}

func (o *keyGenerateDataKeyOptions) run(ctx context.Context, env *Env) error {
	return o.call(func(cl *client.Client) error {
		var r api.CipherResponse
		var err error
		if o.withoutPlaintext {
			r, err = cl.GenerateDataKeyWithoutPlaintext(ctx, o.key, 32, []byte(o.aad))
		} else {
			r, err = cl.GenerateDataKey(ctx, o.key, 32, []byte(o.aad))
		}
		if err != nil {
			return err
		}
		return o.print(env, r, func(w io.Writer) {
			if r.Plaintext != nil {
				fmt.Fprintf(w, "plaintext: %s\n", base64.StdEncoding.EncodeToString(r.Plaintext))
			}
			fmt.Fprintf(w, "wrapped: %s\n", base64.StdEncoding.EncodeToString(r.Ciphertext))
		})
	})
}

// keySignOptions are the arguments of `veil kms key sign`; the message is
// standard input.
type keySignOptions struct {
	*kmsOpts
	key string
}

func newKeySignCmd(env *Env, ko *kmsOpts) *cobra.Command {
	o := &keySignOptions{kmsOpts: ko}
	return &cobra.Command{
		Use: "sign KEY", Short: "Sign standard input (at most 4 KiB) with an EC_P256 or RSA_3072 key; prints base64", Args: exactArgs(1),
		RunE: oneArg(&o.key, func(ctx context.Context) error { return o.run(ctx, env) }),
	}
}

func (o *keySignOptions) run(ctx context.Context, env *Env) error {
	return o.call(func(cl *client.Client) error {
		msg, err := io.ReadAll(io.LimitReader(env.Stdin, kms.MaxPlaintext+1))
		if err != nil {
			return err
		}
		r, err := cl.Sign(ctx, o.key, msg)
		if err != nil {
			return err
		}
		return o.print(env, r, func(w io.Writer) { fmt.Fprintln(w, base64.StdEncoding.EncodeToString(r.Signature)) })
	})
}

// keyVerifyOptions are the flags of `veil kms key verify`; the message is
// standard input.
type keyVerifyOptions struct {
	*kmsOpts
	key, signature string // signature: base64
	version        int
}

func newKeyVerifyCmd(env *Env, ko *kmsOpts) *cobra.Command {
	o := &keyVerifyOptions{kmsOpts: ko}
	c := &cobra.Command{
		Use: "verify KEY --signature BASE64", Short: "Verify a signature over standard input", Args: exactArgs(1),
		RunE: oneArg(&o.key, func(ctx context.Context) error { return o.run(ctx, env) }),
	}
	c.Flags().StringVar(&o.signature, "signature", "", "signature (base64)")
	c.Flags().IntVar(&o.version, "version", 0, "key version (default: primary)")
	return c
}

func (o *keyVerifyOptions) run(ctx context.Context, env *Env) error {
	return o.call(func(cl *client.Client) error {
		sig, err := base64.StdEncoding.DecodeString(o.signature)
		if err != nil {
			return usageErrorf("--signature is not base64: %v", err)
		}
		msg, err := io.ReadAll(io.LimitReader(env.Stdin, kms.MaxPlaintext+1))
		if err != nil {
			return err
		}
		r, err := cl.Verify(ctx, o.key, msg, sig, o.version)
		if err != nil {
			return err
		}
		if err := o.print(env, r, func(w io.Writer) { fmt.Fprintf(w, "valid: %v (key %s version %d)\n", r.Valid, r.KeyID, r.KeyVersion) }); err != nil {
			return err
		}
		if !r.Valid {
			return &Error{Err: errors.New("the signature does not verify"), Code: ExitIntegrity}
		}
		return nil
	})
}

// keyPublicKeyOptions are the flags of `veil kms key public-key`.
type keyPublicKeyOptions struct {
	*kmsOpts
	key     string
	version int
}

func newKeyPublicKeyCmd(env *Env, ko *kmsOpts) *cobra.Command {
	o := &keyPublicKeyOptions{kmsOpts: ko}
	c := &cobra.Command{
		Use: "public-key KEY", Short: "Print the PEM public key of an EC_P256 or RSA_3072 key", Args: exactArgs(1),
		RunE: oneArg(&o.key, func(ctx context.Context) error { return o.run(ctx, env) }),
	}
	c.Flags().IntVar(&o.version, "version", 0, "key version (default: primary)")
	return c
}

func (o *keyPublicKeyOptions) run(ctx context.Context, env *Env) error {
	return o.call(func(cl *client.Client) error {
		r, err := cl.PublicKey(ctx, o.key, o.version)
		if err != nil {
			return err
		}
		return o.print(env, r, func(w io.Writer) { fmt.Fprint(w, r.PublicKey) })
	})
}
