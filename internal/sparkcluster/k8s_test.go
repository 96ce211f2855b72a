package sparkcluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/veil-tee/veil/internal/veiltest"
)

// k8sNamespace is the namespace of deploy/k8s.
const k8sNamespace = "veil-jobs"

// apiServerPort is the API server's port on host apiserver.
const apiServerPort = "6443"

// executorHosts are the hosts the test kubelet runs executor pods on.
var executorHosts = []string{"exec1", "exec2", "exec3", "exec4"}

// TestKubernetes runs the Spark instance as Spark-on-Kubernetes driver
// and executors: etcd and the real kube-apiserver on host apiserver, the
// namespace, RuntimeClasses and the driver's service account and role of
// deploy/k8s applied to it, the driver role (`veil run` of the instance
// with a k8s:// master, the service account's token and the API server's
// CA in the variables a driver pod passes) on host driver, and a test
// kubelet that runs every executor pod Spark creates from the template
// baked into the image: the pod's command and arguments, with its
// environment (field and ConfigMap references resolved), as `veil run`
// on a free exec host, the pod's status patched to Running with that
// host's address. It checks:
//
//   - the people query completes with two executors, and its sealed part
//     files, decrypted by the owner, hold the rows of the same file run on
//     the plaintext in local mode outside veil;
//   - no pod, ConfigMap or Secret the API server holds, nor any executor
//     pod as the kubelet first saw it, contains Spark's authentication
//     secret (as released by the key service, or base64 as Spark would
//     send it);
//   - the first executor pod, run from an image whose measurement the
//     policy does not name, gets no secret and never starts a JVM; Spark
//     replaces it and the job completes.
func TestKubernetes(t *testing.T) {
	if testing.Short() {
		t.Skip("a Spark job on Kubernetes: minutes on two cores")
	}
	if _, err := exec.LookPath("etcd"); err != nil {
		veiltest.Skip(t, "needs etcd (Debian package etcd-server)")
	}
	if err := exec.Command("/usr/bin/python3", "-c", "import numpy").Run(); err != nil {
		veiltest.Skip(t, "needs the Debian package python3-numpy (the people generator)")
	}
	apiBin := kubeAPIServerBin(t)
	c := New(t, veil, 0, append([]string{"apiserver"}, executorHosts...)...)
	ex := ExampleDir()
	job := filepath.Join(ex, "jobs", "people_query.py")
	start := time.Now()

	plainIn := filepath.Join(c.Work, "owner", "people.csv")
	if out, err := exec.Command("/usr/bin/python3", filepath.Join(ex, "..", "people", "gen_people.py"),
		"--rows", strconv.Itoa(peopleRows), plainIn).CombinedOutput(); err != nil {
		t.Fatalf("gen_people.py: %v\n%s", err, out)
	}
	c.Seal(plainIn, "in/people.csv")
	c.GiveShared()
	plainOut := filepath.Join(c.Work, "owner", "plain-out")
	plainDone := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		out, err := Plain(ctx, c.Pyspark, job, plainIn, plainOut)
		if err != nil {
			err = fmt.Errorf("%w\n%s", err, out)
		}
		plainDone <- err
	}()

	api := startAPIServer(t, c, apiBin)

	// The instance, with the executor pod template baked into its image.
	tmpl, err := os.ReadFile(filepath.Join(ex, "..", "..", "deploy", "k8s", "spark-executor-template.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	baked := map[string]string{"opt/spark/k8s/executor-template.yaml": string(tmpl)}
	inst, took := c.Build("spark", baked)
	t.Logf("veil build of the Spark instance: %v", took.Round(time.Millisecond))
	baked["opt/spark/extra.txt"] = "a changed image\n"
	rogue, _ := c.Build("rogue", baked)
	c.Allow(inst)
	secret := strings.TrimSpace(c.Owner("", "kms", "secret", "get", c.SecretID))
	if len(secret) != 64 {
		t.Fatalf("kms secret get printed %d characters, want the 64 hex digits New stored", len(secret))
	}

	// The cluster's objects: deploy/k8s as an operator applies it, and
	// the key service's client ConfigMap with this network's address.
	for _, f := range []string{"namespace.yaml", "runtimeclass.yaml", "serviceaccount.yaml"} {
		api.apply(filepath.Join(ex, "..", "..", "deploy", "k8s", f))
	}
	kmsAddr := strings.TrimPrefix(c.KMSURL, "https://")
	api.create(map[string]any{"apiVersion": "v1", "kind": "ConfigMap",
		"metadata": map[string]any{"name": "veil-kms-client", "namespace": k8sNamespace},
		"data":     map[string]any{"kms-address": kmsAddr, "VEIL_KMS_URL": c.KMSURL, "VEIL_KMS_CA": c.KMSCA}})
	token := api.serviceAccountToken(k8sNamespace, "veil-spark-driver")

	// The kubelet: executor 1 runs the rogue image, the others the
	// instance the policy names.
	kl := startKubelet(t, c, api, func(pod map[string]any) string {
		if objLabel(pod, "spark-exec-id") == "1" {
			return rogue
		}
		return inst
	})

	// The driver, as its pod would run it.
	t.Setenv("SPARK_K8S_NAMESPACE", k8sNamespace)
	t.Setenv("SPARK_K8S_IMAGE", "registry.example.com/veil/spark@sha256:"+strings.Repeat("0", 64))
	t.Setenv("SPARK_K8S_EXECUTORS", "2")
	t.Setenv("SPARK_K8S_TOKEN", token)
	t.Setenv("SPARK_K8S_CA_CERT", string(api.ca))
	t.Logf("set-up (data, API server, two builds, objects): %v", time.Since(start).Round(time.Millisecond))
	jobStart := time.Now()
	d := c.Start("driver", inst, "driver", api.masterURL(), "people_query", "/data/in/people.csv", "/data/out/people")
	if err := d.Wait(8 * time.Minute); err != nil {
		t.Fatalf("the people query on Kubernetes failed: %v", err)
	}
	t.Logf("people query on Kubernetes (%d rows), veil run of the driver to its end: %v", peopleRows, time.Since(jobStart).Round(time.Millisecond))
	kl.stop()

	// Two executors of the policy's image registered; the rogue one
	// never started a JVM.
	ids := map[string]bool{}
	for _, m := range regexp.MustCompile(`Registered executor .* with ID (\d+)`).FindAllStringSubmatch(d.Output(), -1) {
		ids[m[1]] = true
	}
	if len(ids) < 2 || ids["1"] {
		t.Errorf("executors registered with the driver: %v, want two, not 1 (the rogue image's)", ids)
	}
	runs := kl.runs()
	var rogueRun *kubeletRun
	for _, r := range runs {
		if r.inst == rogue {
			rogueRun = r
		}
	}
	if rogueRun == nil {
		t.Fatalf("the kubelet never ran executor 1 (the rogue image); runs: %d", len(runs))
	}
	if out := rogueRun.role.Output(); rogueRun.role.Running() || !strings.Contains(out, "veil: error:") ||
		strings.Contains(out, "KubernetesExecutorBackend") || strings.Contains(out, "Started daemon") {
		t.Errorf("the rogue executor (running %v): want veil's refusal before any JVM:\n%s", rogueRun.role.Running(), out)
	} else {
		t.Logf("the rogue executor was refused: %s", lastLine(out))
	}
	first := runs[0].pod
	t.Logf("an executor pod as Spark created it: args %v, env %s", firstContainer(first)["args"], envSummary(first))

	// The secret is in no object of the API server.
	raw, err := hex.DecodeString(secret)
	if err != nil {
		t.Fatal(err)
	}
	leaks := []string{secret, base64.StdEncoding.EncodeToString([]byte(secret)), base64.StdEncoding.EncodeToString(raw)}
	objects := map[string][]byte{}
	for _, r := range runs {
		b, _ := json.Marshal(r.pod)
		objects["pod "+objName(r.pod)+" (as first seen)"] = b
	}
	for _, res := range []string{"pods", "configmaps", "secrets"} {
		var list struct{ Items []map[string]any }
		if err := json.Unmarshal(api.must("GET", "/api/v1/"+res, nil, 200), &list); err != nil {
			t.Fatal(err)
		}
		for _, it := range list.Items {
			b, _ := json.Marshal(it)
			objects[res+" "+objNamespace(it)+"/"+objName(it)] = b
		}
	}
	for what, b := range objects {
		for _, l := range leaks {
			if bytes.Contains(b, []byte(l)) {
				t.Errorf("Spark's authentication secret is in %s", what)
			}
		}
		if bytes.Contains(b, []byte("SPARK_AUTHENTICATE_SECRET")) || bytes.Contains(b, []byte("_SPARK_AUTH_SECRET")) {
			t.Errorf("%s names a secret variable", what)
		}
	}
	t.Logf("the secret is in none of %d objects (executor pods as created, and every pod, ConfigMap and Secret at the end)", len(objects))

	if err := <-plainDone; err != nil {
		t.Fatalf("the plaintext run: %v", err)
	}
	parts, _ := filepath.Glob(filepath.Join(c.Shared, "out", "people", "part-*.csv"))
	if len(parts) == 0 {
		t.Fatal("the job wrote no part files")
	}
	var got, want []byte
	for i, p := range parts {
		dec := filepath.Join(c.Work, "owner", "k8s-part-"+strconv.Itoa(i)+".csv")
		c.Decrypt(p, dec)
		got = append(got, readFile(t, dec)...)
	}
	plainParts, _ := filepath.Glob(filepath.Join(plainOut, "part-*.csv"))
	for _, p := range plainParts {
		want = append(want, readFile(t, p)...)
	}
	gotRows, wantRows := rows(got), rows(want)
	if len(wantRows) != 10 || !slices.Equal(gotRows, wantRows) {
		t.Fatalf("the Kubernetes run's result differs from the plaintext run's:\n--- kubernetes\n%s\n--- plaintext\n%s",
			strings.Join(gotRows, "\n"), strings.Join(wantRows, "\n"))
	}
	t.Logf("result (%d part files) equals the plaintext run's; the test: %v", len(parts), time.Since(start).Round(time.Millisecond))
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// kubeAPIServerBin is $VEIL_KUBE_APISERVER, else the binary
// scripts/kube-apiserver.sh builds once per machine (and builds now if it
// is missing), as deploy/validate finds it.
func kubeAPIServerBin(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("VEIL_KUBE_APISERVER"); p != "" {
		return p
	}
	cmd := exec.Command(filepath.Join(ExampleDir(), "..", "..", "scripts", "kube-apiserver.sh"))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("scripts/kube-apiserver.sh: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// kubeAPI is the API server on host apiserver as the test reaches it: over
// connections made from host owner, with the admin's token.
type kubeAPI struct {
	t      *testing.T
	host   string // its address
	token  string
	ca     []byte // its certificate and CA (PEM)
	client *http.Client
}

func (k *kubeAPI) masterURL() string { return "k8s://https://" + k.host + ":" + apiServerPort }

// startAPIServer starts etcd (on the host's loopback) and kube-apiserver
// on host apiserver, with a token file (an admin), service-account keys
// and RBAC, and waits up to 2 minutes until it is ready.
func startAPIServer(t *testing.T, c *Cluster, bin string) *kubeAPI {
	t.Helper()
	h := c.Net.Host("apiserver")
	dir := filepath.Join(c.Work, "apiserver")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	start := func(log string, name string, args ...string) <-chan struct{} {
		cmd := h.Command(context.Background(), name, args...)
		f := c.logFile(log)
		cmd.Stdout, cmd.Stderr = f, f
		return h.Start(cmd).Done()
	}
	etcdDone := start("etcd.log", "etcd", "--name", "k8s", "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", "http://127.0.0.1:2379", "--advertise-client-urls", "http://127.0.0.1:2379",
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "k8s=http://127.0.0.1:2380", "--log-level", "error")
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "sa.key")
	writeFile(t, keyFile, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600)
	tok := make([]byte, 16)
	rand.Read(tok)
	k := &kubeAPI{t: t, host: h.IP, token: fmt.Sprintf("%x", tok)}
	writeFile(t, filepath.Join(dir, "tokens.csv"), []byte(k.token+",admin,admin,system:masters\n"), 0o600)
	if err := h.WaitTCP("127.0.0.1:2379", time.Minute, etcdDone); err != nil {
		t.Fatalf("etcd: %v\n%s", err, c.readLog("etcd.log"))
	}
	certDir := filepath.Join(dir, "certs")
	apiDone := start("apiserver.log", bin,
		"--etcd-servers", "http://127.0.0.1:2379",
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", keyFile,
		"--service-account-signing-key-file", keyFile,
		"--token-auth-file", filepath.Join(dir, "tokens.csv"),
		"--bind-address", h.IP, "--advertise-address", h.IP, "--secure-port", apiServerPort,
		"--cert-dir", certDir,
		"--authorization-mode", "RBAC",
		"--service-cluster-ip-range", "10.96.0.0/16",
		// No controller manager creates the default ServiceAccounts.
		"--disable-admission-plugins", "ServiceAccount",
		"--allow-privileged=true",
		// Watches straight from etcd: Debian's etcd 3.4 lacks the
		// progress notifications the watch cache needs for Spark's
		// watches (from the latest version).
		"--watch-cache=false")
	owner := c.Net.Host("owner")
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(500 * time.Millisecond) {
		select {
		case <-apiDone:
			t.Fatalf("kube-apiserver ended\n%s", c.readLog("apiserver.log"))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("kube-apiserver not ready within 2 minutes\n%s", c.readLog("apiserver.log"))
		}
		if k.client == nil {
			ca, err := os.ReadFile(filepath.Join(certDir, "apiserver.crt"))
			if err != nil {
				continue
			}
			pool := x509.NewCertPool()
			pool.AppendCertsFromPEM(ca)
			k.ca = ca
			k.client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
				TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
				DialContext: func(_ context.Context, _, addr string) (net.Conn, error) {
					return owner.Dial(addr, 10*time.Second)
				},
			}}
		}
		if code, body, err := k.do("GET", "/readyz", "", nil); err == nil && code == 200 && strings.TrimSpace(string(body)) == "ok" {
			return k
		}
	}
}

// do sends a request with the admin's token; body, if not nil, is JSON.
func (k *kubeAPI) do(method, path, contentType string, body any) (int, []byte, error) {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		r = bytes.NewReader(b)
		if contentType == "" {
			contentType = "application/json"
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, "https://"+k.host+":"+apiServerPort+path, r)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+k.token)
	req.Header.Set("Accept", "application/json")
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := k.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	return resp.StatusCode, b, err
}

