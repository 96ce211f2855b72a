package kms_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/veil-tee/veil/kms"
	"github.com/veil-tee/veil/kms/client"
	"github.com/veil-tee/veil/kms/store"
)

// ---- test-only attestation stand-ins ----
//
// testVerifier is NOT an attestation verifier: it trusts claims written
// into a certificate extension by the test itself. It exists only to drive
// the WorkloadVerifier seam; production servers use the attest packages.

var claimsOID = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 55555, 1}

type testVerifier struct{}

var verifyCalls atomic.Int64

func (testVerifier) VerifyPeer(certs []*x509.Certificate) (kms.Workload, error) {
	verifyCalls.Add(1)
	for _, ext := range certs[0].Extensions {
		if ext.Id.Equal(claimsOID) {
			var w kms.Workload
			if err := json.Unmarshal(ext.Value, &w); err != nil {
				return kms.Workload{}, err
			}
			return w, nil
		}
	}
	return kms.Workload{}, errors.New("no test claims in certificate")
}

// testPolicy is the document shape testEvaluator understands.
type testPolicy struct {
	Measurements []string `json:"measurements"`
	MinSVN       uint16   `json:"min_svn"`
	AllowDebug   bool     `json:"allow_debug"`
}

type testEvaluator struct{}

func (testEvaluator) Evaluate(doc []byte, w kms.Workload) (bool, []string) {
	var p testPolicy
	if err := json.Unmarshal(doc, &p); err != nil {
		return false, []string{"unreadable policy"}
	}
	var unmet []string
	if !slices.Contains(p.Measurements, w.Measurement) {
		unmet = append(unmet, "measurement "+w.Measurement+" is not allowed")
	}
	if w.SVN < p.MinSVN {
		unmet = append(unmet, fmt.Sprintf("svn %d < %d", w.SVN, p.MinSVN))
	}
	if w.Debug && !p.AllowDebug {
		unmet = append(unmet, "debug workloads are not allowed")
	}
	return len(unmet) == 0, unmet
}

func workloadCert(t testing.TB, w kms.Workload) *tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	claims, _ := json.Marshal(w)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "workload"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtraExtensions: []pkix.Extension{{Id: claimsOID, Value: claims}}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// ---- clock ----

type fakeClock struct {
	mu  sync.Mutex
	off time.Duration
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.off)
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.off += d
	c.mu.Unlock()
}

// ---- a real server on loopback ----

type server struct {
	t   testing.TB
	dir string
	st  store.Store
	// storeURL, when set, is the PostgreSQL store of this server (a
	// replica) instead of the bbolt file in dir.
	storeURL string
	svc      *kms.Service
	url      string
	ca       []byte
	admin    string
	shares   []string
	clock    *fakeClock
	logs     *syncBuffer
	cancel   context.CancelFunc
	done     chan error
	certs    *kms.DevCertificates
	// adminCAs, if set before start, authenticates admin client certificates.
	adminCAs *x509.CertPool
	// maxNonces, if set before start, bounds each app's replay cache.
	maxNonces int
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// newServer initializes a data directory (3 shares, threshold 2), starts a
// service on 127.0.0.1 and unseals it unless sealed is set.
func newServer(t testing.TB, sealed bool) *server {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() { checkGoroutines(t, before) }) // runs last
	s := &server{t: t, dir: t.TempDir(), clock: &fakeClock{}, logs: &syncBuffer{}}
	st, err := store.OpenBolt(s.dir, store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := kms.Initialize(context.Background(), st, kms.ModeShamir, 3, 2, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	s.admin, s.shares = res.AdminToken, res.Shares
	certs, err := kms.NewDevCertificates([]string{"127.0.0.1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	s.ca = certs.CAPEM
	s.start(certs, sealed)
	t.Cleanup(s.stop)
	return s
}

func (s *server) openStore() (store.Store, error) {
	if s.storeURL != "" {
		return store.OpenPostgres(context.Background(), s.storeURL, store.PostgresOptions{})
	}
	return store.OpenBolt(s.dir, store.BoltOptions{})
}

func (s *server) start(certs *kms.DevCertificates, sealed bool) {
	t := s.t
	st, err := s.openStore()
	if err != nil {
		t.Fatal(err)
	}
	s.st = st
	svc, err := kms.New(context.Background(), kms.Options{Store: st, Clock: s.clock.Now,
		Logger:   slog.New(slog.NewJSONHandler(s.logs, nil)),
		Verifier: testVerifier{}, Evaluator: testEvaluator{}, AdminClientCAs: s.adminCAs, MaxNonces: s.maxNonces})
	if err != nil {
		t.Fatal(err)
	}
	s.svc = svc
	if !sealed {
		for _, sh := range s.shares[:2] {
			if _, err := svc.Unseal(context.Background(), sh); err != nil {
				t.Fatal(err)
			}
		}
	}
	cert, err := tls.X509KeyPair(certs.CertPEM, certs.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.url = "https://" + ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel, s.done = cancel, make(chan error, 1)
	go func() { s.done <- svc.Serve(ctx, ln, cert) }()
	s.certs = certs
}

func (s *server) stop() {
	if s.cancel == nil {
		return
	}
	s.cancel()
	if err := <-s.done; err != nil {
		s.t.Errorf("serve: %v", err)
	}
	s.svc.Close()
	s.st.Close()
	s.cancel = nil
}

func (s *server) restart(sealed bool) {
	s.stop()
	s.start(s.certs, sealed)
}

func (s *server) client(t testing.TB, cfg client.Config) *client.Client {
	t.Helper()
	cfg.URL, cfg.CAPEM = s.url, s.ca
	c, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func (s *server) adminClient(t testing.TB) *client.Client {
	return s.client(t, client.Config{AdminToken: s.admin})
}

// app enrolls an app and returns a client signing as it.
func (s *server) app(t testing.TB, name string) (*client.Client, string) {
	t.Helper()
	r, err := s.adminClient(t).Enroll(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return s.client(t, client.Config{AppID: r.AppID, APIKey: r.APIKey, Clock: s.clock.Now}), r.AppID
}

func (s *server) workload(t testing.TB, w kms.Workload) *client.Client {
	cert := workloadCert(t, w)
	return s.client(t, client.Config{WorkloadCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }})
}

func wantCode(t testing.TB, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("got error %v, want %v", err, want)
	}
}

func transportOf(t testing.TB, s *server) http.RoundTripper {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(s.ca)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}}
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

func readFile(p string) ([]byte, error) { return os.ReadFile(p) }

type hexString string

func (h hexString) repeat32() string { return strings.Repeat(string(h), 32) }

// checkGoroutines fails the test if goroutines started by it (server,
// audit writer, connections) are still running shortly after it ended.
func checkGoroutines(t testing.TB, before int) {
	deadline := time.Now().Add(3 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Errorf("goroutine leak: %d running, %d before the test\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
