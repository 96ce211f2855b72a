// Package client is the Go client of the veil key service, used by the veil
// command line and by the runtime. It verifies the server's certificate
// against the configured CA (there is no option to skip verification), signs
// app requests with the app's API key (which never travels on the wire), and
// presents an attested client certificate for workload calls.
package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/veil-tee/veil/kms/api"
)

// Config says where the key service is and who the client is. Several
// identities may be set: admin calls use AdminToken; key, secret and policy
// calls use the app credentials when AppID is set and otherwise the
// workload certificate.
type Config struct {
	// URL is the service's base URL, https://HOST:PORT, or several
	// separated by commas: replicas of one service (one store, one CA),
	// tried in order (see Retries).
	URL string
	// Retries bounds the extra rounds over the addresses after the first
	// (default 2; negative: none). Between rounds the client backs off
	// (100 ms, doubling). Only what is safe to repeat is retried: reads,
	// releases, key creation (which carries a request id), and any
	// request the server refused unexecuted (no connection, 503).
	Retries int
	// Trace, when set, is told which address answered each call and why
	// an attempt failed over (verbose output).
	Trace func(msg string)
	// CAPEM holds the PEM certificates that may sign the server's
	// certificate; empty means the system roots.
	CAPEM []byte
	// AdminToken authenticates admin calls.
	AdminToken string
	// AppID and APIKey authenticate app calls (HMAC-signed requests).
	AppID, APIKey string
	// WorkloadCertificate returns the TLS client certificate to present:
	// the RA-TLS certificate of a workload, or an admin client certificate
	// (then admin calls need no AdminToken).
	// presents; it is asked during each TLS handshake.
	WorkloadCertificate func(*tls.CertificateRequestInfo) (*tls.Certificate, error)
	// PinSHA256, when set, accepts the service only if its certificate
	// chain holds a key whose DER SubjectPublicKeyInfo has this SHA-256
	// (veil.json's kms[].pin_sha256); with CAPEM too, both must hold.
	PinSHA256 []byte
	// Clock returns the time used to sign requests (default time.Now).
	Clock func() time.Time
	// Timeout bounds each call (default 30 s).
	Timeout time.Duration
	// MaxConnsPerHost bounds kept-alive connections (default 64).
	MaxConnsPerHost int
}

// Client calls the key service. It is safe for concurrent use.
type Client struct {
	cfg      Config
	base     *url.URL   // the address in use
	bases    []*url.URL // all addresses, in order
	pref     *atomic.Int32
	hc       *http.Client
	signKey  []byte
	adminFor string
	// serverKey, once set (RequireServerKey), is the only key the service
	// may present on any connection.
	serverKey *atomic.Pointer[[]byte]
}

// RequireServerKey makes every later connection accept the service only if
// its certificate carries exactly this key (DER SubjectPublicKeyInfo), on
// top of the configured pin or CA, and drops the idle connections made
// before. A workload calls it with the key it attested, so that no other
// holder of a certificate from the same CA can answer in its place.
func (c *Client) RequireServerKey(spki []byte) {
	k := append([]byte(nil), spki...)
	c.serverKey.Store(&k)
	c.hc.CloseIdleConnections()
}

// AdminFor returns a client whose policy calls (create, list, show, delete,
// attach, detach) are made by the admin on behalf of app. It shares c's
// connections.
func (c *Client) AdminFor(app string) *Client {
	cc := *c
	cc.adminFor = app
	return &cc
}

// pol returns the path and identity of a policy call.
func (c *Client) pol(p string) (string, auth) {
	if c.adminFor == "" {
		return p, asPrincipal
	}
	return p + "?app=" + url.QueryEscape(c.adminFor), asAdmin
}

// ErrConfig is wrapped by New for an unusable configuration.
var ErrConfig = errors.New("invalid key service client configuration")

// ErrNotPinned: the service's certificate does not match Config.PinSHA256
// (or does not chain to the pinned CA key). A certificate that does not
// chain to Config.CAPEM fails the handshake with a
// *tls.CertificateVerificationError instead.
var ErrNotPinned = errors.New("the key service's certificate does not match the pinned key")

