package fusefs

import (
	"bytes"
	"context"
	"errors"
	"github.com/veil-tee/veil/internal/veiltest"
	"io/fs"
	"log/slog"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/veil-tee/veil/config"
	"github.com/veil-tee/veil/trustimage"
)

const imageConfig = `{
  "entrypoints": ["/app/"],
  "metadata": {"product_id": 1, "svn": 1, "debuggable": false}%s
}`

// noiseBytes returns n deterministic incompressible bytes.
func noiseBytes(seed uint64, n int) []byte {
	r := mrand.New(mrand.NewPCG(seed, 7))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// writeImageTree writes the test tree under dir/image: nested
// directories, an executable script, an empty file, a symlink, a file of
// more than 1 MiB and many small files (squashfs fragments).
func writeImageTree(t *testing.T, dir string) {
	t.Helper()
	root := filepath.Join(dir, "image")
	files := map[string]struct {
		data []byte
		mode os.FileMode
	}{
		"app/hello.sh":        {[]byte("#!/bin/sh\necho hello from the image \"$1\"\n"), 0o755},
		"app/big.bin":         {noiseBytes(1, 3<<20+123), 0o644},
		"app/text.txt":        {bytes.Repeat([]byte("compressible line of text\n"), 50000), 0o640},
		"etc/empty":           {nil, 0o644},
		"etc/deep/er/x.conf":  {[]byte("x=1\n"), 0o600},
		"usr/lib/libfake.so":  {noiseBytes(2, 200<<10), 0o755},
		"usr/share/doc/READ":  {[]byte("read me\n"), 0o444},
		"app/unread/late.bin": {noiseBytes(3, 600<<10), 0o644},
	}
	for i := range 40 {
		files[filepath.Join("usr/small", string(rune('a'+i%26))+strings.Repeat("x", i/26)+".py")] = struct {
			data []byte
			mode os.FileMode
		}{noiseBytes(uint64(10+i), 100+i*37), 0o644}
	}
	for p, f := range files {
		hp := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(hp), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(hp, f.data, f.mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(hp, f.mode); err != nil {
			t.Fatal(err)
		}
	}
	// The directories every build adds for the runtime's mount points.
	for _, d := range []string{"proc", "dev", "tmp", "run/secrets"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// A static ELF program, to run from the mount.
	if gofmt, err := exec.LookPath("gofmt"); err != nil {
		t.Log("no gofmt in PATH: not running an ELF program from the mount")
	} else if data, err := os.ReadFile(gofmt); err == nil {
		if err := os.WriteFile(filepath.Join(root, "app/gofmt"), data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for link, target := range map[string]string{"app/run": "hello.sh", "lib": "usr/lib", "etc/dangling": "/nowhere/at/all"} {
		if err := os.Symlink(target, filepath.Join(root, link)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(root, "etc/deep"), 0o750); err != nil {
		t.Fatal(err)
	}
}

var (
	signKeyOnce sync.Once
	testSignKey *trustimage.SignKey
)

// buildTestImage builds an instance in a new directory from a tree written
// by fill and returns the loaded build.
func buildTestImage(t testing.TB, fill func(dir string), extra string, key []byte) *trustimage.LoadedBuild {
	t.Helper()
	if _, err := exec.LookPath("mksquashfs"); err != nil {
		veiltest.Skip(t, "mksquashfs not installed")
	}
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "image"), 0o755); err != nil {
		t.Fatal(err)
	}
	fill(dir)
	b, err := buildImageIn(dir, extra, key)
	if err != nil {
		t.Fatalf("building: %v", err)
	}
	return b
}

// buildImageIn writes dir/veil.json (extra appended inside the object) and
// builds the instance in dir.
func buildImageIn(dir, extra string, key []byte) (*trustimage.LoadedBuild, error) {
	return buildImageWith(dir, extra, trustimage.Options{ImageKey: key})
}

func buildImageWith(dir, extra string, opts trustimage.Options) (*trustimage.LoadedBuild, error) {
	signKeyOnce.Do(func() {
		k, err := trustimage.GenerateSignKey()
		if err != nil {
			panic(err)
		}
		testSignKey = k
	})
	if err := os.MkdirAll(filepath.Join(dir, "image"), 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, config.FileName), []byte(strings.Replace(imageConfig, "%s", extra, 1)), 0o644); err != nil {
		return nil, err
	}
	opts.SignKey = testSignKey
	b, _, err := trustimage.Build(context.Background(), dir, opts)
	return b, err
}

type imageMount struct {
	dir     string
	srv     *fuse.Server
	r       *trustimage.Reader
	log     *logBuf
	unmount func()
}

// ownFDs counts the descriptors a mount holds: on /dev/fuse and on image
// files (the Go runtime opens others on first use, which are not leaks).
func ownFDs(t testing.TB) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		l, _ := os.Readlink("/proc/self/fd/" + e.Name())
		if l == "/dev/fuse" || strings.HasSuffix(l, "/"+trustimage.ImageFile) {
			n++
		}
	}
	return n
}

// mountTestImage mounts b; cacheBlocks, if given, bounds the mount's block
// cache to that many 128 KiB blocks.
func mountTestImage(t testing.TB, b *trustimage.LoadedBuild, key []byte, cacheBlocks ...int) *imageMount {
	t.Helper()
	if os.Geteuid() != 0 {
		veiltest.Skip(t, "FUSE mounts in tests need root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		veiltest.Skip(t, "no /dev/fuse")
	}
	fds := ownFDs(t)
	r, err := b.Open(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	lb := &logBuf{}
	opts := ImageOptions{Reader: r, Logger: slog.New(slog.NewTextHandler(lb, nil))}
	if len(cacheBlocks) > 0 {
		opts.CacheSize = cacheBlocks[0] << 17
	}
	srv, err := MountImage(dir, opts)
	if err != nil {
		r.Close()
		t.Fatal(err)
	}
	m := &imageMount{dir: dir, srv: srv, r: r, log: lb}
	once := sync.Once{}
	m.unmount = func() {
		once.Do(func() {
			if err := srv.Unmount(); err != nil {
				t.Errorf("unmount: %v", err)
			}
			srv.Wait()
			r.Close()
			if mounted(dir) {
				t.Errorf("%s still mounted", dir)
			}
			// go-fuse closes /dev/fuse from its own goroutines after
			// Unmount returns: give them a moment on a loaded machine.
			n := ownFDs(t)
			for i := 0; i < 40 && n > fds; i++ {
				time.Sleep(50 * time.Millisecond)
				n = ownFDs(t)
			}
			if n > fds {
				t.Errorf("%d file descriptors leaked", n-fds)
			}
		})
	}
	t.Cleanup(m.unmount)
	return m
}

// compareTrees checks that every entry of src is in the mount with the same
// type, permission bits, size, content and link target, owned by root, and
// that each directory lists its entries in sorted (stored) order.
func compareTrees(t *testing.T, src, mnt string) int {
	t.Helper()
	n := 0
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		mp := filepath.Join(mnt, rel)
		want, err := os.Lstat(p)
		if err != nil {
			return err
		}
		got, err := os.Lstat(mp)
		if err != nil {
			t.Errorf("%s: %v", rel, err)
			return nil
		}
		n++
		if got.Mode() != want.Mode() && rel != "." {
			t.Errorf("%s: mode %v, want %v", rel, got.Mode(), want.Mode())
		}
		st := got.Sys().(*syscall.Stat_t)
		if st.Uid != 0 || st.Gid != 0 {
			t.Errorf("%s: owner %d:%d, want 0:0", rel, st.Uid, st.Gid)
		}
		if st.Mtim.Sec != 0 {
			t.Errorf("%s: mtime %d, want 0 as stored", rel, st.Mtim.Sec)
		}
		switch {
		case want.Mode()&fs.ModeSymlink != 0:
			wt, _ := os.Readlink(p)
			gt, err := os.Readlink(mp)
			if err != nil || gt != wt {
				t.Errorf("%s: link %q (%v), want %q", rel, gt, err, wt)
			}
		case want.Mode().IsRegular():
			if got.Size() != want.Size() {
				t.Errorf("%s: size %d, want %d", rel, got.Size(), want.Size())
			}
			wb, _ := os.ReadFile(p)
			gb, err := os.ReadFile(mp)
			if err != nil || !bytes.Equal(gb, wb) {
				t.Errorf("%s: content differs (%d bytes read, %v)", rel, len(gb), err)
			}
		case want.IsDir():
			ents, err := os.ReadDir(mp)
			if err != nil {
				t.Errorf("%s: %v", rel, err)
				return nil
			}
			names := make([]string, len(ents))
			for i, e := range ents {
				names[i] = e.Name()
			}
			wents, _ := os.ReadDir(p)
			if len(wents) != len(names) || !slices.IsSorted(names) {
				t.Errorf("%s: lists %v, want the %d entries sorted", rel, names, len(wents))
			}
			subdirs := 0
			for _, e := range wents {
				if e.IsDir() {
					subdirs++
				}
			}
			if st.Nlink != uint64(2+subdirs) {
				t.Errorf("%s: nlink %d, want %d", rel, st.Nlink, 2+subdirs)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestImageMountServesTree(t *testing.T) {
	for _, tc := range []struct {
		name string
		key  []byte
	}{{"plain", nil}, {"encrypted", noiseBytes(9, trustimage.ImageKeySize)}} {
		t.Run(tc.name, func(t *testing.T) {
			var src string
			b := buildTestImage(t, func(dir string) { writeImageTree(t, dir); src = filepath.Join(dir, "image") }, "", tc.key)
			m := mountTestImage(t, b, tc.key)
			if n := compareTrees(t, src, m.dir); n < 50 {
				t.Fatalf("compared only %d entries", n)
			}

			// Execution: the kernel runs a script from the mount.
			out, err := exec.Command(filepath.Join(m.dir, "app/run"), "arg").CombinedOutput()
			if err != nil || string(out) != "hello from the image arg\n" {
				t.Fatalf("running app/run: %q, %v", out, err)
			}

			// The kernel maps and runs an ELF program from the mount.
			if _, err := os.Stat(filepath.Join(src, "app/gofmt")); err == nil {
				cmd := exec.Command(filepath.Join(m.dir, "app/gofmt"))
				cmd.Stdin = strings.NewReader("package  x\nvar  y = 1\n")
				out, err := cmd.Output()
				if err != nil || string(out) != "package x\n\nvar y = 1\n" {
					t.Errorf("running app/gofmt from the mount: %q, %v", out, err)
				}
			}

			// Listings hold "." and ".." first, then the entries as stored.
			if out, err := exec.Command("ls", "-1af", filepath.Join(m.dir, "etc")).Output(); err != nil || string(out) != ".\n..\ndangling\ndeep\nempty\n" {
				t.Errorf("ls -1af etc: %q, %v", out, err)
			}

			// Inode numbers are stable per path, also across mounts.
			ino := func(dir, p string) uint64 {
				fi, err := os.Lstat(filepath.Join(dir, p))
				if err != nil {
					t.Fatal(err)
				}
				return fi.Sys().(*syscall.Stat_t).Ino
			}
			m2 := mountTestImage(t, b, tc.key)
			seen := map[uint64]string{}
			for _, p := range []string{"app", "app/big.bin", "etc/deep/er/x.conf", "lib", "usr/small/a.py"} {
				i := ino(m.dir, p)
				if i2 := ino(m2.dir, p); i2 != i {
					t.Errorf("%s: inode %d in one mount, %d in another", p, i, i2)
				}
				if q, dup := seen[i]; dup {
					t.Errorf("%s and %s share inode %d", p, q, i)
				}
				seen[i] = p
			}

			var sfs syscall.Statfs_t
			if err := syscall.Statfs(m.dir, &sfs); err != nil {
				t.Fatal(err)
			}
			if sfs.Flags&1 /* ST_RDONLY */ == 0 || sfs.Bfree != 0 || sfs.Blocks == 0 {
				t.Errorf("statfs: flags %#x, %d blocks, %d free", sfs.Flags, sfs.Blocks, sfs.Bfree)
			}
			if m.log.String() != "" {
				t.Errorf("unexpected log: %s", m.log.String())
			}
			m2.unmount()
			m.unmount()
		})
	}
}

func TestImageMountRefusesWrites(t *testing.T) {
	b := buildTestImage(t, func(dir string) { writeImageTree(t, dir) }, "", nil)
	m := mountTestImage(t, b, nil)
	p := func(s string) string { return filepath.Join(m.dir, s) }
	attempts := map[string]func() error{
		"create":   func() error { return os.WriteFile(p("app/new"), []byte("x"), 0o644) },
		"open rw":  func() error { f, err := os.OpenFile(p("app/text.txt"), os.O_RDWR, 0); f.Close(); return err },
		"truncate": func() error { return os.Truncate(p("app/text.txt"), 0) },
		"append":   func() error { f, err := os.OpenFile(p("etc/empty"), os.O_WRONLY|os.O_APPEND, 0); f.Close(); return err },
		"mkdir":    func() error { return os.Mkdir(p("app/d"), 0o755) },
		"remove":   func() error { return os.Remove(p("etc/empty")) },
		"rmdir":    func() error { return os.Remove(p("usr/share/doc")) },
		"rename":   func() error { return os.Rename(p("etc/empty"), p("etc/full")) },
		"chmod":    func() error { return os.Chmod(p("app/hello.sh"), 0o777) },
		"chown":    func() error { return os.Chown(p("app/hello.sh"), 1, 1) },
		"symlink":  func() error { return os.Symlink("x", p("app/l")) },
		"link":     func() error { return os.Link(p("app/hello.sh"), p("app/h2")) },
		"mknod":    func() error { return syscall.Mknod(p("app/fifo"), syscall.S_IFIFO|0o644, 0) },
		"setxattr": func() error { return syscall.Setxattr(p("app/hello.sh"), "user.x", []byte("1"), 0) },
		"utimes":   func() error { return os.Chtimes(p("app/hello.sh"), time0, time0) },
	}
	for name, f := range attempts {
		if err := f(); !errors.Is(err, syscall.EROFS) {
			t.Errorf("%s: %v, want EROFS", name, err)
		}
	}
	// Nothing changed.
	if fi, err := os.Stat(p("app/text.txt")); err != nil || fi.Size() != 26*50000 {
		t.Errorf("app/text.txt after write attempts: %v, %v", fi, err)
	}
}

// tamperAt is where tamperLate changes app/unread/late.bin.
const tamperAt = 300 << 10

// tamperLate flips one bit of app/unread/late.bin at tamperAt in the image
// file on disk. The file is incompressible, so squashfs stores its bytes
// as they are: they are found in the image file. It returns the file's
// bytes and the index of the changed image block.
func tamperLate(t *testing.T, b *trustimage.LoadedBuild, src string) ([]byte, int) {
	t.Helper()
	late, err := os.ReadFile(filepath.Join(src, "app/unread/late.bin"))
	if err != nil {
		t.Fatal(err)
	}
	img, err := os.ReadFile(b.ImagePath)
	if err != nil {
		t.Fatal(err)
	}
	pos := bytes.Index(img, late[tamperAt:tamperAt+256])
	if pos < 0 {
		t.Fatal("file data not found in the image")
	}
	f, err := os.OpenFile(b.ImagePath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte{img[pos] ^ 0x01}, int64(pos)); err != nil {
		t.Fatal(err)
	}
	return late, pos / trustimage.BlockSize
}

// TestImageMountTamperIsEIO changes one byte of a file's data in the image
// file on disk while the image is mounted: reading that file is EIO and
// the log names the file, the offset and the block; other files still read.
func TestImageMountTamperIsEIO(t *testing.T) {
	var src string
	b := buildTestImage(t, func(dir string) { writeImageTree(t, dir); src = filepath.Join(dir, "image") }, "", nil)
	m := mountTestImage(t, b, nil)
	late, block := tamperLate(t, b, src)

	_, err := os.ReadFile(filepath.Join(m.dir, "app/unread/late.bin"))
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("reading the tampered file: %v, want EIO", err)
	}
	// A read before the bad block still works; one that covers it fails.
	g, err := os.Open(filepath.Join(m.dir, "app/unread/late.bin"))
	if err != nil {
		t.Fatal(err)
	}
	head := make([]byte, 4096)
	if _, err := g.ReadAt(head, 0); err != nil || !bytes.Equal(head, late[:4096]) {
		t.Errorf("reading the start of the file: %v", err)
	}
	if _, err := g.ReadAt(head, tamperAt); !errors.Is(err, syscall.EIO) {
		t.Errorf("reading at the tampered offset: %v, want EIO", err)
	}
	g.Close()
	log := m.log.String()
	for _, want := range []string{"file=/app/unread/late.bin", "block=" + strconv.Itoa(block), "level=ERROR", "offset="} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
	if c := strings.Count(log, "image block failed verification"); c != 1 {
		t.Errorf("%d log lines for one bad block, want 1:\n%s", c, log)
	}
	if got, err := os.ReadFile(filepath.Join(m.dir, "app/text.txt")); err != nil || len(got) != 26*50000 {
		t.Errorf("an untouched file: %d bytes, %v", len(got), err)
	}
}

func TestImageMountErrors(t *testing.T) {
	if _, err := MountImage(t.TempDir(), ImageOptions{}); err == nil {
		t.Error("mount without a reader succeeded")
	}
	key := noiseBytes(4, trustimage.ImageKeySize)
	b := buildTestImage(t, func(dir string) {
		os.WriteFile(filepath.Join(dir, "image", "f"), []byte("x"), 0o644)
	}, "", key)
	r, err := b.Open(nil) // encrypted, opened without its key
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	dir := t.TempDir()
	srv, err := MountImage(dir, ImageOptions{Reader: r, Logger: slog.New(slog.DiscardHandler)})
	if !errors.Is(err, trustimage.ErrNoKey) {
		if srv != nil {
			srv.Unmount()
		}
		t.Fatalf("mounting an encrypted image without its key: %v, want ErrNoKey", err)
	}
	if mounted(dir) {
		t.Error("a failed mount left a mount behind")
	}
}

var time0 = time.Unix(0, 0)

// TestImageMountConcurrentReads reads every file from several goroutines
// at once (through the kernel and directly through the node) and after the
// kernel has been told to forget entries: every read gives the source bytes.
func TestImageMountConcurrentReads(t *testing.T) {
	var src string
	b := buildTestImage(t, func(dir string) { writeImageTree(t, dir); src = filepath.Join(dir, "image") }, "", nil)
	// A block cache smaller than the blocks read at once: every read may
	// find its block evicted by another.
	m := mountTestImage(t, b, nil, 2)
	var files []string
	filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			rel, _ := filepath.Rel(src, p)
			files = append(files, rel)
		}
		return err
	})
	check := func(round int) {
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range files {
					rel := files[(i+g*7)%len(files)]
					want, _ := os.ReadFile(filepath.Join(src, rel))
					f, err := os.Open(filepath.Join(m.dir, rel))
					if err != nil {
						t.Errorf("round %d: %s: %v", round, rel, err)
						return
					}
					// Unaligned reads at odd offsets, back to front.
					buf := make([]byte, 5000)
					for off := int64(len(want)) - 1; off >= 0; off -= 70001 {
						k, err := f.ReadAt(buf, off)
						if (err != nil && k == 0) || !bytes.Equal(buf[:k], want[off:off+int64(k)]) {
							t.Errorf("round %d: %s at %d: %d bytes, %v", round, rel, off, k, err)
						}
					}
					f.Close()
				}
			}()
		}
		wg.Wait()
	}
	check(1)
	// Ask the kernel to drop the cached entries; lookups then come again
	// and make new nodes over the same entries.
	for _, name := range []string{"app", "etc", "usr", "lib"} {
		if st := m.srv.EntryNotify(1, name); st != fuse.OK && st != fuse.ENOENT {
			t.Logf("EntryNotify %s: %v", name, st)
		}
	}
	check(2)
	if m.log.String() != "" {
		t.Errorf("unexpected log: %s", m.log.String())
	}
}

