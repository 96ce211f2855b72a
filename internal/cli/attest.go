package cli

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/veil-tee/veil/attest"
	"github.com/veil-tee/veil/attest/pcs"
	"github.com/veil-tee/veil/attest/ratls"
	"github.com/veil-tee/veil/attest/sim"
	"github.com/veil-tee/veil/attest/tsm"
	"github.com/veil-tee/veil/attest/verifier"
	"github.com/veil-tee/veil/internal/fsutil"
)

// attestExitCode maps the attest verbs' library errors to exit codes (0: not theirs).
func attestExitCode(err error) int {
	for _, e := range []error{attest.ErrDenied, attest.ErrSignature, attest.ErrChain, attest.ErrCollateral,
		attest.ErrBinding, attest.ErrMalformed, attest.ErrUnsupported, attest.ErrNoBackend, ratls.ErrNotRATLS, ratls.ErrExtension, ratls.ErrStale} {
		if errors.Is(err, e) {
			return ExitDenied
		}
	}
	return 0
}

// maxEvidenceFile bounds evidence and certificate files read by the CLI.
const maxEvidenceFile = 1 << 20

func newSimCmd(env *Env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "sim",
		Short: "Manage the sim attestation platform (development only, not secure)",
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "init",
		Short: "Create the sim platform key and root CA in the user's data dir (idempotent)",
		Args:  exactArgs(0),
		RunE: func(c *cobra.Command, _ []string) error {
			dir, err := sim.DefaultDir()
			if err != nil {
				return err
			}
			p, created, err := sim.Init(dir)
			if err != nil {
				return withHint(err, "remove the incomplete sim directory "+dir+" and run 'veil sim init' again")
			}
			state := "already present"
			if created {
				state = "created"
			}
			fmt.Fprintf(env.Stdout, "sim platform %s\nplatform key: %s/%s\nroot CA:      %s/%s (serial %x)\n",
				state, p.Dir, sim.PlatformKeyFile, p.Dir, sim.CAFile, p.CA.SerialNumber.Bytes())
			fmt.Fprintln(env.Stderr, "veil: note: sim evidence is for development; no policy accepts it without \"allow_sim\": true")
			return nil
		},
	})
	return cmd
}

func newAttestCmd(env *Env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "attest",
		Short: "Produce and verify attestation evidence and RA-TLS certificates",
	}
	cmd.AddCommand(newAttestQuoteCmd(env), newAttestVerifyCmd(env), newRATLSCertCmd(env), newVerifyCertCmd(env))
	return cmd
}

// identityFlags are the sim workload identity flags.
type identityFlags struct {
	measurement, signer string
	productID, svn      uint16
}

func (f *identityFlags) add(c *cobra.Command) {
	c.Flags().StringVar(&f.measurement, "measurement", "", "sim only: workload measurement (64 hex digits)")
	c.Flags().StringVar(&f.signer, "signer", "", "sim only: workload signer (64 hex digits)")
	c.Flags().Uint16Var(&f.productID, "product-id", 0, "sim only: product id")
	c.Flags().Uint16Var(&f.svn, "svn", 0, "sim only: security version number")
}

func (f *identityFlags) identity() (sim.Identity, error) {
	var id sim.Identity
	for _, x := range []struct {
		name, val string
		dst       []byte
	}{{"--measurement", f.measurement, id.Measurement[:]}, {"--signer", f.signer, id.Signer[:]}} {
		if x.val == "" {
			continue
		}
		b, err := hex.DecodeString(x.val)
		if err != nil || len(b) != 32 {
			return id, usageErrorf("%s: want 64 hex digits", x.name)
		}
		copy(x.dst, b)
	}
	id.ProductID, id.SVN = f.productID, f.svn
	return id, nil
}

