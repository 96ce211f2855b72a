package cli

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/veil-tee/veil/internal/veiltest"
)

// The first hour of a new user: each bad input gives an error that names
// what is wrong and a hint that says what to do.

// veilEnv is veil with more environment (after the test's own, with the
// key service settings of the caller's environment removed).
func veilEnv(t *testing.T, dir string, env []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(veilBin, args...)
	cmd.Dir = dir
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "VEIL_") {
			cmd.Env = append(cmd.Env, e)
		}
	}
	cmd.Env = append(cmd.Env, "VEIL_HOME="+filepath.Join(dir, ".veil-home"))
	cmd.Env = append(cmd.Env, env...)
	return runVeil(t, cmd, args)
}

// wantErr checks that r failed with an error matching errRE and a hint
// matching hintRE, and that no temporary file is named.
func wantErr(t *testing.T, r result, errRE, hintRE string) {
	t.Helper()
	s := string(r.stderr)
	if r.code == 0 {
		t.Fatalf("succeeded; want an error matching %q:\n%s", errRE, s)
	}
	var e, h string
	for _, l := range strings.Split(s, "\n") {
		if v, ok := strings.CutPrefix(l, "veil: error: "); ok {
			e = v
		}
		if v, ok := strings.CutPrefix(l, "veil: hint: "); ok {
			h = v
		}
	}
	if !regexp.MustCompile(errRE).MatchString(e) {
		t.Errorf("error %q does not match %q", e, errRE)
	}
	if hintRE != "" && !regexp.MustCompile(hintRE).MatchString(h) {
		t.Errorf("hint %q does not match %q\n%s", h, hintRE, s)
	}
	if strings.Contains(s, ".tmp-") {
		t.Errorf("the error names a temporary file:\n%s", s)
	}
}

// devKMS starts `veil kms serve --dev` on a free loopback port and returns
// the export lines of `veil kms env` as environment entries. The service
// is stopped at the end of the test.
func devKMS(t *testing.T, dir string) []string {
	t.Helper()
	env := devKMSWith(t, dir)
	if len(env) != 3 {
		t.Fatalf("veil kms env printed %q", env)
	}
	return env
}

// devKMSWith is devKMS with extra flags for veil kms serve.
func devKMSWith(t *testing.T, dir string, extra ...string) []string {
	t.Helper()
	data := filepath.Join(dir, "kms")
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, veilBin, append([]string{"kms", "serve", "--dev", "--data", data, "--listen", "127.0.0.1:0"}, extra...)...)
	cmd.Env = append(os.Environ(), "VEIL_HOME="+filepath.Join(dir, ".veil-home"))
	var logb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logb, &logb
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		cmd.Wait()
		if _, err := os.Stat(filepath.Join(data, "dev", "env")); err == nil {
			t.Errorf("the stopped key service left %s/dev/env", data)
		}
	})
	r := veilEnv(t, dir, nil, "kms", "env", "--data", data, "--wait", "20s")
	if r.code != 0 {
		t.Fatalf("veil kms env: %s\nservice log:\n%s", r.stderr, logb.String())
	}
	var env []string
	for _, l := range strings.Split(strings.TrimSpace(string(r.stdout)), "\n") {
		env = append(env, strings.TrimPrefix(l, "export "))
	}
	return env
}

// enroll enrolls an app and returns its settings added to env.
func enroll(t *testing.T, dir string, env []string, name string) []string {
	t.Helper()
	r := veilEnv(t, dir, env, "kms", "enroll", "--name", name)
	if r.code != 0 {
		t.Fatalf("enroll: %s", r.stderr)
	}
	out := append([]string{}, env...)
	for _, l := range strings.Split(strings.TrimSpace(string(r.stdout)), "\n") {
		out = append(out, strings.TrimPrefix(l, "export "))
	}
	return out
}

func mustEnv(t *testing.T, dir string, env []string, args ...string) result {
	t.Helper()
	r := veilEnv(t, dir, env, args...)
	if r.code != 0 {
		t.Fatalf("veil %v: exit %d\n%s", args, r.code, r.stderr)
	}
	return r
}