// residentPages maps the file at p and reports how many of its pages are
// in the kernel's page cache, and which of them.
func residentPages(t *testing.T, p string) (int, []byte) {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	m, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	vec := make([]byte, (len(m)+os.Getpagesize()-1)/os.Getpagesize())
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		t.Fatal(e)
	}
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n, vec
}

// TestImageMountReadAhead: sequential reads of a file make the mount read
// the rest of it into the kernel's page cache, where later reads find
// the file's own bytes; a block that fails verification is never stored,
// so reading it is still EIO, logged once.
func TestImageMountReadAhead(t *testing.T) {
	var src string
	b := buildTestImage(t, func(dir string) { writeImageTree(t, dir); src = filepath.Join(dir, "image") }, "", nil)
	tamperLate(t, b, src)
	m := mountTestImage(t, b, nil)

	// Two sequential 4 KiB reads (the kernel's own read-ahead off) start
	// the mount's read-ahead of the file; one read alone does not.
	read4K := func(rel string, reads int) {
		g, err := os.Open(filepath.Join(m.dir, rel))
		if err != nil {
			t.Fatal(err)
		}
		defer g.Close()
		if err := unix.Fadvise(int(g.Fd()), 0, 0, unix.FADV_RANDOM); err != nil {
			t.Fatal(err)
		}
		for i := range reads {
			if _, err := g.ReadAt(make([]byte, 4096), int64(i)*4096); err != nil {
				t.Fatalf("%s: %v", rel, err)
			}
		}
	}
	text := filepath.Join(m.dir, "app/text.txt")
	read4K("app/text.txt", 1)
	time.Sleep(200 * time.Millisecond)
	if n, _ := residentPages(t, text); n > 2 {
		t.Errorf("app/text.txt: %d pages cached after one 4 KiB read, want 1", n)
	}
	big := filepath.Join(m.dir, "app/big.bin")
	want, _ := os.ReadFile(filepath.Join(src, "app/big.bin"))
	pages := (len(want) + os.Getpagesize() - 1) / os.Getpagesize()
	read4K("app/big.bin", 2)
	n := 0
	for i := 0; i < 100 && n < pages; i++ {
		time.Sleep(50 * time.Millisecond)
		n, _ = residentPages(t, big)
	}
	if n < pages {
		t.Errorf("app/big.bin: %d of %d pages cached after its first read", n, pages)
	}
	if got, err := os.ReadFile(big); err != nil || !bytes.Equal(got, want) {
		t.Errorf("app/big.bin read back from the cache differs: %v", err)
	}

	read4K("app/unread/late.bin", 2)
	bad := tamperAt / os.Getpagesize()
	var vec []byte
	for i := 0; i < 40; i++ {
		time.Sleep(50 * time.Millisecond)
		if _, vec = residentPages(t, filepath.Join(m.dir, "app/unread/late.bin")); vec[bad-1]&1 != 0 {
			break
		}
	}
	if vec[bad]&1 != 0 {
		t.Error("the page of the tampered block is in the page cache")
	}
	g, err := os.Open(filepath.Join(m.dir, "app/unread/late.bin"))
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if _, err := g.ReadAt(make([]byte, 4096), tamperAt); !errors.Is(err, syscall.EIO) {
		t.Errorf("reading the tampered block after read-ahead: %v, want EIO", err)
	}
	if c := strings.Count(m.log.String(), "image block failed verification"); c != 1 {
		t.Errorf("%d log lines for one bad block, want 1:\n%s", c, m.log.String())
	}
}
