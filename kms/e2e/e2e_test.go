// Package e2e drives the built veil binary's key service as a black box:
// a real server process on 127.0.0.1, the CLI as client, kill -9 and
// restarts.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/veil-tee/veil/internal/veiltest"
	"github.com/veil-tee/veil/kms"
	"github.com/veil-tee/veil/kms/client"
)

var veil string

func TestMain(m *testing.M) { veiltest.Main(m, &veil) }

// proc is a running `veil kms serve`.
type proc struct {
	cmd    *exec.Cmd
	env    map[string]string
	stderr *syncBuffer
	done   chan struct{}
}

// serve starts the server and waits for its readiness lines (the export
// lines on standard output).
func serve(t *testing.T, args ...string) *proc {
	t.Helper()
	return serveHome(t, t.TempDir(), args...)
}

// serveHome is serve with the server's VEIL_HOME (where --dev keeps the
// local sim platform) chosen by the caller.
func serveHome(t *testing.T, home string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(veil, append([]string{"kms", "serve", "--listen", "127.0.0.1:0"}, args...)...)
	cmd.Env = append(os.Environ(), "VEIL_HOME="+home)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, env: map[string]string{}, stderr: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	go func() { cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { p.kill() })
	want := 1
	if slices(args, "--dev") {
		want = 3
	}
	timeout := time.After(20 * time.Second)
	for len(p.env) < want {
		select {
		case l, ok := <-lines:
			if !ok {
				<-p.done
				t.Fatalf("server exited before it was ready: %s", p.stderr)
			}
			k, v, _ := strings.Cut(strings.TrimPrefix(l, "export "), "=")
			p.env[k] = v
		case <-timeout:
			t.Fatal("server not ready in 20 s")
		}
	}
	go func() {
		for range lines {
		}
	}()
	return p
}

func slices(args []string, s string) bool {
	for _, a := range args {
		if a == s {
			return true
		}
	}
	return false
}

func (p *proc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

func (p *proc) stop(t *testing.T) {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Fatal("server did not stop on SIGTERM")
	}
}