func TestKMSEnvWithoutService(t *testing.T) {
	dir := t.TempDir()
	r := veilEnv(t, dir, nil, "kms", "env", "--data", filepath.Join(dir, "none"), "--wait", "300ms")
	wantErr(t, r, `no development key service runs on .*none`, `veil kms serve --dev --data .*none &`)
}

func TestEncryptCreatesOutputDirectories(t *testing.T) {
	dir := t.TempDir()
	mustVeil(t, dir, nil, "gen-key", "k")
	os.WriteFile(filepath.Join(dir, "people.csv"), []byte("name,age\n"), 0o644)
	mustVeil(t, dir, nil, "encrypt", "--key", "file:k", "-i", "people.csv", "-o", "data/sub/people.csv")
	if _, err := os.Stat(filepath.Join(dir, "data/sub/people.csv")); err != nil {
		t.Fatal(err)
	}
	// A file where a directory must go: the error names it, not a
	// temporary file.
	os.WriteFile(filepath.Join(dir, "blocker"), nil, 0o644)
	r := veil(t, dir, nil, "encrypt", "--key", "file:k", "-i", "people.csv", "-o", "blocker/people.csv")
	wantErr(t, r, `creating the output directory blocker: not a directory`, "")
	os.Mkdir(filepath.Join(dir, "ro"), 0o555)
	if os.Geteuid() != 0 {
		r = veil(t, dir, nil, "encrypt", "--key", "file:k", "-i", "people.csv", "-o", "ro/people.csv")
		wantErr(t, r, `creating ro/people.csv: permission denied`, "")
	}
}

func TestInspectPlural(t *testing.T) {
	dir := t.TempDir()
	mustVeil(t, dir, nil, "gen-key", "k")
	os.WriteFile(filepath.Join(dir, "a"), []byte("x"), 0o644)
	mustVeil(t, dir, nil, "encrypt", "--key", "file:k", "-i", "a", "-o", "a.sealed")
	r := mustVeil(t, dir, nil, "inspect", "a.sealed")
	if !strings.Contains(string(r.stdout), "(1 segment;") {
		t.Fatalf("inspect:\n%s", r.stdout)
	}
}

func TestKMSUnreachable(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "a"), []byte("x"), 0o644)
	env := []string{"VEIL_KMS_URL=https://127.0.0.1:1", "VEIL_APP_ID=a_00", "VEIL_API_KEY=k"}
	for _, args := range [][]string{
		{"encrypt", "--key", "kms:bob-cmk", "-i", "a", "-o", "a.sealed"},
		{"kms", "key", "list"},
	} {
		r := veilEnv(t, dir, env, args...)
		wantErr(t, r, `the key service at https://127.0.0.1:1 is unreachable: .*connection refused`, `start it .*VEIL_KMS_URL`)
	}
}

