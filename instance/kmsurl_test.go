package instance

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"syscall"
	"testing"

	"github.com/veil-tee/veil/config"
	"github.com/veil-tee/veil/kms/client"
)

func TestKMSURLReplicas(t *testing.T) {
	for in, want := range map[string]string{
		"10.0.0.1:8443":             "https://10.0.0.1:8443",
		"https://kms.example:8443/": "https://kms.example:8443",
		"a:1, https://b:2/,c:3":     "https://a:1,https://b:2,https://c:3",
	} {
		if got := kmsURL(in); got != want {
			t.Errorf("kmsURL(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestCheckKMSAddress(t *testing.T) {
	for _, ok := range []string{"10.0.0.1:8443", "https://kms.example", "https://kms.example:8443/", "a:1, https://b:2/,c:3", "[::1]:8443", "https://[::1]"} {
		if err := CheckKMSAddress(ok); err != nil {
			t.Errorf("CheckKMSAddress(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "kms.example", "http://kms.example:80", "kms.example:8443/x", "a:1,", "user@kms:1", ":8443"} {
		if err := CheckKMSAddress(bad); err == nil {
			t.Errorf("CheckKMSAddress(%q) accepted", bad)
		}
	}
}

func TestWithKMSAddresses(t *testing.T) {
	cfg := &config.Config{KMS: []config.KMS{{Name: "owner", Address: "a:1"}, {Name: "bank-2", Address: "b:2"}}}
	var notes []string
	got, err := withKMSAddresses(cfg, map[string]string{"bank-2": "c:3"}, func(s string) { notes = append(notes, s) })
	if err != nil || got.KMS[0].Address != "a:1" || got.KMS[1].Address != "c:3" {
		t.Fatalf("got %+v, %v", got, err)
	}
	if cfg.KMS[1].Address != "b:2" {
		t.Fatal("the loaded configuration was changed")
	}
	if len(notes) != 1 || notes[0] != "kms bank-2 at c:3 (veil.json: b:2)" {
		t.Fatalf("notes %q", notes)
	}
	if _, err := withKMSAddresses(cfg, map[string]string{"bank": "c:3"}, nil); !errors.Is(err, ErrUnknownKMS) {
		t.Fatalf("unknown name: %v", err)
	}
	if _, err := withKMSAddresses(cfg, map[string]string{"owner": "c"}, nil); err == nil {
		t.Fatal("malformed address accepted")
	}
}

// A certificate that fails the CA or the key pin ends the retries; a
// connection that fails does not.
func TestNotPinned(t *testing.T) {
	ca := &url.Error{Op: "Get", URL: "https://k:1", Err: &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}}
	pin := &url.Error{Op: "Get", URL: "https://k:1", Err: fmt.Errorf("%w 00", client.ErrNotPinned)}
	dial := &url.Error{Op: "Get", URL: "https://k:1", Err: &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}}
	for _, c := range []struct {
		err  error
		want bool
	}{{fmt.Errorf("calling the key service: %w", ca), true}, {fmt.Errorf("calling the key service: %w", pin), true}, {dial, false}} {
		if got := notPinned(c.err); got != c.want {
			t.Errorf("notPinned(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
