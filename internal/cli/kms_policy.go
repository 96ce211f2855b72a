package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/veil-tee/veil/config"
	"github.com/veil-tee/veil/kms/client"
)

// policyDocument is what the flags of `veil kms policy create` say, in the
// attestation policy language (docs/attestation.md); the service stores it
// as given and the attestation evaluator decides.
type policyDocument struct {
	TEE          []string `json:"tee,omitempty"`
	Measurements []string `json:"measurements,omitempty"`
	// InstanceMeasurements: from --from-instance, the instance measurement
	// the runtime binds into its evidence (what tells instances apart in a
	// confidential VM).
	InstanceMeasurements []string `json:"instance_measurements,omitempty"`
	Signers              []string `json:"-"` // one at most: the document's "signer"
	Signer               string   `json:"signer,omitempty"`
	ProductID            *uint16  `json:"product_id,omitempty"`
	MinSVN               uint16   `json:"min_svn,omitempty"`
	AllowDebug           bool     `json:"allow_debug,omitempty"`
	AllowSim             bool     `json:"allow_sim,omitempty"`
}

func checkHex(flag string, vals []string, n int) error {
	for _, v := range vals {
		b, err := hex.DecodeString(v)
		if err != nil || len(b) != n {
			return usageErrorf("--%s %q: want %d hex digits", flag, v, 2*n)
		}
	}
	return nil
}

// policyOpts are the client settings of the policy verbs: those of kms,
// and --app for the admin acting for an app.
type policyOpts struct {
	*kmsOpts
	forApp string
}

// call makes the client, acting as the app (or as the admin for forApp),
// and adds the key service's hints to fn's error.
func (o *policyOpts) call(fn func(cl *client.Client) error) error {
	cfg, err := o.config(true)
	if err != nil {
		return err
	}
	// Policies are the key owner's to attach: act as the app.
	if o.forApp == "" && cfg.AppID == "" {
		return withHint(errors.New("policies are managed by the app that owns the key, and no app is set"), `set VEIL_APP_ID and VEIL_API_KEY of the key's owner (eval "$(veil kms enroll --name NAME)" prints them)`)
	}
	cl, err := client.New(cfg)
	if err != nil {
		return err
	}
	if o.forApp != "" {
		cl = cl.AdminFor(o.forApp)
	}
	return kmsErr(fn(cl))
}

func newKMSPolicyCmd(env *Env, ko *kmsOpts) *cobra.Command {
	c := &cobra.Command{Use: "policy", Short: "Manage release policies for workloads (app, or admin with --app)"}
	o := &policyOpts{kmsOpts: ko}
	c.PersistentFlags().StringVar(&o.forApp, "app", "", "act as the admin on behalf of this app id (needs VEIL_ADMIN_TOKEN)")
	c.AddCommand(newPolicyCreateCmd(env, o), newPolicyListCmd(env, o), newPolicyShowCmd(env, o), newPolicyDeleteCmd(env, o),
		newPolicyAttachCmd(env, o, true), newPolicyAttachCmd(env, o, false))
	return c
}

// policyCreateOptions are the flags of `veil kms policy create`.
type policyCreateOptions struct {
	*policyOpts
	name, fromInstance, docFile, keyRef, secretRef string
	replace                                        bool
	doc                                            policyDocument
	productID                                      int
	productIDSet                                   bool // --product-id was given
}

