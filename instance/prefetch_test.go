package instance

import (
	"github.com/veil-tee/veil/internal/veiltest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

func TestResolveInStaysInRoot(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "usr", "lib"), 0o755)
	os.WriteFile(filepath.Join(root, "usr", "lib", "libx.so"), []byte("x"), 0o644)
	os.Symlink("usr/lib", filepath.Join(root, "lib"))               // relative, usr-merge style
	os.Symlink("/usr/lib/libx.so", filepath.Join(root, "abs"))      // absolute: inside the image
	os.Symlink("../../../../etc/passwd", filepath.Join(root, "up")) // climbs past the root
	os.Symlink("loop2", filepath.Join(root, "loop1"))
	os.Symlink("loop1", filepath.Join(root, "loop2"))
	os.Symlink("/etc", filepath.Join(root, "hostetc"))

	for name, want := range map[string]string{
		"/lib/libx.so":           filepath.Join(root, "usr", "lib", "libx.so"),
		"/abs":                   filepath.Join(root, "usr", "lib", "libx.so"),
		"/../../usr/lib/libx.so": filepath.Join(root, "usr", "lib", "libx.so"),
	} {
		got, err := resolveIn(root, name)
		if err != nil || got != want {
			t.Errorf("resolveIn(%s) = %s, %v; want %s", name, got, err, want)
		}
	}
	// Links that lead out of the image resolve inside it, where nothing is.
	for _, name := range []string{"/up", "/hostetc/passwd", "/loop1"} {
		if got, err := resolveIn(root, name); err == nil {
			t.Errorf("resolveIn(%s) = %s, want an error", name, got)
		} else if strings.HasPrefix(got, "/etc") {
			t.Errorf("resolveIn(%s) left the root: %s", name, got)
		}
	}
}

// TestPrefetchFollowsLoader: the program, its ELF interpreter and the
// libraries it names are read, found the way the loader finds them.
func TestPrefetchFollowsLoader(t *testing.T) {
	root := t.TempDir()
	copyIn := func(src string) {
		dst := filepath.Join(root, src)
		os.MkdirAll(filepath.Dir(dst), 0o755)
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(dst, b, 0o755)
	}
	copyIn("/usr/bin/dash")
	out, err := exec.Command("ldd", "/usr/bin/dash").Output()
	if err != nil {
		veiltest.Skip(t, "needs ldd")
	}
	var libs []string
	for _, f := range strings.Fields(string(out)) {
		if strings.HasPrefix(f, "/") {
			real, _ := filepath.EvalSymlinks(f)
			copyIn(real)
			libs = append(libs, real)
		}
	}
	var stop atomic.Bool
	p := &prefetcher{root: root, stop: &stop, seen: map[string]bool{}}
	p.file("/usr/bin/dash", 0)
	if !p.seen[filepath.Join(root, "usr/bin/dash")] {
		t.Fatalf("program not read: %v", p.seen)
	}
	for _, l := range libs {
		if !p.seen[filepath.Join(root, l)] {
			t.Errorf("%s not read ahead (read: %v)", l, p.seen)
		}
	}
	if p.bytes == 0 {
		t.Fatal("nothing read")
	}
}
