// Package sparkcluster runs a Spark standalone cluster of veil instances
// for tests: hosts are network namespaces (internal/netnstest), the key
// service runs on host kms, the data owner's commands on host owner, and
// each Spark role (master, workers, driver) is `veil run` of the instance
// examples/spark builds, with network: host on its own host. A host
// directory stands in for shared storage; every Spark instance mounts it
// sealed at /data.
//
// New sets up the hosts, the key service, the owner (an app with a data
// key and Spark's authentication secret) and the shared directory; Build
// makes an instance from examples/spark, Allow releases the key and the
// secret to its measurement, Start runs a role. Everything is stopped and
// removed in t.Cleanup. It is imported by tests only.
package sparkcluster

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"crypto/rand"

	"github.com/veil-tee/veil/internal/netnstest"
	"github.com/veil-tee/veil/internal/veiltest"
)

// PysparkVersion is the version scripts/pyspark-requirements.txt pins.
const PysparkVersion = "3.5.9"

// JavaHome is Debian's openjdk-17-jre-headless.
const JavaHome = "/usr/lib/jvm/java-17-openjdk-amd64"

// KMSPort is the key service's port on host kms.
const KMSPort = "8443"

// MasterPort is the Spark master's RPC port.
const MasterPort = "7077"

// PysparkDir is the pip target directory holding pyspark, or a skip.
func PysparkDir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("VEIL_PYSPARK_DIR")
	if dir == "" {
		dir = "/var/cache/veil/pip/pyspark-" + PysparkVersion
	}
	if _, err := os.Stat(filepath.Join(dir, "pyspark-"+PysparkVersion+".dist-info")); err != nil {
		veiltest.Skip(t, "needs pyspark %s in %s (scripts/setup.sh installs it)", PysparkVersion, dir)
	}
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		veiltest.Skip(t, "needs the Debian package python3")
	}
	if _, err := os.Stat(JavaHome + "/lib/server/libjvm.so"); err != nil {
		veiltest.Skip(t, "needs the Debian package openjdk-17-jre-headless")
	}
	return dir
}

// ExampleDir is examples/spark of this source tree.
func ExampleDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "examples", "spark")
}

// Cluster is one test's hosts, key service and owner.
type Cluster struct {
	t       testing.TB
	Veil    string // the veil binary
	Home    string // VEIL_HOME of every command (sim platform, signing key)
	Work    string // scratch directory
	Shared  string // the shared storage (host directory)
	Net     *netnstest.Net
	Pyspark string

	KMS                  *netnstest.Proc
	kmsData              string
	KMSURL, KMSCA, token string
	appID, apiKey        string
	KeyID, SecretID      string

	// Party B of the multi-party query: its own key service (host
	// kmsb), its app and key, its storage (mounted at /party-b) and the
	// joint output directory (mounted at /joint, sealed for both keys).
	KMSB                    *netnstest.Proc
	KMSBURL, KMSBCA         string
	appIDB, apiKeyB, KeyBID string
	SharedB, Joint          string

	logMu sync.Mutex
	logs  []string
}

// Hosts are the hosts New creates besides the workers.
var Hosts = []string{"kms", "kmsb", "owner", "master", "driver"}