// must sends a request and fails the test unless the status is one of
// codes.
func (k *kubeAPI) must(method, path string, body any, codes ...int) []byte {
	k.t.Helper()
	code, b, err := k.do(method, path, "", body)
	if err != nil || !slices.Contains(codes, code) {
		k.t.Fatalf("%s %s: %d %v\n%s", method, path, code, err, b)
	}
	return b
}

// kinds maps the kinds the test creates to their collection's path
// (%s: the namespace).
var kinds = map[string]string{
	"v1/Namespace":                             "/api/v1/namespaces",
	"v1/ConfigMap":                             "/api/v1/namespaces/%s/configmaps",
	"v1/Secret":                                "/api/v1/namespaces/%s/secrets",
	"v1/ServiceAccount":                        "/api/v1/namespaces/%s/serviceaccounts",
	"rbac.authorization.k8s.io/v1/Role":        "/apis/rbac.authorization.k8s.io/v1/namespaces/%s/roles",
	"rbac.authorization.k8s.io/v1/RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/%s/rolebindings",
	"node.k8s.io/v1/RuntimeClass":              "/apis/node.k8s.io/v1/runtimeclasses",
}

// create creates obj, failing the test on error.
func (k *kubeAPI) create(obj map[string]any) {
	k.t.Helper()
	kind := fmt.Sprint(obj["apiVersion"], "/", obj["kind"])
	path, ok := kinds[kind]
	if !ok {
		k.t.Fatalf("the test does not know where to create a %s", kind)
	}
	if strings.Contains(path, "%s") {
		path = fmt.Sprintf(path, objNamespace(obj))
	}
	k.must("POST", path+"?fieldValidation=Strict", obj, 201)
}

