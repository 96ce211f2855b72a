package kms_test

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"

	"github.com/veil-tee/veil/internal/pgtest"
	"github.com/veil-tee/veil/kms"
	"github.com/veil-tee/veil/kms/client"
	"github.com/veil-tee/veil/kms/store"
)

// keyCacheFollowsWrites checks that key records served to releases are
// never stale: after every change of a key (rotation, disable, policy
// attach and detach, scheduled deletion) made through writer, the next
// release through reader obeys it, and a key record edited in the store
// behind the service's back (tamper, through st) is refused by name on
// the next release. reader has released the key before each change, so
// whatever the server caches is warm.
func keyCacheFollowsWrites(t *testing.T, writer *client.Client, reader *server, readerCreds client.Config, st store.Store) {
	t.Helper()
	app := clientOn(t, reader, readerCreds)
	meas := hexString("c7").repeat32()
	wl := reader.workload(t, kms.Workload{TEE: "sim", Measurement: meas})
	k, err := writer.CreateKey(ctx, "cached", "", "")
	if err != nil {
		t.Fatal(err)
	}
	dk, err := writer.GenerateDataKey(ctx, k.ID, 32, nil)
	if err != nil {
		t.Fatal(err)
	}
	warm := func(step string) {
		t.Helper()
		for range 3 {
			if _, err := app.Decrypt(ctx, dk.Ciphertext, nil); err != nil {
				t.Fatalf("%s: release before the change: %v", step, err)
			}
		}
	}
	warm("rotate")
	if _, err := writer.KeyAction(ctx, k.ID, "rotate"); err != nil {
		t.Fatal(err)
	}
	dk2, err := writer.GenerateDataKey(ctx, k.ID, 32, nil)
	if err != nil {
		t.Fatal(err)
	}
	// A record from before the rotation has no version 2.
	if got, err := app.Decrypt(ctx, dk2.Ciphertext, nil); err != nil || got.KeyVersion != 2 {
		t.Fatalf("release of the rotated version: %+v, %v", got, err)
	}

	warm("disable")
	if _, err := wl.Decrypt(ctx, dk.Ciphertext, nil); err == nil {
		t.Fatal("workload released the key without a policy")
	}
	if _, err := writer.KeyAction(ctx, k.ID, "disable"); err != nil {
		t.Fatal(err)
	}
	_, err = app.Decrypt(ctx, dk.Ciphertext, nil)
	wantCode(t, err, client.ErrKeyDisabled)
	if _, err := writer.KeyAction(ctx, k.ID, "enable"); err != nil {
		t.Fatal(err)
	}

	warm("attach")
	p, err := writer.CreatePolicy(ctx, "cached", json.RawMessage(`{"measurements":["`+meas+`"]}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := writer.AttachKeyPolicy(ctx, k.ID, p.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := wl.Decrypt(ctx, dk.Ciphertext, nil); err != nil {
		t.Fatalf("workload release after the policy was attached: %v", err)
	}
	warm("detach")
	if _, err := writer.DetachKeyPolicy(ctx, k.ID, p.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := wl.Decrypt(ctx, dk.Ciphertext, nil); err == nil {
		t.Fatal("workload release after the policy was detached succeeded")
	}

	warm("delete")
	if _, err := writer.ScheduleKeyDeletion(ctx, k.ID, 7); err != nil {
		t.Fatal(err)
	}
	_, err = app.Decrypt(ctx, dk.Ciphertext, nil)
	wantCode(t, err, client.ErrKeyPendingDel)
	if _, err := writer.KeyAction(ctx, k.ID, "cancel-deletion"); err != nil {
		t.Fatal(err)
	}

	// The key is disabled after the cancelled deletion; whoever can write
	// the store turns it back on in the record itself.
	if _, err := writer.KeyAction(ctx, k.ID, "enable"); err != nil {
		t.Fatal(err)
	}
	if _, err := writer.KeyAction(ctx, k.ID, "disable"); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		_, err = app.Decrypt(ctx, dk.Ciphertext, nil)
		wantCode(t, err, client.ErrKeyDisabled)
	}
	err = st.Update(context.Background(), func(tx store.Tx) error {
		v, err := tx.Get("keys", k.ID)
		if err != nil {
			return err
		}
		if !bytes.Contains(v, []byte(`"state":"disabled"`)) {
			t.Fatalf("key record does not hold its state: %q", v)
		}
		return tx.Put("keys", k.ID, bytes.Replace(v, []byte(`"state":"disabled"`), []byte(`"state":"enabled"`), 1))
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = app.Decrypt(ctx, dk.Ciphertext, nil)
	wantRecordRefused(t, err, "keys/"+k.ID)
}

// TestKeyCacheBolt: on the embedded store a release may be served a key
// record cached since the last write to the keys bucket; every write —
// through the service or straight to the store while it runs — ends that.
func TestKeyCacheBolt(t *testing.T) {
	s := newServer(t, false)
	r, err := s.adminClient(t).Enroll(ctx, "bob")
	if err != nil {
		t.Fatal(err)
	}
	creds := client.Config{AppID: r.AppID, APIKey: r.APIKey}
	keyCacheFollowsWrites(t, clientOn(t, s, creds), s, creds, s.st)
}

// TestKeyCacheReplicas: with PostgreSQL the key is changed through one
// replica and released through another, which read it before.
func TestKeyCacheReplicas(t *testing.T) {
	pg := pgtest.Start(t)
	url := pg.NewDatabase(t)
	rs := newReplicas(t, url, 2)
	r, err := rs[0].adminClient(t).Enroll(ctx, "bob")
	if err != nil {
		t.Fatal(err)
	}
	creds := client.Config{AppID: r.AppID, APIKey: r.APIKey}
	st, err := store.OpenPostgres(context.Background(), url, store.PostgresOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	keyCacheFollowsWrites(t, clientOn(t, rs[0], creds), rs[1], creds, st)
}