func TestKMSFirstHourErrors(t *testing.T) {
	dir := t.TempDir()
	admin := devKMS(t, dir)
	bob := enroll(t, dir, admin, "bob")
	eve := enroll(t, dir, admin, "eve")
	mustEnv(t, dir, bob, "kms", "key", "create", "--name", "bob-cmk")
	os.WriteFile(filepath.Join(dir, "people.csv"), []byte("name,age\nAda,36\n"), 0o644)
	mustEnv(t, dir, bob, "encrypt", "--key", "kms:bob-cmk", "-i", "people.csv", "-o", "data/people.csv")

	t.Run("key not found", func(t *testing.T) {
		r := veilEnv(t, dir, bob, "kms", "key", "describe", "no-such-key")
		wantErr(t, r, `no-such-key`, `veil kms key list`)
		r = veilEnv(t, dir, bob, "encrypt", "--key", "kms:no-such-key", "-i", "people.csv", "-o", "x.sealed")
		wantErr(t, r, `no-such-key`, `veil kms key list`)
	})
	t.Run("another app's file", func(t *testing.T) {
		r := veilEnv(t, dir, eve, "decrypt", "-i", "data/people.csv", "-o", "out.csv")
		wantErr(t, r, `.`, `sealed under key service key k_[0-9a-f]+/v1: only the app that owns it`)
		if strings.Contains(string(r.stderr), "--key file:PATH") {
			t.Errorf("the hint offers a key file for a key service file:\n%s", r.stderr)
		}
		if _, err := os.Stat(filepath.Join(dir, "out.csv")); err == nil {
			t.Error("out.csv written")
		}
	})
	t.Run("policy document syntax", func(t *testing.T) {
		os.WriteFile(filepath.Join(dir, "p.json"), []byte("{\n  \"allow_sim\": true,\n  \"min_svn\" 1\n}\n"), 0o644)
		r := veilEnv(t, dir, bob, "kms", "policy", "create", "--document", "p.json", "--key", "bob-cmk")
		wantErr(t, r, `p.json: JSON syntax error at line 3, column 13`, `fix the JSON`)
	})
	t.Run("wrong CA", func(t *testing.T) {
		other := t.TempDir()
		env2 := devKMS(t, other)
		var ca string
		for _, e := range env2 {
			if v, ok := strings.CutPrefix(e, "VEIL_KMS_CA="); ok {
				ca = v
			}
		}
		r := veilEnv(t, dir, append(append([]string{}, bob...), "VEIL_KMS_CA="+ca), "kms", "key", "list")
		wantErr(t, r, `presented a certificate its CA file does not sign`, `VEIL_KMS_CA`)
	})
	t.Run("service stopped", func(t *testing.T) {
		// A closed port at the same address form as a stopped service.
		env := append(append([]string{}, bob...), "VEIL_KMS_URL=https://127.0.0.1:1")
		r := veilEnv(t, dir, env, "decrypt", "-i", "data/people.csv", "-o", "out.csv")
		wantErr(t, r, `unreachable`, `start it .*VEIL_KMS_URL`)
	})
	t.Run("policy as the admin", func(t *testing.T) {
		r := veilEnv(t, dir, admin, "kms", "policy", "create", "--from-instance", "app", "--key", "bob-cmk", "--allow-sim")
		wantErr(t, r, `policies are managed by the app that owns the key, and no app is set`, `VEIL_APP_ID and VEIL_API_KEY`)
	})
	t.Run("policy replace needs a target", func(t *testing.T) {
		r := veilEnv(t, dir, bob, "kms", "policy", "create", "--mrenclave", strings.Repeat("ab", 32), "--replace")
		wantErr(t, r, `--replace needs --key or --secret`, "")
	})
	t.Run("policy replace", func(t *testing.T) {
		m1, m2 := strings.Repeat("11", 32), strings.Repeat("22", 32)
		mustEnv(t, dir, bob, "kms", "policy", "create", "--name", "job", "--mrenclave", m1, "--key", "bob-cmk")
		r := veilEnv(t, dir, bob, "kms", "policy", "create", "--name", "job", "--mrenclave", m2, "--key", "bob-cmk")
		wantErr(t, r, `a policy named job exists`, `--replace`)
		mustEnv(t, dir, bob, "kms", "policy", "create", "--name", "job", "--mrenclave", m2, "--key", "bob-cmk", "--replace")
		d := mustEnv(t, dir, bob, "kms", "key", "describe", "bob-cmk", "--json")
		pl := mustEnv(t, dir, bob, "kms", "policy", "list")
		if strings.Contains(string(pl.stdout), m1) || !strings.Contains(string(pl.stdout), m2) {
			t.Fatalf("after --replace the policies are:\n%s", pl.stdout)
		}
		if n := strings.Count(string(d.stdout), "\"p_"); n != 1 {
			t.Fatalf("after --replace the key has %d policies:\n%s", n, d.stdout)
		}
	})
	t.Run("build resolves names", func(t *testing.T) {
		veiltest.NeedCommand(t, "mksquashfs")
		var ca string
		for _, e := range admin {
			if v, ok := strings.CutPrefix(e, "VEIL_KMS_CA="); ok {
				ca = v
			}
		}
		mustEnv(t, dir, bob, "new", "app", "--kms", "main", "--mount", "/data=data,key=kms:bob-cmk@main")
		os.WriteFile(filepath.Join(dir, "app", "image", "hello"), []byte("hi\n"), 0o644)
		// Without the owner's credentials the name cannot be resolved.
		r := veilEnv(t, dir, admin, "build", "-C", "app")
		wantErr(t, r, `mounts\[1\]\.key names key "bob-cmk" at kms main by name`, `VEIL_APP_ID and VEIL_API_KEY`)
		// Another app has no such key.
		r = veilEnv(t, dir, eve, "build", "-C", "app")
		wantErr(t, r, `mounts\[1\]\.key: key "bob-cmk" not found at kms main for app a_`, `veil kms key list`)
		b := mustEnv(t, dir, bob, "build", "-C", "app")
		if !regexp.MustCompile(`key bob-cmk@main is k_[0-9a-f]{32}`).Match(b.stderr) {
			t.Fatalf("build did not say the id:\n%s", b.stderr)
		}
		m1 := mustEnv(t, dir, nil, "print", "-C", "app", "mrenclave").stdout
		// The measurement covers the CA certificate's content (veil.json
		// names it by path): another CA at the same path is a change.
		other := t.TempDir()
		env2 := devKMS(t, other)
		var ca2 string
		for _, e := range env2 {
			if v, ok := strings.CutPrefix(e, "VEIL_KMS_CA="); ok {
				ca2 = v
			}
		}
		orig, _ := os.ReadFile(ca)
		pem2, _ := os.ReadFile(ca2)
		os.WriteFile(ca, pem2, 0o644)
		r = veilEnv(t, dir, nil, "verify", "-C", "app")
		os.WriteFile(ca, orig, 0o644)
		wantErr(t, r, `measurement is now`, `ca_cert file`)
		if m2 := mustEnv(t, dir, nil, "print", "-C", "app", "mrenclave").stdout; !bytes.Equal(m1, m2) {
			t.Fatal("measurement changed with the same CA")
		}
	})
}

