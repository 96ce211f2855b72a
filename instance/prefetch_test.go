package instance

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/veil-tee/veil/bom"
	"github.com/veil-tee/veil/config"
	"github.com/veil-tee/veil/internal/veiltest"
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

// layOut creates the planned entries under root (the image as the mount
// shows it).
func layOut(t *testing.T, root string, entries []bom.Entry) {
	t.Helper()
	for _, e := range entries {
		dst := filepath.Join(root, e.Path)
		switch e.Kind {
		case bom.Dir:
			if err := os.MkdirAll(dst, 0o755); err != nil {
				t.Fatal(err)
			}
		case bom.Symlink:
			if err := os.Symlink(e.Link, dst); err != nil {
				t.Fatal(err)
			}
		case bom.File:
			b, err := os.ReadFile(e.Source)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(dst, b, 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestPrefetchFollowsLoader: the program, its ELF interpreter and the
// libraries it needs, as the build recorded them, are read ahead — every
// file the host's loader (ldd) names.
func TestPrefetchFollowsLoader(t *testing.T) {
	const prog = "/usr/bin/dash"
	out, err := exec.Command("ldd", prog).Output()
	if err != nil {
		veiltest.Skip(t, "needs ldd and %s: %v", prog, err)
	}
	res, err := bom.Plan(filepath.Join(t.TempDir(), "image"), config.BOM{Copy: []config.Copy{{From: prog}}}, bom.Options{})
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	layOut(t, root, res.Entries)
	var stop atomic.Bool
	p := &prefetcher{root: root, stop: &stop, seen: map[string]bool{}}
	p.run(prog, res.Loads)
	if !p.seen[filepath.Join(root, prog)] {
		t.Fatalf("program not read: %v", p.seen)
	}
	for _, f := range strings.Fields(string(out)) {
		if !strings.HasPrefix(f, "/") {
			continue
		}
		real, _ := filepath.EvalSymlinks(f)
		if !p.seen[filepath.Join(root, real)] {
			t.Errorf("%s not read ahead (read: %v)", real, p.seen)
		}
	}
	if p.bytes == 0 {
		t.Fatal("nothing read")
	}
}

// TestPrefetchReadsTheRecord: prefetch follows the recorded closure, found
// also through a symbolic link to the program, and parses no ELF: a
// program the build recorded nothing for is read alone.
func TestPrefetchReadsTheRecord(t *testing.T) {
	root := t.TempDir()
	for _, f := range []string{"app/run", "app/lib/a.so", "app/lib/b.so", "app/other"} {
		os.MkdirAll(filepath.Join(root, filepath.Dir(f)), 0o755)
		if err := os.WriteFile(filepath.Join(root, f), []byte("not an ELF file: "+f), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.Symlink("run", filepath.Join(root, "app/start"))
	loads := map[string][]string{"/app/run": {"/app/lib/a.so", "/app/lib/b.so", "/../../../etc/passwd"}}
	for _, prog := range []string{"/app/run", "/app/start"} {
		var stop atomic.Bool
		p := &prefetcher{root: root, stop: &stop, seen: map[string]bool{}}
		p.run(prog, loads)
		for _, f := range []string{"app/run", "app/lib/a.so", "app/lib/b.so"} {
			if !p.seen[filepath.Join(root, f)] {
				t.Errorf("%s: %s not read (read: %v)", prog, f, p.seen)
			}
		}
		if len(p.seen) != 3 {
			t.Errorf("%s: read %v, want the program and its two recorded loads", prog, p.seen)
		}
	}
	// A dynamic ELF program without a record: only the program.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "app/other"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	p := &prefetcher{root: root, stop: &stop, seen: map[string]bool{}}
	p.run("/app/other", loads)
	if len(p.seen) != 1 || !p.seen[filepath.Join(root, "app/other")] {
		t.Fatalf("unrecorded program: read %v, want only it", p.seen)
	}
}
