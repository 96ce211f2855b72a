package runtest

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestKMSAddressAtRunTime gives a key service's address at run time, as
// a Kubernetes ConfigMap does for a packaged instance: the instance was
// built with an address where nothing listens, VEIL_KMS_ADDRESS_OWNER
// and --kms-address (run, and start through its supervisor) lead it to
// its key service. An address leading to another key service, one with
// its own CA, is refused before any key is asked for, and the program
// never runs.
func TestKMSAddressAtRunTime(t *testing.T) {
	need(t)
	w := newWorld(t)
	w.startKMS()
	keyID := w.owner("bob")
	data, work := t.TempDir(), t.TempDir()
	w.sealPeople(work, data)
	app := w.app(keyID, data, job)
	w.must("kms", "policy", "create", "--from-instance", app, "--key", "bob-cmk", "--allow-sim")
	addr := strings.TrimPrefix(w.getenv("VEIL_KMS_URL"), "https://")
	// The address is not measured: the build stays valid.
	cfg, _ := os.ReadFile(filepath.Join(app, "veil.json"))
	os.WriteFile(filepath.Join(app, "veil.json"), bytes.Replace(cfg, []byte(addr), []byte("127.0.0.1:1"), 1), 0o644)
	mr := w.must("print", "-C", app, "mrenclave")
	w.must("verify", "-C", app)

	with := func(env ...string) *world {
		c := *w
		c.env = append(append([]string(nil), w.env...), env...)
		return &c
	}
	runJob := func(w *world, args ...string) res {
		t.Helper()
		os.Remove(filepath.Join(data, "out.txt"))
		return w.run("", append(append([]string{"run", "-C", app}, args...), "/usr/bin/sh", "/app/job.sh")...)
	}
	result := func() string {
		t.Helper()
		w.must("decrypt", "-i", filepath.Join(data, "out.txt"), "-o", filepath.Join(work, "out.txt"), "--force")
		b, _ := os.ReadFile(filepath.Join(work, "out.txt"))
		return string(b)
	}

	// veil.json's address alone: unreachable.
	if r := runJob(w); r.code != 1 || !strings.Contains(r.err, "unreachable") || !strings.Contains(r.err, "VEIL_KMS_ADDRESS_") {
		t.Fatalf("without an address: exit %d\n%s", r.code, r.err)
	}
	// The environment gives it.
	r := runJob(with("VEIL_KMS_ADDRESS_OWNER=" + addr))
	if r.code != 0 || !strings.Contains(r.out, "done") || !strings.Contains(r.err, "kms owner at "+addr+" (veil.json: 127.0.0.1:1)") {
		t.Fatalf("with VEIL_KMS_ADDRESS_OWNER: exit %d\n%s%s", r.code, r.out, r.err)
	}
	if got := result(); got != "2\n" {
		t.Fatalf("result %q", got)
	}
	// The flag gives it, and wins over the environment.
	r = runJob(with("VEIL_KMS_ADDRESS_OWNER=127.0.0.1:2"), "--kms-address", "owner=https://"+addr+"/")
	if r.code != 0 || result() != "2\n" {
		t.Fatalf("with --kms-address: exit %d\n%s%s", r.code, r.out, r.err)
	}

	// Another key service, with another CA, at the given address.
	other := newWorld(t)
	other.startKMS()
	otherAddr := strings.TrimPrefix(other.getenv("VEIL_KMS_URL"), "https://")
	for _, r := range []res{
		runJob(with("VEIL_KMS_ADDRESS_OWNER=" + otherAddr)),
		runJob(w, "--kms-address", "owner="+otherAddr),
	} {
		t.Logf("refused:\n%s", r.err)
		if r.code != 4 || !strings.Contains(r.err, "not the pinned one") || !strings.Contains(r.err, "veil: hint:") {
			t.Fatalf("another key service: exit %d, want 4\n%s", r.code, r.err)
		}
		if strings.Contains(r.out, "done") {
			t.Fatal("the program ran with another key service")
		}
		if _, err := os.Stat(filepath.Join(data, "out.txt")); err == nil {
			t.Fatal("the program wrote output with another key service")
		}
	}
	if got := w.must("print", "-C", app, "mrenclave"); got != mr {
		t.Fatalf("measurement changed: %s, was %s", got, mr)
	}

	// Names veil.json does not declare, and malformed values, are refused.
	if r := runJob(with("VEIL_KMS_ADDRESS_OWNR=" + addr)); r.code != 1 || !strings.Contains(r.err, `"ownr"`) || !strings.Contains(r.err, "veil: hint:") {
		t.Fatalf("unknown name: exit %d\n%s", r.code, r.err)
	}
	if r := runJob(w, "--kms-address", "owner"); r.code != 2 {
		t.Fatalf("--kms-address without =: exit %d\n%s", r.code, r.err)
	}
	if r := runJob(w, "--kms-address", "owner=kms.example/x"); r.code != 1 || !strings.Contains(r.err, "not host:port") {
		t.Fatalf("malformed address: exit %d\n%s", r.code, r.err)
	}

	// veil start hands the flag to its supervisor.
	w.must("start", "-C", app, "--kms-address", "owner="+addr)
	os.Remove(filepath.Join(data, "out.txt"))
	if r := w.run("", "exec", "-C", app, "/usr/bin/sh", "/app/job.sh"); r.code != 0 || result() != "2\n" {
		t.Fatalf("exec after start --kms-address: exit %d\n%s", r.code, r.err)
	}
	w.must("stop", "-C", app)
	assertClean(t, app)
}
