package fusefs

import (
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/veil-tee/veil/internal/veiltest"
	"github.com/veil-tee/veil/trustimage"
)

// The read-all benchmarks build one image from a shipped BOM snippet
// (VEIL_BENCH_BOM, default debian/python3; VEIL_BENCH_COMPRESSION, default
// the builder's), copy its tree out of a mount
// onto the disk, and read every file of it: through the mount and from the
// disk, both with the host page cache warm.

var (
	benchOnce  sync.Once
	benchBuild *trustimage.LoadedBuild
	benchTree  string // the image's tree copied to disk
	benchBytes int64
	benchDir   string
	benchErr   error
)

func benchImage(b *testing.B) (*trustimage.LoadedBuild, string, int64) {
	b.Helper()
	snippet := os.Getenv("VEIL_BENCH_BOM")
	if snippet == "" {
		snippet = "debian/python3"
	}
	benchOnce.Do(func() {
		benchDir, benchErr = os.MkdirTemp("", "veil-imgbench")
		if benchErr != nil {
			return
		}
		dir := benchDir
		if _, err := exec.LookPath("mksquashfs"); err != nil || os.Geteuid() != 0 {
			benchErr = errSkip
			return
		}
		lb, err := buildImageWith(filepath.Join(dir, "instance"), `, "bom": {"include": ["`+snippet+`"]}`,
			trustimage.Options{Compression: os.Getenv("VEIL_BENCH_COMPRESSION")})
		if err != nil {
			benchErr = err
			return
		}
		benchBuild = lb
		benchTree = filepath.Join(dir, "tree")
		r, err := lb.Open(nil)
		if err != nil {
			benchErr = err
			return
		}
		defer r.Close()
		mnt := filepath.Join(dir, "mnt")
		os.Mkdir(mnt, 0o755)
		srv, err := MountImage(mnt, ImageOptions{Reader: r})
		if err != nil {
			benchErr = err
			return
		}
		defer func() { srv.Unmount(); srv.Wait() }()
		if out, err := exec.Command("cp", "-a", mnt+"/.", benchTree).CombinedOutput(); err != nil {
			benchErr = &copyError{string(out)}
			return
		}
		benchBytes, benchErr = readAll(benchTree, make([]byte, 1<<20))
	})
	if benchErr == errSkip {
		veiltest.Skip(b, "cannot build the benchmark image (needs mksquashfs and root)")
	}
	if benchErr != nil {
		b.Fatal(benchErr)
	}
	return benchBuild, benchTree, benchBytes
}

type copyError struct{ out string }

func (e *copyError) Error() string { return "copying the image tree: " + e.out }

var errSkip = &copyError{"skipped"}

// readAll reads every regular file under root and returns the bytes read.
func readAll(root string, buf []byte) (int64, error) {
	var total int64
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{f}, buf)
		total += n
		return err
	})
	return total, err
}

func TestMain(m *testing.M) {
	code := m.Run()
	if benchDir != "" {
		os.RemoveAll(benchDir)
	}
	os.Exit(code)
}

// cpuTime is the user and system CPU time of this process so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkDiskReadAll reads the image's tree from the disk (page cache warm).
func BenchmarkDiskReadAll(b *testing.B) {
	_, tree, size := benchImage(b)
	buf := make([]byte, 1<<20)
	b.SetBytes(size)
	b.ResetTimer()
	for b.Loop() {
		if n, err := readAll(tree, buf); err != nil || n != size {
			b.Fatalf("read %d of %d bytes: %v", n, size, err)
		}
	}
}

// BenchmarkImageMountReadAll reads every file of the image through the
// mount. fresh: a new mount for every iteration, so every byte is read,
// verified, decrypted if need be and decompressed by the mount (the image
// file itself is in the host page cache). kernel-cached: the same mount
// again, served from the kernel's page cache after the first pass.
func BenchmarkImageMountReadAll(b *testing.B) {
	lb, _, size := benchImage(b)
	buf := make([]byte, 1<<20)
	b.Run("fresh", func(b *testing.B) {
		b.SetBytes(size)
		var cpu time.Duration
		for b.Loop() {
			b.StopTimer()
			m := mountTestImage(b, lb, nil)
			c0 := cpuTime()
			b.StartTimer()
			if n, err := readAll(m.dir, buf); err != nil || n != size {
				b.Fatalf("read %d of %d bytes: %v", n, size, err)
			}
			b.StopTimer()
			cpu += cpuTime() - c0
			m.unmount()
			b.StartTimer()
		}
		// CPU time of this process (the mount's server and the reading
		// loop) per pass: steadier than wall time on a loaded machine.
		b.ReportMetric(float64(cpu.Milliseconds())/float64(b.N), "cpu-ms/op")
	})
	b.Run("kernel-cached", func(b *testing.B) {
		m := mountTestImage(b, lb, nil)
		if _, err := readAll(m.dir, buf); err != nil {
			b.Fatal(err)
		}
		b.SetBytes(size)
		b.ResetTimer()
		for b.Loop() {
			if n, err := readAll(m.dir, buf); err != nil || n != size {
				b.Fatalf("read %d of %d bytes: %v", n, size, err)
			}
		}
	})
}

// TestImageBenchmarks runs the image mount benchmarks once (make test).
func TestImageBenchmarks(t *testing.T) {
	veiltest.RunBenchmarksOnce(t, "ReadAll")
}
