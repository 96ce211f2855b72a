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
	"maps"
	"net"
	"net/http"
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
// and executor pods: etcd and the real kube-apiserver on host apiserver;
// deploy/k8s's namespace, RuntimeClasses, service accounts, token Secret
// and role applied to it (the test fills the Secret from a TokenRequest and
// publishes kube-root-ca.crt, as a controller manager would); the driver
// pod of deploy/k8s/spark-driver-template.yaml created as an operator
// creates it; and a test kubelet that runs the driver pod on host driver
// and every executor pod Spark creates (from the template baked into the
// image) on a free exec host: the pod's command and arguments ($(VAR)
// expanded) with its environment (field, ConfigMap and Secret references
// resolved) as `veil run`, the pod's status patched to Running with that
// host's address. It checks:
//
//   - the people query completes with two executors, owned by the
//     driver's pod, and its sealed part files, decrypted by the owner,
//     hold the rows of the same file run on the plaintext in local mode
//     outside veil;
//   - no pod or ConfigMap (as the kubelet saw them while pods ran), and no
//     pod, ConfigMap or Secret at the end, contains Spark's
//     authentication secret (as the key service releases it, or base64 as
//     Spark would send it) or names a secret variable;
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
	// What a controller manager would do: the driver's token in its
	// Secret, the cluster's CA in every namespace.
	token := api.serviceAccountToken(k8sNamespace, "veil-spark-driver")
	api.must("PATCH", "/api/v1/namespaces/"+k8sNamespace+"/secrets/veil-spark-driver-token", mergePatch{
		"data": map[string]any{"token": base64.StdEncoding.EncodeToString([]byte(token))}}, 200)
	api.create(map[string]any{"apiVersion": "v1", "kind": "ConfigMap",
		"metadata": map[string]any{"name": "kube-root-ca.crt", "namespace": k8sNamespace},
		"data":     map[string]any{"ca.crt": string(api.ca)}})

	// The kubelet: the driver pod on host driver; executor 1 runs the
	// rogue image, the others the instance the policy names.
	kl := startKubelet(t, c, api, func(pod map[string]any) string {
		if objLabel(pod, "spark-exec-id") == "1" {
			return rogue
		}
		return inst
	})

	// The driver pod of deploy/k8s, as an operator creates it.
	var driverPod map[string]any
	if err := yaml.Unmarshal(readFile(t, filepath.Join(ex, "..", "..", "deploy", "k8s", "spark-driver-template.yaml")), &driverPod); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(api.must("POST", "/api/v1/namespaces/"+k8sNamespace+"/pods?fieldValidation=Strict", driverPod, 201), &driverPod); err != nil {
		t.Fatal(err)
	}
	t.Logf("set-up (data, API server, two builds, objects): %v", time.Since(start).Round(time.Millisecond))
	jobStart := time.Now()
	d := kl.waitRun(objName(driverPod), time.Minute)
	if err := d.role.Wait(8 * time.Minute); err != nil {
		t.Fatalf("the people query on Kubernetes failed: %v", err)
	}
	t.Logf("people query on Kubernetes (%d rows), veil run of the driver pod to its end: %v", peopleRows, time.Since(jobStart).Round(time.Millisecond))
	kl.stop()

	// Two executors of the policy's image registered; the rogue one
	// never started a JVM.
	ids := map[string]bool{}
	for _, m := range regexp.MustCompile(`Registered executor .* with ID (\d+)`).FindAllStringSubmatch(d.role.Output(), -1) {
		ids[m[1]] = true
	}
	if len(ids) < 2 || ids["1"] {
		t.Errorf("executors registered with the driver: %v, want two, not 1 (the rogue image's)", ids)
	}
	var rogueRun *kubeletRun
	var executors []*kubeletRun
	for _, r := range kl.runs() {
		if r.inst == rogue {
			rogueRun = r
		}
		if objLabel(r.pod, "spark-role") == "executor" {
			executors = append(executors, r)
			// Spark made the driver's pod their owner.
			md, _ := r.pod["metadata"].(map[string]any)
			owners, _ := md["ownerReferences"].([]any)
			if len(owners) != 1 || owners[0].(map[string]any)["name"] != objName(driverPod) {
				t.Errorf("executor pod %s: owners %v, want the driver's pod %s", objName(r.pod), owners, objName(driverPod))
			}
		}
	}
	if rogueRun == nil || len(executors) < 3 {
		t.Fatalf("the kubelet ran %d executor pods, the rogue one %v; want executor 1 (the rogue image) and two more", len(executors), rogueRun != nil)
	}
	if out := rogueRun.role.Output(); rogueRun.role.Running() || !strings.Contains(out, "veil: error: key service refused a key: secret spark-auth") ||
		strings.Contains(out, "KubernetesExecutorBackend") || strings.Contains(out, "Started daemon") {
		t.Errorf("the rogue executor (running %v): want veil's refusal before any JVM:\n%s", rogueRun.role.Running(), out)
	} else {
		t.Logf("the rogue executor was refused: %s", firstLine(out, "veil: error:"))
	}
	t.Logf("an executor pod as Spark created it: command %v, args %v, env %s", firstContainer(executors[1].pod)["command"],
		firstContainer(executors[1].pod)["args"], envSummary(executors[1].pod))

	// The secret is in no object of the API server.
	raw, err := hex.DecodeString(secret)
	if err != nil {
		t.Fatal(err)
	}
	leaks := []string{secret, base64.StdEncoding.EncodeToString([]byte(secret)), base64.StdEncoding.EncodeToString(raw)}
	objects := kl.seen()
	// The scan covers what Spark made: the executors' ConfigMap and pods
	// that name the secret's file, not the secret.
	var confMap, fileRef bool
	for what, b := range objects {
		confMap = confMap || regexp.MustCompile(`^configmap spark-exec-\S+-conf-map `).MatchString(what)
		fileRef = fileRef || (strings.HasPrefix(what, "pod ") && bytes.Contains(b, []byte("-Dspark.authenticate.secret.executor.file=/tmp/spark-auth/secret")))
	}
	if !confMap || !fileRef {
		t.Errorf("the objects seen while pods ran hold Spark's executor ConfigMap %v and a pod naming the secret file %v; want both", confMap, fileRef)
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
	t.Logf("the secret is in none of %d objects (the pods and ConfigMaps while the pods ran, every pod, ConfigMap and Secret at the end)", len(objects))

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

// mergePatch is a JSON merge patch (RFC 7386) as a request body.
type mergePatch map[string]any

// do sends a request with the admin's token; body, if not nil, is JSON
// (a merge patch if a mergePatch).
func (k *kubeAPI) do(method, path, contentType string, body any) (int, []byte, error) {
	var r io.Reader
	if _, ok := body.(mergePatch); ok && contentType == "" {
		contentType = "application/merge-patch+json"
	}
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

// kubelet runs the driver pod (label veil.dev/spark-role=driver, on host
// driver) and the executor pods (spark-role=executor, each on a free exec
// host) of the namespace, until stop.
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
	objects map[string][]byte // the pods and ConfigMaps as seen while pods ran
	tried   map[string]bool   // pods run or refused
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
	k := &kubelet{t: t, c: c, api: api, choose: choose, cancel: cancel, done: make(chan struct{}),
		running: map[string]*kubeletRun{}, objects: map[string][]byte{}, tried: map[string]bool{}}
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

// seen is every pod and ConfigMap of the namespace as the loop saw them
// while pods ran (by kind, name and resourceVersion).
func (k *kubelet) seen() map[string][]byte {
	k.mu.Lock()
	defer k.mu.Unlock()
	return maps.Clone(k.objects)
}

// waitRun waits up to timeout until the kubelet runs pod.
func (k *kubelet) waitRun(pod string, timeout time.Duration) *kubeletRun {
	k.t.Helper()
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		for _, r := range k.runs() {
			if objName(r.pod) == pod {
				return r
			}
		}
	}
	k.t.Fatalf("the kubelet did not run pod %s within %v", pod, timeout)
	return nil
}

// loop lists the pods every 300 ms (a watch's effect, simpler): it
// starts new ones, reports ended ones, and stops and removes deleted ones.
func (k *kubelet) loop(ctx context.Context) {
	defer close(k.done)
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(300 * time.Millisecond):
		}
		var pods, cms []map[string]any
		if k.list("pods", &pods) != nil || k.list("configmaps", &cms) != nil {
			continue
		}
		k.sync(pods, cms)
	}
}

