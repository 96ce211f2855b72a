package trustimage

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"github.com/veil-tee/veil/internal/veiltest"
	"io"
	"io/fs"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/veil-tee/veil/config"
)

const smallConfig = `{
  "entrypoints": ["/app/"],
  "metadata": {"product_id": 7, "svn": 1, "debuggable": false}%s
}`

func needTool(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		veiltest.Skip(t, "%s not installed", name)
	}
}

// newInstance writes an instance directory with files (path -> content)
// under image/ and veil.json (extra is appended inside the object).
func newInstance(t *testing.T, dir, extra string, files map[string]string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, "image"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, config.FileName), []byte(strings.Replace(smallConfig, "%s", extra, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	for p, c := range files {
		hp := filepath.Join(dir, "image", p)
		os.MkdirAll(filepath.Dir(hp), 0o755)
		if err := os.WriteFile(hp, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

var testFiles = map[string]string{
	"app/noise.bin":             noise(64 << 10),
	"app/job.py":                "print('hello')\n",
	"app/zebra-unique-name.txt": strings.Repeat("TOPSECRETCONTENT ", 2000),
	"etc/empty":                 "",
}

// noise returns n deterministic incompressible bytes.
func noise(n int) string {
	r := mrand.New(mrand.NewPCG(1, 2))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return string(b)
}

var sharedKey *SignKey

func signKey(t *testing.T) *SignKey {
	if sharedKey == nil {
		k, err := GenerateSignKey()
		if err != nil {
			t.Fatal(err)
		}
		sharedKey = k
	}
	return sharedKey
}

func build(t *testing.T, dir string, key []byte) (*LoadedBuild, *Stats) {
	t.Helper()
	return buildWith(t, dir, Options{SignKey: signKey(t), ImageKey: key})
}

func buildWith(t *testing.T, dir string, opts Options) (*LoadedBuild, *Stats) {
	t.Helper()
	b, st, err := Build(context.Background(), dir, opts)
	if err != nil {
		t.Fatalf("building %s: %v", dir, err)
	}
	return b, st
}

func TestBuildReproducible(t *testing.T) {
	needTool(t, "mksquashfs")
	a, b := t.TempDir(), t.TempDir()
	newInstance(t, a, "", testFiles)
	newInstance(t, b, "", testFiles)
	// Different mtimes and permissions of the root: must not matter.
	old := time.Unix(1e9, 0)
	filepath.WalkDir(filepath.Join(b, "image"), func(p string, d fs.DirEntry, err error) error {
		return os.Chtimes(p, old, old)
	})
	ba, _ := build(t, a, nil)
	bb, _ := build(t, b, nil)
	if ba.Measurement != bb.Measurement {
		t.Fatalf("measurements differ: %x vs %x", ba.Measurement, bb.Measurement)
	}
	ia, _ := os.ReadFile(ba.ImagePath)
	ib, _ := os.ReadFile(bb.ImagePath)
	if !bytes.Equal(ia, ib) {
		t.Fatal("image files differ")
	}
	// A content change changes the measurement.
	os.WriteFile(filepath.Join(b, "image/app/job.py"), []byte("print('hello')\nx\n"), 0o644)
	bc, st := build(t, b, nil)
	if st.Reused || bc.Measurement == ba.Measurement {
		t.Fatalf("content change: reused=%v, measurement unchanged=%v", st.Reused, bc.Measurement == ba.Measurement)
	}
	// A mode change too.
	os.Chmod(filepath.Join(b, "image/app/job.py"), 0o755)
	bd, _ := build(t, b, nil)
	if bd.Measurement == bc.Measurement {
		t.Fatal("mode change did not change the measurement")
	}
}

func TestRebuildReusesVerifiedImage(t *testing.T) {
	needTool(t, "mksquashfs")
	dir := t.TempDir()
	newInstance(t, dir, "", testFiles)
	b1, st1 := build(t, dir, nil)
	if st1.Reused {
		t.Fatal("first build reused something")
	}
	b2, st2 := build(t, dir, nil)
	if !st2.Reused || b2.Measurement != b1.Measurement {
		t.Fatalf("rebuild: reused=%v same=%v", st2.Reused, b2.Measurement == b1.Measurement)
	}
	// Touching a file (same content) misses the cache but gives the same image.
	now := time.Now().Add(time.Hour)
	os.Chtimes(filepath.Join(dir, "image/app/job.py"), now, now)
	b3, st3 := build(t, dir, nil)
	if st3.Reused || b3.Measurement != b1.Measurement {
		t.Fatalf("after touch: reused=%v same=%v", st3.Reused, b3.Measurement == b1.Measurement)
	}
	// A corrupted previous image is not reused.
	corrupt(t, b3.ImagePath, 5)
	b4, st4 := build(t, dir, nil)
	if st4.Reused {
		t.Fatal("a corrupted image was reused")
	}
	r, err := b4.Open(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.Verify(context.Background(), nil); err != nil {
		t.Fatalf("rebuilt image does not verify: %v", err)
	}
}

func corrupt(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	f.ReadAt(b, off)
	b[0] ^= 0x40
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func TestTamperDetection(t *testing.T) {
	needTool(t, "mksquashfs")
	dir := t.TempDir()
	newInstance(t, dir, "", testFiles)
	b, _ := build(t, dir, nil)
	clean, _ := os.ReadFile(b.ImagePath)
	restore := func() { os.WriteFile(b.ImagePath, clean, 0o644) }
	info := b.Record.Image

	// A data byte: Verify and ReadAt name the block.
	off := int64(BlockSize + 100)
	corrupt(t, b.ImagePath, off)
	r, err := b.Open(nil)
	if err != nil {
		t.Fatal(err)
	}
	var be *BlockError
	if err := r.Verify(context.Background(), nil); !errors.As(err, &be) || be.Block != 1 || be.Area != "data" || !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Verify after data corruption: %v", err)
	}
	if _, err := r.ReadAt(make([]byte, 10), off-50); !errors.As(err, &be) || be.Block != 1 {
		t.Fatalf("ReadAt of a corrupted block: %v", err)
	}
	// Other blocks still read.
	if _, err := r.ReadAt(make([]byte, 10), 0); err != nil {
		t.Fatalf("ReadAt of a good block: %v", err)
	}
	r.Close()
	restore()

	// A hash tree byte and the superblock: Open fails naming the block.
	for _, tc := range []struct {
		off  int64
		area string
	}{
		{info.HashOffset + BlockSize + 7, "hash tree"},
		{info.HashOffset + 72, "verity superblock"},
	} {
		corrupt(t, b.ImagePath, tc.off)
		_, err := b.Open(nil)
		if !errors.As(err, &be) || be.Area != tc.area || be.Block != uint64(tc.off/BlockSize) {
			t.Errorf("corrupting %s at %d: %v", tc.area, tc.off, err)
		}
		restore()
	}
	// Truncation.
	os.Truncate(b.ImagePath, info.Size-1)
	if _, err := b.Open(nil); !errors.Is(err, ErrCorrupt) {
		t.Errorf("truncated image: %v", err)
	}
	restore()

	// The record: a changed signed field breaks the signature.
	recPath := filepath.Join(dir, "build", RecordFile)
	recData, _ := os.ReadFile(recPath)
	os.WriteFile(recPath, bytes.Replace(recData, []byte(`"svn": 1`), []byte(`"svn": 2`), 1), 0o644)
	if _, err := LoadBuild(dir); !errors.Is(err, ErrBadSignature) {
		t.Errorf("record with changed svn: %v", err)
	}
	// A changed root hash in the record breaks the measurement/signature.
	forged := bytes.Replace(recData, []byte(info.RootHash), []byte(strings.Repeat("0", 64)), 1)
	os.WriteFile(recPath, forged, 0o644)
	if _, err := LoadBuild(dir); !errors.Is(err, ErrConfigChanged) {
		t.Errorf("record with changed root hash: %v", err)
	}
	os.WriteFile(recPath, recData, 0o644)

	// veil.json: a measured change is caught, an unmeasured one is not.
	cfgPath := filepath.Join(dir, config.FileName)
	cfg, _ := os.ReadFile(cfgPath)
	os.WriteFile(cfgPath, bytes.Replace(cfg, []byte(`"/app/"`), []byte(`"/"`), 1), 0o644)
	if _, err := LoadBuild(dir); !errors.Is(err, ErrConfigChanged) {
		t.Errorf("changed entrypoints: %v", err)
	}
	os.WriteFile(cfgPath, bytes.Replace(cfg, []byte(`"debuggable": false}`), []byte(`"debuggable": false}, "bom": {"exclude": ["x"]}`), 1), 0o644)
	if _, err := LoadBuild(dir); err != nil {
		t.Errorf("unmeasured bom change rejected: %v", err)
	}
	os.WriteFile(cfgPath, cfg, 0o644)
	if _, err := LoadBuild(dir); err != nil {
		t.Fatal(err)
	}
}

func readAll(t *testing.T, r *Reader) []byte {
	t.Helper()
	b, err := io.ReadAll(io.NewSectionReader(r, 0, r.Size()))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestEncryptedImage(t *testing.T) {
	needTool(t, "mksquashfs")
	key := make([]byte, 32)
	rand.Read(key)
	plainDir, encDir := t.TempDir(), t.TempDir()
	newInstance(t, plainDir, "", testFiles)
	newInstance(t, encDir, "", testFiles)
	// Uncompressed, so that names and contents would be visible without
	// encryption (the control below).
	pb, _ := buildWith(t, plainDir, Options{SignKey: signKey(t), Compression: CompressNone})
	eb, _ := buildWith(t, encDir, Options{SignKey: signKey(t), Compression: CompressNone, ImageKey: key})
	if !eb.Encrypted() || pb.Encrypted() {
		t.Fatal("encryption flag wrong")
	}
	if pb.Measurement == eb.Measurement {
		t.Fatal("encrypted and plain builds have one measurement")
	}
	plainImg, _ := os.ReadFile(pb.ImagePath)
	encImg, _ := os.ReadFile(eb.ImagePath)
	for _, s := range []string{"zebra-unique-name", "job.py", "TOPSECRETCONTENT", "hsqs"} {
		if !bytes.Contains(plainImg, []byte(s)) {
			t.Errorf("control: plain image lacks %q", s)
		}
		if bytes.Contains(encImg, []byte(s)) {
			t.Errorf("encrypted image reveals %q", s)
		}
	}
	// The key opens it and reads the same squashfs as the plain build.
	er, err := eb.Open(key)
	if err != nil {
		t.Fatal(err)
	}
	defer er.Close()
	pr, err := pb.Open(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	if !bytes.Equal(readAll(t, er), readAll(t, pr)) {
		t.Fatal("decrypted image differs from the plain one")
	}
	// Wrong key, no key.
	bad := bytes.Clone(key)
	bad[0] ^= 1
	if _, err := eb.Open(bad); !errors.Is(err, ErrWrongKey) {
		t.Errorf("wrong key: %v", err)
	}
	nk, err := eb.Open(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nk.ReadAt(make([]byte, 1), 0); !errors.Is(err, ErrNoKey) {
		t.Errorf("read without key: %v", err)
	}
	if err := nk.Verify(context.Background(), nil); err != nil {
		t.Errorf("verify without key: %v", err)
	}
	nk.Close()
	// Tampering with ciphertext is caught before decryption.
	corrupt(t, eb.ImagePath, 3*BlockSize+1)
	er2, err := eb.Open(key)
	if err != nil {
		t.Fatal(err)
	}
	var be *BlockError
	if _, err := er2.ReadAt(make([]byte, BlockSize), 3*BlockSize); !errors.As(err, &be) || be.Block != 3 {
		t.Errorf("tampered ciphertext: %v", err)
	}
	er2.Close()

	// Same key, different content: different subkeys, so the keystreams
	// differ (XOR of ciphertexts is not XOR of plaintexts).
	newInstance(t, encDir, "", map[string]string{"app/job.py": "print('other')\n"})
	eb2, _ := buildWith(t, encDir, Options{SignKey: signKey(t), Compression: CompressNone, ImageKey: key})
	if eb2.Record.Image.Encryption.KeySalt == eb.Record.Image.Encryption.KeySalt {
		t.Fatal("two contents share a key salt")
	}
	enc2, _ := os.ReadFile(eb2.ImagePath)
	r2, _ := eb2.Open(key)
	plain2 := readAll(t, r2)
	r2.Close()
	plain1 := readAll(t, pr)
	n := min(len(plain1), len(plain2), 4*BlockSize)
	same := 0
	for i := 0; i < n; i++ {
		if encImg[i]^enc2[i] == plain1[i]^plain2[i] {
			same++
		}
	}
	if same > n/2 {
		t.Fatalf("keystream reused across images: %d of %d bytes", same, n)
	}
	// Reproducible: the same content and key give the same image.
	newInstance(t, plainDir, "", nil)
	again, _ := buildWith(t, plainDir, Options{SignKey: signKey(t), Compression: CompressNone, ImageKey: key})
	if again.Measurement != eb.Measurement {
		t.Fatal("encrypted build is not reproducible")
	}
}

func TestFailedBuildKeepsPrevious(t *testing.T) {
	needTool(t, "mksquashfs")
	dir := t.TempDir()
	newInstance(t, dir, "", testFiles)
	b, _ := build(t, dir, nil)
	rec, _ := os.ReadFile(filepath.Join(dir, "build", RecordFile))
	host := filepath.Join(t.TempDir(), "pinned")
	os.WriteFile(host, []byte("content"), 0o644)
	cases := map[string]struct {
		extra string
		want  error
	}{
		"pin mismatch": {`, "bom": {"copy": [{"from": "` + host + `", "to": "/app/p", "sha256": "` + strings.Repeat("ab", 32) + `"}]}`, ErrPinMismatch},
		"missing file": {`, "bom": {"copy": [{"from": "/nonexistent/veil-test"}]}`, errMissingAny},
		"bad config":   {`, "bogus": 1`, config.ErrInvalid},
	}
	for name, tc := range cases {
		newInstance(t, dir, tc.extra, nil)
		_, _, err := Build(context.Background(), dir, Options{SignKey: signKey(t)})
		if err == nil || (tc.want != errMissingAny && !errors.Is(err, tc.want)) {
			t.Errorf("%s: got %v, want %v", name, err, tc.want)
		}
		now, _ := os.ReadFile(filepath.Join(dir, "build", RecordFile))
		if !bytes.Equal(now, rec) {
			t.Errorf("%s: previous build record changed", name)
		}
	}
	newInstance(t, dir, "", nil)
	if _, err := LoadBuild(dir); err != nil {
		t.Fatalf("previous build no longer loads: %v", err)
	}
	r, err := b.Open(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Verify(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	r.Close()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".build") {
			t.Errorf("leftover %s", e.Name())
		}
	}
	// A correct pin passes.
	sum := "ed7002b439e9ac845f22357d822bac1444730fbdb6016d3ec9432297b9ec9f73"
	newInstance(t, dir, `, "bom": {"copy": [{"from": "`+host+`", "to": "/app/p", "sha256": "`+sum+`"}]}`, nil)
	if _, _, err := Build(context.Background(), dir, Options{SignKey: signKey(t)}); err != nil {
		t.Fatalf("correct pin: %v", err)
	}
}

var errMissingAny = errors.New("any error")

func TestKeyFiles(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "sign.pem")
	k, err := WriteSignKey(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Errorf("sign key mode %v", fi.Mode().Perm())
	}
	if _, err := WriteSignKey(p); err == nil {
		t.Error("overwrote a signing key")
	}
	k2, err := LoadSignKey(p)
	if err != nil || k2.MrSigner() != k.MrSigner() {
		t.Fatalf("reloading: %v", err)
	}
	if _, err := ParseSignKey([]byte("junk")); !errors.Is(err, ErrBadKey) {
		t.Errorf("junk key: %v", err)
	}
	ip := filepath.Join(dir, "image.key")
	if err := WriteImageKey(ip); err != nil {
		t.Fatal(err)
	}
	if key, err := LoadImageKey(ip); err != nil || len(key) != 32 {
		t.Fatalf("image key: %v", err)
	}
	os.Chmod(ip, 0o644)
	if _, err := LoadImageKey(ip); !errors.Is(err, ErrBadKey) {
		t.Errorf("world-readable image key accepted: %v", err)
	}
	// mrsigner is SHA-256 of the DER SubjectPublicKeyInfo (12-byte prefix
	// + 32-byte Ed25519 key).
	der := k.PublicKeyDER()
	if len(der) != 44 || hex.EncodeToString(der[:12]) != "302a300506032b6570032100" {
		t.Fatalf("unexpected SPKI encoding %x", der)
	}
}

// TestEmptyImage builds an empty image/ (one data block, no hash block).
func TestEmptyImage(t *testing.T) {
	needTool(t, "mksquashfs")
	dir := t.TempDir()
	newInstance(t, dir, "", nil)
	b, _ := build(t, dir, nil)
	if b.Record.Image.DataBlocks != 1 {
		t.Fatalf("empty image has %d data blocks", b.Record.Image.DataBlocks)
	}
	r, err := b.Open(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.Verify(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	corrupt(t, b.ImagePath, 10)
	if err := r.Verify(context.Background(), nil); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("corrupted single block: %v", err)
	}
}

// TestDiskFull builds on a small tmpfs: a build that does not fit fails
// with one clear error, leaves no temporary directory and keeps the
// previous build. It needs permission to mount (root).
func TestDiskFull(t *testing.T) {
	needTool(t, "mksquashfs")
	mnt := t.TempDir()
	if err := exec.Command("mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", mnt).Run(); err != nil {
		veiltest.Skip(t, "cannot mount a tmpfs: %v", err)
	}
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	dir := filepath.Join(mnt, "app")
	newInstance(t, dir, "", map[string]string{"app/job.py": "print(1)\n"})
	b, _ := build(t, dir, nil)
	rec, _ := os.ReadFile(filepath.Join(dir, "build", RecordFile))
	// Incompressible content larger than the space left.
	big := filepath.Join(t.TempDir(), "big")
	os.WriteFile(big, []byte(noise(4<<20)), 0o644)
	newInstance(t, dir, `, "bom": {"copy": [{"from": "`+big+`", "to": "/app/big"}]}`, nil)
	_, _, err := Build(context.Background(), dir, Options{SignKey: signKey(t), Compression: CompressNone})
	if err == nil {
		t.Fatal("build on a full disk succeeded")
	}
	t.Logf("disk full error: %v", err)
	if now, _ := os.ReadFile(filepath.Join(dir, "build", RecordFile)); !bytes.Equal(now, rec) {
		t.Fatal("previous build record changed")
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".build") {
			t.Errorf("leftover %s", e.Name())
		}
	}
	newInstance(t, dir, "", nil)
	r, err := b.Open(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.Verify(context.Background(), nil); err != nil {
		t.Fatalf("previous image damaged: %v", err)
	}
}

// TestLocateNamesFile corrupts a block inside a known file and checks that
// Locate names that file.
func TestLocateNamesFile(t *testing.T) {
	needTool(t, "mksquashfs")
	dir := t.TempDir()
	files := map[string]string{"app/job.py": "print(1)\n", "app/big.bin": noise(300 << 10)}
	newInstance(t, dir, "", files)
	b, _ := buildWith(t, dir, Options{SignKey: signKey(t), Compression: CompressNone})
	img, _ := os.ReadFile(b.ImagePath)
	off := bytes.Index(img, []byte(files["app/big.bin"][:64]))
	if off < 0 {
		t.Fatal("big.bin not found in the uncompressed image")
	}
	// A block in big.bin's first full squashfs data block (not a fragment).
	off += 5 * BlockSize
	corrupt(t, b.ImagePath, int64(off))
	r, err := b.Open(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var be *BlockError
	if err := r.Verify(context.Background(), nil); !errors.As(err, &be) {
		t.Fatalf("verify: %v", err)
	}
	if got := r.Locate(be.Block); got != "/app/big.bin" {
		t.Fatalf("Locate(%d) = %q", be.Block, got)
	}
	// The superblock of the file system itself.
	restore, _ := os.ReadFile(b.ImagePath)
	restore[off] ^= 0x40
	os.WriteFile(b.ImagePath, restore, 0o644)
	corrupt(t, b.ImagePath, 3)
	r2, _ := b.Open(nil)
	defer r2.Close()
	if got := r2.Locate(0); !strings.HasPrefix(got, "squashfs metadata") {
		t.Fatalf("Locate(0) = %q", got)
	}
}

// TestReaderConcurrent reads one image from several goroutines (run with
// -race) and compares with a sequential read.
func TestReaderConcurrent(t *testing.T) {
	needTool(t, "mksquashfs")
	key := make([]byte, 32)
	rand.Read(key)
	dir := t.TempDir()
	newInstance(t, dir, "", testFiles)
	b, _ := build(t, dir, key)
	r, err := b.Open(key)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	want := readAll(t, r)
	errs := make(chan error, 4)
	for g := 0; g < 4; g++ {
		go func(g int) {
			buf := make([]byte, 1000+g*777)
			for off := int64(g * 13); off < r.Size(); off += int64(len(buf)) {
				n, err := r.ReadAt(buf, off)
				if err != nil && err != io.EOF {
					errs <- err
					return
				}
				if !bytes.Equal(buf[:n], want[off:off+int64(n)]) {
					errs <- errors.New("concurrent read differs")
					return
				}
			}
			errs <- nil
		}(g)
	}
	for g := 0; g < 4; g++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// TestBuildRecordsLoads: a build that resolves a program's libraries
// records what the loader opens for it; the record is measured, so an
// edited closure in build.json no longer loads.
func TestBuildRecordsLoads(t *testing.T) {
	needTool(t, "mksquashfs")
	const prog = "/usr/bin/dash"
	if _, err := os.Stat(prog); err != nil {
		veiltest.Skip(t, "no %s", prog)
	}
	dir := t.TempDir()
	newInstance(t, dir, `, "bom": {"copy": [{"from": "`+prog+`"}]}`, nil)
	b, _ := build(t, dir, nil)
	loads := b.Record.Image.Loads[prog]
	if len(loads) < 2 || !strings.Contains(loads[0], "ld-linux") {
		t.Fatalf("loads of %s: %v", prog, b.Record.Image.Loads)
	}
	path := filepath.Join(dir, "build", RecordFile)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Drop the last library from the closure (the rest of the record,
	// signature included, unchanged).
	rec, err := ParseRecord(data)
	if err != nil {
		t.Fatal(err)
	}
	rec.Image.Loads[prog] = loads[:len(loads)-1]
	edited, err := rec.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, edited, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadBuild(dir); !errors.Is(err, ErrConfigChanged) {
		t.Fatalf("edited loads: %v", err)
	}
}
