package kms_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/veil-tee/veil/kms"
	"github.com/veil-tee/veil/kms/api"
	"github.com/veil-tee/veil/kms/store"
)

// failingStore is a bbolt store whose read-write transactions fail while
// fail is set, as a store does whose disk is full or whose database went
// away between a release's read and its audit commit.
type failingStore struct {
	store.Store
	fail atomic.Bool
}

func (f *failingStore) Update(ctx context.Context, fn func(store.Tx) error) error {
	if f.fail.Load() {
		return errors.New("injected: the commit failed")
	}
	return f.Store.Update(ctx, fn)
}

// TestReleaseWithheldWhenAuditFails: a release is audited durably before
// it is answered, so when its audit entry cannot be committed the key is
// not released (an error instead of the plaintext), and releases work
// again once the store does.
func TestReleaseWithheldWhenAuditFails(t *testing.T) {
	bolt, err := store.OpenBolt(t.TempDir(), store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	st := &failingStore{Store: bolt}
	t.Cleanup(func() { bolt.Close() })
	ini, err := kms.Initialize(ctx, st, kms.ModeDev, 0, 0, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	s, err := kms.New(ctx, kms.Options{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	if err := s.UnsealWithRootKey(ini.RootKey); err != nil {
		t.Fatal(err)
	}
	enr, err := s.Enroll(ctx, kms.Caller{Kind: kms.KindAdmin}, api.EnrollRequest{Name: "bob"})
	if err != nil {
		t.Fatal(err)
	}
	bob := kms.Caller{Kind: kms.KindApp, AppID: enr.AppID}
	k, err := s.CreateKey(ctx, bob, api.CreateKeyRequest{Name: "cmk"})
	if err != nil {
		t.Fatal(err)
	}
	dk, err := s.GenerateDataKey(ctx, bob, k.ID, api.DataKeyRequest{}, false)
	if err != nil {
		t.Fatal(err)
	}
	st.fail.Store(true)
	if out, err := s.Decrypt(ctx, bob, api.DecryptRequest{Ciphertext: dk.Ciphertext}); err == nil {
		t.Fatalf("decrypt answered (%d bytes of plaintext) although its audit entry was not committed", len(out.Plaintext))
	}
	if out, err := s.GenerateDataKey(ctx, bob, k.ID, api.DataKeyRequest{}, false); err == nil {
		t.Fatalf("generate-data-key answered (%d bytes of plaintext) although its audit entry was not committed", len(out.Plaintext))
	}
	st.fail.Store(false)
	out, err := s.Decrypt(ctx, bob, api.DecryptRequest{Ciphertext: dk.Ciphertext})
	if err != nil || string(out.Plaintext) != string(dk.Plaintext) {
		t.Fatalf("decrypt once the store works again: %v", err)
	}
}
