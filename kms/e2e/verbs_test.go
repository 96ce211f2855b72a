package e2e

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/veil-tee/veil/kms/api"
)

// jsonOf runs veil with --json and decodes its standard output into v.
func jsonOf(t *testing.T, v any, env map[string]string, stdin string, args ...string) {
	t.Helper()
	out := must(t, env, stdin, append(args, "--json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("veil %s --json: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// fails runs veil, wants exit code want and a service error naming code
// on standard error, and returns standard output.
func fails(t *testing.T, env map[string]string, stdin string, want int, code string, args ...string) string {
	t.Helper()
	out, errs, got := run(t, env, stdin, args...)
	if got != want || !strings.Contains(errs, code) || !strings.HasPrefix(errs, "veil: error: ") {
		t.Fatalf("veil %s: exit %d (want %d), stderr without %q:\n%s", strings.Join(args, " "), got, want, code, errs)
	}
	return out
}

// enroll enrolls an app and returns the env of a client signing as it.
func enroll(t *testing.T, p *proc, name string) (map[string]string, string) {
	t.Helper()
	var enr api.EnrollResponse
	jsonOf(t, &enr, p.env, "", "kms", "enroll", "--name", name)
	if !strings.HasPrefix(enr.AppID, "a_") || enr.APIKey == "" {
		t.Fatalf("enroll: %+v", enr)
	}
	// An app's env has no admin token: what it does, it does as the app.
	return merge(p.env, "VEIL_ADMIN_TOKEN", "", "VEIL_APP_ID", enr.AppID, "VEIL_API_KEY", enr.APIKey), enr.AppID
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// TestKMSKeyRotateEncryptDecrypt: encrypt under version 1, rotate, and the
// old ciphertext still decrypts (naming version 1) while new ciphertexts
// use version 2; describe shows both versions.
func TestKMSKeyRotateEncryptDecrypt(t *testing.T) {
	p := serve(t, "--dev", "--data", t.TempDir())
	bob, _ := enroll(t, p, "bob")
	var k api.Key
	jsonOf(t, &k, bob, "", "kms", "key", "create", "--name", "cmk")
	if k.PrimaryVersion != 1 || k.State != api.StateEnabled {
		t.Fatalf("create: %+v", k)
	}
	ct1 := strings.TrimSpace(must(t, bob, "message one", "kms", "key", "encrypt", "cmk"))
	var r1 api.CipherResponse
	jsonOf(t, &r1, bob, "message one", "kms", "key", "encrypt", "cmk")
	if r1.KeyID != k.ID || r1.KeyVersion != 1 {
		t.Fatalf("encrypt before rotate: %+v", r1)
	}
	jsonOf(t, &k, bob, "", "kms", "key", "rotate", "cmk")
	if k.PrimaryVersion != 2 || len(k.Versions) != 2 {
		t.Fatalf("rotate: %+v", k)
	}
	var d api.Key
	jsonOf(t, &d, bob, "", "kms", "key", "describe", k.ID)
	if d.PrimaryVersion != 2 || len(d.Versions) != 2 || d.Name != "cmk" {
		t.Fatalf("describe after rotate: %+v", d)
	}
	var r2 api.CipherResponse
	jsonOf(t, &r2, bob, "message two", "kms", "key", "encrypt", "cmk")
	if r2.KeyVersion != 2 {
		t.Fatalf("encrypt after rotate uses version %d, want 2", r2.KeyVersion)
	}
	for _, c := range []struct {
		ct      string
		version int
		want    string
	}{{ct1, 1, "message one"}, {b64(r1.Ciphertext), 1, "message one"}, {b64(r2.Ciphertext), 2, "message two"}} {
		if got := must(t, bob, c.ct, "kms", "key", "decrypt"); got != c.want {
			t.Fatalf("decrypt: %q, want %q", got, c.want)
		}
		var dr api.DecryptResponse
		jsonOf(t, &dr, bob, c.ct, "kms", "key", "decrypt")
		if dr.KeyVersion != c.version || dr.KeyID != k.ID || string(dr.Plaintext) != c.want {
			t.Fatalf("decrypt --json: %+v, want version %d", dr, c.version)
		}
	}
	// One flipped bit of a ciphertext: refused as an integrity failure.
	bad := append([]byte(nil), r2.Ciphertext...)
	bad[len(bad)-1] ^= 1
	fails(t, bob, b64(bad), 3, "decrypt_failed", "kms", "key", "decrypt")
}

// TestKMSKeyDataKeys: generate-data-key returns a 32-byte key and its
// wrapped form, which decrypt unwraps to the same key; with
// --without-plaintext only the wrapped form is printed.
func TestKMSKeyDataKeys(t *testing.T) {
	p := serve(t, "--dev", "--data", t.TempDir())
	bob, _ := enroll(t, p, "bob")
	must(t, bob, "", "kms", "key", "create", "--name", "cmk")
	out := must(t, bob, "", "kms", "key", "generate-data-key", "cmk")
	var pt, wrapped string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if v, ok := strings.CutPrefix(l, "plaintext: "); ok {
			pt = v
		} else if v, ok := strings.CutPrefix(l, "wrapped: "); ok {
			wrapped = v
		}
	}
	key, err := base64.StdEncoding.DecodeString(pt)
	if err != nil || len(key) != 32 || wrapped == "" {
		t.Fatalf("generate-data-key printed %q", out)
	}
	var dr api.DecryptResponse
	jsonOf(t, &dr, bob, wrapped, "kms", "key", "decrypt")
	if !bytes.Equal(dr.Plaintext, key) {
		t.Fatal("the wrapped data key does not unwrap to the printed key")
	}
	var r api.CipherResponse
	jsonOf(t, &r, bob, "", "kms", "key", "generate-data-key", "cmk", "--without-plaintext", "--aad", "file-7")
	if r.Plaintext != nil || len(r.Ciphertext) == 0 {
		t.Fatalf("--without-plaintext: %+v", r)
	}
	out = must(t, bob, "", "kms", "key", "generate-data-key", "cmk", "--without-plaintext")
	if strings.Contains(out, "plaintext:") || !strings.Contains(out, "wrapped: ") {
		t.Fatalf("--without-plaintext printed %q", out)
	}
	jsonOf(t, &dr, bob, b64(r.Ciphertext), "kms", "key", "decrypt", "--aad", "file-7")
	if len(dr.Plaintext) != 32 {
		t.Fatalf("unwrapped %d bytes", len(dr.Plaintext))
	}
	fails(t, bob, b64(r.Ciphertext), 3, "decrypt_failed", "kms", "key", "decrypt", "--aad", "file-8")
}

// TestKMSKeyStates: disable refuses use, enable restores it;
// schedule-deletion refuses use (encrypt and decrypt) and sets a deletion
// time; cancel-deletion leaves the key disabled, and enable restores it.
func TestKMSKeyStates(t *testing.T) {
	p := serve(t, "--dev", "--data", t.TempDir())
	bob, _ := enroll(t, p, "bob")
	must(t, bob, "", "kms", "key", "create", "--name", "cmk")
	ct := strings.TrimSpace(must(t, bob, "kept", "kms", "key", "encrypt", "cmk"))

	var k api.Key
	jsonOf(t, &k, bob, "", "kms", "key", "disable", "cmk")
	if k.State != api.StateDisabled {
		t.Fatalf("disable: %+v", k)
	}
	fails(t, bob, "x", 1, "key_disabled", "kms", "key", "encrypt", "cmk")
	fails(t, bob, ct, 1, "key_disabled", "kms", "key", "decrypt")
	jsonOf(t, &k, bob, "", "kms", "key", "enable", "cmk")
	if k.State != api.StateEnabled || must(t, bob, ct, "kms", "key", "decrypt") != "kept" {
		t.Fatalf("enable: %+v", k)
	}

	for _, days := range []string{"31", "-1"} {
		if _, errs, code := run(t, bob, "", "kms", "key", "schedule-deletion", "cmk", "--days", days); code == 0 {
			t.Fatalf("--days %s accepted", days)
		} else {
			t.Logf("--days %s: exit %d: %s", days, code, strings.TrimSpace(errs))
		}
	}
	before := time.Now()
	jsonOf(t, &k, bob, "", "kms", "key", "schedule-deletion", "cmk", "--days", "7")
	if k.State != api.StatePendingDeletion || k.DeletionTime == nil {
		t.Fatalf("schedule-deletion: %+v", k)
	}
	if d := k.DeletionTime.Sub(before); d < 7*24*time.Hour-time.Minute || d > 7*24*time.Hour+time.Minute {
		t.Fatalf("deletion time %v is not 7 days away", k.DeletionTime)
	}
	fails(t, bob, "x", 1, "key_pending_deletion", "kms", "key", "encrypt", "cmk")
	fails(t, bob, ct, 1, "key_pending_deletion", "kms", "key", "decrypt")
	fails(t, bob, "", 1, "key_pending_deletion", "kms", "key", "generate-data-key", "cmk")
	if out, _, code := run(t, bob, "", "kms", "key", "enable", "cmk"); code == 0 {
		t.Fatalf("a key pending deletion was enabled: %s", out)
	}

	k = api.Key{} // decoding into k would keep the deletion time the answer omits
	jsonOf(t, &k, bob, "", "kms", "key", "cancel-deletion", "cmk")
	if k.State != api.StateDisabled || k.DeletionTime != nil {
		t.Fatalf("cancel-deletion: %+v", k)
	}
	fails(t, bob, ct, 1, "key_disabled", "kms", "key", "decrypt")
	must(t, bob, "", "kms", "key", "enable", "cmk")
	if got := must(t, bob, ct, "kms", "key", "decrypt"); got != "kept" {
		t.Fatalf("after cancel-deletion and enable: %q", got)
	}
	var l api.KeyList
	jsonOf(t, &l, bob, "", "kms", "key", "list")
	if len(l.Keys) != 1 || l.Keys[0].State != api.StateEnabled {
		t.Fatalf("list: %+v", l)
	}
}

func parsePublicKey(t *testing.T, pemText string) crypto.PublicKey {
	t.Helper()
	b, rest := pem.Decode([]byte(pemText))
	if b == nil || b.Type != "PUBLIC KEY" || len(bytes.TrimSpace(rest)) != 0 {
		t.Fatalf("public-key printed %q", pemText)
	}
	pub, err := x509.ParsePKIXPublicKey(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// TestKMSKeySignVerifyPublicKey: signatures made by `kms key sign` verify
// with the key `kms key public-key` prints, using Go's crypto (ECDSA P-256
// ASN.1, RSASSA-PSS SHA-256); `kms key verify` accepts them and refuses a
// changed message or a foreign signature with exit 3; after rotate, old
// signatures verify with --version 1 and the public key changes.
func TestKMSKeySignVerifyPublicKey(t *testing.T) {
	p := serve(t, "--dev", "--data", t.TempDir())
	bob, _ := enroll(t, p, "bob")
	msg := "pay 10 to alice\n"
	digest := sha256.Sum256([]byte(msg))
	goVerify := func(pub crypto.PublicKey, d []byte, sig []byte) bool {
		switch k := pub.(type) {
		case *ecdsa.PublicKey:
			return k.Curve == elliptic.P256() && ecdsa.VerifyASN1(k, d, sig)
		case *rsa.PublicKey:
			return k.N.BitLen() == 3072 && rsa.VerifyPSS(k, crypto.SHA256, d, sig, nil) == nil
		}
		t.Fatalf("public key of type %T", pub)
		return false
	}
	for _, spec := range []string{api.SpecECP256, api.SpecRSA3072} {
		t.Run(spec, func(t *testing.T) {
			name := strings.ToLower(strings.ReplaceAll(spec, "_", "-"))
			must(t, bob, "", "kms", "key", "create", "--name", name, "--spec", spec)
			sigText := strings.TrimSpace(must(t, bob, msg, "kms", "key", "sign", name))
			sig, err := base64.StdEncoding.DecodeString(sigText)
			if err != nil {
				t.Fatalf("sign printed %q", sigText)
			}
			pub1 := parsePublicKey(t, must(t, bob, "", "kms", "key", "public-key", name))
			if !goVerify(pub1, digest[:], sig) {
				t.Fatal("the signature does not verify with the printed public key")
			}
			if other := sha256.Sum256([]byte("pay 99 to alice\n")); goVerify(pub1, other[:], sig) {
				t.Fatal("the signature verifies for another message")
			}
			if out := must(t, bob, msg, "kms", "key", "verify", name, "--signature", sigText); !strings.Contains(out, "valid: true") {
				t.Fatalf("verify: %q", out)
			}
			if out := fails(t, bob, "pay 99 to alice\n", 3, "does not verify", "kms", "key", "verify", name, "--signature", sigText); !strings.Contains(out, "valid: false") {
				t.Fatalf("verify of a changed message printed %q", out)
			}
			// A signature by a key the service does not hold.
			foreign, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			fsig, _ := ecdsa.SignASN1(rand.Reader, foreign, digest[:])
			fails(t, bob, msg, 3, "does not verify", "kms", "key", "verify", name, "--signature", b64(fsig))

			var k api.Key
			jsonOf(t, &k, bob, "", "kms", "key", "rotate", name)
			var pk2, pk1 api.PublicKeyResponse
			jsonOf(t, &pk2, bob, "", "kms", "key", "public-key", name)
			jsonOf(t, &pk1, bob, "", "kms", "key", "public-key", name, "--version", "1")
			if pk2.KeyVersion != 2 || pk1.KeyVersion != 1 || pk1.Spec != spec || pk1.PublicKey == pk2.PublicKey {
				t.Fatalf("public keys after rotate: v%d v%d %s, equal: %v", pk1.KeyVersion, pk2.KeyVersion, pk1.Spec, pk1.PublicKey == pk2.PublicKey)
			}
			if !goVerify(parsePublicKey(t, pk1.PublicKey), digest[:], sig) {
				t.Fatal("public-key --version 1 is not the key that signed before the rotation")
			}
			var s2 api.SignResponse
			jsonOf(t, &s2, bob, msg, "kms", "key", "sign", name)
			if s2.KeyVersion != 2 || !goVerify(parsePublicKey(t, pk2.PublicKey), digest[:], s2.Signature) || goVerify(pub1, digest[:], s2.Signature) {
				t.Fatalf("a signature after rotate: version %d, or it does not verify under version 2 only", s2.KeyVersion)
			}
			var v api.VerifyResponse
			jsonOf(t, &v, bob, msg, "kms", "key", "verify", name, "--signature", sigText, "--version", "1")
			if !v.Valid || v.KeyVersion != 1 {
				t.Fatalf("verify --version 1 of the old signature: %+v", v)
			}
			fails(t, bob, msg, 3, "does not verify", "kms", "key", "verify", name, "--signature", sigText)
		})
	}
	// Symmetric keys do not sign.
	must(t, bob, "", "kms", "key", "create", "--name", "aes")
	fails(t, bob, msg, 1, "invalid_state", "kms", "key", "sign", "aes")
}

// TestKMSAppsAndSeal: `kms apps` lists every enrolled app (id and name)
// for the admin and refuses an app; `kms seal` makes the server forget its
// root key: status says sealed and app calls are refused.
func TestKMSAppsAndSeal(t *testing.T) {
	p := serve(t, "--dev", "--data", t.TempDir())
	bob, bobID := enroll(t, p, "bob")
	_, aliceID := enroll(t, p, "alice")
	var l api.AppList
	jsonOf(t, &l, p.env, "", "kms", "apps")
	got := map[string]string{}
	for _, a := range l.Apps {
		got[a.AppID] = a.Name
	}
	if len(l.Apps) != 2 || got[bobID] != "bob" || got[aliceID] != "alice" {
		t.Fatalf("apps: %+v", l.Apps)
	}
	out := must(t, p.env, "", "kms", "apps")
	for _, want := range []string{bobID, aliceID, "bob", "alice"} {
		if !strings.Contains(out, want) {
			t.Fatalf("apps lacks %s:\n%s", want, out)
		}
	}
	if strings.Contains(out, bob["VEIL_API_KEY"]) {
		t.Fatal("apps prints an API key")
	}
	fails(t, bob, "", 1, "VEIL_ADMIN_TOKEN", "kms", "apps")

	must(t, bob, "", "kms", "key", "create", "--name", "cmk")
	var st api.Status
	jsonOf(t, &st, p.env, "", "kms", "seal")
	if !st.Sealed {
		t.Fatalf("seal: %+v", st)
	}
	jsonOf(t, &st, p.env, "", "kms", "status")
	if !st.Sealed || !st.Initialized {
		t.Fatalf("status after seal: %+v", st)
	}
	fails(t, bob, "x", 1, "sealed", "kms", "key", "encrypt", "cmk")
	fails(t, bob, "", 1, "VEIL_ADMIN_TOKEN", "kms", "seal")
}

// TestKMSSecretVerbs: put (standard input and --file) makes versions, get
// reads the latest or --version, list shows them, another app cannot read
// them, and delete removes every version.
func TestKMSSecretVerbs(t *testing.T) {
	p := serve(t, "--dev", "--data", t.TempDir())
	bob, _ := enroll(t, p, "bob")
	alice, _ := enroll(t, p, "alice")
	var s api.Secret
	jsonOf(t, &s, bob, "hunter2", "kms", "secret", "put", "db-password", "--description", "prod db")
	if s.Version != 1 || s.Name != "db-password" || s.Value != nil {
		t.Fatalf("put: %+v", s)
	}
	f := t.TempDir() + "/v2"
	writeFile(t, f, "correct horse")
	jsonOf(t, &s, bob, "", "kms", "secret", "put", "db-password", "--file", f)
	if s.Version != 2 {
		t.Fatalf("second put: %+v", s)
	}
	if got := must(t, bob, "", "kms", "secret", "get", "db-password"); got != "correct horse" {
		t.Fatalf("get: %q", got)
	}
	if got := must(t, bob, "", "kms", "secret", "get", "db-password", "--version", "1"); got != "hunter2" {
		t.Fatalf("get --version 1: %q", got)
	}
	var l api.SecretList
	jsonOf(t, &l, bob, "", "kms", "secret", "list")
	if len(l.Secrets) != 1 || l.Secrets[0].Version != 2 || l.Secrets[0].Versions != 2 || l.Secrets[0].Value != nil {
		t.Fatalf("list: %+v", l)
	}
	if out := must(t, bob, "", "kms", "secret", "list"); strings.Contains(out, "hunter2") || !strings.Contains(out, "db-password") {
		t.Fatalf("list prints %q", out)
	}
	fails(t, alice, "", 1, "secret_not_found", "kms", "secret", "get", s.ID)
	fails(t, alice, "", 1, "secret_not_found", "kms", "secret", "delete", s.ID)
	must(t, bob, "", "kms", "secret", "delete", "db-password")
	fails(t, bob, "", 1, "secret_not_found", "kms", "secret", "get", "db-password")
	fails(t, bob, "", 1, "secret_not_found", "kms", "secret", "get", s.ID, "--version", "1")
	jsonOf(t, &l, bob, "", "kms", "secret", "list")
	if len(l.Secrets) != 0 {
		t.Fatalf("list after delete: %+v", l)
	}
}

// TestKMSPolicyVerbs: create, list, show; attach to a key and a secret
// (describe and list show it); delete is refused while attached; detach;
// delete; and the admin acts for an app with --app.
func TestKMSPolicyVerbs(t *testing.T) {
	p := serve(t, "--dev", "--data", t.TempDir())
	bob, bobID := enroll(t, p, "bob")
	must(t, bob, "", "kms", "key", "create", "--name", "cmk")
	must(t, bob, "v", "kms", "secret", "put", "token")
	meas := strings.Repeat("ab", 32)
	var pol api.Policy
	jsonOf(t, &pol, bob, "", "kms", "policy", "create", "--name", "prod", "--mrenclave", meas, "--min-svn", "2")
	if !strings.HasPrefix(pol.ID, "p_") || pol.Name != "prod" {
		t.Fatalf("create: %+v", pol)
	}
	var doc struct {
		Measurements []string `json:"measurements"`
		MinSVN       int      `json:"min_svn"`
	}
	var shown api.Policy
	jsonOf(t, &shown, bob, "", "kms", "policy", "show", "prod")
	if err := json.Unmarshal(shown.Document, &doc); err != nil || shown.ID != pol.ID || !sameStrings(doc.Measurements, meas) || doc.MinSVN != 2 {
		t.Fatalf("show: %+v %v", shown, err)
	}
	var pl api.PolicyList
	jsonOf(t, &pl, bob, "", "kms", "policy", "list")
	if len(pl.Policies) != 1 || pl.Policies[0].ID != pol.ID {
		t.Fatalf("list: %+v", pl)
	}
	// The admin sees bob's policies only by naming bob.
	jsonOf(t, &pl, p.env, "", "kms", "policy", "list", "--app", bobID)
	if len(pl.Policies) != 1 || pl.Policies[0].ID != pol.ID {
		t.Fatalf("list --app: %+v", pl)
	}
	fails(t, p.env, "", 1, "no app is set", "kms", "policy", "list")

	must(t, bob, "", "kms", "policy", "attach", "prod", "--key", "cmk")
	must(t, bob, "", "kms", "policy", "attach", pol.ID, "--secret", "token")
	var k api.Key
	jsonOf(t, &k, bob, "", "kms", "key", "describe", "cmk")
	var sl api.SecretList
	jsonOf(t, &sl, bob, "", "kms", "secret", "list")
	if !sameStrings(k.Policies, pol.ID) || len(sl.Secrets) != 1 || !sameStrings(sl.Secrets[0].Policies, pol.ID) {
		t.Fatalf("after attach: key %v, secrets %+v", k.Policies, sl.Secrets)
	}
	fails(t, bob, "", 2, "exactly one", "kms", "policy", "attach", "prod")
	if _, _, code := run(t, bob, "", "kms", "policy", "delete", "prod"); code == 0 {
		t.Fatal("a policy attached to a key and a secret was deleted")
	}
	must(t, bob, "", "kms", "policy", "detach", "prod", "--key", "cmk")
	jsonOf(t, &k, bob, "", "kms", "key", "describe", "cmk")
	if len(k.Policies) != 0 {
		t.Fatalf("after detach: %v", k.Policies)
	}
	if _, _, code := run(t, bob, "", "kms", "policy", "delete", "prod"); code == 0 {
		t.Fatal("a policy still attached to a secret was deleted")
	}
	must(t, bob, "", "kms", "policy", "detach", "prod", "--secret", "token")
	must(t, bob, "", "kms", "policy", "delete", "prod")
	if _, _, code := run(t, bob, "", "kms", "policy", "show", pol.ID); code == 0 {
		t.Fatal("a deleted policy is still shown")
	}
	jsonOf(t, &pl, bob, "", "kms", "policy", "list")
	if len(pl.Policies) != 0 {
		t.Fatalf("list after delete: %+v", pl)
	}
}

func writeFile(t *testing.T, name, content string) {
	t.Helper()
	if err := os.WriteFile(name, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func sameStrings(got []string, want ...string) bool {
	return strings.Join(got, "\x00") == strings.Join(want, "\x00") && len(got) == len(want)
}
