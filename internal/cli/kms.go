package cli

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/veil-tee/veil/attest"
	"github.com/veil-tee/veil/internal/fsutil"
	"github.com/veil-tee/veil/internal/userdir"
	"github.com/veil-tee/veil/kms"
	"github.com/veil-tee/veil/kms/api"
	"github.com/veil-tee/veil/kms/audit"
	"github.com/veil-tee/veil/kms/client"
	"github.com/veil-tee/veil/kms/store"
)

func init() {
	register(groupKeys, newKMSCmd)
	exitCoders = append(exitCoders, func(err error) int {
		switch {
		case errors.Is(err, client.ErrPolicyDenied), errors.Is(err, client.ErrWorkloadAuth), errors.Is(err, client.Code("policy_unavailable")):
			return ExitDenied
		case errors.Is(err, client.ErrDecryptFailed), errors.Is(err, errAuditBroken):
			return ExitIntegrity
		}
		return 0
	})
}

// KMSWorkloadAuth, when set (by the attestation packages' wiring in
// wiring.go), supplies the workload verifier and policy evaluator of
// `veil kms serve`. While nil, no workload can authenticate.
var KMSWorkloadAuth func(WorkloadAuthOptions) (kms.WorkloadVerifier, kms.PolicyEvaluator, error)

// KMSInstanceIdentity, when set (by the image packages' wiring), reads the
// identity of a built instance for `veil kms policy create --from-instance`.
var KMSInstanceIdentity func(dir string) (InstanceIdentity, error)

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

func (o *kmsOpts) ctx(c *cobra.Command) context.Context { return c.Context() }

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

// ---- serve ----

func newKMSServeCmd(env *Env) *cobra.Command {
	var dataDir, storeURL, listen, certFile, keyFile, logLevel, adminCA, simCA, collateral string
	var dev, attestSelf bool
	c := &cobra.Command{
		Use:   "serve (--data DIR | --store postgres://...) --listen ADDR",
		Short: "Run the key service (starts sealed unless --dev)",
		Args:  exactArgs(0),
		RunE: func(c *cobra.Command, _ []string) error {
			if dataDir == "" && (storeURL == "" || dev) {
				if storeURL != "" {
					return withHint(usageErrorf("--dev needs --data for its certificate, root key and token files"), "add --data DIR")
				}
				return withHint(usageErrorf("--data or --store is required"), "--data DIR keeps the store in DIR/kms.db; --store postgres://... uses a PostgreSQL database shared by replicas")
			}
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(logLevel)); err != nil {
				return usageErrorf("--log-level: %v", err)
			}
			log := slog.New(slog.NewJSONHandler(env.Stderr, &slog.HandlerOptions{Level: lvl}))
			st, where, err := openKMSStore(c.Context(), dataDir, storeURL)
			if errors.Is(err, store.ErrLocked) {
				return withHint(fmt.Errorf("refusing to start: %w", err), "another 'veil kms serve' uses "+dataDir+"; stop it first, or use --store postgres://... for replicas")
			}
			if err != nil {
				return err
			}
			defer st.Close()
			opt := kms.Options{Store: st, Logger: log}
			if adminCA != "" {
				b, err := os.ReadFile(adminCA)
				if err != nil {
					return fmt.Errorf("reading --admin-client-ca: %w", err)
				}
				opt.AdminClientCAs = x509.NewCertPool()
				if !opt.AdminClientCAs.AppendCertsFromPEM(b) {
					return usageErrorf("--admin-client-ca %s holds no PEM certificate", adminCA)
				}
			}
			if KMSWorkloadAuth != nil {
				if opt.Verifier, opt.Evaluator, err = KMSWorkloadAuth(WorkloadAuthOptions{Dev: dev, SimCA: simCA, Collateral: collateral}); err != nil {
					return fmt.Errorf("setting up workload attestation: %w", err)
				}
			} else {
				log.Warn("no workload attestation configured: workloads cannot authenticate")
			}
			ctx := c.Context()
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("listening: %w", err)
			}
			defer ln.Close()
			var cert tls.Certificate
			var root []byte
			var ready string // printed once the server is about to accept connections
			absData, err := filepath.Abs(dataDir)
			if err != nil {
				return err
			}
			devDir := filepath.Join(absData, "dev")
			if dev {
				var token string
				cert, root, token, err = devSetup(ctx, st, devDir, ln.Addr().String())
				if err != nil {
					return err
				}
				defer clear(root)
				ready = fmt.Sprintf("export VEIL_KMS_URL=https://%s\nexport VEIL_KMS_CA=%s\nexport VEIL_ADMIN_TOKEN=%s\n",
					ln.Addr(), filepath.Join(devDir, "ca.pem"), token)
			} else {
				if certFile == "" || keyFile == "" {
					return withHint(usageErrorf("--tls-cert and --tls-key are required without --dev"), "for a local trial use --dev")
				}
				if cert, err = tls.LoadX509KeyPair(certFile, keyFile); err != nil {
					return fmt.Errorf("loading the TLS certificate: %w", err)
				}
				ready = fmt.Sprintf("export VEIL_KMS_URL=https://%s\n", ln.Addr())
			}
			if attestSelf {
				var m []byte
				var tee attest.TEE
				if opt.Attestation, m, tee, err = kmsAttestation(&cert); err != nil {
					return err
				}
				if tee == attest.TEESim {
					fmt.Fprintln(env.Stderr, "veil: warning: --attest with the sim backend: development only, the host can read everything")
				}
				if m != nil {
					ready += fmt.Sprintf("export VEIL_KMS_MEASUREMENT=%x\n", m)
				}
				log.Info("presenting evidence", "tee", string(tee), "measurement", hex.EncodeToString(m))
			}
			svc, err := kms.New(ctx, opt)
			if errors.Is(err, kms.ErrDataFormat) {
				return withHint(err, "this data directory was written by an older veil (records without MACs); initialize a new one and move the apps' keys and secrets over")
			}
			if err != nil {
				return err
			}
			defer svc.Close()
			st0 := svc.Status()
			if !st0.Initialized {
				return withHint(fmt.Errorf("%s is not initialized", where), "run 'veil kms init "+whereFlag(dataDir, storeURL)+" --shares 5 --threshold 3' first, or use --dev")
			}
			if root != nil {
				if err := svc.UnsealWithRootKey(root); err != nil {
					return err
				}
			} else if st0.Mode == kms.ModeDev {
				return withHint(errors.New("this data directory was created with --dev"), "start it with --dev")
			}
			log.Info("serving", "addr", ln.Addr().String(), "sealed", svc.Status().Sealed, "dev", dev)
			fmt.Fprint(env.Stdout, ready)
			if dev {
				// For veil kms env: written once the listener is up,
				// removed when the service stops.
				envPath := filepath.Join(devDir, devEnvFile)
				if err := fsutil.WriteFile(envPath, []byte(ready), 0o600, true); err != nil {
					return err
				}
				defer os.Remove(envPath)
			}
			return svc.Serve(ctx, ln, cert)
		},
	}
	f := c.Flags()
	f.StringVar(&dataDir, "data", "", "data directory (created if absent); the store is DIR/kms.db unless --store")
	f.StringVar(&storeURL, "store", "", "PostgreSQL store shared by replicas (postgres://user@host/db?sslmode=verify-full); default: DIR/kms.db")
	f.StringVar(&listen, "listen", "127.0.0.1:8443", "address to listen on")
	f.BoolVar(&dev, "dev", false, "development mode: self-signed certificate, local root key file, auto-unseal")
	f.StringVar(&certFile, "tls-cert", "", "server certificate chain (PEM)")
	f.StringVar(&keyFile, "tls-key", "", "server private key (PEM)")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&adminCA, "admin-client-ca", "", "PEM CA certificates whose client certificates authenticate as the admin")
	f.StringVar(&simCA, "sim-ca", "", "trust sim evidence from the platform with this CA certificate (PEM); --dev trusts the local one (veil sim init)")
	f.StringVar(&collateral, "collateral", "", "Intel PCS collateral directory for verifying SGX and TDX workloads")
	f.BoolVar(&attestSelf, "attest", false, "present evidence that the service's TLS key lives in a TEE (configfs-tsm, else the sim platform), for workloads whose veil.json kms[].attest asks for it")
	return c
}

