package kms

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/veil-tee/veil/kms/api"
	"github.com/veil-tee/veil/kms/audit"
	"github.com/veil-tee/veil/kms/shamir"
	"github.com/veil-tee/veil/kms/store"
)

// Options configures a Service. Store is required.
type Options struct {
	Store store.Store
	// Clock returns the current time (default time.Now).
	Clock func() time.Time
	// Logger receives request logs; it never sees key material, API keys,
	// tokens or plaintext (default: discard).
	Logger *slog.Logger
	// Verifier authenticates workloads; nil means no workload can
	// authenticate.
	Verifier WorkloadVerifier
	// Evaluator decides release policies; nil means every workload
	// release is denied.
	Evaluator PolicyEvaluator
	// AdminClientCAs, when set, makes a client certificate that chains to
	// one of these CAs (for client authentication) an admin credential,
	// like the admin token. Other client certificates are workloads'.
	AdminClientCAs *x509.CertPool
	// SignatureWindow is how far an app request's timestamp may be from
	// the server's clock (default 5 minutes).
	SignatureWindow time.Duration
	// MaxBody bounds request bodies (default 1 MiB).
	MaxBody int64
	// MaxNonces bounds each app's share of the replay cache: the signed
	// requests one app may send within the signature window (default
	// 100,000).
	MaxNonces int
	// Registerer receives the Prometheus metrics (default: a new registry
	// served at /metrics).
	Registry *prometheus.Registry
	// Attestation, when set, answers GET /v1/sys/attestation: evidence
	// from the TEE the service runs in, binding its TLS key and the
	// client's nonce, so that workloads can attest the service in turn.
	Attestation func(ctx context.Context, nonce []byte) (*api.Attestation, error)
}

// Service is the key service. Its methods are safe for concurrent use.
type Service struct {
	opt     Options
	st      store.Store
	now     func() time.Time
	log     *slog.Logger
	nonces  *nonceCache
	metrics *metrics

	mu      sync.RWMutex
	meta    *rootMeta // nil: not initialized
	keys    *keyring  // nil: sealed
	pending [][]byte  // shares received while sealed

	// damaged is the reason the audit chain is damaged, once found; every
	// audited operation is then refused and /readyz fails.
	damaged atomic.Pointer[string]

	auditQ     chan auditReq
	closed     chan struct{}
	closeOnce  sync.Once
	writerDone chan struct{}
}

