package kms_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/veil-tee/veil/kms"
	"github.com/veil-tee/veil/kms/api"
	"github.com/veil-tee/veil/kms/audit"
	"github.com/veil-tee/veil/kms/client"
	"github.com/veil-tee/veil/kms/store"
)

var ctx = context.Background()

func TestSealedServerRefusesUntilUnsealed(t *testing.T) {
	s := newServer(t, true)
	adm := s.adminClient(t)
	if _, err := adm.Enroll(ctx, "bob"); !errors.Is(err, client.ErrSealed) {
		t.Fatalf("enroll while sealed: %v", err)
	}
	wantCode(t, adm.Raw(ctx, "GET", "/readyz", nil, false, nil), client.ErrSealed)
	st, err := adm.Unseal(ctx, s.shares[0])
	if err != nil || !st.Sealed || st.Progress != 1 || st.Threshold != 2 {
		t.Fatalf("after one share: %+v %v", st, err)
	}
	// The same share twice does not count.
	if _, err := adm.Unseal(ctx, s.shares[0]); !errors.Is(err, client.Code("bad_shares")) {
		t.Fatalf("repeated share: %v", err)
	}
	// A share of another root key is refused on its own (it matches no
	// commitment) and leaves the progress alone.
	other, _ := kms.Initialize(ctx, mustBolt(t), kms.ModeShamir, 3, 2, time.Now())
	if _, err := adm.Unseal(ctx, other.Shares[1]); !errors.Is(err, client.Code("bad_shares")) {
		t.Fatalf("foreign share: %v", err)
	}
	if st, _ := adm.Status(ctx); !st.Sealed || st.Progress != 1 {
		t.Fatalf("after a foreign share: %+v", st)
	}
	if _, err := adm.Unseal(ctx, "vks1-zz"); !errors.Is(err, client.Code("bad_shares")) {
		t.Fatalf("garbage share: %v", err)
	}
	adm.Unseal(ctx, s.shares[2])
	if st, err := adm.Unseal(ctx, s.shares[0]); err != nil || st.Sealed {
		t.Fatalf("after two good shares: %+v %v", st, err)
	}
	bob, _ := s.app(t, "bob")
	if _, err := bob.CreateKey(ctx, "k", "", ""); err != nil {
		t.Fatal(err)
	}
	// Restart seals again; data survives once unsealed.
	s.restart(true)
	bob = s.client(t, client.Config{AppID: "x", APIKey: "y"})
	_, err = bob.ListKeys(ctx)
	wantCode(t, err, client.ErrSealed)
	if _, err := s.adminClient(t).Seal(ctx); err != nil {
		t.Fatal(err)
	}
}