// devSetup initializes a --dev data directory on first start and returns
// the server certificate, the root key and the admin token.
func devSetup(ctx context.Context, st store.Store, devDir, addr string) (tls.Certificate, []byte, string, error) {
	fail := func(err error) (tls.Certificate, []byte, string, error) { return tls.Certificate{}, nil, "", err }
	if err := os.MkdirAll(devDir, 0o700); err != nil {
		return fail(err)
	}
	rootPath, tokPath := filepath.Join(devDir, "root.key"), filepath.Join(devDir, "admin.token")
	if _, err := os.Stat(rootPath); errors.Is(err, os.ErrNotExist) {
		res, err := kms.Initialize(ctx, st, kms.ModeDev, 0, 0, time.Now())
		if errors.Is(err, kms.ErrAlreadyInit) {
			return fail(withHint(errors.New("the data directory was initialized without --dev"), "start it without --dev and unseal it"))
		}
		if err != nil {
			return fail(err)
		}
		if err := fsutil.WriteFile(rootPath, []byte(hex.EncodeToString(res.RootKey)+"\n"), 0o600, false); err != nil {
			return fail(err)
		}
		clear(res.RootKey)
		if err := fsutil.WriteFile(tokPath, []byte(res.AdminToken+"\n"), 0o600, false); err != nil {
			return fail(err)
		}
	}
	rk, err := readSecretFile(rootPath)
	if err != nil {
		return fail(err)
	}
	root, err := hex.DecodeString(rk)
	if err != nil {
		return fail(fmt.Errorf("%s is not a hex root key", rootPath))
	}
	token, err := readSecretFile(tokPath)
	if err != nil {
		return fail(err)
	}
	certPath, keyPath, caPath := filepath.Join(devDir, "server.pem"), filepath.Join(devDir, "server.key"), filepath.Join(devDir, "ca.pem")
	if _, err := os.Stat(certPath); errors.Is(err, os.ErrNotExist) {
		hosts := []string{"127.0.0.1", "::1", "localhost"}
		if h, _, err := net.SplitHostPort(addr); err == nil && h != "" {
			hosts = append(hosts, h)
		}
		dc, err := kms.NewDevCertificates(hosts, time.Now())
		if err != nil {
			return fail(err)
		}
		for _, f := range []struct {
			p    string
			b    []byte
			mode os.FileMode
		}{{keyPath, dc.KeyPEM, 0o600}, {certPath, dc.CertPEM, 0o644}, {caPath, dc.CAPEM, 0o644}} {
			if err := fsutil.WriteFile(f.p, f.b, f.mode, true); err != nil {
				return fail(err)
			}
		}
	}
	cert, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return fail(fmt.Errorf("loading the dev certificate: %w", err))
	}
	return cert, root, token, nil
}