// apply creates every object of a YAML manifest.
func (k *kubeAPI) apply(file string) {
	k.t.Helper()
	dec := yaml.NewDecoder(bytes.NewReader(readFile(k.t, file)))
	for {
		var obj map[string]any
		if err := dec.Decode(&obj); errors.Is(err, io.EOF) {
			return
		} else if err != nil {
			k.t.Fatalf("%s: %v", file, err)
		}
		if obj != nil {
			k.create(obj)
		}
	}
}

// serviceAccountToken asks the API server for a token of a service
// account (TokenRequest), as the kubelet does for a pod.
func (k *kubeAPI) serviceAccountToken(ns, sa string) string {
	k.t.Helper()
	b := k.must("POST", "/api/v1/namespaces/"+ns+"/serviceaccounts/"+sa+"/token", map[string]any{
		"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
		"spec": map[string]any{"expirationSeconds": 3600}}, 201)
	var tr struct{ Status struct{ Token string } }
	if err := json.Unmarshal(b, &tr); err != nil || tr.Status.Token == "" {
		k.t.Fatalf("TokenRequest: %v\n%s", err, b)
	}
	return tr.Status.Token
}

// kubelet runs the executor pods of the namespace, each as `veil run` on
// a free exec host, until stop.
type kubelet struct {
	t      *testing.T
	c      *Cluster
	api    *kubeAPI
	choose func(pod map[string]any) string // the instance a pod runs (its image)
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	running map[string]*kubeletRun // by pod name
	all     []*kubeletRun
}

