package trustimage

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"testing"
	"time"

	"github.com/veil-tee/veil/attest"
	"github.com/veil-tee/veil/config"
)

const baseConfig = `{
  "entrypoints": ["/usr/bin/", "/app/"],
  "env": {"default": {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, "passthrough": ["TERM"]},
  "args": {"passthrough": true},
  "mounts": [
    {"target": "/data", "type": "sealed", "source": "/srv/data", "key": "kms:k1@main", "write_key": "kms:k2@main"},
    {"target": "/host", "type": "hostfs", "source": "/srv/host", "read_only": true},
    {"target": "/tmp", "type": "tmpfs", "size": "64M"}
  ],
  "resources": {"memory": "1G", "max_processes": 64},
  "metadata": {"product_id": 1, "svn": 2, "debuggable": false},
  "kms": [{"name": "main", "address": "kms.example:8443", "pin_sha256": "` + pin1 + `"}],
  "secrets": [{"name": "db", "from": "kms:db-pass@main", "env": "DB_PASSWORD"}],
  "bom": {"copy": [{"from": "/usr/bin/python3"}], "exclude": ["*.pyc"]}
}`

const (
	pin1 = "1111111111111111111111111111111111111111111111111111111111111111"
	pin2 = "2222222222222222222222222222222222222222222222222222222222222222"
)

var testInfo = ImageInfo{File: ImageFile, DataBlocks: 10, HashOffset: 40960, BlockSize: BlockSize, Hash: "sha256",
	Salt: "00" + pin1[2:], RootHash: pin2}

func mustParse(t *testing.T, s string) *config.Config {
	t.Helper()
	c, err := config.Parse([]byte(s))
	if err != nil {
		t.Fatalf("parsing config: %v", err)
	}
	return c
}

