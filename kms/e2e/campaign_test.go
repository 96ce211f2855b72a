package e2e

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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