// issuer returns configfs-tsm when present, else the sim platform (with a warning).
func issuer(env *Env, f *identityFlags) (attest.Issuer, error) {
	if tsm.Available() {
		return tsm.NewLinuxIssuer("")
	}
	id, err := f.identity()
	if err != nil {
		return nil, err
	}
	dir, err := sim.DefaultDir()
	if err != nil {
		return nil, err
	}
	iss, err := sim.NewIssuer(dir, id)
	if errors.Is(err, sim.ErrNoPlatform) {
		return nil, withHint(err, "run 'veil sim init' first")
	}
	if err != nil {
		return nil, err
	}
	fmt.Fprintln(env.Stderr, "veil: warning: no TEE here (configfs-tsm absent); issuing sim evidence, which no policy accepts without \"allow_sim\": true")
	return iss, nil
}

func newAttestQuoteCmd(env *Env) *cobra.Command {
	var rdHex, out string
	var idf identityFlags
	c := &cobra.Command{
		Use:   "quote --report-data HEX [-o FILE]",
		Short: "Produce evidence binding up to 64 bytes of report data (configfs-tsm, else sim)",
		Args:  exactArgs(0),
		RunE: func(c *cobra.Command, _ []string) error {
			rd, err := hex.DecodeString(rdHex)
			if err != nil || len(rd) > attest.ReportDataSize {
				return usageErrorf("--report-data: want at most %d bytes as hex", attest.ReportDataSize)
			}
			var data attest.ReportData
			copy(data[:], rd)
			iss, err := issuer(env, &idf)
			if err != nil {
				return err
			}
			ev, err := iss.Issue(c.Context(), data)
			if err != nil {
				return err
			}
			if out == "" || out == "-" {
				if f, ok := env.Stdout.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
					return usageErrorf("refusing to write binary evidence to a terminal; use -o FILE")
				}
				_, err := env.Stdout.Write(ev.Quote)
				return err
			}
			if err := fsutil.WriteFile(out, ev.Quote, 0o644, false); err != nil {
				return withHint(err, "choose another -o file or remove the existing one")
			}
			if len(ev.Aux) > 0 {
				if err := fsutil.WriteFile(out+".certs", ev.Aux, 0o644, false); err != nil {
					return err
				}
			}
			fmt.Fprintf(env.Stderr, "veil: wrote %s evidence to %s (%d bytes)\n", ev.TEE, out, len(ev.Quote))
			return nil
		},
	}
	c.Flags().StringVar(&rdHex, "report-data", "", "report data to bind, hex (at most 64 bytes; zero-padded)")
	c.Flags().StringVarP(&out, "output", "o", "", "write evidence to FILE (default: stdout)")
	idf.add(c)
	_ = c.MarkFlagRequired("report-data")
	return c
}

// verifyFlags are shared by verify and verify-cert.
type verifyFlags struct {
	collateral, pccs, at, policy, certs string
	simCA                               string
	window                              time.Duration
	asJSON, noCRL                       bool
}

func (f *verifyFlags) add(c *cobra.Command) {
	c.Flags().StringVar(&f.collateral, "collateral", "", "directory of Intel PCS collateral (TCB info, QE identity, chains, CRLs), recognised by content")
	c.Flags().StringVar(&f.pccs, "pccs", "", "fetch SGX/TDX collateral from this PCS or PCCS base URL (e.g. "+pcs.IntelPCS+") instead of --collateral")
	c.Flags().BoolVar(&f.noCRL, "no-crl", false, "with --pccs: do not fetch the PCK CRL (revocation is then not checked)")
	c.Flags().StringVar(&f.at, "at", "", "verify at this time (RFC 3339) instead of now")
	c.Flags().DurationVar(&f.window, "collateral-window", 0, "accept TCB info and QE identity for this long after their issue date (default: until their nextUpdate)")
	c.Flags().StringVar(&f.policy, "policy", "", "policy JSON file (default: hardware TEE, no debug, TCB UpToDate or SWHardeningNeeded, no sim)")
	c.Flags().StringVar(&f.simCA, "sim-ca", "", "trust this sim root CA (PEM) instead of the local one made by 'veil sim init'")
	c.Flags().StringVar(&f.certs, "certs", "", "SEV-SNP: certificate table or VCEK (DER) file")
	c.Flags().BoolVar(&f.asJSON, "json", false, "print claims and verdict as JSON")
}

