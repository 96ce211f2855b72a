package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/veil-tee/veil/internal/kmsload"
	"github.com/veil-tee/veil/internal/pgtest"
	"github.com/veil-tee/veil/kms"
	"github.com/veil-tee/veil/kms/client"
)

// envInt reads a campaign size from the environment (scripts/kms-*.sh set
// them), or returns def.
func envInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("%s: %q is not a positive number", name, v)
	}
	return n
}

func envDuration(t *testing.T, name string, def time.Duration) time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return d
}

// ledger is what the clients were told: acknowledged secrets, keys and data
// keys (ciphertext and the plaintext it must decrypt to), and the writes
// whose outcome is unknown because the server died while they were in
// flight.
type ledger struct {
	mu        sync.Mutex
	secrets   map[string]bool
	keys      map[string]bool
	dataKeys  map[string][]byte // ciphertext -> plaintext
	unsureSec []string
	unsureKey []string
	acked     atomic.Int64
	releases  atomic.Int64
}

func newLedger() *ledger {
	return &ledger{secrets: map[string]bool{}, keys: map[string]bool{}, dataKeys: map[string][]byte{}}
}

// work runs one writer until stop: secret writes, key creations and
// releases (generate a data key, decrypt it again), in turn.
func (l *ledger) work(ctx context.Context, app *client.Client, keyID, prefix string, stop <-chan struct{}) {
	for i := 0; i < 1_000_000; i++ { // bounded
		select {
		case <-stop:
			return
		default:
		}
		name := fmt.Sprintf("%s-%d", prefix, i)
		switch i % 3 {
		case 0:
			if _, err := app.PutSecret(ctx, name, []byte(name), ""); err != nil {
				l.mu.Lock()
				l.unsureSec = append(l.unsureSec, name)
				l.mu.Unlock()
				return // the server is gone
			}
			l.mu.Lock()
			l.secrets[name] = true
			l.mu.Unlock()
		case 1:
			if _, err := app.CreateKey(ctx, name, "", ""); err != nil {
				l.mu.Lock()
				l.unsureKey = append(l.unsureKey, name)
				l.mu.Unlock()
				return
			}
			l.mu.Lock()
			l.keys[name] = true
			l.mu.Unlock()
		case 2:
			dk, err := app.GenerateDataKey(ctx, keyID, 32, nil)
			if err != nil {
				return
			}
			if _, err := app.Decrypt(ctx, dk.Ciphertext, nil); err != nil {
				return
			}
			l.releases.Add(1)
			l.mu.Lock()
			if len(l.dataKeys) < 2000 {
				l.dataKeys[string(dk.Ciphertext)] = dk.Plaintext
			}
			l.mu.Unlock()
		}
		l.acked.Add(1)
	}
}

