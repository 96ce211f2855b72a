package instance

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/veil-tee/veil/attest"
	"github.com/veil-tee/veil/attest/ratls"
	"github.com/veil-tee/veil/attest/sim"
	"github.com/veil-tee/veil/attest/tsm"
	"github.com/veil-tee/veil/attest/verifier"
	"github.com/veil-tee/veil/config"
	"github.com/veil-tee/veil/instance/sandbox"
	"github.com/veil-tee/veil/internal/timing"
	"github.com/veil-tee/veil/kms/client"
	"github.com/veil-tee/veil/seal"
	"github.com/veil-tee/veil/trustimage"
)

// Errors a caller may act on.
var (
	// ErrNotEntrypoint: the program is outside veil.json's entrypoints.
	ErrNotEntrypoint = errors.New("program is not an entrypoint of the instance")
	// ErrKeyDenied: a key service refused a key or secret the instance needs.
	ErrKeyDenied = errors.New("key service refused a key")
	// ErrNoProgram: the program to run is not an executable file of the image.
	ErrNoProgram = errors.New("program not in the image")
	// ErrKMSUnreachable: a key service did not answer.
	ErrKMSUnreachable = errors.New("key service unreachable")
	// ErrKMSNotTrusted: a key service whose veil.json entry has an attest
	// policy did not prove that it runs in a TEE satisfying it.
	ErrKMSNotTrusted = errors.New("key service not trusted")
	// ErrKMSIdentity: the service at a key service's address presented a
	// certificate that veil.json's pin (ca_cert, pin_sha256) does not
	// accept: the address leads to another service.
	ErrKMSIdentity = errors.New("key service is not the pinned one")
	// ErrUnknownKMS: an address was given for a key service veil.json does
	// not declare.
	ErrUnknownKMS = errors.New("no such key service in veil.json")
	// ErrNoPlatform: no TEE and no sim platform to attest with.
	ErrNoPlatform = errors.New("no attestation platform")
)

// Options of Open.
type Options struct {
	// Dir is the instance directory (veil.json, build/).
	Dir string
	// Program, when set, is checked against the entrypoints before
	// anything is attested or mounted.
	Program string
	// RunDir holds this run's mount points; default Dir/run/r-PID.
	RunDir string
	// ImageKey decrypts an encrypted image.
	ImageKey []byte
	// ImageKeyRef names the image key at one of the instance's key
	// services ("kms:SECRETID@KMSNAME", a secret holding the 32-byte key):
	// it is fetched after attestation, so only the measured instance gets
	// it. The reference itself needs no protection: a wrong key cannot
	// produce blocks that match the measured hash tree.
	ImageKeyRef string
	// Issuer produces the workload's evidence; nil detects configfs-tsm,
	// else uses the local sim platform (SimDir).
	Issuer attest.Issuer
	// SimDir is the sim platform directory; empty means sim.DefaultDir().
	SimDir string
	// KMSVerifier verifies the evidence of key services whose entry has
	// an attest policy; nil means sim evidence from the platform in SimDir
	// (and SEV-SNP with its defaults).
	KMSVerifier attest.Verifier
	// MountRoot mounts the verified image read-only at mountpoint.
	MountRoot func(mountpoint string, r *trustimage.Reader, log *slog.Logger) (Unmounter, error)
	// MountSealed mounts a sealed directory at mountpoint.
	MountSealed func(mountpoint string, o SealedMount, log *slog.Logger) (Unmounter, error)
	// MountAttestation, when set, serves /dev/attestation (Gramine's
	// pseudo-files) for programs that want evidence themselves. The issuer
	// binds everything under the workload label with the instance
	// measurement (attest.WorkloadReportData).
	MountAttestation func(mountpoint string, iss *attest.WorkloadIssuer, log *slog.Logger) (Unmounter, error)
	// Logger receives runtime events (integrity failures, mounts).
	Logger *slog.Logger
	// Warn receives messages for the user (the sim backend, unapplied limits).
	Warn func(string)
	// Info, when set, receives notes for the user (a key service attested).
	Info func(string)
	// KMSRetries and KMSTimeout bound the key service calls at start:
	// each key service is tried up to KMSRetries times (default 3), 0.3 s
	// apart, then 0.6 s, ..., at most 2 s; every failed try but the last
	// is told to Info.
	KMSRetries int
	KMSTimeout time.Duration
	// ExtendRTMR extends a TDX RTMR with the instance measurement before
	// anything is attested; nil means the kernel's configfs-tsm
	// (tsm.ExtendLinuxInstance). Only called for the tdx backend.
	ExtendRTMR func(instance [32]byte) error
	// KMSAddresses replaces kms[].address of veil.json, by key service
	// name: where to reach a service is not measured (a cluster gives it
	// at deployment), whom to trust is: the entry's pin still decides, so
	// another address reaches the same service or fails with
	// ErrKMSIdentity. A name veil.json does not declare is ErrUnknownKMS.
	KMSAddresses map[string]string
}

