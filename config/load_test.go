package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func testCAPEM(t *testing.T) string {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Unix(0, 0), NotAfter: time.Unix(1<<32, 0), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

const kmsConfig = `{"entrypoints": ["/app/"],
 "mounts": [{"target": "/data", "type": "sealed", "source": "../data", "key": "kms:bob-cmk@main"},
            {"target": "/in", "type": "hostfs", "source": "/abs/in"}],
 "kms": [{"name": "main", "address": "127.0.0.1:8443", "ca_cert": "CA"}],
 "secrets": [{"name": "db", "from": "kms:db-pass@main", "env": "DB"}]}`

// A ca_cert path is read relative to the instance directory and measured
// by content: the same as the PEM written inline, and different for
// another certificate at the same path.
func TestLoadCACertPath(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "app")
	os.Mkdir(dir, 0o755)
	ca := testCAPEM(t)
	os.WriteFile(filepath.Join(dir, "ca.pem"), []byte(ca), 0o644)
	p := filepath.Join(dir, FileName)
	os.WriteFile(p, []byte(strings.Replace(kmsConfig, `"CA"`, `"ca.pem"`, 1)), 0o644)
	byPath, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	inline, err := Parse([]byte(strings.Replace(kmsConfig, `"CA"`, strings.ReplaceAll(strings.ReplaceAll(`"`+ca+`"`, "\n", `\n`), `\n"`, `\n"`), 1)))
	if err != nil {
		t.Fatal(err)
	}
	m1, _ := Canonical(byPath.Measured())
	m2, _ := Canonical(inline.Measured())
	if string(m1) != string(m2) {
		t.Fatalf("by path %s\ninline  %s", m1, m2)
	}
	if strings.Contains(string(m1), "ca.pem") {
		t.Fatalf("the measured form names the path: %s", m1)
	}
	os.WriteFile(filepath.Join(dir, "ca.pem"), []byte(testCAPEM(t)), 0o644)
	other, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if m3, _ := Canonical(other.Measured()); string(m3) == string(m1) {
		t.Fatal("another CA at the same path measures the same")
	}
	// Parse has no directory: a path is refused, saying so.
	_, err = Parse([]byte(strings.Replace(kmsConfig, `"CA"`, `"ca.pem"`, 1)))
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "kms[0].ca_cert" || !strings.Contains(fe.Msg, "neither PEM text nor a file") {
		t.Fatalf("Parse with a path: %v", err)
	}
	// A missing file names the field and the path.
	os.Remove(filepath.Join(dir, "ca.pem"))
	if _, err := Load(p); !errors.As(err, &fe) || fe.Field != "kms[0].ca_cert" || !strings.Contains(fe.Msg, filepath.Join(dir, "ca.pem")) {
		t.Fatalf("missing CA file: %v", err)
	}
}

// Relative mount sources are resolved against the instance directory,
// whatever the current directory.
func TestLoadRelativeSource(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "app")
	os.Mkdir(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "ca.pem"), []byte(testCAPEM(t)), 0o644)
	p := filepath.Join(dir, FileName)
	os.WriteFile(p, []byte(strings.Replace(kmsConfig, `"CA"`, `"ca.pem"`, 1)), 0o644)
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.Mounts[0].Source, filepath.Join(base, "data"); got != want {
		t.Errorf("relative source: %s, want %s", got, want)
	}
	if got := c.Mounts[1].Source; got != "/abs/in" {
		t.Errorf("absolute source: %s", got)
	}
}

// Names recorded in IDsFile replace the names of key and secret
// references, and enter the measured form as ids.
func TestLoadIDs(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "ca.pem"), []byte(testCAPEM(t)), 0o644)
	p := filepath.Join(dir, FileName)
	os.WriteFile(p, []byte(strings.Replace(kmsConfig, `"CA"`, `"ca.pem"`, 1)), 0o644)
	c, err := LoadNames(p)
	if err != nil {
		t.Fatal(err)
	}
	names := c.Names()
	if len(names) != 2 || names[0] != (NameRef{Field: "mounts[0].key", Name: "bob-cmk", KMS: "main"}) ||
		names[1] != (NameRef{Field: "secrets[0].from", Secret: true, Name: "db-pass", KMS: "main"}) {
		t.Fatalf("names: %+v", names)
	}
	kid, sid := "k_"+strings.Repeat("ab", 16), "s_"+strings.Repeat("cd", 16)
	ids := IDs{Keys: map[string]string{"bob-cmk@main": kid}, Secrets: map[string]string{"db-pass@main": sid}}
	os.WriteFile(filepath.Join(dir, IDsFile), ids.Marshal(), 0o644)
	c, err = Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.Mounts[0].Key != "kms:"+kid+"@main" || c.Mounts[0].WriteKey != "kms:"+kid+"@main" || c.Secrets[0].From != "kms:"+sid+"@main" {
		t.Fatalf("ids not applied: %+v %+v", c.Mounts[0], c.Secrets[0])
	}
	if len(c.Names()) != 0 {
		t.Fatalf("names left: %+v", c.Names())
	}
	m, _ := Canonical(c.Measured())
	if !strings.Contains(string(m), kid) || strings.Contains(string(m), "bob-cmk") {
		t.Fatalf("measured form: %s", m)
	}
	if !IsKMSID(kid) || IsKMSID("bob-cmk") || IsKMSID("k_12") {
		t.Fatal("IsKMSID")
	}
}

func TestSyntaxErrorLineColumn(t *testing.T) {
	_, err := Parse([]byte("{\n  \"entrypoints\": [\"/app/\"],\n  \"env\": {,}\n}"))
	if err == nil || !strings.Contains(err.Error(), "line 3, column 11") {
		t.Fatalf("got %v", err)
	}
}