// check verifies that every acknowledged write is there, sorts the
// in-flight writes into landed and not landed, and returns those counts.
func (l *ledger) check(t *testing.T, ctx context.Context, app *client.Client) (landed, notLanded int) {
	t.Helper()
	ls, err := app.ListSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	lk, err := app.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	haveS, haveK := map[string]bool{}, map[string]bool{}
	for _, s := range ls.Secrets {
		haveS[s.Name] = true
	}
	for _, k := range lk.Keys {
		haveK[k.Name] = true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	lost := 0
	for n := range l.secrets {
		if !haveS[n] {
			lost++
		}
	}
	for n := range l.keys {
		if !haveK[n] {
			lost++
		}
	}
	if lost > 0 {
		t.Fatalf("%d acknowledged writes lost", lost)
	}
	n := 0
	for ct, pt := range l.dataKeys {
		if n++; n > 50 {
			break
		}
		r, err := app.Decrypt(ctx, []byte(ct), nil)
		if err != nil || !bytes.Equal(r.Plaintext, pt) {
			t.Fatalf("a data key released before the kill does not decrypt after it: %v", err)
		}
	}
	for _, s := range l.unsureSec {
		if haveS[s] {
			landed++
		} else {
			notLanded++
		}
	}
	for _, k := range l.unsureKey {
		if haveK[k] {
			landed++
		} else {
			notLanded++
		}
	}
	// An in-flight write that landed is acknowledged from now on.
	for _, s := range l.unsureSec {
		l.secrets[s] = haveS[s]
	}
	for _, k := range l.unsureKey {
		l.keys[k] = haveK[k]
	}
	for n, ok := range l.secrets {
		if !ok {
			delete(l.secrets, n)
		}
	}
	for n, ok := range l.keys {
		if !ok {
			delete(l.keys, n)
		}
	}
	l.unsureSec, l.unsureKey = nil, nil
	return landed, notLanded
}

// TestEmbeddedKill9Cycles kills `veil kms serve` (bbolt store) with
// SIGKILL under a write and release load, cycle after cycle: after every
// restart each acknowledged secret and key is there, released data keys
// still decrypt, and `veil kms audit verify` passes. VEIL_KMS_CYCLES sets
// the number of cycles (scripts/kms-crash-embedded.sh: 200).
func TestEmbeddedKill9Cycles(t *testing.T) {
	cycles := envInt(t, "VEIL_KMS_CYCLES", 6)
	writers := envInt(t, "VEIL_KMS_WRITERS", 4)
	data := t.TempDir()
	p := serve(t, "--dev", "--data", data)
	ca, _ := os.ReadFile(p.env["VEIL_KMS_CA"])
	ctx := context.Background()
	adm, err := client.New(client.Config{URL: p.env["VEIL_KMS_URL"], CAPEM: ca, AdminToken: p.env["VEIL_ADMIN_TOKEN"]})
	if err != nil {
		t.Fatal(err)
	}
	enr, err := adm.Enroll(ctx, "writer")
	adm.Close()
	if err != nil {
		t.Fatal(err)
	}
	newApp := func(p *proc) *client.Client {
		c, err := client.New(client.Config{URL: p.env["VEIL_KMS_URL"], CAPEM: ca, AppID: enr.AppID, APIKey: enr.APIKey, Timeout: 5 * time.Second, Retries: 1})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	app := newApp(p)
	k, err := app.CreateKey(ctx, "release", "", "")
	if err != nil {
		t.Fatal(err)
	}
	app.Close()
	l := newLedger()
	var landed, notLanded int
	start := time.Now()
	for c := range cycles {
		app := newApp(p)
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				l.work(ctx, app, k.ID, fmt.Sprintf("c%d-w%d", c, w), stop)
			}()
		}
		time.Sleep(time.Duration(200+rand.IntN(400)) * time.Millisecond)
		p.kill()
		close(stop)
		wg.Wait()
		app.Close()
		p = serve(t, "--dev", "--data", data)
		app = newApp(p)
		a, b := l.check(t, ctx, app)
		app.Close()
		landed, notLanded = landed+a, notLanded+b
		if out, errs, code := run(t, p.env, "", "kms", "audit", "verify"); code != 0 {
			t.Fatalf("cycle %d: audit verify after kill -9: exit %d\n%s%s", c, code, out, errs)
		}
	}
	p.stop(t)
	t.Logf("%d kill -9 cycles in %s: %d operations acknowledged (%d releases), %d secrets and %d keys checked, 0 lost; in flight at the kill: %d landed, %d not",
		cycles, time.Since(start).Round(time.Second), l.acked.Load(), l.releases.Load(), len(l.secrets), len(l.keys), landed, notLanded)
	if l.acked.Load() < int64(cycles) {
		t.Fatalf("only %d operations acknowledged in %d cycles", l.acked.Load(), cycles)
	}
}