// New returns a client for cfg.
func New(cfg Config) (*Client, error) {
	var bases []*url.URL
	for _, one := range strings.Split(cfg.URL, ",") {
		one = strings.TrimSpace(one)
		u, err := url.Parse(one)
		if err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
			return nil, fmt.Errorf("%w: the URL must be https://HOST:PORT (or several, comma-separated), got %q", ErrConfig, one)
		}
		u.Path = ""
		bases = append(bases, u)
	}
	if cfg.Retries == 0 {
		cfg.Retries = 2
	} else if cfg.Retries < 0 {
		cfg.Retries = 0
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS13, GetClientCertificate: cfg.WorkloadCertificate}
	serverKey := &atomic.Pointer[[]byte]{}
	if len(cfg.CAPEM) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(cfg.CAPEM) {
			return nil, fmt.Errorf("%w: the CA file holds no PEM certificate", ErrConfig)
		}
		tc.RootCAs = pool
	}
	if len(cfg.PinSHA256) > 0 {
		if len(cfg.PinSHA256) != sha256.Size {
			return nil, fmt.Errorf("%w: a key pin is %d bytes of SHA-256, got %d", ErrConfig, sha256.Size, len(cfg.PinSHA256))
		}
		if tc.RootCAs == nil {
			// The chain is not verified against a CA: the pin below is the
			// whole verification of the service's identity.
			tc.InsecureSkipVerify = true
		}
		pin := cfg.PinSHA256
		tc.VerifyConnection = func(cs tls.ConnectionState) error {
			certs := cs.PeerCertificates
			for i, cert := range certs {
				h := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
				if subtle.ConstantTimeCompare(h[:], pin) != 1 {
					continue
				}
				if i == 0 {
					return nil // the handshake proved possession of the leaf key
				}
				// A pinned CA: the leaf must chain to it.
				roots, inter := x509.NewCertPool(), x509.NewCertPool()
				roots.AddCert(cert)
				for _, c := range certs[1:i] {
					inter.AddCert(c)
				}
				if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
					return fmt.Errorf("%w: it does not chain to the pinned key: %w", ErrNotPinned, err)
				}
				return nil
			}
			return fmt.Errorf("%w %x", ErrNotPinned, pin)
		}
	}
	if (cfg.AppID == "") != (cfg.APIKey == "") {
		return nil, fmt.Errorf("%w: set both the app id and the API key, or neither", ErrConfig)
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.MaxConnsPerHost == 0 {
		cfg.MaxConnsPerHost = 64
	}
	pinCheck := tc.VerifyConnection
	tc.VerifyConnection = func(cs tls.ConnectionState) error {
		if pinCheck != nil {
			if err := pinCheck(cs); err != nil {
				return err
			}
		}
		if k := serverKey.Load(); k != nil {
			if len(cs.PeerCertificates) == 0 || !bytes.Equal(cs.PeerCertificates[0].RawSubjectPublicKeyInfo, *k) {
				return errors.New("the key service presented another key than the one it attested")
			}
		}
		return nil
	}
	tr := &http.Transport{
		TLSClientConfig:     tc,
		ForceAttemptHTTP2:   false,
		MaxIdleConns:        cfg.MaxConnsPerHost,
		MaxIdleConnsPerHost: cfg.MaxConnsPerHost,
		MaxConnsPerHost:     cfg.MaxConnsPerHost,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 10 * time.Second,
	}
	c := &Client{cfg: cfg, base: bases[0], bases: bases, pref: &atomic.Int32{}, hc: &http.Client{Transport: tr, Timeout: cfg.Timeout}, serverKey: serverKey}
	if cfg.APIKey != "" {
		c.signKey = api.SigningKey(cfg.APIKey)
	}
	return c, nil
}

// Close releases idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// Error is a problem returned by the service. errors.Is matches on Code, so
// it matches the Err* values of this package.
type Error struct {
	Status  int
	Problem api.Problem
}

func (e *Error) Error() string {
	if e.Problem.Detail != "" {
		return fmt.Sprintf("key service: %s (%s)", e.Problem.Detail, e.Problem.Code)
	}
	return fmt.Sprintf("key service: %s (HTTP %d)", e.Problem.Code, e.Status)
}

// Is matches another *Error with the same code.
func (e *Error) Is(target error) bool {
	var t *Error
	return errors.As(target, &t) && t.Problem.Code == e.Problem.Code
}

