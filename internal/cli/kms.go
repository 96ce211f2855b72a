package cli

// The kms command: its client settings (flags, environment, profile) and
// the hints added to the key service's errors. Each verb group has its own
// file (kms_serve.go, kms_seal.go, kms_apps.go, kms_keys.go,
// kms_secrets.go, kms_policy.go, kms_audit.go, kmsenv.go); each verb is an
// options struct whose run method does the work, callable without cobra,
// and a constructor that binds the flags to the struct.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/veil-tee/veil/internal/userdir"
	"github.com/veil-tee/veil/kms/api"
	"github.com/veil-tee/veil/kms/client"
)

// kmsExitCode maps the kms verbs' library errors to exit codes (0: not theirs).
func kmsExitCode(err error) int {
	switch {
	case errors.Is(err, client.ErrPolicyDenied), errors.Is(err, client.ErrWorkloadAuth), errors.Is(err, client.Code("policy_unavailable")):
		return ExitDenied
	case errors.Is(err, client.ErrDecryptFailed), errors.Is(err, errAuditBroken):
		return ExitIntegrity
	}
	return 0
}

// InstanceIdentity is what a release policy pins of a built instance.
type InstanceIdentity struct {
	Measurement string
	Signer      string
	ProductID   uint16
	SVN         uint16
}

var errAuditBroken = errors.New("the audit log failed verification")

// kmsOpts are the client settings shared by the kms verbs.
type kmsOpts struct {
	url, ca, appID, apiKeyFile, adminTokenFile, profile string
	clientCert, clientKey                               string
	json                                                bool
	timeout                                             time.Duration
	verbose                                             bool
	stderr                                              io.Writer
}

type kmsProfile struct {
	URL        string `json:"url"`
	CA         string `json:"ca"`
	AppID      string `json:"app_id"`
	APIKey     string `json:"api_key"`
	AdminToken string `json:"admin_token"`
}

func newKMSCmd(env *Env) *cobra.Command {
	o := &kmsOpts{stderr: env.Stderr}
	c := &cobra.Command{
		Use:   "kms",
		Short: "Run and use the key service: keys, data keys, secrets, release policies, audit",
		Long: `veil kms runs the key service and talks to it.

Client settings come from flags, else the environment (VEIL_KMS_URL,
VEIL_KMS_CA, VEIL_ADMIN_TOKEN, VEIL_APP_ID, VEIL_API_KEY), else a profile
file (--profile, VEIL_KMS_PROFILE, or kms-profile.json in veil's user
directory) holding {"url","ca","app_id","api_key","admin_token"}.`,
	}
	pf := c.PersistentFlags()
	pf.StringVar(&o.url, "url", "", "key service URL, https://HOST:PORT, or several replicas' comma-separated, tried in order (env VEIL_KMS_URL)")
	pf.BoolVarP(&o.verbose, "verbose", "v", false, "say which key service address answered each call, and why one was skipped")
	pf.StringVar(&o.ca, "ca", "", "PEM file of the CA that signed the service's certificate (env VEIL_KMS_CA)")
	pf.StringVar(&o.appID, "app-id", "", "app id for signed requests (env VEIL_APP_ID)")
	pf.StringVar(&o.apiKeyFile, "api-key-file", "", "file holding the app's API key (env VEIL_API_KEY holds the key itself)")
	pf.StringVar(&o.adminTokenFile, "admin-token-file", "", "file holding the admin token (env VEIL_ADMIN_TOKEN holds the token itself)")
	pf.StringVar(&o.profile, "profile", "", "profile file (env VEIL_KMS_PROFILE)")
	pf.StringVar(&o.clientCert, "client-cert", "", "TLS client certificate (PEM) to present, e.g. an admin client certificate")
	pf.StringVar(&o.clientKey, "client-key", "", "private key (PEM) of --client-cert")
	pf.BoolVar(&o.json, "json", false, "print JSON for scripts")
	pf.DurationVar(&o.timeout, "timeout", 30*time.Second, "time limit of each call")
	c.AddCommand(newKMSServeCmd(env), newKMSInitCmd(env, o), newKMSUnsealCmd(env, o), newKMSSealCmd(env, o),
		newKMSStatusCmd(env, o), newKMSEnrollCmd(env, o), newKMSAppsCmd(env, o), newKMSAppCmd(env, o), newKMSKeyCmd(env, o),
		newKMSSecretCmd(env, o), newKMSPolicyCmd(env, o), newKMSAuditCmd(env, o), newKMSEnvCmd(env, o))
	return c
}

func readSecretFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// client builds a key service client from flags, environment and profile.
// errNoKMSURL: no key service is configured at all.
var errNoKMSURL = errors.New("no key service URL")

func (o *kmsOpts) client() (*client.Client, error) {
	cfg, err := o.config(true)
	if err != nil {
		return nil, err
	}
	return client.New(cfg)
}

// config gathers the client settings; needURL says a missing URL is an
// error (callers that take the address from elsewhere pass false).
func (o *kmsOpts) config(needURL bool) (client.Config, error) {
	var p kmsProfile
	path := o.profile
	if path == "" {
		path = os.Getenv("VEIL_KMS_PROFILE")
	}
	explicit := path != ""
	if path == "" {
		if d, err := userdir.Dir(); err == nil {
			path = filepath.Join(d, "kms-profile.json")
		}
	}
	if path != "" {
		b, err := os.ReadFile(path)
		if err == nil {
			if err := api.DecodeStrict(b, &p); err != nil {
				return client.Config{}, withHint(fmt.Errorf("reading profile %s: %w", path, err), "a profile holds only url, ca, app_id, api_key and admin_token")
			}
		} else if explicit {
			return client.Config{}, fmt.Errorf("reading profile: %w", err)
		}
	}
	pick := func(flag, envName, prof string) string {
		if flag != "" {
			return flag
		}
		if v := os.Getenv(envName); v != "" {
			return v
		}
		return prof
	}
	cfg := client.Config{Timeout: o.timeout}
	if o.verbose && o.stderr != nil {
		w := o.stderr
		cfg.Trace = func(m string) { fmt.Fprintf(w, "veil: kms: %s\n", m) }
	}
	cfg.URL = pick(o.url, "VEIL_KMS_URL", p.URL)
	if cfg.URL == "" && needURL {
		return client.Config{}, withHint(errNoKMSURL, "pass --url or set VEIL_KMS_URL (veil kms serve --dev prints it)")
	}
	if ca := pick(o.ca, "VEIL_KMS_CA", p.CA); ca != "" {
		b, err := os.ReadFile(ca)
		if err != nil {
			return client.Config{}, withHint(fmt.Errorf("reading the key service's CA certificate: %w", err), "VEIL_KMS_CA (or --ca) names the PEM file 'veil kms serve --dev' printed")
		}
		cfg.CAPEM = b
	}
	cfg.AppID = pick(o.appID, "VEIL_APP_ID", p.AppID)
	if o.apiKeyFile != "" {
		k, err := readSecretFile(o.apiKeyFile)
		if err != nil {
			return client.Config{}, fmt.Errorf("reading the API key file: %w", err)
		}
		cfg.APIKey = k
	} else {
		cfg.APIKey = pick("", "VEIL_API_KEY", p.APIKey)
	}
	if o.adminTokenFile != "" {
		k, err := readSecretFile(o.adminTokenFile)
		if err != nil {
			return client.Config{}, fmt.Errorf("reading the admin token file: %w", err)
		}
		cfg.AdminToken = k
	} else {
		cfg.AdminToken = pick("", "VEIL_ADMIN_TOKEN", p.AdminToken)
	}
	if (o.clientCert == "") != (o.clientKey == "") {
		return client.Config{}, usageErrorf("give --client-cert and --client-key together")
	}
	if o.clientCert != "" {
		cert, err := tls.LoadX509KeyPair(o.clientCert, o.clientKey)
		if err != nil {
			return client.Config{}, fmt.Errorf("loading the client certificate: %w", err)
		}
		cfg.WorkloadCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
	}
	if cfg.AppID == "" {
		cfg.APIKey = ""
	}
	if cfg.AppID != "" && cfg.APIKey == "" {
		return client.Config{}, withHint(errors.New("an app id is set but no API key"), "set VEIL_API_KEY or pass --api-key-file")
	}
	return cfg, nil
}

