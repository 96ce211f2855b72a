package runtest

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// setKMSAttest gives the instance's key service entry an attest policy
// accepting sim evidence of the given measurement, rebuilds the instance
// and lets the new measurement have bob's key.
func (w *world) setKMSAttest(app, measurement string) {
	w.t.Helper()
	p := filepath.Join(app, "veil.json")
	var cfg map[string]any
	b, _ := os.ReadFile(p)
	if err := json.Unmarshal(b, &cfg); err != nil {
		w.t.Fatal(err)
	}
	k := cfg["kms"].([]any)[0].(map[string]any)
	k["attest"] = map[string]any{"allow_sim": true, "allow_debug": true, "measurements": []string{measurement}}
	b, _ = json.MarshalIndent(cfg, "", "  ")
	os.WriteFile(p, b, 0o644)
	w.must("build", "-C", app)
	w.must("kms", "policy", "create", "--from-instance", app, "--key", "bob-cmk", "--allow-sim")
}

// TestKMSAttestedBothWays: a workload whose veil.json asks its key service
// for evidence gets its keys only from a service that proves the expected
// TEE identity for the very TLS key it presented.
func TestKMSAttestedBothWays(t *testing.T) {
	need(t)
	w := newWorld(t)
	w.startKMS("--attest")
	m := w.getenv("VEIL_KMS_MEASUREMENT")
	if len(m) != 64 {
		t.Fatalf("kms serve --attest printed no measurement: %q", m)
	}
	keyID := w.owner("bob")
	data, work := t.TempDir(), t.TempDir()
	w.sealPeople(work, data)
	app := w.app(keyID, data, job)

	w.setKMSAttest(app, m)
	r := w.run("", "run", "-C", app, "/usr/bin/sh", "/app/job.sh")
	if r.code != 0 || !strings.Contains(r.out, "done") {
		t.Fatalf("run with an attested key service: exit %d\n%s%s", r.code, r.out, r.err)
	}
	if !strings.Contains(r.err, "veil: kms attested: owner (sim, measurement "+m+")") {
		t.Fatalf("veil run does not say the key service was attested:\n%s", r.err)
	}
	// With Intel collateral for SGX and TDX services, the local sim
	// platform stays trusted.
	col, _ := filepath.Abs("../../../attest/testdata/sgx")
	if r := w.run("", "run", "-C", app, "--kms-collateral", col, "/usr/bin/sh", "/app/job.sh"); r.code != 0 {
		t.Fatalf("run with --kms-collateral: exit %d\n%s", r.code, r.err)
	}

	w.must("start", "-C", app)
	t.Cleanup(func() { w.run("", "stop", "-C", app) }) // if the test fails while it runs
	st := w.must("status", "-C", app)
	w.must("stop", "-C", app)
	if !strings.Contains(st, "kms attested: owner (sim, measurement "+m+")") {
		t.Fatalf("status does not show the attested key service:\n%s", st)
	}

	// The service's evidence is genuine but names another measurement
	// than the workload expects: no key is asked for, the program never runs.
	os.Remove(filepath.Join(data, "out.txt"))
	w.setKMSAttest(app, strings.Repeat("ab", 32))
	r = w.run("", "run", "-C", app, "/usr/bin/sh", "/app/job.sh")
	if r.code != 4 || strings.Contains(r.out, "done") {
		t.Fatalf("run with an unexpected key service: exit %d, want 4\n%s%s", r.code, r.out, r.err)
	}
	for _, want := range []string{"key service not trusted", "kms owner", "measurement"} {
		if !strings.Contains(r.err, want) {
			t.Fatalf("error does not say %q:\n%s", want, r.err)
		}
	}
	if _, err := os.Stat(filepath.Join(data, "out.txt")); err == nil {
		t.Fatal("the program ran")
	}
	assertClean(t, app)
}

// TestKMSWithoutEvidenceRefused: a service that presents no evidence is
// not trusted by a workload that asks for it, whatever its pin.
func TestKMSWithoutEvidenceRefused(t *testing.T) {
	need(t)
	w := newWorld(t)
	w.startKMS()
	keyID := w.owner("bob")
	app := w.app(keyID, t.TempDir(), job)
	w.setKMSAttest(app, strings.Repeat("ab", 32))
	r := w.run("", "run", "-C", app, "/usr/bin/sh", "/app/job.sh")
	if r.code != 4 || strings.Contains(r.out, "done") {
		t.Fatalf("exit %d, want 4\n%s%s", r.code, r.out, r.err)
	}
	if !strings.Contains(r.err, "presents no evidence") {
		t.Fatalf("error does not name the missing evidence:\n%s", r.err)
	}
	assertClean(t, app)
}