// kubeletRun is one pod's run.
type kubeletRun struct {
	pod      map[string]any // as first seen
	inst     string
	role     *Role
	reported bool // its end was written to the pod's status
}

func startKubelet(t *testing.T, c *Cluster, api *kubeAPI, choose func(map[string]any) string) *kubelet {
	ctx, cancel := context.WithCancel(context.Background())
	k := &kubelet{t: t, c: c, api: api, choose: choose, cancel: cancel, done: make(chan struct{}), running: map[string]*kubeletRun{}}
	go k.loop(ctx)
	t.Cleanup(k.stop)
	return k
}

// stop ends the loop and the pods still running.
func (k *kubelet) stop() {
	k.cancel()
	<-k.done
	k.mu.Lock()
	defer k.mu.Unlock()
	for name, r := range k.running {
		r.role.Stop(15 * time.Second)
		delete(k.running, name)
	}
}

func (k *kubelet) runs() []*kubeletRun {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.all)
}

// loop lists the executor pods every 300 ms (a watch's effect, simpler):
// it starts new ones, reports ended ones, and stops and removes deleted
// ones.
func (k *kubelet) loop(ctx context.Context) {
	defer close(k.done)
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(300 * time.Millisecond):
		}
		code, b, err := k.api.do("GET", "/api/v1/namespaces/"+k8sNamespace+"/pods?labelSelector="+url.QueryEscape("spark-role=executor"), "", nil)
		if err != nil || code != 200 {
			continue
		}
		var list struct{ Items []map[string]any }
		if json.Unmarshal(b, &list) != nil {
			continue
		}
		k.sync(list.Items)
	}
}