// New creates the hosts (those of Hosts, worker1..workerN and extra),
// starts the key service on kms, enrolls the owner, creates the data key
// people-key and Spark's authentication secret spark-auth (32 random
// bytes, hex); and party B of the multi-party query: a second key service
// on host kmsb, the owner bob enrolled there and B's key incomes-key.
func New(t testing.TB, veil string, workers int, extra ...string) *Cluster {
	t.Helper()
	veiltest.NeedFUSE(t)
	veiltest.NeedCommand(t, "mksquashfs")
	pys := PysparkDir(t)
	names := append([]string(nil), Hosts...)
	for i := 1; i <= workers; i++ {
		names = append(names, fmt.Sprintf("worker%d", i))
	}
	names = append(names, extra...)
	work := t.TempDir()
	c := &Cluster{t: t, Veil: veil, Home: filepath.Join(work, "home"), Work: work,
		Shared: filepath.Join(work, "shared"), Pyspark: pys,
		SharedB: filepath.Join(work, "shared-b"), Joint: filepath.Join(work, "joint")}
	for _, d := range []string{c.Shared, c.SharedB, c.Joint, filepath.Join(work, "logs"), filepath.Join(work, "owner")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The sandboxes' root (a mapped uid) writes there through the
	// sealed mounts.
	for _, d := range []string{c.Shared, c.SharedB, c.Joint} {
		if err := os.Chown(d, 1<<30, 1<<30); err != nil {
			t.Fatal(err)
		}
	}
	c.Net = netnstest.New(t, names...)
	t.Cleanup(c.dumpLogsOnFailure)
	c.kmsData = filepath.Join(work, "kms")
	c.StartKMS()
	var token, tokenB string
	c.KMSURL, c.KMSCA, token = c.kmsEnv("kms")
	c.token = token
	c.KMSB = c.startKMS("kmsb", filepath.Join(work, "kmsb"))
	c.KMSBURL, c.KMSBCA, tokenB = c.kmsEnv("kmsb")
	out := c.ownerRun([]string{"VEIL_ADMIN_TOKEN=" + c.token}, "", "kms", "enroll", "--name", "alice")
	c.appID, c.apiKey = exportOf([]byte(out), "VEIL_APP_ID"), exportOf([]byte(out), "VEIL_API_KEY")
	c.KeyID = c.keyCreate(c.Owner, "people-key")
	out = c.ownerRun([]string{"VEIL_ADMIN_TOKEN=" + tokenB, "VEIL_KMS_URL=" + c.KMSBURL, "VEIL_KMS_CA=" + c.KMSBCA},
		"", "kms", "enroll", "--name", "bob")
	c.appIDB, c.apiKeyB = exportOf([]byte(out), "VEIL_APP_ID"), exportOf([]byte(out), "VEIL_API_KEY")
	c.KeyBID = c.keyCreate(c.OwnerB, "incomes-key")
	var secret [32]byte
	rand.Read(secret[:])
	out = c.Owner(hex.EncodeToString(secret[:]), "kms", "secret", "put", "spark-auth")
	c.SecretID = strings.Fields(out)[0]
	return c
}

// kmsEnv waits until the key service of host prints its address, CA and
// admin token (logs/HOST.env) and returns them.
func (c *Cluster) kmsEnv(host string) (url, ca, token string) {
	c.t.Helper()
	var env []byte
	for deadline := time.Now().Add(30 * time.Second); ; {
		env, _ = os.ReadFile(filepath.Join(c.Work, "logs", host+".env"))
		if bytes.Contains(env, []byte("VEIL_ADMIN_TOKEN=")) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	url, ca, token = exportOf(env, "VEIL_KMS_URL"), exportOf(env, "VEIL_KMS_CA"), exportOf(env, "VEIL_ADMIN_TOKEN")
	if url != "https://"+c.Net.Host(host).IP+":"+KMSPort || ca == "" || token == "" {
		c.t.Fatalf("the key service on %s printed %q", host, env)
	}
	return url, ca, token
}

// keyCreate creates a data key with an owner's command (Owner, OwnerB).
func (c *Cluster) keyCreate(owner func(string, ...string) string, name string) string {
	c.t.Helper()
	out := owner("", "kms", "key", "create", "--name", name, "--json")
	var k struct{ ID string }
	if err := json.Unmarshal([]byte(out), &k); err != nil || k.ID == "" {
		c.t.Fatalf("kms key create printed %q: %v", out, err)
	}
	return k.ID
}

func exportOf(env []byte, name string) string {
	m := regexp.MustCompile(`(?m)^export ` + name + `=(.*)$`).FindSubmatch(env)
	if m == nil {
		return ""
	}
	return string(m[1])
}

// StartKMS starts the key service on host kms (again, after StopKMS: same
// data, address and certificate) and waits until it answers.
func (c *Cluster) StartKMS() {
	c.t.Helper()
	c.KMS = c.startKMS("kms", c.kmsData)
}

// startKMS starts a dev key service on host with its data in data; its
// output goes to logs/HOST.env and logs/HOST.log.
func (c *Cluster) startKMS(host, data string) *netnstest.Proc {
	c.t.Helper()
	h := c.Net.Host(host)
	cmd := h.Command(context.Background(), c.Veil, "kms", "serve", "--dev", "--data", data, "--listen", h.IP+":"+KMSPort)
	cmd.Env = append(os.Environ(), "VEIL_HOME="+c.Home)
	cmd.Stdout = c.logFile(host + ".env")
	cmd.Stderr = c.logFile(host + ".log")
	p := h.Start(cmd)
	if err := c.Net.Host("owner").WaitTCP(h.IP+":"+KMSPort, 60*time.Second, p.Done()); err != nil {
		c.t.Fatalf("the key service on %s did not start: %v\n%s", host, err, c.readLog(host+".log"))
	}
	return p
}

// StopKMS stops the key service.
func (c *Cluster) StopKMS() { c.KMS.Stop(10 * time.Second) }

// logFile opens (appends to) a file of the logs directory.
func (c *Cluster) logFile(name string) *os.File {
	c.t.Helper()
	p := filepath.Join(c.Work, "logs", name)
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { f.Close() })
	c.logMu.Lock()
	c.logs = append(c.logs, p)
	c.logMu.Unlock()
	return f
}

func (c *Cluster) readLog(name string) string {
	b, _ := os.ReadFile(filepath.Join(c.Work, "logs", name))
	return string(b)
}

// dumpLogsOnFailure logs the tail of every log if the test failed.
func (c *Cluster) dumpLogsOnFailure() {
	if !c.t.Failed() {
		return
	}
	c.logMu.Lock()
	defer c.logMu.Unlock()
	seen := map[string]bool{}
	for _, p := range c.logs {
		if seen[p] {
			continue
		}
		seen[p] = true
		b, _ := os.ReadFile(p)
		if len(b) > 6000 {
			b = b[len(b)-6000:]
		}
		c.t.Logf("--- %s (tail)\n%s", filepath.Base(p), b)
	}
}

// ownerRun runs veil on host owner with the given extra environment.
func (c *Cluster) ownerRun(env []string, stdin string, args ...string) string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := c.Net.Host("owner").Command(ctx, c.Veil, args...)
	cmd.Env = append(append(os.Environ(), "VEIL_HOME="+c.Home, "VEIL_KMS_URL="+c.KMSURL, "VEIL_KMS_CA="+c.KMSCA), env...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		c.t.Fatalf("veil %s on host owner: %v\n%s%s", strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String()
}

// Owner runs veil as the owner (its app credentials) on host owner.
func (c *Cluster) Owner(stdin string, args ...string) string {
	c.t.Helper()
	return c.ownerRun([]string{"VEIL_APP_ID=" + c.appID, "VEIL_API_KEY=" + c.apiKey}, stdin, args...)
}

// OwnerB runs veil as party B (its app credentials at the key service on
// kmsb) on host owner.
func (c *Cluster) OwnerB(stdin string, args ...string) string {
	c.t.Helper()
	return c.ownerRun(c.envB(), stdin, args...)
}

func (c *Cluster) envB() []string {
	return []string{"VEIL_APP_ID=" + c.appIDB, "VEIL_API_KEY=" + c.apiKeyB, "VEIL_KMS_URL=" + c.KMSBURL, "VEIL_KMS_CA=" + c.KMSBCA}
}

// OwnerBTry runs veil as party B and returns its output and error,
// without failing the test.
func (c *Cluster) OwnerBTry(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := c.Net.Host("owner").Command(ctx, c.Veil, args...)
	cmd.Env = append(append(os.Environ(), "VEIL_HOME="+c.Home), c.envB()...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Seal encrypts the host file plain under the data key into the shared
// storage at rel.
func (c *Cluster) Seal(plain, rel string) {
	c.t.Helper()
	dst := filepath.Join(c.Shared, rel)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		c.t.Fatal(err)
	}
	c.Owner("", "encrypt", "--key", "kms:"+c.KeyID, "-i", plain, "-o", dst)
}

// GiveShared gives everything on the shared storages (the owner's and
// party B's) to the sandboxes'
// root (host uid and gid 2^30), as an operator gives its storage to the
// instances: veil encrypt writes a tree readable by its owner only.
func (c *Cluster) GiveShared() {
	c.t.Helper()
	for _, d := range []string{c.Shared, c.SharedB} {
		err := filepath.WalkDir(d, func(p string, _ os.DirEntry, err error) error {
			if err != nil {
				return err
			}
			return os.Lchown(p, 1<<30, 1<<30)
		})
		if err != nil {
			c.t.Fatal(err)
		}
	}
}

// Decrypt decrypts a sealed file of the shared storage into a host file.
func (c *Cluster) Decrypt(sealed, plain string) {
	c.t.Helper()
	c.Owner("", "decrypt", "-i", sealed, "-o", plain)
}

// Build makes the Spark instance of examples/spark in Work/name, with
// extra files put in its image (path below image/ -> content), builds it
// and returns its directory and how long veil build took.
func (c *Cluster) Build(name string, extra map[string]string) (string, time.Duration) {
	c.t.Helper()
	return c.BuildAsync(name, extra)()
}

// BuildAsync makes the instance as Build does and starts its veil build
// in the background, so that several builds, or a build and other work,
// overlap; the function it returns waits for the build and returns what
// Build returns (call it from the test's goroutine: it fails the test if
// the build failed).
func (c *Cluster) BuildAsync(name string, extra map[string]string) func() (string, time.Duration) {
	c.t.Helper()
	dir := c.prepare(name, extra)
	start := time.Now()
	cmd := exec.Command(c.Veil, "build", "-C", dir)
	cmd.Env = append(os.Environ(), "VEIL_HOME="+c.Home)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("veil build -C %s: %v", dir, err)
	}
	finished := make(chan struct{})
	var err error
	var took time.Duration
	go func() { err = cmd.Wait(); took = time.Since(start); close(finished) }()
	c.t.Cleanup(func() {
		select {
		case <-finished:
		default:
			cmd.Process.Kill()
			<-finished
		}
	})
	return func() (string, time.Duration) {
		c.t.Helper()
		<-finished
		if err != nil {
			c.t.Fatalf("veil build -C %s: %v\n%s", dir, err, out.String())
		}
		return dir, took
	}
}

// prepare makes the instance directory Work/name of examples/spark, with
// extra files put in its image, ready for veil build.
func (c *Cluster) prepare(name string, extra map[string]string) string {
	c.t.Helper()
	ex := ExampleDir()
	dir := filepath.Join(c.Work, name)
	c.veil("new", dir)
	files := map[string]string{
		"etc/hosts":  "127.0.0.1\tlocalhost veil\n::1\tlocalhost\n",
		"etc/passwd": "root:x:0:0:root:/tmp:/usr/sbin/nologin\n",
	}
	for k, v := range extra {
		files[k] = v
	}
	copyFile := func(from, to string, mode os.FileMode) {
		b, err := os.ReadFile(from)
		if err != nil {
			c.t.Fatal(err)
		}
		writeFile(c.t, filepath.Join(dir, "image", to), b, mode)
	}
	copyFile(filepath.Join(ex, "app", "veil-entrypoint.sh"), "opt/spark/veil-entrypoint.sh", 0o755)
	jobs, _ := filepath.Glob(filepath.Join(ex, "jobs", "*.py"))
	sql, _ := filepath.Glob(filepath.Join(ex, "jobs", "tpch", "*.sql"))
	for _, j := range append(jobs, sql...) {
		rel, _ := filepath.Rel(filepath.Join(ex, "jobs"), j)
		copyFile(j, "opt/spark/jobs/"+rel, 0o644)
	}
	for p, content := range files {
		writeFile(c.t, filepath.Join(dir, "image", p), []byte(content), 0o644)
	}
	tmpl, err := os.ReadFile(filepath.Join(ex, "veil.json"))
	if err != nil {
		c.t.Fatal(err)
	}
	ca, err := os.ReadFile(c.KMSCA)
	if err != nil {
		c.t.Fatal(err)
	}
	caB, err := os.ReadFile(c.KMSBCA)
	if err != nil {
		c.t.Fatal(err)
	}
	cfg := Fill(string(tmpl), map[string]string{
		"DATA_DIR": c.Shared, "KEY_ID": c.KeyID, "SECRET_ID": c.SecretID, "PYSPARK_DIR": c.Pyspark,
		"KMS_ADDRESS": strings.TrimPrefix(c.KMSURL, "https://"), "KMS_CA_CERT": string(ca),
		"PARTY_B_DIR": c.SharedB, "JOINT_DIR": c.Joint, "KEY_B_ID": c.KeyBID,
		"KMS_B_ADDRESS": strings.TrimPrefix(c.KMSBURL, "https://"), "KMS_B_CA_CERT": string(caB),
	})
	if strings.Contains(cfg, "@") && regexp.MustCompile(`@[A-Z_]+@`).MatchString(cfg) {
		c.t.Fatalf("unfilled placeholders in examples/spark/veil.json:\n%s", cfg)
	}
	writeFile(c.t, filepath.Join(dir, "veil.json"), []byte(cfg), 0o644)
	return dir
}

// Fill replaces every @NAME@ of a veil.json template by its value, JSON
// string-escaped.
func Fill(tmpl string, values map[string]string) string {
	for k, v := range values {
		b, _ := json.Marshal(v)
		tmpl = strings.ReplaceAll(tmpl, "@"+k+"@", string(b[1:len(b)-1]))
	}
	return tmpl
}

func writeFile(t testing.TB, p string, b []byte, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, mode); err != nil {
		t.Fatal(err)
	}
}

// veil runs veil on the test's own host (no network needed).
func (c *Cluster) veil(args ...string) string {
	c.t.Helper()
	r := veiltest.Run(c.t, c.Veil, []string{"VEIL_HOME=" + c.Home}, "", args...)
	if r.Code != 0 {
		c.t.Fatalf("veil %s: exit %d\n%s%s", strings.Join(args, " "), r.Code, r.Stdout, r.Stderr)
	}
	return r.Stdout
}

// Measurement is a built instance's mrenclave.
func (c *Cluster) Measurement(inst string) string {
	c.t.Helper()
	return strings.TrimSpace(c.veil("print", "-C", inst, "mrenclave"))
}

// Allow releases the data key and the secret to inst's measurement, and
// party B releases its key to the same measurement at its key service.
func (c *Cluster) Allow(inst string) {
	c.t.Helper()
	c.Owner("", "kms", "policy", "create", "--name", "spark-"+filepath.Base(inst),
		"--from-instance", inst, "--key", c.KeyID, "--secret", c.SecretID, "--allow-sim")
	c.OwnerB("", "kms", "policy", "create", "--name", "spark-"+filepath.Base(inst),
		"--from-instance", inst, "--key", c.KeyBID, "--allow-sim")
}

// Role is one Spark role's veil run on a host.
type Role struct {
	*netnstest.Proc
	c    *Cluster
	Name string // the host's name, also the log's
	Log  string // its standard output and error
}

// Start runs `veil run -C inst /opt/spark/veil-entrypoint.sh ROLE IP
// ARGS...` on host; its output goes to Work/logs/HOST.log (HOST-2.log
// for the host's second role, and so on).
func (c *Cluster) Start(host, inst, role string, args ...string) *Role {
	c.t.Helper()
	return c.StartWith(host, inst, nil, role, args...)
}

// StartWith is Start with flags for veil run (such as --kms-tries 60).
func (c *Cluster) StartWith(host, inst string, flags []string, role string, args ...string) *Role {
	c.t.Helper()
	h := c.Net.Host(host)
	run := append(append([]string{"run", "-C", inst}, flags...), "/opt/spark/veil-entrypoint.sh", role, h.IP)
	cmd := h.Command(context.Background(), c.Veil, append(run, args...)...)
	cmd.Env = append(os.Environ(), "VEIL_HOME="+c.Home)
	name := host
	for i := 2; ; i++ {
		if _, err := os.Stat(filepath.Join(c.Work, "logs", name+".log")); err != nil {
			break
		}
		name = fmt.Sprintf("%s-%d", host, i)
	}
	f := c.logFile(name + ".log")
	cmd.Stdout, cmd.Stderr = f, f
	return &Role{Proc: h.Start(cmd), c: c, Name: host, Log: f.Name()}
}

// MasterURL is spark://MASTER_IP:7077.
func (c *Cluster) MasterURL() string {
	return "spark://" + c.Net.Host("master").IP + ":" + MasterPort
}

// Output is what the role has written so far.
func (r *Role) Output() string {
	b, _ := os.ReadFile(r.Log)
	return string(b)
}

// WaitLog waits up to timeout until the role's output matches re; it
// fails the test if the role ends first or the time is up.
func (r *Role) WaitLog(re string, timeout time.Duration) {
	r.c.t.Helper()
	if err := r.waitLog(regexp.MustCompile(re), timeout); err != nil {
		r.c.t.Fatal(err)
	}
}

func (r *Role) waitLog(re *regexp.Regexp, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if re.MatchString(r.Output()) {
			return nil
		}
		if !r.Running() {
			if re.MatchString(r.Output()) {
				return nil
			}
			return fmt.Errorf("%s ended (%v) before its output matched %q", r.Name, r.Err(), re)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: no output matching %q within %v", r.Name, re, timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Wait waits up to timeout for the role to end and returns its Wait error;
// the test fails if it does not end in time.
func (r *Role) Wait(timeout time.Duration) error {
	r.c.t.Helper()
	select {
	case <-r.Done():
		return r.Err()
	case <-time.After(timeout):
		r.c.t.Fatalf("%s did not end within %v", r.Name, timeout)
		return nil
	}
}

// Mounted lists the mounts, in any process's mount namespace, whose mount
// point contains s (such as a run directory).
func Mounted(s string) []string {
	var found []string
	seen := map[string]bool{}
	files, _ := filepath.Glob("/proc/[0-9]*/mountinfo")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			fields := strings.Fields(line)
			if len(fields) > 4 && strings.Contains(fields[4], s) && !seen[fields[4]] {
				seen[fields[4]] = true
				found = append(found, fields[4])
			}
		}
	}
	return found
}

// Plain runs a job file with spark-submit in local mode outside veil
// (Debian's python3, OpenJDK 17, the same pyspark) with args.
func Plain(ctx context.Context, pyspark, job string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(pyspark, "pyspark", "bin", "spark-submit"),
		append([]string{"--master", "local[2]", "--conf", "spark.ui.enabled=false",
			"--conf", "spark.driver.memory=512m", "--conf", "spark.sql.shuffle.partitions=4", job}, args...)...)
	cmd.Env = append(os.Environ(), "JAVA_HOME="+JavaHome, "PYSPARK_PYTHON=/usr/bin/python3",
		"PYTHONPATH="+pyspark, "SPARK_LOCAL_IP=127.0.0.1", "SPARK_HOME="+filepath.Join(pyspark, "pyspark"))
	cmd.WaitDelay = 10 * time.Second
	return cmd.CombinedOutput()
}
