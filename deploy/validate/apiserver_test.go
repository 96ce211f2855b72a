package validate

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// requireEnv turns environment skips into failures, as in veil's own
// tests (internal/veiltest).
const requireEnv = "VEIL_TEST_REQUIRE"

func skip(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv(requireEnv) == "all" {
		t.Fatalf("%s (%s=all: environment skips are failures)", msg, requireEnv)
	}
	t.Skip(msg)
}

// apiServer is a kube-apiserver over etcd on loopback, started once for
// the package's tests.
type apiServer struct {
	base   string
	token  string
	client *http.Client
	procs  []*exec.Cmd
	logs   []*bytes.Buffer
	dir    string

	mu  sync.Mutex
	gvs map[string]map[string]apiResource // apiVersion -> kind -> resource
}

type apiResource struct {
	Name       string `json:"name"`
	Kind       string `json:"kind"`
	Namespaced bool   `json:"namespaced"`
}

var (
	serverOnce sync.Once
	server     *apiServer
	serverErr  error
	serverSkip string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if server != nil {
		server.stop()
	}
	os.Exit(code)
}

// kubeAPIServer returns the binary: $VEIL_KUBE_APISERVER, else the one
// scripts/kube-apiserver.sh builds once per machine (and builds now if it
// is missing: several minutes on a cold module cache).
func kubeAPIServer() (string, error) {
	if p := os.Getenv("VEIL_KUBE_APISERVER"); p != "" {
		return p, nil
	}
	script, err := filepath.Abs("../../scripts/kube-apiserver.sh")
	if err != nil {
		return "", err
	}
	cmd := exec.Command(script)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("scripts/kube-apiserver.sh: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

func getServer(t *testing.T) *apiServer {
	t.Helper()
	serverOnce.Do(func() {
		if _, err := exec.LookPath("etcd"); err != nil {
			serverSkip = "needs etcd (Debian package etcd-server)"
			return
		}
		server, serverErr = startServer()
	})
	if serverSkip != "" {
		skip(t, "%s", serverSkip)
	}
	if serverErr != nil {
		t.Fatalf("starting kube-apiserver: %v", serverErr)
	}
	return server
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func startServer() (s *apiServer, err error) {
	bin, err := kubeAPIServer()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "veil-apiserver-")
	if err != nil {
		return nil, err
	}
	s = &apiServer{dir: dir, gvs: map[string]map[string]apiResource{}}
	defer func() {
		if err != nil {
			err = fmt.Errorf("%w\n%s", err, s.logTail())
			s.stop()
		}
	}()
	var ports [3]int
	for i := range ports {
		if ports[i], err = freePort(); err != nil {
			return nil, err
		}
	}
	client, peer := fmt.Sprintf("http://127.0.0.1:%d", ports[0]), fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	if err := s.start("etcd", "--name", "validate", "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "validate="+peer, "--logger", "zap", "--log-level", "error"); err != nil {
		return nil, err
	}

	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	keyFile := filepath.Join(dir, "sa.key")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600); err != nil {
		return nil, err
	}
	tok := make([]byte, 16)
	rand.Read(tok)
	s.token = fmt.Sprintf("%x", tok)
	tokFile := filepath.Join(dir, "tokens.csv")
	if err := os.WriteFile(tokFile, []byte(s.token+",admin,admin,system:masters\n"), 0o600); err != nil {
		return nil, err
	}
	certDir := filepath.Join(dir, "certs")
	if err := s.start(bin,
		"--etcd-servers", client,
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", keyFile,
		"--service-account-signing-key-file", keyFile,
		"--token-auth-file", tokFile,
		"--secure-port", fmt.Sprint(ports[2]),
		"--bind-address", "127.0.0.1",
		"--cert-dir", certDir,
		"--authorization-mode", "RBAC",
		"--service-cluster-ip-range", "10.96.0.0/16",
		// No controller manager creates the default ServiceAccounts; the
		// plugin that would insist on them does not validate anything.
		"--disable-admission-plugins", "ServiceAccount",
		// As in clusters that run device plugins (kubeadm's default).
		"--allow-privileged=true",
	); err != nil {
		return nil, err
	}
	s.base = fmt.Sprintf("https://127.0.0.1:%d", ports[2])

	// The server writes a self-signed certificate (and its CA) into
	// --cert-dir; trust exactly that.
	deadline := time.Now().Add(90 * time.Second)
	for {
		if time.Now().After(deadline) {
			return nil, errors.New("kube-apiserver not ready within 90s")
		}
		if err := s.exited(); err != nil {
			return nil, err
		}
		if s.client == nil {
			if pemData, err := os.ReadFile(filepath.Join(certDir, "apiserver.crt")); err == nil {
				pool := x509.NewCertPool()
				pool.AppendCertsFromPEM(pemData)
				s.client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
					TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, // its names include the bind address
				}}
			}
		}
		if s.client != nil {
			if code, body, err := s.do("GET", "/readyz", nil); err == nil && code == 200 && strings.TrimSpace(string(body)) == "ok" {
				return s, nil
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func (s *apiServer) start(bin string, args ...string) error {
	cmd := exec.Command(bin, args...)
	// Should the test binary die (a timeout panic), so do the servers.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		return err
	}
	s.procs = append(s.procs, cmd)
	s.logs = append(s.logs, &log)
	return nil
}

func (s *apiServer) exited() error {
	for _, p := range s.procs {
		if p.ProcessState != nil {
			return fmt.Errorf("%s exited: %v", filepath.Base(p.Path), p.ProcessState)
		}
		if p.Process.Signal(syscall.Signal(0)) != nil { // gone, not yet reaped
			p.Wait()
			return fmt.Errorf("%s exited: %v", filepath.Base(p.Path), p.ProcessState)
		}
	}
	return nil
}

func (s *apiServer) logTail() string {
	var b strings.Builder
	for i, l := range s.logs {
		out := l.String()
		if len(out) > 3000 {
			out = out[len(out)-3000:]
		}
		fmt.Fprintf(&b, "--- %s:\n%s\n", filepath.Base(s.procs[i].Path), out)
	}
	return b.String()
}

func (s *apiServer) stop() {
	for i := len(s.procs) - 1; i >= 0; i-- {
		p := s.procs[i]
		p.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			p.Process.Kill()
			<-done
		}
	}
	os.RemoveAll(s.dir)
}

func (s *apiServer) do(method, path string, body []byte) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, s.base+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+s.token)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, b, err
}

