package kms

import (
	"bytes"
	"errors"
	"testing"
)

func TestBlobRoundTrip(t *testing.T) {
	b := blob{KeyID: "k_0123456789abcdef0123456789abcdef", Version: 7, Nonce: bytes.Repeat([]byte{1}, 12), Sealed: bytes.Repeat([]byte{2}, 48)}
	got, err := parseBlob(b.marshal())
	if err != nil || got.KeyID != b.KeyID || got.Version != 7 || !bytes.Equal(got.Sealed, b.Sealed) {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	for _, bad := range [][]byte{nil, {2, 1}, {1, 0}, {1, 65}, append([]byte{1, 1, 'k', 0, 0, 0, 0}, make([]byte, 28)...)} {
		if _, err := parseBlob(bad); !errors.Is(err, ErrMalformedBlob) {
			t.Errorf("%x: got %v", bad, err)
		}
	}
}

func FuzzParseBlob(f *testing.F) {
	b := blob{KeyID: "k_0123456789abcdef0123456789abcdef", Version: 1, Nonce: make([]byte, 12), Sealed: make([]byte, 40)}
	f.Add(b.marshal())
	f.Add([]byte{1, 3, 'a', 'b', 'c'})
	f.Fuzz(func(t *testing.T, p []byte) {
		got, err := parseBlob(p)
		if err != nil {
			return
		}
		if !bytes.Equal(got.marshal(), p) {
			t.Fatal("parse -> marshal is not byte-identical")
		}
	})
}

func FuzzParseShare(f *testing.F) {
	f.Add(sharePrefix + "01" + "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff")
	f.Add("vks1-")
	f.Add("garbage")
	f.Fuzz(func(t *testing.T, s string) {
		b, err := ParseShare(s)
		if err != nil {
			if !errors.Is(err, ErrBadShares) {
				t.Fatalf("error %v is not ErrBadShares", err)
			}
			return
		}
		if len(b) != 1+RootKeySize || b[0] == 0 {
			t.Fatalf("accepted a share of %d bytes, index %d", len(b), b[0])
		}
	})
}
