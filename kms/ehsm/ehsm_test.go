package ehsm_test

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/veil-tee/veil/kms"
	"github.com/veil-tee/veil/kms/ehsm"
	"github.com/veil-tee/veil/kms/store"
)

// clock is the service's injected time.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

type env struct {
	url   string
	admin string
	svc   *kms.Service
	clk   *clock
}

func start(t testing.TB) *env {
	t.Helper()
	ctx := context.Background()
	st, err := store.OpenBolt(t.TempDir(), store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	res, err := kms.Initialize(ctx, st, kms.ModeDev, 0, 0, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	clk := &clock{t: time.Now()}
	svc, err := kms.New(ctx, kms.Options{Store: st, Clock: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	if err := svc.UnsealWithRootKey(res.RootKey); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(ehsm.Handler(svc, ehsm.Options{Version: "test"}))
	t.Cleanup(srv.Close)
	return &env{url: srv.URL, admin: res.AdminToken, svc: svc, clk: clk}
}

// client follows eHSM's API reference: the body is {appid, payload,
// timestamp, sign}, sign = base64(HMAC-SHA256(apikey, "appid=..&payload=
// k1=v1&k2=v2&timestamp=..")) with the payload members in ASCII order and
// the timestamp in milliseconds. It is written independently of the
// package's own StringToSign.
type client struct {
	t            *testing.T
	url          string
	appid, key   string
	now          func() time.Time
	lastBody     []byte
	tamperSigned func(string) string
}

type reply struct {
	Code    int             `json:"code"`
	Message string          `json:"message"`
	Result  json.RawMessage `json:"result"`
}

func (c *client) body(payload map[string]any) []byte {
	keys := make([]string, 0, len(payload))
	for k := range payload {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var p strings.Builder
	for i, k := range keys {
		if i > 0 {
			p.WriteByte('&')
		}
		fmt.Fprintf(&p, "%s=%v", k, payload[k])
	}
	ts := strconv.FormatInt(c.now().UnixMilli(), 10)
	signed := "appid=" + c.appid + "&payload=" + p.String() + "&timestamp=" + ts
	if c.tamperSigned != nil {
		signed = c.tamperSigned(signed)
	}
	m := hmac.New(sha256.New, []byte(c.key))
	m.Write([]byte(signed))
	b, err := json.Marshal(map[string]any{"appid": c.appid, "payload": payload, "timestamp": ts,
		"sign": base64.StdEncoding.EncodeToString(m.Sum(nil))})
	if err != nil {
		c.t.Fatal(err)
	}
	return b
}

func post(t *testing.T, url, action string, body []byte, hdr map[string]string) reply {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url+"/ehsm?Action="+action, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r reply
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		t.Fatal(err)
	}
	return r
}

func (c *client) call(action string, payload map[string]any) reply {
	c.lastBody = c.body(payload)
	return post(c.t, c.url, action, c.lastBody, nil)
}

func (c *client) must(action string, payload map[string]any, out any) {
	c.t.Helper()
	r := c.call(action, payload)
	if r.Code != 200 {
		c.t.Fatalf("%s: code %d: %s", action, r.Code, r.Message)
	}
	if err := json.Unmarshal(r.Result, out); err != nil {
		c.t.Fatal(err)
	}
}

func enroll(t *testing.T, e *env) *client {
	t.Helper()
	r := post(t, e.url, "Enroll", nil, map[string]string{"Authorization": "Bearer " + e.admin})
	if r.Code != 200 {
		t.Fatalf("Enroll: %d %s", r.Code, r.Message)
	}
	var out struct{ AppID, APIKey string }
	if err := json.Unmarshal(r.Result, &out); err != nil || out.AppID == "" || out.APIKey == "" {
		t.Fatalf("Enroll result %s: %v", r.Result, err)
	}
	return &client{t: t, url: e.url, appid: out.AppID, key: out.APIKey, now: time.Now}
}

// TestBigDLFlow runs BigDL PPML's key flow: enroll, create a primary key,
// generate a data key, wrap the data key (as BigDL stores it next to its
// files) and unwrap it again.
func TestBigDLFlow(t *testing.T) {
	e := start(t)
	c := enroll(t, e)
	var ck struct{ Cmk string }
	c.must("CreateKey", map[string]any{"keyspec": "EH_AES_GCM_128", "origin": "EH_INTERNAL_KEY"}, &ck)
	var dk struct{ Plaintext, Ciphertext string }
	c.must("GenerateDataKey", map[string]any{"cmk": ck.Cmk, "keylen": 32}, &dk)
	plain, _ := base64.StdEncoding.DecodeString(dk.Plaintext)
	if len(plain) != 32 {
		t.Fatalf("data key of %d bytes", len(plain))
	}
	// Unwrap the stored (wrapped) data key.
	var out struct{ Plaintext string }
	c.must("Decrypt", map[string]any{"cmk": ck.Cmk, "ciphertext": dk.Ciphertext}, &out)
	if out.Plaintext != dk.Plaintext {
		t.Fatal("Decrypt did not return the data key")
	}
	// Encrypt a file's data key with the primary key and decrypt it.
	fileKey := make([]byte, 32)
	rand.Read(fileKey)
	var ct struct{ Ciphertext string }
	aad := base64.StdEncoding.EncodeToString([]byte("file.csv"))
	c.must("Encrypt", map[string]any{"cmk": ck.Cmk, "plaintext": base64.StdEncoding.EncodeToString(fileKey), "aad": aad}, &ct)
	c.must("Decrypt", map[string]any{"cmk": ck.Cmk, "ciphertext": ct.Ciphertext, "aad": aad}, &out)
	if got, _ := base64.StdEncoding.DecodeString(out.Plaintext); !bytes.Equal(got, fileKey) {
		t.Fatal("round trip changed the file key")
	}
	// The data key encrypts data (as BigDL does with it).
	blk, _ := aes.NewCipher(plain)
	if _, err := cipher.NewGCM(blk); err != nil {
		t.Fatal(err)
	}
	// BigDL's own sequence: a data key without plaintext, stored wrapped,
	// later unwrapped with Decrypt; both with aad "test" and keylen sent
	// as a JSON number.
	var wo struct{ Plaintext, Ciphertext string }
	c.must("GenerateDataKeyWithoutPlaintext", map[string]any{"aad": "test", "cmk": ck.Cmk, "keylen": 32}, &wo)
	if wo.Plaintext != "" || wo.Ciphertext == "" {
		t.Fatalf("GenerateDataKeyWithoutPlaintext returned %+v", wo)
	}
	c.must("Decrypt", map[string]any{"aad": "test", "ciphertext": wo.Ciphertext, "cmk": ck.Cmk}, &out)
	if k, _ := base64.StdEncoding.DecodeString(out.Plaintext); len(k) != 32 {
		t.Fatalf("unwrapped data key of %d bytes", len(k))
	}
	if r := c.call("Decrypt", map[string]any{"aad": "dGVzdDI=", "ciphertext": wo.Ciphertext, "cmk": ck.Cmk}); r.Code == 200 {
		t.Fatal("Decrypt with another aad succeeded")
	}
	var lk struct {
		List []struct{ Keyid string }
	}
	c.must("ListKey", map[string]any{}, &lk)
	if len(lk.List) != 1 || lk.List[0].Keyid != ck.Cmk {
		t.Fatalf("ListKey: %+v", lk)
	}
	// Each call went through the service: the audit chain has them.
	page, err := e.svc.AuditEntries(context.Background(), kms.Caller{Kind: kms.KindAdmin}, "", 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	all := ""
	for _, en := range page.Entries {
		all += string(en)
	}
	for _, op := range []string{"app.enroll", "key.create", "key.generate-data-key", "decrypt", "key.encrypt"} {
		if !strings.Contains(all, `"op":"`+op+`"`) {
			t.Errorf("audit chain has no %s entry", op)
		}
	}
}

func TestAsymmetricAndQuotePolicy(t *testing.T) {
	e := start(t)
	c := enroll(t, e)
	var ck struct{ Cmk string }
	c.must("CreateKey", map[string]any{"keyspec": "EH_EC_P256"}, &ck)
	var pk struct{ Pubkey string }
	c.must("GetPublicKey", map[string]any{"cmk": ck.Cmk}, &pk)
	if !strings.Contains(pk.Pubkey, "PUBLIC KEY") {
		t.Fatalf("GetPublicKey: %q", pk.Pubkey)
	}
	d := sha256.Sum256([]byte("model.bin"))
	digest := base64.StdEncoding.EncodeToString(d[:])
	var sg struct{ Signature string }
	c.must("Sign", map[string]any{"cmk": ck.Cmk, "digest": digest}, &sg)
	var vr struct{ Result bool }
	c.must("Verify", map[string]any{"cmk": ck.Cmk, "digest": digest, "signature": sg.Signature}, &vr)
	if !vr.Result {
		t.Fatal("Verify refused a good signature")
	}
	d2 := sha256.Sum256([]byte("other"))
	c.must("Verify", map[string]any{"cmk": ck.Cmk, "digest": base64.StdEncoding.EncodeToString(d2[:]), "signature": sg.Signature}, &vr)
	if vr.Result {
		t.Fatal("Verify accepted a signature over another digest")
	}
	mre := strings.Repeat("ab", 32)
	var up struct{ PolicyID string }
	c.must("UploadQuotePolicy", map[string]any{"mr_enclave": mre, "mr_signer": strings.Repeat("cd", 32)}, &up)
	var gp struct {
		MrEnclave string `json:"mr_enclave"`
	}
	c.must("GetQuotePolicy", map[string]any{"policyId": up.PolicyID}, &gp)
	if gp.MrEnclave != mre {
		t.Fatalf("GetQuotePolicy: %+v", gp)
	}
	if r := c.call("GenerateQuote", map[string]any{"challenge": "eA=="}); r.Code != 400 {
		t.Fatalf("GenerateQuote: code %d, want 400 (not offered)", r.Code)
	}
}

func TestAuthenticationRefusals(t *testing.T) {
	e := start(t)
	a := enroll(t, e)
	b := enroll(t, e)
	var ck struct{ Cmk string }
	a.must("CreateKey", map[string]any{"keyspec": "EH_AES_GCM_256"}, &ck)
	var ct struct{ Ciphertext string }
	a.must("Encrypt", map[string]any{"cmk": ck.Cmk, "plaintext": "c2VjcmV0"}, &ct)

	// Replay: the exact request accepted once is refused the second time.
	body := a.body(map[string]any{"cmk": ck.Cmk, "ciphertext": ct.Ciphertext})
	if r := post(t, e.url, "Decrypt", body, nil); r.Code != 200 {
		t.Fatalf("first Decrypt: %d %s", r.Code, r.Message)
	}
	if r := post(t, e.url, "Decrypt", body, nil); r.Code != 401 || !strings.Contains(r.Message, "replayed") || len(r.Result) > 2 {
		t.Fatalf("replayed Decrypt: %d %s %s", r.Code, r.Message, r.Result)
	}

	// Bad signature: signed with another key, or over other content.
	bad := *a
	bad.key = b.key
	if r := bad.call("Decrypt", map[string]any{"cmk": ck.Cmk, "ciphertext": ct.Ciphertext}); r.Code != 401 {
		t.Fatalf("wrong key: %d %s", r.Code, r.Message)
	}
	tam := *a
	tam.tamperSigned = func(s string) string { return strings.Replace(s, ck.Cmk, "k_other", 1) }
	if r := tam.call("Decrypt", map[string]any{"cmk": ck.Cmk, "ciphertext": ct.Ciphertext}); r.Code != 401 {
		t.Fatalf("signature over other content: %d %s", r.Code, r.Message)
	}

	// Stale timestamp: one hour old.
	old := *a
	old.now = func() time.Time { return time.Now().Add(-time.Hour) }
	if r := old.call("Decrypt", map[string]any{"cmk": ck.Cmk, "ciphertext": ct.Ciphertext}); r.Code != 401 || !strings.Contains(r.Message, "stale") {
		t.Fatalf("stale timestamp: %d %s", r.Code, r.Message)
	}

	// A ciphertext is decrypted only under the cmk it names.
	var ck2 struct{ Cmk string }
	a.must("CreateKey", map[string]any{"keyspec": "EH_AES_GCM_256"}, &ck2)
	if r := a.call("Decrypt", map[string]any{"cmk": ck2.Cmk, "ciphertext": ct.Ciphertext}); r.Code != 400 || len(r.Result) > 2 {
		t.Fatalf("Decrypt under another cmk: %d %s %s", r.Code, r.Message, r.Result)
	}

	// App B using app A's key.
	if r := b.call("Decrypt", map[string]any{"cmk": ck.Cmk, "ciphertext": ct.Ciphertext}); r.Code == 200 {
		t.Fatalf("app B decrypted with app A's key: %s", r.Result)
	}
	if r := b.call("Encrypt", map[string]any{"cmk": ck.Cmk, "plaintext": "c2VjcmV0"}); r.Code == 200 {
		t.Fatal("app B encrypted with app A's key")
	}
	if r := b.call("GenerateDataKey", map[string]any{"cmk": ck.Cmk, "keylen": 32}); r.Code == 200 {
		t.Fatal("app B generated a data key under app A's key")
	}

	// Enroll is the admin's: without or with a wrong token it is refused.
	if r := post(t, e.url, "Enroll", nil, nil); r.Code != 401 {
		t.Fatalf("Enroll without token: %d", r.Code)
	}
	if r := post(t, e.url, "Enroll", nil, map[string]string{"Authorization": "Bearer wrong"}); r.Code != 401 {
		t.Fatalf("Enroll with a wrong token: %d", r.Code)
	}
	// An unknown app id is refused.
	ghost := *a
	ghost.appid = "a_00000000000000000000000000000000"
	if r := ghost.call("ListKey", map[string]any{}); r.Code != 401 {
		t.Fatalf("unknown app: %d", r.Code)
	}
}

// TestStringToSign pins the package's signing string to the documented form.
func TestStringToSign(t *testing.T) {
	got := ehsm.StringToSign("app", "", "1643050812444", map[string]string{"origin": "EH_INTERNAL_KEY", "keyspec": "EH_RSA_3072"})
	want := "appid=app&payload=keyspec=EH_RSA_3072&origin=EH_INTERNAL_KEY&timestamp=1643050812444"
	if got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	if got := ehsm.StringToSign("app", "n0nce-0123456789ab", "1", nil); got != "appid=app&nonce=n0nce-0123456789ab&payload=&timestamp=1" {
		t.Fatalf("with nonce: %q", got)
	}
}

// FuzzRequest sends arbitrary bodies: never a panic, never a success
// without a valid signature.
func FuzzRequest(f *testing.F) {
	f.Add("ListKey", []byte(`{"appid":"a_00000000000000000000000000000000","timestamp":"1","payload":{"k":1},"sign":"AAAA"}`))
	f.Add("Encrypt", []byte(`{"appid":"x","payload":{"cmk":"k","plaintext":"eA=="},"timestamp":"1700000000000","sign":"`+strings.Repeat("A", 43)+`="}`))
	f.Add("Enroll", []byte(`{"name":"x"}`))
	f.Add("GetVersion", []byte(``))
	h := ehsm.Handler(start(f).svc, ehsm.Options{Version: "fuzz"})
	f.Fuzz(func(t *testing.T, action string, body []byte) {
		req := httptest.NewRequest(http.MethodPost, "/ehsm?Action="+url.QueryEscape(action), bytes.NewReader(body))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		var r reply
		if err := json.Unmarshal(rec.Body.Bytes(), &r); err != nil {
			t.Fatalf("answer is not JSON: %v", err)
		}
		if r.Code == 200 && action != "GetVersion" {
			t.Fatalf("%s accepted without a signature: %s", action, body)
		}
	})
}