func newPolicyCreateCmd(env *Env, po *policyOpts) *cobra.Command {
	o := &policyCreateOptions{policyOpts: po}
	c := &cobra.Command{
		Use:   "create [--name NAME] (--mrenclave HEX... | --from-instance DIR | --document FILE) [--key KEY] [--secret SECRET]",
		Short: "Create a release policy and optionally attach it to a key or secret",
		Args:  exactArgs(0),
		RunE: func(c *cobra.Command, _ []string) error {
			o.productIDSet = c.Flags().Changed("product-id")
			return o.run(c.Context(), env)
		},
	}
	f := c.Flags()
	f.BoolVar(&o.replace, "replace", false, "replace the policies of --key/--secret: once the new one is attached, detach the others (deleting those nothing else uses); for a rebuild that changed the measurement")
	f.StringVar(&o.name, "name", "", "policy name (default: policy-TIMESTAMP-RANDOM)")
	f.StringVar(&o.fromInstance, "from-instance", "", "take the measurement, signer, product id and svn from a built instance")
	f.StringVar(&o.docFile, "document", "", "policy document (JSON file) instead of flags")
	f.StringSliceVar(&o.doc.Measurements, "mrenclave", nil, "allowed measurement (hex, repeatable)")
	f.StringSliceVar(&o.doc.Signers, "mrsigner", nil, "allowed signer (hex, repeatable)")
	f.IntVar(&o.productID, "product-id", 0, "required product id")
	f.Uint16Var(&o.doc.MinSVN, "min-svn", 0, "minimum security version")
	f.StringSliceVar(&o.doc.TEE, "tee", nil, "allowed TEE kinds (sgx, tdx, snp, sim)")
	f.BoolVar(&o.doc.AllowDebug, "allow-debug", false, "accept debuggable workloads")
	f.BoolVar(&o.doc.AllowSim, "allow-sim", false, "accept the software sim backend (development only)")
	f.StringVar(&o.keyRef, "key", "", "attach to this key")
	f.StringVar(&o.secretRef, "secret", "", "attach to this secret")
	return c
}

// body is the policy document to store: the --document file, else the
// document the flags describe.
func (o *policyCreateOptions) body() ([]byte, error) {
	if o.docFile != "" {
		b, err := os.ReadFile(o.docFile)
		if err != nil {
			return nil, fmt.Errorf("reading the policy document: %w", err)
		}
		if err := checkJSONFile(o.docFile, b); err != nil {
			return nil, err
		}
		return b, nil
	}
	doc := &o.doc
	if o.fromInstance != "" {
		id, err := imageInstanceIdentity(o.fromInstance)
		if err != nil {
			return nil, loadHint(fmt.Errorf("reading the instance identity: %w", err))
		}
		doc.Measurements = append(doc.Measurements, id.Measurement)
		doc.InstanceMeasurements = append(doc.InstanceMeasurements, id.Measurement)
		if id.Signer != "" {
			doc.Signers = append(doc.Signers, id.Signer)
		}
		pid := id.ProductID
		doc.ProductID = &pid
		if doc.MinSVN == 0 {
			doc.MinSVN = id.SVN
		}
	}
	if len(doc.Measurements) == 0 && len(doc.Signers) == 0 {
		return nil, usageErrorf("a policy needs --mrenclave, --mrsigner, --from-instance or --document")
	}
	if err := checkHex("mrenclave", doc.Measurements, 32); err != nil {
		return nil, err
	}
	if err := checkHex("mrsigner", doc.Signers, 32); err != nil {
		return nil, err
	}
	switch len(doc.Signers) {
	case 0:
	case 1:
		doc.Signer = doc.Signers[0]
	default:
		return nil, usageErrorf("a policy names one signer; create one policy per signer")
	}
	if o.productIDSet {
		if o.productID < 0 || o.productID > 65535 {
			return nil, usageErrorf("--product-id must be 0-65535")
		}
		pid := uint16(o.productID)
		doc.ProductID = &pid
	}
	body, _ := json.Marshal(doc)
	return body, nil
}