// Unmounter undoes a mount.
type Unmounter interface{ Unmount() error }

// SealedMount is what a sealed mount needs.
type SealedMount struct {
	Source    string
	Keys      seal.KeyUnwrapper
	WriteKeys []seal.KeyWrapper
	ReadOnly  bool
	// MountID binds the mount's files to it: seal.MountID of the target
	// declared in veil.json (measured), never of a host path.
	MountID []byte
	// GraminePF, when set, makes the mount one of Gramine protected files
	// (format gramine-pf) instead of sealed files; Keys and WriteKeys are
	// then unused.
	GraminePF *GraminePFMount
}

// MountInfo describes an active mount, for status output.
type MountInfo struct {
	Target string `json:"target"`
	Type   string `json:"type"`
	Source string `json:"source,omitempty"`
	Key    string `json:"key,omitempty"`
}

// Instance is an opened instance: attested, keys fetched, mounts in place.
type Instance struct {
	Dir     string
	RunDir  string
	Build   *trustimage.LoadedBuild
	Config  *config.Config
	Backend attest.TEE
	// KMSAttested names the key services that proved their TEE, with it.
	KMSAttested []string

	prefetchWG   sync.WaitGroup
	prefetchStop atomic.Bool
	Mounts       []MountInfo

	log       *slog.Logger
	issuer    attest.Issuer
	root      string
	kms       map[string]*client.Client
	unmounts  []Unmounter
	binds     []sandbox.Mount
	files     []sandbox.File
	secretEnv []string
}

// Open verifies the instance in o.Dir, runs init-RA and mounts its file
// systems. Close undoes it. Nothing is left mounted if Open fails.
func Open(ctx context.Context, o Options) (_ *Instance, err error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.Warn == nil {
		o.Warn = func(string) {}
	}
	if o.KMSRetries == 0 {
		o.KMSRetries = 3
	}
	if o.KMSTimeout == 0 {
		o.KMSTimeout = 10 * time.Second
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, err
	}
	timing.Mark("veil", "opening the instance")
	b, err := trustimage.LoadBuild(dir)
	if err != nil {
		return nil, err
	}
	if o.Program != "" {
		if err := CheckEntrypoint(b.Config, o.Program); err != nil {
			return nil, err
		}
	}
	cfg, err := withKMSAddresses(b.Config, o.KMSAddresses, o.Info)
	if err != nil {
		return nil, err
	}
	in := &Instance{Dir: dir, Build: b, Config: cfg, log: o.Logger, kms: map[string]*client.Client{}}
	CleanStale(dir, o.Logger)
	in.RunDir = o.RunDir
	if in.RunDir == "" {
		in.RunDir = filepath.Join(dir, "run", fmt.Sprintf("r-%d", os.Getpid()))
	}
	if err := os.MkdirAll(in.RunDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating run directory: %w", err)
	}
	defer func() {
		if err != nil {
			in.Close()
		}
	}()
	timing.Mark("veil", "build loaded and verified")
	if err := in.attest(ctx, o); err != nil {
		return nil, err
	}
	timing.Mark("veil", "attested")
	if err := in.fetchSecrets(ctx); err != nil {
		return nil, err
	}
	key := o.ImageKey
	if o.ImageKeyRef != "" {
		ref, err := config.ParseKeyRef(o.ImageKeyRef)
		if err != nil || ref.Kind != "kms" || in.kms[ref.KMS] == nil {
			return nil, fmt.Errorf("image key %q: want kms:SECRETID@KMSNAME naming a key service of veil.json", o.ImageKeyRef)
		}
		sec, err := in.kms[ref.KMS].GetSecret(ctx, ref.ID, 0)
		if err != nil {
			return nil, kmsDenied("image key "+ref.ID, err)
		}
		key = sec.Value
	}
	if b.Encrypted() && key == nil {
		return nil, errors.New("the image is encrypted and no image key was given (--image-key)")
	}
	r, err := b.Open(key)
	if err != nil {
		return nil, fmt.Errorf("opening the image: %w", err)
	}
	in.root = filepath.Join(in.RunDir, "root")
	if err := os.MkdirAll(in.root, 0o700); err != nil {
		r.Close()
		return nil, err
	}
	timing.Mark("veil", "keys and secrets fetched")
	u, err := o.MountRoot(in.root, r, o.Logger)
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("mounting the image: %w", err)
	}
	in.unmounts = append(in.unmounts, u)
	timing.Mark("veil", "image mounted")
	if err := in.mount(ctx, o); err != nil {
		return nil, err
	}
	timing.Mark("veil", "mounts ready")
	return in, nil
}

