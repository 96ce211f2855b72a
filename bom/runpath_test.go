package bom

import (
	"debug/elf"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/veil-tee/veil/config"
	"github.com/veil-tee/veil/internal/veiltest"
)

func TestExpandDST(t *testing.T) {
	for _, c := range []struct {
		in      string
		machine elf.Machine
		want    string
	}{
		{"$ORIGIN", elf.EM_X86_64, "/opt/app/lib"},
		{"${ORIGIN}/../server", elf.EM_X86_64, "/opt/app/server"},
		{"$ORIGIN/./x/", elf.EM_X86_64, "/opt/app/lib/x"},
		{"", elf.EM_X86_64, ""},
		{"/usr/$LIB/jni", elf.EM_X86_64, "/usr/lib/x86_64-linux-gnu/jni"},
		{"/usr/${LIB}/$PLATFORM", elf.EM_AARCH64, "/usr/lib/aarch64-linux-gnu/aarch64"},
		{"/plain/dir", elf.EM_X86_64, "/plain/dir"},
		{"$ORIGINAL/x", elf.EM_X86_64, ""},
		{"/x/$HOME", elf.EM_X86_64, ""},
		{"${ORIGIN", elf.EM_X86_64, ""},
	} {
		if got := expandDST(c.in, "/opt/app/lib", elf.ELFCLASS64, c.machine); got != c.want {
			t.Errorf("expandDST(%q, %v) = %q, want %q", c.in, c.machine, got, c.want)
		}
	}
}

