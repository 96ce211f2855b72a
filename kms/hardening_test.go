package kms_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/veil-tee/veil/kms"
	"github.com/veil-tee/veil/kms/api"
	"github.com/veil-tee/veil/kms/audit"
	"github.com/veil-tee/veil/kms/client"
	"github.com/veil-tee/veil/kms/store"
)

// editBolt opens the stopped server's database file with bbolt itself, as
// an attacker with write access to the file would, and runs fn on it.
func editBolt(t *testing.T, s *server, fn func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(s.dir+"/"+store.BoltFile, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

// enroll enrolls an app and returns its credentials, for clients made
// again after a restart (the server's address changes).
func enroll(t *testing.T, s *server, name string) client.Config {
	t.Helper()
	r, err := s.adminClient(t).Enroll(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	return client.Config{AppID: r.AppID, APIKey: r.APIKey, Clock: s.clock.Now}
}

func metricsText(t *testing.T, s *server) string {
	t.Helper()
	resp, err := (&http.Client{Transport: transportOf(t, s)}).Get(s.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// wantRecordRefused checks that err refuses the request and names the
// record: record_integrity when the record is read, or, once the server
// found at start that the stored records disagree with the authenticated
// audit head, audit_chain_damaged listing the records that fail.
func wantRecordRefused(t *testing.T, err error, rec string) {
	t.Helper()
	var ce *client.Error
	if !errors.As(err, &ce) || (ce.Problem.Code != "record_integrity" && ce.Problem.Code != "audit_chain_damaged") || !strings.Contains(ce.Problem.Detail, rec) {
		t.Fatalf("got %v, want a refusal naming %s", err, rec)
	}
}

// TestEditedPolicyRecordRefused: whoever can write kms.db edits the
// measurement in an attached policy document so that their workload
// qualifies — with the server stopped (bbolt opened directly), and while
// it runs. The release is refused, the error names the record, and the
// refusal is counted in the metrics.
func TestEditedPolicyRecordRefused(t *testing.T) {
	s := newServer(t, false)
	bob, _ := s.app(t, "bob")
	good := hexString("5f").repeat32()
	evil := hexString("e1").repeat32()
	if _, err := bob.CreateKey(ctx, "k", "", ""); err != nil {
		t.Fatal(err)
	}
	p, err := bob.CreatePolicy(ctx, "prod", json.RawMessage(`{"measurements":["`+good+`"]}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.AttachKeyPolicy(ctx, "k", "prod"); err != nil {
		t.Fatal(err)
	}
	dk, _ := bob.GenerateDataKey(ctx, "k", 32, nil)
	if _, err := s.workload(t, kms.Workload{TEE: "sim", Measurement: good}).Decrypt(ctx, dk.Ciphertext, nil); err != nil {
		t.Fatalf("release before the edit: %v", err)
	}
	edit := func(v []byte) []byte {
		if !bytes.Contains(v, []byte(good)) {
			t.Fatalf("policy record does not hold the measurement: %q", v)
		}
		return bytes.ReplaceAll(v, []byte(good), []byte(evil))
	}
	// While the server runs (a write that bypasses the service).
	var orig []byte
	s.st.Update(ctx, func(tx store.Tx) error {
		v, _ := tx.Get("policies", p.ID)
		orig = bytes.Clone(v)
		return tx.Put("policies", p.ID, edit(v))
	})
	_, err = s.workload(t, kms.Workload{TEE: "sim", Measurement: evil}).Decrypt(ctx, dk.Ciphertext, nil)
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Problem.Code != "record_integrity" || !strings.Contains(ce.Problem.Detail, "policies/"+p.ID) {
		t.Fatalf("release after editing the policy record: %v", err)
	}
	if m := metricsText(t, s); !strings.Contains(m, `veil_kms_record_integrity_failures_total{bucket="policies"} 1`) {
		t.Fatalf("integrity failure not counted:\n%.3000s", m)
	}
	s.st.Update(ctx, func(tx store.Tx) error { return tx.Put("policies", p.ID, orig) })
	// With the server stopped, on the file.
	s.stop()
	editBolt(t, s, func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("policies"))
		return b.Put([]byte(p.ID), edit(b.Get([]byte(p.ID))))
	})
	s.start(s.certs, false)
	_, err = s.workload(t, kms.Workload{TEE: "sim", Measurement: evil}).Decrypt(ctx, dk.Ciphertext, nil)
	wantRecordRefused(t, err, "policies/"+p.ID)
	if m := metricsText(t, s); !strings.Contains(m, `veil_kms_record_integrity_failures_total{bucket="policies"}`) {
		t.Fatalf("integrity failure not counted after restart:\n%.3000s", m)
	}
}

// TestForgedStoreRecordsRefused: records written, moved or swapped in the
// file without the root key are refused by name: a key record whose policy
// list was edited, a policy record copied under another id, a name index
// entry redirected to another app's key, and a record with no MAC at all.
func TestForgedStoreRecordsRefused(t *testing.T) {
	s := newServer(t, false)
	bobC, eveC := enroll(t, s, "bob"), enroll(t, s, "eve")
	bob, eve := s.client(t, bobC), s.client(t, eveC)
	k, _ := bob.CreateKey(ctx, "k", "", "")
	ek, _ := eve.CreateKey(ctx, "ek", "", "")
	evil := hexString("e1").repeat32()
	ep, _ := eve.CreatePolicy(ctx, "mine", json.RawMessage(`{"measurements":["`+evil+`"]}`))
	bp, _ := bob.CreatePolicy(ctx, "other", json.RawMessage(`{"measurements":["00"]}`))
	dk, _ := bob.GenerateDataKey(ctx, "k", 32, nil)
	s.stop()
	editBolt(t, s, func(tx *bolt.Tx) error {
		// bob's key now lists eve's policy (raw JSON edit).
		keys := tx.Bucket([]byte("keys"))
		v := keys.Get([]byte(k.ID))
		v = bytes.Replace(v, []byte(`"policies":[]`), []byte(`"policies":["`+ep.ID+`"]`), 1)
		if err := keys.Put([]byte(k.ID), v); err != nil {
			return err
		}
		// eve's policy copied over bob's policy id.
		pol := tx.Bucket([]byte("policies"))
		if err := pol.Put([]byte(bp.ID), append([]byte(nil), pol.Get([]byte(ep.ID))...)); err != nil {
			return err
		}
		// The admin token hash replaced by one of the attacker's token.
		h := sha256.Sum256([]byte("veil-kms-admin-token-v1\nvat_mine"))
		if err := tx.Bucket([]byte("meta")).Put([]byte("admin"), []byte(`{"token_hash":"`+hex.EncodeToString(h[:])+`"}`)); err != nil {
			return err
		}
		// eve's name "ek" now points at bob's key.
		if err := tx.Bucket([]byte("names")).Put([]byte("key/"+ek.Owner+"/ek"), []byte(k.ID)); err != nil {
			return err
		}
		return nil
	})
	s.start(s.certs, false)
	bob, eve = s.client(t, bobC), s.client(t, eveC)
	wantRecord := func(err error, rec string) { t.Helper(); wantRecordRefused(t, err, rec) }
	_, err := s.workload(t, kms.Workload{TEE: "sim", Measurement: evil}).Decrypt(ctx, dk.Ciphertext, nil)
	wantRecord(err, "keys/"+k.ID)
	_, err = bob.GetPolicy(ctx, bp.ID)
	wantRecord(err, "policies/"+bp.ID)
	_, err = eve.Encrypt(ctx, "ek", []byte("x"), nil)
	wantRecord(err, "names/key/")
	_, err = s.client(t, client.Config{AdminToken: "vat_mine"}).ListApps(ctx)
	wantRecord(err, "meta/admin")
}

// TestBogusSharesDoNotDisturbUnseal: an unauthenticated caller sends
// shares of another root key, shares with a real index but a forged value,
// and garbage, while holders are unsealing. Each is refused on its own and
// the progress of the real holders is untouched.
func TestBogusSharesDoNotDisturbUnseal(t *testing.T) {
	s := newServer(t, true)
	anon := s.client(t, client.Config{})
	if st, err := anon.Unseal(ctx, s.shares[0]); err != nil || st.Progress != 1 {
		t.Fatalf("first share: %+v %v", st, err)
	}
	other, _ := kms.Initialize(ctx, mustBolt(t), kms.ModeShamir, 3, 2, time.Now())
	forged := []byte(s.shares[1])
	if forged[len(forged)-1] == '0' {
		forged[len(forged)-1] = '1'
	} else {
		forged[len(forged)-1] = '0'
	}
	for i := range 20 {
		bogus := []string{other.Shares[i%3], string(forged), "vks1-02" + strings.Repeat("ab", 32)}[i%3]
		st, err := anon.Unseal(ctx, bogus)
		if !errors.Is(err, client.Code("bad_shares")) {
			t.Fatalf("bogus share %d accepted: %v", i, err)
		}
		if st, _ = anon.Status(ctx); !st.Sealed || st.Progress != 1 {
			t.Fatalf("bogus share %d changed the progress: %+v", i, st)
		}
	}
	if st, err := anon.Unseal(ctx, s.shares[1]); err != nil || st.Sealed {
		t.Fatalf("second real share: %+v %v", st, err)
	}
	if m := metricsText(t, s); !strings.Contains(m, "veil_kms_unseal_bad_shares_total 20") {
		t.Fatal("bad shares not counted")
	}
}

// TestAppKeyRotateAndDisable: after a rotation the old API key is refused
// at once (even though it was cached by a request just before); the app
// may rotate its own key but not another's; a disabled app is refused.
func TestAppKeyRotateAndDisable(t *testing.T) {
	s := newServer(t, false)
	bobC, eveC := enroll(t, s, "bob"), enroll(t, s, "eve")
	bob, eve := s.client(t, bobC), s.client(t, eveC)
	if _, err := bob.CreateKey(ctx, "k", "", ""); err != nil {
		t.Fatal(err)
	}
	adm := s.adminClient(t)
	r, err := adm.RotateAppKey(ctx, bobC.AppID)
	if err != nil || r.AppID != bobC.AppID || r.APIKey == bobC.APIKey {
		t.Fatalf("admin rotates: %+v %v", r, err)
	}
	_, err = bob.ListKeys(ctx)
	wantCode(t, err, client.ErrBadSignature)
	newC := bobC
	newC.APIKey = r.APIKey
	bob2 := s.client(t, newC)
	if l, err := bob2.ListKeys(ctx); err != nil || len(l.Keys) != 1 {
		t.Fatalf("new key: %v %v", l, err)
	}
	// The app rotates its own key; the previous one stops working.
	r2, err := bob2.RotateAppKey(ctx, bobC.AppID)
	if err != nil {
		t.Fatal(err)
	}
	_, err = bob2.ListKeys(ctx)
	wantCode(t, err, client.ErrBadSignature)
	newC.APIKey = r2.APIKey
	bob3 := s.client(t, newC)
	// Now only bob knows its key: the admin may no longer re-key bob
	// (that would hand the admin bob's credentials).
	_, err = adm.RotateAppKey(ctx, bobC.AppID)
	wantCode(t, err, client.ErrForbidden)
	if l, _ := adm.ListApps(ctx); len(l.Apps) != 2 || !slices.ContainsFunc(l.Apps, func(a api.App) bool { return a.AppID == bobC.AppID && a.SelfKeyed }) {
		t.Fatalf("apps: %+v", l.Apps)
	}
	// Another app cannot rotate bob's key.
	_, err = eve.RotateAppKey(ctx, bobC.AppID)
	wantCode(t, err, client.ErrForbidden)
	err = bob3.Raw(ctx, "POST", "/v1/apps/"+eveC.AppID+"/disable", nil, false, nil)
	wantCode(t, err, client.ErrForbidden)
	// Disabled: refused at once, whatever the key.
	if _, err := bob3.ListKeys(ctx); err != nil {
		t.Fatal(err)
	}
	if a, err := adm.DisableApp(ctx, bobC.AppID); err != nil || !a.Disabled {
		t.Fatalf("disable: %+v %v", a, err)
	}
	_, err = bob3.ListKeys(ctx)
	wantCode(t, err, client.Code("app_disabled"))
	re, err := adm.RotateAppKey(ctx, eveC.AppID)
	if err != nil {
		t.Fatalf("admin re-keys eve, who never rotated her own key: %v", err)
	}
	if _, err := adm.RotateAppKey(ctx, bobC.AppID); !errors.Is(err, client.Code("app_disabled")) {
		t.Fatalf("rotate a disabled app: %v", err)
	}
	_, err = eve.ListKeys(ctx)
	wantCode(t, err, client.ErrBadSignature) // eve's old key, re-keyed above
	eveC.APIKey = re.APIKey
	if _, err := s.client(t, eveC).ListKeys(ctx); err != nil {
		t.Fatalf("eve after bob was disabled: %v", err)
	}
}

// TestReplayCachePerApp: one app filling its replay cache (here a bound
// of 5 signed requests per window) gets replay_cache_full; another app is
// still served.
func TestReplayCachePerApp(t *testing.T) {
	s := newServer(t, false)
	s.maxNonces = 5
	s.restart(false)
	bobC, eveC := enroll(t, s, "bob"), enroll(t, s, "eve")
	bob, eve := s.client(t, bobC), s.client(t, eveC)
	var err error
	for range 6 {
		if _, err = bob.ListKeys(ctx); err != nil {
			break
		}
	}
	wantCode(t, err, client.Code("replay_cache_full"))
	if _, err := eve.ListKeys(ctx); err != nil {
		t.Fatalf("other app while bob's cache is full: %v", err)
	}
}

// TestRolledBackRecordDetected: whoever can write kms.db puts back older
// authentic versions of records — the key record from before its policy
// was detached, the app record from before its API key was rotated — or
// deletes one. Each record's MAC still verifies, but the stored records no
// longer match the state digest in the authenticated audit head: the
// service refuses audited requests, /readyz says why, and the revoked
// release and the old API key do not work.
func TestRolledBackRecordDetected(t *testing.T) {
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, s *server, bobC client.Config, keyID, policyID string) (restore func(tx *bolt.Tx) error)
	}{
		{"detached policy re-attached", func(t *testing.T, s *server, bobC client.Config, keyID, policyID string) func(tx *bolt.Tx) error {
			var old []byte
			s.st.View(ctx, func(tx store.Tx) error { v, _ := tx.Get("keys", keyID); old = bytes.Clone(v); return nil })
			if _, err := s.client(t, bobC).DetachKeyPolicy(ctx, keyID, policyID); err != nil {
				t.Fatal(err)
			}
			return func(tx *bolt.Tx) error { return tx.Bucket([]byte("keys")).Put([]byte(keyID), old) }
		}},
		{"rotated API key restored", func(t *testing.T, s *server, bobC client.Config, _, _ string) func(tx *bolt.Tx) error {
			var old []byte
			s.st.View(ctx, func(tx store.Tx) error { v, _ := tx.Get("apps", bobC.AppID); old = bytes.Clone(v); return nil })
			if _, err := s.client(t, bobC).RotateAppKey(ctx, bobC.AppID); err != nil {
				t.Fatal(err)
			}
			return func(tx *bolt.Tx) error { return tx.Bucket([]byte("apps")).Put([]byte(bobC.AppID), old) }
		}},
		{"record deleted", func(t *testing.T, s *server, bobC client.Config, _, _ string) func(tx *bolt.Tx) error {
			return func(tx *bolt.Tx) error { return tx.Bucket([]byte("names")).Delete([]byte("key/" + bobC.AppID + "/k")) }
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newServer(t, false)
			bobC := enroll(t, s, "bob")
			bob := s.client(t, bobC)
			good := hexString("5f").repeat32()
			k, _ := bob.CreateKey(ctx, "k", "", "")
			p, _ := bob.CreatePolicy(ctx, "prod", json.RawMessage(`{"measurements":["`+good+`"]}`))
			if _, err := bob.AttachKeyPolicy(ctx, k.ID, p.ID); err != nil {
				t.Fatal(err)
			}
			dk, _ := bob.GenerateDataKey(ctx, k.ID, 32, nil)
			restore := tc.run(t, s, bobC, k.ID, p.ID)
			s.stop()
			editBolt(t, s, restore)
			s.start(s.certs, false)
			_, err := s.workload(t, kms.Workload{TEE: "sim", Measurement: good}).Decrypt(ctx, dk.Ciphertext, nil)
			var ce *client.Error
			if !errors.As(err, &ce) || ce.Problem.Code != "audit_chain_damaged" || !strings.Contains(ce.Problem.Detail, "older version") {
				t.Fatalf("release after the rollback: %v", err)
			}
			_, err = s.client(t, bobC).ListKeys(ctx) // the API key bob had at the start
			if !errors.As(err, &ce) || ce.Problem.Code != "audit_chain_damaged" {
				t.Fatalf("app request after the rollback: %v", err)
			}
			err = s.adminClient(t).Raw(ctx, "GET", "/readyz", nil, false, nil)
			if !errors.As(err, &ce) || ce.Problem.Code != "audit_chain_damaged" {
				t.Fatalf("/readyz after the rollback: %v", err)
			}
			probs, _, err := s.adminClient(t).VerifyAudit(ctx)
			if err != nil || !hasProblem(probs, audit.Damaged, 0) {
				t.Fatalf("verify after the rollback: %v %v", probs, err)
			}
		})
	}
}