// attest creates the workload's RA-TLS identity and connects to every key
// service of veil.json, verifying each against its pin.
func (in *Instance) attest(ctx context.Context, o Options) error {
	iss := o.Issuer
	if iss == nil {
		var err error
		if iss, err = detectIssuer(in.Build, o.SimDir, o.Warn); err != nil {
			return err
		}
	}
	in.Backend = iss.TEE()
	in.issuer = iss
	if err := extendRTMR(in.Backend, in.Build.Measurement, o.ExtendRTMR, in.log); err != nil {
		return err
	}
	if len(in.Config.KMS) == 0 {
		return nil
	}
	measurement := in.Build.Measurement
	cert, err := ratls.NewCertificate(ctx, iss, ratls.Options{Instance: &measurement})
	if err != nil {
		return fmt.Errorf("creating the workload's RA-TLS certificate: %w", err)
	}
	for _, k := range in.Config.KMS {
		cfg := client.Config{
			URL:                 kmsURL(k.Address),
			CAPEM:               []byte(k.CACert),
			Timeout:             o.KMSTimeout,
			WorkloadCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil },
		}
		if k.PinSHA256 != "" {
			pin, err := hex.DecodeString(k.PinSHA256)
			if err != nil {
				return fmt.Errorf("kms %s: pin_sha256: %w", k.Name, err)
			}
			cfg.PinSHA256 = pin
		}
		cl, err := client.New(cfg)
		if err != nil {
			return fmt.Errorf("kms %s: %w", k.Name, err)
		}
		var last error
		for try := 0; try < o.KMSRetries; try++ {
			if try > 0 {
				select {
				case <-time.After(kmsRetryDelay(try)):
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			if _, last = cl.Status(ctx); last == nil || notPinned(last) {
				break
			}
			if try+1 < o.KMSRetries && o.Info != nil {
				o.Info(fmt.Sprintf("kms %s at %s: try %d of %d failed (%v); trying again in %v",
					k.Name, k.Address, try+1, o.KMSRetries, last, kmsRetryDelay(try+1)))
			}
		}
		if last != nil && notPinned(last) {
			return fmt.Errorf("%w: kms %s at %s presented a certificate that kms[].ca_cert/pin_sha256 of veil.json does not accept: %v", ErrKMSIdentity, k.Name, k.Address, last)
		}
		if last != nil {
			return fmt.Errorf("%w: kms %s at %s after %d tries: %v", ErrKMSUnreachable, k.Name, k.Address, o.KMSRetries, last)
		}
		if k.Attest != nil {
			if err := in.attestKMS(ctx, o, k, cl); err != nil {
				return err
			}
		}
		in.kms[k.Name] = cl
	}
	return nil
}

// kmsRetryDelay is the pause before try n (from 1) of a key service at
// start: 300 ms more each time, at most 2 s.
func kmsRetryDelay(n int) time.Duration {
	return min(time.Duration(n)*300*time.Millisecond, 2*time.Second)
}

// attestKMS challenges a key service with a fresh nonce and checks that
// its answer is evidence binding the TLS key the service presented (pinned
// above) and satisfying the entry's attest policy: bidirectional
// attestation, the workload's evidence having gone the other way.
func (in *Instance) attestKMS(ctx context.Context, o Options, k config.KMS, cl *client.Client) error {
	v := o.KMSVerifier
	if v == nil {
		vo := verifier.Options{}
		dir := o.SimDir
		if dir == "" {
			dir, _ = sim.DefaultDir()
		}
		if ca, err := sim.LoadCA(dir); err == nil {
			vo.SimRoots = append(vo.SimRoots, ca)
		}
		v = verifier.New(vo)
	}
	nonce := make([]byte, 32)
	if _, err := rand.Read(nonce); err != nil {
		return err
	}
	a, spki, err := cl.Attestation(ctx, nonce)
	if err != nil {
		return fmt.Errorf("%w: kms %s: asking for its evidence: %v", ErrKMSNotTrusted, k.Name, err)
	}
	peer := &ratls.Peer{Verifier: v, Policy: k.Attest}
	claims, err := peer.VerifyKeyBinding(ctx, a.Evidence, spki, nonce)
	if err != nil {
		// Both wrapped: callers match ErrKMSNotTrusted, tests the reason
		// (attest.ErrDenied, attest.ErrBinding, ratls.ErrStale).
		return fmt.Errorf("%w: kms %s: %w", ErrKMSNotTrusted, k.Name, err)
	}
	// From now on only the attested key may answer for this service.
	cl.RequireServerKey(spki)
	note := fmt.Sprintf("%s (%s, measurement %s)", k.Name, claims.TEE, claims.Measurement)
	in.KMSAttested = append(in.KMSAttested, note)
	if o.Info != nil {
		o.Info("kms attested: " + note)
	}
	return nil
}

// extendRTMR records the instance in the TDX VM's RTMR3 before its
// evidence is made and its program starts, so every later quote of the VM
// shows it. Where the kernel offers no RTMR extension it logs that and
// goes on: the report data binds the instance measurement either way.
func extendRTMR(tee attest.TEE, measurement [32]byte, extend func([32]byte) error, log *slog.Logger) error {
	if tee != attest.TEETDX {
		return nil
	}
	if extend == nil {
		extend = tsm.ExtendLinuxInstance
	}
	switch err := extend(measurement); {
	case errors.Is(err, tsm.ErrNoRTMR):
		log.Warn("RTMR3 not extended: this kernel offers no configfs-tsm RTMR extension; the instance measurement is bound in the report data only", "measurement", hex.EncodeToString(measurement[:]))
	case err != nil:
		return fmt.Errorf("recording the instance in RTMR%d: %w", tsm.InstanceRTMR, err)
	default:
		log.Info("RTMR3 extended with the instance measurement", "rtmr", tsm.InstanceRTMR, "measurement", hex.EncodeToString(measurement[:]))
	}
	return nil
}

// kmsURL turns veil.json's kms[].address (host:port or an https URL, or
// several replicas of one service separated by commas) into client URLs.
func kmsURL(addr string) string {
	parts := strings.Split(addr, ",")
	for i, a := range parts {
		a = strings.TrimSpace(a)
		if strings.HasPrefix(a, "https://") {
			parts[i] = strings.TrimSuffix(a, "/")
		} else {
			parts[i] = "https://" + a
		}
	}
	return strings.Join(parts, ",")
}

// detectIssuer picks configfs-tsm inside a confidential VM, else the local
// sim platform.
func detectIssuer(b *trustimage.LoadedBuild, simDir string, warn func(string)) (attest.Issuer, error) {
	if tsm.Available() {
		return tsm.NewLinuxIssuer("")
	}
	if simDir == "" {
		d, err := sim.DefaultDir()
		if err != nil {
			return nil, err
		}
		simDir = d
	}
	p, err := sim.Load(simDir)
	if err != nil {
		return nil, fmt.Errorf("%w: no TEE found (configfs-tsm) and no sim platform: %v", ErrNoPlatform, err)
	}
	warn("no TEE found: using the sim backend (development only: the host can read everything)")
	return p.Issuer(sim.Identity{Measurement: b.Measurement, Signer: b.MrSigner, ProductID: b.ProductID(), SVN: b.SVN()}), nil
}

// fetchSecrets gets veil.json's secrets from their key services.
func (in *Instance) fetchSecrets(ctx context.Context) error {
	for _, s := range in.Config.Secrets {
		ref, err := config.ParseKeyRef(s.From)
		if err != nil {
			return fmt.Errorf("secret %s: %w", s.Name, err)
		}
		var val []byte
		switch ref.Kind {
		case "kms":
			cl := in.kms[ref.KMS]
			sec, err := cl.GetSecret(ctx, ref.ID, 0)
			if err != nil {
				return kmsDenied(fmt.Sprintf("secret %s (%s at kms %s)", s.Name, ref.ID, ref.KMS), err)
			}
			val = sec.Value
		case "file":
			if val, err = os.ReadFile(ref.ID); err != nil {
				return fmt.Errorf("secret %s: %w", s.Name, err)
			}
		}
		if s.File != "" {
			in.files = append(in.files, sandbox.File{Path: s.File, Data: val, Mode: 0o400})
		} else {
			in.secretEnv = append(in.secretEnv, s.Env+"="+string(val))
		}
	}
	return nil
}

func kmsDenied(what string, err error) error {
	if errors.Is(err, client.ErrPolicyDenied) || errors.Is(err, client.ErrWorkloadAuth) || errors.Is(err, client.ErrForbidden) {
		return fmt.Errorf("%w: %s: %w", ErrKeyDenied, what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// mount makes the sealed, hostfs and tmpfs mounts of veil.json.
func (in *Instance) mount(ctx context.Context, o Options) error {
	for i, m := range in.Config.Mounts {
		info := MountInfo{Target: m.Target, Type: m.Type, Source: m.Source, Key: m.Key}
		switch m.Type {
		case config.MountTmpFS:
			opts := "mode=1777"
			if m.Size != "" {
				n, err := config.ParseSize(m.Size)
				if err != nil {
					return fmt.Errorf("mounts[%d].size: %w", i, err)
				}
				opts += fmt.Sprintf(",size=%d", n)
			}
			in.binds = append(in.binds, sandbox.Mount{Type: sandbox.Tmpfs, Target: m.Target, Options: opts, ReadOnly: m.ReadOnly})
		case config.MountHostFS:
			src, err := hostDir(m.Source, i)
			if err != nil {
				return err
			}
			info.Source = src
			in.binds = append(in.binds, sandbox.Mount{Type: sandbox.Bind, Source: src, Target: m.Target, ReadOnly: m.ReadOnly})
		case config.MountSealed:
			src, err := hostDir(m.Source, i)
			if err != nil {
				return err
			}
			info.Source = src
			sm, err := in.sealedKeys(ctx, m, src)
			if err != nil {
				return fmt.Errorf("sealed mount %s: %w", m.Target, err)
			}
			mp := filepath.Join(in.RunDir, fmt.Sprintf("mnt%d", i))
			if err := os.MkdirAll(mp, 0o700); err != nil {
				return err
			}
			// Its log names files by their path in the mount; the
			// mount's target makes that the workload's path.
			u, err := o.MountSealed(mp, *sm, in.log.With("mount", m.Target))
			if err != nil {
				return fmt.Errorf("sealed mount %s: %w", m.Target, err)
			}
			in.unmounts = append(in.unmounts, u)
			in.binds = append(in.binds, sandbox.Mount{Type: sandbox.Bind, Source: mp, Target: m.Target, ReadOnly: m.ReadOnly})
		}
		in.Mounts = append(in.Mounts, info)
	}
	if o.MountAttestation != nil {
		mp := filepath.Join(in.RunDir, "attestation")
		if err := os.MkdirAll(mp, 0o700); err != nil {
			return err
		}
		u, err := o.MountAttestation(mp, &attest.WorkloadIssuer{Issuer: in.issuer, Instance: in.Build.Measurement}, in.log)
		if err != nil {
			return fmt.Errorf("mounting /dev/attestation: %w", err)
		}
		in.unmounts = append(in.unmounts, u)
		in.binds = append(in.binds, sandbox.Mount{Type: sandbox.Bind, Source: mp, Target: "/dev/attestation"})
	}
	for _, f := range in.files {
		if !strings.HasPrefix(f.Path, "/run/secrets/") {
			return fmt.Errorf("secret file %s is not under /run/secrets", f.Path)
		}
	}
	if len(in.files) > 0 {
		in.binds = append(in.binds, sandbox.Mount{Type: sandbox.Tmpfs, Target: "/run/secrets", Options: "mode=0700,size=1048576"})
	}
	return nil
}

func hostDir(src string, i int) (string, error) {
	if src == "" {
		return "", fmt.Errorf("mounts[%d].source: a host directory is required at run time", i)
	}
	abs, err := filepath.Abs(src)
	if err != nil {
		return "", err
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return "", fmt.Errorf("mounts[%d].source: %w", i, err)
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("mounts[%d].source %s: not a directory", i, abs)
	}
	return abs, nil
}

// sealedKeys resolves a sealed mount's keys and checks, before anything
// starts, that the key services release them: a denial stops the run here.
func (in *Instance) sealedKeys(ctx context.Context, m config.Mount, src string) (*SealedMount, error) {
	if m.Format == config.FormatGraminePF {
		return graminePFMount(m, src)
	}
	sm := &SealedMount{Source: src, ReadOnly: m.ReadOnly, MountID: seal.MountID(m.Target)}
	var keys seal.Keys
	resolve := func(refText string) (seal.KeyWrapper, seal.KeyUnwrapper, error) {
		ref, err := config.ParseKeyRef(refText)
		if err != nil {
			return nil, nil, err
		}
		if ref.Kind == "file" {
			k, err := seal.LoadFileKey(ref.ID)
			return k, k, err
		}
		s := &kmsSlot{Slot: &client.Slot{Client: in.kms[ref.KMS], KeyRef: ref.ID}, kms: ref.KMS}
		return s, s, nil
	}
	if m.Key != "" {
		_, u, err := resolve(m.Key)
		if err != nil {
			return nil, err
		}
		keys = append(keys, u)
	}
	// Files sealed under other keys of the instance's key services open too.
	for _, name := range sortedNames(in.kms) {
		keys = append(keys, &kmsSlot{Slot: &client.Slot{Client: in.kms[name]}, kms: name})
	}
	sm.Keys = keys
	wk := m.WriteKey
	if wk == "" {
		wk = m.Key
	}
	if wk != "" && !m.ReadOnly {
		for _, ref := range append([]string{wk}, m.AlsoWriteKeys...) {
			w, _, err := resolve(ref)
			if err != nil {
				return nil, err
			}
			// Preflight: wrap a throwaway key, as new files will.
			probe := make([]byte, seal.KeySize)
			rand.Read(probe)
			if _, err := w.WrapKey(probe, []byte("veil runtime preflight")); err != nil {
				return nil, kmsDenied("write key "+ref, err)
			}
			sm.WriteKeys = append(sm.WriteKeys, w)
		}
	}
	// Preflight: open one existing sealed file, as the program will.
	if f := firstSealed(src); f != "" {
		osf, err := os.Open(f)
		if err == nil {
			_, err = seal.Open(osf, keys, nil)
			osf.Close()
		}
		if err != nil && !errors.Is(err, seal.ErrNotSealed) {
			rel, _ := filepath.Rel(src, f)
			return nil, kmsDenied("opening "+rel, err)
		}
	}
	return sm, nil
}

// firstSealed returns a sealed file under dir (looking at a bounded number
// of entries), or "".
func firstSealed(dir string) string {
	found, seen := "", 0
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || seen > 1000 {
			return filepath.SkipAll
		}
		seen++
		if d.Type().IsRegular() {
			f, err := os.Open(p)
			if err == nil {
				head := make([]byte, len(seal.Magic))
				n, _ := io.ReadFull(f, head)
				f.Close()
				if n == len(head) && string(head) == seal.Magic {
					found = p
					return filepath.SkipAll
				}
			}
		}
		return nil
	})
	return found
}

func sortedNames(m map[string]*client.Client) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// kmsSlot opens kms slots through one key service; a refusal because the
// key lives elsewhere reads as a slot that is not this key's.
type kmsSlot struct {
	*client.Slot
	kms string
}

func (s *kmsSlot) UnwrapKey(sl seal.Slot, binding []byte) ([]byte, error) {
	dek, err := s.Slot.UnwrapKey(sl, binding)
	if errors.Is(err, client.ErrKeyNotFound) {
		return nil, fmt.Errorf("kms %s does not hold %s: %w", s.kms, sl.KeyID, seal.ErrSlotMismatch)
	}
	if err != nil && !errors.Is(err, seal.ErrSlotMismatch) {
		return nil, fmt.Errorf("kms %s: %w", s.kms, err)
	}
	return dek, err
}

// Command checks path against the entrypoints and builds the program's
// argv and environment from veil.json and the host's arguments and
// environment.
func (in *Instance) Command(path string, hostArgs, hostEnv []string) (sandbox.Command, error) {
	if err := CheckEntrypoint(in.Config, path); err != nil {
		return sandbox.Command{}, err
	}
	if in.root != "" {
		host, err := resolveIn(in.root, path)
		fi, serr := os.Stat(host)
		switch {
		case err != nil || serr != nil:
			return sandbox.Command{}, fmt.Errorf("%w: %s", ErrNoProgram, path)
		case !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0:
			return sandbox.Command{}, fmt.Errorf("%w: %s is not an executable file (mode %s)", ErrNoProgram, path, fi.Mode())
		}
	}
	args := []string{path}
	if len(hostArgs) > 0 {
		if !in.Config.Args.Passthrough {
			return sandbox.Command{}, errors.New("this instance takes no arguments from the host (args.passthrough is false in veil.json)")
		}
		args = append(args, hostArgs...)
	}
	var env []string
	names := make([]string, 0, len(in.Config.Env.Default))
	for k := range in.Config.Env.Default {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		env = append(env, k+"="+in.Config.Env.Default[k])
	}
	host := map[string]string{}
	for _, kv := range hostEnv {
		if k, v, ok := strings.Cut(kv, "="); ok {
			host[k] = v
		}
	}
	for _, k := range in.Config.Env.Passthrough {
		if v, ok := host[k]; ok {
			env = append(env, k+"="+v)
		}
	}
	env = append(env, in.secretEnv...)
	return sandbox.Command{Path: path, Args: args, Env: env, Dir: "/"}, nil
}

// CheckEntrypoint reports whether path may be run: a clean absolute path
// under one of veil.json's entrypoints.
func CheckEntrypoint(cfg *config.Config, path string) error {
	if !filepath.IsAbs(path) || filepath.Clean(path) != path {
		return fmt.Errorf("%w: %q is not a clean absolute path inside the image", ErrNotEntrypoint, path)
	}
	for _, p := range cfg.Entrypoints {
		if strings.HasPrefix(path, p) {
			return nil
		}
	}
	return fmt.Errorf("%w: %s (entrypoints: %s)", ErrNotEntrypoint, path, strings.Join(cfg.Entrypoints, ", "))
}

// Spec is the sandbox for main (empty main: a sandbox for exec only).
func (in *Instance) Spec(main sandbox.Command) (*sandbox.Spec, error) {
	spec := &sandbox.Spec{Root: in.root, Mounts: in.binds, Hostname: "veil", Main: main, Files: in.files,
		HostNetwork: in.Config.Network == config.NetworkHost}
	if in.Config.Resources.Memory != "" {
		n, err := config.ParseSize(in.Config.Resources.Memory)
		if err != nil {
			return nil, fmt.Errorf("resources.memory: %w", err)
		}
		spec.Limits.MemoryBytes = n
	}
	spec.Limits.MaxProcs = int64(in.Config.Resources.MaxProcesses)
	return spec, nil
}

// Close unmounts everything (lazily if busy) and removes the run
// directory, except any mount that could not be detached.
func (in *Instance) Close() error {
	in.prefetchStop.Store(true)
	in.prefetchWG.Wait()
	var first error
	for i := len(in.unmounts) - 1; i >= 0; i-- {
		if err := in.unmounts[i].Unmount(); err != nil && first == nil {
			first = err
		}
	}
	in.unmounts = nil
	// What a busy unmount left (a process of the sandbox still exiting):
	// detach it, so nothing stays mounted.
	if left := mountsUnder(in.RunDir); len(left) > 0 {
		sort.Slice(left, func(i, j int) bool { return len(left[i]) > len(left[j]) })
		for _, m := range left {
			abortFUSE(m)
			unix.Unmount(m, unix.MNT_DETACH)
		}
	}
	for _, c := range in.kms {
		c.Close()
	}
	// Never across a mount point: a mount still there (its unmount failed)
	// would otherwise have the owner's files unlinked through it.
	if err := removeRunDir(in.RunDir); err != nil && first == nil {
		first = err
	}
	timing.Mark("veil", "unmounted")
	return first
}