func (o *policyCreateOptions) run(ctx context.Context, env *Env) error {
	return o.call(func(cl *client.Client) error {
		body, err := o.body()
		if err != nil {
			return err
		}
		name := o.name
		if name == "" {
			// A random suffix keeps two policies made within one
			// second apart.
			var r [3]byte
			rand.Read(r[:])
			name = fmt.Sprintf("policy-%s-%x", time.Now().UTC().Format("20060102-150405"), r)
		}
		keyRef, secretRef := o.keyRef, o.secretRef
		var old []string
		if o.replace {
			if keyRef == "" && secretRef == "" {
				return usageErrorf("--replace needs --key or --secret: it replaces the policies attached there")
			}
			if old, err = replacePolicies(ctx, cl, keyRef, secretRef, name); err != nil {
				return err
			}
		}
		p, err := cl.CreatePolicy(ctx, name, body)
		if err != nil {
			if errors.Is(err, client.Code("already_exists")) {
				return withHint(fmt.Errorf("a policy named %s exists: %w", name, err), "choose another --name, or add --replace with --key to replace the key's policies")
			}
			return err
		}
		if keyRef != "" {
			if _, err := cl.AttachKeyPolicy(ctx, keyRef, p.ID); err != nil {
				return fmt.Errorf("policy %s created, attaching it to key %s: %w", p.ID, keyRef, err)
			}
		}
		if secretRef != "" {
			if _, err := cl.AttachSecretPolicy(ctx, secretRef, p.ID); err != nil {
				return fmt.Errorf("policy %s created, attaching it to secret %s: %w", p.ID, secretRef, err)
			}
		}
		for _, id := range old {
			if id == p.ID {
				continue
			}
			if keyRef != "" {
				if _, err := cl.DetachKeyPolicy(ctx, keyRef, id); err != nil && !errors.Is(err, client.Code("policy_not_found")) {
					return fmt.Errorf("policy %s attached; detaching the old policy %s from key %s: %w", p.ID, id, keyRef, err)
				}
			}
			if secretRef != "" {
				if _, err := cl.DetachSecretPolicy(ctx, secretRef, id); err != nil && !errors.Is(err, client.Code("policy_not_found")) {
					return fmt.Errorf("policy %s attached; detaching the old policy %s from secret %s: %w", p.ID, id, secretRef, err)
				}
			}
			// Deleted unless something else still uses it.
			if err := cl.DeletePolicy(ctx, id); err == nil {
				fmt.Fprintf(env.Stderr, "veil: replaced policy %s (deleted)\n", id)
			} else {
				fmt.Fprintf(env.Stderr, "veil: replaced policy %s (detached; kept: %v)\n", id, err)
			}
		}
		return o.print(env, p, func(w io.Writer) { fmt.Fprintf(w, "%s %s %s\n", p.ID, p.Name, p.Document) })
	})
}

// policyListOptions are the arguments of `veil kms policy list` (none but the client's).
type policyListOptions struct{ *policyOpts }

func newPolicyListCmd(env *Env, po *policyOpts) *cobra.Command {
	o := &policyListOptions{po}
	return &cobra.Command{
		Use: "list", Short: "List policies", Args: exactArgs(0),
		RunE: func(c *cobra.Command, _ []string) error { return o.run(c.Context(), env) },
	}
}

func (o *policyListOptions) run(ctx context.Context, env *Env) error {
	return o.call(func(cl *client.Client) error {
		r, err := cl.ListPolicies(ctx)
		if err != nil {
			return err
		}
		return o.print(env, r, func(w io.Writer) {
			for _, p := range r.Policies {
				fmt.Fprintf(w, "%s %s %s\n", p.ID, p.Name, p.Document)
			}
		})
	})
}

// policyShowOptions are the arguments of `veil kms policy show`.
type policyShowOptions struct {
	*policyOpts
	policy string
}

func newPolicyShowCmd(env *Env, po *policyOpts) *cobra.Command {
	o := &policyShowOptions{policyOpts: po}
	return &cobra.Command{
		Use: "show POLICY", Short: "Show a policy", Args: exactArgs(1),
		RunE: oneArg(&o.policy, func(ctx context.Context) error { return o.run(ctx, env) }),
	}
}

func (o *policyShowOptions) run(ctx context.Context, env *Env) error {
	return o.call(func(cl *client.Client) error {
		p, err := cl.GetPolicy(ctx, o.policy)
		if err != nil {
			return err
		}
		return o.print(env, p, func(w io.Writer) { fmt.Fprintf(w, "%s %s %s\n", p.ID, p.Name, p.Document) })
	})
}

// policyDeleteOptions are the arguments of `veil kms policy delete`.
type policyDeleteOptions struct {
	*policyOpts
	policy string
}

func newPolicyDeleteCmd(env *Env, po *policyOpts) *cobra.Command {
	o := &policyDeleteOptions{policyOpts: po}
	return &cobra.Command{
		Use: "delete POLICY", Short: "Delete a policy attached to nothing", Args: exactArgs(1),
		RunE: oneArg(&o.policy, func(ctx context.Context) error { return o.run(ctx, env) }),
	}
}

func (o *policyDeleteOptions) run(ctx context.Context, _ *Env) error {
	return o.call(func(cl *client.Client) error {
		return cl.DeletePolicy(ctx, o.policy)
	})
}