// oneArg is a RunE that binds a verb's one argument (KEY, NAME, SECRET,
// POLICY) to *arg and calls run.
func oneArg(arg *string, run func(context.Context) error) func(*cobra.Command, []string) error {
	return func(c *cobra.Command, args []string) error {
		if len(args) > 0 {
			*arg = args[0]
		}
		return run(c.Context())
	}
}

// call makes the client and adds the key service's hints to fn's error.
func (o *kmsOpts) call(fn func(cl *client.Client) error) error {
	cl, err := o.client()
	if err != nil {
		return err
	}
	return kmsErr(fn(cl))
}

// print writes v as JSON with --json, else calls human.
func (o *kmsOpts) print(env *Env, v any, human func(w io.Writer)) error {
	if o.json {
		return printJSON(env.Stdout, v)
	}
	human(env.Stdout)
	return nil
}

// kmsErr adds a hint to common service errors.
func kmsErr(err error) error {
	switch {
	case errors.Is(err, client.ErrSealed):
		return withHint(err, "unseal it: veil kms unseal (once per share, up to the threshold)")
	case errors.Is(err, client.ErrUnauthenticated), errors.Is(err, client.ErrBadSignature):
		return withHint(err, "check VEIL_ADMIN_TOKEN, or VEIL_APP_ID and VEIL_API_KEY")
	case errors.Is(err, client.ErrStaleTimestamp):
		return withHint(err, "this machine's clock differs from the key service's; fix the clock")
	case errors.Is(err, client.ErrForbidden):
		return withHint(err, "admin verbs need VEIL_ADMIN_TOKEN; key, secret and policy verbs need an app (VEIL_APP_ID, VEIL_API_KEY)")
	case errors.Is(err, client.ErrConfig):
		return withHint(err, "see 'veil kms --help' for the settings")
	case errors.Is(err, client.ErrKeyNotFound):
		return withHint(err, "veil kms key list shows the keys of the app in VEIL_APP_ID (names and ids)")
	case errors.Is(err, client.Code("secret_not_found")):
		return withHint(err, "veil kms secret list shows the secrets of the app in VEIL_APP_ID")
	case errors.Is(err, client.Code("policy_not_found")):
		return withHint(err, "veil kms policy list shows the app's policies")
	case errors.Is(err, client.Code("audit_chain_damaged")), errors.Is(err, client.Code("record_integrity")):
		return withHint(err, "the key service's data directory was modified without its root key; restore it from a backup (veil kms audit verify shows the log's state)")
	case errors.Is(err, client.Code("app_disabled")):
		return withHint(err, "the admin disabled this app; ask for a new enrollment")
	}
	return connErr(err)
}

// connErr turns a failed connection to the key service into an error that
// names the service and says what to check.
func connErr(err error) error {
	var ue *url.Error
	if err == nil || !errors.As(err, &ue) {
		return err
	}
	where := ue.URL
	if u, perr := url.Parse(ue.URL); perr == nil {
		where = u.Scheme + "://" + u.Host
	}
	var ne *net.OpError
	var ua x509.UnknownAuthorityError
	var he x509.HostnameError
	switch {
	case errors.As(err, &ne) && ne.Op == "dial":
		return withHint(fmt.Errorf("the key service at %s is unreachable: %w", where, ne.Err), "start it (veil kms serve --dev --data DIR) or check VEIL_KMS_URL")
	case errors.As(err, &ua):
		return withHint(fmt.Errorf("the key service at %s presented a certificate its CA file does not sign: %w", where, ua), "VEIL_KMS_CA (or --ca) must name the CA of this service (veil kms env --data DIR prints it)")
	case errors.As(err, &he):
		return withHint(fmt.Errorf("the key service at %s: %w", where, he), "use the address its certificate names (VEIL_KMS_URL)")
	case errors.Is(err, context.DeadlineExceeded):
		return withHint(fmt.Errorf("the key service at %s did not answer in time", where), "check VEIL_KMS_URL, or raise --timeout")
	}
	return err
}