// openKMSStore opens the PostgreSQL store at storeURL when it is set,
// else the bbolt store in dataDir; where names it for messages (never
// with the URL's password).
func openKMSStore(ctx context.Context, dataDir, storeURL string) (store.Store, string, error) {
	if storeURL == "" {
		st, err := store.OpenBolt(dataDir, store.BoltOptions{})
		return st, "the data directory " + dataDir, err
	}
	if !strings.HasPrefix(storeURL, "postgres://") && !strings.HasPrefix(storeURL, "postgresql://") {
		return nil, "", usageErrorf("--store must be a postgres:// URL")
	}
	st, err := store.OpenPostgres(ctx, storeURL, store.PostgresOptions{})
	if errors.Is(err, store.ErrSchemaTooNew) {
		return nil, "", withHint(err, "a newer veil migrated this database; run that version")
	}
	if err != nil {
		return nil, "", withHint(err, "check that the database in --store is reachable and the user may create tables in it")
	}
	return st, "the database store", nil
}

func whereFlag(dataDir, storeURL string) string {
	if storeURL != "" {
		return "--store URL"
	}
	return "--data " + dataDir
}

// ---- init / unseal / seal / status ----

func newKMSInitCmd(env *Env, o *kmsOpts) *cobra.Command {
	var dataDir, storeURL string
	var shares, threshold int
	c := &cobra.Command{
		Use:   "init (--data DIR | --store postgres://...) --shares N --threshold K",
		Short: "Create the root key of a stopped server's data directory and split it into shares",
		Args:  exactArgs(0),
		RunE: func(c *cobra.Command, _ []string) error {
			if (dataDir == "") == (storeURL == "") {
				return usageErrorf("give one of --data and --store")
			}
			if threshold < 1 || shares < threshold || shares > 255 {
				return usageErrorf("need 1 <= --threshold (%d) <= --shares (%d) <= 255", threshold, shares)
			}
			st, where, err := openKMSStore(c.Context(), dataDir, storeURL)
			if errors.Is(err, store.ErrLocked) {
				return withHint(err, "stop the server using "+dataDir+" first: init runs on the data directory directly")
			}
			if err != nil {
				return err
			}
			defer st.Close()
			res, err := kms.Initialize(c.Context(), st, kms.ModeShamir, shares, threshold, time.Now())
			if errors.Is(err, kms.ErrAlreadyInit) {
				return withHint(fmt.Errorf("%s is already initialized", where), "its root key cannot be re-created; unseal it with its shares")
			}
			if err != nil {
				return err
			}
			return o.print(env, map[string]any{"shares": res.Shares, "threshold": threshold, "admin_token": res.AdminToken}, func(w io.Writer) {
				for i, s := range res.Shares {
					fmt.Fprintf(w, "share %d: %s\n", i+1, s)
				}
				fmt.Fprintf(w, "admin token: %s\n", res.AdminToken)
				fmt.Fprintf(w, "\nGive each share to a different person; any %d of them unseal the server.\nThey are shown only now and are not stored anywhere.\n", threshold)
			})
		},
	}
	c.Flags().StringVar(&dataDir, "data", "", "data directory")
	c.Flags().StringVar(&storeURL, "store", "", "PostgreSQL store (postgres://...) instead of --data")
	c.Flags().IntVar(&shares, "shares", 5, "number of shares")
	c.Flags().IntVar(&threshold, "threshold", 3, "shares needed to unseal")
	return c
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

func newKMSUnsealCmd(env *Env, o *kmsOpts) *cobra.Command {
	var shareFile string
	c := &cobra.Command{
		Use:   "unseal [--share-file FILE]",
		Short: "Give the server one share of its root key, read from standard input or --share-file",
		Long: "Give the server one share of its root key. The share is read from standard input, or from\n" +
			"--share-file; it is never taken from the command line, where other users see it (ps).",
		RunE: func(c *cobra.Command, args []string) error {
			if len(args) > 0 {
				return withHint(usageErrorf("veil kms unseal takes no share on the command line (other users see it in ps)"),
					"pipe it in (veil kms unseal < share.txt) or use --share-file FILE")
			}
			cl, err := o.client()
			if err != nil {
				return err
			}
			var share string
			if shareFile != "" {
				if share, err = readSecretFile(shareFile); err != nil {
					return fmt.Errorf("reading --share-file: %w", err)
				}
			} else {
				b, err := io.ReadAll(io.LimitReader(env.Stdin, 4096))
				if err != nil {
					return err
				}
				share = strings.TrimSpace(string(b))
			}
			st, err := cl.Unseal(o.ctx(c), share)
			if err != nil {
				return kmsErr(err)
			}
			return o.print(env, st, func(w io.Writer) { printStatus(w, st) })
		},
	}
	c.Flags().StringVar(&shareFile, "share-file", "", "read the share from this file instead of standard input")
	return c
}

func newKMSSealCmd(env *Env, o *kmsOpts) *cobra.Command {
	return &cobra.Command{
		Use: "seal", Short: "Make the server forget its root key (admin)", Args: exactArgs(0),
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := o.client()
			if err != nil {
				return err
			}
			st, err := cl.Seal(o.ctx(c))
			if err != nil {
				return kmsErr(err)
			}
			return o.print(env, st, func(w io.Writer) { printStatus(w, st) })
		},
	}
}