// Code returns a sentinel matching service errors with code.
func Code(code string) *Error { return &Error{Problem: api.Problem{Code: code}} }

// Sentinels for the codes callers most often branch on (docs/kms.md has
// the full list).
var (
	ErrUnauthenticated = Code("unauthenticated")
	ErrBadSignature    = Code("bad_signature")
	ErrStaleTimestamp  = Code("stale_timestamp")
	ErrReplayed        = Code("replayed_request")
	ErrForbidden       = Code("forbidden")
	ErrPolicyDenied    = Code("policy_denied")
	ErrKeyNotFound     = Code("key_not_found")
	ErrSecretNotFound  = Code("secret_not_found")
	ErrKeyDisabled     = Code("key_disabled")
	ErrKeyPendingDel   = Code("key_pending_deletion")
	ErrKeyDeleted      = Code("key_deleted")
	ErrDecryptFailed   = Code("decrypt_failed")
	ErrSealed          = Code("sealed")
	ErrUnknownField    = Code("unknown_field")
	ErrBodyTooLarge    = Code("body_too_large")
	ErrAlreadyExists   = Code("already_exists")
	ErrWorkloadAuth    = Code("workload_unverified")
)

type auth int

const (
	asNone auth = iota
	asAdmin
	asPrincipal // the app when configured, else the workload certificate
)

// Raw sends one request and decodes the JSON answer into out (if non-nil).
// It is exported for tests and tools that need exact control of the body.
func (c *Client) Raw(ctx context.Context, method, path string, body []byte, admin bool, out any) error {
	a := asPrincipal
	if admin {
		a = asAdmin
	}
	return c.send(ctx, method, path, body, a, out)
}

func (c *Client) do(ctx context.Context, method, path string, in any, a auth, out any) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return err
		}
	}
	return c.send(ctx, method, path, body, a, out)
}

func (c *Client) send(ctx context.Context, method, path string, body []byte, a auth, out any) error {
	return c.sendWith(ctx, method, path, body, a, nil, out)
}

// safeToRepeat reports whether a request may be sent again after an
// attempt whose outcome is unknown: reads, releases and computations
// that change nothing, and creations that carry a request id.
func safeToRepeat(method, path string, hdr http.Header) bool {
	if method == http.MethodGet {
		return true
	}
	p, _, _ := strings.Cut(path, "?")
	if method == http.MethodPost && p == "/v1/keys" && hdr.Get(api.HeaderRequestID) != "" {
		return true
	}
	if method == http.MethodPost {
		if p == "/v1/decrypt" {
			return true
		}
		for _, op := range []string{"/encrypt", "/generate-data-key", "/sign", "/verify", "/asymmetric-decrypt"} {
			if strings.HasPrefix(p, "/v1/keys/") && strings.HasSuffix(p, op) {
				return true
			}
		}
	}
	return false
}

// notExecuted reports whether an attempt's failure shows the request was
// not carried out: no connection could be made, or the server refused it
// as unavailable (503: sealed, database unreachable, ...).
func notExecuted(err error) bool {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "dial" {
		return true
	}
	var e *Error
	return errors.As(err, &e) && e.Status == http.StatusServiceUnavailable
}

// transient reports whether an attempt failed for a reason another
// replica might not have: a transport error or a 503.
func transient(err error) bool {
	var e *Error
	if errors.As(err, &e) {
		return e.Status == http.StatusServiceUnavailable
	}
	var ue *url.Error
	return errors.As(err, &ue) && !errors.Is(err, context.Canceled)
}