func TestNewFlagErrors(t *testing.T) {
	dir := t.TempDir()
	r := veilEnv(t, dir, nil, "new", "app", "--kms", "main")
	wantErr(t, r, `--kms main: no address`, `VEIL_KMS_URL`)
	r = veilEnv(t, dir, nil, "new", "app", "--kms", "main=https://127.0.0.1:8443,ca=missing.pem")
	wantErr(t, r, `CA certificate missing.pem: no such file`, "")
	r = veilEnv(t, dir, nil, "new", "app", "--mount", "data=data,key=kms:k@main")
	wantErr(t, r, `mounts\[1\]\.target: "data" is not an absolute path`, `veil new --help`)
	if _, err := os.Stat(filepath.Join(dir, "app")); err == nil {
		t.Fatal("a failed veil new left app/")
	}
	r = veilEnv(t, dir, nil, "new", "app", "--mount", "/data=data,kee=x")
	wantErr(t, r, `unknown option "kee"`, "")
}

func TestConfigErrorsNameThePlace(t *testing.T) {
	dir := t.TempDir()
	mustVeil(t, dir, nil, "new", "app")
	os.WriteFile(filepath.Join(dir, "app", "veil.json"), []byte("{\n  \"entrypoints\": [\"/app/\"],\n  \"kms\": [\n    {\"name\": \"main\" \"address\": \"x\"}\n  ]\n}\n"), 0o644)
	r := veil(t, dir, nil, "build", "-C", "app")
	wantErr(t, r, `JSON syntax error at line 4, column 21`, `docs/config.md`)
	os.WriteFile(filepath.Join(dir, "app", "veil.json"), []byte(`{"entrypoints": ["/app/"], "kms": [{"name": "main", "address": "127.0.0.1:8443", "ca_cert": "ca.pem"}]}`), 0o644)
	r = veil(t, dir, nil, "build", "-C", "app")
	wantErr(t, r, `kms\[0\]\.ca_cert: reading the CA certificate .*app/ca.pem: no such file`, `docs/config.md`)
	os.WriteFile(filepath.Join(dir, "app", "ca.pem"), []byte("not pem"), 0o644)
	r = veil(t, dir, nil, "build", "-C", "app")
	wantErr(t, r, `kms\[0\]\.ca_cert: .*ca.pem holds no PEM certificate`, `docs/config.md`)
}