func (k *kubelet) sync(pods []map[string]any) {
	k.mu.Lock()
	defer k.mu.Unlock()
	present := map[string]bool{}
	for _, pod := range pods {
		n := objName(pod)
		present[n] = true
		r := k.running[n]
		md, _ := pod["metadata"].(map[string]any)
		if md["deletionTimestamp"] != nil {
			if r != nil {
				r.role.Stop(15 * time.Second)
				delete(k.running, n)
			}
			k.api.do("DELETE", "/api/v1/namespaces/"+k8sNamespace+"/pods/"+n, "", map[string]any{"gracePeriodSeconds": 0})
			continue
		}
		if r == nil {
			if phase, _ := pod["status"].(map[string]any)["phase"].(string); phase == "Succeeded" || phase == "Failed" {
				continue
			}
			k.run(pod)
			continue
		}
		if !r.reported && !r.role.Running() {
			r.reported = true
			phase, exit := "Succeeded", 0
			if err := r.role.Err(); err != nil {
				phase, exit = "Failed", 1
				var ee *exec.ExitError
				if errors.As(err, &ee) {
					exit = ee.ExitCode()
				}
			}
			k.patchStatus(n, map[string]any{"phase": phase, "containerStatuses": []any{map[string]any{
				"name": "spark-kubernetes-executor", "image": "", "imageID": "", "ready": false, "restartCount": 0,
				"state": map[string]any{"terminated": map[string]any{"exitCode": exit, "reason": "Error"}}}}})
		}
	}
	for n, r := range k.running {
		if !present[n] {
			r.role.Stop(15 * time.Second)
			delete(k.running, n)
		}
	}
}

