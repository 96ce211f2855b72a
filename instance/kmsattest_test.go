package instance

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/veil-tee/veil/attest"
	"github.com/veil-tee/veil/attest/ratls"
	"github.com/veil-tee/veil/attest/sim"
	"github.com/veil-tee/veil/kms/api"
	"github.com/veil-tee/veil/trustimage"
)

// tlsKey is a certificate of the test CA for the stand-in key service.
type tlsKey struct {
	cert *tls.Certificate
	spki []byte
}

func issueTLS(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey) tlsKey {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "kms"},
		NotBefore:    time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return tlsKey{cert: &tls.Certificate{Certificate: [][]byte{der, ca.Raw}, PrivateKey: key, Leaf: leaf}, spki: leaf.RawSubjectPublicKeyInfo}
}

// attestedKMS stands in for a key service on loopback: it serves status,
// GET /v1/sys/attestation as answer says (a genuine service in a TEE, or
// an attacker) and one secret. It is not a key service: it hands the
// secret to anyone, so that a refusal can only come from the client.
type attestedKMS struct {
	srv        *httptest.Server
	challenges atomic.Int64
	secretGets atomic.Int64
	mu         sync.Mutex
	answer     func(nonce []byte) (int, any)
}

func newAttestedKMS(t *testing.T, key tlsKey) *attestedKMS {
	t.Helper()
	k := &attestedKMS{}
	mux := http.NewServeMux()
	reply := func(w http.ResponseWriter, code int, v any) {
		w.Header().Set("Content-Type", "application/json")
		if code != 200 {
			w.Header().Set("Content-Type", "application/problem+json")
		}
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(v)
	}
	mux.HandleFunc("GET /v1/sys/status", func(w http.ResponseWriter, _ *http.Request) {
		reply(w, 200, api.Status{Initialized: true})
	})
	mux.HandleFunc("GET /v1/sys/attestation", func(w http.ResponseWriter, r *http.Request) {
		k.challenges.Add(1)
		nonce, err := hex.DecodeString(r.URL.Query().Get("nonce"))
		if err != nil || len(nonce) != 32 {
			reply(w, 400, api.Problem{Status: 400, Code: "bad_request", Title: "bad nonce"})
			return
		}
		k.mu.Lock()
		answer := k.answer
		k.mu.Unlock()
		code, v := answer(nonce)
		reply(w, code, v)
	})
	mux.HandleFunc("GET /v1/secrets/s", func(w http.ResponseWriter, _ *http.Request) {
		k.secretGets.Add(1)
		reply(w, 200, api.Secret{ID: "s", Name: "s", Version: 1, Versions: 1, Value: []byte("the-secret")})
	})
	k.srv = httptest.NewUnstartedServer(mux)
	k.srv.TLS = &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{*key.cert}}
	k.srv.StartTLS()
	t.Cleanup(k.srv.Close)
	return k
}

func (k *attestedKMS) setAnswer(f func(nonce []byte) (int, any)) {
	k.mu.Lock()
	k.answer = f
	k.mu.Unlock()
}

// bound answers every challenge with evidence from iss binding spki.
func bound(t *testing.T, iss attest.Issuer, spki []byte) func([]byte) (int, any) {
	return func(nonce []byte) (int, any) {
		ev, err := ratls.BindKey(context.Background(), iss, spki, nonce)
		if err != nil {
			t.Error(err)
			return 500, api.Problem{Status: 500, Code: "internal"}
		}
		return 200, api.Attestation{TEE: string(iss.TEE()), Evidence: ev}
	}
}

