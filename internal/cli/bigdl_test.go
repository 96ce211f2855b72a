package cli

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/veil-tee/veil/internal/bigdltest"
)

func TestCLIDecryptBigDL(t *testing.T) {
	dir := t.TempDir()
	raw := make([]byte, 32)
	rand.Read(raw)
	key := base64.StdEncoding.EncodeToString(raw)
	os.WriteFile(filepath.Join(dir, "datakey.txt"), []byte(key+"\n"), 0o600)
	plain := bytes.Repeat([]byte("id,name,salary\n7,ann,100\n"), 50000)
	f := bigdltest.Write([]byte(key), plain, time.Now())
	os.WriteFile(filepath.Join(dir, "people.cbc"), f, 0o600)

	mustVeil(t, dir, nil, "decrypt", "--format", "bigdl", "--key", "file:datakey.txt", "-i", "people.cbc", "-o", "people.csv")
	if got, _ := os.ReadFile(filepath.Join(dir, "people.csv")); !bytes.Equal(got, plain) {
		t.Fatal("decrypted BigDL file differs")
	}
	// Moved into a sealed file.
	mustVeil(t, dir, nil, "gen-key", "owner.key")
	mustVeil(t, dir, nil, "encrypt", "--key", "file:owner.key", "-i", "people.csv", "-o", "people.csv.sealed")

	// A tampered file and a wrong key are refused, and nothing is written.
	g := append([]byte{}, f...)
	g[len(g)/2] ^= 1
	os.WriteFile(filepath.Join(dir, "tampered.cbc"), g, 0o600)
	r := veil(t, dir, nil, "decrypt", "--format", "bigdl", "--key", "file:datakey.txt", "-i", "tampered.cbc", "-o", "t.csv")
	wantErr(t, r, `failed authentication`, `data key`)
	if r.code != ExitIntegrity {
		t.Errorf("tampered file: exit %d, want %d", r.code, ExitIntegrity)
	}
	rand.Read(raw)
	os.WriteFile(filepath.Join(dir, "other.txt"), []byte(base64.StdEncoding.EncodeToString(raw)), 0o600)
	r = veil(t, dir, nil, "decrypt", "--format", "bigdl", "--key", "file:other.txt", "-i", "people.cbc", "-o", "w.csv")
	wantErr(t, r, `failed authentication`, `data key`)
	for _, n := range []string{"t.csv", "w.csv"} {
		if _, err := os.Stat(filepath.Join(dir, n)); err == nil {
			t.Errorf("%s written for a refused file", n)
		}
	}
	if r.code != ExitIntegrity {
		t.Errorf("wrong key: exit %d, want %d", r.code, ExitIntegrity)
	}
	r = veil(t, dir, nil, "decrypt", "--format", "bigdl", "--key", "file:datakey.txt", "-i", "-", "-o", "x")
	wantErr(t, r, `reads a file`, "")
	if r.code != ExitUsage {
		t.Errorf("standard input: exit %d, want %d", r.code, ExitUsage)
	}
	assertNoTemps(t, dir)
}

// ehsmCall signs a request as eHSM's API reference describes it.
func ehsmCall(t *testing.T, c *http.Client, url, appid, apikey, action string, payload map[string]any) map[string]any {
	t.Helper()
	keys := make([]string, 0, len(payload))
	for k := range payload {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var p []string
	for _, k := range keys {
		p = append(p, k+"="+payload[k].(string))
	}
	ts := strconv.FormatInt(time.Now().UnixMilli(), 10)
	m := hmac.New(sha256.New, []byte(apikey))
	m.Write([]byte("appid=" + appid + "&payload=" + strings.Join(p, "&") + "&timestamp=" + ts))
	b, _ := json.Marshal(map[string]any{"appid": appid, "payload": payload, "timestamp": ts, "sign": base64.StdEncoding.EncodeToString(m.Sum(nil))})
	resp, err := c.Post(url+"?Action="+action, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Code    int
		Message string
		Result  map[string]any
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || out.Code != 200 {
		t.Fatalf("%s: %v code %d %s", action, err, out.Code, out.Message)
	}
	return out.Result
}

// TestEHSMListenerBigDLMigration serves the eHSM face from veil kms serve,
// lets a BigDL-style client enroll and get a data key through it, and
// opens a BigDL file written under that data key with veil decrypt.
func TestEHSMListenerBigDLMigration(t *testing.T) {
	dir := t.TempDir()
	env := devKMSWith(t, dir, "--ehsm-listen", "127.0.0.1:0")
	vars := map[string]string{}
	for _, e := range env {
		k, v, _ := strings.Cut(e, "=")
		vars[k] = v
	}
	url := vars["VEIL_EHSM_URL"]
	if url == "" {
		t.Fatalf("no VEIL_EHSM_URL in %q", env)
	}
	ca, err := os.ReadFile(vars["VEIL_KMS_CA"])
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca)
	c := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	defer c.CloseIdleConnections()

	req, _ := http.NewRequest(http.MethodPost, url+"?Action=Enroll", nil)
	req.Header.Set("Authorization", "Bearer "+vars["VEIL_ADMIN_TOKEN"])
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var en struct {
		Code   int
		Result struct{ Appid, Apikey string }
	}
	json.NewDecoder(resp.Body).Decode(&en)
	resp.Body.Close()
	if en.Code != 200 || en.Result.Appid == "" {
		t.Fatalf("Enroll: %+v", en)
	}
	ck := ehsmCall(t, c, url, en.Result.Appid, en.Result.Apikey, "CreateKey", map[string]any{"keyspec": "EH_AES_GCM_128", "origin": "EH_INTERNAL_KEY"})
	dk := ehsmCall(t, c, url, en.Result.Appid, en.Result.Apikey, "GenerateDataKeyWithoutPlaintext", map[string]any{"cmk": ck["cmk"].(string), "keylen": "32"})
	pt := ehsmCall(t, c, url, en.Result.Appid, en.Result.Apikey, "Decrypt", map[string]any{"cmk": ck["cmk"].(string), "ciphertext": dk["ciphertext"].(string)})
	key := pt["plaintext"].(string) // BigDL uses the base64 text as its key
	plain := []byte("a,b\n1,2\n")
	os.WriteFile(filepath.Join(dir, "d.cbc"), bigdltest.Write([]byte(key), plain, time.Now()), 0o600)
	os.WriteFile(filepath.Join(dir, "dk.txt"), []byte(key), 0o600)
	out := mustVeil(t, dir, nil, "decrypt", "--format", "bigdl", "--key", "file:dk.txt", "-i", "d.cbc", "-o", "-").stdout
	if !bytes.Equal(out, plain) {
		t.Fatalf("got %q", out)
	}
}
