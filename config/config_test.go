package config

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestTemplateParses(t *testing.T) {
	c, err := Parse([]byte(Template))
	if err != nil {
		t.Fatalf("template: %v", err)
	}
	if len(c.Entrypoints) == 0 || !c.Args.Passthrough || c.Resources.Memory != "1G" {
		t.Fatalf("template parsed to %+v", c)
	}
}

const kmsOK = `"kms": [{"name": "main", "address": "k:1", "pin_sha256": "` + "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" + `"}]`

// TestParseErrorsNameField checks that each bad input fails with a
// FieldError naming the field.
func TestParseErrorsNameField(t *testing.T) {
	cases := map[string]struct{ json, field string }{
		"unknown top":      {`{"entrypoints": ["/"], "bogus": 1}`, "bogus"},
		"unknown nested":   {`{"entrypoints": ["/"], "metadata": {"svm": 1}}`, "metadata.svm"},
		"unknown in array": {`{"entrypoints": ["/"], "mounts": [{"target": "/t", "type": "tmpfs", "sorce": "/x"}]}`, "mounts[0].sorce"},
		"type":             {`{"entrypoints": ["/"], "args": {"passthrough": "yes"}}`, "args.passthrough"},
		"svn range":        {`{"entrypoints": ["/"], "metadata": {"svn": 70000}}`, "metadata.svn"},
		"no entrypoints":   {`{}`, "entrypoints"},
		"relative entry":   {`{"entrypoints": ["usr/bin"]}`, "entrypoints[0]"},
		"unclean entry":    {`{"entrypoints": ["/usr/../etc"]}`, "entrypoints[0]"},
		"env name":         {`{"entrypoints": ["/"], "env": {"default": {"1X": "a"}}}`, "env.default.1X"},
		"env overlap":      {`{"entrypoints": ["/"], "env": {"default": {"A": "a"}, "passthrough": ["A"]}}`, "env.passthrough[0]"},
		"mount type":       {`{"entrypoints": ["/"], "mounts": [{"target": "/d", "type": "nfs"}]}`, "mounts[0].type"},
		"mount root":       {`{"entrypoints": ["/"], "mounts": [{"target": "/", "type": "tmpfs"}]}`, "mounts[0].target"},
		"mount twice":      {`{"entrypoints": ["/"], "mounts": [{"target": "/t", "type": "tmpfs"}, {"target": "/t", "type": "tmpfs"}]}`, "mounts[1].target"},
		"sealed no key":    {`{"entrypoints": ["/"], "mounts": [{"target": "/d", "type": "sealed", "source": "/s"}]}`, "mounts[0].key"},
		"sealed bad ref":   {`{"entrypoints": ["/"], "mounts": [{"target": "/d", "type": "sealed", "source": "/s", "key": "vault:x"}]}`, "mounts[0].key"},
		"undeclared kms":   {`{"entrypoints": ["/"], "mounts": [{"target": "/d", "type": "sealed", "source": "/s", "key": "kms:k@other"}], ` + kmsOK + `}`, "mounts[0].key"},
		"hostfs key":       {`{"entrypoints": ["/"], "mounts": [{"target": "/d", "type": "hostfs", "source": "/s", "key": "file:/k"}]}`, "mounts[0].key"},
		"tmpfs size":       {`{"entrypoints": ["/"], "mounts": [{"target": "/d", "type": "tmpfs", "size": "lots"}]}`, "mounts[0].size"},
		"memory":           {`{"entrypoints": ["/"], "resources": {"memory": "1X"}}`, "resources.memory"},
		"max processes":    {`{"entrypoints": ["/"], "resources": {"max_processes": -1}}`, "resources.max_processes"},
		"network":          {`{"entrypoints": ["/"], "network": "bridge"}`, "network"},
		"kms no pin":       {`{"entrypoints": ["/"], "kms": [{"name": "a", "address": "x:1"}]}`, "kms[0]"},
		"kms bad pin":      {`{"entrypoints": ["/"], "kms": [{"name": "a", "address": "x:1", "pin_sha256": "zz"}]}`, "kms[0].pin_sha256"},
		"kms bad ca":       {`{"entrypoints": ["/"], "kms": [{"name": "a", "address": "x:1", "ca_cert": "nope"}]}`, "kms[0].ca_cert"},
		"kms attest field": {`{"entrypoints": ["/"], "kms": [{"name": "a", "address": "x:1", "pin_sha256": "` + strings.Repeat("a", 64) + `", "attest": {"measurment": []}}]}`, "kms[0].attest.measurment"},
		"kms attest meas":  {`{"entrypoints": ["/"], "kms": [{"name": "a", "address": "x:1", "pin_sha256": "` + strings.Repeat("a", 64) + `", "attest": {"measurements": ["abcd"]}}]}`, "kms[0].attest.measurements[0]"},
		"kms attest type":  {`{"entrypoints": ["/"], "kms": [{"name": "a", "address": "x:1", "pin_sha256": "` + strings.Repeat("a", 64) + `", "attest": {"allow_sim": "yes"}}]}`, "kms.attest.allow_sim"},
		"kms attest nopin": {`{"entrypoints": ["/"], "kms": [{"name": "a", "address": "x:1", "attest": {"allow_sim": true}}]}`, "kms[0]"},
		"kms name":         {`{"entrypoints": ["/"], "kms": [{"name": "A B", "address": "x:1", "pin_sha256": "aa"}]}`, "kms[0].name"},
		"secret no dest":   {`{"entrypoints": ["/"], "secrets": [{"name": "s", "from": "kms:s@main"}], ` + kmsOK + `}`, "secrets[0]"},
		"secret file":      {`{"entrypoints": ["/"], "secrets": [{"name": "s", "from": "kms:s@main", "file": "/etc/s"}], ` + kmsOK + `}`, "secrets[0].file"},
		"secret from file": {`{"entrypoints": ["/"], "secrets": [{"name": "s", "from": "file:/k", "env": "S"}]}`, "secrets[0].from"},
		"bom from":         {`{"entrypoints": ["/"], "bom": {"copy": [{"from": "rel"}]}}`, "bom.copy[0].from"},
		"bom sha":          {`{"entrypoints": ["/"], "bom": {"copy": [{"from": "/a", "sha256": "AB"}]}}`, "bom.copy[0].sha256"},
		"bom pattern":      {`{"entrypoints": ["/"], "bom": {"exclude": ["[x"]}}`, "bom.exclude[0]"},
		"bom symlink":      {`{"entrypoints": ["/"], "bom": {"symlinks": [{"link": "x", "target": "y"}]}}`, "bom.symlinks[0].link"},
		"bom include":      {`{"entrypoints": ["/"], "bom": {"include": ["../x"]}}`, "bom.include[0]"},
	}
	for name, tc := range cases {
		_, err := Parse([]byte(tc.json))
		var fe *FieldError
		if !errors.As(err, &fe) || !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: got %v, want a FieldError", name, err)
			continue
		}
		if fe.Field != tc.field {
			t.Errorf("%s: field %q, want %q (%v)", name, fe.Field, tc.field, err)
		}
	}
	for _, bad := range []string{"", "{", `{"entrypoints": ["/"]} {}`, "[]"} {
		if _, err := Parse([]byte(bad)); !errors.Is(err, ErrInvalid) {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

func TestDefaultsAndRefs(t *testing.T) {
	c, err := Parse([]byte(`{"entrypoints": ["/"], "mounts": [{"target": "/d", "type": "sealed", "source": "/s", "key": "kms:data/k1@main"}], ` + kmsOK + `}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Mounts[0].WriteKey != "kms:data/k1@main" {
		t.Fatalf("write_key default: %q", c.Mounts[0].WriteKey)
	}
	r, err := ParseKeyRef(c.Mounts[0].Key)
	if err != nil || r.Kind != "kms" || r.ID != "data/k1" || r.KMS != "main" {
		t.Fatalf("key ref %+v %v", r, err)
	}
	if r, err := ParseKeyRef("file:/keys/a.key"); err != nil || r.Kind != "file" || r.ID != "/keys/a.key" {
		t.Fatalf("file ref %+v %v", r, err)
	}
	if !c.BOM.ResolveELFEnabled() {
		t.Fatal("resolve_elf default is not true")
	}
	for s, want := range map[string]int64{"4096": 4096, "64K": 64 << 10, "512M": 512 << 20, "2G": 2 << 30, "1GiB": 1 << 30, "3B": 3} {
		if got, err := ParseSize(s); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v", s, got, err)
		}
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, FileName)
	if _, err := Load(p); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
	os.WriteFile(p, []byte(strings.Repeat(" ", MaxSize+1)), 0o644)
	if _, err := Load(p); !errors.Is(err, ErrInvalid) {
		t.Fatalf("huge file: %v", err)
	}
	os.WriteFile(p, []byte(Template), 0o644)
	if _, err := Load(p); err != nil {
		t.Fatal(err)
	}
}

// TestNetworkMeasured: "host" is measured, "none" and no setting are the
// same instance.
func TestNetworkMeasured(t *testing.T) {
	enc := func(js string) string {
		t.Helper()
		c, err := Parse([]byte(js))
		if err != nil {
			t.Fatal(err)
		}
		b, err := Canonical(c.Measured())
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	none, unset, host := enc(`{"entrypoints": ["/"], "network": "none"}`), enc(`{"entrypoints": ["/"]}`), enc(`{"entrypoints": ["/"], "network": "host"}`)
	if none != unset {
		t.Fatalf("none and unset differ:\n%s\n%s", none, unset)
	}
	if host == none || !strings.Contains(host, `"network":"host"`) {
		t.Fatalf("host not measured: %s", host)
	}
}

func TestCanonical(t *testing.T) {
	got, err := Canonical(struct {
		B string            `json:"b"`
		A map[string]string `json:"a"`
		N int64             `json:"n"`
	}{B: "<&>", A: map[string]string{"z": "1", "y": "2"}, N: 1 << 40})
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"a":{"y":"2","z":"1"},"b":"<&>","n":1099511627776}`; string(got) != want {
		t.Fatalf("got %s want %s", got, want)
	}
}

// FuzzParse: no panics; whatever parses marshals to JSON that parses to
// the same measured form (the canonical encoding is stable).
func FuzzParse(f *testing.F) {
	f.Add([]byte(Template))
	f.Add([]byte(`{"entrypoints": ["/"], "network": "host"}`))
	f.Add([]byte(`{"entrypoints": ["/"], "mounts": [{"target": "/d", "type": "sealed", "source": "/s", "key": "kms:k@main"}], ` + kmsOK + `}`))
	f.Add([]byte(`{"entrypoints": ["/"], "secrets": [{"name": "s", "from": "kms:s@main", "env": "S"}], ` + kmsOK + `}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			return
		}
		out, err := c.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		c2, err := Parse(out)
		if err != nil {
			t.Fatalf("re-parsing marshalled config: %v", err)
		}
		m1, _ := Canonical(c.Measured())
		m2, _ := Canonical(c2.Measured())
		if !bytes.Equal(m1, m2) {
			t.Fatalf("measured form changed on round trip")
		}
	})
}
