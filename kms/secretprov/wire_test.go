package secretprov

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"testing"
)

// The messages byte for byte as Gramine's library sends them (the
// strings with their NUL, then a big-endian uint32 length).
func TestWireVectors(t *testing.T) {
	var b bytes.Buffer
	if err := WriteRequest(&b); err != nil {
		t.Fatal(err)
	}
	if got, want := hex.EncodeToString(b.Bytes()), hex.EncodeToString([]byte("SECRET_PROVISION_RA_TLS_REQUEST_V1"))+"00"; got != want || b.Len() != 35 {
		t.Fatalf("request %s, want %s", got, want)
	}
	b.Reset()
	if err := WriteResponse(&b, []byte("ab")); err != nil {
		t.Fatal(err)
	}
	want := hex.EncodeToString([]byte("SECRET_PROVISION_RA_TLS_RESPONSE_V1:")) + "00" + "00000002" + "6162"
	if got := hex.EncodeToString(b.Bytes()); got != want {
		t.Fatalf("response %s, want %s", got, want)
	}
	s, err := ReadResponse(&b)
	if err != nil || string(s) != "ab" {
		t.Fatalf("ReadResponse: %q, %v", s, err)
	}
}

func TestWireRefusals(t *testing.T) {
	if err := ReadRequest(bytes.NewReader([]byte("SECRET_PROVISION_RA_TLS_REQUEST_V2\x00"))); !errors.Is(err, ErrProtocol) {
		t.Errorf("another request version: %v", err)
	}
	if err := ReadRequest(bytes.NewReader([]byte("SECRET_PROVISION"))); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("short request: %v", err)
	}
	if err := WriteResponse(io.Discard, nil); err == nil {
		t.Error("an empty secret was written")
	}
	big := append([]byte("SECRET_PROVISION_RA_TLS_RESPONSE_V1:\x00"), 0x7f, 0, 0, 0)
	if _, err := ReadResponse(bytes.NewReader(big)); !errors.Is(err, ErrProtocol) {
		t.Errorf("a 2 GiB secret announced: %v", err)
	}
}

// FuzzReadResponse: no panic, and whatever parses writes back identically.
func FuzzReadResponse(f *testing.F) {
	var b bytes.Buffer
	_ = WriteResponse(&b, []byte("00112233445566778899aabbccddeeff\x00"))
	f.Add(b.Bytes())
	f.Add([]byte("SECRET_PROVISION_RA_TLS_RESPONSE_V1:\x00\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		s, err := ReadResponse(r)
		if err != nil {
			return
		}
		var out bytes.Buffer
		if err := WriteResponse(&out, s); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out.Bytes(), in[:len(in)-r.Len()]) {
			t.Fatalf("round trip %x != %x", out.Bytes(), in[:len(in)-r.Len()])
		}
	})
}

// FuzzReadRequest: no panic; only the exact request is accepted.
func FuzzReadRequest(f *testing.F) {
	f.Add([]byte(request))
	f.Add([]byte("SECRET_PROVISION_RA_TLS_REQUEST_V1"))
	f.Fuzz(func(t *testing.T, in []byte) {
		if ReadRequest(bytes.NewReader(in)) == nil && !bytes.HasPrefix(in, []byte(request)) {
			t.Fatalf("accepted %q", in)
		}
	})
}