// setup builds the verifier; raw is the evidence when it is known (for
// --pccs, which needs the platform's FMSPC).
func (f *verifyFlags) setup(ctx context.Context, raw []byte) (attest.Verifier, *attest.Policy, time.Time, []byte, error) {
	now := time.Now()
	if f.at != "" {
		t, err := parseTime(f.at)
		if err != nil {
			return nil, nil, now, nil, err
		}
		now = t
	}
	pol := &attest.Policy{}
	if f.policy != "" {
		b, err := os.ReadFile(f.policy)
		if err != nil {
			return nil, nil, now, nil, err
		}
		if err := checkJSONFile(f.policy, b); err != nil {
			return nil, nil, now, nil, err
		}
		pol, err = attest.ParsePolicy(bytes.NewReader(b))
		if err != nil {
			return nil, nil, now, nil, fmt.Errorf("%s: %w", f.policy, err)
		}
	}
	o := verifier.Options{Now: func() time.Time { return now }, CollateralWindow: f.window}
	if f.collateral != "" {
		col, err := pcs.LoadDir(f.collateral)
		if err != nil {
			return nil, nil, now, nil, withHint(err, "--collateral takes a directory of Intel PCS responses: TCB info and QE identity JSON, PEM issuer chain, CRLs")
		}
		o.Collateral = col
	} else if f.pccs != "" && raw != nil {
		tee, fmspc, ca, err := verifier.PlatformOf(raw)
		if f.noCRL {
			ca = ""
		}
		if err == nil {
			col, err := pcs.Fetch(ctx, pcs.FetchOptions{BaseURL: f.pccs, TDX: tee == attest.TEETDX, FMSPC: fmspc, CA: ca})
			if err != nil {
				return nil, nil, now, nil, err
			}
			o.Collateral = col
		} else if !errors.Is(err, attest.ErrUnsupported) {
			return nil, nil, now, nil, err
		}
	}
	if f.simCA != "" {
		b, err := readBounded(f.simCA)
		if err != nil {
			return nil, nil, now, nil, err
		}
		ca, err := ratls.ParsePEM(b)
		if err != nil {
			return nil, nil, now, nil, fmt.Errorf("--sim-ca %s: %w", f.simCA, err)
		}
		o.SimRoots = []*x509.Certificate{ca}
	} else if dir, err := sim.DefaultDir(); err == nil {
		if ca, err := sim.LoadCA(dir); err == nil {
			o.SimRoots = []*x509.Certificate{ca}
		}
	}
	var aux []byte
	if f.certs != "" {
		b, err := readBounded(f.certs)
		if err != nil {
			return nil, nil, now, nil, err
		}
		if _, err := x509.ParseCertificate(b); err == nil {
			o.SNP.VCEK = b
		} else {
			aux = b
		}
	}
	return verifier.New(o), pol, now, aux, nil
}

// parseTime reads an RFC 3339 time or @UNIXSECONDS.
func parseTime(s string) (time.Time, error) {
	if rest, ok := strings.CutPrefix(s, "@"); ok {
		n, err := strconv.ParseInt(rest, 10, 64)
		if err != nil {
			return time.Time{}, usageErrorf("--at: %q is not @UNIXSECONDS", s)
		}
		return time.Unix(n, 0).UTC(), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, usageErrorf("--at: want an RFC 3339 time like 2022-12-20T00:50:04Z or @UNIXSECONDS: %v", err)
	}
	return t, nil
}

func readBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxEvidenceFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxEvidenceFile {
		return nil, fmt.Errorf("%s: larger than %d bytes: %w", path, maxEvidenceFile, attest.ErrMalformed)
	}
	return b, nil
}

func noBackendHint(err error, tee attest.TEE) error {
	if !errors.Is(err, attest.ErrNoBackend) {
		return err
	}
	switch tee {
	case attest.TEESim:
		return withHint(err, "run 'veil sim init' (sim evidence is verified against the local sim root CA)")
	case attest.TEESGX, attest.TEETDX:
		return withHint(err, "pass --collateral DIR with the Intel PCS TCB info and QE identity for this platform")
	}
	return err
}