// run starts a pod on a free exec host: the container's command (the
// template's `veil run -C /instance /opt/spark/veil-entrypoint.sh`, veil
// and /instance as this node has them) and arguments, with the pod's
// environment.
func (k *kubelet) run(pod map[string]any) {
	n := objName(pod)
	busy := map[string]bool{}
	for _, r := range k.running {
		busy[r.role.Name] = true
	}
	host := ""
	for _, h := range executorHosts {
		if !busy[h] {
			host = h
			break
		}
	}
	if host == "" {
		return // no free node: the pod stays pending
	}
	h := k.c.Net.Host(host)
	ctr := firstContainer(pod)
	var command, args []string
	for _, a := range ctr["command"].([]any) {
		command = append(command, fmt.Sprint(a))
	}
	for _, a := range ctr["args"].([]any) {
		args = append(args, fmt.Sprint(a))
	}
	if !slices.Equal(command, []string{"/usr/local/bin/veil", "run", "-C", "/instance", "/opt/spark/veil-entrypoint.sh"}) {
		k.t.Errorf("executor pod %s: command %q, want the template's veil run of the instance's entry point", n, command)
		return
	}
	inst := k.choose(pod)
	env, err := k.env(pod, ctr, h.IP)
	if err != nil {
		k.t.Errorf("executor pod %s: %v", n, err)
		return
	}
	cmd := h.Command(context.Background(), k.c.Veil, append([]string{"run", "-C", inst, command[4]}, args...)...)
	cmd.Env = env
	f := k.c.logFile(n + ".log")
	cmd.Stdout, cmd.Stderr = f, f
	r := &kubeletRun{pod: pod, inst: inst, role: &Role{Proc: h.Start(cmd), c: k.c, Name: host, Log: f.Name()}}
	k.running[n] = r
	k.all = append(k.all, r)
	k.patchStatus(n, map[string]any{"phase": "Running", "podIP": h.IP, "podIPs": []any{map[string]any{"ip": h.IP}},
		"hostIP": h.IP, "startTime": time.Now().UTC().Format(time.RFC3339)})
}