func (k *kubelet) list(resource string, items *[]map[string]any) error {
	code, b, err := k.api.do("GET", "/api/v1/namespaces/"+k8sNamespace+"/"+resource, "", nil)
	if err != nil || code != 200 {
		return fmt.Errorf("listing %s: %d %v", resource, code, err)
	}
	var list struct{ Items []map[string]any }
	if err := json.Unmarshal(b, &list); err != nil {
		return err
	}
	*items = list.Items
	return nil
}

func (k *kubelet) sync(pods, cms []map[string]any) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.running) > 0 {
		for kind, list := range map[string][]map[string]any{"pod": pods, "configmap": cms} {
			for _, o := range list {
				md, _ := o["metadata"].(map[string]any)
				b, _ := json.Marshal(o)
				k.objects[fmt.Sprintf("%s %s (version %v)", kind, objName(o), md["resourceVersion"])] = b
			}
		}
	}
	present := map[string]bool{}
	for _, pod := range pods {
		if objLabel(pod, "spark-role") != "executor" && objLabel(pod, "veil.dev/spark-role") != "driver" {
			continue
		}
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
			if !k.tried[n] {
				k.run(pod)
			}
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
				"name": firstContainer(pod)["name"], "image": firstContainer(pod)["image"], "imageID": "", "ready": false, "restartCount": 0,
				"state": map[string]any{"terminated": map[string]any{"exitCode": exit, "reason": phase}}}}})
		}
	}
	for n, r := range k.running {
		if !present[n] {
			r.role.Stop(15 * time.Second)
			delete(k.running, n)
		}
	}
}

