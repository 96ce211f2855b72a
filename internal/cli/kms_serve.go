package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"

	"github.com/spf13/cobra"

	"github.com/veil-tee/veil/attest"
	"github.com/veil-tee/veil/internal/fsutil"
	"github.com/veil-tee/veil/kms"
	devkms "github.com/veil-tee/veil/kms/dev"
	"github.com/veil-tee/veil/kms/ehsm"
	"github.com/veil-tee/veil/kms/secretprov"
	"github.com/veil-tee/veil/kms/selfattest"
	"github.com/veil-tee/veil/kms/store"
	"github.com/veil-tee/veil/kms/workload"
)

// kmsServeOptions are the flags of `veil kms serve`.
type kmsServeOptions struct {
	dataDir, storeURL, listen, certFile, keyFile, logLevel, adminCA, simCA, collateral string
	secretProvListen, secretProvSecret                                                 string
	ehsmListen, cpuProfile                                                             string
	dev, attestSelf                                                                    bool
}

func newKMSServeCmd(env *Env) *cobra.Command {
	o := &kmsServeOptions{}
	c := &cobra.Command{
		Use:   "serve (--data DIR | --store postgres://...) --listen ADDR",
		Short: "Run the key service (starts sealed unless --dev)",
		Args:  exactArgs(0),
		RunE:  func(c *cobra.Command, _ []string) error { return o.run(c.Context(), env) },
	}
	f := c.Flags()
	f.StringVar(&o.dataDir, "data", "", "data directory (created if absent); the store is DIR/kms.db unless --store")
	f.StringVar(&o.storeURL, "store", "", "PostgreSQL store shared by replicas (postgres://user@host/db?sslmode=verify-full); default: DIR/kms.db")
	f.StringVar(&o.listen, "listen", "127.0.0.1:8443", "address to listen on")
	f.BoolVar(&o.dev, "dev", false, "development mode: self-signed certificate, local root key file, auto-unseal")
	f.StringVar(&o.certFile, "tls-cert", "", "server certificate chain (PEM)")
	f.StringVar(&o.keyFile, "tls-key", "", "server private key (PEM)")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&o.adminCA, "admin-client-ca", "", "PEM CA certificates whose client certificates authenticate as the admin")
	f.StringVar(&o.simCA, "sim-ca", "", "trust sim evidence from the platform with this CA certificate (PEM); --dev trusts the local one (veil sim init)")
	f.StringVar(&o.collateral, "collateral", "", "Intel PCS collateral directory for verifying SGX and TDX workloads")
	f.StringVar(&o.ehsmListen, "ehsm-listen", "", "also serve the eHSM-compatible API (POST /ehsm?Action=...) on this address, over the same TLS certificate (off by default; docs/ehsm.md)")
	f.BoolVar(&o.attestSelf, "attest", false, "present evidence that the service's TLS key lives in a TEE (configfs-tsm, else the sim platform), for workloads whose veil.json kms[].attest asks for it")
	f.StringVar(&o.secretProvListen, "secret-prov-listen", "", "also serve Gramine secret provisioning (secret_prov_attest clients) on this address; off by default")
	f.StringVar(&o.secretProvSecret, "secret-prov-secret", "", "id of the secret (s_...) sent to enclaves that satisfy one of its release policies; with --secret-prov-listen")
	// For performance work (docs/performance.md): a CPU profile of the
	// whole life of the server, written when it stops.
	f.StringVar(&o.cpuProfile, "cpu-profile", "", "write a CPU profile (pprof) of the server to this file until it stops")
	f.MarkHidden("cpu-profile")
	return c
}