// policyAttachOptions are the flags of `veil kms policy attach` and, with
// attach false, `detach`.
type policyAttachOptions struct {
	*policyOpts
	attach              bool
	policy, key, secret string
}

func newPolicyAttachCmd(env *Env, po *policyOpts, attach bool) *cobra.Command {
	o := &policyAttachOptions{policyOpts: po, attach: attach}
	verb := map[bool]string{true: "attach", false: "detach"}[attach]
	c := &cobra.Command{
		Use: verb + " POLICY (--key KEY | --secret SECRET)", Short: strings.ToUpper(verb[:1]) + verb[1:] + " a policy", Args: exactArgs(1),
		RunE: oneArg(&o.policy, func(ctx context.Context) error { return o.run(ctx, env) }),
	}
	c.Flags().StringVar(&o.key, "key", "", "key")
	c.Flags().StringVar(&o.secret, "secret", "", "secret")
	return c
}

func (o *policyAttachOptions) run(ctx context.Context, _ *Env) error {
	return o.call(func(cl *client.Client) error {
		if (o.key == "") == (o.secret == "") {
			return usageErrorf("give exactly one of --key and --secret")
		}
		var err error
		switch {
		case o.key != "" && o.attach:
			_, err = cl.AttachKeyPolicy(ctx, o.key, o.policy)
		case o.key != "":
			_, err = cl.DetachKeyPolicy(ctx, o.key, o.policy)
		case o.attach:
			_, err = cl.AttachSecretPolicy(ctx, o.secret, o.policy)
		default:
			_, err = cl.DetachSecretPolicy(ctx, o.secret, o.policy)
		}
		return err
	})
}

// replacePolicies returns the ids of the policies attached to keyRef and
// secretRef, for `policy create --replace` to detach once the new one is
// attached. A policy that carries the new policy's name is detached and
// deleted now, so the name can be reused.
func replacePolicies(ctx context.Context, cl *client.Client, keyRef, secretRef, name string) ([]string, error) {
	var ids []string
	if keyRef != "" {
		k, err := cl.DescribeKey(ctx, keyRef)
		if err != nil {
			return nil, fmt.Errorf("reading key %s: %w", keyRef, err)
		}
		ids = append(ids, k.Policies...)
	}
	if secretRef != "" {
		sl, err := cl.ListSecrets(ctx)
		if err != nil {
			return nil, err
		}
		found := false
		for _, s := range sl.Secrets {
			if s.ID == secretRef || s.Name == secretRef {
				ids = append(ids, s.Policies...)
				found = true
			}
		}
		if !found {
			return nil, withHint(fmt.Errorf("secret %s not found", secretRef), "veil kms secret list shows the app's secrets")
		}
	}
	if name == "" {
		return ids, nil
	}
	pl, err := cl.ListPolicies(ctx)
	if err != nil {
		return nil, err
	}
	for _, p := range pl.Policies {
		if p.Name != name {
			continue
		}
		if keyRef != "" {
			if _, err := cl.DetachKeyPolicy(ctx, keyRef, p.ID); err != nil && !errors.Is(err, client.Code("policy_not_found")) {
				return nil, err
			}
		}
		if secretRef != "" {
			if _, err := cl.DetachSecretPolicy(ctx, secretRef, p.ID); err != nil && !errors.Is(err, client.Code("policy_not_found")) {
				return nil, err
			}
		}
		if err := cl.DeletePolicy(ctx, p.ID); err != nil {
			return nil, withHint(fmt.Errorf("replacing policy %s (%s): %w", name, p.ID, err), "it is attached elsewhere too; choose another --name")
		}
	}
	return ids, nil
}

// checkJSONFile reports a JSON syntax error in the file name with its line
// and column.
func checkJSONFile(name string, b []byte) error {
	var v any
	err := json.Unmarshal(b, &v)
	var se *json.SyntaxError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &se):
		line, col := config.JSONPosition(b, max(se.Offset-1, 0))
		return withHint(fmt.Errorf("%s: JSON syntax error at line %d, column %d: %v", name, line, col, se), "fix the JSON at that place")
	default:
		return fmt.Errorf("%s: %w", name, err)
	}
}
