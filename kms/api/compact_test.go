package api

import (
	"bytes"
	"encoding/json"
	"testing"
)

// compactSeeds are request bodies on both sides of the compact form.
var compactSeeds = []string{
	`{"ciphertext":"AAEC"}`, `{"ciphertext":"AAEC","aad":"ZmlsZQ=="}` + "\n", `{"ciphertext":"AAEC","aad":"ZmlsZQ=="}`,
	`{"ciphertext":""}`, `{"ciphertext":"AAE="}`, `{"ciphertext":"AAE"}`, `{"ciphertext":"AA\u0045C"}`, `{"ciphertext":"AAEC","aad":null}`,
	`{"aad":"AAEC","ciphertext":"AAEC"}`, `{"ciphertext":"AAEC","ciphertext":"AAED"}`, `{"Ciphertext":"AAEC"}`, `{"ciphertext":"AAEC"} `,
	`{"ciphertext":"AAEC"}{}`, `{"ciphertext":"AAEC","x":1}`, `{"ciphertext":"AA+/"}`, `{"ciphertext":"A=EC"}`, `{ "ciphertext":"AAEC"}`,
}

// TestDecryptRequestCompact: the compact reader gives encoding/json's
// value for what it accepts, and accepts what kms/client sends.
func TestDecryptRequestCompact(t *testing.T) {
	for _, req := range []DecryptRequest{{Ciphertext: []byte{1, 2, 3}}, {Ciphertext: bytes.Repeat([]byte{0xfb}, 77), AAD: []byte("file")}} {
		b, err := json.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		var got DecryptRequest
		if !got.decodeCompact(b) || !bytes.Equal(got.Ciphertext, req.Ciphertext) || !bytes.Equal(got.AAD, req.AAD) {
			t.Fatalf("%s: compact read %v, %+v", b, got.decodeCompact(b), got)
		}
	}
	for _, s := range compactSeeds {
		checkCompact(t, []byte(s))
	}
}

func checkCompact(t *testing.T, b []byte) {
	var fast, slow DecryptRequest
	if !fast.decodeCompact(b) {
		if fast.Ciphertext != nil || fast.AAD != nil {
			t.Fatalf("%q: refused but filled %+v", b, fast)
		}
		return
	}
	if err := decodeStrictJSON(b, &slow); err != nil {
		t.Fatalf("%q: compact read accepted what encoding/json refuses: %v", b, err)
	}
	if !bytes.Equal(fast.Ciphertext, slow.Ciphertext) || !bytes.Equal(fast.AAD, slow.AAD) || (fast.AAD == nil) != (slow.AAD == nil) {
		t.Fatalf("%q: compact %+v, encoding/json %+v", b, fast, slow)
	}
}

func FuzzDecryptRequestCompact(f *testing.F) {
	for _, s := range compactSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) { checkCompact(t, b) })
}

// TestMarshalJSONResponse: the direct encoding of a DecryptResponse is
// encoding/json's, and other values go through encoding/json.
func TestMarshalJSONResponse(t *testing.T) {
	for _, v := range []any{
		DecryptResponse{KeyID: "k_0123456789abcdef0123456789abcdef", KeyVersion: 3, Plaintext: bytes.Repeat([]byte{0xff, 0x3e}, 16)},
		DecryptResponse{KeyID: "k", KeyVersion: -1, Plaintext: []byte{}},
		DecryptResponse{KeyID: "<&>", Plaintext: []byte{1}},
		DecryptResponse{KeyID: "é\u2028\"", Plaintext: []byte{1}},
		DecryptResponse{},
		&DecryptResponse{KeyID: "k", Plaintext: []byte{1}},
		DecryptRequest{Ciphertext: []byte{1}},
	} {
		want, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		got, err := MarshalJSONResponse(v)
		if err != nil || string(got) != string(want) {
			t.Errorf("%#v: got %s (%v), want %s", v, got, err, want)
		}
	}
}

// BenchmarkDecryptBodies: reading an unwrap's request and writing its
// answer, through encoding/json and directly.
func BenchmarkDecryptBodies(b *testing.B) {
	req, _ := json.Marshal(DecryptRequest{Ciphertext: bytes.Repeat([]byte{7}, 80)})
	resp := DecryptResponse{KeyID: "k_0123456789abcdef0123456789abcdef", KeyVersion: 1, Plaintext: bytes.Repeat([]byte{9}, 32)}
	b.Run("request/encoding-json", func(b *testing.B) {
		for b.Loop() {
			var r DecryptRequest
			if err := decodeStrictJSON(req, &r); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("request/compact", func(b *testing.B) {
		for b.Loop() {
			var r DecryptRequest
			if err := DecodeStrict(req, &r); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("response/encoding-json", func(b *testing.B) {
		for b.Loop() {
			json.Marshal(resp)
		}
	})
	b.Run("response/direct", func(b *testing.B) {
		for b.Loop() {
			MarshalJSONResponse(resp)
		}
	})
}