// run serves until ctx is done.
func (o *kmsServeOptions) run(ctx context.Context, env *Env) error {
	if o.dataDir == "" && (o.storeURL == "" || o.dev) {
		if o.storeURL != "" {
			return withHint(usageErrorf("--dev needs --data for its certificate, root key and token files"), "add --data DIR")
		}
		return withHint(usageErrorf("--data or --store is required"), "--data DIR keeps the store in DIR/kms.db; --store postgres://... uses a PostgreSQL database shared by replicas")
	}
	if (o.secretProvListen == "") != (o.secretProvSecret == "") {
		return withHint(usageErrorf("--secret-prov-listen and --secret-prov-secret go together"), "name the address to listen on and the id of the secret to send (veil kms secret list shows ids)")
	}
	if o.secretProvSecret != "" && !strings.HasPrefix(o.secretProvSecret, "s_") {
		return withHint(usageErrorf("--secret-prov-secret %q is not a secret id", o.secretProvSecret), "give the secret's id (s_...), as veil kms secret list shows it")
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(o.logLevel)); err != nil {
		return usageErrorf("--log-level: %v", err)
	}
	log := slog.New(slog.NewJSONHandler(env.Stderr, &slog.HandlerOptions{Level: lvl}))
	if o.cpuProfile != "" {
		pf, err := os.Create(o.cpuProfile)
		if err != nil {
			return fmt.Errorf("creating --cpu-profile: %w", err)
		}
		defer pf.Close()
		if err := pprof.StartCPUProfile(pf); err != nil {
			return fmt.Errorf("starting the CPU profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	st, where, err := openKMSStore(ctx, o.dataDir, o.storeURL)
	if errors.Is(err, store.ErrLocked) {
		return withHint(fmt.Errorf("refusing to start: %w", err), "another 'veil kms serve' uses "+o.dataDir+"; stop it first, or use --store postgres://... for replicas")
	}
	if err != nil {
		return err
	}
	defer st.Close()
	opt := kms.Options{Store: st, Logger: log}
	if o.adminCA != "" {
		b, err := os.ReadFile(o.adminCA)
		if err != nil {
			return fmt.Errorf("reading --admin-client-ca: %w", err)
		}
		opt.AdminClientCAs = x509.NewCertPool()
		if !opt.AdminClientCAs.AppendCertsFromPEM(b) {
			return usageErrorf("--admin-client-ca %s holds no PEM certificate", o.adminCA)
		}
	}
	if opt.Verifier, opt.Evaluator, err = workload.New(workload.Trust{LocalSim: o.dev, SimCA: o.simCA, Collateral: o.collateral}); err != nil {
		return fmt.Errorf("setting up workload attestation: %w", err)
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("listening: %w", err)
	}
	defer ln.Close()
	var spLn net.Listener
	if o.secretProvListen != "" {
		if spLn, err = net.Listen("tcp", o.secretProvListen); err != nil {
			return fmt.Errorf("listening for secret provisioning: %w", err)
		}
		defer spLn.Close()
	}
	var ehsmLn net.Listener
	if o.ehsmListen != "" {
		if ehsmLn, err = net.Listen("tcp", o.ehsmListen); err != nil {
			return fmt.Errorf("listening on --ehsm-listen: %w", err)
		}
		defer ehsmLn.Close()
	}
	var cert tls.Certificate
	var root []byte
	var ready string // printed once the server is about to accept connections
	absData, err := filepath.Abs(o.dataDir)
	if err != nil {
		return err
	}
	devDir := filepath.Join(absData, "dev")
	if o.dev {
		ds, err := devkms.Setup(ctx, st, devDir, ln.Addr().String())
		if errors.Is(err, devkms.ErrNotDev) {
			return withHint(err, "start it without --dev and unseal it")
		}
		if err != nil {
			return err
		}
		cert, root = ds.Cert, ds.RootKey
		defer clear(root)
		ready = fmt.Sprintf("export VEIL_KMS_URL=https://%s\nexport VEIL_KMS_CA=%s\nexport VEIL_ADMIN_TOKEN=%s\n",
			ln.Addr(), filepath.Join(devDir, devkms.CAFile), ds.AdminToken)
	} else {
		if o.certFile == "" || o.keyFile == "" {
			return withHint(usageErrorf("--tls-cert and --tls-key are required without --dev"), "for a local trial use --dev")
		}
		if cert, err = tls.LoadX509KeyPair(o.certFile, o.keyFile); err != nil {
			return fmt.Errorf("loading the TLS certificate: %w", err)
		}
		ready = fmt.Sprintf("export VEIL_KMS_URL=https://%s\n", ln.Addr())
	}
	if o.attestSelf {
		var m []byte
		var tee attest.TEE
		if opt.Attestation, m, tee, err = selfattest.New(&cert, selfattest.Options{}); err != nil {
			if errors.Is(err, selfattest.ErrNoPlatform) {
				return withHint(fmt.Errorf("--attest: %w", err), "for development create the software platform: veil sim init")
			}
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
		return withHint(fmt.Errorf("%s is not initialized", where), "run 'veil kms init "+whereFlag(o.dataDir, o.storeURL)+" --shares 5 --threshold 3' first, or use --dev")
	}
	if root != nil {
		if err := svc.UnsealWithRootKey(root); err != nil {
			return err
		}
	} else if st0.Mode == kms.ModeDev {
		return withHint(errors.New("this data directory was created with --dev"), "start it with --dev")
	}
	if spLn != nil {
		stop, err := o.serveSecretProv(ctx, svc, cert, spLn, log)
		if err != nil {
			return err
		}
		defer stop()
	}
	log.Info("serving", "addr", ln.Addr().String(), "sealed", svc.Status().Sealed, "dev", o.dev)
	if ehsmLn != nil {
		ready += fmt.Sprintf("export VEIL_EHSM_URL=https://%s/ehsm\n", ehsmLn.Addr())
	}
	fmt.Fprint(env.Stdout, ready)
	if o.dev {
		// For veil kms env: written once the listener is up,
		// removed when the service stops.
		envPath := filepath.Join(devDir, devkms.EnvFile)
		if err := fsutil.WriteFile(envPath, []byte(ready), 0o600, true); err != nil {
			return err
		}
		defer os.Remove(envPath)
	}
	if ehsmLn != nil {
		log.Info("serving the eHSM-compatible API", "addr", ehsmLn.Addr().String())
		ectx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			err := ehsm.Serve(ectx, svc, ehsmLn, cert, ehsm.Options{Version: version, Logger: log})
			if err != nil {
				log.Error("the eHSM-compatible API stopped", "err", err.Error())
			}
			done <- err
		}()
		defer func() { cancel(); <-done }()
	}
	return svc.Serve(ctx, ln, cert)
}

// serveSecretProv starts the Gramine secret-provisioning listener on ln;
// stop ends it and waits for its connections.
func (o *kmsServeOptions) serveSecretProv(ctx context.Context, svc *kms.Service, cert tls.Certificate, ln net.Listener, log *slog.Logger) (stop func(), err error) {
	ev, err := workload.Trust{LocalSim: o.dev, SimCA: o.simCA, Collateral: o.collateral}.EvidenceVerifier()
	if err != nil {
		return nil, fmt.Errorf("setting up secret provisioning: %w", err)
	}
	sp, err := secretprov.New(secretprov.Options{
		Service: svc, Verifier: workload.NewEnclaveVerifier(ev, nil), Secret: o.secretProvSecret,
		Certificate: cert, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := sp.Serve(ctx, ln); err != nil {
			log.Error("secret provisioning stopped", "err", err)
		}
	}()
	log.Info("serving Gramine secret provisioning", "addr", ln.Addr().String(), "secret", o.secretProvSecret)
	return func() { cancel(); <-done }, nil
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
