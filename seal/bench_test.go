package seal

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"io"
	mrand "math/rand/v2"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"
)

const benchStream = 64 << 20

// BenchmarkRawAESGCM is the limit: Go's AES-256-GCM sealing 64 KiB buffers
// on one core, no framing, no I/O.
func BenchmarkRawAESGCM(b *testing.B) {
	block, _ := aes.NewCipher(make([]byte, 32))
	aead, _ := cipher.NewGCM(block)
	src := make([]byte, DefaultSegmentSize)
	dst := make([]byte, 0, len(src)+tagLen)
	nonce := make([]byte, nonceLen)
	b.SetBytes(int64(len(src)))
	for b.Loop() {
		dst = aead.Seal(dst[:0], nonce, src, nil)
	}
}

// BenchmarkRawAESGCMStream is the same single-core limit over the memory
// traffic of BenchmarkSeal: benchStream bytes from one buffer to another in
// 64 KiB pieces, so the data does not stay in the CPU's caches.
func BenchmarkRawAESGCMStream(b *testing.B) {
	block, _ := aes.NewCipher(make([]byte, 32))
	aead, _ := cipher.NewGCM(block)
	src := make([]byte, benchStream)
	dst := make([]byte, benchStream+benchStream/DefaultSegmentSize*tagLen)
	nonce := make([]byte, nonceLen)
	b.SetBytes(benchStream)
	for b.Loop() {
		out := dst[:0]
		for off := 0; off < benchStream; off += DefaultSegmentSize {
			out = aead.Seal(out, nonce, src[off:off+DefaultSegmentSize], nil)
		}
	}
}

// BenchmarkRawAESGCMAllCores runs the limit on every core at once.
func BenchmarkRawAESGCMAllCores(b *testing.B) {
	block, _ := aes.NewCipher(make([]byte, 32))
	aead, _ := cipher.NewGCM(block)
	b.SetBytes(DefaultSegmentSize)
	b.SetParallelism(1)
	b.RunParallel(func(pb *testing.PB) {
		src := make([]byte, DefaultSegmentSize)
		dst := make([]byte, 0, len(src)+tagLen)
		nonce := make([]byte, nonceLen)
		for pb.Next() {
			dst = aead.Seal(dst[:0], nonce, src, nil)
		}
	})
}

