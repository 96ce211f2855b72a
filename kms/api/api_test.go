package api

import (
	"errors"
	"testing"
)

func TestDecodeStrict(t *testing.T) {
	var v struct {
		Name string `json:"name"`
	}
	var uf *UnknownFieldError
	if err := DecodeStrict([]byte(`{"name":"a","nmae":"b"}`), &v); !errors.As(err, &uf) || uf.Field != "nmae" || !errors.Is(err, ErrUnknownField) {
		t.Fatalf("unknown field: %v", err)
	}
	for _, b := range []string{``, `{`, `{"name":1}`, `{} x`, `{}{}`} {
		if err := DecodeStrict([]byte(b), &v); !errors.Is(err, ErrMalformed) {
			t.Errorf("%q: %v", b, err)
		}
	}
	if err := DecodeStrict([]byte(` {"name":"ok"} `), &v); err != nil || v.Name != "ok" {
		t.Fatalf("valid: %v", err)
	}
}

func TestSignatureCoversEveryPart(t *testing.T) {
	k := SigningKey("vak_x")
	base := Sign(k, "POST", "/v1/decrypt", 100, "nonce-nonce-nonce", []byte("{}"))
	for name, sig := range map[string]string{
		"method": Sign(k, "PUT", "/v1/decrypt", 100, "nonce-nonce-nonce", []byte("{}")),
		"path":   Sign(k, "POST", "/v1/decrypt?x", 100, "nonce-nonce-nonce", []byte("{}")),
		"time":   Sign(k, "POST", "/v1/decrypt", 101, "nonce-nonce-nonce", []byte("{}")),
		"nonce":  Sign(k, "POST", "/v1/decrypt", 100, "nonce-nonce-noncf", []byte("{}")),
		"body":   Sign(k, "POST", "/v1/decrypt", 100, "nonce-nonce-nonce", []byte("{ }")),
		"key":    Sign(SigningKey("vak_y"), "POST", "/v1/decrypt", 100, "nonce-nonce-nonce", []byte("{}")),
	} {
		if sig == base {
			t.Errorf("signature does not cover the %s", name)
		}
	}
}

func FuzzDecodeStrict(f *testing.F) {
	f.Add([]byte(`{"name":"a","length":32,"aad":"eA=="}`))
	f.Add([]byte(`{"x":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var v DataKeyRequest
		_ = DecodeStrict(b, &v) // must not panic
	})
}

// BenchmarkStringToSign: the canonical string of an unwrap's request,
// built on both ends of every signed request.
func BenchmarkStringToSign(b *testing.B) {
	body := make([]byte, 140)
	for b.Loop() {
		StringToSign("POST", "/v1/decrypt", 1764408601, "AAAAAAAAAAAAAAAAAAAAAAAA", body)
	}
}