func mustBolt(t *testing.T) store.Store {
	st, err := store.OpenBolt(t.TempDir(), store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func TestKeyLifecycle(t *testing.T) {
	s := newServer(t, false)
	bob, bobID := s.app(t, "bob")
	k, err := bob.CreateKey(ctx, "bob-cmk", "", "test key")
	if err != nil {
		t.Fatal(err)
	}
	if k.Owner != bobID || k.State != api.StateEnabled || k.PrimaryVersion != 1 {
		t.Fatalf("created %+v", k)
	}
	if _, err := bob.CreateKey(ctx, "bob-cmk", "", ""); !errors.Is(err, client.ErrAlreadyExists) {
		t.Fatalf("duplicate name: %v", err)
	}
	if _, err := bob.CreateKey(ctx, "x", "RSA_1024", ""); !errors.Is(err, client.Code("invalid_field")) {
		t.Fatalf("bad spec: %v", err)
	}
	ct1, err := bob.Encrypt(ctx, "bob-cmk", []byte("hello"), []byte("ctx"))
	if err != nil {
		t.Fatal(err)
	}
	k, err = bob.KeyAction(ctx, k.ID, "rotate")
	if err != nil || k.PrimaryVersion != 2 || len(k.Versions) != 2 {
		t.Fatalf("rotate: %+v %v", k, err)
	}
	ct2, _ := bob.Encrypt(ctx, "bob-cmk", []byte("world"), nil)
	if ct2.KeyVersion != 2 || ct1.KeyVersion != 1 {
		t.Fatalf("versions %d %d", ct1.KeyVersion, ct2.KeyVersion)
	}
	if d, err := bob.Decrypt(ctx, ct1.Ciphertext, []byte("ctx")); err != nil || string(d.Plaintext) != "hello" || d.KeyVersion != 1 {
		t.Fatalf("old version decrypt: %v", err)
	}
	if _, err := bob.Decrypt(ctx, ct1.Ciphertext, []byte("other")); !errors.Is(err, client.ErrDecryptFailed) {
		t.Fatalf("wrong aad: %v", err)
	}
	bad := bytes.Clone(ct1.Ciphertext)
	bad[len(bad)-1] ^= 1
	if _, err := bob.Decrypt(ctx, bad, []byte("ctx")); !errors.Is(err, client.ErrDecryptFailed) {
		t.Fatalf("tampered: %v", err)
	}
	if _, err := bob.Decrypt(ctx, []byte{9, 9}, nil); !errors.Is(err, client.Code("invalid_field")) {
		t.Fatalf("garbage ciphertext: %v", err)
	}
	bob.KeyAction(ctx, "bob-cmk", "disable")
	if _, err := bob.Decrypt(ctx, ct2.Ciphertext, nil); !errors.Is(err, client.ErrKeyDisabled) {
		t.Fatalf("disabled: %v", err)
	}
	bob.KeyAction(ctx, "bob-cmk", "enable")
	if _, err := bob.Decrypt(ctx, ct2.Ciphertext, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.ScheduleKeyDeletion(ctx, "bob-cmk", 31); !errors.Is(err, client.Code("invalid_field")) {
		t.Fatalf("31 days: %v", err)
	}
	k, err = bob.ScheduleKeyDeletion(ctx, "bob-cmk", 7)
	if err != nil || k.State != api.StatePendingDeletion || k.DeletionTime == nil {
		t.Fatalf("schedule: %+v %v", k, err)
	}
	if _, err := bob.Encrypt(ctx, "bob-cmk", []byte("x"), nil); !errors.Is(err, client.ErrKeyPendingDel) {
		t.Fatalf("pending: %v", err)
	}
	if k, err = bob.KeyAction(ctx, "bob-cmk", "cancel-deletion"); err != nil || k.State != api.StateDisabled {
		t.Fatalf("cancel: %+v %v", k, err)
	}
	bob.KeyAction(ctx, "bob-cmk", "enable")
	bob.ScheduleKeyDeletion(ctx, "bob-cmk", 1)
	s.clock.Advance(25 * time.Hour)
	if _, err := bob.Decrypt(ctx, ct2.Ciphertext, nil); !errors.Is(err, client.ErrKeyDeleted) {
		t.Fatalf("after deletion time: %v", err)
	}
	if n, err := s.svc.Sweep(ctx); err != nil || n != 1 {
		t.Fatalf("sweep: %d %v", n, err)
	}
	if _, err := bob.DescribeKey(ctx, "bob-cmk"); !errors.Is(err, client.ErrKeyNotFound) {
		t.Fatalf("name after deletion: %v", err)
	}
	if k, err := bob.DescribeKey(ctx, k.ID); err != nil || k.State != api.StateDeleted {
		t.Fatalf("id after deletion: %+v %v", k, err)
	}
	// The material is gone from the store.
	s.stop()
	st, _ := store.OpenBolt(s.dir, store.BoltOptions{})
	st.View(ctx, func(tx store.Tx) error {
		b, _ := tx.Get("keys", k.ID)
		if bytes.Contains(b, []byte(`"material"`)) {
			t.Error("deleted key still holds material")
		}
		return nil
	})
	st.Close()
}

func TestDataKeys(t *testing.T) {
	s := newServer(t, false)
	bob, _ := s.app(t, "bob")
	bob.CreateKey(ctx, "cmk", "", "")
	dk, err := bob.GenerateDataKey(ctx, "cmk", 0, []byte("file-1"))
	if err != nil || len(dk.Plaintext) != 32 {
		t.Fatalf("generate: %v", err)
	}
	got, err := bob.Decrypt(ctx, dk.Ciphertext, []byte("file-1"))
	if err != nil || !bytes.Equal(got.Plaintext, dk.Plaintext) {
		t.Fatalf("unwrap: %v", err)
	}
	// The blob names its key and version in the clear.
	if !bytes.Contains(dk.Ciphertext, []byte(dk.KeyID)) {
		t.Fatal("blob does not name its key")
	}
	np, err := bob.GenerateDataKeyWithoutPlaintext(ctx, "cmk", 16, nil)
	if err != nil || np.Plaintext != nil {
		t.Fatalf("without plaintext: %+v %v", np, err)
	}
	if got, err := bob.Decrypt(ctx, np.Ciphertext, nil); err != nil || len(got.Plaintext) != 16 {
		t.Fatalf("unwrap without-plaintext key: %v", err)
	}
	if _, err := bob.GenerateDataKey(ctx, "cmk", 8, nil); !errors.Is(err, client.Code("invalid_field")) {
		t.Fatalf("short key: %v", err)
	}
	if _, err := bob.Encrypt(ctx, "cmk", make([]byte, kms.MaxPlaintext+1), nil); !errors.Is(err, client.Code("invalid_field")) {
		t.Fatalf("big plaintext: %v", err)
	}
}

func TestSecrets(t *testing.T) {
	s := newServer(t, false)
	bob, _ := s.app(t, "bob")
	if _, err := bob.PutSecret(ctx, "db-pass", []byte("one"), "database"); err != nil {
		t.Fatal(err)
	}
	sec, err := bob.PutSecret(ctx, "db-pass", []byte("two"), "")
	if err != nil || sec.Version != 2 || sec.Versions != 2 {
		t.Fatalf("second put: %+v %v", sec, err)
	}
	if g, err := bob.GetSecret(ctx, "db-pass", 0); err != nil || string(g.Value) != "two" {
		t.Fatalf("latest: %v", err)
	}
	if g, err := bob.GetSecret(ctx, sec.ID, 1); err != nil || string(g.Value) != "one" || g.Version != 1 {
		t.Fatalf("v1 by id: %v", err)
	}
	if _, err := bob.GetSecret(ctx, "db-pass", 3); !errors.Is(err, client.ErrSecretNotFound) {
		t.Fatalf("v3: %v", err)
	}
	l, _ := bob.ListSecrets(ctx)
	if len(l.Secrets) != 1 || l.Secrets[0].Value != nil {
		t.Fatalf("list: %+v", l)
	}
	if err := bob.DeleteSecret(ctx, "db-pass"); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.GetSecret(ctx, "db-pass", 0); !errors.Is(err, client.ErrSecretNotFound) {
		t.Fatalf("after delete: %v", err)
	}
}

// TestIsolationMatrix: every identity against every other's objects and
// against the endpoints it may not use.
func TestIsolationMatrix(t *testing.T) {
	s := newServer(t, false)
	alice, _ := s.app(t, "alice")
	bob, _ := s.app(t, "bob")
	adm := s.adminClient(t)
	wl := s.workload(t, kms.Workload{TEE: "sim", Measurement: "aa"})
	anon := s.client(t, client.Config{})

	bk, _ := bob.CreateKey(ctx, "bob-cmk", "", "")
	bs, _ := bob.PutSecret(ctx, "bob-secret", []byte("s3cret"), "")
	bp, err := bob.CreatePolicy(ctx, "bob-policy", json.RawMessage(`{"measurements":["bb"]}`))
	if err != nil {
		t.Fatal(err)
	}
	ct, _ := bob.Encrypt(ctx, "bob-cmk", []byte("x"), nil)
	alice.CreateKey(ctx, "bob-cmk", "", "") // same name, own namespace

	// alice cannot reach bob's objects, by id or by name.
	for _, ref := range []string{bk.ID} {
		_, err := alice.DescribeKey(ctx, ref)
		wantCode(t, err, client.ErrKeyNotFound)
		_, err = alice.Encrypt(ctx, ref, []byte("x"), nil)
		wantCode(t, err, client.ErrKeyNotFound)
		_, err = alice.KeyAction(ctx, ref, "disable")
		wantCode(t, err, client.ErrKeyNotFound)
		_, err = alice.GenerateDataKey(ctx, ref, 32, nil)
		wantCode(t, err, client.ErrKeyNotFound)
	}
	_, err = alice.Decrypt(ctx, ct.Ciphertext, nil)
	wantCode(t, err, client.ErrKeyNotFound)
	_, err = alice.GetSecret(ctx, bs.ID, 0)
	wantCode(t, err, client.ErrSecretNotFound)
	_, err = alice.GetPolicy(ctx, bp.ID)
	wantCode(t, err, client.Code("policy_not_found"))
	_, err = alice.AttachKeyPolicy(ctx, "bob-cmk", bp.ID) // alice's own key, bob's policy
	wantCode(t, err, client.Code("policy_not_found"))
	if l, _ := alice.ListKeys(ctx); len(l.Keys) != 1 || l.Keys[0].ID == bk.ID {
		t.Fatalf("alice lists %+v", l)
	}

	// Apps may not use admin endpoints; they are sent with app signatures.
	for _, p := range []string{"/v1/apps", "/v1/audit", "/v1/audit/head"} {
		err := bob.Raw(ctx, "GET", p, nil, false, nil)
		wantCode(t, err, client.ErrForbidden)
	}
	// The admin may not use keys or secrets.
	err = adm.Raw(ctx, "POST", "/v1/keys/"+bk.ID+"/encrypt", []byte(`{"plaintext":"eA=="}`), true, nil)
	wantCode(t, err, client.ErrForbidden)
	err = adm.Raw(ctx, "GET", "/v1/secrets/"+bs.ID, nil, true, nil)
	wantCode(t, err, client.ErrForbidden)
	// Workloads may not use admin or management endpoints.
	for _, c := range []struct{ m, p, body string }{
		{"GET", "/v1/apps", ""}, {"POST", "/v1/apps", `{"name":"evil"}`}, {"GET", "/v1/audit", ""},
		{"POST", "/v1/keys", `{"name":"w"}`}, {"GET", "/v1/keys", ""}, {"POST", "/v1/keys/" + bk.ID + "/disable", ""},
		{"POST", "/v1/policies", `{"name":"p","document":{}}`}, {"PUT", "/v1/secrets/x", `{"value":"eA=="}`},
	} {
		err := wl.Raw(ctx, c.m, c.p, []byte(c.body), false, nil)
		wantCode(t, err, client.ErrForbidden)
	}
	// A workload without a matching policy gets nothing.
	_, err = wl.Decrypt(ctx, ct.Ciphertext, nil)
	wantCode(t, err, client.ErrPolicyDenied)
	// Nobody without credentials.
	_, err = anon.ListKeys(ctx)
	wantCode(t, err, client.ErrUnauthenticated)
	err = anon.Raw(ctx, "GET", "/v1/apps", nil, false, nil)
	wantCode(t, err, client.ErrUnauthenticated)
	bad := s.client(t, client.Config{AdminToken: "vat_wrong"})
	_, err = bad.ListApps(ctx)
	wantCode(t, err, client.ErrUnauthenticated)
}

func TestSignedRequestAttacks(t *testing.T) {
	s := newServer(t, false)
	bob, bobID := s.app(t, "bob")
	bob.CreateKey(ctx, "k", "", "")
	body := []byte(`{"plaintext":"aGk="}`)
	req, err := bob.NewRequest(ctx, "POST", "/v1/keys/k/encrypt", body, false)
	if err != nil {
		t.Fatal(err)
	}
	replay := req.Clone(ctx)
	replay.Body = io.NopCloser(bytes.NewReader(body))
	if err := bob.Do(req, nil); err != nil {
		t.Fatalf("original request: %v", err)
	}
	wantCode(t, bob.Do(replay, nil), client.ErrReplayed)

	// Same signature, other body.
	req, _ = bob.NewRequest(ctx, "POST", "/v1/keys/k/encrypt", body, false)
	req.Body = io.NopCloser(strings.NewReader(`{"plaintext":"aGl4"}`))
	req.ContentLength = -1
	wantCode(t, bob.Do(req, nil), client.ErrBadSignature)
	// Same signature, other path.
	req, _ = bob.NewRequest(ctx, "GET", "/v1/keys", nil, false)
	req.URL.Path = "/v1/secrets"
	wantCode(t, bob.Do(req, nil), client.ErrBadSignature)

	// A clock ten minutes off is outside the window.
	skewed := s.client(t, client.Config{AppID: bobID, APIKey: "wrong"})
	_, err = skewed.ListKeys(ctx)
	wantCode(t, err, client.ErrBadSignature)
	r, _ := s.adminClient(t).Enroll(ctx, "carol")
	late := s.client(t, client.Config{AppID: r.AppID, APIKey: r.APIKey, Clock: func() time.Time { return time.Now().Add(-10 * time.Minute) }})
	_, err = late.ListKeys(ctx)
	wantCode(t, err, client.ErrStaleTimestamp)
	early := s.client(t, client.Config{AppID: r.AppID, APIKey: r.APIKey, Clock: func() time.Time { return time.Now().Add(10 * time.Minute) }})
	_, err = early.ListKeys(ctx)
	wantCode(t, err, client.ErrStaleTimestamp)
}

func TestStrictInput(t *testing.T) {
	s := newServer(t, false)
	bob, _ := s.app(t, "bob")
	var ce *client.Error
	err := bob.Raw(ctx, "POST", "/v1/keys", []byte(`{"name":"k","colour":"red"}`), false, nil)
	if !errors.As(err, &ce) || ce.Status != 400 || ce.Problem.Code != "unknown_field" || !strings.Contains(ce.Problem.Detail, `"colour"`) {
		t.Fatalf("unknown field: %v", err)
	}
	if ce.Problem.Type != api.ProblemTypeBase+"unknown_field" {
		t.Fatalf("problem type %q", ce.Problem.Type)
	}
	for _, b := range []string{`{"name":`, `{"name":"k"} {}`, `{"name":5}`, ``, `[]`} {
		err := bob.Raw(ctx, "POST", "/v1/keys", []byte(b), false, nil)
		wantCode(t, err, client.Code("malformed_json"))
	}
	err = bob.Raw(ctx, "POST", "/v1/keys", bytes.Repeat([]byte("x"), 2<<20), false, nil)
	wantCode(t, err, client.ErrBodyTooLarge)
	err = bob.Raw(ctx, "GET", "/v1/secrets/x?verison=1", nil, false, nil)
	wantCode(t, err, client.ErrUnknownField)
	err = bob.Raw(ctx, "PATCH", "/v1/keys", nil, false, nil)
	wantCode(t, err, client.Code("method_not_allowed"))
	err = bob.Raw(ctx, "GET", "/v2/nothing", nil, false, nil)
	wantCode(t, err, client.Code("not_found"))
	err = bob.Raw(ctx, "POST", "/v1/keys", []byte(`{"name":"../etc"}`), false, nil)
	wantCode(t, err, client.Code("invalid_field"))
	_, err = bob.CreatePolicy(ctx, "p", json.RawMessage(`["not","object"]`))
	wantCode(t, err, client.Code("invalid_field"))
	// Problem responses carry the RFC 7807 media type.
	req, _ := bob.NewRequest(ctx, "GET", "/v1/keys/nope", nil, false)
	resp, err := (&http.Client{Transport: transportOf(t, s)}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Header.Get("Content-Type") != api.ProblemContentType || resp.StatusCode != 404 {
		t.Fatalf("content type %q status %d", resp.Header.Get("Content-Type"), resp.StatusCode)
	}
}

func TestWorkloadRelease(t *testing.T) {
	s := newServer(t, false)
	bob, _ := s.app(t, "bob")
	k, _ := bob.CreateKey(ctx, "bob-cmk", "", "")
	sec, _ := bob.PutSecret(ctx, "model-key", []byte("model"), "")
	good := hexString("5f").repeat32()
	p, err := bob.CreatePolicy(ctx, "prod", json.RawMessage(`{"measurements":["`+good+`"],"min_svn":2}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.AttachKeyPolicy(ctx, "bob-cmk", "prod"); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.AttachSecretPolicy(ctx, "model-key", p.ID); err != nil {
		t.Fatal(err)
	}
	dk, _ := bob.GenerateDataKey(ctx, "bob-cmk", 32, []byte("bind"))

	right := s.workload(t, kms.Workload{TEE: "sim", Measurement: good, SVN: 3})
	got, err := right.Decrypt(ctx, dk.Ciphertext, []byte("bind"))
	if err != nil || !bytes.Equal(got.Plaintext, dk.Plaintext) {
		t.Fatalf("right workload: %v", err)
	}
	if g, err := right.GetSecret(ctx, sec.ID, 0); err != nil || string(g.Value) != "model" {
		t.Fatalf("right workload secret: %v", err)
	}
	if _, err := right.GenerateDataKey(ctx, k.ID, 32, nil); err != nil {
		t.Fatalf("right workload generate: %v", err)
	}
	// Workloads name keys by id only.
	_, err = right.Encrypt(ctx, "bob-cmk", []byte("x"), nil)
	wantCode(t, err, client.ErrKeyNotFound)

	wrong := s.workload(t, kms.Workload{TEE: "sim", Measurement: "00", SVN: 3})
	_, err = wrong.Decrypt(ctx, dk.Ciphertext, []byte("bind"))
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Problem.Code != "policy_denied" || len(ce.Problem.Unmet) != 1 || !strings.Contains(ce.Problem.Unmet[0], "measurement 00") {
		t.Fatalf("wrong measurement: %v (%+v)", err, ce)
	}
	old := s.workload(t, kms.Workload{TEE: "sim", Measurement: good, SVN: 1})
	_, err = old.GetSecret(ctx, sec.ID, 0)
	wantCode(t, err, client.ErrPolicyDenied)

	// Detaching the policy revokes the release.
	bob.DetachKeyPolicy(ctx, "bob-cmk", "prod")
	_, err = right.Decrypt(ctx, dk.Ciphertext, []byte("bind"))
	wantCode(t, err, client.ErrPolicyDenied)
	if err := bob.DeletePolicy(ctx, "prod"); !errors.Is(err, client.Code("policy_in_use")) {
		t.Fatalf("delete attached policy: %v", err)
	}

	// The denial is in the audit log with the reason.
	es, err := s.adminClient(t).AuditEntries(ctx, k.ID, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	var denied *audit.Entry
	for i := range es {
		if es[i].Result == audit.Denied && es[i].Actor.Workload != nil && es[i].Actor.Workload.Measurement == "00" {
			denied = &es[i]
		}
	}
	if denied == nil || !strings.Contains(denied.Reason, "measurement 00") {
		t.Fatalf("denial not audited: %+v", denied)
	}
	// Metrics count releases.
	var m string
	mresp, err := (&http.Client{Transport: transportOf(t, s)}).Get(s.url + "/metrics")
	if err == nil {
		b, _ := io.ReadAll(mresp.Body)
		mresp.Body.Close()
		m = string(b)
	}
	if !strings.Contains(m, `veil_kms_releases_total{result="granted"}`) || !strings.Contains(m, `veil_kms_releases_total{result="denied"}`) || !strings.Contains(m, "veil_kms_request_duration_seconds_bucket") {
		t.Fatalf("metrics missing release counters:\n%.2000s", m)
	}
}

func TestAuditChainDetectsTamperingAcrossRestart(t *testing.T) {
	s := newServer(t, false)
	bob, _ := s.app(t, "bob")
	bob.CreateKey(ctx, "k", "", "")
	for range 3 {
		bob.Encrypt(ctx, "k", []byte("x"), nil)
	}
	adm := s.adminClient(t)
	probs, head, err := adm.VerifyAudit(ctx)
	if err != nil || len(probs) != 0 || head.Seq < 5 || !head.Authentic {
		t.Fatalf("fresh log: %v %+v %v", probs, head, err)
	}
	// Stop, edit entry 3 on disk, restart: everything else survives and
	// verify names the edited entry.
	s.stop()
	st, _ := store.OpenBolt(s.dir, store.BoltOptions{})
	st.Update(ctx, func(tx store.Tx) error {
		k := "00000000000000000003"
		b, _ := tx.Get("audit", k)
		e, _ := audit.Parse(b)
		e.Result = audit.Denied
		return tx.Put("audit", k, audit.Marshal(e))
	})
	st.Close()
	s.start(s.certs, false)
	adm = s.adminClient(t)
	probs, _, err = adm.VerifyAudit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(probs) == 0 || probs[0].Seq != 3 || probs[0].Kind != audit.Edited {
		t.Fatalf("edited entry not reported: %v", probs)
	}
	// Deleting an entry is reported too.
	s.stop()
	st, _ = store.OpenBolt(s.dir, store.BoltOptions{})
	st.Update(ctx, func(tx store.Tx) error { return tx.Delete("audit", "00000000000000000002") })
	st.Close()
	s.start(s.certs, false)
	probs, _, _ = s.adminClient(t).VerifyAudit(ctx)
	found := false
	for _, p := range probs {
		found = found || (p.Seq == 2 && p.Kind == audit.Deleted)
	}
	if !found {
		t.Fatalf("deleted entry not reported: %v", probs)
	}
}

func TestLogsHoldNoSecrets(t *testing.T) {
	s := newServer(t, false)
	r, err := s.adminClient(t).Enroll(ctx, "bob")
	if err != nil {
		t.Fatal(err)
	}
	bob := s.client(t, client.Config{AppID: r.AppID, APIKey: r.APIKey})
	bob.CreateKey(ctx, "k", "", "")
	pt := []byte("very secret plaintext 12345")
	bob.Encrypt(ctx, "k", pt, nil)
	bob.PutSecret(ctx, "s", pt, "")
	dk, _ := bob.GenerateDataKey(ctx, "k", 32, nil)
	bob.Raw(ctx, "POST", "/v1/keys", []byte(`{"bogus":1}`), false, nil)
	logs := s.logs.String()
	if !strings.Contains(logs, `"op":"POST /v1/keys/{ref}/encrypt"`) {
		t.Fatalf("request log missing:\n%s", logs)
	}
	for name, secret := range map[string]string{
		"api key": r.APIKey, "admin token": s.admin, "plaintext": string(pt),
		"plaintext b64": base64.StdEncoding.EncodeToString(pt), "data key": base64.StdEncoding.EncodeToString(dk.Plaintext),
	} {
		if strings.Contains(logs, secret) {
			t.Errorf("log contains the %s", name)
		}
	}
	// Nor does the store hold plaintext, API keys or key material in the clear.
	s.stop()
	raw, _ := readFile(s.dir + "/" + store.BoltFile)
	for _, secret := range [][]byte{pt, []byte(r.APIKey), []byte(s.admin), dk.Plaintext} {
		if bytes.Contains(raw, secret) {
			t.Error("store holds a secret in the clear")
		}
	}
}

func TestWorkloadVerifiedOncePerConnection(t *testing.T) {
	s := newServer(t, false)
	wl := s.workload(t, kms.Workload{TEE: "sim", Measurement: "aa"})
	before := verifyCalls.Load()
	for range 10 {
		_, err := wl.Decrypt(ctx, []byte{1, 1, 'k', 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, nil)
		wantCode(t, err, client.ErrKeyNotFound)
	}
	if n := verifyCalls.Load() - before; n != 1 {
		t.Fatalf("evidence verified %d times over one kept-alive connection, want 1", n)
	}
}

// TestAdminCannotAttachPolicies performs the admin's attack on an app's
// data: create a policy for the app that admits a workload the admin
// controls, attach it to the app's key (or secret), decrypt. The attach
// (and a replace of an attached policy's document) is refused; the admin
// may still create, list and detach.
func TestAdminCannotAttachPolicies(t *testing.T) {
	s := newServer(t, false)
	bob, bobID := s.app(t, "bob")
	k, _ := bob.CreateKey(ctx, "bob-cmk", "", "")
	sec, _ := bob.PutSecret(ctx, "model-key", []byte("model"), "")
	dk, _ := bob.GenerateDataKey(ctx, "bob-cmk", 32, nil)
	adm := s.adminClient(t)
	evil := hexString("e1").repeat32()
	p, err := adm.AdminFor(bobID).CreatePolicy(ctx, "evil", json.RawMessage(`{"measurements":["`+evil+`"],"allow_debug":true}`))
	if err != nil || p.Owner != bobID || !p.ByAdmin {
		t.Fatalf("admin creates bob's policy: %+v %v", p, err)
	}
	if got, _ := bob.GetPolicy(ctx, "evil"); !got.ByAdmin {
		t.Fatal("bob cannot tell the policy was written by the admin")
	}
	_, err = adm.AdminFor(bobID).AttachKeyPolicy(ctx, k.ID, "evil")
	wantCode(t, err, client.ErrForbidden)
	_, err = adm.AdminFor(bobID).AttachSecretPolicy(ctx, sec.ID, "evil")
	wantCode(t, err, client.ErrForbidden)
	wl := s.workload(t, kms.Workload{TEE: "sim", Measurement: evil, Debug: true})
	_, err = wl.Decrypt(ctx, dk.Ciphertext, nil)
	wantCode(t, err, client.ErrPolicyDenied)
	_, err = wl.GetSecret(ctx, sec.ID, 0)
	wantCode(t, err, client.ErrPolicyDenied)

	// Bob's own policy, attached by bob: the admin cannot rewrite its
	// document to admit the admin's workload, but can detach (revoke) it.
	good := hexString("9a").repeat32()
	if _, err := bob.CreatePolicy(ctx, "prod", json.RawMessage(`{"measurements":["`+good+`"]}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.AttachKeyPolicy(ctx, k.ID, "prod"); err != nil {
		t.Fatal(err)
	}
	_, err = adm.AdminFor(bobID).ReplacePolicy(ctx, "prod", json.RawMessage(`{"measurements":["`+evil+`"],"allow_debug":true}`))
	wantCode(t, err, client.ErrForbidden)
	_, err = wl.Decrypt(ctx, dk.Ciphertext, nil)
	wantCode(t, err, client.ErrPolicyDenied)
	right := s.workload(t, kms.Workload{TEE: "sim", Measurement: good})
	if _, err := right.Decrypt(ctx, dk.Ciphertext, nil); err != nil {
		t.Fatalf("workload admitted by bob's policy: %v", err)
	}
	// The owner may replace its own policy; attached keys follow it.
	if _, err := bob.ReplacePolicy(ctx, "prod", json.RawMessage(`{"measurements":["00"]}`)); err != nil {
		t.Fatal(err)
	}
	_, err = right.Decrypt(ctx, dk.Ciphertext, nil)
	wantCode(t, err, client.ErrPolicyDenied)
	if _, err := bob.ReplacePolicy(ctx, "prod", json.RawMessage(`{"measurements":["`+good+`"]}`)); err != nil {
		t.Fatal(err)
	}
	if l, err := adm.AdminFor(bobID).ListPolicies(ctx); err != nil || len(l.Policies) != 2 {
		t.Fatalf("admin lists bob's policies: %v %v", l, err)
	}
	if _, err := adm.AdminFor(bobID).DetachKeyPolicy(ctx, k.ID, "prod"); err != nil {
		t.Fatalf("admin detaches: %v", err)
	}
	_, err = right.Decrypt(ctx, dk.Ciphertext, nil)
	wantCode(t, err, client.ErrPolicyDenied)

	// Without naming the app, or for an unknown app, the admin is refused;
	// apps may not name another app; the admin still cannot use the key.
	err = adm.Raw(ctx, "POST", "/v1/policies", []byte(`{"name":"x","document":{}}`), true, nil)
	wantCode(t, err, client.ErrForbidden)
	_, err = adm.AdminFor("a_00000000000000000000000000000000").ListPolicies(ctx)
	wantCode(t, err, client.Code("app_not_found"))
	err = bob.Raw(ctx, "GET", "/v1/policies?app="+bobID, nil, false, nil)
	wantCode(t, err, client.ErrUnknownField)
	err = adm.Raw(ctx, "POST", "/v1/keys/"+k.ID+"/encrypt?app="+bobID, []byte(`{"plaintext":"eA=="}`), true, nil)
	wantCode(t, err, client.ErrForbidden)
	es, _ := adm.AuditEntries(ctx, k.ID, 0, 0)
	found := false
	for _, e := range es {
		found = found || (e.Op == "key.policy.attach" && e.Actor.Kind == "admin" && e.Owner == bobID && e.Result == audit.Denied)
	}
	if !found {
		t.Fatal("admin's refused attach not audited as the admin")
	}
}

func TestTLS12Refused(t *testing.T) {
	s := newServer(t, false)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(s.ca)
	conn, err := tls.Dial("tcp", strings.TrimPrefix(s.url, "https://"), &tls.Config{RootCAs: pool, MaxVersion: tls.VersionTLS12})
	if err == nil {
		conn.Close()
		t.Fatal("a TLS 1.2 client was accepted")
	}
	conn, err = tls.Dial("tcp", strings.TrimPrefix(s.url, "https://"), &tls.Config{RootCAs: pool})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if v := conn.ConnectionState().Version; v != tls.VersionTLS13 {
		t.Fatalf("negotiated %x", v)
	}
	// A client that does not trust the server's CA refuses it.
	if _, err := tls.Dial("tcp", strings.TrimPrefix(s.url, "https://"), &tls.Config{RootCAs: x509.NewCertPool()}); err == nil {
		t.Fatal("untrusted server certificate accepted")
	}
}
