package squashfs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/veil-tee/veil/internal/veiltest"
)

// mksquashfs packs dir into a squashfs the way veil's image builder does
// (its options, with zstd or no compression at all).
func mksquashfs(t testing.TB, dir string, compress bool) string {
	t.Helper()
	if _, err := exec.LookPath("mksquashfs"); err != nil {
		veiltest.Skip(t, "mksquashfs not installed (squashfs-tools)")
	}
	out := filepath.Join(t.TempDir(), "fs.sqfs")
	args := []string{dir, out, "-noappend", "-reproducible", "-mkfs-time", "0", "-all-time", "0",
		"-all-root", "-no-xattrs", "-no-progress", "-quiet"}
	if compress {
		args = append(args, "-comp", "zstd", "-Xcompression-level", "1")
	} else {
		args = append(args, "-noI", "-noD", "-noF", "-noX")
	}
	if b, err := exec.Command("mksquashfs", args...).CombinedOutput(); err != nil {
		t.Fatalf("mksquashfs: %v: %s", err, b)
	}
	return out
}

func openImage(t testing.TB, img string, r io.ReaderAt, cache int) *FS {
	t.Helper()
	fi, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	if r == nil {
		f, err := os.Open(img)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		r = f
	}
	fsys, err := Open(r, fi.Size(), Options{CacheBytes: cache})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fsys.Close)
	return fsys
}

// writeTree makes files of the sizes around block and fragment edges,
// compressible and not, sparse, symbolic links, deep and wide directories.
func writeTree(t testing.TB, dir string) {
	t.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	noise := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	text := func(n int) []byte {
		return bytes.Repeat([]byte("the quick brown fox jumps over the lazy dog\n"), n/44+1)[:n]
	}
	write := func(rel string, data []byte) {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o640); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []int{0, 1, 4095, 4096, 128<<10 - 1, 128 << 10, 128<<10 + 1, 1<<20 + 7, 3<<20 + 12345} {
		write(fmt.Sprintf("noise/%d", n), noise(n))
		write(fmt.Sprintf("text/%d", n), text(n))
	}
	sparse := make([]byte, 700<<10)
	copy(sparse[300<<10:], noise(5000))
	write("sparse.bin", sparse)
	for i := range 600 { // several directory headers
		write(fmt.Sprintf("wide/f%04d.txt", i), text(i*7))
	}
	write(strings.Repeat("d/", 30)+"deep", text(10))
	write("long/"+strings.Repeat("n", 255), text(3))
	if err := os.Symlink("../text/4096", filepath.Join(dir, "noise", "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(strings.Repeat("x/", 1000)+"y", filepath.Join(dir, "longlink")); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(dir, "text/1"), 0o4755); err != nil {
		t.Fatal(err)
	}
}

// treeImage packs a writeTree tree and returns the image's path and bytes.
func treeImage(t *testing.T, compress bool) (string, []byte) {
	t.Helper()
	src := t.TempDir()
	writeTree(t, src)
	img := mksquashfs(t, src, compress)
	raw, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	return img, raw
}

// walk calls fn for every entry under dir, with its path.
func walk(t testing.TB, fsys *FS, dir *Inode, p string, fn func(string, *Inode)) {
	t.Helper()
	ents, err := fsys.ReadDir(dir)
	if err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	for _, e := range ents {
		q := path.Join(p, e.Name)
		fn(q, e.Inode)
		if e.Inode.Type == Dir {
			walk(t, fsys, e.Inode, q, fn)
		}
	}
}

// TestReadTree compares everything the reader returns with the tree the
// image was made from, for zstd and uncompressed images.
func TestReadTree(t *testing.T) {
	src := t.TempDir()
	writeTree(t, src)
	for _, compress := range []bool{true, false} {
		t.Run(fmt.Sprintf("zstd=%v", compress), func(t *testing.T) {
			fsys := openImage(t, mksquashfs(t, src, compress), nil, 3<<17)
			root, err := fsys.Root()
			if err != nil || root.Type != Dir {
				t.Fatalf("root: %+v, %v", root, err)
			}
			seen := map[string]bool{}
			rng := rand.New(rand.NewPCG(3, 4))
			walk(t, fsys, root, "/", func(p string, in *Inode) {
				seen[p] = true
				host := filepath.Join(src, p)
				fi, err := os.Lstat(host)
				if err != nil {
					t.Errorf("%s: not in the source: %v", p, err)
					return
				}
				if uint16(fi.Mode().Perm()) != in.Perm&0o777 || in.UID != 0 || in.GID != 0 || in.Mtime != 0 {
					t.Errorf("%s: perm %o uid %d gid %d mtime %d, source %v", p, in.Perm, in.UID, in.GID, in.Mtime, fi.Mode())
				}
				switch {
				case fi.Mode()&os.ModeSymlink != 0:
					want, _ := os.Readlink(host)
					if in.Type != Symlink || in.Target != want {
						t.Errorf("%s: symlink %q, want %q", p, in.Target, want)
					}
				case fi.IsDir():
					if in.Type != Dir {
						t.Errorf("%s: type %d, want a directory", p, in.Type)
					}
				default:
					want, _ := os.ReadFile(host)
					if in.Type != File || in.Size != uint64(len(want)) {
						t.Fatalf("%s: type %d size %d, want a file of %d", p, in.Type, in.Size, len(want))
					}
					// Whole, then random pieces, then past the end.
					got := make([]byte, len(want)+100)
					n, err := fsys.ReadAt(in, got, 0)
					if n != len(want) || (err != nil && err != io.EOF) || !bytes.Equal(got[:n], want) {
						t.Errorf("%s: whole read: %d bytes, %v", p, n, err)
					}
					for range 20 {
						off := rng.IntN(len(want) + 1)
						buf := make([]byte, rng.IntN(300<<10)+1)
						n, err := fsys.ReadAt(in, buf, int64(off))
						end := min(off+len(buf), len(want))
						if n != end-off || !bytes.Equal(buf[:n], want[off:end]) {
							t.Errorf("%s at %d+%d: %d bytes, %v", p, off, len(buf), n, err)
						}
						if (end < off+len(buf)) != (err == io.EOF) {
							t.Errorf("%s at %d+%d: err %v", p, off, len(buf), err)
						}
					}
				}
			})
			filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
				rel, _ := filepath.Rel(src, p)
				if rel != "." && !seen["/"+filepath.ToSlash(rel)] {
					t.Errorf("%s: missing from the image", rel)
				}
				return nil
			})
		})
	}
}