// report prints claims and the verdict; it returns a DeniedError when the
// policy does not hold.
func report(env *Env, f *verifyFlags, c *attest.Claims, pol *attest.Policy, now time.Time) error {
	ok, unmet := pol.EvaluateContext(c, attest.Context{Now: now})
	if f.asJSON {
		verdict := "accepted"
		if !ok {
			verdict = "denied"
		}
		if err := printJSON(env.Stdout, struct {
			Claims  *attest.Claims `json:"claims"`
			Verdict string         `json:"verdict"`
			Unmet   []attest.Unmet `json:"unmet,omitempty"`
		}{c, verdict, unmet}); err != nil {
			return err
		}
	} else {
		w := env.Stdout
		fmt.Fprintf(w, "tee:          %s\n", c.TEE)
		fmt.Fprintf(w, "measurement:  %s\n", c.Measurement)
		if len(c.Signer) > 0 {
			fmt.Fprintf(w, "signer:       %s\n", c.Signer)
		}
		fmt.Fprintf(w, "product id:   %d\nsvn:          %d\ndebug:        %v\n", c.ProductID, c.SVN, c.Debug)
		fmt.Fprintf(w, "tcb status:   %s\n", c.TCBStatus)
		if len(c.AdvisoryIDs) > 0 {
			fmt.Fprintf(w, "advisories:   %s\n", strings.Join(c.AdvisoryIDs, " "))
		}
		if c.Platform.FMSPC != "" {
			fmt.Fprintf(w, "fmspc:        %s\n", c.Platform.FMSPC)
		}
		if c.TDX != nil {
			for i, r := range c.TDX.RTMR {
				fmt.Fprintf(w, "rtmr%d:        %s\n", i, r)
			}
		}
		if c.SNP != nil {
			fmt.Fprintf(w, "snp policy:   %#x\n", c.SNP.Policy)
		}
		fmt.Fprintf(w, "report data:  %s\n", c.ReportData)
		if !c.IssuedAt.IsZero() {
			fmt.Fprintf(w, "issued at:    %s\n", c.IssuedAt.UTC().Format(time.RFC3339))
		}
		if ok {
			fmt.Fprintln(w, "verdict:      accepted")
		} else {
			fmt.Fprintln(w, "verdict:      denied")
			for _, u := range unmet {
				fmt.Fprintf(w, "  unmet %s\n", u)
			}
		}
	}
	if !ok {
		return &attest.DeniedError{Unmet: unmet}
	}
	return nil
}

func newAttestVerifyCmd(env *Env) *cobra.Command {
	var f verifyFlags
	c := &cobra.Command{
		Use:   "verify EVIDENCE",
		Short: "Verify evidence (sim, SGX v3, TDX v4, SEV-SNP) and apply a policy; exit 0 only if it holds",
		Args:  exactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			raw, err := readBounded(args[0])
			if err != nil {
				return err
			}
			v, pol, now, aux, err := f.setup(c.Context(), raw)
			if err != nil {
				return err
			}
			tee, err := attest.Detect(raw)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			claims, err := v.Verify(c.Context(), &attest.Evidence{TEE: tee, Quote: raw, Aux: aux})
			if err != nil {
				return noBackendHint(fmt.Errorf("%s: %w", args[0], err), tee)
			}
			return report(env, &f, claims, pol, now)
		},
	}
	f.add(c)
	return c
}

