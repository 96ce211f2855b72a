package fusefs

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/veil-tee/veil/seal"
)

// TestSealedMountConcurrentReadersWriters mounts a sealed directory in the
// test process (so the FUSE server runs under -race) and works it from
// many goroutines at once:
//   - four writers, each doing random writes to its own file, every write
//     followed by a read-back of the same range;
//   - two writers sharing one file through separate descriptors, each
//     owning alternate 1000-byte stripes, so that their writes land in the
//     same 16 KiB segments;
//   - four readers of a file written before, at random offsets, and of
//     the writers' files while they change (a read must never fail: a
//     torn segment would fail authentication and give EIO);
//   - one goroutine listing and stat-ing the directory.
//
// Then it unmounts, mounts again and checks every file against its model,
// and that nothing was logged as an integrity failure.
func TestSealedMountConcurrentReadersWriters(t *testing.T) {
	k := newKey(t)
	src := t.TempDir()
	opts := SealedOptions{Keys: k, WriteKeys: []seal.KeyWrapper{k}}
	m := mountSealed(t, src, opts)

	fixed := rnd(300_000)
	if err := os.WriteFile(filepath.Join(m.dir, "fixed.bin"), fixed, 0o600); err != nil {
		t.Fatal(err)
	}
	const writers, steps = 4, 120
	models := make([][]byte, writers)
	errs := make(chan error, 256)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			rng := mrand.New(mrand.NewPCG(uint64(w), 7))
			f, err := os.OpenFile(filepath.Join(m.dir, fmt.Sprintf("w%d.bin", w)), os.O_RDWR|os.O_CREATE, 0o600)
			if err != nil {
				errs <- err
				return
			}
			defer f.Close()
			var model []byte
			for step := range steps {
				off := rng.Int64N(int64(len(model)) + 40_000)
				data := rnd(1 + rng.IntN(24_000))
				if _, err := f.WriteAt(data, off); err != nil {
					errs <- fmt.Errorf("writer %d step %d: %w", w, step, err)
					return
				}
				if need := off + int64(len(data)); need > int64(len(model)) {
					model = append(model, make([]byte, need-int64(len(model)))...)
				}
				copy(model[off:], data)
				back := make([]byte, len(data))
				if _, err := f.ReadAt(back, off); err != nil || !bytes.Equal(back, data) {
					first, last := -1, -1
					for i := range back {
						if back[i] != data[i] {
							if first < 0 {
								first = i
							}
							last = i
						}
					}
					errs <- fmt.Errorf("writer %d step %d: read-back of [%d,+%d) differs in [%d,%d]: %v", w, step, off, len(data), off+int64(first), off+int64(last), err)
					return
				}
			}
			models[w] = model
		})
	}
	// Two writers interleaving stripes of one file.
	const stripe, stripes = 1000, 200
	shared := filepath.Join(m.dir, "shared.bin")
	if err := os.WriteFile(shared, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	sharedModel := make([]byte, stripe*stripes)
	for s := range 2 {
		wg.Go(func() {
			f, err := os.OpenFile(shared, os.O_WRONLY, 0)
			if err != nil {
				errs <- err
				return
			}
			defer f.Close()
			for i := s; i < stripes; i += 2 {
				b := bytes.Repeat([]byte{byte('a' + s), byte(i)}, stripe/2)
				if _, err := f.WriteAt(b, int64(i*stripe)); err != nil {
					errs <- fmt.Errorf("stripe writer %d at %d: %w", s, i, err)
					return
				}
			}
		})
		for i := s; i < stripes; i += 2 {
			copy(sharedModel[i*stripe:], bytes.Repeat([]byte{byte('a' + s), byte(i)}, stripe/2))
		}
	}
	done := make(chan struct{})
	var readers sync.WaitGroup
	for r := range 4 {
		readers.Go(func() {
			rng := mrand.New(mrand.NewPCG(uint64(r), 11))
			buf := make([]byte, 30_000)
			for i := 0; ; i++ {
				select {
				case <-done:
					return
				default:
				}
				f, err := os.Open(filepath.Join(m.dir, "fixed.bin"))
				if err != nil {
					errs <- err
					return
				}
				off := rng.Int64N(int64(len(fixed)))
				n, err := f.ReadAt(buf, off)
				f.Close()
				if (err != nil && err != io.EOF) || !bytes.Equal(buf[:n], fixed[off:off+int64(n)]) {
					errs <- fmt.Errorf("reader %d: fixed.bin at %d: %d bytes, %v", r, off, n, err)
					return
				}
				// A file that another goroutine is changing.
				name := fmt.Sprintf("w%d.bin", (r+i)%writers)
				if i%2 == 1 {
					name = "shared.bin"
				}
				g, err := os.Open(filepath.Join(m.dir, name))
				if os.IsNotExist(err) {
					continue
				}
				if err != nil {
					errs <- err
					return
				}
				for off := int64(0); ; off += int64(len(buf)) {
					_, err := g.ReadAt(buf, off)
					if err == io.EOF {
						break
					}
					if err != nil {
						errs <- fmt.Errorf("reader %d: %s at %d while written: %w", r, name, off, err)
						break
					}
				}
				g.Close()
			}
		})
	}
	readers.Go(func() {
		for {
			select {
			case <-done:
				return
			default:
			}
			err := filepath.WalkDir(m.dir, func(p string, d fs.DirEntry, err error) error {
				if err != nil {
					return err
				}
				_, err = d.Info()
				if os.IsNotExist(err) {
					return nil
				}
				return err
			})
			if err != nil {
				errs <- fmt.Errorf("listing: %w", err)
				return
			}
		}
	})
	wg.Wait()
	close(done)
	readers.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.Logf("mount log:\n%s", m.log.String())
		return
	}

	m.unmount()
	m2 := mountSealed(t, src, opts)
	for w, model := range models {
		got, err := os.ReadFile(filepath.Join(m2.dir, fmt.Sprintf("w%d.bin", w)))
		if err != nil || !bytes.Equal(got, model) {
			t.Errorf("w%d.bin after remount: %d bytes (want %d), %v", w, len(got), len(model), err)
		}
	}
	if got, err := os.ReadFile(shared); err == nil {
		t.Errorf("read through the old mount point: %d bytes", len(got))
	}
	if got, err := os.ReadFile(filepath.Join(m2.dir, "shared.bin")); err != nil || !bytes.Equal(got, sharedModel) {
		t.Errorf("shared.bin after remount: %d bytes, %v; a stripe of one writer was lost to the other", len(got), err)
	}
	if got, err := os.ReadFile(filepath.Join(m2.dir, "fixed.bin")); err != nil || !bytes.Equal(got, fixed) {
		t.Errorf("fixed.bin after remount: %v", err)
	}
	if l := m.log.String() + m2.log.String(); l != "" {
		t.Errorf("the mounts logged: %s", l)
	}
}