// TestConcurrentReads reads every file from several goroutines with a
// cache smaller than what they read at once.
func TestConcurrentReads(t *testing.T) {
	src := t.TempDir()
	writeTree(t, src)
	fsys := openImage(t, mksquashfs(t, src, true), nil, 1<<17)
	root, _ := fsys.Root()
	type file struct {
		p  string
		in *Inode
	}
	var files []file
	walk(t, fsys, root, "/", func(p string, in *Inode) {
		if in.Type == File {
			files = append(files, file{p, in})
		}
	})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range files {
				f := files[(i+g*13)%len(files)]
				want, _ := os.ReadFile(filepath.Join(src, f.p))
				buf := make([]byte, 5000)
				for off := len(want) - 1; off >= 0; off -= 40001 {
					n, _ := fsys.ReadAt(f.in, buf, int64(off))
					if !bytes.Equal(buf[:n], want[off:off+n]) || n == 0 {
						t.Errorf("%s at %d: %d bytes differ", f.p, off, n)
					}
				}
			}
		})
	}
	wg.Wait()
}

var errBroken = errors.New("broken device")

// failingReader fails every read that touches [from, to).
type failingReader struct {
	r        io.ReaderAt
	from, to int64
}

func (f failingReader) ReadAt(p []byte, off int64) (int, error) {
	if off < f.to && off+int64(len(p)) > f.from {
		return 0, fmt.Errorf("block at %d: %w", f.from, errBroken)
	}
	return f.r.ReadAt(p, off)
}

// TestErrorsKeepTheirType: an error of the underlying reader reaches the
// caller wrapped, for data, fragment and metadata reads alike.
func TestErrorsKeepTheirType(t *testing.T) {
	img, raw := treeImage(t, true)
	f, _ := os.Open(img)
	defer f.Close()
	good := openImage(t, img, nil, 0)
	root, _ := good.Root()
	var big, small *Inode
	walk(t, good, root, "/", func(p string, in *Inode) {
		switch p {
		case "/noise/1048583":
			big = in
		case "/noise/4095":
			small = in
		}
	})
	// A data block of the big file, the fragment of the small one.
	fr := good.frags[small.fragIndex]
	for name, c := range map[string]struct {
		from int64
		in   *Inode
	}{"data": {big.blocksStart + 1000, big}, "fragment": {fr.start, small}} {
		bad := openImage(t, img, failingReader{f, c.from, c.from + 1}, 0)
		_, err := bad.ReadAt(c.in, make([]byte, c.in.Size), 0)
		if !errors.Is(err, errBroken) {
			t.Errorf("%s: %v, want the reader's error", name, err)
		}
	}
	// The directory table (and what follows it), once the ID and
	// fragment tables are read.
	bad := openImage(t, img, nil, 0)
	bad.r = failingReader{f, bad.dirTab, int64(len(raw))}
	r2, err := bad.Root()
	if err == nil {
		_, err = bad.ReadDir(r2)
	}
	if !errors.Is(err, errBroken) {
		t.Errorf("directory table: %v, want the reader's error", err)
	}
	if _, err := Open(failingReader{f, 0, 1}, int64(len(raw)), Options{}); !errors.Is(err, errBroken) {
		t.Errorf("superblock: %v, want the reader's error", err)
	}
}