func newKMSStatusCmd(env *Env, o *kmsOpts) *cobra.Command {
	return &cobra.Command{
		Use: "status", Short: "Show whether the server is initialized and sealed", Args: exactArgs(0),
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := o.client()
			if err != nil {
				return err
			}
			st, err := cl.Status(o.ctx(c))
			if err != nil {
				return kmsErr(err)
			}
			return o.print(env, st, func(w io.Writer) { printStatus(w, st) })
		},
	}
}

// ---- apps ----

func newKMSEnrollCmd(env *Env, o *kmsOpts) *cobra.Command {
	var name string
	c := &cobra.Command{
		Use: "enroll --name NAME", Short: "Enroll an app (admin); prints its id and API key once", Args: exactArgs(0),
		RunE: func(c *cobra.Command, _ []string) error {
			if name == "" {
				return usageErrorf("--name is required")
			}
			cl, err := o.client()
			if err != nil {
				return err
			}
			r, err := cl.Enroll(o.ctx(c), name)
			if err != nil {
				return kmsErr(err)
			}
			return o.print(env, r, func(w io.Writer) {
				fmt.Fprintf(w, "export VEIL_APP_ID=%s\nexport VEIL_API_KEY=%s\n", r.AppID, r.APIKey)
				fmt.Fprintln(env.Stderr, "veil: the API key is shown only now; keep it secret")
			})
		},
	}
	c.Flags().StringVar(&name, "name", "", "app name")
	return c
}

func newKMSAppsCmd(env *Env, o *kmsOpts) *cobra.Command {
	return &cobra.Command{
		Use: "apps", Short: "List enrolled apps (admin)", Args: exactArgs(0),
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := o.client()
			if err != nil {
				return err
			}
			r, err := cl.ListApps(o.ctx(c))
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
		},
	}
}

func newKMSAppCmd(env *Env, o *kmsOpts) *cobra.Command {
	c := &cobra.Command{Use: "app", Short: "Manage an enrolled app's credentials"}
	rotate := &cobra.Command{
		Use:   "rotate-key APPID",
		Short: "Give an app a new API key (admin, or the app itself); the old key is refused at once",
		Args:  exactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := o.client()
			if err != nil {
				return err
			}
			r, err := cl.RotateAppKey(o.ctx(c), args[0])
			if err != nil {
				return kmsErr(err)
			}
			return o.print(env, r, func(w io.Writer) {
				fmt.Fprintf(w, "export VEIL_APP_ID=%s\nexport VEIL_API_KEY=%s\n", r.AppID, r.APIKey)
				fmt.Fprintln(env.Stderr, "veil: the new API key is shown only now; the old one no longer works")
			})
		},
	}
	disable := &cobra.Command{
		Use:   "disable APPID",
		Short: "Refuse every request signed by an app from now on (admin)",
		Args:  exactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := o.client()
			if err != nil {
				return err
			}
			a, err := cl.DisableApp(o.ctx(c), args[0])
			if err != nil {
				return kmsErr(err)
			}
			return o.print(env, a, func(w io.Writer) { fmt.Fprintf(w, "app %s (%s) disabled\n", a.AppID, a.Name) })
		},
	}
	c.AddCommand(rotate, disable)
	return c
}