// resource finds the REST resource of apiVersion and kind by discovery;
// an apiVersion the server does not serve, or a kind it does not know,
// is an error.
func (s *apiServer) resource(apiVersion, kind string) (apiResource, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	kinds, ok := s.gvs[apiVersion]
	if !ok {
		path := "/apis/" + apiVersion
		if apiVersion == "v1" {
			path = "/api/v1"
		}
		code, body, err := s.do("GET", path, nil)
		if err != nil {
			return apiResource{}, err
		}
		if code == 404 {
			return apiResource{}, fmt.Errorf("apiVersion %q is not served by Kubernetes", apiVersion)
		}
		if code != 200 {
			return apiResource{}, fmt.Errorf("discovery of %s: %d %s", apiVersion, code, body)
		}
		var list struct {
			Resources []apiResource `json:"resources"`
		}
		if err := json.Unmarshal(body, &list); err != nil {
			return apiResource{}, err
		}
		kinds = map[string]apiResource{}
		for _, r := range list.Resources {
			if !strings.Contains(r.Name, "/") {
				kinds[r.Kind] = r
			}
		}
		s.gvs[apiVersion] = kinds
	}
	r, ok := kinds[kind]
	if !ok {
		return apiResource{}, fmt.Errorf("kind %q is not served in apiVersion %q", kind, apiVersion)
	}
	return r, nil
}

// forget drops cached discovery (after a CRD is installed).
func (s *apiServer) forget(apiVersion string) {
	s.mu.Lock()
	delete(s.gvs, apiVersion)
	s.mu.Unlock()
}

// create sends obj to the server: with dryRun, validated and admitted but
// not stored. Field validation is strict: unknown or duplicate fields are
// errors.
func (s *apiServer) create(obj map[string]any, namespace string, dryRun bool) error {
	apiVersion, _ := obj["apiVersion"].(string)
	kind, _ := obj["kind"].(string)
	if apiVersion == "" || kind == "" {
		return errors.New("object without apiVersion or kind")
	}
	r, err := s.resource(apiVersion, kind)
	if err != nil {
		return err
	}
	path := "/apis/" + apiVersion
	if apiVersion == "v1" {
		path = "/api/v1"
	}
	if r.Namespaced {
		md, _ := obj["metadata"].(map[string]any)
		if ns, _ := md["namespace"].(string); ns != "" {
			namespace = ns
		}
		path += "/namespaces/" + namespace
	}
	path += "/" + r.Name + "?fieldValidation=Strict"
	if dryRun {
		path += "&dryRun=All"
	}
	body, err := json.Marshal(obj)
	if err != nil {
		return err
	}
	code, resp, err := s.do("POST", path, body)
	if err != nil {
		return err
	}
	if code == 200 || code == 201 {
		return nil
	}
	var st struct {
		Message string `json:"message"`
	}
	json.Unmarshal(resp, &st)
	if st.Message == "" {
		st.Message = string(resp)
	}
	return fmt.Errorf("%d: %s", code, st.Message)
}
