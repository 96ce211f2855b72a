package client

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/veil-tee/veil/kms/api"
)

type signingVector struct {
	Name       string `json:"name"`
	APIKey     string `json:"api_key"`
	AppID      string `json:"app_id"`
	Method     string `json:"method"`
	RequestURI string `json:"request_uri"`
	Timestamp  string `json:"timestamp"`
	Body       string `json:"body"`
}

var nonceRE = regexp.MustCompile(`^[A-Za-z0-9_-]{16,64}$`)

// TestClientSignsAsSpecified: for each golden request (method, path and
// query, body, API key, clock), the request the client builds carries the
// app id, the timestamp of its clock, a fresh nonce of the allowed
// alphabet, and the HMAC of the spec's string-to-sign computed over the
// request line it will send; the canonical URI is the vector's.
func TestClientSignsAsSpecified(t *testing.T) {
	b, err := os.ReadFile("../api/testdata/request-signing.json")
	if err != nil {
		t.Fatal(err)
	}
	var vf struct{ Valid []signingVector }
	if err := json.Unmarshal(b, &vf); err != nil || len(vf.Valid) == 0 {
		t.Fatalf("request-signing.json: %v", err)
	}
	for _, v := range vf.Valid {
		t.Run(v.Name, func(t *testing.T) {
			sec, _ := strconv.ParseInt(v.Timestamp, 10, 64)
			c, err := New(Config{URL: "https://127.0.0.1:1", AppID: v.AppID, APIKey: v.APIKey,
				Clock: func() time.Time { return time.Unix(sec, 999_000_000) }})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			seen := map[string]bool{}
			for range 3 {
				req, err := c.NewRequest(context.Background(), v.Method, v.RequestURI, []byte(v.Body), false)
				if err != nil {
					t.Fatal(err)
				}
				if got := req.URL.RequestURI(); got != v.RequestURI {
					t.Fatalf("request URI %q, want %q", got, v.RequestURI)
				}
				if req.Method != v.Method || req.Header.Get(api.HeaderAppID) != v.AppID || req.Header.Get(api.HeaderTimestamp) != v.Timestamp {
					t.Fatalf("method %s, headers %v", req.Method, req.Header)
				}
				if req.Header.Get("Authorization") != "" {
					t.Fatal("an app request carries an Authorization header")
				}
				nonce := req.Header.Get(api.HeaderNonce)
				if !nonceRE.MatchString(nonce) || seen[nonce] {
					t.Fatalf("nonce %q (seen before: %v)", nonce, seen[nonce])
				}
				seen[nonce] = true
				body, _ := io.ReadAll(req.Body)
				if string(body) != v.Body {
					t.Fatalf("body %q, want %q", body, v.Body)
				}
				k := sha256.Sum256([]byte("veil-kms-app-signing-key-v1\n" + v.APIKey))
				bh := sha256.Sum256(body)
				m := hmac.New(sha256.New, k[:])
				m.Write([]byte(strings.Join([]string{"VEIL-HMAC-SHA256", v.Method, v.RequestURI, v.Timestamp, nonce, hex.EncodeToString(bh[:])}, "\n")))
				if got, want := req.Header.Get(api.HeaderSignature), hex.EncodeToString(m.Sum(nil)); got != want {
					t.Fatalf("signature %s, want %s", got, want)
				}
			}
		})
	}
}