// ---- keys ----

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
	withClient := func(run func(c *cobra.Command, cl *client.Client, args []string) error) func(*cobra.Command, []string) error {
		return func(c *cobra.Command, args []string) error {
			cl, err := o.client()
			if err != nil {
				return err
			}
			return kmsErr(run(c, cl, args))
		}
	}
	var name, spec, desc string
	create := &cobra.Command{
		Use: "create --name NAME", Short: "Create a key", Args: exactArgs(0),
		RunE: withClient(func(c *cobra.Command, cl *client.Client, _ []string) error {
			if name == "" {
				return usageErrorf("--name is required")
			}
			k, err := cl.CreateKey(o.ctx(c), name, spec, desc)
			if err != nil {
				return err
			}
			return o.print(env, k, func(w io.Writer) { printKeys(w, []api.Key{k}) })
		}),
	}
	create.Flags().StringVar(&name, "name", "", "key name (unique for the app)")
	create.Flags().StringVar(&spec, "spec", api.SpecAES256GCM, "key spec: AES_256_GCM, EC_P256 or RSA_3072")
	create.Flags().StringVar(&desc, "description", "", "description")
	list := &cobra.Command{
		Use: "list", Short: "List the app's keys", Args: exactArgs(0),
		RunE: withClient(func(c *cobra.Command, cl *client.Client, _ []string) error {
			r, err := cl.ListKeys(o.ctx(c))
			if err != nil {
				return err
			}
			return o.print(env, r, func(w io.Writer) { printKeys(w, r.Keys) })
		}),
	}
	describe := &cobra.Command{
		Use: "describe KEY", Short: "Show a key", Args: exactArgs(1),
		RunE: withClient(func(c *cobra.Command, cl *client.Client, args []string) error {
			k, err := cl.DescribeKey(o.ctx(c), args[0])
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
		}),
	}
	c.AddCommand(create, list, describe)
	for _, a := range []struct{ verb, short string }{
		{"enable", "Enable a key"}, {"disable", "Disable a key (it can no longer encrypt or decrypt)"},
		{"rotate", "Add a new version; old versions keep decrypting"}, {"cancel-deletion", "Cancel a scheduled deletion (the key stays disabled)"},
	} {
		c.AddCommand(&cobra.Command{
			Use: a.verb + " KEY", Short: a.short, Args: exactArgs(1),
			RunE: withClient(func(c *cobra.Command, cl *client.Client, args []string) error {
				k, err := cl.KeyAction(o.ctx(c), args[0], a.verb)
				if err != nil {
					return err
				}
				return o.print(env, k, func(w io.Writer) { printKeys(w, []api.Key{k}) })
			}),
		})
	}
	var days int
	sched := &cobra.Command{
		Use: "schedule-deletion KEY", Short: "Delete a key after a grace period", Args: exactArgs(1),
		RunE: withClient(func(c *cobra.Command, cl *client.Client, args []string) error {
			k, err := cl.ScheduleKeyDeletion(o.ctx(c), args[0], days)
			if err != nil {
				return err
			}
			return o.print(env, k, func(w io.Writer) { printKeys(w, []api.Key{k}) })
		}),
	}
	sched.Flags().IntVar(&days, "days", 30, "grace period in days (1-30)")
	var aad string
	var withoutPT bool
	encrypt := &cobra.Command{
		Use: "encrypt KEY", Short: "Encrypt standard input (at most 4 KiB); prints base64", Args: exactArgs(1),
		RunE: withClient(func(c *cobra.Command, cl *client.Client, args []string) error {
			pt, err := io.ReadAll(io.LimitReader(env.Stdin, kms.MaxPlaintext+1))
			if err != nil {
				return err
			}
			r, err := cl.Encrypt(o.ctx(c), args[0], pt, []byte(aad))
			clear(pt)
			if err != nil {
				return err
			}
			return o.print(env, r, func(w io.Writer) { fmt.Fprintln(w, base64.StdEncoding.EncodeToString(r.Ciphertext)) })
		}),
	}
	decrypt := &cobra.Command{
		Use: "decrypt", Short: "Decrypt a base64 ciphertext from standard input (it names its key)", Args: exactArgs(0),
		RunE: withClient(func(c *cobra.Command, cl *client.Client, _ []string) error {
			in, err := io.ReadAll(io.LimitReader(env.Stdin, 64<<10))
			if err != nil {
				return err
			}
			ct, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(in)))
			if err != nil {
				return usageErrorf("standard input is not base64: %v", err)
			}
			r, err := cl.Decrypt(o.ctx(c), ct, []byte(aad))
			if err != nil {
				return err
			}
			if o.json {
				return o.print(env, r, nil)
			}
			_, err = env.Stdout.Write(r.Plaintext)
			return err
		}),
	}
	gdk := &cobra.Command{
		Use: "generate-data-key KEY", Short: "Generate a data key; prints it (base64) and its wrapped form", Args: exactArgs(1),
		RunE: withClient(func(c *cobra.Command, cl *client.Client, args []string) error {
			var r api.CipherResponse
			var err error
			if withoutPT {
				r, err = cl.GenerateDataKeyWithoutPlaintext(o.ctx(c), args[0], 32, []byte(aad))
			} else {
				r, err = cl.GenerateDataKey(o.ctx(c), args[0], 32, []byte(aad))
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
		}),
	}
	for _, cc := range []*cobra.Command{encrypt, decrypt, gdk} {
		cc.Flags().StringVar(&aad, "aad", "", "additional authenticated data (text)")
	}
	gdk.Flags().BoolVar(&withoutPT, "without-plaintext", false, "return only the wrapped key")
	sign := &cobra.Command{
		Use: "sign KEY", Short: "Sign standard input (at most 4 KiB) with an EC_P256 or RSA_3072 key; prints base64", Args: exactArgs(1),
		RunE: withClient(func(c *cobra.Command, cl *client.Client, args []string) error {
			msg, err := io.ReadAll(io.LimitReader(env.Stdin, kms.MaxPlaintext+1))
			if err != nil {
				return err
			}
			r, err := cl.Sign(o.ctx(c), args[0], msg)
			if err != nil {
				return err
			}
			return o.print(env, r, func(w io.Writer) { fmt.Fprintln(w, base64.StdEncoding.EncodeToString(r.Signature)) })
		}),
	}
	var sigB64 string
	var version int
	verify := &cobra.Command{
		Use: "verify KEY --signature BASE64", Short: "Verify a signature over standard input", Args: exactArgs(1),
		RunE: withClient(func(c *cobra.Command, cl *client.Client, args []string) error {
			sig, err := base64.StdEncoding.DecodeString(sigB64)
			if err != nil {
				return usageErrorf("--signature is not base64: %v", err)
			}
			msg, err := io.ReadAll(io.LimitReader(env.Stdin, kms.MaxPlaintext+1))
			if err != nil {
				return err
			}
			r, err := cl.Verify(o.ctx(c), args[0], msg, sig, version)
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
		}),
	}
	verify.Flags().StringVar(&sigB64, "signature", "", "signature (base64)")
	verify.Flags().IntVar(&version, "version", 0, "key version (default: primary)")
	pubkey := &cobra.Command{
		Use: "public-key KEY", Short: "Print the PEM public key of an EC_P256 or RSA_3072 key", Args: exactArgs(1),
		RunE: withClient(func(c *cobra.Command, cl *client.Client, args []string) error {
			r, err := cl.PublicKey(o.ctx(c), args[0], version)
			if err != nil {
				return err
			}
			return o.print(env, r, func(w io.Writer) { fmt.Fprint(w, r.PublicKey) })
		}),
	}
	pubkey.Flags().IntVar(&version, "version", 0, "key version (default: primary)")
	c.AddCommand(sched, encrypt, decrypt, gdk, sign, verify, pubkey)
	return c
}

