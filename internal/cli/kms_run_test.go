package cli

// In-process tests of the kms verbs' run functions, without cobra: a
// development key service served by kmsServeOptions.run on loopback, and
// the client verbs called directly against it.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/veil-tee/veil/kms/api"
	"github.com/veil-tee/veil/kms/audit"
	devkms "github.com/veil-tee/veil/kms/dev"
)

// devService runs `veil kms serve --dev` in this process on a loopback
// port and returns the client settings of its admin; it stops with the
// test.
func devService(t *testing.T) *kmsOpts {
	t.Helper()
	home := t.TempDir()
	t.Setenv("VEIL_HOME", home)
	for _, v := range []string{"VEIL_KMS_URL", "VEIL_KMS_CA", "VEIL_ADMIN_TOKEN", "VEIL_APP_ID", "VEIL_API_KEY", "VEIL_KMS_PROFILE"} {
		t.Setenv(v, "")
	}
	data := filepath.Join(home, "kms")
	ctx, cancel := context.WithCancel(context.Background())
	var serveOut, serveErr bytes.Buffer
	done := make(chan error, 1)
	s := &kmsServeOptions{dataDir: data, listen: "127.0.0.1:0", logLevel: "error", dev: true}
	go func() { done <- s.run(ctx, &Env{Stdout: &serveOut, Stderr: &serveErr}) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v\n%s", err, serveErr.String())
			}
		case <-time.After(30 * time.Second):
			t.Error("serve did not stop")
		}
		if _, err := os.Stat(filepath.Join(data, "dev", devkms.EnvFile)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the env file outlived the service: %v", err)
		}
	})
	// veil kms env waits for the service and prints its settings.
	var out bytes.Buffer
	if err := (&kmsEnvOptions{dataDir: data, wait: 30 * time.Second}).run(ctx, &Env{Stdout: &out}); err != nil {
		t.Fatalf("kms env: %v", err)
	}
	lines := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		k, v, _ := strings.Cut(strings.TrimPrefix(l, "export "), "=")
		lines[k] = v
	}
	if !strings.HasPrefix(lines["VEIL_KMS_URL"], "https://127.0.0.1:") || lines["VEIL_ADMIN_TOKEN"] == "" {
		t.Fatalf("kms env printed:\n%s", out.String())
	}
	return &kmsOpts{url: lines["VEIL_KMS_URL"], ca: lines["VEIL_KMS_CA"],
		adminTokenFile: filepath.Join(data, "dev", devkms.AdminTokenFile), timeout: 10 * time.Second}
}

// call runs a verb's run function with stdin and returns its standard
// output and error.
func call(t *testing.T, run func(context.Context, *Env) error, stdin string) (string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	err := run(context.Background(), &Env{Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &errb})
	return out.String(), err
}