// TestCorruptTablesNoPanic flips bytes of an uncompressed image's tables
// (everything after the data): every call returns data or an error,
// never panics or runs away.
func TestCorruptTablesNoPanic(t *testing.T) {
	img, raw := treeImage(t, false)
	good := openImage(t, img, nil, 0)
	tables := good.inodeTab
	rng := rand.New(rand.NewPCG(5, 6))
	for range 120 {
		b := bytes.Clone(raw)
		for range 1 + rng.IntN(4) {
			i := tables + rng.Int64N(int64(len(b))-tables)
			b[i] ^= byte(1 + rng.IntN(255))
		}
		if rng.IntN(10) == 0 { // the superblock too
			b[rng.IntN(superSize)] ^= 0xff
		}
		fsys, err := Open(bytes.NewReader(b), int64(len(b)), Options{})
		if err != nil {
			continue
		}
		var visit func(*Inode, int)
		visit = func(d *Inode, depth int) {
			if depth > 40 {
				return
			}
			ents, err := fsys.ReadDir(d)
			if err != nil {
				return
			}
			for _, e := range ents {
				switch e.Inode.Type {
				case Dir:
					visit(e.Inode, depth+1)
				case File:
					fsys.ReadAt(e.Inode, make([]byte, min(e.Inode.Size, 1<<20)), 0)
				}
			}
		}
		if root, err := fsys.Root(); err == nil && root.Type == Dir {
			visit(root, 0)
		}
		fsys.Close()
	}
	if _, err := Open(bytes.NewReader(raw[:50]), 50, Options{}); err == nil {
		t.Error("a truncated superblock opened")
	}
	if _, err := Open(bytes.NewReader(make([]byte, 4096)), 4096, Options{}); !errors.Is(err, ErrFormat) {
		t.Errorf("zeros: %v, want ErrFormat", err)
	}
}

// BenchmarkReadAll reads every file of a zstd image of a host directory
// (VEIL_BENCH_SQUASHFS_DIR, default Debian's Python standard library, or
// the test tree) in 256 KiB reads straight from the image file: the
// reader's own cost (ReadAt, decompression, copies) without FUSE and
// without verification. A new FS per iteration, so nothing is cached.
func BenchmarkReadAll(b *testing.B) {
	dir := os.Getenv("VEIL_BENCH_SQUASHFS_DIR")
	if dir == "" {
		dir = "/usr/lib/python3.11"
	}
	if _, err := os.Stat(dir); err != nil {
		dir = b.TempDir()
		writeTree(b, dir)
	}
	img := mksquashfs(b, dir, true)
	var total int64
	buf := make([]byte, 256<<10)
	readAll := func(fsys *FS) int64 {
		var n int64
		root, err := fsys.Root()
		if err != nil {
			b.Fatal(err)
		}
		walk(b, fsys, root, "/", func(p string, in *Inode) {
			if in.Type != File {
				return
			}
			for off := int64(0); off < int64(in.Size); {
				k, err := fsys.ReadAt(in, buf, off)
				if err != nil && err != io.EOF {
					b.Fatalf("%s: %v", p, err)
				}
				off += int64(k)
				n += int64(k)
			}
		})
		return n
	}
	total = readAll(openImage(b, img, nil, 0))
	b.SetBytes(total)
	b.ResetTimer()
	for b.Loop() {
		if n := readAll(openImage(b, img, nil, 0)); n != total {
			b.Fatalf("read %d bytes, want %d", n, total)
		}
	}
}

// TestBenchmarks runs this package's benchmarks once (make test).
func TestBenchmarks(t *testing.T) { veiltest.RunBenchmarksOnce(t, ".") }
