package migrate

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"

	"github.com/veil-tee/veil/config"
)

const base = "/srv/job"

func load(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func find(notes []Note, field string) (Note, bool) {
	for _, n := range notes {
		if n.Field == field {
			return n, true
		}
	}
	return Note{}, false
}

func mountAt(c *config.Config, target string) *config.Mount {
	for i := range c.Mounts {
		if c.Mounts[i].Target == target {
			return &c.Mounts[i]
		}
	}
	return nil
}

// leaves lists the dotted paths of every leaf of v.
func leaves(v any, at string, out *[]string) {
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			leaves(e, join(at, k), out)
		}
	case []any:
		for i, e := range t {
			leaves(e, fmt.Sprintf("%s[%d]", at, i), out)
		}
	case []map[string]any:
		for i, e := range t {
			leaves(e, fmt.Sprintf("%s[%d]", at, i), out)
		}
	default:
		*out = append(*out, at)
	}
}

// checkNothingDropped: every leaf of the input is accounted for by a note
// on it or on one of its parents.
func checkNothingDropped(t *testing.T, in any, r *Result) {
	t.Helper()
	var ls []string
	leaves(in, "", &ls)
	all := append(slices.Clone(r.Mapped), r.Unmapped...)
	for _, l := range ls {
		ok := false
		for _, n := range all {
			if l == n.Field || strings.HasPrefix(l, n.Field+".") || strings.HasPrefix(l, n.Field+"[") {
				ok = true
				break
			}
		}
		if !ok {
			t.Errorf("input field %s is neither mapped nor reported", l)
		}
	}
	for _, n := range r.Unmapped {
		if n.Reason == "" {
			t.Errorf("%s is reported without a reason", n.Field)
		}
	}
}

// roundTrip checks that the imported configuration is a valid veil.json.
func roundTrip(t *testing.T, r *Result) *config.Config {
	t.Helper()
	b, err := r.Config.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	c, err := config.Parse(b)
	if err != nil {
		t.Fatalf("imported veil.json does not parse: %v\n%s", err, b)
	}
	return c
}

func TestFromGramine(t *testing.T) {
	data := load(t, "python.manifest.toml")
	r, err := FromGramine(data, Options{BaseDir: base, GramineKeys: map[string]string{"default": "file:/etc/veil/train.key"}})
	if err != nil {
		t.Fatal(err)
	}
	c := roundTrip(t, r)
	if !slices.Equal(c.Entrypoints, []string{"/usr/bin/python3.11"}) || !c.Args.Passthrough {
		t.Errorf("entrypoints %v, args %v", c.Entrypoints, c.Args)
	}
	if c.Env.Default["OMP_NUM_THREADS"] != "4" || c.Env.Default["HOME"] != "/root" || !slices.Equal(c.Env.Passthrough, []string{"TZ"}) {
		t.Errorf("env %+v", c.Env)
	}
	if c.Metadata != (config.Metadata{ProductID: 7, SVN: 3, Debuggable: false}) || c.Resources.Memory != "4G" || c.Resources.MaxProcesses != 64 {
		t.Errorf("metadata %+v resources %+v", c.Metadata, c.Resources)
	}
	if m := mountAt(c, "/tmp"); m == nil || m.Type != config.MountTmpFS {
		t.Errorf("/tmp: %+v", m)
	}
	d := mountAt(c, "/data")
	if d == nil || d.Type != config.MountSealed || d.Format != config.FormatGraminePF || d.PFPath != "enc_data" || d.Source != base+"/enc_data" || d.Key != "file:/etc/veil/train.key" {
		t.Errorf("/data: %+v", d)
	}
	if m := mountAt(c, "/models"); m == nil || m.PFPath != "models" || m.Key != "file:keys/sgx_mrenclave.key" {
		t.Errorf("/models: %+v", m)
	}
	if n, ok := find(r.Unmapped, "fs.mounts[6].key_name"); !ok || !strings.Contains(n.Reason, "re-encrypt") {
		t.Errorf("the SGX sealing key is not reported: %+v", n)
	}
	if m := mountAt(c, "/output"); m == nil || m.Type != config.MountHostFS || m.Source != base+"/output" {
		t.Errorf("/output (allowed dir): %+v", m)
	}
	wantCopy := []config.Copy{
		{From: "/lib/x86_64-linux-gnu"},
		{From: "/usr/bin/python3.11"},
		{From: "/usr/lib/python3.11"},
		{From: base + "/app/train.py", To: "/app/train.py", SHA256: "8d1f5c1a1f0b3e55b8f0a3a4d4c7c7a2b0e7a1c2d3e4f5061728394a5b6c7d8e"},
	}
	if !slices.EqualFunc(c.BOM.Copy, wantCopy, func(a, b config.Copy) bool {
		return a.From == b.From && a.To == b.To && a.SHA256 == b.SHA256
	}) {
		t.Errorf("bom.copy %+v", c.BOM.Copy)
	}
	for _, f := range []string{"sgx.trusted_files[0]", "sgx.trusted_files[1]", "sgx.allowed_files[1]", "sgx.allowed_files[2]",
		"fs.mounts[7]", "fs.insecure__keys.default", "sgx.edmm_enable", "sgx.remote_attestation", "sys.stack.size",
		"loader.log_level", "fs.start_dir", "fs.mounts[6].enable_recovery"} {
		if _, ok := find(r.Unmapped, f); !ok {
			t.Errorf("%s is not reported as unmapped", f)
		}
	}
	var in map[string]any
	toml.Decode(string(data), &in)
	checkNothingDropped(t, in, r)
}