// veilCommand is the command of deploy/k8s's Spark pods.
var veilCommand = []string{"/usr/local/bin/veil", "run", "-C", "/instance", "/opt/spark/veil-entrypoint.sh"}

// run starts a pod: the driver on host driver, an executor on a free exec
// host. It runs the container's command (veil and /instance as this node
// has them) and arguments ($(VAR) expanded), with the pod's environment.
func (k *kubelet) run(pod map[string]any) {
	n := objName(pod)
	host := ""
	if objLabel(pod, "veil.dev/spark-role") == "driver" {
		host = "driver"
	} else {
		busy := map[string]bool{}
		for _, r := range k.running {
			busy[r.role.Name] = true
		}
		for _, h := range executorHosts {
			if !busy[h] {
				host = h
				break
			}
		}
	}
	if host == "" {
		return // no free node: the pod stays pending
	}
	k.tried[n] = true
	h := k.c.Net.Host(host)
	ctr := firstContainer(pod)
	command, _ := ctr["command"].([]any)
	if !slices.Equal(strs(command), veilCommand) {
		k.t.Errorf("pod %s: command %q, want the templates' veil run of the instance's entry point", n, command)
		return
	}
	env, vars, err := k.env(pod, ctr, h.IP)
	if err != nil {
		k.t.Errorf("pod %s: %v", n, err)
		return
	}
	args, _ := ctr["args"].([]any)
	inst := k.choose(pod)
	cmdArgs := []string{"run", "-C", inst, veilCommand[4]}
	for _, a := range strs(args) {
		cmdArgs = append(cmdArgs, os.Expand(strings.NewReplacer("$(", "${", ")", "}").Replace(a), func(v string) string { return vars[v] }))
	}
	cmd := h.Command(context.Background(), k.c.Veil, cmdArgs...)
	cmd.Env = env
	f := k.c.logFile(n + ".log")
	cmd.Stdout, cmd.Stderr = f, f
	r := &kubeletRun{pod: pod, inst: inst, role: &Role{Proc: h.Start(cmd), c: k.c, Name: host, Log: f.Name()}}
	k.running[n] = r
	k.all = append(k.all, r)
	k.patchStatus(n, map[string]any{"phase": "Running", "podIP": h.IP, "podIPs": []any{map[string]any{"ip": h.IP}},
		"hostIP": h.IP, "startTime": time.Now().UTC().Format(time.RFC3339)})
}