func measure(t *testing.T, im ImageInfo, c *config.Config) [32]byte {
	t.Helper()
	m, err := Measure(im, c)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func testCACert(t *testing.T) string {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca"}, NotBefore: time.Unix(0, 0), NotAfter: time.Unix(1<<31, 0), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// TestMeasuredFields changes one field at a time: measured fields must
// change the measurement, unmeasured ones must not.
func TestMeasuredFields(t *testing.T) {
	base := measure(t, testInfo, mustParse(t, baseConfig))
	if again := measure(t, testInfo, mustParse(t, baseConfig)); again != base {
		t.Fatal("measurement is not deterministic")
	}
	ca := testCACert(t)
	measured := map[string]func(c *config.Config){
		"entrypoints":             func(c *config.Config) { c.Entrypoints = append(c.Entrypoints, "/opt/") },
		"entrypoints order":       func(c *config.Config) { c.Entrypoints[0], c.Entrypoints[1] = c.Entrypoints[1], c.Entrypoints[0] },
		"env.default value":       func(c *config.Config) { c.Env.Default["LANG"] = "C" },
		"env.default new":         func(c *config.Config) { c.Env.Default["X"] = "" },
		"env.passthrough":         func(c *config.Config) { c.Env.Passthrough = append(c.Env.Passthrough, "HOME") },
		"args.passthrough":        func(c *config.Config) { c.Args.Passthrough = false },
		"mounts.target":           func(c *config.Config) { c.Mounts[0].Target = "/data2" },
		"mounts.type":             func(c *config.Config) { c.Mounts[1].Type = config.MountTmpFS; c.Mounts[1].Source = "" },
		"mounts.key":              func(c *config.Config) { c.Mounts[0].Key = "kms:k3@main" },
		"mounts.write_key":        func(c *config.Config) { c.Mounts[0].WriteKey = "kms:k3@main" },
		"mounts.read_only":        func(c *config.Config) { c.Mounts[1].ReadOnly = false },
		"mounts.size":             func(c *config.Config) { c.Mounts[2].Size = "128M" },
		"mounts removed":          func(c *config.Config) { c.Mounts = c.Mounts[:2] },
		"resources.memory":        func(c *config.Config) { c.Resources.Memory = "2G" },
		"resources.max_processes": func(c *config.Config) { c.Resources.MaxProcesses = 65 },
		"metadata.product_id":     func(c *config.Config) { c.Metadata.ProductID = 9 },
		"metadata.svn":            func(c *config.Config) { c.Metadata.SVN = 3 },
		"metadata.debuggable":     func(c *config.Config) { c.Metadata.Debuggable = true },
		"kms added": func(c *config.Config) {
			c.KMS = append(c.KMS, config.KMS{Name: "backup", Address: "b:1", PinSHA256: pin1})
		},
		"kms.pin_sha256": func(c *config.Config) { c.KMS[0].PinSHA256 = pin2 },
		"kms.ca_cert":    func(c *config.Config) { c.KMS[0].CACert = ca },
		// Which TEE the key service must prove is part of the workload's
		// identity; the zero policy (any hardware TEE) is not "no policy".
		"kms.attest": func(c *config.Config) {
			c.KMS[0].Attest = &attest.Policy{AllowSim: true, Measurements: []attest.Hex{make([]byte, 32)}}
		},
		"kms.attest empty": func(c *config.Config) { c.KMS[0].Attest = &attest.Policy{} },
		"secrets.name":     func(c *config.Config) { c.Secrets[0].Name = "db2" },
		"secrets.from":     func(c *config.Config) { c.Secrets[0].From = "kms:other@main" },
		"secrets.env":      func(c *config.Config) { c.Secrets[0].Env = "PW" },
		"secrets.file":     func(c *config.Config) { c.Secrets[0].Env = ""; c.Secrets[0].File = "/run/secrets/db" },
	}
	for name, mut := range measured {
		c := mustParse(t, baseConfig)
		mut(c)
		if err := c.Validate(); err != nil {
			t.Fatalf("%s: mutated config invalid: %v", name, err)
		}
		if measure(t, testInfo, c) == base {
			t.Errorf("changing %s did not change the measurement", name)
		}
	}
	unmeasured := map[string]func(c *config.Config){
		"mounts.source (sealed)": func(c *config.Config) { c.Mounts[0].Source = "/elsewhere" },
		"mounts.source (hostfs)": func(c *config.Config) { c.Mounts[1].Source = "/elsewhere" },
		"kms.address":            func(c *config.Config) { c.KMS[0].Address = "10.0.0.1:1" },
		"bom.copy":               func(c *config.Config) { c.BOM.Copy = nil },
		"bom.exclude":            func(c *config.Config) { c.BOM.Exclude = []string{"*.txt"} },
		"bom.include":            func(c *config.Config) { c.BOM.Include = []string{"debian/python3"} },
		"env.default map order":  func(c *config.Config) { c.Env.Default = map[string]string{"LANG": "C.UTF-8", "PATH": "/usr/bin:/bin"} },
	}
	for name, mut := range unmeasured {
		c := mustParse(t, baseConfig)
		mut(c)
		if measure(t, testInfo, c) != base {
			t.Errorf("changing %s changed the measurement", name)
		}
	}
	imageChanges := map[string]func(im *ImageInfo){
		"root_hash":   func(im *ImageInfo) { im.RootHash = pin1 },
		"salt":        func(im *ImageInfo) { im.Salt = pin2 },
		"data_blocks": func(im *ImageInfo) { im.DataBlocks++ },
		"encrypted":   func(im *ImageInfo) { im.Encryption = &EncryptionInfo{Cipher: CipherAES256CTR} },
		"loads": func(im *ImageInfo) {
			im.Loads = map[string][]string{"/usr/bin/x": {"/lib64/ld-linux-x86-64.so.2", "/lib/libc.so.6"}}
		},
	}
	// The order of a program's loads is measured too (it is the order
	// the runtime reads them in).
	l1, l2 := testInfo, testInfo
	l1.Loads = map[string][]string{"/usr/bin/x": {"/lib/a.so", "/lib/b.so"}}
	l2.Loads = map[string][]string{"/usr/bin/x": {"/lib/b.so", "/lib/a.so"}}
	if measure(t, l1, mustParse(t, baseConfig)) == measure(t, l2, mustParse(t, baseConfig)) {
		t.Error("reordering loads did not change the measurement")
	}
	// For an encrypted image the key salt is measured too.
	enc := testInfo
	enc.Encryption = &EncryptionInfo{Cipher: CipherAES256CTR, KeySalt: pin1}
	enc2 := enc
	enc2.Encryption = &EncryptionInfo{Cipher: CipherAES256CTR, KeySalt: pin2}
	if measure(t, enc, mustParse(t, baseConfig)) == measure(t, enc2, mustParse(t, baseConfig)) {
		t.Error("changing the key salt did not change the measurement")
	}
	for name, mut := range imageChanges {
		im := testInfo
		mut(&im)
		if measure(t, im, mustParse(t, baseConfig)) == base {
			t.Errorf("changing image %s did not change the measurement", name)
		}
	}
	// The image location and size bookkeeping are not measured.
	im := testInfo
	im.File = "elsewhere.img"
	im.Size = 123
	if measure(t, im, mustParse(t, baseConfig)) != base {
		t.Error("image file name or size changed the measurement")
	}
}

// TestMeasurementVector pins the measurement of a fixed input so that an
// accidental change to the canonical encoding is caught.
func TestMeasurementVector(t *testing.T) {
	c := mustParse(t, baseConfig)
	doc, err := config.Canonical(MeasuredDoc(testInfo, c))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"config":{"args":{"passthrough":true},"entrypoints":["/usr/bin/","/app/"],"env":{"default":{"LANG":"C.UTF-8","PATH":"/usr/bin:/bin"},"passthrough":["TERM"]},"kms":[{"ca_cert_sha256":"","name":"main","pin_sha256":"` + pin1 + `"}],"metadata":{"debuggable":false,"product_id":1,"svn":2},"mounts":[{"key":"kms:k1@main","read_only":false,"size_bytes":0,"target":"/data","type":"sealed","write_key":"kms:k2@main"},{"key":"","read_only":true,"size_bytes":0,"target":"/host","type":"hostfs","write_key":""},{"key":"","read_only":false,"size_bytes":67108864,"target":"/tmp","type":"tmpfs","write_key":""}],"resources":{"max_processes":64,"memory_bytes":1073741824},"secrets":[{"env":"DB_PASSWORD","file":"","from":"kms:db-pass@main","name":"db"}]},"format":"veil-measurement/1","image":{"block_size":4096,"data_blocks":10,"encrypted":false,"hash":"sha256","root_hash":"` + pin2 + `","salt":"00` + pin1[2:] + `"},"runtime":"veil-runtime/1"}`
	if string(doc) != want {
		t.Fatalf("canonical document changed:\n got %s\nwant %s", doc, want)
	}
}

// Loads in a build record must be absolute clean paths.
func TestRecordLoadsChecked(t *testing.T) {
	rec := &Record{Format: RecordFormat, Runtime: RuntimeIdentity, Measurement: pin1, Image: testInfo}
	rec.Image.Size = rec.Image.HashOffset + 2*BlockSize
	rec.Image.Loads = map[string][]string{"/usr/bin/x": {"/lib/libc.so.6"}}
	good, err := rec.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseRecord(good)
	if err != nil {
		t.Fatal(err)
	}
	if l := got.Image.Loads["/usr/bin/x"]; len(l) != 1 || l[0] != "/lib/libc.so.6" {
		t.Fatalf("loads %v", got.Image.Loads)
	}
	for _, bad := range []map[string][]string{
		{"usr/bin/x": {"/lib/libc.so.6"}},
		{"/usr/bin/x": {"../lib/libc.so.6"}},
		{"/usr/bin/x": {"/lib/../../etc/passwd"}},
		{"/usr/bin/x": {""}},
	} {
		rec.Image.Loads = bad
		b, _ := rec.Marshal()
		if _, err := ParseRecord(b); !errors.Is(err, ErrBadRecord) {
			t.Errorf("loads %v: %v", bad, err)
		}
	}
}