func TestFromGramineSectionsAndErrors(t *testing.T) {
	// [[fs.mounts]] sections, no entrypoint, a default key name.
	r, err := FromGramine([]byte(`
[[fs.mounts]]
type = "encrypted"
path = "/secret"
uri = "file:/var/enc"

[[fs.mounts]]
path = "/opt"
uri = "file:/opt"
`), Options{BaseDir: base})
	if err != nil {
		t.Fatal(err)
	}
	c := roundTrip(t, r)
	if m := mountAt(c, "/secret"); m == nil || m.PFPath != "/var/enc" || m.Key != "file:keys/default.key" {
		t.Errorf("/secret: %+v", m)
	}
	if _, ok := find(r.Unmapped, "libos.entrypoint"); !ok {
		t.Error("a missing entry point is not reported")
	}
	for _, bad := range []string{
		`libos.entrypoint = "{{ entrypoint }}"`,
		`libos.entrypoint = `,
	} {
		if _, err := FromGramine([]byte(bad), Options{}); !errors.Is(err, ErrInput) {
			t.Errorf("%q: err %v, want ErrInput", bad, err)
		}
	}
}

func TestFromOcclum(t *testing.T) {
	data := load(t, "Occlum.json")
	if _, err := FromOcclum(data, Options{BaseDir: base, SealedKey: "kms:data@corp"}); err == nil {
		t.Fatal("a kms key reference without a kms section validated")
	}
	r, err := FromOcclum(data, Options{BaseDir: base, SealedKey: "file:/etc/veil/data.key"})
	if err != nil {
		t.Fatal(err)
	}
	c := roundTrip(t, r)
	if !slices.Equal(c.Entrypoints, []string{"/bin/", "/usr/lib/jvm/java-11-openjdk/bin/"}) {
		t.Errorf("entrypoints %v", c.Entrypoints)
	}
	if c.Env.Default["JAVA_HOME"] != "/usr/lib/jvm/java-11-openjdk" || !slices.Equal(c.Env.Passthrough, []string{"EXAMPLE"}) {
		t.Errorf("env %+v", c.Env)
	}
	if n, ok := find(r.Unmapped, "env.untrusted[1]"); !ok || !strings.Contains(n.Reason, "trusted value") {
		t.Errorf("a variable in both lists is not reported: %+v", n)
	}
	if c.Resources.Memory != "1G" || c.Resources.MaxProcesses != 32 {
		t.Errorf("resources %+v", c.Resources)
	}
	if c.Metadata != (config.Metadata{ProductID: 12, SVN: 4}) {
		t.Errorf("metadata %+v", c.Metadata)
	}
	if m := mountAt(c, "/host"); m == nil || m.Type != config.MountHostFS || m.Source != base {
		t.Errorf("/host: %+v", m)
	}
	if m := mountAt(c, "/tmp"); m == nil || m.Type != config.MountTmpFS {
		t.Errorf("/tmp: %+v", m)
	}
	if m := mountAt(c, "/data"); m == nil || m.Type != config.MountSealed || m.Key != "file:/etc/veil/data.key" || m.Source != base+"/sefs/data" {
		t.Errorf("/data: %+v", m)
	}
	if m := mountAt(c, "/mnt/union"); m == nil || m.Source != base+"/upper" {
		t.Errorf("/mnt/union: %+v", m)
	}
	for _, f := range []string{"mount[0].options.layers[1]", "mount[2]", "mount[3]", "mount[5].options.autokey_policy",
		"mount[6].options.layers[0]", "mount[7]", "process.default_heap_size", "feature.enable_edmm",
		"metadata.family_id.high", "resource_limits.kernel_space_heap_size", "resource_limits.user_space_size"} {
		if _, ok := find(r.Unmapped, f); !ok {
			t.Errorf("%s is not reported as unmapped", f)
		}
	}
	var in map[string]any
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	dec.Decode(&in)
	checkNothingDropped(t, in, r)
}

func TestFromOcclumOldForm(t *testing.T) {
	// The older template: env as a list, vm.user_space_size, sefs at /.
	r, err := FromOcclum([]byte(`{"vm": {"user_space_size": "128MB"}, "env": ["OCCLUM=yes"],
		"mount": [{"target": "/", "type": "sefs", "source": "./image", "options": {"integrity_only": true}},
		          {"target": "/root", "type": "sefs"}, {"target": "/tmp", "type": "ramfs"}]}`), Options{BaseDir: base})
	if err != nil {
		t.Fatal(err)
	}
	c := roundTrip(t, r)
	if c.Env.Default["OCCLUM"] != "yes" || c.Resources.Memory != "128M" {
		t.Errorf("env %+v resources %+v", c.Env, c.Resources)
	}
	if m := mountAt(c, "/root"); m == nil || m.Source != base+"/sefs/root" || m.Key != "file:keys/sealed.key" {
		t.Errorf("/root: %+v", m)
	}
	if _, ok := find(r.Unmapped, "mount[0].options.integrity_only"); !ok {
		t.Error("integrity_only is not reported")
	}
	if _, err := FromOcclum([]byte(`[1]`), Options{}); !errors.Is(err, ErrInput) {
		t.Errorf("a JSON array: %v", err)
	}
}