func newRATLSCertCmd(env *Env) *cobra.Command {
	var out, keyOut, nonceHex, instanceHex string
	var validity time.Duration
	var idf identityFlags
	c := &cobra.Command{
		Use:   "ratls-cert -o CERT -k KEY",
		Short: "Make an RA-TLS certificate and key whose evidence binds the key",
		Args:  exactArgs(0),
		RunE: func(c *cobra.Command, _ []string) error {
			if out == "" || keyOut == "" {
				return usageErrorf("both -o CERT and -k KEY are required")
			}
			var nonce []byte
			if nonceHex != "" {
				var err error
				if nonce, err = hex.DecodeString(nonceHex); err != nil || len(nonce) != 32 {
					return usageErrorf("--nonce: want 64 hex digits (the server-chosen nonce)")
				}
			}
			o := ratls.Options{Nonce: nonce, Validity: validity}
			if instanceHex != "" {
				m, err := hex.DecodeString(instanceHex)
				if err != nil || len(m) != attest.InstanceSize {
					return usageErrorf("--instance: want 64 hex digits (the instance measurement, veil print mrenclave)")
				}
				o.Instance = (*[attest.InstanceSize]byte)(m)
			}
			iss, err := issuer(env, &idf)
			if err != nil {
				return err
			}
			cert, err := ratls.NewCertificate(c.Context(), iss, o)
			if err != nil {
				return err
			}
			keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
			if err != nil {
				return err
			}
			if err := fsutil.WriteFile(keyOut, pemBlock("PRIVATE KEY", keyDER), 0o600, false); err != nil {
				return withHint(err, "choose another -k file or remove the existing one")
			}
			if err := fsutil.WriteFile(out, ratls.EncodePEM(cert.Certificate[0]), 0o644, false); err != nil {
				os.Remove(keyOut)
				return withHint(err, "choose another -o file or remove the existing one")
			}
			fmt.Fprintf(env.Stderr, "veil: wrote RA-TLS certificate %s and key %s\n", out, keyOut)
			return nil
		},
	}
	c.Flags().StringVarP(&out, "output", "o", "", "certificate file to write (PEM)")
	c.Flags().StringVarP(&keyOut, "key", "k", "", "private key file to write (PEM, mode 0600)")
	c.Flags().StringVar(&instanceHex, "instance", "", "make the runtime's certificate for this instance measurement (64 hex digits), the only kind the key service accepts")
	c.Flags().StringVar(&nonceHex, "nonce", "", "server-chosen nonce to bind (64 hex digits)")
	c.Flags().DurationVar(&validity, "validity", 24*time.Hour, "certificate validity")
	idf.add(c)
	return c
}

func newVerifyCertCmd(env *Env) *cobra.Command {
	var f verifyFlags
	c := &cobra.Command{
		Use:   "verify-cert CERT",
		Short: "Verify an RA-TLS certificate's evidence and key binding, and apply a policy",
		Args:  exactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			b, err := readBounded(args[0])
			if err != nil {
				return err
			}
			cert, err := ratls.ParsePEM(b)
			if err != nil {
				return fmt.Errorf("%s: %v: %w", args[0], err, ratls.ErrNotRATLS)
			}
			var evidence []byte
			if x, err := ratls.ParseExtension(cert); err == nil {
				evidence = x.Evidence
			}
			v, pol, now, _, err := f.setup(c.Context(), evidence)
			if err != nil {
				return err
			}
			// Verify evidence and binding with a policy that accepts
			// everything, then report against the real one so that the
			// claims are printed either way.
			p := &ratls.Peer{Verifier: v, Policy: &attest.Policy{AllowSim: true, AllowDebug: true, TCBStatuses: allStatuses}, Now: func() time.Time { return now }}
			claims, err := p.VerifyCertificate(context.WithoutCancel(c.Context()), cert)
			if err != nil {
				var tee attest.TEE
				if x, perr := ratls.ParseExtension(cert); perr == nil {
					tee, _ = attest.Detect(x.Evidence)
				}
				return noBackendHint(fmt.Errorf("%s: %w", args[0], err), tee)
			}
			return report(env, &f, claims, pol, now)
		},
	}
	f.add(c)
	return c
}

var allStatuses = []attest.TCBStatus{attest.TCBUpToDate, attest.TCBSWHardeningNeeded, attest.TCBConfigurationNeeded,
	attest.TCBConfigurationAndSWHardeningNeeded, attest.TCBOutOfDate, attest.TCBOutOfDateConfigurationNeeded, attest.TCBRevoked}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}