func BenchmarkSeal(b *testing.B) {
	k := testKey(b)
	src := make([]byte, benchStream)
	b.SetBytes(benchStream)
	b.ReportMetric(float64(runtime.GOMAXPROCS(0)), "cores")
	for b.Loop() {
		w, err := NewWriter(io.Discard, nil, k)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := w.Write(src); err != nil {
			b.Fatal(err)
		}
		if err := w.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

var benchSealedOnce sync.Once
var benchSealed []byte
var benchKey *FileKey

func sealedForBench(b *testing.B) ([]byte, *FileKey) {
	benchSealedOnce.Do(func() {
		benchKey = testKey(b)
		benchSealed = sealBytes(b, make([]byte, benchStream), nil, benchKey)
	})
	return benchSealed, benchKey
}

func BenchmarkOpen(b *testing.B) {
	sealed, k := sealedForBench(b)
	b.SetBytes(benchStream)
	b.ReportMetric(float64(runtime.GOMAXPROCS(0)), "cores")
	for b.Loop() {
		r, err := NewReader(bytes.NewReader(sealed), k, nil)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, r); err != nil {
			b.Fatal(err)
		}
		r.Close()
	}
}

func BenchmarkReadAt4K(b *testing.B) {
	sealed, k := sealedForBench(b)
	f, err := Open(memStorage(sealed), k, nil)
	if err != nil {
		b.Fatal(err)
	}
	rng := mrand.New(mrand.NewPCG(1, 1))
	p := make([]byte, 4096)
	b.SetBytes(4096)
	for b.Loop() {
		off := rng.Int64N(benchStream/4096) * 4096
		if _, err := f.ReadAt(p, off); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkWriteAt4K(b *testing.B) {
	sealed, k := sealedForBench(b)
	f, err := Open(memStorage(sealed), k, nil)
	if err != nil {
		b.Fatal(err)
	}
	randomWrites4K(b, f)
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
}

// randomWrites4K writes 4 KiB at random aligned offsets of a benchStream-byte file.
func randomWrites4K(b *testing.B, f *File) {
	rng := mrand.New(mrand.NewPCG(1, 1))
	p := make([]byte, 4096)
	b.SetBytes(4096)
	for b.Loop() {
		off := rng.Int64N(benchStream/4096) * 4096
		if _, err := f.WriteAt(p, off); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkWriteAt4KSegment: random 4 KiB in-place writes, aligned to 4 KiB,
// into a 64 MiB file by segment size. With 4 KiB segments each write
// replaces a whole segment, so the old one is neither read nor opened.
func BenchmarkWriteAt4KSegment(b *testing.B) {
	for _, seg := range []int{4 << 10, 16 << 10, 64 << 10} {
		b.Run(strconv.Itoa(seg>>10)+"K", func(b *testing.B) {
			k := testKey(b)
			f, err := Create(memStorage(nil), &Options{SegmentSize: seg}, k)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := f.WriteAt(make([]byte, benchStream), 0); err != nil {
				b.Fatal(err)
			}
			randomWrites4K(b, f)
			if err := f.Close(); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// rawAllCores seals src in DefaultSegmentSize pieces on every core at
// once (each core a contiguous share, into its own reused buffer): the
// same input traffic as BenchmarkSeal with nothing but AES-256-GCM, the
// limit of a sealing stream on this machine. open decrypts src, a stream
// of whole records as Seal writes them, the same way.
func rawAllCores(aead cipher.AEAD, src []byte, open bool) {
	cores := runtime.GOMAXPROCS(0)
	piece := DefaultSegmentSize
	if open {
		piece += tagLen
	}
	n := len(src) / piece
	var wg sync.WaitGroup
	for c := 0; c < cores; c++ {
		lo, hi := n*c/cores, n*(c+1)/cores
		wg.Go(func() {
			dst := make([]byte, 0, piece+tagLen)
			nonce := make([]byte, nonceLen)
			for i := lo; i < hi; i++ {
				p := src[i*piece : (i+1)*piece]
				if open {
					if _, err := aead.Open(dst[:0], nonce, p, nil); err != nil {
						panic(err)
					}
				} else {
					dst = aead.Seal(dst[:0], nonce, p, nil)
				}
			}
		})
	}
	wg.Wait()
}

// BenchmarkSealVsRaw alternates, in every iteration, the raw limit over
// benchStream bytes on every core and seal.Writer over the same bytes, and
// reports the Writer's speed as a fraction of the limit ("of-raw"). The
// two are timed moments apart, so on a shared machine both see the same
// load: the ratio is steadier than those of separate benchmarks.
func BenchmarkSealVsRaw(b *testing.B) {
	k := testKey(b)
	block, _ := aes.NewCipher(make([]byte, 32))
	aead, _ := cipher.NewGCM(block)
	src := make([]byte, benchStream)
	var raw, sealed time.Duration
	b.SetBytes(benchStream)
	for b.Loop() {
		t0 := time.Now()
		rawAllCores(aead, src, false)
		t1 := time.Now()
		w, err := NewWriter(io.Discard, nil, k)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := w.Write(src); err != nil {
			b.Fatal(err)
		}
		if err := w.Close(); err != nil {
			b.Fatal(err)
		}
		raw, sealed = raw+t1.Sub(t0), sealed+time.Since(t1)
	}
	b.ReportMetric(float64(raw)/float64(sealed), "of-raw")
	b.ReportMetric(float64(benchStream)*float64(b.N)/sealed.Seconds()/1e6, "MB/s-sealed")
}

// BenchmarkOpenVsRaw is BenchmarkSealVsRaw for seal.Reader: the raw limit
// opens benchStream bytes of records on every core.
func BenchmarkOpenVsRaw(b *testing.B) {
	sealed, k := sealedForBench(b)
	block, _ := aes.NewCipher(make([]byte, 32))
	aead, _ := cipher.NewGCM(block)
	recs := make([]byte, 0, benchStream+benchStream/DefaultSegmentSize*tagLen)
	nonce := make([]byte, nonceLen)
	for off := 0; off < benchStream; off += DefaultSegmentSize {
		recs = aead.Seal(recs, nonce, make([]byte, DefaultSegmentSize), nil)
	}
	// The Reader copies its input out of the io.Reader once; the raw limit
	// does not. copy-of-raw is the time of that copy (one core, into a
	// buffer already mapped) over the raw limit's: with both cores
	// decrypting and the copy overlapping them perfectly, the Reader could
	// reach at most 1/(1 + copy-of-raw/2) of the limit.
	dst := make([]byte, len(sealed))
	var raw, opened, copied time.Duration
	b.SetBytes(benchStream)
	for b.Loop() {
		t0 := time.Now()
		rawAllCores(aead, recs, true)
		t1 := time.Now()
		copy(dst, sealed)
		copied += time.Since(t1)
		t1 = time.Now()
		r, err := NewReader(bytes.NewReader(sealed), k, nil)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, r); err != nil {
			b.Fatal(err)
		}
		r.Close()
		raw, opened = raw+t1.Sub(t0), opened+time.Since(t1)
	}
	b.ReportMetric(float64(raw)/float64(opened), "of-raw")
	b.ReportMetric(float64(copied)/float64(raw), "copy-of-raw")
	b.ReportMetric(float64(benchStream)*float64(b.N)/opened.Seconds()/1e6, "MB/s-opened")
}