// ---- secrets ----

func newKMSSecretCmd(env *Env, o *kmsOpts) *cobra.Command {
	c := &cobra.Command{Use: "secret", Short: "Store and read versioned secrets (app)"}
	run := func(fn func(c *cobra.Command, cl *client.Client, args []string) error) func(*cobra.Command, []string) error {
		return func(c *cobra.Command, args []string) error {
			cl, err := o.client()
			if err != nil {
				return err
			}
			return kmsErr(fn(c, cl, args))
		}
	}
	var file, desc string
	put := &cobra.Command{
		Use: "put NAME", Short: "Store a new version (value from --file or standard input)", Args: exactArgs(1),
		RunE: run(func(c *cobra.Command, cl *client.Client, args []string) error {
			var v []byte
			var err error
			if file != "" {
				v, err = os.ReadFile(file)
			} else {
				v, err = io.ReadAll(io.LimitReader(env.Stdin, kms.MaxSecretValue+1))
			}
			if err != nil {
				return err
			}
			s, err := cl.PutSecret(o.ctx(c), args[0], v, desc)
			clear(v)
			if err != nil {
				return err
			}
			return o.print(env, s, func(w io.Writer) { fmt.Fprintf(w, "%s %s version %d\n", s.ID, s.Name, s.Version) })
		}),
	}
	put.Flags().StringVar(&file, "file", "", "read the value from this file")
	put.Flags().StringVar(&desc, "description", "", "description")
	var version int
	get := &cobra.Command{
		Use: "get SECRET", Short: "Print a secret's value", Args: exactArgs(1),
		RunE: run(func(c *cobra.Command, cl *client.Client, args []string) error {
			s, err := cl.GetSecret(o.ctx(c), args[0], version)
			if err != nil {
				return err
			}
			if o.json {
				return o.print(env, s, nil)
			}
			_, err = env.Stdout.Write(s.Value)
			return err
		}),
	}
	get.Flags().IntVar(&version, "version", 0, "version (default: latest)")
	list := &cobra.Command{
		Use: "list", Short: "List secrets", Args: exactArgs(0),
		RunE: run(func(c *cobra.Command, cl *client.Client, _ []string) error {
			r, err := cl.ListSecrets(o.ctx(c))
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
		}),
	}
	del := &cobra.Command{
		Use: "delete SECRET", Short: "Delete a secret and all its versions", Args: exactArgs(1),
		RunE: run(func(c *cobra.Command, cl *client.Client, args []string) error {
			return cl.DeleteSecret(o.ctx(c), args[0])
		}),
	}
	c.AddCommand(put, get, list, del)
	return c
}

// ---- policies ----

// policyDocument is the release policy built from flags. Its fields follow
// the attestation policy (docs/attestation.md); the service stores it as
// given and the attestation evaluator decides.
// policyDocument is what the flags of `veil kms policy create` say, in the
// attestation policy language (docs/attestation.md).
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

