package kms

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/veil-tee/veil/kms/api"
	"github.com/veil-tee/veil/kms/audit"
	"github.com/veil-tee/veil/kms/client"
	"github.com/veil-tee/veil/kms/store"
)

// vector is one request of kms/api/testdata/request-signing.json
// (docs/formats/request-signing.md).
type vector struct {
	Name       string `json:"name"`
	APIKey     string `json:"api_key"`
	AppID      string `json:"app_id"`
	Method     string `json:"method"`
	RequestURI string `json:"request_uri"`
	Timestamp  string `json:"timestamp"`
	Nonce      string `json:"nonce"`
	Body       string `json:"body"`
	Signature  string `json:"signature"`
	Refused    string `json:"refused"`
}

type vectorFile struct {
	ServerTime string   `json:"server_time"`
	Window     int      `json:"window_seconds"`
	Valid      []vector `json:"valid"`
	Refused    []vector `json:"refused"`
}

// goldenService is an unsealed service whose clock stands at the vectors'
// server time, with the vectors' app enrolled under their API key.
func goldenService(t *testing.T) (*Service, vectorFile) {
	t.Helper()
	b, err := os.ReadFile("api/testdata/request-signing.json")
	if err != nil {
		t.Fatal(err)
	}
	var vf vectorFile
	if err := json.Unmarshal(b, &vf); err != nil {
		t.Fatal(err)
	}
	sec, err := strconv.ParseInt(vf.ServerTime, 10, 64)
	if err != nil || len(vf.Valid) == 0 || len(vf.Refused) == 0 {
		t.Fatalf("request-signing.json: server time %q: %v", vf.ServerTime, err)
	}
	now := time.Unix(sec, 0)
	dir := t.TempDir()
	st, err := store.OpenBolt(dir, store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := Initialize(context.Background(), st, ModeShamir, 2, 2, now)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(context.Background(), Options{Store: st, Clock: func() time.Time { return now },
		SignatureWindow: time.Duration(vf.Window) * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); st.Close() })
	for _, sh := range res.Shares {
		if _, err := s.Unseal(context.Background(), sh); err != nil {
			t.Fatal(err)
		}
	}
	// Enroll the vectors' app as Enroll does, but under the vectors' API
	// key instead of a random one.
	v := vf.Valid[0]
	admin := Caller{Kind: KindAdmin}
	err = s.mutate(context.Background(), admin, audit.Entry{Op: "app.enroll", App: v.AppID}, func(tx store.Tx, k *keyring, _ *audit.Entry) error {
		sealed, err := k.seal("app/"+v.AppID, api.SigningKey(v.APIKey))
		if err != nil {
			return err
		}
		if err := putJSON(tx, "apps", v.AppID, appRecord{ID: v.AppID, Name: "golden", Created: now.UTC(), SigningKey: sealed}); err != nil {
			return err
		}
		return tx.Put("names", "app/golden", []byte(v.AppID))
	})
	if err != nil {
		t.Fatal(err)
	}
	return s, vf
}

// send presents the vector's request to the HTTP handler exactly as the
// vector gives it (request line, headers, body) and returns the problem
// code of the answer ("" for a success).
func send(t *testing.T, h http.Handler, v vector) (int, string) {
	t.Helper()
	r := httptest.NewRequest(v.Method, v.RequestURI, strings.NewReader(v.Body))
	if r.RequestURI != v.RequestURI {
		t.Fatalf("request line %q, want %q", r.RequestURI, v.RequestURI)
	}
	if v.Body != "" {
		r.Header.Set("Content-Type", "application/json")
	}
	r.Header.Set(api.HeaderAppID, v.AppID)
	r.Header.Set(api.HeaderTimestamp, v.Timestamp)
	r.Header.Set(api.HeaderNonce, v.Nonce)
	r.Header.Set(api.HeaderSignature, v.Signature)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code < 300 {
		return w.Code, ""
	}
	var p api.Problem
	if err := json.Unmarshal(w.Body.Bytes(), &p); err != nil {
		t.Fatalf("answer %d is not a problem: %q", w.Code, w.Body)
	}
	return w.Code, p.Code
}