// TestSealedMountCreatedFileIsOneNode: a file created through the mount
// and still open is the same node when its name is looked up again (after
// the kernel dropped its entry): opening it again sees the writes not yet
// committed to the backing file, and stat reports their size. With two
// nodes, the second would open the backing file on its own and see an
// older (or torn) state.
func TestSealedMountCreatedFileIsOneNode(t *testing.T) {
	k := newKey(t)
	m := mountSealed(t, t.TempDir(), SealedOptions{Keys: k, WriteKeys: []seal.KeyWrapper{k}})
	p := filepath.Join(m.dir, "x")
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data := rnd(100_000)
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	for round := range 3 {
		// Make the kernel forget the name: the next open looks it up.
		if st := m.srv.EntryNotify(1, "x"); st != fuse.OK {
			t.Fatalf("EntryNotify: %v", st)
		}
		fi, err := os.Stat(p)
		if err != nil || fi.Size() != int64(len(data)) {
			t.Fatalf("round %d: stat after lookup: %v %v, want size %d", round, fi, err, len(data))
		}
		got, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("round %d: a second open reads %d bytes, %v; want the %d written through the first", round, len(got), err, len(data))
		}
		more := rnd(5000)
		if _, err := f.Write(more); err != nil {
			t.Fatal(err)
		}
		data = append(data, more...)
	}
	if l := m.log.String(); l != "" {
		t.Errorf("the mount logged: %s", l)
	}
}

// TestImageMountConcurrentTreeWalks: several goroutines compare the whole
// mounted image tree with its source at once (lookups, stat, readdir,
// readlink and reads interleaved), with fewer open image files allowed
// than files read at once, while another goroutine keeps making the
// kernel forget the top-level entries so lookups run again mid-walk.
// Every walk sees the source tree. Run under -race.
func TestImageMountConcurrentTreeWalks(t *testing.T) {
	var src string
	b := buildTestImage(t, func(dir string) { writeImageTree(t, dir); src = filepath.Join(dir, "image") }, "", nil)
	m := mountTestImage(t, b, nil, 3)
	tops, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var churn sync.WaitGroup
	churn.Go(func() {
		for {
			for _, e := range tops {
				select {
				case <-done:
					return
				default:
				}
				m.srv.EntryNotify(1, e.Name())
			}
		}
	})
	var wg sync.WaitGroup
	counts := make([]int, 4)
	for g := range counts {
		wg.Go(func() {
			for range 3 {
				counts[g] += compareTrees(t, src, m.dir)
			}
		})
	}
	wg.Wait()
	close(done)
	churn.Wait()
	for g, n := range counts {
		if n != counts[0] || n < 3*len(tops) {
			t.Fatalf("walker %d saw %d entries, walker 0 %d", g, n, counts[0])
		}
	}
	if l := m.log.String(); l != "" {
		t.Errorf("the mount logged: %s", l)
	}
}
