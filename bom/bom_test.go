package bom

import (
	"bytes"
	"encoding/binary"
	"errors"
	"github.com/veil-tee/veil/internal/veiltest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/veil-tee/veil/config"
)

func find(entries []Entry, p string) *Entry {
	for i := range entries {
		if entries[i].Path == p {
			return &entries[i]
		}
	}
	return nil
}

func TestPlanImageDir(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "app/sub"), 0o750)
	os.WriteFile(filepath.Join(dir, "app/job.py"), []byte("x"), 0o644)
	os.Symlink("job.py", filepath.Join(dir, "app/link"))
	os.Symlink("/usr/bin/python3", filepath.Join(dir, "app/abs"))
	os.Symlink("../../app/job.py", filepath.Join(dir, "app/sub/up"))
	res, err := Plan(dir, config.BOM{}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ents := res.Entries
	if ents[0].Path != "/" {
		t.Fatalf("first entry %q", ents[0].Path)
	}
	for i := 1; i < len(ents); i++ {
		if ents[i-1].Path >= ents[i].Path {
			t.Fatalf("not sorted: %q before %q", ents[i-1].Path, ents[i].Path)
		}
	}
	if e := find(ents, "/app/sub"); e == nil || e.Kind != Dir || e.Mode != 0o750 {
		t.Fatalf("/app/sub: %+v", e)
	}
	if e := find(ents, "/app/job.py"); e == nil || e.Kind != File || e.Size != 1 || e.Inode == 0 {
		t.Fatalf("/app/job.py: %+v", e)
	}
	if e := find(ents, "/app/link"); e == nil || e.Kind != Symlink || e.Link != "job.py" {
		t.Fatalf("/app/link: %+v", e)
	}
}

func TestPlanRejects(t *testing.T) {
	cases := map[string]struct {
		setup func(dir string) config.BOM
		want  error
	}{
		"escaping symlink": {func(dir string) config.BOM {
			os.MkdirAll(filepath.Join(dir, "image/app"), 0o755)
			os.Symlink("../../etc/passwd", filepath.Join(dir, "image/app/x"))
			return config.BOM{}
		}, ErrEscape},
		"escaping BOM symlink": {func(dir string) config.BOM {
			return config.BOM{Symlinks: []config.Symlink{{Link: "/a", Target: "../x"}}}
		}, ErrEscape},
		"missing BOM file": {func(dir string) config.BOM {
			return config.BOM{Copy: []config.Copy{{From: "/nonexistent/veil"}}}
		}, ErrMissing},
		"conflict": {func(dir string) config.BOM {
			os.MkdirAll(filepath.Join(dir, "image/usr/bin"), 0o755)
			os.WriteFile(filepath.Join(dir, "image/usr/bin/python3"), nil, 0o644)
			return config.BOM{Copy: []config.Copy{{From: "/usr/bin/python3"}}}
		}, ErrConflict},
		"fifo": {func(dir string) config.BOM {
			os.MkdirAll(filepath.Join(dir, "image"), 0o755)
			if err := mkfifo(filepath.Join(dir, "image/fifo")); err != nil {
				panic(err)
			}
			return config.BOM{}
		}, ErrUnsupported},
		"unknown snippet": {func(dir string) config.BOM {
			return config.BOM{Include: []string{"debian/nothing"}}
		}, ErrUnknownInclude},
		"unresolvable library": {func(dir string) config.BOM {
			return config.BOM{Copy: []config.Copy{{From: brokenELF(dir), To: "/app/broken"}}}
		}, ErrUnresolved},
	}
	for name, tc := range cases {
		dir := t.TempDir()
		b := tc.setup(dir)
		_, err := Plan(filepath.Join(dir, "image"), b, Options{})
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: got %v, want %v", name, err, tc.want)
		}
	}
}

// brokenELF copies /bin/true with its libc dependency renamed to a library
// that does not exist.
func brokenELF(dir string) string {
	data, err := os.ReadFile("/bin/true")
	if err != nil {
		panic(err)
	}
	data = bytes.ReplaceAll(data, []byte("libc.so.6\x00"), []byte("libq.so.6\x00"))
	p := filepath.Join(dir, "broken")
	os.WriteFile(p, data, 0o755)
	return p
}

func TestLinkEscapes(t *testing.T) {
	cases := []struct {
		link, target string
		escapes      bool
	}{
		{"/a", "b", false},
		{"/a", "../b", true},
		{"/a/b", "../c", false},
		{"/a/b", "../../c", true},
		{"/a/b/c", "../../x/../y", false},
		{"/a/b", "./.././../c", true},
		{"/a", "/etc/passwd", false},
		{"/lib", "usr/lib", false},
	}
	for _, c := range cases {
		if got := linkEscapes(c.link, c.target); got != c.escapes {
			t.Errorf("linkEscapes(%q, %q) = %v", c.link, c.target, got)
		}
	}
}