// replicaSet is N `veil kms serve --store` processes on one PostgreSQL
// database, each on a fixed loopback port so that a restarted replica is
// found at the same address.
type replicaSet struct {
	t      *testing.T
	pg     *pgtest.Server
	store  string
	dir    string
	shares []string
	admin  string
	ca     []byte
	ports  []int
	ps     []*proc
	extra  func(i int) []string // more arguments of replica i's serve
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func startReplicas(t *testing.T, n int) *replicaSet { return startReplicasWith(t, n, nil) }

// startReplicasWith is startReplicas with extra arguments for each
// replica's serve (nil: none).
func startReplicasWith(t *testing.T, n int, extra func(i int) []string) *replicaSet {
	r := &replicaSet{t: t, pg: pgtest.Start(t), dir: t.TempDir(), extra: extra}
	r.store = r.pg.NewDatabase(t)
	out := must(t, nil, "", "kms", "init", "--store", r.store, "--shares", "3", "--threshold", "2", "--json")
	var ini struct {
		Shares     []string `json:"shares"`
		AdminToken string   `json:"admin_token"`
	}
	if err := json.Unmarshal([]byte(out), &ini); err != nil || len(ini.Shares) != 3 {
		t.Fatalf("init: %v %s", err, out)
	}
	r.shares, r.admin = ini.Shares, ini.AdminToken
	certs, err := kms.NewDevCertificates([]string{"127.0.0.1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for f, b := range map[string][]byte{"cert.pem": certs.CertPEM, "key.pem": certs.KeyPEM, "ca.pem": certs.CAPEM} {
		if err := os.WriteFile(filepath.Join(r.dir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	r.ca = certs.CAPEM
	r.ps = make([]*proc, n)
	for i := range n {
		r.ports = append(r.ports, freePort(t))
		r.start(i)
	}
	return r
}

// close stops the replicas (SIGTERM) and then the database.
func (r *replicaSet) close() {
	for _, p := range r.ps {
		if p != nil {
			p.stop(r.t)
		}
	}
	r.pg.Stop()
}

func (r *replicaSet) url(i int) string { return fmt.Sprintf("https://127.0.0.1:%d", r.ports[i]) }

func (r *replicaSet) urls() string {
	var u []string
	for i := range r.ports {
		u = append(u, r.url(i))
	}
	return strings.Join(u, ",")
}

func (r *replicaSet) env(i int) map[string]string {
	return map[string]string{"VEIL_KMS_URL": r.url(i), "VEIL_KMS_CA": filepath.Join(r.dir, "ca.pem"), "VEIL_ADMIN_TOKEN": r.admin}
}

// start starts replica i and unseals it through the CLI.
func (r *replicaSet) start(i int) {
	args := []string{"--store", r.store, "--listen", fmt.Sprintf("127.0.0.1:%d", r.ports[i]),
		"--tls-cert", filepath.Join(r.dir, "cert.pem"), "--tls-key", filepath.Join(r.dir, "key.pem")}
	if r.extra != nil {
		args = append(args, r.extra(i)...)
	}
	r.ps[i] = serve(r.t, args...)
	must(r.t, r.env(i), r.shares[i%3]+"\n", "kms", "unseal")
	must(r.t, r.env(i), r.shares[(i+1)%3]+"\n", "kms", "unseal")
}

// readyz returns the status code and body of replica i's /readyz.
func (r *replicaSet) readyz(i int) (int, string) {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(r.ca)
	hc := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get(r.url(i) + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

// retrier does one operation until it succeeds (bounded), and records how
// long it took to recover from a failure.
type retrier struct {
	mu         sync.Mutex
	ops        atomic.Int64
	failures   atomic.Int64 // operations that failed at least once
	unrecov    atomic.Int64
	slowest    atomic.Int64 // longest successful first attempt (client fail-over included), ns
	recoveries []time.Duration
	keys       []string
	firstErr   string
}

func (r *retrier) do(op func() error) bool {
	s := time.Now()
	err := op()
	if err == nil {
		r.ops.Add(1)
		if d := time.Since(s); d > time.Duration(r.slowest.Load()) {
			r.slowest.Store(int64(d)) // racy maximum: close enough for a figure
		}
		return true
	}
	r.failures.Add(1)
	t0 := time.Now()
	for time.Since(t0) < 20*time.Second {
		time.Sleep(50 * time.Millisecond)
		if err2 := op(); err2 == nil {
			r.ops.Add(1)
			r.mu.Lock()
			r.recoveries = append(r.recoveries, time.Since(t0))
			r.mu.Unlock()
			return true
		}
	}
	r.unrecov.Add(1)
	r.mu.Lock()
	if r.firstErr == "" {
		r.firstErr = err.Error()
	}
	r.mu.Unlock()
	return false
}

func (r *retrier) maxRecovery() time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	var m time.Duration
	for _, d := range r.recoveries {
		m = max(m, d)
	}
	return m
}

// TestReplicasKill9CyclesAndPostgresRestart runs three replicas on one
// PostgreSQL under clients that release data keys and create keys: one
// replica is killed with SIGKILL every few seconds and restarted (unsealed
// through the CLI); then PostgreSQL itself is restarted with a fast
// shutdown in the middle of the load. Every operation a client saw fail
// succeeds on retry, within 5 s after a replica's death; no acknowledged
// key is lost; the replicas report not ready while the database is down
// and serve again after it comes back without being restarted themselves;
// the audit chain verifies. Sizes: VEIL_KMS_CLIENTS, VEIL_KMS_DURATION,
// VEIL_KMS_KILL_EVERY (scripts/kms-crash-replicas.sh: 32, 60s, 10s).
func TestReplicasKill9CyclesAndPostgresRestart(t *testing.T) {
	clients := envInt(t, "VEIL_KMS_CLIENTS", 4)
	duration := envDuration(t, "VEIL_KMS_DURATION", 8*time.Second)
	every := envDuration(t, "VEIL_KMS_KILL_EVERY", 2*time.Second)
	rs := startReplicas(t, 3)
	ctx := context.Background()
	adm, err := client.New(client.Config{URL: rs.urls(), CAPEM: rs.ca, AdminToken: rs.admin})
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	enr, err := adm.Enroll(ctx, "loader")
	if err != nil {
		t.Fatal(err)
	}
	setup, _ := client.New(client.Config{URL: rs.urls(), CAPEM: rs.ca, AppID: enr.AppID, APIKey: enr.APIKey})
	k, err := setup.CreateKey(ctx, "release", "", "")
	if err != nil {
		t.Fatal(err)
	}
	setup.Close()

	var rt retrier
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range clients {
		// Each client knows the replicas in a different order, so the
		// load is spread over all three.
		var u []string
		for i := range 3 {
			u = append(u, rs.url((w+i)%3))
		}
		app, err := client.New(client.Config{URL: strings.Join(u, ","), CAPEM: rs.ca, AppID: enr.AppID, APIKey: enr.APIKey, Timeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer app.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1_000_000; i++ { // bounded
				select {
				case <-stop:
					return
				default:
				}
				if i%5 == 4 {
					name := fmt.Sprintf("w%d-%d", w, i)
					id := fmt.Sprintf("r%d-%d", w, i)
					if rt.do(func() error { _, err := app.CreateKeyWithRequestID(ctx, name, "", "", id); return err }) {
						rt.mu.Lock()
						rt.keys = append(rt.keys, name)
						rt.mu.Unlock()
					}
					continue
				}
				rt.do(func() error {
					dk, err := app.GenerateDataKey(ctx, k.ID, 32, nil)
					if err != nil {
						return err
					}
					r, err := app.Decrypt(ctx, dk.Ciphertext, nil)
					if err == nil && !bytes.Equal(r.Plaintext, dk.Plaintext) {
						return fmt.Errorf("data key decrypts to something else")
					}
					return err
				})
			}
		}()
	}
	start := time.Now()
	kills := 0
	for i := 0; time.Since(start)+every <= duration && i < 1000; i++ {
		time.Sleep(every)
		victim := i % 3
		rs.ps[victim].kill()
		kills++
		rs.start(victim)
	}
	killOps, killFail := rt.ops.Load(), rt.failures.Load()
	maxRec := max(rt.maxRecovery(), time.Duration(rt.slowest.Load()))
	t.Logf("%d kill -9 in %s with %d clients: %d operations, %d failed once and succeeded on retry, %d not recovered, slowest operation or recovery (fail-over included) %s",
		kills, time.Since(start).Round(time.Second), clients, killOps, killFail, rt.unrecov.Load(), maxRec.Round(time.Millisecond))
	if kills == 0 || killOps == 0 {
		t.Fatalf("%d kills, %d operations: no campaign", kills, killOps)
	}
	if maxRec > 5*time.Second {
		t.Errorf("recovery after a replica's death took %s, want within 5 s", maxRec)
	}

	// PostgreSQL fast restart under the same load.
	pids := make([]int, 3)
	for i, p := range rs.ps {
		pids[i] = p.cmd.Process.Pid
	}
	rs.pg.Stop()
	downAt := time.Now()
	for i := range 3 {
		code, body := rs.readyz(i)
		if code != 503 || !strings.Contains(body, "store_unavailable") {
			t.Errorf("replica %d /readyz with its database down: %d %s", i, code, body)
		}
	}
	opsDown := rt.ops.Load()
	rs.pg.Restart(t)
	upAt := time.Now()
	for i := range 3 {
		for j := 0; ; j++ {
			code, body := rs.readyz(i)
			if code == 200 {
				break
			}
			if j > 150 {
				t.Fatalf("replica %d not ready 15 s after its database came back: %d %s", i, code, body)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	readyAfter := time.Since(upAt)
	before := rt.ops.Load()
	time.Sleep(min(2*time.Second, duration/4))
	close(stop)
	wg.Wait()
	for i, p := range rs.ps {
		select {
		case <-p.done:
			t.Fatalf("replica %d exited during the database restart: %s", i, p.stderr)
		default:
		}
		if p.cmd.Process.Pid != pids[i] {
			t.Fatalf("replica %d was restarted", i)
		}
	}
	t.Logf("PostgreSQL fast restart: database down %s, all replicas ready %s after it came back, %d operations while down, %d after; %d failed once in all, %d not recovered, slowest recovery %s",
		upAt.Sub(downAt).Round(time.Millisecond), readyAfter.Round(time.Millisecond), before-opsDown, rt.ops.Load()-before,
		rt.failures.Load(), rt.unrecov.Load(), rt.maxRecovery().Round(time.Millisecond))
	if rt.ops.Load() == before {
		t.Fatal("no operation succeeded after the database restart")
	}
	if n := rt.unrecov.Load(); n > 0 {
		t.Fatalf("%d operations failed and did not succeed on retry: %s", n, rt.firstErr)
	}
	app, _ := client.New(client.Config{URL: rs.urls(), CAPEM: rs.ca, AppID: enr.AppID, APIKey: enr.APIKey})
	defer app.Close()
	l, err := app.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]int{}
	for _, k := range l.Keys {
		have[k.Name]++
	}
	lost := 0
	for _, n := range rt.keys {
		if have[n] != 1 {
			lost++
		}
	}
	t.Logf("%d keys acknowledged, %d lost or duplicated", len(rt.keys), lost)
	if lost > 0 {
		t.Fatalf("%d acknowledged keys lost or created twice", lost)
	}
	if out, errs, code := run(t, rs.env(0), "", "kms", "audit", "verify"); code != 0 {
		t.Fatalf("audit verify: exit %d\n%s%s", code, out, errs)
	}
}

// TestLoadEmbeddedAndReplicas drives concurrent clients unwrapping data
// keys against one bbolt server, one replica on PostgreSQL and three
// replicas on PostgreSQL: no operation may fail. The figures (ops/s,
// p50/p99, CPU per op of servers, database and client) are logged;
// scripts/kms-load.sh runs it at full size (VEIL_KMS_LOAD_CLIENTS,
// VEIL_KMS_LOAD_DURATION).
//
// For before/after comparisons in one run, VEIL_KMS_LOAD_BINARIES names
// several veil binaries (comma-separated; default: the one built for the
// test) and VEIL_KMS_LOAD_ROUNDS repeats the whole set: each round runs
// every configuration with every binary in turn, alternating, so that the
// load of a shared machine falls on all of them alike.
// VEIL_KMS_LOAD_CONFIGS picks configurations (bbolt, pg1, pg3; default
// all), and VEIL_KMS_LOAD_PROFILE=DIR writes a CPU profile of each server
// there. VEIL_KMS_LOAD_LEAN=1 uses the lighter load client (kmsload.Config.Lean),
// VEIL_KMS_LOAD_RATE=N offers N operations per second open-loop
// (kmsload.Config.Rate) instead of sending back to back.
func TestLoadEmbeddedAndReplicas(t *testing.T) {
	clients := envInt(t, "VEIL_KMS_LOAD_CLIENTS", 8)
	duration := envDuration(t, "VEIL_KMS_LOAD_DURATION", 2*time.Second)
	rounds := envInt(t, "VEIL_KMS_LOAD_ROUNDS", 1)
	bins := []string{veil}
	if v := os.Getenv("VEIL_KMS_LOAD_BINARIES"); v != "" {
		bins = strings.Split(v, ",")
	}
	configs := "bbolt,pg1,pg3"
	if v := os.Getenv("VEIL_KMS_LOAD_CONFIGS"); v != "" {
		configs = v
	}
	profDir := os.Getenv("VEIL_KMS_LOAD_PROFILE")
	lean := os.Getenv("VEIL_KMS_LOAD_LEAN") == "1"
	var rate float64
	if v := os.Getenv("VEIL_KMS_LOAD_RATE"); v != "" {
		var err error
		if rate, err = strconv.ParseFloat(v, 64); err != nil || rate < 0 {
			t.Fatalf("VEIL_KMS_LOAD_RATE=%q: want operations per second", v)
		}
	}
	built := veil
	t.Cleanup(func() { veil = built })
	ctx := context.Background()
	results := map[string][]kmsload.Result{}
	check := func(name, bin string, r kmsload.Result, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		up, _ := os.ReadFile("/proc/loadavg")
		label := ""
		if len(bins) > 1 {
			label = " [" + bin + "]"
		}
		t.Logf("%s%s, %d clients: %s (load avg %s)", name, label, clients, r, strings.Join(strings.Fields(string(up))[:3], " "))
		if r.Errors > 0 || r.Ops == 0 {
			t.Fatalf("%s: %d errors (%s), %d operations", name, r.Errors, r.FirstError, r.Ops)
		}
		results[name] = append(results[name], r)
	}
	defer func() {
		if len(bins) == 1 && !t.Failed() {
			summaryRows(t, clients, rate, results)
		}
	}()
	profile := func(name string, i int) []string {
		if profDir == "" {
			return nil
		}
		return []string{"--cpu-profile", filepath.Join(profDir, fmt.Sprintf("%s-%d-%s.prof", name, i, filepath.Base(veil)))}
	}
	for round := range rounds {
		for _, bin := range bins {
			veil = bin
			if strings.Contains(configs, "bbolt") {
				p := serve(t, append([]string{"--dev", "--data", t.TempDir()}, profile("bbolt", round)...)...)
				ca, _ := os.ReadFile(p.env["VEIL_KMS_CA"])
				r, err := kmsload.Run(ctx, kmsload.Config{URL: p.env["VEIL_KMS_URL"], CAPEM: ca, AdminToken: p.env["VEIL_ADMIN_TOKEN"],
					Clients: clients, Duration: duration, Lean: lean, Rate: rate, ServerPIDs: []int{p.cmd.Process.Pid}})
				check("bbolt, one server", bin, r, err)
				p.stop(t)
			}
			if !strings.Contains(configs, "pg") {
				continue
			}
			n := 1
			if strings.Contains(configs, "pg3") {
				n = 3
			}
			rs := startReplicasWith(t, n, func(i int) []string { return profile(fmt.Sprintf("pg-replica%d", i), round) })
			var pids []int
			for _, p := range rs.ps {
				pids = append(pids, p.cmd.Process.Pid)
			}
			if strings.Contains(configs, "pg1") {
				r, err := kmsload.Run(ctx, kmsload.Config{URL: rs.url(0), CAPEM: rs.ca, AdminToken: rs.admin,
					Clients: clients, Duration: duration, Lean: lean, Rate: rate, ServerPIDs: append(rs.pg.PIDs(), pids[0])})
				check("PostgreSQL, one replica", bin, r, err)
			}
			if n == 3 {
				r, err := kmsload.Run(ctx, kmsload.Config{URL: rs.urls(), CAPEM: rs.ca, AdminToken: rs.admin,
					Clients: clients, Duration: duration, Lean: lean, Rate: rate, ServerPIDs: append(rs.pg.PIDs(), pids...)})
				check("PostgreSQL, three replicas", bin, r, err)
			}
			rs.close()
		}
	}
}

// summaryRows adds the load's figures to make bench's summary table when
// VEIL_BENCH_SUMMARY names its file (scripts/bench.sh, scripts/benchlib.sh):
// the targets, against the last round of each configuration.
func summaryRows(t *testing.T, clients int, rate float64, results map[string][]kmsload.Result) {
	path := os.Getenv("VEIL_BENCH_SUMMARY")
	if path == "" {
		return
	}
	last := func(name string) (kmsload.Result, bool) {
		rs := results[name]
		if len(rs) == 0 {
			return kmsload.Result{}, false
		}
		return rs[len(rs)-1], true
	}
	how := fmt.Sprintf("%d clients", clients)
	if rate > 0 {
		how += fmt.Sprintf(", %.0f ops/s offered", rate)
	}
	var b strings.Builder
	row := func(what, veil, limit, value, target, unit string) {
		fmt.Fprintf(&b, "%s\t%s\t%s\t%s\t%s\t%s\n", what, veil, limit, value, target, unit)
	}
	figure := func(r kmsload.Result) string {
		return fmt.Sprintf("%.0f ops/s, p99 %.1f ms, %d µs of CPU per op", r.OpsPerSec(), r.P99.Seconds()*1000, r.CPUPerOp().Microseconds())
	}
	if r, ok := last("bbolt, one server"); ok {
		row("KMS data-key unwrap, bbolt, "+how, figure(r), "–", fmt.Sprintf("%.0f", r.OpsPerSec()), ">=15000", "ops/s")
		row("KMS data-key unwrap, bbolt, p99, "+how, figure(r), "–", fmt.Sprintf("%.2f", r.P99.Seconds()*1000), "<5", "ms")
	}
	one, ok1 := last("PostgreSQL, one replica")
	if ok1 {
		row("KMS data-key unwrap, one PostgreSQL replica, "+how, figure(one), "–", fmt.Sprintf("%.0f", one.OpsPerSec()), ">=5000", "ops/s")
	}
	if three, ok := last("PostgreSQL, three replicas"); ok && ok1 {
		row("KMS data-key unwrap, three replicas / one, "+how, figure(three), "one replica: "+fmt.Sprintf("%.0f ops/s", one.OpsPerSec()),
			fmt.Sprintf("%.3f", three.OpsPerSec()/one.OpsPerSec()), ">=1", "x")
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Errorf("adding the summary rows: %v", err)
		return
	}
	defer f.Close()
	if _, err := f.WriteString(b.String()); err != nil {
		t.Errorf("adding the summary rows: %v", err)
	}
}
