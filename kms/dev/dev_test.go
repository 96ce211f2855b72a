package dev

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/veil-tee/veil/kms"
	"github.com/veil-tee/veil/kms/store"
)

func openStore(t *testing.T, dir string) *store.Bolt {
	t.Helper()
	st, err := store.OpenBolt(dir, store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func TestSetupFirstStartAndRestart(t *testing.T) {
	ctx := context.Background()
	data := t.TempDir()
	dir := filepath.Join(data, "dev")
	st := openStore(t, data)
	s1, err := Setup(ctx, st, dir, "127.0.0.2:8443")
	if err != nil {
		t.Fatal(err)
	}
	for name, mode := range map[string]os.FileMode{RootKeyFile: 0o600, AdminTokenFile: 0o600, KeyFile: 0o600, CertFile: 0o644, CAFile: 0o644} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s: mode %v, want %v", name, fi.Mode().Perm(), mode)
		}
	}
	// The root key unseals the store it was made for.
	svc, err := kms.New(ctx, kms.Options{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	if m := svc.Status().Mode; m != kms.ModeDev {
		t.Fatalf("mode %q, want %q", m, kms.ModeDev)
	}
	if err := svc.UnsealWithRootKey(s1.RootKey); err != nil {
		t.Fatalf("unsealing with the dev root key: %v", err)
	}
	if s1.AdminToken == "" {
		t.Fatal("no admin token")
	}
	// The certificate is signed by the CA clients are given and names the
	// listening host.
	caPEM, err := os.ReadFile(filepath.Join(dir, CAFile))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	leaf, err := x509.ParseCertificate(s1.Cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"127.0.0.2", "localhost", "127.0.0.1"} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: host, CurrentTime: time.Now()}); err != nil {
			t.Errorf("certificate for %s: %v", host, err)
		}
	}
	// A restart reads the same files back.
	s2, err := Setup(ctx, st, dir, "127.0.0.1:9999")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(s1.RootKey, s2.RootKey) || s1.AdminToken != s2.AdminToken || !bytes.Equal(s1.Cert.Certificate[0], s2.Cert.Certificate[0]) {
		t.Fatal("a restart made new credentials")
	}
}

// A store sealed with shares must not become a development store whose
// root key sits in a file: Setup refuses it and writes no key.
func TestSetupRefusesShamirStore(t *testing.T) {
	ctx := context.Background()
	data := t.TempDir()
	st := openStore(t, data)
	if _, err := kms.Initialize(ctx, st, kms.ModeShamir, 3, 2, time.Now()); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(data, "dev")
	if _, err := Setup(ctx, st, dir, "127.0.0.1:0"); !errors.Is(err, ErrNotDev) {
		t.Fatalf("err = %v; want ErrNotDev", err)
	}
	if _, err := os.Stat(filepath.Join(dir, RootKeyFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a root key file was written for a shares store: %v", err)
	}
}

func TestSetupBadRootKeyFile(t *testing.T) {
	ctx := context.Background()
	data := t.TempDir()
	st := openStore(t, data)
	dir := filepath.Join(data, "dev")
	if _, err := Setup(ctx, st, dir, "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, RootKeyFile), []byte("not hex\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Setup(ctx, st, dir, "127.0.0.1:0")
	if err == nil || !strings.HasSuffix(err.Error(), "is not a hex root key") {
		t.Fatalf("err = %v; want 'is not a hex root key'", err)
	}
}