func strs(l []any) []string {
	out := make([]string, len(l))
	for i, x := range l {
		out[i] = fmt.Sprint(x)
	}
	return out
}

// env is the pod's environment as a kubelet makes it: the API server's
// service variables (KUBERNETES_SERVICE_HOST and _PORT: here the server
// itself, there is no service proxy), values, field references (the
// pod's name, namespace and IP) and ConfigMap and Secret keys; on top of
// this node's own variables (PATH and such, no SPARK_ or VEIL_ ones),
// VEIL_HOME being the node's veil home. vars are the pod's variables,
// for $(VAR) in arguments.
func (k *kubelet) env(pod, ctr map[string]any, ip string) (env []string, vars map[string]string, err error) {
	vars = map[string]string{"KUBERNETES_SERVICE_HOST": k.api.host, "KUBERNETES_SERVICE_PORT": apiServerPort}
	list, _ := ctr["env"].([]any)
	var names []string
	for _, x := range list {
		e := x.(map[string]any)
		n := fmt.Sprint(e["name"])
		names = append(names, n)
		if v, ok := e["value"]; ok {
			vars[n] = fmt.Sprint(v)
			continue
		}
		from, _ := e["valueFrom"].(map[string]any)
		var v string
		switch {
		case from["fieldRef"] != nil:
			switch p := from["fieldRef"].(map[string]any)["fieldPath"]; p {
			case "status.podIP":
				v = ip
			case "metadata.name":
				v = objName(pod)
			case "metadata.namespace":
				v = objNamespace(pod)
			default:
				return nil, nil, fmt.Errorf("env %s: field %v", n, p)
			}
		case from["configMapKeyRef"] != nil:
			v, err = k.key("configmaps", objNamespace(pod), from["configMapKeyRef"].(map[string]any), false)
		case from["secretKeyRef"] != nil:
			v, err = k.key("secrets", objNamespace(pod), from["secretKeyRef"].(map[string]any), true)
		default:
			err = fmt.Errorf("unsupported source %v", from)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("env %s: %w", n, err)
		}
		vars[n] = v
	}
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "SPARK_") && !strings.HasPrefix(e, "VEIL_") && !strings.HasPrefix(e, "_SPARK") {
			env = append(env, e)
		}
	}
	for _, n := range append(names, "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT") {
		env = append(env, n+"="+vars[n])
	}
	// The pod's VEIL_HOME volume is this node's veil home.
	return append(env, "VEIL_HOME="+k.c.Home), vars, nil
}

// key reads a key of a ConfigMap or Secret (base64 in the API).
func (k *kubelet) key(resource, ns string, ref map[string]any, b64 bool) (string, error) {
	code, b, err := k.api.do("GET", "/api/v1/namespaces/"+ns+"/"+resource+"/"+fmt.Sprint(ref["name"]), "", nil)
	var obj struct{ Data map[string]string }
	if err != nil || code != 200 || json.Unmarshal(b, &obj) != nil {
		return "", fmt.Errorf("%s %v: %d %v", resource, ref["name"], code, err)
	}
	v, ok := obj.Data[fmt.Sprint(ref["key"])]
	if !ok {
		return "", fmt.Errorf("no key %v in %s %v", ref["key"], resource, ref["name"])
	}
	if b64 {
		d, err := base64.StdEncoding.DecodeString(v)
		return string(d), err
	}
	return v, nil
}

func (k *kubelet) patchStatus(pod string, status map[string]any) {
	code, b, err := k.api.do("PATCH", "/api/v1/namespaces/"+k8sNamespace+"/pods/"+pod+"/status", "", mergePatch{"status": status})
	if err != nil || code != 200 {
		k.t.Logf("patching the status of pod %s: %d %v %s", pod, code, err, b)
	}
}

// firstLine is the first line of s that starts with prefix.
func firstLine(s, prefix string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return ""
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
