package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/veil-tee/veil/internal/pgtest"
	"github.com/veil-tee/veil/kms"
	"github.com/veil-tee/veil/kms/client"
)

// TestReplicaBinariesFailOverUnderKill9 runs two `veil kms serve --store`
// processes on one PostgreSQL database, unseals each separately, writes
// through a client that knows both, kills one with SIGKILL under load and
// checks that the client carried on with the other, that no acknowledged
// write was lost and that the audit chain verifies.
func TestReplicaBinariesFailOverUnderKill9(t *testing.T) {
	pg := pgtest.Start(t)
	url := pg.NewDatabase(t)
	out := must(t, nil, "", "kms", "init", "--store", url, "--shares", "3", "--threshold", "2", "--json")
	var ini struct {
		Shares     []string `json:"shares"`
		AdminToken string   `json:"admin_token"`
	}
	if err := json.Unmarshal([]byte(out), &ini); err != nil || len(ini.Shares) != 3 {
		t.Fatalf("init: %v %s", err, out)
	}
	if _, errs, code := run(t, nil, "", "kms", "init", "--store", url); code != 1 || !strings.Contains(errs, "already initialized") {
		t.Fatalf("second init on the database: %d %s", code, errs)
	}
	certs, err := kms.NewDevCertificates([]string{"127.0.0.1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for n, b := range map[string][]byte{"cert.pem": certs.CertPEM, "key.pem": certs.KeyPEM, "ca.pem": certs.CAPEM} {
		os.WriteFile(filepath.Join(dir, n), b, 0o600)
	}
	caPath := filepath.Join(dir, "ca.pem")
	var ps []*proc
	var urls []string
	for i := range 2 {
		p := serve(t, "--store", url, "--tls-cert", filepath.Join(dir, "cert.pem"), "--tls-key", filepath.Join(dir, "key.pem"))
		env := merge(p.env, "VEIL_KMS_CA", caPath)
		// Each replica is unsealed on its own.
		if out := must(t, env, "", "kms", "status"); !strings.Contains(out, "sealed (0 of 2") {
			t.Fatalf("replica %d status: %s", i, out)
		}
		must(t, env, ini.Shares[i]+"\n", "kms", "unseal")
		must(t, env, ini.Shares[2]+"\n", "kms", "unseal")
		ps, urls = append(ps, p), append(urls, p.env["VEIL_KMS_URL"])
	}
	both := strings.Join(urls, ",")
	env := map[string]string{"VEIL_KMS_URL": both, "VEIL_KMS_CA": caPath, "VEIL_ADMIN_TOKEN": ini.AdminToken}
	_, errs, code := run(t, env, "", "kms", "-v", "enroll", "--name", "writer")
	host0 := strings.TrimPrefix(urls[0], "https://")
	if code != 0 || !strings.Contains(errs, "answered by "+host0) {
		t.Fatalf("enroll through both addresses: %d %s", code, errs)
	}
	ca, _ := os.ReadFile(caPath)
	adm, err := client.New(client.Config{URL: both, CAPEM: ca, AdminToken: ini.AdminToken})
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	ctx := context.Background()
	enr, err := adm.Enroll(ctx, "loader")
	if err != nil {
		t.Fatal(err)
	}
	app, err := client.New(client.Config{URL: both, CAPEM: ca, AppID: enr.AppID, APIKey: enr.APIKey, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()

	var mu sync.Mutex
	acked := map[string]bool{}
	var afterKill, failed atomic.Int64
	var killed atomic.Bool
	stop := make(chan struct{})
	var wg sync.WaitGroup
	start := time.Now()
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1_000_000; i++ { // bounded
				select {
				case <-stop:
					return
				default:
				}
				name := fmt.Sprintf("w%d-%d", w, i)
				if _, err := app.PutSecret(ctx, name, []byte(name), ""); err != nil {
					// In flight when the replica died: the outcome is
					// unknown, so it is neither acknowledged nor retried.
					failed.Add(1)
					continue
				}
				mu.Lock()
				acked[name] = true
				mu.Unlock()
				if killed.Load() {
					afterKill.Add(1)
				}
			}
		}()
	}
	phase := 1500 * time.Millisecond
	if v := os.Getenv("VEIL_KMS_CRASH_PHASE"); v != "" { // scripts/kms-campaign.sh
		if phase, err = time.ParseDuration(v); err != nil {
			t.Fatalf("VEIL_KMS_CRASH_PHASE: %v", err)
		}
	}
	time.Sleep(phase)
	ps[0].kill()
	killed.Store(true)
	time.Sleep(phase)
	close(stop)
	wg.Wait()
	elapsed := time.Since(start)
	t.Logf("%d writes acknowledged in %s (%.0f/s) by two replicas then one; %d after the kill -9; %d in flight at the kill",
		len(acked), elapsed.Round(time.Millisecond), float64(len(acked))/elapsed.Seconds(), afterKill.Load(), failed.Load())
	if afterKill.Load() == 0 {
		t.Fatal("no write was acknowledged after the first replica was killed: the client did not fail over")
	}
	if failed.Load() > 16 { // 4 writers: each in-flight request and kept-alive connection to the killed replica
		t.Fatalf("%d writes failed: more than the ones in flight at the kill", failed.Load())
	}
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
	if lost > 0 {
		t.Fatalf("%d acknowledged writes lost", lost)
	}
	probs, h, err := adm.VerifyAudit(ctx)
	if err != nil || len(probs) != 0 || h.Damaged != "" {
		t.Fatalf("audit after kill -9 of a replica: %v %+v %v", probs, h, err)
	}
	// The killed replica comes back sealed and reads the same store.
	p := serve(t, "--store", url, "--tls-cert", filepath.Join(dir, "cert.pem"), "--tls-key", filepath.Join(dir, "key.pem"))
	env0 := merge(p.env, "VEIL_KMS_CA", caPath)
	must(t, env0, ini.Shares[0]+"\n", "kms", "unseal")
	must(t, env0, ini.Shares[1]+"\n", "kms", "unseal")
	again, _ := client.New(client.Config{URL: p.env["VEIL_KMS_URL"], CAPEM: ca, AppID: enr.AppID, APIKey: enr.APIKey})
	defer again.Close()
	if l2, err := again.ListSecrets(ctx); err != nil || len(l2.Secrets) != len(l.Secrets) {
		t.Fatalf("restarted replica lists %d secrets (%v), want %d", len(l2.Secrets), err, len(l.Secrets))
	}
}

// TestStoreFlagErrors: what serve and init say about a missing or unusable
// --store.
func TestStoreFlagErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"kms", "serve"}, 2, "--data or --store is required"},
		{[]string{"kms", "serve", "--store", "mysql://db/kms"}, 2, "--store must be a postgres:// URL"},
		{[]string{"kms", "serve", "--dev", "--store", "postgres://127.0.0.1:1/kms"}, 2, "--dev needs --data"},
		{[]string{"kms", "init", "--data", "x", "--store", "postgres://127.0.0.1:1/kms"}, 2, "one of --data and --store"},
		{[]string{"kms", "init", "--store", "postgres://veil:pw-not-shown@127.0.0.1:1/kms?connect_timeout=2"}, 1, "hint: check that the database in --store is reachable"},
	} {
		_, errs, code := run(t, nil, "", c.args...)
		if code != c.code || !strings.Contains(errs, c.want) || strings.Count(strings.TrimSpace(errs), "\n") > 1 || strings.Contains(errs, "pw-not-shown") {
			t.Errorf("veil %s: exit %d, %q; want exit %d and %q", strings.Join(c.args, " "), code, errs, c.code, c.want)
		}
	}
}
