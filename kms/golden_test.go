package kms

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/hex"
	"encoding/json"
	"flag"
	"os"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files")

// ciphertextVector is one test vector of docs/formats/kms-ciphertext.md.
type ciphertextVector struct {
	Comment     string `json:"comment"`
	KeyMaterial string `json:"key_material"`
	KeyID       string `json:"key_id"`
	Owner       string `json:"owner"`
	KeyVersion  uint32 `json:"key_version"`
	AAD         string `json:"aad"`
	Plaintext   string `json:"plaintext"`
	Nonce       string `json:"nonce"`
	Ciphertext  string `json:"ciphertext"`
}

func unhex(t *testing.T, s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCiphertextGoldenV1 decodes the version 1 vector on every run: the
// format may gain versions but version 1 blobs must keep opening.
func TestCiphertextGoldenV1(t *testing.T) {
	const path = "testdata/ciphertext-v1.json"
	if *update {
		v := ciphertextVector{
			Comment:     "AES-256-GCM blob, format version 1; see docs/formats/kms-ciphertext.md",
			KeyMaterial: hex.EncodeToString(bytes.Repeat([]byte{0x42}, 32)),
			KeyID:       "k_00112233445566778899aabbccddeeff",
			Owner:       "a_ffeeddccbbaa99887766554433221100",
			KeyVersion:  3,
			AAD:         hex.EncodeToString([]byte("file binding")),
			Plaintext:   hex.EncodeToString(bytes.Repeat([]byte{0x07}, 32)),
			Nonce:       hex.EncodeToString(bytes.Repeat([]byte{0x0c}, 12)),
		}
		blk, _ := aes.NewCipher(unhex(t, v.KeyMaterial))
		a, _ := cipher.NewGCM(blk)
		b := blob{KeyID: v.KeyID, Version: v.KeyVersion, Nonce: unhex(t, v.Nonce)}
		b.Sealed = a.Seal(nil, b.Nonce, unhex(t, v.Plaintext), blobAAD(v.KeyID, v.Owner, v.KeyVersion, unhex(t, v.AAD)))
		v.Ciphertext = hex.EncodeToString(b.marshal())
		out, _ := json.MarshalIndent(v, "", "  ")
		if err := os.WriteFile(path, append(out, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var v ciphertextVector
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	ct := unhex(t, v.Ciphertext)
	b, err := parseBlob(ct)
	if err != nil {
		t.Fatal(err)
	}
	if b.KeyID != v.KeyID || b.Version != v.KeyVersion || !bytes.Equal(b.Nonce, unhex(t, v.Nonce)) {
		t.Fatalf("header: %+v", b)
	}
	blk, _ := aes.NewCipher(unhex(t, v.KeyMaterial))
	a, _ := cipher.NewGCM(blk)
	pt, err := a.Open(nil, b.Nonce, b.Sealed, blobAAD(v.KeyID, v.Owner, v.KeyVersion, unhex(t, v.AAD)))
	if err != nil || !bytes.Equal(pt, unhex(t, v.Plaintext)) {
		t.Fatalf("golden blob does not open: %v", err)
	}
	if _, err := a.Open(nil, b.Nonce, b.Sealed, blobAAD(v.KeyID, "a_other", v.KeyVersion, unhex(t, v.AAD))); err == nil {
		t.Fatal("golden blob opens for another owner")
	}
	if !bytes.Equal(b.marshal(), ct) {
		t.Fatal("re-encoding differs")
	}
}