// asApp enrolls an app through the enroll verb and returns its settings.
func asApp(t *testing.T, admin *kmsOpts, name string) *kmsOpts {
	t.Helper()
	ao := *admin
	ao.json = true
	out, err := call(t, (&kmsEnrollOptions{kmsOpts: &ao, name: name}).run, "")
	if err != nil {
		t.Fatalf("enroll: %v", err)
	}
	var enr api.EnrollResponse
	if err := json.Unmarshal([]byte(out), &enr); err != nil {
		t.Fatalf("enroll --json: %v\n%s", err, out)
	}
	keyFile := filepath.Join(t.TempDir(), "api.key")
	if err := os.WriteFile(keyFile, []byte(enr.APIKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return &kmsOpts{url: admin.url, ca: admin.ca, appID: enr.AppID, apiKeyFile: keyFile, timeout: admin.timeout}
}

func TestKMSRunFunctions(t *testing.T) {
	admin := devService(t)
	if out, err := call(t, (&kmsStatusOptions{admin}).run, ""); err != nil || out != "unsealed\n" {
		t.Fatalf("status: %q, %v", out, err)
	}
	bob := asApp(t, admin, "bob")

	// A key, and a round trip through encrypt and decrypt.
	out, err := call(t, (&keyCreateOptions{kmsOpts: bob, name: "cmk", spec: api.SpecAES256GCM}).run, "")
	if err != nil || !strings.Contains(out, " cmk ") || !strings.Contains(out, "AES_256_GCM") {
		t.Fatalf("key create: %v\n%s", err, out)
	}
	ct, err := call(t, (&keyEncryptOptions{kmsOpts: bob, key: "cmk", aad: "ctx"}).run, "the plaintext")
	if err != nil {
		t.Fatalf("key encrypt: %v", err)
	}
	pt, err := call(t, (&keyDecryptOptions{kmsOpts: bob, aad: "ctx"}).run, ct)
	if err != nil || pt != "the plaintext" {
		t.Fatalf("key decrypt: %q, %v", pt, err)
	}
	// Other additional data: the service refuses, and the exit code says
	// the data failed authentication.
	_, err = call(t, (&keyDecryptOptions{kmsOpts: bob, aad: "other"}).run, ct)
	if code := exitCode(err); code != ExitIntegrity {
		t.Fatalf("decrypt with other aad: exit %d, %v; want %d", code, err, ExitIntegrity)
	}

	// Secrets: put from standard input, get the value back.
	if _, err := call(t, (&secretPutOptions{kmsOpts: bob, name: "db"}).run, "s3cret"); err != nil {
		t.Fatalf("secret put: %v", err)
	}
	if v, err := call(t, (&secretGetOptions{kmsOpts: bob, secret: "db"}).run, ""); err != nil || v != "s3cret" {
		t.Fatalf("secret get: %q, %v", v, err)
	}

	// A policy attached at creation shows on the key.
	pol := &policyCreateOptions{policyOpts: &policyOpts{kmsOpts: bob}, name: "p1", keyRef: "cmk"}
	pol.doc.Measurements = []string{strings.Repeat("ab", 32)}
	if out, err := call(t, pol.run, ""); err != nil || !strings.Contains(out, " p1 ") {
		t.Fatalf("policy create: %v\n%s", err, out)
	}
	if out, err := call(t, (&keyDescribeOptions{kmsOpts: bob, key: "cmk"}).run, ""); err != nil || !strings.Contains(out, "policy ") {
		t.Fatalf("key describe: %v\n%s", err, out)
	}
}

// The run functions give the same errors, hints and exit codes as the
// command line.
func TestKMSRunFunctionErrors(t *testing.T) {
	admin := devService(t)
	// Usage errors come before any call.
	_, err := call(t, (&kmsEnrollOptions{kmsOpts: admin}).run, "")
	if exitCode(err) != ExitUsage || err.Error() != "--name is required" {
		t.Fatalf("enroll without --name: exit %d, %v", exitCode(err), err)
	}
	// A grace period outside 1-30 days is refused, not taken as the default.
	for _, d := range []int{0, 31} {
		_, err = call(t, (&keyScheduleDeletionOptions{kmsOpts: admin, key: "k", days: d}).run, "")
		if exitCode(err) != ExitUsage || !strings.Contains(err.Error(), "--days must be 1 to 30") {
			t.Fatalf("schedule-deletion --days %d: exit %d, %v", d, exitCode(err), err)
		}
	}
	// Policies without an app name their hint.
	_, err = call(t, (&policyListOptions{&policyOpts{kmsOpts: admin}}).run, "")
	var ce *Error
	if !errors.As(err, &ce) || !strings.Contains(ce.Hint, "VEIL_APP_ID") {
		t.Fatalf("policy list as the admin without --app: %v", err)
	}
	// An unknown key carries the key service's hint.
	bob := asApp(t, admin, "bob")
	_, err = call(t, (&keyDescribeOptions{kmsOpts: bob, key: "nope"}).run, "")
	if !errors.As(err, &ce) || !strings.Contains(ce.Hint, "veil kms key list") {
		t.Fatalf("describe an unknown key: %v", err)
	}
	// A service nobody listens on: unreachable, with the hint to start one.
	gone := *bob
	gone.url = "https://127.0.0.1:1"
	_, err = call(t, (&keyListOptions{&gone}).run, "")
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "is unreachable") || !strings.Contains(ce.Hint, "veil kms serve --dev") {
		t.Fatalf("unreachable service: %v", err)
	}
}

// A checkpoint printed by the checkpoint verb verifies with audit verify
// --checkpoint; one edited by hand is refused.
func TestKMSRunAuditCheckpoint(t *testing.T) {
	admin := devService(t)
	asApp(t, admin, "bob") // an audited operation
	cp, err := call(t, (&auditCheckpointOptions{admin}).run, "")
	if err != nil {
		t.Fatalf("audit checkpoint: %v", err)
	}
	file := filepath.Join(t.TempDir(), "cp.json")
	if err := os.WriteFile(file, []byte(cp), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := call(t, (&auditVerifyOptions{kmsOpts: admin, checkpointFile: file}).run, "")
	if err != nil || !strings.HasPrefix(out, "audit log intact: ") {
		t.Fatalf("audit verify --checkpoint: %v\n%s", err, out)
	}
	// The same checkpoint naming another head hash: its signature no
	// longer holds, and the verb reports a broken log.
	var c audit.Checkpoint
	if err := json.Unmarshal([]byte(cp), &c); err != nil {
		t.Fatalf("checkpoint is not JSON: %v\n%s", err, cp)
	}
	h := []byte(c.Hash)
	h[0] = "01"[btoi(h[0] == '0')]
	c.Hash = string(h)
	forged, _ := json.Marshal(c)
	if err := os.WriteFile(file, []byte(forged), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = call(t, (&auditVerifyOptions{kmsOpts: admin, checkpointFile: file}).run, "")
	t.Logf("forged checkpoint: %v", err)
	if exitCode(err) != ExitIntegrity {
		t.Fatalf("forged checkpoint: exit %d, %v; want %d", exitCode(err), err, ExitIntegrity)
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