// run runs the veil CLI with env and returns stdout, stderr and exit code.
func run(t *testing.T, env map[string]string, stdin string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(veil, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "VEIL_HOME=" + t.TempDir()}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

func must(t *testing.T, env map[string]string, stdin string, args ...string) string {
	t.Helper()
	out, errs, code := run(t, env, stdin, args...)
	if code != 0 {
		t.Fatalf("veil %s: exit %d\n%s", strings.Join(args, " "), code, errs)
	}
	return out
}

func merge(a map[string]string, kv ...string) map[string]string {
	m := map[string]string{}
	for k, v := range a {
		m[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

func TestDevServerCLIFlow(t *testing.T) {
	data := t.TempDir()
	p := serve(t, "--dev", "--data", data)
	for _, k := range []string{"VEIL_KMS_URL", "VEIL_KMS_CA", "VEIL_ADMIN_TOKEN"} {
		if p.env[k] == "" {
			t.Fatalf("missing export %s: %v", k, p.env)
		}
	}
	if fi, err := os.Stat(filepath.Join(data, "dev", "admin.token")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin.token: %v %v", fi.Mode(), err)
	}
	// A second server on the same data directory is refused.
	_, errs, code := run(t, nil, "", "kms", "serve", "--dev", "--data", data, "--listen", "127.0.0.1:0")
	if code != 1 || !strings.Contains(errs, "data directory is in use by another process") {
		t.Fatalf("second server: exit %d: %s", code, errs)
	}

	var enr struct {
		AppID  string `json:"app_id"`
		APIKey string `json:"api_key"`
	}
	if err := json.Unmarshal([]byte(must(t, p.env, "", "kms", "enroll", "--name", "bob", "--json")), &enr); err != nil || enr.APIKey == "" {
		t.Fatalf("enroll --json: %v", err)
	}
	bob := merge(p.env, "VEIL_APP_ID", enr.AppID, "VEIL_API_KEY", enr.APIKey)
	must(t, bob, "", "kms", "key", "create", "--name", "bob-cmk")
	// The same settings from a profile file; unknown profile fields are refused.
	prof := filepath.Join(t.TempDir(), "profile.json")
	pj, _ := json.Marshal(map[string]string{"url": p.env["VEIL_KMS_URL"], "ca": p.env["VEIL_KMS_CA"], "app_id": enr.AppID, "api_key": enr.APIKey})
	os.WriteFile(prof, pj, 0o600)
	if out := must(t, nil, "", "kms", "key", "list", "--profile", prof); !strings.Contains(out, "bob-cmk") {
		t.Fatalf("key list via profile: %s", out)
	}
	os.WriteFile(prof, []byte(`{"url":"https://x","colour":"red"}`), 0o600)
	if _, errs, code := run(t, nil, "", "kms", "key", "list", "--profile", prof); code != 1 || !strings.Contains(errs, `"colour"`) {
		t.Fatalf("bad profile: %d %s", code, errs)
	}
	ct := must(t, bob, "people,42\n", "kms", "key", "encrypt", "bob-cmk", "--aad", "people.csv")
	if got := must(t, bob, ct, "kms", "key", "decrypt", "--aad", "people.csv"); got != "people,42\n" {
		t.Fatalf("decrypt: %q", got)
	}
	if _, _, code := run(t, bob, ct, "kms", "key", "decrypt", "--aad", "other"); code != 3 {
		t.Fatalf("wrong aad exit %d, want 3 (integrity)", code)
	}
	must(t, bob, "", "kms", "policy", "create", "--name", "prod", "--key", "bob-cmk", "--mrenclave", strings.Repeat("ab", 32), "--min-svn", "1")
	_, errs, code = run(t, bob, "", "kms", "policy", "create", "--from-instance", t.TempDir(), "--key", "bob-cmk")
	if code != 1 || !strings.Contains(errs, "not a veil instance") {
		t.Fatalf("--from-instance of a directory without veil.json: exit %d %s", code, errs)
	}
	// alice cannot use bob's key.
	if err := json.Unmarshal([]byte(must(t, p.env, "", "kms", "enroll", "--name", "alice", "--json")), &enr); err != nil {
		t.Fatal(err)
	}
	alice := merge(p.env, "VEIL_APP_ID", enr.AppID, "VEIL_API_KEY", enr.APIKey)
	if _, errs, code := run(t, alice, ct, "kms", "key", "decrypt", "--aad", "people.csv"); code != 1 || !strings.Contains(errs, "key_not_found") {
		t.Fatalf("alice decrypts bob's data: exit %d %s", code, errs)
	}
	// Apps cannot read the audit log; the admin can, and it verifies.
	if _, _, code := run(t, merge(bob, "VEIL_ADMIN_TOKEN", ""), "", "kms", "audit", "list"); code == 0 {
		t.Fatal("app read the audit log")
	}
	// The admin cannot give its own workload access to bob's key: the
	// attach step of this sequence is refused.
	bobID := bob["VEIL_APP_ID"]
	_, errs, code = run(t, p.env, "", "kms", "policy", "create", "--app", bobID, "--key", "bob-cmk", "--mrenclave", strings.Repeat("e1", 32), "--allow-sim")
	if code != 1 || !strings.Contains(errs, "attaching it to key bob-cmk") || !strings.Contains(errs, "forbidden") {
		t.Fatalf("admin attaches a policy to bob's key: exit %d %s", code, errs)
	}
	out := must(t, p.env, "", "kms", "audit", "verify")
	if !strings.Contains(out, "audit log intact") {
		t.Fatalf("verify: %s", out)
	}
	cpFile := filepath.Join(t.TempDir(), "checkpoint.json")
	os.WriteFile(cpFile, []byte(must(t, p.env, "", "kms", "audit", "checkpoint")), 0o600)
	if out := must(t, p.env, "", "kms", "audit", "verify", "--checkpoint", cpFile); !strings.Contains(out, "audit log intact") {
		t.Fatalf("verify --checkpoint: %s", out)
	}
	cpb, _ := os.ReadFile(cpFile)
	os.WriteFile(cpFile, []byte(strings.Replace(string(cpb), `"seq": `, `"seq": 1`, 1)), 0o600)
	if _, errs, code := run(t, p.env, "", "kms", "audit", "verify", "--checkpoint", cpFile); code == 0 || !strings.Contains(errs, "invalid audit checkpoint") {
		t.Fatalf("verify with an edited checkpoint: exit %d %s", code, errs)
	}
	// bob rotates its own API key; the old one is refused at once.
	var rot struct {
		APIKey string `json:"api_key"`
	}
	if err := json.Unmarshal([]byte(must(t, merge(bob, "VEIL_ADMIN_TOKEN", ""), "", "kms", "app", "rotate-key", bobID, "--json")), &rot); err != nil || rot.APIKey == "" {
		t.Fatalf("rotate-key: %v", err)
	}
	if _, errs, code := run(t, bob, "", "kms", "key", "list"); code != 1 || !strings.Contains(errs, "bad_signature") {
		t.Fatalf("old API key after rotation: exit %d %s", code, errs)
	}
	bob = merge(bob, "VEIL_API_KEY", rot.APIKey)
	// Restart keeps everything.
	p.stop(t)
	p = serve(t, "--dev", "--data", data)
	bob = merge(p.env, "VEIL_APP_ID", bob["VEIL_APP_ID"], "VEIL_API_KEY", bob["VEIL_API_KEY"])
	if got := must(t, bob, ct, "kms", "key", "decrypt", "--aad", "people.csv"); got != "people,42\n" {
		t.Fatalf("decrypt after restart: %q", got)
	}
	if out := must(t, p.env, "", "kms", "audit", "list", "--json"); !strings.Contains(out, "key.policy.attach") {
		t.Fatalf("audit after restart lacks entries")
	}
	// The admin disables bob: every request bob signs is refused at once.
	must(t, p.env, "", "kms", "app", "disable", bob["VEIL_APP_ID"])
	if _, errs, code := run(t, bob, "", "kms", "key", "list"); code == 0 || !strings.Contains(errs, "app_disabled") {
		t.Fatalf("disabled app lists its keys: exit %d %s", code, errs)
	}
	// Logs never hold the API key or token.
	if s := p.stderr.String(); strings.Contains(s, enr.APIKey) || strings.Contains(s, rot.APIKey) || strings.Contains(s, p.env["VEIL_ADMIN_TOKEN"]) {
		t.Fatal("server log holds a credential")
	}
}

func TestSealedServerShares(t *testing.T) {
	data := t.TempDir()
	out := must(t, nil, "", "kms", "init", "--data", data, "--shares", "3", "--threshold", "2", "--json")
	var ini struct {
		Shares     []string `json:"shares"`
		AdminToken string   `json:"admin_token"`
	}
	if err := json.Unmarshal([]byte(out), &ini); err != nil || len(ini.Shares) != 3 {
		t.Fatalf("init: %v %s", err, out)
	}
	if _, errs, code := run(t, nil, "", "kms", "init", "--data", data, "--shares", "3", "--threshold", "2"); code != 1 || !strings.Contains(errs, "already initialized") {
		t.Fatalf("second init: %d %s", code, errs)
	}
	certs, err := kms.NewDevCertificates([]string{"127.0.0.1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for n, b := range map[string][]byte{"cert.pem": certs.CertPEM, "key.pem": certs.KeyPEM, "ca.pem": certs.CAPEM} {
		os.WriteFile(filepath.Join(dir, n), b, 0o600)
	}
	p := serve(t, "--data", data, "--tls-cert", filepath.Join(dir, "cert.pem"), "--tls-key", filepath.Join(dir, "key.pem"))
	env := merge(p.env, "VEIL_KMS_CA", filepath.Join(dir, "ca.pem"), "VEIL_ADMIN_TOKEN", ini.AdminToken)
	if out := must(t, env, "", "kms", "status"); !strings.Contains(out, "sealed (0 of 2") {
		t.Fatalf("status: %s", out)
	}
	_, errs, code := run(t, env, "", "kms", "enroll", "--name", "bob")
	if code != 1 || !strings.Contains(errs, "(sealed)") || !strings.Contains(errs, "hint: unseal") {
		t.Fatalf("enroll while sealed: %d %s", code, errs)
	}
	must(t, env, ini.Shares[2]+"\n", "kms", "unseal")
	// A share on the command line (visible in ps) is refused unsent.
	if _, errs, code := run(t, env, "", "kms", "unseal", ini.Shares[0]); code != 2 || !strings.Contains(errs, "hint: pipe it in") {
		t.Fatalf("share on the command line: %d %s", code, errs)
	}
	if out := must(t, env, "", "kms", "status"); !strings.Contains(out, "sealed (1 of 2") {
		t.Fatalf("status after a refused argv share: %s", out)
	}
	shareFile := filepath.Join(dir, "share.txt")
	os.WriteFile(shareFile, []byte(ini.Shares[0]+"\n"), 0o600)
	if out := must(t, env, "", "kms", "unseal", "--share-file", shareFile); !strings.Contains(out, "unsealed") {
		t.Fatalf("unseal: %s", out)
	}
	must(t, env, "", "kms", "enroll", "--name", "bob")
	// A restart seals it again.
	p.stop(t)
	p = serve(t, "--data", data, "--tls-cert", filepath.Join(dir, "cert.pem"), "--tls-key", filepath.Join(dir, "key.pem"))
	env = merge(env, "VEIL_KMS_URL", p.env["VEIL_KMS_URL"])
	if out := must(t, env, "", "kms", "status"); !strings.Contains(out, "sealed (0 of 2") {
		t.Fatalf("status after restart: %s", out)
	}
}

// TestKill9LosesNoAcknowledgedWrite writes secrets from several clients,
// kills the server with SIGKILL mid-load, restarts it and checks that every
// write the server acknowledged is there and the audit chain verifies.
func TestKill9LosesNoAcknowledgedWrite(t *testing.T) {
	data := t.TempDir()
	p := serve(t, "--dev", "--data", data)
	ca, _ := os.ReadFile(p.env["VEIL_KMS_CA"])
	adm, err := client.New(client.Config{URL: p.env["VEIL_KMS_URL"], CAPEM: ca, AdminToken: p.env["VEIL_ADMIN_TOKEN"]})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	enr, err := adm.Enroll(ctx, "writer")
	if err != nil {
		t.Fatal(err)
	}
	app, _ := client.New(client.Config{URL: p.env["VEIL_KMS_URL"], CAPEM: ca, AppID: enr.AppID, APIKey: enr.APIKey, Timeout: 5 * time.Second})
	var mu sync.Mutex
	acked := map[string]bool{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 5000; i++ { // bounded
				select {
				case <-stop:
					return
				default:
				}
				name := fmt.Sprintf("w%d-%d", w, i)
				if _, err := app.PutSecret(ctx, name, []byte(name), ""); err != nil {
					return // the server is gone
				}
				mu.Lock()
				acked[name] = true
				mu.Unlock()
			}
		}()
	}
	time.Sleep(1500 * time.Millisecond)
	p.kill()
	close(stop)
	wg.Wait()
	app.Close()
	if len(acked) < 10 {
		t.Fatalf("only %d writes acknowledged before the kill", len(acked))
	}
	p = serve(t, "--dev", "--data", data)
	app, _ = client.New(client.Config{URL: p.env["VEIL_KMS_URL"], CAPEM: ca, AppID: enr.AppID, APIKey: enr.APIKey})
	defer app.Close()
	l, err := app.ListSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, s := range l.Secrets {
		have[s.Name] = true
	}
	lost := 0
	for n := range acked {
		if !have[n] {
			lost++
		}
	}
	t.Logf("%d writes acknowledged before kill -9, %d present after restart, %d lost", len(acked), len(have), lost)
	if lost > 0 {
		t.Fatalf("%d acknowledged writes lost", lost)
	}
	adm, _ = client.New(client.Config{URL: p.env["VEIL_KMS_URL"], CAPEM: ca, AdminToken: p.env["VEIL_ADMIN_TOKEN"]})
	defer adm.Close()
	probs, _, err := adm.VerifyAudit(ctx)
	if err != nil || len(probs) != 0 {
		t.Fatalf("audit after kill -9: %v %v", probs, err)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