// sendWith sends one call, failing over between the addresses: every
// attempt is a new request (a new nonce and signature), starting with the
// address that last answered; a call that is not safe to repeat is
// retried only when the failed attempt was provably not executed.
func (c *Client) sendWith(ctx context.Context, method, path string, body []byte, a auth, hdr http.Header, out any) error {
	n := len(c.bases)
	attempts := n * (1 + c.cfg.Retries)
	start := int(c.pref.Load())
	backoff := 100 * time.Millisecond
	var err error
	for i := range attempts {
		if i > 0 && i%n == 0 {
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return err
			}
			backoff *= 2
		}
		idx := (start + i) % n
		cc := *c
		cc.base = c.bases[idx]
		req, rerr := cc.NewRequest(ctx, method, path, body, a == asAdmin)
		if rerr != nil {
			return rerr
		}
		for k, v := range hdr {
			req.Header[k] = v
		}
		if a == asNone {
			req.Header.Del("Authorization")
			for _, h := range []string{api.HeaderAppID, api.HeaderTimestamp, api.HeaderNonce, api.HeaderSignature} {
				req.Header.Del(h)
			}
		}
		err = c.Do(req, out)
		if err == nil || !transient(err) || (!notExecuted(err) && !safeToRepeat(method, path, req.Header)) || ctx.Err() != nil {
			if err == nil || !transient(err) {
				c.pref.Store(int32(idx))
				c.trace("%s %s: answered by %s", method, path, c.bases[idx].Host)
			}
			return err
		}
		if n > 1 || c.cfg.Retries > 0 {
			c.trace("%s %s: %s failed (%v); trying the next address", method, path, c.bases[idx].Host, err)
		}
	}
	return err
}

func (c *Client) trace(format string, a ...any) {
	if c.cfg.Trace != nil {
		c.cfg.Trace(fmt.Sprintf(format, a...))
	}
}