// TestPlanPython3 copies /usr/bin/python3 and checks that its symlink
// chain, loader and libraries are planned at their host paths.
func TestPlanPython3(t *testing.T) {
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		veiltest.Skip(t, "no python3")
	}
	res, err := Plan(filepath.Join(t.TempDir(), "image"), config.BOM{Copy: []config.Copy{{From: "/usr/bin/python3"}}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ents := res.Entries
	real, _ := filepath.EvalSymlinks("/usr/bin/python3")
	if e := find(ents, "/usr/bin/python3"); e == nil || e.Kind != Symlink {
		t.Fatalf("/usr/bin/python3: %+v", e)
	}
	if e := find(ents, real); e == nil || e.Kind != File {
		t.Fatalf("%s: %+v", real, e)
	}
	var libc, loader bool
	for _, e := range ents {
		if e.Kind == File && strings.HasPrefix(filepath.Base(e.Path), "libc.so") {
			libc = true
		}
		if e.Kind == File && strings.HasPrefix(filepath.Base(e.Path), "ld-linux") {
			loader = true
		}
	}
	if !libc || !loader {
		t.Fatalf("libc planned %v, loader planned %v", libc, loader)
	}
	// Without ELF resolution only the chain itself.
	off := false
	res2, err := Plan(filepath.Join(t.TempDir(), "image"), config.BOM{Copy: []config.Copy{{From: "/usr/bin/python3"}}, ResolveELF: &off}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ents2 := res2.Entries
	if len(ents2) >= len(ents) {
		t.Fatalf("resolve_elf=false planned %d entries, with it %d", len(ents2), len(ents))
	}
	if res2.Loads != nil {
		t.Fatalf("resolve_elf=false recorded loads: %v", res2.Loads)
	}
}

// TestLoadsMatchLoader: the recorded closure of a program is what the
// host's dynamic loader opens for it (ldd), interpreter first, and every
// path in it is planned in the image.
func TestLoadsMatchLoader(t *testing.T) {
	const prog = "/usr/bin/dash"
	out, err := exec.Command("ldd", prog).Output()
	if err != nil {
		veiltest.Skip(t, "needs ldd and %s: %v", prog, err)
	}
	res, err := Plan(filepath.Join(t.TempDir(), "image"), config.BOM{Copy: []config.Copy{{From: prog}}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	loads := res.Loads[prog]
	if len(loads) == 0 {
		t.Fatalf("no loads recorded for %s: %v", prog, res.Loads)
	}
	interp := ""
	for _, f := range strings.Fields(string(out)) {
		if strings.HasPrefix(f, "/") && strings.Contains(f, "ld-linux") {
			interp = f
		}
	}
	if interp == "" || loads[0] != interp {
		t.Fatalf("loads %v do not start with the interpreter %q", loads, interp)
	}
	realOf := func(p string) string { r, _ := filepath.EvalSymlinks(p); return r }
	have := map[string]bool{}
	for _, l := range loads {
		// Paths go through the host's symbolic links, which the image
		// reproduces: the file they lead to must be planned.
		if e := find(res.Entries, realOf(l)); e == nil || e.Kind != File {
			t.Errorf("%s (%s) is recorded as loaded but not planned", l, realOf(l))
		}
		have[realOf(l)] = true
	}
	for _, f := range strings.Fields(string(out)) {
		if strings.HasPrefix(f, "/") && !have[realOf(f)] {
			t.Errorf("ldd loads %s; recorded loads %v", f, loads)
		}
	}
}

func TestPlanRenameAndExclude(t *testing.T) {
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "pkg/__pycache__"), 0o755)
	os.WriteFile(filepath.Join(src, "pkg/a.py"), []byte("a"), 0o644)
	os.WriteFile(filepath.Join(src, "pkg/a.pyc"), []byte("a"), 0o644)
	os.WriteFile(filepath.Join(src, "pkg/__pycache__/a.pyc"), []byte("a"), 0o644)
	b := config.BOM{Copy: []config.Copy{{From: filepath.Join(src, "pkg"), To: "/opt/pkg", Exclude: []string{"*.pyc"}}}, Exclude: []string{"__pycache__"}}
	res, err := Plan(filepath.Join(src, "image"), b, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ents := res.Entries
	if find(ents, "/opt/pkg/a.py") == nil || find(ents, "/opt/pkg/a.pyc") != nil || find(ents, "/opt/pkg/__pycache__") != nil {
		t.Fatalf("rename/exclude wrong: %v", ents)
	}
}

func TestSnippetsParse(t *testing.T) {
	names := Snippets()
	if len(names) < 4 {
		t.Fatalf("snippets: %v", names)
	}
	for _, n := range names {
		if _, err := Snippet(n); err != nil {
			t.Errorf("%s: %v", n, err)
		}
	}
}

func TestParseLDCacheHost(t *testing.T) {
	data, err := os.ReadFile("/etc/ld.so.cache")
	if err != nil {
		veiltest.Skip(t, "no /etc/ld.so.cache")
	}
	ents, err := ParseLDCache(data)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range ents {
		if e.Name == "libc.so.6" && strings.HasPrefix(e.Path, "/") {
			found = true
		}
	}
	if !found {
		t.Fatalf("libc.so.6 not in %d cache entries", len(ents))
	}
}

// buildCache makes a new-format cache with the given name -> path pairs.
func buildLDCache(pairs [][2]string) []byte {
	var strs bytes.Buffer
	hdr := 48 + 24*len(pairs)
	var tab bytes.Buffer
	for _, p := range pairs {
		k := hdr + strs.Len()
		strs.WriteString(p[0] + "\x00")
		v := hdr + strs.Len()
		strs.WriteString(p[1] + "\x00")
		for _, x := range []any{int32(0x303), uint32(k), uint32(v), uint32(0), uint64(0)} {
			binary.Write(&tab, binary.LittleEndian, x)
		}
	}
	var out bytes.Buffer
	out.WriteString("glibc-ld.so.cache1.1")
	binary.Write(&out, binary.LittleEndian, uint32(len(pairs)))
	binary.Write(&out, binary.LittleEndian, uint32(strs.Len()))
	out.Write(make([]byte, 20))
	out.Write(tab.Bytes())
	out.Write(strs.Bytes())
	return out.Bytes()
}

func TestParseLDCacheSynthetic(t *testing.T) {
	data := buildLDCache([][2]string{{"libx.so.1", "/opt/lib/libx.so.1"}, {"liby.so", "/y"}})
	ents, err := ParseLDCache(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 2 || ents[0].Name != "libx.so.1" || ents[0].Path != "/opt/lib/libx.so.1" || ents[1].Path != "/y" || ents[0].Flags != 0x303 {
		t.Fatalf("parsed %+v", ents)
	}
	// With an old-format table in front.
	old := append([]byte("ld.so-1.7.0\x00"), 0, 0, 0, 0) // zero old entries
	if ents, err := ParseLDCache(append(old, data...)); err != nil || len(ents) != 2 {
		t.Fatalf("old+new: %v %v", ents, err)
	}
	for _, bad := range [][]byte{nil, []byte("glibc-ld.so.cache1.1"), data[:60], append([]byte("junk"), data...)} {
		if _, err := ParseLDCache(bad); !errors.Is(err, ErrBadLDCache) {
			t.Errorf("bad cache accepted: %v", err)
		}
	}
}

func FuzzParseLDCache(f *testing.F) {
	f.Add(buildLDCache([][2]string{{"libx.so.1", "/opt/lib/libx.so.1"}}))
	if data, err := os.ReadFile("/etc/ld.so.cache"); err == nil && len(data) < 1<<20 {
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ents, err := ParseLDCache(data)
		if err != nil && len(ents) != 0 {
			t.Fatal("entries returned with an error")
		}
	})
}

func FuzzParseSnippet(f *testing.F) {
	for _, n := range Snippets() {
		data, _ := snippetFS.ReadFile("snippets/" + n + ".json")
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ParseSnippet(data)
	})
}

// TestOriginIsPathFound: Debian's openblas libblas.so.3 has RUNPATH
// $ORIGIN and is reached through /usr/lib/x86_64-linux-gnu/libblas.so.3 ->
// /etc/alternatives -> openblas-pthread/. The loader expands $ORIGIN to the
// directory it found the library in (symlinks unresolved), so its
// libopenblas.so.0 must be planned in /usr/lib/x86_64-linux-gnu too.
func TestOriginIsPathFound(t *testing.T) {
	const blas = "/usr/lib/x86_64-linux-gnu/libblas.so.3"
	real, err := filepath.EvalSymlinks(blas)
	if err != nil || !strings.Contains(real, "openblas") {
		veiltest.Skip(t, "Debian openblas not installed")
	}
	res, err := Plan(filepath.Join(t.TempDir(), "image"), config.BOM{Copy: []config.Copy{{From: blas}}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ents := res.Entries
	if find(ents, "/usr/lib/x86_64-linux-gnu/libopenblas.so.0") == nil {
		t.Fatal("libopenblas.so.0 not planned where $ORIGIN points")
	}
}
