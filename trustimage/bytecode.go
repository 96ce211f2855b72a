package trustimage

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"

	"github.com/veil-tee/veil/bom"
)

// ErrBytecode: compiling Python bytecode for the image failed.
var ErrBytecode = errors.New("compiling Python bytecode")

// pythonRE matches the interpreter an image's Python modules belong to.
var pythonRE = regexp.MustCompile(`^/usr/(local/)?bin/python3\.[0-9]+$`)

// compileScript reads "HOST-SOURCE\tIMAGE-PATH" lines and writes, under
// the directory argv[1], the hash-based .pyc of each source at the path
// the interpreter will look for it in the image; it prints the image path
// of every .pyc written and "skip PATH: REASON" for sources that do not
// compile (Debian ships a few files of other Python versions). An
// unchanged .pyc is not rewritten, so the build cache sees it unchanged.
const compileScript = `
import importlib.util, marshal, os, sys
out = sys.argv[1]
for line in sys.stdin:
    src, dest = line.rstrip("\n").split("\t")
    try:
        with open(src, "rb") as f:
            data = f.read()
        code = compile(data, dest, "exec", dont_inherit=True)
    except Exception as e:
        print("skip %s: %s" % (dest, type(e).__name__), flush=True)
        continue
    pyc = importlib.util.cache_from_source(dest)
    blob = bytearray(importlib.util.MAGIC_NUMBER)
    blob += (1).to_bytes(4, "little")  # hash-based, not checked against the source
    blob += importlib.util.source_hash(data)
    blob += marshal.dumps(code)
    target = out + pyc
    try:
        with open(target, "rb") as f:
            if f.read() == blob:
                print(pyc, flush=True)
                continue
    except OSError:
        pass
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = target + ".tmp"
    with open(tmp, "wb") as f:
        f.write(blob)
    os.replace(tmp, target)
    print(pyc, flush=True)
`

// addBytecode compiles the image's .py files with the image's interpreter
// into cacheDir (kept between builds) and adds the .pyc files, and their
// __pycache__ directories, to entries. .pyc files the plan already has at
// those paths (the host's, checked against timestamps the image does not
// keep) are replaced. The output depends only on the sources and the
// interpreter (hash seed fixed), so the image stays reproducible.
func addBytecode(ctx context.Context, entries []bom.Entry, cacheDir string) ([]bom.Entry, int, error) {
	interp := ""
	var sources []bom.Entry
	for _, e := range entries {
		if e.Kind != bom.File {
			continue
		}
		if pythonRE.MatchString(e.Path) && interp == "" {
			interp = e.Source
		}
		if strings.HasSuffix(e.Path, ".py") {
			sources = append(sources, e)
		}
	}
	if interp == "" {
		return nil, 0, fmt.Errorf("%w: bom.python_bytecode is set but the image has no /usr/bin/python3.N", ErrBytecode)
	}
	if len(sources) == 0 {
		return entries, 0, nil
	}
	if err := os.MkdirAll(cacheDir, 0o700); err != nil {
		return nil, 0, fmt.Errorf("%w: %v", ErrBytecode, err)
	}
	var in bytes.Buffer
	for _, e := range sources {
		if strings.ContainsAny(e.Source+e.Path, "\t\n") {
			continue
		}
		fmt.Fprintf(&in, "%s\t%s\n", e.Source, e.Path)
	}
	cmd := exec.CommandContext(ctx, interp, "-I", "-S", "-c", compileScript, cacheDir)
	cmd.Env = []string{"PYTHONHASHSEED=0", "LC_ALL=C.UTF-8", "PATH=/usr/bin:/bin"}
	cmd.Stdin = &in
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, 0, fmt.Errorf("%w with %s: %v: %s", ErrBytecode, interp, err, lastLine(stderr.String()))
	}
	have := make(map[string]int, len(entries))
	for i, e := range entries {
		have[e.Path] = i
	}
	added := 0
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		pyc := sc.Text()
		if strings.HasPrefix(pyc, "skip ") || !path.IsAbs(pyc) {
			continue
		}
		host := filepath.Join(cacheDir, pyc)
		fi, err := os.Stat(host)
		if err != nil {
			return nil, 0, fmt.Errorf("%w: %v", ErrBytecode, err)
		}
		var ino uint64
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			ino = st.Ino
		}
		e := bom.Entry{Path: pyc, Kind: bom.File, Mode: 0o644, Source: host, Origin: "python bytecode (bom.python_bytecode)",
			Size: fi.Size(), ModTime: fi.ModTime(), Inode: ino}
		if i, ok := have[pyc]; ok {
			entries[i] = e
		} else {
			have[pyc] = len(entries)
			entries = append(entries, e)
		}
		if d := path.Dir(pyc); d != "/" {
			if _, ok := have[d]; !ok {
				have[d] = len(entries)
				entries = append(entries, bom.Entry{Path: d, Kind: bom.Dir, Mode: 0o755, Origin: "python bytecode (bom.python_bytecode)"})
			}
		}
		added++
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Path < entries[j].Path })
	return entries, added, nil
}