// New opens the service over opt.Store. It starts sealed.
func New(ctx context.Context, opt Options) (*Service, error) {
	if opt.Store == nil {
		return nil, errors.New("kms: Options.Store is required")
	}
	if opt.Clock == nil {
		opt.Clock = time.Now
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.SignatureWindow == 0 {
		opt.SignatureWindow = 5 * time.Minute
	}
	if opt.MaxBody == 0 {
		opt.MaxBody = 1 << 20
	}
	if opt.MaxNonces == 0 {
		opt.MaxNonces = 100_000
	}
	if opt.Registry == nil {
		opt.Registry = prometheus.NewRegistry()
	}
	s := &Service{opt: opt, st: opt.Store, now: opt.Clock, log: opt.Logger,
		nonces: newNonceCache(opt.MaxNonces), auditQ: make(chan auditReq, 4096),
		closed: make(chan struct{}), writerDone: make(chan struct{})}
	s.metrics = newMetrics(opt.Registry, s)
	if err := s.loadMeta(ctx); err != nil {
		return nil, err
	}
	go s.auditWriter()
	return s, nil
}

func (s *Service) loadMeta(ctx context.Context) error {
	return s.st.View(ctx, func(tx store.Tx) error {
		b, err := tx.Get("meta", "root")
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		var m rootMeta
		if err := json.Unmarshal(b, &m); err != nil {
			return fmt.Errorf("reading root key metadata: %w", err)
		}
		if m.Version != FormatVersion {
			return fmt.Errorf("%w: the data directory has format %d, this server reads format %d", ErrDataFormat, m.Version, FormatVersion)
		}
		s.mu.Lock()
		s.meta = &m
		s.mu.Unlock()
		return nil
	})
}

// Status reports initialization and seal state.
func (s *Service) Status() api.Status {
	s.mu.RLock()
	defer s.mu.RUnlock()
	st := api.Status{Initialized: s.meta != nil, Sealed: s.keys == nil, Progress: len(s.pending)}
	if s.meta != nil {
		st.Mode, st.Threshold, st.Shares = s.meta.Mode, s.meta.Threshold, s.meta.Shares
	}
	return st
}

// Unseal adds one share; when the threshold is reached it recombines the
// root key and checks it. A wrong combination resets the progress.
func (s *Service) Unseal(ctx context.Context, share string) (api.Status, error) {
	b, err := ParseShare(share)
	if err != nil {
		return s.Status(), err
	}
	s.mu.Lock()
	if s.meta == nil {
		s.mu.Unlock()
		return s.Status(), ErrNotInitialized
	}
	if s.keys != nil {
		s.mu.Unlock()
		return s.Status(), nil
	}
	if s.meta.Mode != ModeShamir {
		s.mu.Unlock()
		return s.Status(), fail(ErrInvalidState, "the root key of this server is not split into shares")
	}
	// A share that does not match the commitment stored for its index is
	// refused on its own: it neither counts nor resets the progress, so
	// nobody can disturb an unseal in progress by sending bogus shares.
	want, _ := hex.DecodeString(s.meta.Commitments[strconv.Itoa(int(b[0]))])
	if len(want) == 0 || subtle.ConstantTimeCompare(want, shamir.Commitment(b)) != 1 {
		idx := b[0]
		clear(b)
		s.mu.Unlock()
		s.metrics.badShares.Inc()
		return s.Status(), fail(ErrBadShares, "this is not a share issued for this server (index %d)", idx)
	}
	for _, p := range s.pending {
		if p[0] == b[0] {
			s.mu.Unlock()
			return s.Status(), fail(ErrBadShares, "share %d was already given", b[0])
		}
	}
	s.pending = append(s.pending, b)
	if len(s.pending) < s.meta.Threshold {
		s.mu.Unlock()
		return s.Status(), nil
	}
	root, err := shamir.Combine(s.pending)
	for _, p := range s.pending {
		clear(p)
	}
	s.pending = nil
	if err != nil {
		s.mu.Unlock()
		return s.Status(), fail(ErrBadShares, "combining shares: %v", err)
	}
	k, err := checkRoot(*s.meta, root)
	clear(root)
	if err != nil {
		s.mu.Unlock()
		return s.Status(), fail(ErrBadShares, "the shares do not recombine into this server's root key; start again")
	}
	k.clocks, _ = s.st.(store.WriteClocker)
	s.keys = k
	s.mu.Unlock()
	s.log.Info("unsealed")
	s.checkChainOnUnseal(ctx, k)
	s.auditBatch(ctx, audit.Entry{Actor: audit.Actor{Kind: "operator"}, Op: "unseal"}, nil)
	return s.Status(), nil
}

// UnsealWithRootKey unseals with the whole root key (dev mode).
func (s *Service) UnsealWithRootKey(root []byte) error {
	s.mu.Lock()
	if s.meta == nil {
		s.mu.Unlock()
		return ErrNotInitialized
	}
	k, err := checkRoot(*s.meta, root)
	if err != nil {
		s.mu.Unlock()
		return fail(ErrBadShares, "the root key file does not match this data directory")
	}
	k.clocks, _ = s.st.(store.WriteClocker)
	s.keys, s.pending = k, nil
	s.mu.Unlock()
	s.checkChainOnUnseal(context.Background(), k)
	return nil
}

// Seal forgets the root key.
func (s *Service) Seal() {
	s.mu.Lock()
	s.keys, s.pending = nil, nil
	s.mu.Unlock()
}

// keyring returns the unsealed keyring or a sealed/not-initialized error.
func (s *Service) keyring() (*keyring, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.meta == nil {
		return nil, ErrNotInitialized
	}
	if s.keys == nil {
		return nil, fail(ErrSealed, "the key service is sealed; unseal it with 'veil kms unseal'")
	}
	return s.keys, nil
}

// Caller is an authenticated identity.
type Caller struct {
	Kind     string // "admin", "app", "workload"
	AppID    string
	Workload *Workload
	// ViaAdmin marks an admin managing an app's policies on its behalf
	// (Kind is then "app" and AppID the app).
	ViaAdmin bool
}

// Caller kinds.
const (
	KindAdmin    = "admin"
	KindApp      = "app"
	KindWorkload = "workload"
)

func (c Caller) actor() audit.Actor {
	a := audit.Actor{Kind: c.Kind, AppID: c.AppID}
	if c.ViaAdmin {
		a = audit.Actor{Kind: KindAdmin}
	}
	if c.Workload != nil {
		w := c.Workload
		a.Workload = &audit.Claims{TEE: w.TEE, Measurement: w.Measurement, Signer: w.Signer, ProductID: w.ProductID, SVN: w.SVN, Debug: w.Debug}
	}
	return a
}

// AuthenticateAdmin checks an admin bearer token in constant time.
func (s *Service) AuthenticateAdmin(ctx context.Context, token string) (Caller, error) {
	var am adminMeta
	s.mu.RLock()
	k := s.keys
	s.mu.RUnlock()
	err := s.st.View(ctx, func(tx store.Tx) error {
		if k != nil {
			return getJSON(s.itx(tx, k), "meta", "admin", &am)
		}
		// Sealed: the MAC cannot be checked yet, and nothing but sealing
		// (again) is open to the admin until the root key is known.
		b, err := tx.Get("meta", "admin")
		if err != nil {
			return err
		}
		if b, err = store.PeekValue("meta", "admin", b); err != nil {
			return err
		}
		return json.Unmarshal(b, &am)
	})
	err = serviceError(err)
	if errors.Is(err, store.ErrNotFound) {
		return Caller{}, ErrNotInitialized
	}
	if err != nil {
		return Caller{}, err
	}
	want, _ := hex.DecodeString(am.TokenHash)
	got, _ := hex.DecodeString(hashToken(token))
	if len(want) == 0 || subtle.ConstantTimeCompare(want, got) != 1 {
		return Caller{}, fail(ErrUnauthenticated, "the admin token is not valid")
	}
	return Caller{Kind: KindAdmin}, nil
}

// AuthenticateApp verifies a signed app request.
func (s *Service) AuthenticateApp(ctx context.Context, appID, tsStr, nonce, sig, method, requestURI string, body []byte) (Caller, error) {
	if _, err := s.keyring(); err != nil {
		return Caller{}, err
	}
	ts, err := strconv.ParseInt(tsStr, 10, 64)
	if err != nil || strconv.FormatInt(ts, 10) != tsStr {
		return Caller{}, fail(ErrBadSignature, "header %s must be a decimal Unix time", api.HeaderTimestamp)
	}
	if len(nonce) < 16 || len(nonce) > 64 || !isToken(nonce) {
		return Caller{}, fail(ErrBadSignature, "header %s must be 16-64 characters of [A-Za-z0-9_-]", api.HeaderNonce)
	}
	mac, err := hex.DecodeString(sig)
	if err != nil || len(mac) != sha256.Size {
		return Caller{}, fail(ErrBadSignature, "header %s must be 64 hex digits", api.HeaderSignature)
	}
	return s.AuthenticateAppMAC(ctx, appID, time.Unix(ts, 0), nonce, func(key []byte) bool {
		m := hmac.New(sha256.New, key)
		m.Write(api.StringToSign(method, requestURI, ts, nonce, body))
		return hmac.Equal(m.Sum(nil), mac)
	})
}

// AuthenticateAppMAC authenticates a request of appID signed in another
// wire format (such as the eHSM-compatible interface): check is given the
// app's signing key and reports whether the request's MAC is valid. The
// timestamp window, the app's disabled state and the per-app nonce cache
// apply exactly as for veil's own signed requests. nonce must be 16-64
// characters of [A-Za-z0-9_-].
func (s *Service) AuthenticateAppMAC(ctx context.Context, appID string, t time.Time, nonce string, check func(signingKey []byte) bool) (Caller, error) {
	k, err := s.keyring()
	if err != nil {
		return Caller{}, err
	}
	if len(nonce) < 16 || len(nonce) > 64 || !isToken(nonce) {
		return Caller{}, fail(ErrBadSignature, "the nonce must be 16-64 characters of [A-Za-z0-9_-]")
	}
	if !isID(appID, "a") {
		return Caller{}, fail(ErrBadSignature, "unknown app id or bad signature")
	}
	if ng, ok := s.st.(store.NonceGetter); ok {
		return s.authenticateShared(ctx, k, ng, appID, t, nonce, check)
	}
	load := func() ([]byte, error) {
		var app appRecord
		if err := s.view(ctx, k, func(tx store.Tx) error { return getJSON(tx, "apps", appID, &app) }); err != nil {
			return nil, err
		}
		if app.Disabled {
			return nil, fail(ErrAppDisabled, "app %s is disabled", appID)
		}
		return k.open("app/"+app.ID, app.SigningKey)
	}
	key, err := k.appKey(appID, load)
	if errors.Is(err, store.ErrNotFound) {
		return Caller{}, fail(ErrBadSignature, "unknown app id or bad signature")
	}
	if err != nil {
		return Caller{}, err
	}
	if !check(key) {
		return Caller{}, fail(ErrBadSignature, "unknown app id or bad signature")
	}
	if err := s.checkWindow(t); err != nil {
		return Caller{}, err
	}
	if err := s.nonces.add(appID, nonce, t.Add(s.opt.SignatureWindow+time.Second), s.now()); err != nil {
		return Caller{}, err
	}
	return Caller{Kind: KindApp, AppID: appID}, nil
}

func (s *Service) checkWindow(t time.Time) error {
	now := s.now()
	w := s.opt.SignatureWindow
	if t.Before(now.Add(-w)) || t.After(now.Add(w)) {
		return fail(ErrStaleTimestamp, "request time %s is outside the %s window around the server time", t.UTC().Format(time.RFC3339), w)
	}
	return nil
}

// appCred is an app's credential as stored (MAC included) and as opened.
type appCred struct {
	stored   []byte
	key      []byte // HMAC signing key
	disabled bool
}

// openCred checks and opens a stored app record.
func (s *Service) openCred(k *keyring, appID string, stored []byte) (appCred, error) {
	b, err := store.OpenValue(k.recordK, "apps", appID, stored)
	if err != nil {
		var ie *store.IntegrityError
		if errors.As(err, &ie) {
			s.metrics.integrityFailure(ie)
		}
		return appCred{}, serviceError(err)
	}
	var app appRecord
	if err := json.Unmarshal(b, &app); err != nil {
		return appCred{}, fmt.Errorf("decoding apps/%s: %w", appID, err)
	}
	key, err := k.open("app/"+app.ID, app.SigningKey)
	if err != nil || app.ID != appID {
		return appCred{}, fail(ErrRecordIntegrity, "the signing key of app %s does not open under the root key", appID)
	}
	return appCred{stored: bytes.Clone(stored), key: key, disabled: app.Disabled}, nil
}

// authenticateShared authenticates an app request on a store shared by
// replicas (PostgreSQL). Another replica may rotate the app's key or
// disable the app at any moment, and that must hold at once everywhere,
// so the credential is checked as stored at the moment the request's
// nonce is recorded: one statement records the nonce and returns the
// app's stored record (store.NonceGetter), which must be byte for byte
// the one the signature was checked with. A replica keeps the last
// credential it opened per app only to avoid decoding it again; a
// request whose signature fails with it, or whose record changed, is
// decided on the record as stored now.
func (s *Service) authenticateShared(ctx context.Context, k *keyring, ng store.NonceGetter, appID string, t time.Time, nonce string, check func([]byte) bool) (Caller, error) {
	badSig := fail(ErrBadSignature, "unknown app id or bad signature")
	k.mu.RLock()
	cred, cached := k.creds[appID]
	k.mu.RUnlock()
	fresh := func() (appCred, error) {
		var stored []byte
		var err error
		if or, ok := s.st.(store.OneReader); ok {
			stored, err = or.GetOne(ctx, "apps", appID)
		} else {
			err = s.st.View(ctx, func(tx store.Tx) error {
				b, err := tx.Get("apps", appID)
				stored = bytes.Clone(b)
				return err
			})
		}
		if errors.Is(err, store.ErrNotFound) {
			return appCred{}, badSig
		}
		if err != nil {
			return appCred{}, serviceError(err)
		}
		return s.openCred(k, appID, stored)
	}
	if !cached || cred.disabled || !check(cred.key) {
		var err error
		if cred, err = fresh(); err != nil {
			return Caller{}, err
		}
		if cred.disabled {
			return Caller{}, fail(ErrAppDisabled, "app %s is disabled", appID)
		}
		if !check(cred.key) {
			return Caller{}, badSig
		}
	}
	if err := s.checkWindow(t); err != nil {
		return Caller{}, err
	}
	now := s.now()
	stored, err := ng.UseNonceGet(ctx, appID, nonce, t.Add(s.opt.SignatureWindow+time.Second), now, "apps", appID)
	if errors.Is(err, store.ErrNonceUsed) {
		return Caller{}, fail(ErrReplayed, "this request's nonce was already used")
	}
	if err != nil {
		return Caller{}, serviceError(err)
	}
	if stored == nil {
		return Caller{}, badSig
	}
	if !bytes.Equal(stored, cred.stored) {
		// Rotated, disabled or otherwise rewritten since: decide on the
		// record as it is now.
		if cred, err = s.openCred(k, appID, stored); err != nil {
			return Caller{}, err
		}
		if cred.disabled {
			s.forgetCred(k, appID)
			return Caller{}, fail(ErrAppDisabled, "app %s is disabled", appID)
		}
		if !check(cred.key) {
			s.forgetCred(k, appID)
			return Caller{}, badSig
		}
	}
	k.mu.Lock()
	if len(k.creds) >= maxDecoded {
		clear(k.creds)
	}
	k.creds[appID] = cred
	k.mu.Unlock()
	return Caller{Kind: KindApp, AppID: appID}, nil
}

func (s *Service) forgetCred(k *keyring, appID string) {
	k.mu.Lock()
	delete(k.creds, appID)
	k.mu.Unlock()
}

func isToken(s string) bool {
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// nonceCache remembers (app, nonce) pairs until their timestamp leaves the
// window, so a captured request cannot be replayed. Each app has its own
// bound: an app that fills its share (by accident or on purpose) gets
// replay_cache_full while every other app is served. The bound is also a
// rate: since a nonce must be kept until its timestamp leaves the window,
// one app can sustain at most max / (window + 1 s) signed requests per
// second on one server (333/s with the defaults), in bursts more until its
// share is full (docs/kms.md).
//
// Each app has its own lock, and its nonces are expired in the order of
// their expiry (a heap), a few at each request: there is no pause to
// sweep the whole cache.
type nonceCache struct {
	max       int // per app
	mu        sync.Mutex
	apps      map[string]*appNonces
	lastSweep time.Time
}

type appNonces struct {
	mu    sync.Mutex
	seen  map[string]int64 // nonce -> expiry (Unix nanoseconds)
	order nonceHeap
}

type nonceExpiry struct {
	at    int64
	nonce string
}

// nonceHeap is a min-heap of expiries.
type nonceHeap []nonceExpiry

func (h *nonceHeap) push(e nonceExpiry) {
	*h = append(*h, e)
	a := *h
	for i := len(a) - 1; i > 0; {
		p := (i - 1) / 2
		if a[p].at <= a[i].at {
			break
		}
		a[p], a[i] = a[i], a[p]
		i = p
	}
}

func (h *nonceHeap) pop() nonceExpiry {
	a := *h
	top := a[0]
	n := len(a) - 1
	a[0] = a[n]
	a = a[:n]
	for i := 0; ; {
		l, m := 2*i+1, i
		if l < n && a[l].at < a[m].at {
			m = l
		}
		if l+1 < n && a[l+1].at < a[m].at {
			m = l + 1
		}
		if m == i {
			break
		}
		a[i], a[m] = a[m], a[i]
		i = m
	}
	*h = a
	return top
}

// expire forgets the nonces whose expiry is not after now.
func (a *appNonces) expire(now int64) {
	for len(a.order) > 0 && a.order[0].at <= now {
		e := a.order.pop()
		if at, ok := a.seen[e.nonce]; ok && at == e.at {
			delete(a.seen, e.nonce)
		}
	}
}

func newNonceCache(max int) *nonceCache {
	return &nonceCache{max: max, apps: map[string]*appNonces{}}
}

func (c *nonceCache) add(app, nonce string, expiry, now time.Time) error {
	c.mu.Lock()
	if now.Sub(c.lastSweep) > 10*time.Second {
		// Forget apps with nothing left to remember.
		for id, a := range c.apps {
			a.mu.Lock()
			a.expire(now.UnixNano())
			if len(a.seen) == 0 {
				delete(c.apps, id)
			}
			a.mu.Unlock()
		}
		c.lastSweep = now
	}
	a := c.apps[app]
	if a == nil {
		a = &appNonces{seen: map[string]int64{}}
		c.apps[app] = a
	}
	a.mu.Lock()
	c.mu.Unlock()
	defer a.mu.Unlock()
	a.expire(now.UnixNano())
	if _, ok := a.seen[nonce]; ok {
		return fail(ErrReplayed, "this request's nonce was already used")
	}
	if len(a.seen) >= c.max {
		return fail(ErrReplayCacheFull, "this app sent more than %d signed requests within the time window; retry later", c.max)
	}
	a.seen[nonce] = expiry.UnixNano()
	a.order.push(nonceExpiry{at: expiry.UnixNano(), nonce: nonce})
	return nil
}

// OnBehalfOf lets the admin manage the policies of app: it returns a caller
// acting as that app, audited as the admin. Only the policy endpoints use it.
func (s *Service) OnBehalfOf(ctx context.Context, c Caller, app string) (Caller, error) {
	if c.Kind != KindAdmin {
		return Caller{}, fail(ErrUnknownField, "query parameter \"app\" is for admin callers")
	}
	k, err := s.keyring()
	if err != nil {
		return Caller{}, err
	}
	err = s.view(ctx, k, func(tx store.Tx) error { _, err := tx.Get("apps", app); return err })
	if errors.Is(err, store.ErrNotFound) {
		return Caller{}, fail(ErrAppNotFound, "app %q is not enrolled", app)
	}
	if err != nil {
		return Caller{}, err
	}
	return Caller{Kind: KindApp, AppID: app, ViaAdmin: true}, nil
}

// authenticateAdminCert reports whether certs chain to an admin client CA.
func (s *Service) authenticateAdminCert(certs []*x509.Certificate) bool {
	if s.opt.AdminClientCAs == nil || len(certs) == 0 {
		return false
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{Roots: s.opt.AdminClientCAs, Intermediates: inter,
		CurrentTime: s.now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return err == nil
}

// AuthenticateWorkload verifies a workload's client certificate chain.
func (s *Service) AuthenticateWorkload(certs []*x509.Certificate) (Caller, error) {
	if s.opt.Verifier == nil {
		return Caller{}, fail(ErrWorkloadAuth, "this server has no workload verifier configured")
	}
	w, err := s.opt.Verifier.VerifyPeer(certs)
	if err != nil {
		return Caller{}, fail(ErrWorkloadAuth, "verifying the workload's evidence: %v", err)
	}
	return Caller{Kind: KindWorkload, Workload: &w}, nil
}

// auditBatch appends one entry through the group-commit writer and waits
// until it is durable; opErr, when non-nil, marks it denied with the reason.
// It returns the error of the commit (nil once the entry is durable): a
// caller about to release something must not answer when it fails.
func (s *Service) auditBatch(ctx context.Context, e audit.Entry, opErr error) error {
	k, err := s.keyring()
	if err != nil {
		return err
	}
	e.Time = s.now()
	if opErr != nil {
		e.Result, e.Reason = audit.Denied, reason(opErr)
	} else {
		e.Result = audit.Granted
	}
	req := auditReq{e: e, k: k, done: make(chan error, 1)}
	select {
	case s.auditQ <- req:
	case <-s.closed:
		return fail(ErrStoreUnavailable, "the key service is stopping")
	}
	if err := <-req.done; err != nil {
		s.log.Error("appending audit entry", "op", e.Op, "err", err)
		return err
	}
	return nil
}

type auditReq struct {
	e    audit.Entry
	k    *keyring
	done chan error
}

// auditWriter commits queued audit entries: each commit takes everything
// queued while the previous one was being synced (group commit), so one
// fsync serves many concurrent requests without an artificial delay.
func (s *Service) auditWriter() {
	defer close(s.writerDone)
	const maxGroup = 1024
	for {
		group, ok := store.NextGroup(s.auditQ, s.closed, maxGroup)
		if !ok {
			return
		}
		err := s.st.Update(context.Background(), func(tx store.Tx) error {
			var h auditHead
			var k *keyring
			for _, r := range group {
				if r.k != k { // check the chain once per group (and per root key)
					if k != nil {
						if err := putHead(tx, k, h); err != nil {
							return err
						}
					}
					var err error
					if h, err = checkChain(tx, r.k); err != nil {
						return s.chainDamaged(err)
					}
					k = r.k
				}
				var err error
				if h, err = chainEntry(tx, r.k, h, r.e); err != nil {
					return err
				}
			}
			// The head is written once, after the group's last entry.
			return putHead(tx, k, h)
		})
		err = serviceError(err)
		for _, r := range group {
			r.done <- err
		}
	}
}

// Close stops the audit writer. Call it after the server has stopped.
func (s *Service) Close() {
	s.closeOnce.Do(func() { close(s.closed) })
	<-s.writerDone
}

func reason(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Error()
	}
	return "internal error"
}

func getJSON(tx store.Tx, bucket, key string, v any) error {
	b, err := tx.Get(bucket, key)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("decoding %s/%s: %w", bucket, key, err)
	}
	return nil
}

func putJSON(tx store.Tx, bucket, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return tx.Put(bucket, key, b)
}
