package trustimage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/veil-tee/veil/internal/veiltest"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// hostPython returns the host's /usr/bin/python3.N, or skips.
func hostPython(t *testing.T) (path, tag string) {
	t.Helper()
	p, err := filepath.EvalSymlinks("/usr/bin/python3")
	if err != nil || !pythonRE.MatchString(p) {
		veiltest.Skip(t, "needs /usr/bin/python3.N")
	}
	out, err := exec.Command(p, "-c", "import sys; print(sys.implementation.cache_tag)").Output()
	if err != nil {
		veiltest.Skip(t, "python3 does not run")
	}
	return p, strings.TrimSpace(string(out))
}

// TestPythonBytecode: bom.python_bytecode puts a hash-based .pyc beside
// each module, made by the image's own interpreter, reproducibly; a module
// that does not compile is left to fail at run time, as without veil.
func TestPythonBytecode(t *testing.T) {
	needTool(t, "mksquashfs")
	py, tag := hostPython(t)
	files := map[string]string{
		"app/job.py":    "import helper\nprint(helper.X)\n",
		"app/helper.py": "X = {'a', 'b', 'c'}\n",
		"app/broken.py": "def (:\n",
	}
	extra := fmt.Sprintf(`, "bom": {"copy": [{"from": %q}], "python_bytecode": true}`, py)
	a, b := t.TempDir(), t.TempDir()
	newInstance(t, a, extra, files)
	newInstance(t, b, extra, files)
	ba, _ := build(t, a, nil)
	bb, _ := build(t, b, nil)
	if ba.Measurement != bb.Measurement {
		t.Fatal("two builds with bytecode differ: the bytecode is not reproducible")
	}
	r, err := ba.Open(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	sq, err := r.SquashFS()
	if err != nil {
		t.Fatal(err)
	}
	for _, mod := range []string{"job", "helper"} {
		p := "/app/__pycache__/" + mod + "." + tag + ".pyc"
		f, err := sq.OpenFile(p, os.O_RDONLY)
		if err != nil {
			t.Fatalf("%s is not in the image: %v", p, err)
		}
		pyc, _ := io.ReadAll(f)
		// PEP 552: flags 1 = hash-based, not checked against the source.
		if len(pyc) < 16 || !bytes.Equal(pyc[4:8], []byte{1, 0, 0, 0}) {
			t.Fatalf("%s is not an unchecked hash-based .pyc: % x", p, pyc[:min(16, len(pyc))])
		}
	}
	if _, err := sq.OpenFile("/app/__pycache__/broken."+tag+".pyc", os.O_RDONLY); err == nil {
		t.Fatal("a .pyc was made of a module that does not compile")
	}

	// Without an interpreter in the image: a clear error, nothing built.
	c := t.TempDir()
	newInstance(t, c, `, "bom": {"python_bytecode": true}`, files)
	_, _, err = Build(context.Background(), c, Options{SignKey: signKey(t)})
	if !errors.Is(err, ErrBytecode) || !strings.Contains(err.Error(), "no /usr/bin/python3.N") {
		t.Fatalf("bytecode without an interpreter: %v", err)
	}
	if _, err := os.Stat(filepath.Join(c, "build")); err == nil {
		t.Fatal("a failed build left a build directory")
	}
}
