package fusefs

import (
	"fmt"
	"github.com/veil-tee/veil/internal/veiltest"
	"io"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/veil-tee/veil/seal"
)

// Sealed mount vs the plain disk vs gocryptfs, on the same file system, in
// the same run: sequential 1 MiB I/O on a benchFile-byte file, and random
// 4 KiB I/O on it. Run with: go test ./fusefs -run '^$' -bench Mount
// (VEIL_BENCH_FILE_MIB sets the file size; default 256 MiB).
var benchFile = benchFileSize()

func benchFileSize() int64 {
	if n, err := strconv.Atoi(os.Getenv("VEIL_BENCH_FILE_MIB")); err == nil && n > 0 {
		return int64(n) << 20
	}
	return 256 << 20
}

type target struct {
	name string
	dir  string
}

// benchTargets mounts what it can under a fresh directory and returns the
// directories to write into; cleanup unmounts.
func benchTargets(b *testing.B) []target {
	b.Helper()
	if os.Geteuid() != 0 {
		veiltest.Skip(b, "needs root for FUSE")
	}
	base := b.TempDir()
	plain := filepath.Join(base, "plain")
	os.Mkdir(plain, 0o755)
	ts := []target{{"disk", plain}}

	k, _ := seal.GenerateFileKey()
	for _, wb := range []bool{false, true} {
		name := "veil-sealed"
		if wb {
			name += "-wbcache" // SealedOptions.WriteBackCache
		}
		backing, mnt := filepath.Join(base, name+"-backing"), filepath.Join(base, name)
		os.Mkdir(backing, 0o700)
		os.Mkdir(mnt, 0o700)
		srv, err := MountSealed(mnt, SealedOptions{Source: backing, Keys: k, WriteKeys: []seal.KeyWrapper{k}, MountID: seal.MountID("/bench"), WriteBackCache: wb})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { srv.Unmount() })
		ts = append(ts, target{name, mnt})
	}

	if gc, err := exec.LookPath("gocryptfs"); err == nil {
		cipher, clear := filepath.Join(base, "gc-cipher"), filepath.Join(base, "gc")
		os.Mkdir(cipher, 0o700)
		os.Mkdir(clear, 0o700)
		if out, err := exec.Command(gc, "-init", "-q", "-extpass", "echo benchpass", "-scryptn", "10", cipher).CombinedOutput(); err != nil {
			b.Fatalf("gocryptfs -init: %v %s", err, out)
		}
		if out, err := exec.Command(gc, "-q", "-extpass", "echo benchpass", cipher, clear).CombinedOutput(); err != nil {
			b.Fatalf("gocryptfs mount: %v %s", err, out)
		}
		b.Cleanup(func() {
			for i := 0; i < 50 && syscall.Unmount(clear, 0) != nil; i++ {
				time.Sleep(100 * time.Millisecond)
			}
		})
		ts = append(ts, target{"gocryptfs", clear})
	}
	return ts
}

// writeSeq writes the file in 1 MiB writes through a descriptor opened
// with flag and O_CREATE|O_TRUNC: O_WRONLY as cp, shells, Python's
// open(..., "w") and Java's FileOutputStream do, or O_RDWR as Go's
// os.Create does (the sealed mount serves the two differently).
func writeSeq(b *testing.B, path string, size int, flag int) {
	f, err := os.OpenFile(path, flag|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	for n := 0; n < size; n += len(buf) {
		if _, err := f.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
}

func BenchmarkMount(b *testing.B) {
	for _, tg := range benchTargets(b) {
		path := filepath.Join(tg.dir, "bench.bin")
		for _, w := range []struct {
			name string
			flag int
		}{{"SeqWrite", os.O_WRONLY}, {"SeqWriteRDWR", os.O_RDWR}} {
			b.Run(w.name+"/"+tg.name, func(b *testing.B) {
				b.SetBytes(benchFile)
				for b.Loop() {
					writeSeq(b, path, int(benchFile), w.flag)
				}
			})
		}
		b.Run("SeqRead/"+tg.name, func(b *testing.B) {
			if _, err := os.Stat(path); err != nil {
				writeSeq(b, path, int(benchFile), os.O_WRONLY)
			}
			b.SetBytes(benchFile)
			buf := make([]byte, 1<<20)
			for b.Loop() {
				f, err := os.Open(path)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{f}, buf); err != nil {
					b.Fatal(err)
				}
				f.Close()
			}
		})
		for _, op := range []string{"RandRead4K", "RandWrite4K"} {
			b.Run(fmt.Sprintf("%s/%s", op, tg.name), func(b *testing.B) {
				if _, err := os.Stat(path); err != nil {
					writeSeq(b, path, int(benchFile), os.O_WRONLY)
				}
				f, err := os.OpenFile(path, os.O_RDWR, 0)
				if err != nil {
					b.Fatal(err)
				}
				closed := false
				defer func() {
					if !closed {
						f.Close()
					}
				}()
				rng := mrand.New(mrand.NewPCG(1, 2))
				p := make([]byte, 4096)
				b.SetBytes(4096)
				for b.Loop() {
					off := rng.Int64N(benchFile/4096) * 4096
					if op == "RandRead4K" {
						_, err = f.ReadAt(p, off)
					} else {
						_, err = f.WriteAt(p, off)
					}
					if err != nil {
						b.Fatal(err)
					}
				}
				// What a write costs until close(2) returned: with a
				// write-back cache part of the work happens at close.
				start := time.Now()
				closed = true
				if err := f.Close(); err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(b.N)*4096/1e6/(b.Elapsed()+time.Since(start)).Seconds(), "MB/s-to-close")
			})
		}
	}
}
