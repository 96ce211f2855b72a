package kms

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/veil-tee/veil/kms/api"
	"github.com/veil-tee/veil/kms/store"
)

// measurementEvaluator admits a workload whose measurement is listed in the
// policy document's "measurements" (test stand-in for the policy engine).
type measurementEvaluator struct{}

func (measurementEvaluator) Evaluate(doc []byte, w Workload) (bool, []string) {
	var p struct {
		Measurements []string `json:"measurements"`
	}
	if json.Unmarshal(doc, &p) != nil || !slices.Contains(p.Measurements, w.Measurement) {
		return false, []string{"measurement not allowed"}
	}
	return true, nil
}

func newDevService(t *testing.T) *Service {
	t.Helper()
	ctx := context.Background()
	st, err := store.OpenBolt(t.TempDir(), store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	res, err := Initialize(ctx, st, ModeDev, 0, 0, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(ctx, Options{Store: st, Evaluator: measurementEvaluator{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	if err := s.UnsealWithRootKey(res.RootKey); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestForeignPolicyIgnoredAtRelease: a policy of app B that ends up on app
// A's key or secret by any path (here written through the store with valid
// record MACs, as a bug or a future code path might) does not admit B's
// workload.
func TestForeignPolicyIgnoredAtRelease(t *testing.T) {
	ctx := context.Background()
	s := newDevService(t)
	admin := Caller{Kind: KindAdmin}
	a, err := s.Enroll(ctx, admin, api.EnrollRequest{Name: "a"})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := s.Enroll(ctx, admin, api.EnrollRequest{Name: "b"})
	ca, cb := Caller{Kind: KindApp, AppID: a.AppID}, Caller{Kind: KindApp, AppID: b.AppID}
	key, err := s.CreateKey(ctx, ca, api.CreateKeyRequest{Name: "k"})
	if err != nil {
		t.Fatal(err)
	}
	sec, err := s.PutSecret(ctx, ca, "s", api.PutSecretRequest{Value: []byte("v")})
	if err != nil {
		t.Fatal(err)
	}
	evil := strings.Repeat("e1", 32)
	pb, err := s.CreatePolicy(ctx, cb, api.CreatePolicyRequest{Name: "p", Document: json.RawMessage(`{"measurements":["` + evil + `"]}`)})
	if err != nil {
		t.Fatal(err)
	}
	kr, _ := s.keyring()
	err = s.update(ctx, kr, func(tx store.Tx) error {
		var kr keyRecord
		if err := getJSON(tx, "keys", key.ID, &kr); err != nil {
			return err
		}
		kr.Policies = append(kr.Policies, pb.ID)
		if err := putJSON(tx, "keys", key.ID, kr); err != nil {
			return err
		}
		var sr secretRecord
		if err := getJSON(tx, "secrets", sec.ID, &sr); err != nil {
			return err
		}
		sr.Policies = append(sr.Policies, pb.ID)
		return putJSON(tx, "secrets", sec.ID, sr)
	})
	if err != nil {
		t.Fatal(err)
	}
	w := Caller{Kind: KindWorkload, Workload: &Workload{TEE: "sim", Measurement: evil}}
	_, err = s.Encrypt(ctx, w, key.ID, api.EncryptRequest{Plaintext: []byte("x")})
	var se *Error
	if !errors.Is(err, ErrPolicyDenied) || !errors.As(err, &se) || !strings.Contains(se.Detail, "belongs to "+b.AppID) {
		t.Fatalf("key with another app's policy: %v", err)
	}
	_, err = s.GetSecret(ctx, w, sec.ID, 0)
	if !errors.Is(err, ErrPolicyDenied) {
		t.Fatalf("secret with another app's policy: %v", err)
	}
}

// TestIsIDMatchesPattern: the hand-written isID accepts exactly what the
// id pattern (idRE with the prefix) accepts.
func TestIsIDMatchesPattern(t *testing.T) {
	base := newID("k")
	cases := []string{base, newID("a"), newID("p"), newID("s"), "", "k_", "k", base[:33], base + "0",
		"K" + base[1:], "k-" + base[2:], base[:10] + "A" + base[11:], base[:10] + "g" + base[11:], base[:33] + "/",
		"x_" + base[2:], "k_" + strings.Repeat("0", 32), "k_" + strings.Repeat("f", 32), "k_" + strings.Repeat(":", 32)}
	for _, id := range cases {
		for _, prefix := range []string{"a", "k", "p", "s", "x", "", "kk"} {
			want := len(id) > 2 && id[:2] == prefix+"_" && idRE.MatchString(id)
			if got := isID(id, prefix); got != want {
				t.Errorf("isID(%q, %q) = %v, want %v", id, prefix, got, want)
			}
		}
	}
}

// countingReader counts the reads a oneGetTx makes of the store.
type countingReader struct {
	store.OneReader
	n int
}

func (c *countingReader) GetOne(ctx context.Context, bucket, key string) ([]byte, error) {
	c.n++
	return c.OneReader.GetOne(ctx, bucket, key)
}

// TestRecordCacheOnlyFromSingleReads: on bbolt, a record read inside a
// read transaction (whose snapshot may be older than the write clock) is
// never taken as current; a read on its own is, and serves the next single
// read without a store read, spending that request's one read (a second
// read needs a transaction); a write to the bucket ends it.
func TestRecordCacheOnlyFromSingleReads(t *testing.T) {
	ctx := context.Background()
	s := newDevService(t)
	a, err := s.Enroll(ctx, Caller{Kind: KindAdmin}, api.EnrollRequest{Name: "a"})
	if err != nil {
		t.Fatal(err)
	}
	ca := Caller{Kind: KindApp, AppID: a.AppID}
	key, err := s.CreateKey(ctx, ca, api.CreateKeyRequest{Name: "k"})
	if err != nil {
		t.Fatal(err)
	}
	kr, _ := s.keyring()
	current := func() bool {
		kr.mu.RLock()
		defer kr.mu.RUnlock()
		return kr.decoded["keys/"+key.ID].clocked
	}
	read := func(tx store.Tx) error {
		_, err := getVerified(s.itx(tx, kr), kr, "keys", key.ID, (*keyRecord).clone)
		return err
	}
	if err := s.st.View(ctx, read); err != nil || current() {
		t.Fatalf("read in a transaction: taken as current %v, %v", current(), err)
	}
	cr := &countingReader{OneReader: s.st.(store.OneReader)}
	single := func() *oneGetTx {
		t.Helper()
		one := &oneGetTx{ctx: ctx, r: cr}
		if err := read(one); err != nil {
			t.Fatal(err)
		}
		return one
	}
	single()
	if cr.n != 1 || !current() {
		t.Fatalf("single read: %d store reads, current %v", cr.n, current())
	}
	one := single()
	if cr.n != 1 {
		t.Fatalf("cached single read read the store (%d reads)", cr.n)
	}
	if _, err := one.Get("policies", "p"); !errors.Is(err, errNeedTx) {
		t.Fatalf("second read of a request served from the cache: %v", err)
	}
	if _, err := s.UpdateKey(ctx, ca, key.ID, ActionDisable, 0); err != nil {
		t.Fatal(err)
	}
	single()
	if cr.n != 2 {
		t.Fatalf("read after a write: %d store reads, want 2", cr.n)
	}
}
