package kms_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/veil-tee/veil/internal/pgtest"
	"github.com/veil-tee/veil/kms"
	"github.com/veil-tee/veil/kms/audit"
	"github.com/veil-tee/veil/kms/client"
	"github.com/veil-tee/veil/kms/store"
)

// newReplicas initializes the PostgreSQL store at url (3 shares,
// threshold 2) and starts n servers on it, each unsealed separately.
func newReplicas(t testing.TB, url string, n int) []*server {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() { checkGoroutines(t, before) })
	st, err := store.OpenPostgres(context.Background(), url, store.PostgresOptions{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := kms.Initialize(context.Background(), st, kms.ModeShamir, 3, 2, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	certs, err := kms.NewDevCertificates([]string{"127.0.0.1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var out []*server
	clock := &fakeClock{}
	for range n {
		s := &server{t: t, storeURL: url, clock: clock, logs: &syncBuffer{}, admin: res.AdminToken, shares: res.Shares, ca: certs.CAPEM}
		s.start(certs, false)
		t.Cleanup(s.stop)
		out = append(out, s)
	}
	return out
}

// clientOn returns a client of server s with the credentials of cfg.
func clientOn(t testing.TB, s *server, cfg client.Config) *client.Client {
	cfg.Clock = s.clock.Now
	return s.client(t, cfg)
}

func TestReplicasShareOneDatabase(t *testing.T) {
	pg := pgtest.Start(t)
	rs := newReplicas(t, pg.NewDatabase(t), 3)
	r, err := rs[0].adminClient(t).Enroll(ctx, "bob")
	if err != nil {
		t.Fatal(err)
	}
	creds := client.Config{AppID: r.AppID, APIKey: r.APIKey}
	bob0, bob1, bob2 := clientOn(t, rs[0], creds), clientOn(t, rs[1], creds), clientOn(t, rs[2], creds)

	// A key created on one replica is used on the others.
	k, err := bob0.CreateKey(ctx, "cmk", "", "")
	if err != nil {
		t.Fatal(err)
	}
	ct, err := bob1.Encrypt(ctx, k.ID, []byte("across replicas"), nil)
	if err != nil {
		t.Fatalf("encrypt on replica 1 with a key made on replica 0: %v", err)
	}
	pt, err := bob2.Decrypt(ctx, ct.Ciphertext, nil)
	if err != nil || string(pt.Plaintext) != "across replicas" {
		t.Fatalf("decrypt on replica 2: %q, %v", pt.Plaintext, err)
	}

	// Releases to a workload, on a replica other than the one that
	// attached the policy.
	good := hexString("5f").repeat32()
	if _, err := bob0.CreatePolicy(ctx, "prod", json.RawMessage(`{"measurements":["`+good+`"]}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := bob1.AttachKeyPolicy(ctx, "cmk", "prod"); err != nil {
		t.Fatal(err)
	}
	w := rs[2].workload(t, kms.Workload{TEE: "sim", Measurement: good})
	if got, err := w.Decrypt(ctx, ct.Ciphertext, nil); err != nil || string(got.Plaintext) != "across replicas" {
		t.Fatalf("release on replica 2: %v", err)
	}

	// Concurrent audited writes on all replicas leave one verifying chain.
	const per = 10
	var wg sync.WaitGroup
	errs := make(chan error, 3*per)
	for i, c := range []*client.Client{bob0, bob1, bob2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range per {
				if _, err := c.PutSecret(ctx, fmt.Sprintf("s-%d-%d", i, j), []byte("v"), ""); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent writes: %v", err)
	}
	for i, s := range rs {
		adm := s.adminClient(t)
		h, err := adm.AuditHead(ctx)
		if err != nil || !h.Authentic || h.Damaged != "" {
			t.Fatalf("replica %d: audit head %+v, %v", i, h, err)
		}
		if probs, _, err := adm.VerifyAudit(ctx); err != nil || len(probs) != 0 {
			t.Fatalf("replica %d: chain does not verify: %v %v", i, probs, err)
		}
		entries, err := adm.AuditEntries(ctx, "", 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, e := range entries {
			if e.Op == "secret.put" && e.Result == audit.Granted {
				n++
			}
		}
		if n != 3*per {
			t.Fatalf("replica %d: %d secret.put entries, want %d", i, n, 3*per)
		}
	}
}

// TestReplicasShareReplayProtection replays a signed request captured on
// one replica against another: the nonce is recorded in the database.
func TestReplicasShareReplayProtection(t *testing.T) {
	pg := pgtest.Start(t)
	rs := newReplicas(t, pg.NewDatabase(t), 2)
	r, err := rs[0].adminClient(t).Enroll(ctx, "bob")
	if err != nil {
		t.Fatal(err)
	}
	bob := clientOn(t, rs[0], client.Config{AppID: r.AppID, APIKey: r.APIKey})
	body := []byte(`{"name":"cmk"}`)
	q, err := bob.NewRequest(ctx, "POST", "/v1/keys", body, false)
	if err != nil {
		t.Fatal(err)
	}
	send := func(s *server) (int, string) {
		qq, _ := http.NewRequest("POST", s.url+"/v1/keys", bytes.NewReader(body))
		qq.Header = q.Header.Clone()
		resp, err := (&http.Client{Transport: transportOf(t, s)}).Do(qq)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, b := send(rs[0]); code != http.StatusCreated {
		t.Fatalf("original request: %d %s", code, b)
	}
	// The same signed request, byte for byte, to the other replica.
	if code, b := send(rs[1]); code != http.StatusUnauthorized || !strings.Contains(b, "replayed_request") {
		t.Fatalf("replay on the other replica: %d %s", code, b)
	}
}

// TestCreateKeyIdempotentAcrossReplicas retries a key creation with the
// same request id on another replica, sequentially and concurrently: one
// key is created.
func TestCreateKeyIdempotentAcrossReplicas(t *testing.T) {
	pg := pgtest.Start(t)
	rs := newReplicas(t, pg.NewDatabase(t), 2)
	r, err := rs[0].adminClient(t).Enroll(ctx, "bob")
	if err != nil {
		t.Fatal(err)
	}
	creds := client.Config{AppID: r.AppID, APIKey: r.APIKey}
	bob0, bob1 := clientOn(t, rs[0], creds), clientOn(t, rs[1], creds)
	k0, err := bob0.CreateKeyWithRequestID(ctx, "cmk", "", "", "req-1")
	if err != nil {
		t.Fatal(err)
	}
	k1, err := bob1.CreateKeyWithRequestID(ctx, "cmk", "", "", "req-1")
	if err != nil || k1.ID != k0.ID {
		t.Fatalf("retry on replica 1: %+v, %v; want key %s", k1, err, k0.ID)
	}
	// Without the id, the same name is a conflict, not a second key.
	if _, err := bob1.CreateKey(ctx, "cmk", "", ""); !strings.Contains(fmt.Sprint(err), "already_exists") {
		t.Fatalf("create without request id: %v", err)
	}
	// Concurrent: the same id sent to both replicas at once.
	var wg sync.WaitGroup
	ids := make([]string, 2)
	errs := make([]error, 2)
	for i, c := range []*client.Client{bob0, bob1} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k, err := c.CreateKeyWithRequestID(ctx, "cmk2", "", "", "req-2")
			ids[i], errs[i] = k.ID, err
		}()
	}
	wg.Wait()
	if errs[0] != nil || errs[1] != nil || ids[0] != ids[1] {
		t.Fatalf("concurrent create with one request id: %v %v, ids %q", errs[0], errs[1], ids)
	}
	list, err := bob0.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Keys) != 2 {
		t.Fatalf("%d keys, want 2: %+v", len(list.Keys), list.Keys)
	}
	// Another app's identical request id is its own.
	r2, _ := rs[0].adminClient(t).Enroll(ctx, "eve")
	eve := clientOn(t, rs[1], client.Config{AppID: r2.AppID, APIKey: r2.APIKey})
	if k, err := eve.CreateKeyWithRequestID(ctx, "cmk", "", "", "req-1"); err != nil || k.ID == k0.ID {
		t.Fatalf("other app, same request id: %+v, %v", k, err)
	}
}

// TestPostgresPolicyEditRefused edits a policy row through SQL (the
// database administrator's power): the release is refused naming the
// record.
func TestPostgresPolicyEditRefused(t *testing.T) {
	pg := pgtest.Start(t)
	url := pg.NewDatabase(t)
	rs := newReplicas(t, url, 1)
	s := rs[0]
	bob, _ := s.app(t, "bob")
	if _, err := bob.CreateKey(ctx, "cmk", "", ""); err != nil {
		t.Fatal(err)
	}
	good := hexString("5f").repeat32()
	p, err := bob.CreatePolicy(ctx, "prod", json.RawMessage(`{"measurements":["`+good+`"]}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.AttachKeyPolicy(ctx, "cmk", "prod"); err != nil {
		t.Fatal(err)
	}
	dk, err := bob.GenerateDataKey(ctx, "cmk", 32, nil)
	if err != nil {
		t.Fatal(err)
	}
	evil := hexString("ee").repeat32()
	w := s.workload(t, kms.Workload{TEE: "sim", Measurement: evil})
	if _, err := w.Decrypt(ctx, dk.Ciphertext, nil); err == nil {
		t.Fatal("the attacker's workload is released the key before the edit")
	}
	// The administrator admits the attacker's measurement in SQL.
	db := s.st.(*store.Postgres).Pool()
	tag, err := db.Exec(context.Background(),
		`UPDATE kms_records SET value = convert_to(replace(convert_from(value, 'UTF8'), $1, $2), 'UTF8') WHERE bucket = 'policies' AND key = $3`,
		good, evil, []byte(p.ID))
	if err != nil || tag.RowsAffected() != 1 {
		t.Fatalf("editing the policy row: %v (%d rows)", err, tag.RowsAffected())
	}
	_, err = w.Decrypt(ctx, dk.Ciphertext, nil)
	if err == nil {
		t.Fatal("the edited policy released the key")
	}
	if !strings.Contains(err.Error(), "record_integrity") || !strings.Contains(err.Error(), "policies/"+p.ID) {
		t.Fatalf("release after the edit: %v; want record_integrity naming policies/%s", err, p.ID)
	}
	// The edit also fails the state digest: /readyz and the audit head say so.
	h, err := s.adminClient(t).AuditHead(ctx)
	if err != nil || h.Damaged == "" || !strings.Contains(h.Damaged, "policies/"+p.ID) {
		t.Fatalf("audit head after the edit: %+v, %v", h, err)
	}
}

func TestReadyzReportsReplicaState(t *testing.T) {
	pg := pgtest.Start(t)
	rs := newReplicas(t, pg.NewDatabase(t), 2)
	r, err := rs[0].adminClient(t).Enroll(ctx, "bob")
	if err != nil {
		t.Fatal(err)
	}
	bob := clientOn(t, rs[0], client.Config{AppID: r.AppID, APIKey: r.APIKey, Retries: -1})
	get := func(s *server) (int, string) {
		resp, err := (&http.Client{Transport: transportOf(t, s), Timeout: 10 * time.Second}).Get(s.url + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, b := get(rs[0]); code != 200 || !strings.Contains(b, "ready") {
		t.Fatalf("unsealed replica: %d %s", code, b)
	}
	// Each replica is unsealed separately: sealing one leaves the other.
	rs[1].svc.Seal()
	if code, b := get(rs[1]); code != 503 || !strings.Contains(b, `"sealed"`) {
		t.Fatalf("sealed replica: %d %s", code, b)
	}
	if code, _ := get(rs[0]); code != 200 {
		t.Fatalf("other replica after sealing one: %d", code)
	}
	for _, sh := range rs[1].shares[:2] {
		if _, err := rs[1].svc.Unseal(ctx, sh); err != nil {
			t.Fatal(err)
		}
	}
	if code, _ := get(rs[1]); code != 200 {
		t.Fatalf("replica unsealed again: %d", code)
	}
	// The database goes away.
	pg.Stop()
	if code, b := get(rs[0]); code != 503 || !strings.Contains(b, "store_unavailable") {
		t.Fatalf("database stopped: %d %s", code, b)
	}
	// Requests are refused as unavailable (so clients try another
	// replica), not as internal errors.
	if _, err := bob.ListKeys(ctx); !strings.Contains(fmt.Sprint(err), "store_unavailable") {
		t.Fatalf("request with the database stopped: %v", err)
	}
	if _, err := rs[0].adminClient(t).ListApps(ctx); !strings.Contains(fmt.Sprint(err), "store_unavailable") {
		t.Fatalf("admin request with the database stopped: %v", err)
	}
}

// TestClientFailsOver: a client given several addresses keeps working
// when the first replica is stopped, says which replica answered, and
// repeats a request whose outcome is unknown only when that is safe.
func TestClientFailsOver(t *testing.T) {
	pg := pgtest.Start(t)
	rs := newReplicas(t, pg.NewDatabase(t), 2)
	r, err := rs[0].adminClient(t).Enroll(ctx, "bob")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var traces []string
	cfg := client.Config{URL: rs[0].url + "," + rs[1].url, CAPEM: rs[0].ca, AppID: r.AppID, APIKey: r.APIKey, Clock: rs[0].clock.Now,
		Trace: func(m string) { mu.Lock(); traces = append(traces, m); mu.Unlock() }}
	bob, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(bob.Close)
	k, err := bob.CreateKey(ctx, "cmk", "", "")
	if err != nil {
		t.Fatal(err)
	}
	host := func(s *server) string { return strings.TrimPrefix(s.url, "https://") }
	lastTrace := func() string { mu.Lock(); defer mu.Unlock(); return traces[len(traces)-1] }
	if !strings.Contains(lastTrace(), "answered by "+host(rs[0])) {
		t.Fatalf("trace %q does not name replica 0", lastTrace())
	}
	rs[0].stop()
	bob.Close() // drop kept-alive connections to the stopped replica
	ct, err := bob.Encrypt(ctx, k.ID, []byte("x"), nil)
	if err != nil {
		t.Fatalf("encrypt with replica 0 stopped: %v", err)
	}
	if !strings.Contains(lastTrace(), "answered by "+host(rs[1])) {
		t.Fatalf("trace %q does not name replica 1", lastTrace())
	}
	if _, err := bob.Decrypt(ctx, ct.Ciphertext, nil); err != nil {
		t.Fatal(err)
	}
	// A write that is not safe to repeat is still sent to the next
	// replica when the first could not even be reached.
	if _, err := bob.PutSecret(ctx, "s", []byte("v"), ""); err != nil {
		t.Fatalf("put secret with replica 0 stopped: %v", err)
	}
	if _, err := bob.CreateKey(ctx, "cmk2", "", ""); err != nil {
		t.Fatalf("create key with replica 0 stopped: %v", err)
	}

	// A first address that accepts connections and drops them: the
	// request may have been received, so only safe calls move on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var accepted sync.WaitGroup
	accepted.Add(1)
	go func() {
		defer accepted.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	cfg.URL = "https://" + ln.Addr().String() + "," + rs[1].url
	cfg.Retries = -1
	drop, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(drop.Close)
	if _, err := drop.Encrypt(ctx, k.ID, []byte("x"), nil); err != nil {
		t.Fatalf("a safe call after a dropped connection: %v", err)
	}
	// A new client (the first starts with the address that last answered).
	drop2, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(drop2.Close)
	_, err = drop2.PutSecret(ctx, "s2", []byte("v"), "")
	if err == nil {
		t.Fatal("a write whose first attempt may have been received was sent again")
	}
	if _, err := rs[1].client(t, client.Config{AppID: r.AppID, APIKey: r.APIKey, Clock: rs[1].clock.Now}).GetSecret(ctx, "s2", 0); !strings.Contains(fmt.Sprint(err), "secret_not_found") {
		t.Fatalf("secret s2 after the refused retry: %v", err)
	}
	ln.Close()
	accepted.Wait()
}

// TestReplicasSeeAppDisableAndRotation: an app disabled, or its API key
// rotated, through one replica is refused by the others at once (they
// keep no cached copy of its signing key).
func TestReplicasSeeAppDisableAndRotation(t *testing.T) {
	pg := pgtest.Start(t)
	rs := newReplicas(t, pg.NewDatabase(t), 2)
	adm0 := rs[0].adminClient(t)
	for _, disable := range []bool{false, true} {
		r, err := adm0.Enroll(ctx, fmt.Sprintf("app-%v", disable))
		if err != nil {
			t.Fatal(err)
		}
		on1 := clientOn(t, rs[1], client.Config{AppID: r.AppID, APIKey: r.APIKey})
		if _, err := on1.ListKeys(ctx); err != nil { // replica 1 has used the key
			t.Fatal(err)
		}
		want := "bad_signature"
		if disable {
			_, err = adm0.DisableApp(ctx, r.AppID)
			want = "app_disabled"
		} else {
			_, err = adm0.RotateAppKey(ctx, r.AppID)
		}
		if err != nil {
			t.Fatal(err)
		}
		if _, err := on1.ListKeys(ctx); !strings.Contains(fmt.Sprint(err), want) {
			t.Fatalf("disable=%v: old credentials on replica 1: %v, want %s", disable, err, want)
		}
	}
}

// TestClientSkipsSealedReplica: a replica that is sealed refuses requests
// unexecuted (503), so even a write moves on to the next address.
func TestClientSkipsSealedReplica(t *testing.T) {
	pg := pgtest.Start(t)
	rs := newReplicas(t, pg.NewDatabase(t), 2)
	r, err := rs[0].adminClient(t).Enroll(ctx, "bob")
	if err != nil {
		t.Fatal(err)
	}
	rs[0].svc.Seal()
	var answered string
	bob, err := client.New(client.Config{URL: rs[0].url + "," + rs[1].url, CAPEM: rs[0].ca, AppID: r.AppID, APIKey: r.APIKey,
		Clock: rs[0].clock.Now, Trace: func(m string) { answered = m }})
	if err != nil {
		t.Fatal(err)
	}
	defer bob.Close()
	if _, err := bob.PutSecret(ctx, "s", []byte("v"), ""); err != nil {
		t.Fatalf("write with the first replica sealed: %v", err)
	}
	if !strings.Contains(answered, "answered by "+strings.TrimPrefix(rs[1].url, "https://")) {
		t.Fatalf("trace %q", answered)
	}
	// With every replica sealed the client gives up after its bounded
	// rounds and reports the last answer.
	rs[1].svc.Seal()
	t0 := time.Now()
	_, err = bob.PutSecret(ctx, "s2", []byte("v"), "")
	if !strings.Contains(fmt.Sprint(err), "sealed") || time.Since(t0) > 5*time.Second {
		t.Fatalf("all replicas sealed: %v after %s", err, time.Since(t0))
	}
}

// TestPostgresRestartUnderLoadAnswersNo500: while clients release data
// keys, create keys and write secrets on two replicas, PostgreSQL is
// restarted (fast shutdown: every connection is ended, mid-transaction or
// not). Every failed request must be refused as unavailable (503, so that
// a client tries another replica or again), never as an internal error,
// and every replica must serve again afterwards with its audit chain
// intact. The clients do not retry, so that every answer is seen.
func TestPostgresRestartUnderLoadAnswersNo500(t *testing.T) {
	pg := pgtest.Start(t)
	rs := newReplicas(t, pg.NewDatabase(t), 2)
	r, err := rs[0].adminClient(t).Enroll(ctx, "bob")
	if err != nil {
		t.Fatal(err)
	}
	var cls []*client.Client
	for _, s := range rs {
		cls = append(cls, clientOn(t, s, client.Config{AppID: r.AppID, APIKey: r.APIKey, Retries: -1, Timeout: 20 * time.Second}))
	}
	if _, err := cls[0].CreateKey(ctx, "cmk", "", ""); err != nil {
		t.Fatal(err)
	}
	dk, err := cls[0].GenerateDataKey(ctx, "cmk", 32, nil)
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu      sync.Mutex
		ok, bad int
		codes   = map[string]int{}
		other   []string
		wg      sync.WaitGroup
	)
	stop := make(chan struct{})
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := cls[w%2]
			for i := 0; i < 100_000; i++ { // bounded; ends when stop closes
				select {
				case <-stop:
					return
				default:
				}
				var err error
				switch i % 4 {
				case 0:
					_, err = c.CreateKey(ctx, fmt.Sprintf("k-%d-%d", w, i), "", "")
				case 1:
					_, err = c.PutSecret(ctx, fmt.Sprintf("s-%d-%d", w, i), []byte("v"), "")
				default:
					_, err = c.Decrypt(ctx, dk.Ciphertext, nil)
				}
				mu.Lock()
				var ce *client.Error
				switch {
				case err == nil:
					ok++
				case errors.As(err, &ce) && ce.Status == http.StatusServiceUnavailable:
					bad++
					codes[ce.Problem.Code]++
				default:
					if len(other) < 10 {
						other = append(other, err.Error())
					}
				}
				mu.Unlock()
				if err != nil {
					time.Sleep(20 * time.Millisecond)
				}
			}
		}()
	}
	time.Sleep(500 * time.Millisecond)
	pg.Restart(t)
	// Serve again without a restart of the replicas.
	deadline := time.Now().Add(20 * time.Second)
	for i, c := range cls {
		for {
			_, err := c.Decrypt(ctx, dk.Ciphertext, nil)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("replica %d does not serve after the database restarted: %v", i, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	t.Logf("%d operations succeeded, %d refused as unavailable %v", ok, bad, codes)
	if len(other) > 0 {
		t.Fatalf("answers other than success or 503 during the restart: %q", other)
	}
	if ok == 0 {
		t.Fatal("no operation succeeded")
	}
	for i, s := range rs {
		h, err := s.adminClient(t).AuditHead(ctx)
		if err != nil || !h.Authentic || h.Damaged != "" {
			t.Fatalf("replica %d: audit head after the restart: %+v %v", i, h, err)
		}
	}
}