// NewRequest builds an authenticated request (admin, or app-signed when the
// client has app credentials). Tests use it to replay or alter requests.
func (c *Client) NewRequest(ctx context.Context, method, path string, body []byte, admin bool) (*http.Request, error) {
	u := *c.base
	p, q, _ := strings.Cut(path, "?")
	u.Path, u.RawQuery = p, q
	req, err := http.NewRequestWithContext(ctx, method, u.String(), bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	if len(body) > 0 {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	switch {
	case admin:
		if c.cfg.AdminToken == "" {
			if c.cfg.WorkloadCertificate != nil {
				break // an admin client certificate
			}
			return nil, fmt.Errorf("%w: this call needs the admin token (VEIL_ADMIN_TOKEN)", ErrConfig)
		}
		req.Header.Set("Authorization", "Bearer "+c.cfg.AdminToken)
	case c.signKey != nil:
		nb := make([]byte, 18)
		if _, err := rand.Read(nb); err != nil {
			return nil, err
		}
		nonce := base64.RawURLEncoding.EncodeToString(nb)
		ts := c.cfg.Clock().Unix()
		req.Header.Set(api.HeaderAppID, c.cfg.AppID)
		req.Header.Set(api.HeaderTimestamp, strconv.FormatInt(ts, 10))
		req.Header.Set(api.HeaderNonce, nonce)
		req.Header.Set(api.HeaderSignature, api.Sign(c.signKey, method, req.URL.RequestURI(), ts, nonce, body))
	}
	return req, nil
}

// Do sends req and decodes the answer into out, or returns an *Error.
func (c *Client) Do(req *http.Request, out any) error {
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("calling the key service: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return fmt.Errorf("reading the key service's answer: %w", err)
	}
	if resp.StatusCode >= 300 {
		e := &Error{Status: resp.StatusCode}
		if json.Unmarshal(b, &e.Problem) != nil || e.Problem.Code == "" {
			e.Problem = api.Problem{Code: "http_" + strconv.Itoa(resp.StatusCode), Status: resp.StatusCode, Detail: strings.TrimSpace(string(b))}
		}
		return e
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("decoding the key service's answer: %w", err)
	}
	return nil
}

func esc(s string) string { return url.PathEscape(s) }

// ---- sys ----

// Status returns the seal state.
func (c *Client) Status(ctx context.Context) (st api.Status, err error) {
	return st, c.do(ctx, "GET", "/v1/sys/status", nil, asNone, &st)
}

// Attestation asks the service for evidence binding its TLS key and
// nonce, and returns it with the SubjectPublicKeyInfo of the key the
// service presented on the connection that answered (to be checked with
// ratls.Peer.VerifyKeyBinding).
func (c *Client) Attestation(ctx context.Context, nonce []byte) (a api.Attestation, spki []byte, err error) {
	req, err := c.NewRequest(ctx, "GET", "/v1/sys/attestation?nonce="+hex.EncodeToString(nonce), nil, false)
	if err != nil {
		return a, nil, err
	}
	for _, h := range []string{"Authorization", api.HeaderAppID, api.HeaderTimestamp, api.HeaderNonce, api.HeaderSignature} {
		req.Header.Del(h)
	}
	var peer []byte
	trace := &httptrace.ClientTrace{GotConn: func(ci httptrace.GotConnInfo) {
		if tc, ok := ci.Conn.(*tls.Conn); ok {
			if cs := tc.ConnectionState(); len(cs.PeerCertificates) > 0 {
				peer = cs.PeerCertificates[0].RawSubjectPublicKeyInfo
			}
		}
	}}
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
	if err := c.Do(req, &a); err != nil {
		return a, nil, err
	}
	if peer == nil {
		return a, nil, errors.New("the key service's answer came over no TLS connection")
	}
	return a, peer, nil
}

// Unseal hands one share to the service.
func (c *Client) Unseal(ctx context.Context, share string) (st api.Status, err error) {
	return st, c.do(ctx, "POST", "/v1/sys/unseal", api.UnsealRequest{Share: share}, asNone, &st)
}

// Seal makes the service forget its root key (admin).
func (c *Client) Seal(ctx context.Context) (st api.Status, err error) {
	return st, c.do(ctx, "POST", "/v1/sys/seal", nil, asAdmin, &st)
}

// ---- apps (admin) ----

// Enroll registers an app; the API key in the answer is shown only once.
func (c *Client) Enroll(ctx context.Context, name string) (r api.EnrollResponse, err error) {
	return r, c.do(ctx, "POST", "/v1/apps", api.EnrollRequest{Name: name}, asAdmin, &r)
}

// ListApps lists enrolled apps.
func (c *Client) ListApps(ctx context.Context) (r api.AppList, err error) {
	return r, c.do(ctx, "GET", "/v1/apps", nil, asAdmin, &r)
}

// RotateAppKey gives an app a new API key (returned once) and makes the
// service refuse the old one at once. With app credentials configured and
// no admin token, the app rotates its own key; otherwise the admin does.
func (c *Client) RotateAppKey(ctx context.Context, appID string) (r api.EnrollResponse, err error) {
	a := asAdmin
	if c.cfg.AdminToken == "" && c.cfg.AppID != "" {
		a = asPrincipal
	}
	return r, c.do(ctx, "POST", "/v1/apps/"+esc(appID)+"/rotate-key", nil, a, &r)
}

// DisableApp makes the service refuse every request signed by an app (admin).
func (c *Client) DisableApp(ctx context.Context, appID string) (r api.App, err error) {
	return r, c.do(ctx, "POST", "/v1/apps/"+esc(appID)+"/disable", nil, asAdmin, &r)
}

// ---- keys ----

// CreateKey creates a customer master key ("" spec means AES_256_GCM).
// It sends a fresh request id (api.HeaderRequestID), so that the call is
// retried on another replica without the risk of creating two keys.
func (c *Client) CreateKey(ctx context.Context, name, spec, description string) (k api.Key, err error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return k, err
	}
	return c.CreateKeyWithRequestID(ctx, name, spec, description, hex.EncodeToString(b))
}

// CreateKeyWithRequestID creates a key idempotently: a repeated call with
// the same request id (1-64 characters of [A-Za-z0-9_-]) returns the key
// the first created, on any replica of the service.
func (c *Client) CreateKeyWithRequestID(ctx context.Context, name, spec, description, requestID string) (k api.Key, err error) {
	body, err := json.Marshal(api.CreateKeyRequest{Name: name, Spec: spec, Description: description})
	if err != nil {
		return k, err
	}
	return k, c.sendWith(ctx, "POST", "/v1/keys", body, asPrincipal, http.Header{api.HeaderRequestID: {requestID}}, &k)
}

// ListKeys lists the app's keys.
func (c *Client) ListKeys(ctx context.Context) (r api.KeyList, err error) {
	return r, c.do(ctx, "GET", "/v1/keys", nil, asPrincipal, &r)
}

// DescribeKey returns a key's metadata; ref is a key id or the app's key name.
func (c *Client) DescribeKey(ctx context.Context, ref string) (k api.Key, err error) {
	return k, c.do(ctx, "GET", "/v1/keys/"+esc(ref), nil, asPrincipal, &k)
}

// KeyAction is "enable", "disable", "rotate" or "cancel-deletion".
func (c *Client) KeyAction(ctx context.Context, ref, action string) (k api.Key, err error) {
	return k, c.do(ctx, "POST", "/v1/keys/"+esc(ref)+"/"+esc(action), nil, asPrincipal, &k)
}

// ScheduleKeyDeletion schedules deletion after pendingDays (0: 30).
func (c *Client) ScheduleKeyDeletion(ctx context.Context, ref string, pendingDays int) (k api.Key, err error) {
	return k, c.do(ctx, "POST", "/v1/keys/"+esc(ref)+"/schedule-deletion", api.ScheduleDeletionRequest{PendingDays: pendingDays}, asPrincipal, &k)
}

// AttachKeyPolicy attaches a policy (id or name) to a key.
func (c *Client) AttachKeyPolicy(ctx context.Context, ref, policy string) (k api.Key, err error) {
	p, a := c.pol("/v1/keys/" + esc(ref) + "/policies")
	return k, c.do(ctx, "POST", p, api.AttachPolicyRequest{Policy: policy}, a, &k)
}

// DetachKeyPolicy detaches a policy from a key.
func (c *Client) DetachKeyPolicy(ctx context.Context, ref, policy string) (k api.Key, err error) {
	p, a := c.pol("/v1/keys/" + esc(ref) + "/policies/" + esc(policy))
	return k, c.do(ctx, "DELETE", p, nil, a, &k)
}

// Encrypt encrypts up to 4 KiB under a key.
func (c *Client) Encrypt(ctx context.Context, ref string, plaintext, aad []byte) (r api.CipherResponse, err error) {
	return r, c.do(ctx, "POST", "/v1/keys/"+esc(ref)+"/encrypt", api.EncryptRequest{Plaintext: plaintext, AAD: aad}, asPrincipal, &r)
}

// GenerateDataKey returns a new data key and its wrapped form.
func (c *Client) GenerateDataKey(ctx context.Context, ref string, length int, aad []byte) (r api.CipherResponse, err error) {
	return r, c.do(ctx, "POST", "/v1/keys/"+esc(ref)+"/generate-data-key", api.DataKeyRequest{Length: length, AAD: aad}, asPrincipal, &r)
}

// GenerateDataKeyWithoutPlaintext returns only the wrapped data key.
func (c *Client) GenerateDataKeyWithoutPlaintext(ctx context.Context, ref string, length int, aad []byte) (r api.CipherResponse, err error) {
	return r, c.do(ctx, "POST", "/v1/keys/"+esc(ref)+"/generate-data-key-without-plaintext", api.DataKeyRequest{Length: length, AAD: aad}, asPrincipal, &r)
}

// Decrypt opens a ciphertext made by Encrypt or GenerateDataKey.
func (c *Client) Decrypt(ctx context.Context, ciphertext, aad []byte) (r api.DecryptResponse, err error) {
	return r, c.do(ctx, "POST", "/v1/decrypt", api.DecryptRequest{Ciphertext: ciphertext, AAD: aad}, asPrincipal, &r)
}

// ---- secrets ----

// PutSecret stores a new version of a named secret.
func (c *Client) PutSecret(ctx context.Context, name string, value []byte, description string) (s api.Secret, err error) {
	return s, c.do(ctx, "PUT", "/v1/secrets/"+esc(name), api.PutSecretRequest{Value: value, Description: description}, asPrincipal, &s)
}

// GetSecret returns a secret's value; version 0 means the latest.
func (c *Client) GetSecret(ctx context.Context, ref string, version int) (s api.Secret, err error) {
	p := "/v1/secrets/" + esc(ref)
	if version > 0 {
		p += "?version=" + strconv.Itoa(version)
	}
	return s, c.do(ctx, "GET", p, nil, asPrincipal, &s)
}

// ListSecrets lists the app's secrets without values.
func (c *Client) ListSecrets(ctx context.Context) (r api.SecretList, err error) {
	return r, c.do(ctx, "GET", "/v1/secrets", nil, asPrincipal, &r)
}

// DeleteSecret deletes a secret and all its versions.
func (c *Client) DeleteSecret(ctx context.Context, ref string) error {
	return c.do(ctx, "DELETE", "/v1/secrets/"+esc(ref), nil, asPrincipal, nil)
}

// AttachSecretPolicy attaches a policy to a secret.
func (c *Client) AttachSecretPolicy(ctx context.Context, ref, policy string) (s api.Secret, err error) {
	p, a := c.pol("/v1/secrets/" + esc(ref) + "/policies")
	return s, c.do(ctx, "POST", p, api.AttachPolicyRequest{Policy: policy}, a, &s)
}

// DetachSecretPolicy detaches a policy from a secret.
func (c *Client) DetachSecretPolicy(ctx context.Context, ref, policy string) (s api.Secret, err error) {
	p, a := c.pol("/v1/secrets/" + esc(ref) + "/policies/" + esc(policy))
	return s, c.do(ctx, "DELETE", p, nil, a, &s)
}

// ---- policies ----

// CreatePolicy stores a release policy document.
func (c *Client) CreatePolicy(ctx context.Context, name string, document json.RawMessage) (p api.Policy, err error) {
	path, a := c.pol("/v1/policies")
	return p, c.do(ctx, "POST", path, api.CreatePolicyRequest{Name: name, Document: document}, a, &p)
}

// ReplacePolicy replaces the document of one of the app's policies; every
// key and secret it is attached to follows the new document. Only the
// owning app may do it: the service refuses it from the admin.
func (c *Client) ReplacePolicy(ctx context.Context, ref string, document json.RawMessage) (p api.Policy, err error) {
	path, a := c.pol("/v1/policies/" + esc(ref))
	return p, c.do(ctx, "PUT", path, api.ReplacePolicyRequest{Document: document}, a, &p)
}

// ListPolicies lists the app's policies.
func (c *Client) ListPolicies(ctx context.Context) (r api.PolicyList, err error) {
	p, a := c.pol("/v1/policies")
	return r, c.do(ctx, "GET", p, nil, a, &r)
}

// GetPolicy returns one policy.
func (c *Client) GetPolicy(ctx context.Context, ref string) (p api.Policy, err error) {
	path, a := c.pol("/v1/policies/" + esc(ref))
	return p, c.do(ctx, "GET", path, nil, a, &p)
}

// DeletePolicy deletes a policy attached to nothing.
func (c *Client) DeletePolicy(ctx context.Context, ref string) error {
	p, a := c.pol("/v1/policies/" + esc(ref))
	return c.do(ctx, "DELETE", p, nil, a, nil)
}

// ---- asymmetric keys ----

// Sign signs a message (hashed with SHA-256 by the service) with an EC_P256
// or RSA_3072 key.
func (c *Client) Sign(ctx context.Context, ref string, message []byte) (r api.SignResponse, err error) {
	return r, c.do(ctx, "POST", "/v1/keys/"+esc(ref)+"/sign", api.SignRequest{Message: message}, asPrincipal, &r)
}

// Verify checks a signature with a key version (0: primary).
func (c *Client) Verify(ctx context.Context, ref string, message, signature []byte, version int) (r api.VerifyResponse, err error) {
	return r, c.do(ctx, "POST", "/v1/keys/"+esc(ref)+"/verify", api.VerifyRequest{Message: message, Signature: signature, KeyVersion: version}, asPrincipal, &r)
}

// PublicKey returns the PEM public key of a key version (0: primary).
func (c *Client) PublicKey(ctx context.Context, ref string, version int) (r api.PublicKeyResponse, err error) {
	p := "/v1/keys/" + esc(ref) + "/public-key"
	if version > 0 {
		p += "?version=" + strconv.Itoa(version)
	}
	return r, c.do(ctx, "GET", p, nil, asPrincipal, &r)
}

// AsymmetricDecrypt decrypts RSA-OAEP-SHA256 ciphertext with an RSA_3072 key.
func (c *Client) AsymmetricDecrypt(ctx context.Context, ref string, ciphertext []byte, version int) (r api.DecryptResponse, err error) {
	return r, c.do(ctx, "POST", "/v1/keys/"+esc(ref)+"/asymmetric-decrypt", api.AsymmetricDecryptRequest{Ciphertext: ciphertext, KeyVersion: version}, asPrincipal, &r)
}