// kmsInstance builds an instance trusting the key service at addr, pinned
// by pin (the CA's key), with an optional attest policy, and one secret
// from it.
func kmsInstance(t *testing.T, addr string, pin []byte, policy *attest.Policy) string {
	t.Helper()
	dir := t.TempDir()
	entry := map[string]any{"name": "main", "address": addr, "pin_sha256": hex.EncodeToString(pin)}
	if policy != nil {
		entry["attest"] = policy
	}
	cfg := map[string]any{
		"entrypoints": []string{"/usr/bin/"},
		"kms":         []any{entry},
		"secrets":     []any{map[string]any{"name": "s", "from": "kms:s@main", "env": "S"}},
		"bom":         map[string]any{"copy": []any{map[string]any{"from": "/usr/bin/dash", "to": "/usr/bin/sh"}}},
	}
	b, _ := json.MarshalIndent(cfg, "", "  ")
	os.MkdirAll(filepath.Join(dir, "image"), 0o755)
	if err := os.WriteFile(filepath.Join(dir, "veil.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	sk, _ := trustimage.GenerateSignKey()
	if _, _, err := trustimage.Build(context.Background(), dir, trustimage.Options{SignKey: sk}); err != nil {
		t.Fatal(err)
	}
	return dir
}

type nopUnmount struct{}

func (nopUnmount) Unmount() error { return nil }

// TestKMSAttestation attacks the workload's check of its key service:
// only a service whose evidence verifies, binds the TLS key of the very
// connection and the workload's fresh nonce, and meets the veil.json
// policy gets asked for a key; otherwise Open fails before any key
// request and before the image is mounted (so no program starts).
func TestKMSAttestation(t *testing.T) {
	simDir := simPlatform(t)
	platform, err := sim.Load(simDir)
	if err != nil {
		t.Fatal(err)
	}
	var want, other sim.Identity
	want.Measurement[0], other.Measurement[0] = 0x4b, 0x4c
	genuine, impostorTEE := platform.Issuer(want), platform.Issuer(other)
	strangerDir := simPlatform(t)
	stranger, err := sim.Load(strangerDir)
	if err != nil {
		t.Fatal(err)
	}

	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kms ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	ca, _ := x509.ParseCertificate(caDER)
	pin := sha256.Sum256(ca.RawSubjectPublicKeyInfo)
	// The service's key and an impostor's key with a certificate from the
	// same CA: both pass the pin.
	svcKey, impKey := issueTLS(t, ca, caKey), issueTLS(t, ca, caKey)
	svc, imp := newAttestedKMS(t, svcKey), newAttestedKMS(t, impKey)

	policy := &attest.Policy{AllowSim: true, Measurements: []attest.Hex{want.Measurement[:]}}
	var notes []string
	open := func(k *attestedKMS, pol *attest.Policy) (*Instance, bool, error) {
		dir := kmsInstance(t, k.srv.Listener.Addr().String(), pin[:], pol)
		mounted := false
		notes = nil
		in, err := Open(context.Background(), Options{
			Dir: dir, SimDir: simDir, KMSRetries: 1, KMSTimeout: 5 * time.Second,
			Info: func(s string) { notes = append(notes, s) },
			MountRoot: func(string, *trustimage.Reader, *slog.Logger) (Unmounter, error) {
				mounted = true
				return nopUnmount{}, nil
			},
		})
		if in != nil {
			t.Cleanup(func() { in.Close() })
		}
		return in, mounted, err
	}

	t.Run("genuine service", func(t *testing.T) {
		svc.setAnswer(bound(t, genuine, svcKey.spki))
		before := svc.secretGets.Load()
		in, mounted, err := open(svc, policy)
		if err != nil {
			t.Fatalf("a service meeting the policy is refused: %v", err)
		}
		if !mounted || svc.secretGets.Load() != before+1 || !slices.Contains(in.secretEnv, "S=the-secret") {
			t.Fatalf("mounted %v, secret requests %d, env %q", mounted, svc.secretGets.Load()-before, in.secretEnv)
		}
		wantNote := fmt.Sprintf("main (sim, measurement %x)", want.Measurement)
		if len(in.KMSAttested) != 1 || in.KMSAttested[0] != wantNote {
			t.Fatalf("KMSAttested %q, want [%q]", in.KMSAttested, wantNote)
		}
		if len(notes) != 1 || notes[0] != "kms attested: "+wantNote {
			t.Fatalf("the user is told %q, want the attested service", notes)
		}
	})

	// Each attack: who answers, how, and the reason the client must find.
	var recorded []byte // an answer to an earlier challenge, for the replay
	attacks := []struct {
		name   string
		server *attestedKMS
		answer func([]byte) (int, any)
		reason error
		says   string
	}{
		{"another measurement", svc, bound(t, impostorTEE, svcKey.spki), attest.ErrDenied, "measurement"},
		{"no evidence", svc, func([]byte) (int, any) {
			return 404, api.Problem{Status: 404, Code: "not_found", Title: "not found", Detail: "this key service presents no evidence"}
		}, nil, "presents no evidence"},
		// Another holder of a certificate from the pinned CA relays the
		// genuine service's answer to the workload's challenge.
		{"relayed from another key", imp, bound(t, genuine, svcKey.spki), attest.ErrBinding, "not the peer's key"},
		{"replayed answer", svc, func([]byte) (int, any) {
			return 200, api.Attestation{TEE: "sim", Evidence: recorded}
		}, ratls.ErrStale, "another challenge"},
		{"untrusted platform", svc, bound(t, stranger.Issuer(want), svcKey.spki), nil, "evidence"},
		{"tampered evidence", svc, func(n []byte) (int, any) {
			_, v := bound(t, genuine, svcKey.spki)(n)
			a := v.(api.Attestation)
			a.Evidence[len(a.Evidence)/2] ^= 1
			return 200, a
		}, nil, "evidence"},
	}
	// Record a genuine answer for a nonce the workload will never send.
	old := make([]byte, 32)
	rand.Read(old)
	if recorded, err = ratls.BindKey(context.Background(), genuine, svcKey.spki, old); err != nil {
		t.Fatal(err)
	}
	for _, a := range attacks {
		t.Run(a.name, func(t *testing.T) {
			a.server.setAnswer(a.answer)
			before := a.server.secretGets.Load()
			in, mounted, err := open(a.server, policy)
			if err == nil {
				t.Fatal("the workload trusted the key service")
			}
			if in != nil || mounted || a.server.secretGets.Load() != before {
				t.Fatalf("refused too late: instance %v, mounted %v, secret requests %d", in != nil, mounted, a.server.secretGets.Load()-before)
			}
			if !errors.Is(err, ErrKMSNotTrusted) || (a.reason != nil && !errors.Is(err, a.reason)) {
				t.Fatalf("error %v, want ErrKMSNotTrusted and %v", err, a.reason)
			}
			if !strings.Contains(err.Error(), "kms main") || !strings.Contains(err.Error(), a.says) {
				t.Fatalf("error does not name the service and %q: %v", a.says, err)
			}
			t.Logf("refused: %v", err)
		})
	}

	// Without an attest policy the pin alone decides: the workload does
	// not challenge the service (its evidence, good or bad, is not asked
	// for) and records no attestation.
	t.Run("no policy", func(t *testing.T) {
		svc.setAnswer(bound(t, impostorTEE, svcKey.spki))
		before := svc.challenges.Load()
		in, _, err := open(svc, nil)
		if err != nil {
			t.Fatalf("pinned service without a policy: %v", err)
		}
		if svc.challenges.Load() != before || len(in.KMSAttested) != 0 || len(notes) != 0 {
			t.Fatalf("challenged %d times, KMSAttested %q, notes %q", svc.challenges.Load()-before, in.KMSAttested, notes)
		}
	})
}
