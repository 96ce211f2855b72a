package jvmtest

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/veil-tee/veil/internal/veiltest"
)

var veil string

func TestMain(m *testing.M) { veiltest.Main(m, &veil) }

const jre = "/usr/lib/jvm/java-17-openjdk-amd64"

func needJVM(t *testing.T) {
	t.Helper()
	veiltest.NeedFUSE(t)
	veiltest.NeedCommand(t, "mksquashfs")
	if _, err := os.Stat(jre + "/lib/server/libjvm.so"); err != nil {
		veiltest.Skip(t, "needs the Debian package openjdk-17-jre-headless")
	}
}

// env is one test's veil environment (its own VEIL_HOME).
type env struct {
	t    *testing.T
	home string
}

func newEnv(t *testing.T) *env {
	e := &env{t: t, home: t.TempDir()}
	e.must("sim", "init")
	return e
}

func (e *env) run(args ...string) veiltest.Result {
	e.t.Helper()
	return veiltest.Run(e.t, veil, []string{"VEIL_HOME=" + e.home}, "", args...)
}

func (e *env) must(args ...string) veiltest.Result {
	e.t.Helper()
	r := e.run(args...)
	if r.Code != 0 {
		e.t.Fatalf("veil %s: exit %d\n%s%s", strings.Join(args, " "), r.Code, r.Stdout, r.Stderr)
	}
	return r
}

// instance creates an instance with cfg's fields over the defaults of
// veil new, the files of image/ (path -> content), builds it and returns
// its directory and how long the build took.
func (e *env) instance(cfg map[string]any, image map[string]string) (string, time.Duration) {
	e.t.Helper()
	dir := filepath.Join(e.t.TempDir(), "app")
	e.must("new", dir)
	b, err := os.ReadFile(filepath.Join(dir, "veil.json"))
	if err != nil {
		e.t.Fatal(err)
	}
	var c map[string]any
	if err := json.Unmarshal(b, &c); err != nil {
		e.t.Fatal(err)
	}
	for k, v := range cfg {
		c[k] = v
	}
	b, _ = json.MarshalIndent(c, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, "veil.json"), b, 0o644); err != nil {
		e.t.Fatal(err)
	}
	for p, content := range image {
		full := filepath.Join(dir, "image", p)
		os.MkdirAll(filepath.Dir(full), 0o755)
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			e.t.Fatal(err)
		}
	}
	start := time.Now()
	r := e.must("build", "-C", dir)
	took := time.Since(start)
	e.t.Logf("%s (wall %v)", lastLine(r.Stderr), took.Round(time.Millisecond))
	e.t.Cleanup(func() { noMounts(e.t, dir) })
	return dir, took
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// noMounts fails if a mount under dir is left once the test has run.
func noMounts(t *testing.T, dir string) {
	t.Helper()
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil && bytes.Contains(b, []byte(dir)) {
		t.Errorf("mounts left under %s", dir)
	}
}

const sumJava = `public class Sum {
    public static void main(String[] args) throws Exception {
        long s = java.util.stream.LongStream.range(0, 1000).parallel().sum();
        java.nio.file.Path p = java.nio.file.Files.createTempFile("sum", ".txt");
        java.nio.file.Files.writeString(p, Long.toString(s));
        System.out.println("sum=" + java.nio.file.Files.readString(p));
        System.out.println("java.home=" + System.getProperty("java.home"));
    }
}
`

// TestJavaInVeil builds an instance from debian/openjdk-17 alone and runs
// the JVM in the sandbox: java -version, its module list, and a Java
// program launched from source (compiled by the image's own jdk.compiler
// module, run on a parallel stream, writing to the /tmp tmpfs).
func TestJavaInVeil(t *testing.T) {
	needJVM(t)
	e := newEnv(t)
	app, _ := e.instance(map[string]any{
		"entrypoints": []string{"/usr/bin/java"},
		"env":         map[string]any{"default": map[string]string{"PATH": "/usr/bin", "LANG": "C.UTF-8", "JAVA_TOOL_OPTIONS": "-Xmx256m"}, "passthrough": []string{}},
		"resources":   map[string]any{"memory": "2G", "max_processes": 256},
		"bom":         map[string]any{"include": []string{"debian/openjdk-17"}},
	}, map[string]string{"app/Sum.java": sumJava})
	size(t, app)

	r := e.must("run", "-C", app, "/usr/bin/java", "-version")
	if !regexp.MustCompile(`openjdk version "17\.`).MatchString(r.Stderr) || !strings.Contains(r.Stderr, "Server VM") {
		t.Fatalf("java -version:\n%s", r.Stderr)
	}
	r = e.must("run", "-C", app, "/usr/bin/java", "--list-modules")
	for _, m := range []string{"java.base@17", "java.sql@17", "jdk.compiler@17"} {
		if !strings.Contains(r.Stdout, m) {
			t.Errorf("java --list-modules lacks %s:\n%s", m, r.Stdout)
		}
	}
	start := time.Now()
	r = e.must("run", "-C", app, "/usr/bin/java", "/app/Sum.java")
	t.Logf("java /app/Sum.java in veil: %v", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(r.Stdout, "sum=499500\n") || !strings.Contains(r.Stdout, "java.home="+jre+"\n") {
		t.Fatalf("java /app/Sum.java:\n%s%s", r.Stdout, r.Stderr)
	}
	// Only the entry point runs: the JRE's keytool is in the image but
	// not an entry point.
	if r := e.run("run", "-C", app, "/usr/bin/keytool", "-help"); r.Code == 0 || !strings.Contains(r.Stderr, "not an entrypoint") {
		t.Fatalf("keytool, not an entry point: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
}

// size logs the image's size.
func size(t *testing.T, app string) {
	t.Helper()
	fi, err := os.Stat(filepath.Join(app, "build", "rootfs.img"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("image: %.1f MiB", float64(fi.Size())/(1<<20))
}
