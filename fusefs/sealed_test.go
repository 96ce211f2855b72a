package fusefs

import (
	"bytes"
	"crypto/rand"
	"errors"
	"github.com/veil-tee/veil/internal/veiltest"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/veil-tee/veil/seal"
	"golang.org/x/sys/unix"
)

func needFUSE(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		veiltest.Skip(t, "FUSE mounts in tests need root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		veiltest.Skip(t, "no /dev/fuse")
	}
}

// logBuf collects log lines of a mount.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type mount struct {
	dir, src string
	log      *logBuf
	unmount  func()
	srv      *fuse.Server
}

func mountSealed(t *testing.T, src string, opts SealedOptions) *mount {
	t.Helper()
	needFUSE(t)
	dir := t.TempDir()
	lb := &logBuf{}
	opts.Source = src
	opts.Logger = slog.New(slog.NewTextHandler(lb, nil))
	if opts.MountID == nil {
		opts.MountID = seal.MountID("/data")
	}
	srv, err := MountSealed(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	once := sync.Once{}
	m := &mount{dir: dir, src: src, log: lb, srv: srv}
	m.unmount = func() {
		once.Do(func() {
			if err := srv.Unmount(); err != nil {
				t.Errorf("unmount: %v", err)
			}
			srv.Wait()
			if mounted(dir) {
				t.Errorf("%s still mounted", dir)
			}
		})
	}
	t.Cleanup(m.unmount)
	return m
}

func mounted(dir string) bool {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	return strings.Contains(string(b), " "+dir+" ")
}

func newKey(t *testing.T) *seal.FileKey {
	k, err := seal.GenerateFileKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func rnd(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func TestSealedMountRoundTrip(t *testing.T) {
	k := newKey(t)
	src := t.TempDir()
	m := mountSealed(t, src, SealedOptions{Keys: k, WriteKeys: []seal.KeyWrapper{k}})
	files := map[string][]byte{
		"a.csv":            []byte("name,age,job\nbob,30,engineer\n"),
		"sub/big.bin":      rnd(3<<20 + 11),
		"sub/deep/empty":   nil,
		"sub/deep/odd.txt": rnd(70000),
	}
	for rel, data := range files {
		p := filepath.Join(m.dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o640); err != nil {
			t.Fatal(err)
		}
	}
	for rel, data := range files {
		got, err := os.ReadFile(filepath.Join(m.dir, rel))
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s: read back differs: %v", rel, err)
		}
		fi, err := os.Stat(filepath.Join(m.dir, rel))
		if err != nil || fi.Size() != int64(len(data)) {
			t.Fatalf("%s: stat size %d, want %d (%v)", rel, fi.Size(), len(data), err)
		}
	}
	m.unmount()

	// On the host: sealed files under the same names, no plaintext.
	for rel, data := range files {
		raw, err := os.ReadFile(filepath.Join(src, rel))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(raw, []byte(seal.Magic)) {
			t.Fatalf("%s is not sealed on the host", rel)
		}
		if len(data) > 16 && bytes.Contains(raw, data[:16]) {
			t.Fatalf("%s: plaintext visible on the host", rel)
		}
		f, err := seal.Open(memFile(raw), k, nil)
		if err != nil {
			t.Fatalf("%s: %v", rel, err)
		}
		got := make([]byte, f.Size())
		if _, err := f.ReadAt(got, 0); err != nil && err != io.EOF {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("%s: host copy decrypts to other data", rel)
		}
	}

	// Remount and read again: nothing depends on the first mount's memory.
	m2 := mountSealed(t, src, SealedOptions{Keys: k})
	for rel, data := range files {
		got, err := os.ReadFile(filepath.Join(m2.dir, rel))
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s after remount: %v", rel, err)
		}
	}
	// Without write keys, new files are refused but existing ones change.
	if err := os.WriteFile(filepath.Join(m2.dir, "new"), []byte("x"), 0o600); !errors.Is(err, syscall.EACCES) {
		t.Fatalf("create without a write key: %v, want EACCES", err)
	}
	if err := os.WriteFile(filepath.Join(m2.dir, "a.csv"), []byte("changed"), 0o600); err != nil {
		t.Fatalf("rewrite of an existing file: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(m2.dir, "a.csv")); string(b) != "changed" {
		t.Fatalf("rewrite read back %q", b)
	}
}

func TestSealedMountRandomIOAgainstModel(t *testing.T) {
	for _, wb := range []bool{false, true} {
		t.Run(map[bool]string{false: "write-through", true: "write-back-cache"}[wb], func(t *testing.T) {
			randomIOAgainstModel(t, wb)
		})
	}
}

func randomIOAgainstModel(t *testing.T, writeBackCache bool) {
	k := newKey(t)
	src := t.TempDir()
	m := mountSealed(t, src, SealedOptions{Keys: k, WriteKeys: []seal.KeyWrapper{k}, SegmentSize: 4096, WriteBackCache: writeBackCache})
	p := filepath.Join(m.dir, "f")
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	rng := mrand.New(mrand.NewPCG(3, 4))
	var model []byte
	for step := 0; step < 300; step++ {
		switch op := rng.IntN(10); {
		case op < 6:
			off := rng.Int64N(int64(len(model)) + 20000)
			data := rnd(1 + rng.IntN(20000))
			if _, err := f.WriteAt(data, off); err != nil {
				t.Fatal(err)
			}
			if need := off + int64(len(data)); need > int64(len(model)) {
				model = append(model, make([]byte, need-int64(len(model)))...)
			}
			copy(model[off:], data)
		case op < 7:
			n := rng.Int64N(int64(len(model)) + 5000)
			if err := f.Truncate(n); err != nil {
				t.Fatal(err)
			}
			if n < int64(len(model)) {
				model = model[:n]
			} else {
				model = append(model, make([]byte, n-int64(len(model)))...)
			}
		default:
			if len(model) == 0 {
				continue
			}
			off := rng.Int64N(int64(len(model)))
			buf := make([]byte, 1+rng.IntN(30000))
			n, err := f.ReadAt(buf, off)
			if err != nil && err != io.EOF {
				t.Fatal(err)
			}
			if !bytes.Equal(buf[:n], model[off:off+int64(n)]) {
				t.Fatalf("step %d: read at %d differs", step, off)
			}
		}
	}
	f.Close()
	got, err := os.ReadFile(p)
	if err != nil || !bytes.Equal(got, model) {
		t.Fatalf("final content differs: %v", err)
	}
	// Rename and unlink go through to the host.
	if err := os.Rename(p, filepath.Join(m.dir, "g")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(src, "g")); err != nil {
		t.Fatalf("rename not on the host: %v", err)
	}
	if err := os.Remove(filepath.Join(m.dir, "g")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("x", filepath.Join(m.dir, "link")); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("symlink: %v, want EPERM", err)
	}
}

func TestSealedMountTamperIsEIO(t *testing.T) {
	k := newKey(t)
	src := t.TempDir()
	plain := rnd(200000)
	// A file sealed by the streaming writer (as `veil encrypt` does).
	var buf bytes.Buffer
	w, _ := seal.NewWriter(&buf, nil, k)
	w.Write(plain)
	w.Close()
	sealed := buf.Bytes()
	os.WriteFile(filepath.Join(src, "good"), sealed, 0o600)
	bad := bytes.Clone(sealed)
	bad[len(bad)/2] ^= 1
	os.WriteFile(filepath.Join(src, "bad"), bad, 0o600)
	os.WriteFile(filepath.Join(src, "plain"), []byte("not sealed"), 0o600)
	other := newKey(t)
	buf.Reset()
	w, _ = seal.NewWriter(&buf, nil, other)
	w.Write([]byte("someone else's"))
	w.Close()
	os.WriteFile(filepath.Join(src, "foreign"), buf.Bytes(), 0o600)

	m := mountSealed(t, src, SealedOptions{Keys: k})
	if got, err := os.ReadFile(filepath.Join(m.dir, "good")); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("good file: %v", err)
	}
	f, err := os.Open(filepath.Join(m.dir, "bad"))
	if err != nil {
		t.Fatal(err)
	}
	head := make([]byte, 4096)
	if _, err := f.ReadAt(head, 0); err != nil {
		t.Fatalf("undamaged first segment of a damaged file: %v", err)
	}
	if _, err := io.ReadAll(f); !errors.Is(err, syscall.EIO) {
		t.Fatalf("reading a tampered segment: %v, want EIO", err)
	}
	f.Close()
	if !strings.Contains(m.log.String(), "file=/bad") || !strings.Contains(m.log.String(), "offset=") {
		t.Fatalf("log does not name the file and offset:\n%s", m.log.String())
	}
	if _, err := os.ReadFile(filepath.Join(m.dir, "plain")); !errors.Is(err, syscall.EIO) {
		t.Fatalf("a plaintext file in the backing dir: %v, want EIO", err)
	}
	if _, err := os.ReadFile(filepath.Join(m.dir, "foreign")); !errors.Is(err, syscall.EACCES) {
		t.Fatalf("a file under another key: %v, want EACCES", err)
	}
}

func TestSealedMountDiskFull(t *testing.T) {
	needFUSE(t)
	src := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", src).CombinedOutput(); err != nil {
		veiltest.Skip(t, "cannot mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { syscall.Unmount(src, 0) })
	k := newKey(t)
	m := mountSealed(t, src, SealedOptions{Keys: k, WriteKeys: []seal.KeyWrapper{k}})
	first := rnd(500000)
	if err := os.WriteFile(filepath.Join(m.dir, "first"), first, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(m.dir, "second"))
	if err != nil {
		t.Fatal(err)
	}
	var werr error
	for i := 0; i < 100 && werr == nil; i++ {
		_, werr = f.Write(rnd(100000))
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if !errors.Is(werr, syscall.ENOSPC) {
		t.Fatalf("filling the disk: %v, want ENOSPC", werr)
	}
	if got, err := os.ReadFile(filepath.Join(m.dir, "first")); err != nil || !bytes.Equal(got, first) {
		t.Fatalf("data written before the disk filled: %v", err)
	}
}

type memFile []byte

func (m memFile) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(m)) {
		return 0, io.EOF
	}
	n := copy(p, m[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
func (m memFile) WriteAt(p []byte, off int64) (int, error) { return 0, errors.New("read-only") }
func (m memFile) Truncate(int64) error                     { return errors.New("read-only") }
func (m memFile) Sync() error                              { return nil }
func (m memFile) Stat() (os.FileInfo, error)               { return sizeInfo(len(m)), nil }

// TestSealedMountRefusesXattrs: extended attributes would be stored on the
// host's file in plaintext, so the mount offers none.
func TestSealedMountRefusesXattrs(t *testing.T) {
	k := newKey(t)
	src := t.TempDir()
	m := mountSealed(t, src, SealedOptions{Keys: k, WriteKeys: []seal.KeyWrapper{k}})
	p := filepath.Join(m.dir, "f")
	if err := os.WriteFile(p, []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := unix.Setxattr(p, "user.note", []byte("a secret note"), 0)
	if err == nil {
		t.Fatal("setxattr on a sealed file succeeded")
	}
	if !errors.Is(err, unix.ENOTSUP) && !errors.Is(err, unix.ENOSYS) {
		t.Fatalf("setxattr: %v, want ENOTSUP", err)
	}
	m.unmount()
	buf := make([]byte, 256)
	if n, err := unix.Lgetxattr(filepath.Join(src, "f"), "user.note", buf); err == nil {
		t.Fatalf("the host file carries the attribute: %q", buf[:n])
	}
}
