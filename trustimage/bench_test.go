package trustimage

import (
	"context"
	"crypto/sha256"
	"github.com/veil-tee/veil/internal/veiltest"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/veil-tee/veil/bom"
	"github.com/veil-tee/veil/config"
)

// pandasInstance makes an instance whose BOM is Debian's python3 with
// numpy and pandas; it skips when they are not installed.
func pandasInstance(b *testing.B) (string, []bom.Entry, int64) {
	dir, ents := pandasDir(b)
	var n int64
	for _, e := range ents {
		n += e.Size
	}
	return dir, ents, n
}

func pandasDir(b testing.TB) (string, []bom.Entry) {
	if _, err := os.Stat("/usr/lib/python3/dist-packages/pandas"); err != nil {
		veiltest.Skip(b, "python3-pandas not installed")
	}
	dir := b.TempDir()
	os.MkdirAll(filepath.Join(dir, "image/app"), 0o755)
	os.WriteFile(filepath.Join(dir, "image/app/job.py"), []byte("import pandas\n"), 0o644)
	os.WriteFile(filepath.Join(dir, config.FileName), []byte(`{"entrypoints": ["/"], "bom": {"include": ["debian/python3-pandas"]}}`), 0o644)
	cfg, err := config.Load(filepath.Join(dir, config.FileName))
	if err != nil {
		b.Fatal(err)
	}
	res, err := bom.Plan(filepath.Join(dir, "image"), cfg.BOM, bom.Options{})
	if err != nil {
		b.Fatal(err)
	}
	ents := res.Entries
	return dir, ents
}

func benchBuild(b *testing.B, opts Options) {
	dir, _, n := pandasInstance(b)
	k, _ := GenerateSignKey()
	opts.SignKey = k
	b.SetBytes(n)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		os.RemoveAll(filepath.Join(dir, "build")) // no cache: a full build
		b.StartTimer()
		cpu0 := cpuTime()
		_, st, err := Build(context.Background(), dir, opts)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric((cpuTime() - cpu0).Seconds(), "cpu-s")
		b.ReportMetric(st.PlanTime.Seconds(), "plan-s")
		b.ReportMetric(st.PackTime.Seconds(), "pack-s")
		b.ReportMetric(st.TreeTime.Seconds(), "tree-s")
		b.ReportMetric(st.SyncTime.Seconds(), "sync-s")
	}
}

// BenchmarkBuildPandas is a full build of the python3+numpy+pandas image.
func BenchmarkBuildPandas(b *testing.B)     { benchBuild(b, Options{}) }
func BenchmarkBuildPandasNone(b *testing.B) { benchBuild(b, Options{Compression: CompressNone}) }
func BenchmarkBuildPandasEncrypted(b *testing.B) {
	benchBuild(b, Options{ImageKey: make([]byte, 32)})
}

// BenchmarkRebuildPandas rebuilds with unchanged inputs.
func BenchmarkRebuildPandas(b *testing.B) {
	dir, _, n := pandasInstance(b)
	k, _ := GenerateSignKey()
	if _, _, err := Build(context.Background(), dir, Options{SignKey: k}); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(n)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		_, st, err := Build(context.Background(), dir, Options{SignKey: k})
		if err != nil || !st.Reused {
			b.Fatalf("rebuild: reused=%v err=%v", st != nil && st.Reused, err)
		}
	}
}

// BenchmarkSHA256Pandas hashes the same input bytes: the hashing limit.
func BenchmarkSHA256Pandas(b *testing.B) {
	_, ents, n := pandasInstance(b)
	b.SetBytes(n)
	buf := make([]byte, 1<<20)
	cpu0 := cpuTime()
	defer func() { b.ReportMetric((cpuTime()-cpu0).Seconds()/float64(b.N), "cpu-s") }()
	for i := 0; i < b.N; i++ {
		h := sha256.New()
		for _, e := range ents {
			if e.Kind != bom.File {
				continue
			}
			f, err := os.Open(e.Source)
			if err != nil {
				b.Fatal(err)
			}
			io.CopyBuffer(h, f, buf)
			f.Close()
		}
		h.Sum(nil)
	}
}

// BenchmarkPlanPandas is the planning step alone (walks, ELF resolution).
func BenchmarkPlanPandas(b *testing.B) {
	dir, _, n := pandasInstance(b)
	cfg, _ := config.Load(filepath.Join(dir, config.FileName))
	b.SetBytes(n)
	for i := 0; i < b.N; i++ {
		if _, err := bom.Plan(filepath.Join(dir, "image"), cfg.BOM, bom.Options{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReaderReadAt reads the pandas image through the verifying (and
// decrypting) Reader in 128 KiB requests, as a FUSE mount would.
func BenchmarkReaderReadAt(b *testing.B) {
	for _, enc := range []bool{false, true} {
		name := "plain"
		var key []byte
		if enc {
			name, key = "encrypted", make([]byte, 32)
		}
		b.Run(name, func(b *testing.B) {
			dir, _, _ := pandasInstance(b)
			k, _ := GenerateSignKey()
			lb, _, err := Build(context.Background(), dir, Options{SignKey: k, ImageKey: key})
			if err != nil {
				b.Fatal(err)
			}
			r, err := lb.Open(key)
			if err != nil {
				b.Fatal(err)
			}
			defer r.Close()
			buf := make([]byte, 128<<10)
			b.SetBytes(r.Size())
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				for off := int64(0); off < r.Size(); off += int64(len(buf)) {
					if _, err := r.ReadAt(buf, off); err != nil && err != io.EOF {
						b.Fatal(err)
					}
				}
			}
		})
	}
}

// cpuTime is the user and system time of this process and of its children
// waited for (mksquashfs): on a loaded machine, the work a build does
// where its wall time measures the load.
func cpuTime() time.Duration {
	var total time.Duration
	for _, who := range []int{syscall.RUSAGE_SELF, syscall.RUSAGE_CHILDREN} {
		var ru syscall.Rusage
		if syscall.Getrusage(who, &ru) == nil {
			total += time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		}
	}
	return total
}