// env is the pod's environment as a kubelet makes it: values, field
// references (the pod's name, namespace and IP) and ConfigMap keys; on
// top of this node's own variables (PATH and such, no SPARK_ or VEIL_
// ones), VEIL_HOME being the node's veil home.
func (k *kubelet) env(pod, ctr map[string]any, ip string) ([]string, error) {
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "SPARK_") && !strings.HasPrefix(e, "VEIL_") && !strings.HasPrefix(e, "_SPARK") {
			env = append(env, e)
		}
	}
	list, _ := ctr["env"].([]any)
	for _, x := range list {
		e := x.(map[string]any)
		n := fmt.Sprint(e["name"])
		if v, ok := e["value"]; ok {
			env = append(env, n+"="+fmt.Sprint(v))
			continue
		}
		from, _ := e["valueFrom"].(map[string]any)
		switch {
		case from["fieldRef"] != nil:
			switch p := from["fieldRef"].(map[string]any)["fieldPath"]; p {
			case "status.podIP":
				env = append(env, n+"="+ip)
			case "metadata.name":
				env = append(env, n+"="+objName(pod))
			case "metadata.namespace":
				env = append(env, n+"="+objNamespace(pod))
			default:
				return nil, fmt.Errorf("env %s: field %v", n, p)
			}
		case from["configMapKeyRef"] != nil:
			ref := from["configMapKeyRef"].(map[string]any)
			code, b, err := k.api.do("GET", "/api/v1/namespaces/"+objNamespace(pod)+"/configmaps/"+fmt.Sprint(ref["name"]), "", nil)
			var cm struct{ Data map[string]string }
			if err != nil || code != 200 || json.Unmarshal(b, &cm) != nil {
				return nil, fmt.Errorf("env %s: ConfigMap %v: %d %v", n, ref["name"], code, err)
			}
			v, ok := cm.Data[fmt.Sprint(ref["key"])]
			if !ok {
				return nil, fmt.Errorf("env %s: no key %v in ConfigMap %v", n, ref["key"], ref["name"])
			}
			env = append(env, n+"="+v)
		default:
			return nil, fmt.Errorf("env %s: unsupported source %v", n, from)
		}
	}
	// The pod's VEIL_HOME volume is this node's veil home.
	return append(env, "VEIL_HOME="+k.c.Home), nil
}

func (k *kubelet) patchStatus(pod string, status map[string]any) {
	code, b, err := k.api.do("PATCH", "/api/v1/namespaces/"+k8sNamespace+"/pods/"+pod+"/status",
		"application/merge-patch+json", map[string]any{"status": status})
	if err != nil || code != 200 {
		k.t.Logf("patching the status of pod %s: %d %v %s", pod, code, err, b)
	}
}

func objName(obj map[string]any) string {
	md, _ := obj["metadata"].(map[string]any)
	s, _ := md["name"].(string)
	return s
}

func objNamespace(obj map[string]any) string {
	md, _ := obj["metadata"].(map[string]any)
	s, _ := md["namespace"].(string)
	return s
}

func objLabel(obj map[string]any, key string) string {
	md, _ := obj["metadata"].(map[string]any)
	l, _ := md["labels"].(map[string]any)
	s, _ := l[key].(string)
	return s
}

// container is a pod's first container.
func firstContainer(pod map[string]any) map[string]any {
	spec, _ := pod["spec"].(map[string]any)
	cs, _ := spec["containers"].([]any)
	if len(cs) == 0 {
		return map[string]any{}
	}
	c, _ := cs[0].(map[string]any)
	return c
}

// envSummary is a pod's container's variables: NAME=value, or
// NAME<-source for references.
func envSummary(pod map[string]any) string {
	var out []string
	list, _ := firstContainer(pod)["env"].([]any)
	for _, x := range list {
		e, _ := x.(map[string]any)
		if v, ok := e["value"]; ok {
			out = append(out, fmt.Sprintf("%v=%v", e["name"], v))
		} else {
			b, _ := json.Marshal(e["valueFrom"])
			out = append(out, fmt.Sprintf("%v<-%s", e["name"], b))
		}
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}