// cc builds C source src with args in dir, skipping without a compiler.
func cc(t *testing.T, dir, src string, args ...string) {
	t.Helper()
	if _, err := exec.LookPath("cc"); err != nil {
		veiltest.Skip(t, "needs a C compiler (cc)")
	}
	f := filepath.Join(dir, "src.c")
	if err := os.WriteFile(f, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("cc", append([]string{f}, args...)...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cc %v: %v\n%s", args, err, out)
	}
}

// appTree builds prog (bin/) -> libmid.so (lib/, found through the
// program's RUNPATH $ORIGIN/../lib) -> libdep.so (dep/, found through
// libmid's RUNPATH runpath).
func appTree(t *testing.T, runpath string) string {
	root := t.TempDir()
	for _, d := range []string{"bin", "lib", "dep"} {
		os.Mkdir(filepath.Join(root, d), 0o755)
	}
	cc(t, root, "int dep(void){return 0;}", "-shared", "-fPIC", "-o", "dep/libdep.so")
	cc(t, root, "int dep(void); int mid(void){return dep();}", "-shared", "-fPIC", "-o", "lib/libmid.so", "-Ldep", "-ldep", "-Wl,--enable-new-dtags,-rpath,"+runpath)
	cc(t, root, "int mid(void); int main(void){return mid();}", "-o", "bin/prog", "-Llib", "-lmid", "-Wl,--enable-new-dtags,-rpath,$ORIGIN/../lib")
	return root
}

// TestRunpathOrigin: $ORIGIN in a program's and a library's DT_RUNPATH is
// the directory of each, and the plan holds what the loader opens; the
// program runs from the tree, so the layout is the loader's.
func TestRunpathOrigin(t *testing.T) {
	root := appTree(t, "$ORIGIN/../dep")
	prog := filepath.Join(root, "bin/prog")
	if out, err := exec.Command(prog).CombinedOutput(); err != nil {
		t.Fatalf("the loader does not run the tree itself: %v %s", err, out)
	}
	res, err := Plan(filepath.Join(t.TempDir(), "image"), config.BOM{Copy: []config.Copy{{From: prog}}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	mid, dep := filepath.Join(root, "lib/libmid.so"), filepath.Join(root, "dep/libdep.so")
	for _, p := range []string{prog, mid, dep} {
		if e := find(res.Entries, p); e == nil || e.Kind != File {
			t.Errorf("%s not planned", p)
		}
	}
	loads := res.Loads[prog]
	if !slices.Contains(loads, mid) || !slices.Contains(loads, dep) {
		t.Errorf("loads of the program %v lack %s or %s", loads, mid, dep)
	}
}

// TestRunpathOriginWrong: a RUNPATH that does not lead to the library
// fails the plan instead of building an image the loader cannot run.
func TestRunpathOriginWrong(t *testing.T) {
	root := appTree(t, "$ORIGIN/../dep")
	// Move libdep.so out of where libmid's $ORIGIN/../dep points.
	os.Mkdir(filepath.Join(root, "elsewhere"), 0o755)
	if err := os.Rename(filepath.Join(root, "dep/libdep.so"), filepath.Join(root, "elsewhere/libdep.so")); err != nil {
		t.Fatal(err)
	}
	prog := filepath.Join(root, "bin/prog")
	if err := exec.Command(prog).Run(); err == nil {
		t.Fatal("the loader runs the program without libdep.so where RUNPATH says")
	}
	_, err := Plan(filepath.Join(t.TempDir(), "image"), config.BOM{Copy: []config.Copy{{From: prog}}}, Options{})
	if !errors.Is(err, ErrUnresolved) {
		t.Fatalf("plan with libdep.so out of RUNPATH: %v, want ErrUnresolved", err)
	}
}

// javaLayout builds the JVM's layout: lib/server/libcore.so (soname
// libcore.so) and lib/libuser.so that needs "libcore.so" with only
// $ORIGIN (lib/) in its RUNPATH; a launcher loads the core by path first.
func javaLayout(t *testing.T) string {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "lib/server"), 0o755)
	cc(t, root, "int core(void){return 0;}", "-shared", "-fPIC", "-o", "lib/server/libcore.so", "-Wl,-soname,libcore.so")
	cc(t, root, "int core(void); int user(void){return core();}", "-shared", "-fPIC", "-o", "lib/libuser.so", "-Llib/server", "-lcore", "-Wl,--enable-new-dtags,-rpath,$ORIGIN")
	return root
}

// TestShippedSoname: a library whose dependency is another library of the
// copied tree, outside its search path but with that soname, resolves to
// it (the JVM's libjava.so -> lib/server/libjvm.so).
func TestShippedSoname(t *testing.T) {
	root := javaLayout(t)
	lib := filepath.Join(root, "lib")
	res, err := Plan(filepath.Join(t.TempDir(), "image"), config.BOM{Copy: []config.Copy{{From: lib}}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	user, core := filepath.Join(lib, "libuser.so"), filepath.Join(lib, "server/libcore.so")
	if loads := res.Loads[user]; !slices.Contains(loads, core) {
		t.Fatalf("loads of libuser.so %v lack %s", loads, core)
	}
}

// TestShippedSonameAbsent: without the library in the image, the same
// dependency is an error.
func TestShippedSonameAbsent(t *testing.T) {
	root := javaLayout(t)
	user := filepath.Join(root, "lib/libuser.so")
	_, err := Plan(filepath.Join(t.TempDir(), "image"), config.BOM{Copy: []config.Copy{{From: user}}}, Options{})
	if !errors.Is(err, ErrUnresolved) {
		t.Fatalf("plan of libuser.so alone: %v, want ErrUnresolved", err)
	}
}

const jre17 = "/usr/lib/jvm/java-17-openjdk-amd64"

// TestPlanOpenJDK17: the shipped snippet plans Debian's JRE: every library
// of lib/ resolves (libjvm.so in lib/server), and the configuration the
// JRE's symbolic links point to in /etc is in the image.
func TestPlanOpenJDK17(t *testing.T) {
	if _, err := os.Stat(jre17 + "/lib/server/libjvm.so"); err != nil {
		veiltest.Skip(t, "Debian's openjdk-17-jre-headless is not installed")
	}
	res, err := Plan(filepath.Join(t.TempDir(), "image"), config.BOM{Include: []string{"debian/openjdk-17"}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{
		"/usr/bin/java", jre17 + "/bin/java", jre17 + "/lib/modules", jre17 + "/lib/server/libjvm.so",
		jre17 + "/lib/jvm.cfg", "/etc/java-17-openjdk/jvm-amd64.cfg", "/etc/java-17-openjdk/security/java.security",
		jre17 + "/lib/security/cacerts", "/usr/lib/x86_64-linux-gnu/libstdc++.so.6",
	} {
		if find(res.Entries, p) == nil {
			t.Errorf("%s not planned", p)
		}
	}
	if find(res.Entries, jre17+"/lib/ct.sym") != nil || find(res.Entries, jre17+"/lib/libawt_xawt.so") != nil {
		t.Error("JDK or GUI files planned")
	}
	if loads := res.Loads[jre17+"/lib/libattach.so"]; !slices.Contains(loads, jre17+"/lib/server/libjvm.so") {
		t.Errorf("loads of libattach.so %v lack libjvm.so", loads)
	}
	if loads := res.Loads[jre17+"/bin/java"]; !slices.Contains(loads, jre17+"/lib/libjli.so") {
		t.Errorf("loads of java %v lack libjli.so (RPATH $ORIGIN/../lib)", loads)
	}
}

// wheelTree builds what pip install --target leaves for a manylinux wheel:
// pkg/_ext.so needing libhelper.so, bundled in pkg.libs/ and found
// through RUNPATH $ORIGIN/../pkg.libs.
func wheelTree(t *testing.T) string {
	site := t.TempDir()
	for _, d := range []string{"pkg", "pkg.libs", "pkg-1.0.dist-info", "pkg/__pycache__"} {
		os.Mkdir(filepath.Join(site, d), 0o755)
	}
	os.WriteFile(filepath.Join(site, "pkg/__init__.py"), []byte("from . import _ext\n"), 0o644)
	os.WriteFile(filepath.Join(site, "pkg/__pycache__/__init__.cpython-311.pyc"), []byte("x"), 0o644)
	os.WriteFile(filepath.Join(site, "pkg-1.0.dist-info/METADATA"), []byte("Name: pkg\nVersion: 1.0\n"), 0o644)
	cc(t, site, "int helper(void){return 0;}", "-shared", "-fPIC", "-o", "pkg.libs/libhelper.so")
	cc(t, site, "int helper(void); int ext(void){return helper();}", "-shared", "-fPIC", "-o", "pkg/_ext.so", "-Lpkg.libs", "-lhelper", "-Wl,--enable-new-dtags,-rpath,$ORIGIN/../pkg.libs")
	return site
}

// TestPythonPackages: a pip target directory lands at the default path,
// without bytecode, and its extension's bundled library is resolved where
// the copy put it, not at its host path.
func TestPythonPackages(t *testing.T) {
	site := wheelTree(t)
	res, err := Plan(filepath.Join(t.TempDir(), "image"), config.BOM{PythonPackages: []config.PythonPackages{{From: site}}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	const to = config.DefaultPythonPackagesDir
	for _, p := range []string{to + "/pkg/__init__.py", to + "/pkg/_ext.so", to + "/pkg.libs/libhelper.so", to + "/pkg-1.0.dist-info/METADATA"} {
		if e := find(res.Entries, p); e == nil || e.Kind != File {
			t.Errorf("%s not planned", p)
		}
	}
	if find(res.Entries, to+"/pkg/__pycache__") != nil {
		t.Error("bytecode cache planned")
	}
	for _, e := range res.Entries {
		if strings.HasPrefix(e.Path, site) {
			t.Errorf("host path %s planned", e.Path)
		}
	}
	if loads := res.Loads[to+"/pkg/_ext.so"]; !slices.Contains(loads, to+"/pkg.libs/libhelper.so") {
		t.Errorf("loads of _ext.so %v lack the image path of libhelper.so", loads)
	}
}

func TestPythonPackagesNotPipTarget(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "mod.py"), nil, 0o644)
	_, err := Plan(filepath.Join(t.TempDir(), "image"), config.BOM{PythonPackages: []config.PythonPackages{{From: dir, To: "/opt/py"}}}, Options{})
	if !errors.Is(err, ErrNotPipTarget) {
		t.Fatalf("plan of a directory pip did not fill: %v, want ErrNotPipTarget", err)
	}
	_, err = Plan(filepath.Join(t.TempDir(), "image"), config.BOM{PythonPackages: []config.PythonPackages{{From: filepath.Join(dir, "absent")}}}, Options{})
	if !errors.Is(err, ErrMissing) {
		t.Fatalf("plan of a missing directory: %v, want ErrMissing", err)
	}
}

// FuzzExpandDST: no panic; what comes out is "" or a clean path, absolute
// when the entry starts with "/" or $ORIGIN.
func FuzzExpandDST(f *testing.F) {
	for _, s := range []string{"$ORIGIN", "${ORIGIN}/../lib", "/usr/$LIB/$PLATFORM", "${", "$", "$$ORIGIN", "/a/${LIB}x", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, dir string) {
		got := expandDST(dir, "/opt/app/lib", elf.ELFCLASS64, elf.EM_X86_64)
		if got == "" {
			return
		}
		if filepath.Clean(got) != got {
			t.Fatalf("expandDST(%q) = %q, not clean", dir, got)
		}
		if (strings.HasPrefix(dir, "/") || strings.HasPrefix(dir, "$ORIGIN") || strings.HasPrefix(dir, "${ORIGIN}")) && !strings.HasPrefix(got, "/") {
			t.Fatalf("expandDST(%q) = %q, not absolute", dir, got)
		}
	})
}