var authCodes = map[string]bool{
	ErrUnauthenticated.Code: true, ErrBadSignature.Code: true, ErrStaleTimestamp.Code: true, ErrReplayed.Code: true,
}

// TestServerVerifiesGoldenVectors: the server accepts each golden request
// once, through the HTTP handler (so with the request URI exactly as on
// the request line), and refuses the same request again as a replay.
func TestServerVerifiesGoldenVectors(t *testing.T) {
	s, vf := goldenService(t)
	h := s.Handler()
	for _, v := range vf.Valid {
		t.Run(v.Name, func(t *testing.T) {
			status, code := send(t, h, v)
			if authCodes[code] {
				t.Fatalf("a correctly signed request was refused: %d %s", status, code)
			}
			if _, code := send(t, h, v); code != ErrReplayed.Code {
				t.Fatalf("the same request sent twice: %q, want %s", code, ErrReplayed.Code)
			}
			_, err := s.AuthenticateApp(context.Background(), v.AppID, v.Timestamp, v.Nonce, v.Signature, v.Method, v.RequestURI, []byte(v.Body))
			if !errors.Is(err, ErrReplayed) {
				t.Fatalf("AuthenticateApp after use: %v, want %v", err, ErrReplayed)
			}
		})
	}
}

// TestServerRefusesNegativeVectors: every altered, stale, malformed or
// foreign request of the vectors is refused with its code, by the handler
// and by AuthenticateApp, and a refusal does not use up the nonce.
func TestServerRefusesNegativeVectors(t *testing.T) {
	s, vf := goldenService(t)
	h := s.Handler()
	for _, v := range vf.Refused {
		t.Run(v.Name, func(t *testing.T) {
			status, code := send(t, h, v)
			if code != v.Refused || status != http.StatusUnauthorized {
				t.Fatalf("got %d %q, want 401 %s", status, code, v.Refused)
			}
			caller, err := s.AuthenticateApp(context.Background(), v.AppID, v.Timestamp, v.Nonce, v.Signature, v.Method, v.RequestURI, []byte(v.Body))
			var se *Error
			if !errors.As(err, &se) || se.Code != v.Refused || caller.Kind != "" {
				t.Fatalf("AuthenticateApp: %+v %v, want %s", caller, err, v.Refused)
			}
		})
	}
	// The refusals above reused the valid vectors' nonces; those requests
	// are still accepted.
	for _, v := range vf.Valid {
		if c, err := s.AuthenticateApp(context.Background(), v.AppID, v.Timestamp, v.Nonce, v.Signature, v.Method, v.RequestURI, []byte(v.Body)); err != nil || c.Kind != KindApp || c.AppID != v.AppID {
			t.Fatalf("%s after the refusals: %+v %v", v.Name, c, err)
		}
	}
}

// TestClientRequestsPassServerVerifier: what the client signer builds for
// each golden request (its own nonce, the server's time on its clock) is
// accepted by the server verifier, once.
func TestClientRequestsPassServerVerifier(t *testing.T) {
	s, vf := goldenService(t)
	h := s.Handler()
	v0 := vf.Valid[0]
	c, err := client.New(client.Config{URL: "https://127.0.0.1:1", AppID: v0.AppID, APIKey: v0.APIKey, Clock: s.now})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, v := range vf.Valid {
		req, err := c.NewRequest(context.Background(), v.Method, v.RequestURI, []byte(v.Body), false)
		if err != nil {
			t.Fatal(err)
		}
		sent := v
		sent.Timestamp = req.Header.Get(api.HeaderTimestamp)
		sent.Nonce = req.Header.Get(api.HeaderNonce)
		sent.Signature = req.Header.Get(api.HeaderSignature)
		if _, code := send(t, h, sent); authCodes[code] {
			t.Fatalf("%s: the client's request was refused: %s", v.Name, code)
		}
		if _, code := send(t, h, sent); code != ErrReplayed.Code {
			t.Fatalf("%s: replayed client request: %q", v.Name, code)
		}
	}
}