func newKMSPolicyCmd(env *Env, o *kmsOpts) *cobra.Command {
	c := &cobra.Command{Use: "policy", Short: "Manage release policies for workloads (app, or admin with --app)"}
	var forApp string
	c.PersistentFlags().StringVar(&forApp, "app", "", "act as the admin on behalf of this app id (needs VEIL_ADMIN_TOKEN)")
	run := func(fn func(c *cobra.Command, cl *client.Client, args []string) error) func(*cobra.Command, []string) error {
		return func(c *cobra.Command, args []string) error {
			cfg, err := o.config(true)
			if err != nil {
				return err
			}
			// Policies are the key owner's to attach: act as the app.
			if forApp == "" && cfg.AppID == "" {
				return withHint(errors.New("policies are managed by the app that owns the key, and no app is set"), `set VEIL_APP_ID and VEIL_API_KEY of the key's owner (eval "$(veil kms enroll --name NAME)" prints them)`)
			}
			cl, err := client.New(cfg)
			if err != nil {
				return err
			}
			if forApp != "" {
				cl = cl.AdminFor(forApp)
			}
			return kmsErr(fn(c, cl, args))
		}
	}
	var name, fromInstance, docFile, keyRef, secretRef string
	var replace bool
	var doc policyDocument
	var productID int
	create := &cobra.Command{
		Use:   "create [--name NAME] (--mrenclave HEX... | --from-instance DIR | --document FILE) [--key KEY] [--secret SECRET]",
		Short: "Create a release policy and optionally attach it to a key or secret",
		Args:  exactArgs(0),
		RunE: run(func(c *cobra.Command, cl *client.Client, _ []string) error {
			var body []byte
			switch {
			case docFile != "":
				b, err := os.ReadFile(docFile)
				if err != nil {
					return fmt.Errorf("reading the policy document: %w", err)
				}
				if err := checkJSONFile(docFile, b); err != nil {
					return err
				}
				body = b
			default:
				if fromInstance != "" {
					if KMSInstanceIdentity == nil {
						return withHint(usageErrorf("--from-instance is not available in this build"), "pass --mrenclave, --mrsigner, --product-id and --min-svn (see 'veil print mrenclave')")
					}
					id, err := KMSInstanceIdentity(fromInstance)
					if err != nil {
						return loadHint(fmt.Errorf("reading the instance identity: %w", err))
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
					return usageErrorf("a policy needs --mrenclave, --mrsigner, --from-instance or --document")
				}
				if err := checkHex("mrenclave", doc.Measurements, 32); err != nil {
					return err
				}
				if err := checkHex("mrsigner", doc.Signers, 32); err != nil {
					return err
				}
				switch len(doc.Signers) {
				case 0:
				case 1:
					doc.Signer = doc.Signers[0]
				default:
					return usageErrorf("a policy names one signer; create one policy per signer")
				}
				if c.Flags().Changed("product-id") {
					if productID < 0 || productID > 65535 {
						return usageErrorf("--product-id must be 0-65535")
					}
					pid := uint16(productID)
					doc.ProductID = &pid
				}
				body, _ = json.Marshal(doc)
			}
			if name == "" {
				// A random suffix keeps two policies made within one
				// second apart.
				var r [3]byte
				rand.Read(r[:])
				name = fmt.Sprintf("policy-%s-%x", time.Now().UTC().Format("20060102-150405"), r)
			}
			var old []string
			if replace {
				if keyRef == "" && secretRef == "" {
					return usageErrorf("--replace needs --key or --secret: it replaces the policies attached there")
				}
				var err error
				if old, err = replacePolicies(c, o, cl, keyRef, secretRef, name); err != nil {
					return err
				}
			}
			p, err := cl.CreatePolicy(o.ctx(c), name, body)
			if err != nil {
				if errors.Is(err, client.Code("already_exists")) {
					return withHint(fmt.Errorf("a policy named %s exists: %w", name, err), "choose another --name, or add --replace with --key to replace the key's policies")
				}
				return err
			}
			if keyRef != "" {
				if _, err := cl.AttachKeyPolicy(o.ctx(c), keyRef, p.ID); err != nil {
					return fmt.Errorf("policy %s created, attaching it to key %s: %w", p.ID, keyRef, err)
				}
			}
			if secretRef != "" {
				if _, err := cl.AttachSecretPolicy(o.ctx(c), secretRef, p.ID); err != nil {
					return fmt.Errorf("policy %s created, attaching it to secret %s: %w", p.ID, secretRef, err)
				}
			}
			for _, id := range old {
				if id == p.ID {
					continue
				}
				if keyRef != "" {
					if _, err := cl.DetachKeyPolicy(o.ctx(c), keyRef, id); err != nil && !errors.Is(err, client.Code("policy_not_found")) {
						return fmt.Errorf("policy %s attached; detaching the old policy %s from key %s: %w", p.ID, id, keyRef, err)
					}
				}
				if secretRef != "" {
					if _, err := cl.DetachSecretPolicy(o.ctx(c), secretRef, id); err != nil && !errors.Is(err, client.Code("policy_not_found")) {
						return fmt.Errorf("policy %s attached; detaching the old policy %s from secret %s: %w", p.ID, id, secretRef, err)
					}
				}
				// Deleted unless something else still uses it.
				if err := cl.DeletePolicy(o.ctx(c), id); err == nil {
					fmt.Fprintf(env.Stderr, "veil: replaced policy %s (deleted)\n", id)
				} else {
					fmt.Fprintf(env.Stderr, "veil: replaced policy %s (detached; kept: %v)\n", id, err)
				}
			}
			return o.print(env, p, func(w io.Writer) { fmt.Fprintf(w, "%s %s %s\n", p.ID, p.Name, p.Document) })
		}),
	}
	f := create.Flags()
	f.BoolVar(&replace, "replace", false, "replace the policies of --key/--secret: once the new one is attached, detach the others (deleting those nothing else uses); for a rebuild that changed the measurement")
	f.StringVar(&name, "name", "", "policy name (default: policy-TIMESTAMP-RANDOM)")
	f.StringVar(&fromInstance, "from-instance", "", "take the measurement, signer, product id and svn from a built instance")
	f.StringVar(&docFile, "document", "", "policy document (JSON file) instead of flags")
	f.StringSliceVar(&doc.Measurements, "mrenclave", nil, "allowed measurement (hex, repeatable)")
	f.StringSliceVar(&doc.Signers, "mrsigner", nil, "allowed signer (hex, repeatable)")
	f.IntVar(&productID, "product-id", 0, "required product id")
	f.Uint16Var(&doc.MinSVN, "min-svn", 0, "minimum security version")
	f.StringSliceVar(&doc.TEE, "tee", nil, "allowed TEE kinds (sgx, tdx, snp, sim)")
	f.BoolVar(&doc.AllowDebug, "allow-debug", false, "accept debuggable workloads")
	f.BoolVar(&doc.AllowSim, "allow-sim", false, "accept the software sim backend (development only)")
	f.StringVar(&keyRef, "key", "", "attach to this key")
	f.StringVar(&secretRef, "secret", "", "attach to this secret")
	list := &cobra.Command{
		Use: "list", Short: "List policies", Args: exactArgs(0),
		RunE: run(func(c *cobra.Command, cl *client.Client, _ []string) error {
			r, err := cl.ListPolicies(o.ctx(c))
			if err != nil {
				return err
			}
			return o.print(env, r, func(w io.Writer) {
				for _, p := range r.Policies {
					fmt.Fprintf(w, "%s %s %s\n", p.ID, p.Name, p.Document)
				}
			})
		}),
	}
	show := &cobra.Command{
		Use: "show POLICY", Short: "Show a policy", Args: exactArgs(1),
		RunE: run(func(c *cobra.Command, cl *client.Client, args []string) error {
			p, err := cl.GetPolicy(o.ctx(c), args[0])
			if err != nil {
				return err
			}
			return o.print(env, p, func(w io.Writer) { fmt.Fprintf(w, "%s %s %s\n", p.ID, p.Name, p.Document) })
		}),
	}
	del := &cobra.Command{
		Use: "delete POLICY", Short: "Delete a policy attached to nothing", Args: exactArgs(1),
		RunE: run(func(c *cobra.Command, cl *client.Client, args []string) error {
			return cl.DeletePolicy(o.ctx(c), args[0])
		}),
	}
	var aKey, aSecret string
	attach := func(on bool) *cobra.Command {
		verb := map[bool]string{true: "attach", false: "detach"}[on]
		cc := &cobra.Command{
			Use: verb + " POLICY (--key KEY | --secret SECRET)", Short: strings.ToUpper(verb[:1]) + verb[1:] + " a policy", Args: exactArgs(1),
			RunE: run(func(c *cobra.Command, cl *client.Client, args []string) error {
				if (aKey == "") == (aSecret == "") {
					return usageErrorf("give exactly one of --key and --secret")
				}
				var err error
				switch {
				case aKey != "" && on:
					_, err = cl.AttachKeyPolicy(o.ctx(c), aKey, args[0])
				case aKey != "":
					_, err = cl.DetachKeyPolicy(o.ctx(c), aKey, args[0])
				case on:
					_, err = cl.AttachSecretPolicy(o.ctx(c), aSecret, args[0])
				default:
					_, err = cl.DetachSecretPolicy(o.ctx(c), aSecret, args[0])
				}
				return err
			}),
		}
		cc.Flags().StringVar(&aKey, "key", "", "key")
		cc.Flags().StringVar(&aSecret, "secret", "", "secret")
		return cc
	}
	c.AddCommand(create, list, show, del, attach(true), attach(false))
	return c
}

// ---- audit ----

func newKMSAuditCmd(env *Env, o *kmsOpts) *cobra.Command {
	c := &cobra.Command{Use: "audit", Short: "Read and verify the hash-chained audit log (admin)"}
	var key string
	list := &cobra.Command{
		Use: "list [--key KEYID]", Short: "List audit entries", Args: exactArgs(0),
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := o.client()
			if err != nil {
				return err
			}
			es, err := cl.AuditEntries(o.ctx(c), key, 0, 0)
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
		},
	}
	list.Flags().StringVar(&key, "key", "", "only entries naming this key id")
	var checkpointFile string
	verify := &cobra.Command{
		Use:   "verify [--checkpoint FILE]",
		Short: "Recompute the chain; report edited, reordered, deleted or appended entries, a damaged head, a rollback",
		Args:  exactArgs(0),
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := o.client()
			if err != nil {
				return err
			}
			var probs []audit.Problem
			var head api.AuditHead
			if checkpointFile != "" {
				b, err := os.ReadFile(checkpointFile)
				if err != nil {
					return fmt.Errorf("reading --checkpoint: %w", err)
				}
				cp, err := audit.ParseCheckpoint(b)
				if err != nil {
					return withHint(fmt.Errorf("reading --checkpoint %s: %w", checkpointFile, err), "give a file written by 'veil kms audit checkpoint'")
				}
				probs, head, err = cl.VerifyAuditCheckpoint(o.ctx(c), cp)
				if errors.Is(err, audit.ErrCheckpoint) {
					return fmt.Errorf("%w: %v", errAuditBroken, err)
				}
				if err != nil {
					return kmsErr(err)
				}
			} else if probs, head, err = cl.VerifyAudit(o.ctx(c)); err != nil {
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
		},
	}
	verify.Flags().StringVar(&checkpointFile, "checkpoint", "", "also check that the log still holds this checkpoint (detects a rollback of the data directory)")
	checkpoint := &cobra.Command{
		Use:   "checkpoint",
		Short: "Print a signed checkpoint (seq, hash, time) of the log's head; store it away from the server",
		Args:  exactArgs(0),
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := o.client()
			if err != nil {
				return err
			}
			cp, err := cl.AuditCheckpoint(o.ctx(c))
			if err != nil {
				return kmsErr(err)
			}
			b, err := json.MarshalIndent(cp, "", "  ")
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(env.Stdout, "%s\n", b)
			return err
		},
	}
	c.AddCommand(list, verify, checkpoint)
	return c
}
