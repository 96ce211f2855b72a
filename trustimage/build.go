package trustimage

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/veil-tee/veil/bom"
	"github.com/veil-tee/veil/config"
	"github.com/veil-tee/veil/internal/fsutil"
	"golang.org/x/sys/unix"
)

// Build errors.
var (
	ErrPinMismatch  = errors.New("sha256 pin does not match")
	ErrMksquashfs   = errors.New("mksquashfs failed")
	ErrInputChanged = errors.New("input file changed during the build")
)

// Compression settings for the squashfs layer.
const (
	CompressZstd = "zstd" // zstd level 1: 6 % larger images than level 3 for 35 % less CPU
	CompressNone = "none" // no compression: fastest builds, largest images
)

// DefaultCompression is used when Options.Compression is empty.
const DefaultCompression = CompressZstd

// Options configure Build.
type Options struct {
	SignKey     *SignKey // required
	ImageKey    []byte   // nil: plain image; else 32 bytes, the image is encrypted
	Compression string   // CompressZstd (default) or CompressNone
	Mksquashfs  string   // path of mksquashfs; default: looked up in PATH
	BOM         bom.Options
	// Progress, if set, is called with bytes done and the expected total.
	Progress func(done, total int64)
}

// Stats describe a finished build.
type Stats struct {
	Reused       bool // the previous image was verified and reused
	Files        int
	ContentBytes int64 // bytes of regular files
	ImageBytes   int64 // size of the image file
	Duration     time.Duration
	// Phases of a full build: planning, packing (streaming the inputs
	// through mksquashfs) and the hash tree (with encryption, and the
	// fsync of the image, SyncTime of it).
	PlanTime, PackTime, TreeTime, SyncTime time.Duration
}

func mksquashfsArgs(compression string) ([]string, error) {
	args := []string{"-tar", "-noappend", "-reproducible", "-mkfs-time", "0", "-all-time", "0",
		"-all-root", "-root-mode", "0755", "-no-xattrs", "-no-progress", "-quiet"}
	switch compression {
	case CompressZstd:
		args = append(args, "-comp", "zstd", "-Xcompression-level", "1")
	case CompressNone:
		args = append(args, "-noI", "-noD", "-noF", "-noX")
	default:
		return nil, fmt.Errorf("compression %q is not supported (want %s or %s)", compression, CompressZstd, CompressNone)
	}
	return args, nil
}

// Build builds the instance in dir: it reads dir/veil.json, plans the image
// from dir/image and the BOM, packs it with mksquashfs, (optionally)
// encrypts it, appends the dm-verity hash tree, measures and signs it, and
// replaces dir/build atomically. On any error dir/build is left as it was.
func Build(ctx context.Context, dir string, opts Options) (*LoadedBuild, *Stats, error) {
	start := time.Now()
	if opts.SignKey == nil {
		return nil, nil, errors.New("building: no signing key")
	}
	if opts.ImageKey != nil && len(opts.ImageKey) != ImageKeySize {
		return nil, nil, fmt.Errorf("building: %w: image key must be %d bytes", ErrBadKey, ImageKeySize)
	}
	if opts.Compression == "" {
		opts.Compression = DefaultCompression
	}
	sqArgs, err := mksquashfsArgs(opts.Compression)
	if err != nil {
		return nil, nil, err
	}
	cfg, err := config.Load(filepath.Join(dir, config.FileName))
	if err != nil {
		return nil, nil, err
	}
	planned, err := bom.Plan(filepath.Join(dir, "image"), cfg.BOM, opts.BOM)
	if err != nil {
		return nil, nil, fmt.Errorf("planning the image: %w", err)
	}
	entries := planned.Entries
	if entries, err = addRuntimeDirs(entries, cfg); err != nil {
		return nil, nil, fmt.Errorf("planning the image: %w", err)
	}
	if cfg.BOM.PythonBytecode {
		// Kept beside veil.json (like the build cache), out of build/.
		if entries, _, err = addBytecode(ctx, entries, filepath.Join(dir, bytecodeDir)); err != nil {
			return nil, nil, err
		}
	}
	st := &Stats{PlanTime: time.Since(start)}
	for _, e := range entries {
		if e.Kind == bom.File {
			st.Files++
			st.ContentBytes += e.Size
		}
	}
	buildDir := filepath.Join(dir, "build")
	cachePath := filepath.Join(dir, cacheFile)
	cache := loadCache(cachePath)
	tmp, err := os.MkdirTemp(dir, ".build.tmp-")
	if err != nil {
		return nil, nil, fmt.Errorf("creating the build directory: %w", err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		os.RemoveAll(tmp)
		return nil, nil, err
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(tmp)
		}
	}()
	keyID := ""
	if opts.ImageKey != nil {
		keyID = KeyID(opts.ImageKey)
	}
	settings := "compression=" + opts.Compression + ";key=" + keyID
	newCache := &buildCache{Settings: settings, Files: map[string]cacheEntry{}}

	var info *ImageInfo
	// Fast path: every input unchanged since the last build.
	if digest, hit := cache.digest(entries, newCache); hit && cache.Settings == settings && digest == cache.Digest {
		if prev, err := reusePrevious(buildDir, tmp, opts.ImageKey, cache.RootHash); err == nil {
			info = prev
			st.Reused = true
			newCache.Digest = digest
		}
	}
	if info == nil {
		newCache.Files = map[string]cacheEntry{}
		info, newCache.Digest, err = buildImage(ctx, tmp, entries, sqArgs, opts, st, newCache)
		if err != nil {
			return nil, nil, err
		}
	}
	info.File = ImageFile
	info.Loads = planned.Loads // also for a reused image: the plan is the same
	st.ImageBytes = info.Size

	meas, err := Measure(*info, cfg)
	if err != nil {
		return nil, nil, err
	}
	md := cfg.Metadata
	rec := &Record{
		Format:      RecordFormat,
		Runtime:     RuntimeIdentity,
		Measurement: hex.EncodeToString(meas[:]),
		ProductID:   md.ProductID,
		SVN:         md.SVN,
		Debuggable:  md.Debuggable,
		Image:       *info,
		Signer:      SignerInfo{Algorithm: "ed25519", PublicKey: base64.StdEncoding.EncodeToString(opts.SignKey.PublicKeyDER())},
		Signature:   base64.StdEncoding.EncodeToString(opts.SignKey.Sign(meas, md.ProductID, md.SVN, md.Debuggable)),
	}
	data, err := rec.Marshal()
	if err != nil {
		return nil, nil, err
	}
	if err := fsutil.WriteFile(filepath.Join(tmp, RecordFile), data, 0o644, false); err != nil {
		return nil, nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	if err := replaceDir(tmp, buildDir); err != nil {
		return nil, nil, fmt.Errorf("installing the build: %w", err)
	}
	ok = true
	// The cache names every input file: it stays beside veil.json, out of
	// build/, which may be shipped to the untrusted host. It is a speed-up
	// only, so failing to write it is not an error.
	newCache.RootHash = info.RootHash
	if cdata, err := newCache.marshal(); err == nil {
		fsutil.WriteFile(cachePath, cdata, 0o600, true)
	}
	st.Duration = time.Since(start)
	b, err := LoadBuild(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("checking the new build: %w", err)
	}
	return b, st, nil
}

// replaceDir makes tmp become dst, atomically when dst exists (the kernel
// exchanges the two names), then removes the previous build.
func replaceDir(tmp, dst string) error {
	if _, err := os.Lstat(dst); errors.Is(err, os.ErrNotExist) {
		if err := os.Rename(tmp, dst); err != nil {
			return err
		}
		return fsutil.SyncDir(filepath.Dir(dst))
	}
	if err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, dst, unix.RENAME_EXCHANGE); err != nil {
		// Without RENAME_EXCHANGE: move the old build aside first.
		old := tmp + ".old"
		if err := os.Rename(dst, old); err != nil {
			return err
		}
		if err := os.Rename(tmp, dst); err != nil {
			os.Rename(old, dst)
			return err
		}
		os.RemoveAll(old)
		return fsutil.SyncDir(filepath.Dir(dst))
	}
	if err := fsutil.SyncDir(filepath.Dir(dst)); err != nil {
		return err
	}
	return os.RemoveAll(tmp) // now the previous build
}

// reusePrevious verifies the previous image in full and hard-links (or
// copies) it into tmp.
func reusePrevious(buildDir, tmp string, key []byte, rootHash string) (*ImageInfo, error) {
	data, err := os.ReadFile(filepath.Join(buildDir, RecordFile))
	if err != nil {
		return nil, err
	}
	rec, err := ParseRecord(data)
	if err != nil {
		return nil, err
	}
	if (rec.Image.Encryption != nil) != (key != nil) {
		return nil, errors.New("encryption differs")
	}
	if rec.Image.RootHash != rootHash {
		return nil, errors.New("the cache describes another build")
	}
	src := filepath.Join(buildDir, ImageFile)
	r, err := OpenFile(src, rec.Image, nil)
	if err != nil {
		return nil, err
	}
	err = r.Verify(context.Background(), nil)
	r.Close()
	if err != nil {
		return nil, err
	}
	dst := filepath.Join(tmp, ImageFile)
	if err := os.Link(src, dst); err != nil {
		return nil, err
	}
	info := rec.Image
	return &info, nil
}

// buildImage writes tmp/rootfs.img and returns its description and the
// content digest.
func buildImage(ctx context.Context, tmp string, entries []bom.Entry, sqArgs []string, opts Options, st *Stats, nc *buildCache) (*ImageInfo, string, error) {
	mksq := opts.Mksquashfs
	if mksq == "" {
		p, err := exec.LookPath("mksquashfs")
		if err != nil {
			return nil, "", fmt.Errorf("%w: mksquashfs not found in PATH (install squashfs-tools)", ErrMksquashfs)
		}
		mksq = p
	}
	out := filepath.Join(tmp, ImageFile)
	total := st.ContentBytes * 2 // content, then the image (about as large uncompressed)
	if opts.Compression == CompressZstd {
		total = st.ContentBytes + st.ContentBytes/3
	}
	var done int64
	progress := func(n int64) {
		done += n
		if opts.Progress != nil {
			opts.Progress(done, total)
		}
	}

	packStart := time.Now()
	cmd := exec.CommandContext(ctx, mksq, append([]string{"-", out}, sqArgs...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.Stdout = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, "", err
	}
	if f, ok := stdin.(*os.File); ok {
		// A larger pipe means fewer context switches; best effort.
		unix.FcntlInt(f.Fd(), unix.F_SETPIPE_SZ, 1<<20)
	}
	if err := cmd.Start(); err != nil {
		return nil, "", fmt.Errorf("%w: starting: %v", ErrMksquashfs, err)
	}
	// Buffered: the headers, padding and data of the many small files go
	// to mksquashfs in a few large writes rather than several per file
	// (a large file's data bypasses the buffer).
	bw := bufio.NewWriterSize(stdin, 256<<10)
	digest, werr := writeTar(bw, entries, nc, progress)
	if werr == nil {
		if err := bw.Flush(); err != nil {
			werr = fmt.Errorf("streaming the image: %w", err)
		}
	}
	stdin.Close()
	if werr != nil {
		cmd.Process.Kill()
		cmd.Wait()
		return nil, "", werr
	}
	if err := cmd.Wait(); err != nil {
		if ctx.Err() != nil {
			return nil, "", ctx.Err()
		}
		return nil, "", fmt.Errorf("%w: %v: %s", ErrMksquashfs, err, lastLine(stderr.String()))
	}

	st.PackTime = time.Since(packStart)
	treeStart := time.Now()
	defer func() { st.TreeTime = time.Since(treeStart) }()
	f, err := os.OpenFile(out, os.O_RDWR, 0)
	if err != nil {
		return nil, "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, "", err
	}
	size := fi.Size()
	if pad := size % BlockSize; pad != 0 {
		size += BlockSize - pad
		if err := f.Truncate(size); err != nil {
			return nil, "", fmt.Errorf("padding the image: %w", err)
		}
	}
	dataBlocks := uint64(size / BlockSize)
	total = done + size
	if err := ctx.Err(); err != nil {
		return nil, "", err
	}

	info := &ImageInfo{File: ImageFile, DataBlocks: dataBlocks, HashOffset: size, BlockSize: BlockSize, Hash: "sha256"}
	var ks []byte
	var bc *blockCipher
	if opts.ImageKey != nil {
		// The subkey derives from the plaintext image itself, so two
		// different images never share a keystream, even when the same
		// inputs give different bytes (another mksquashfs version).
		ph, err := hashFile(f, size)
		if err != nil {
			return nil, "", err
		}
		ks = keySalt(opts.ImageKey, ph)
		bc, err = newBlockCipher(opts.ImageKey, ks)
		if err != nil {
			return nil, "", err
		}
		info.Encryption = &EncryptionInfo{Cipher: CipherAES256CTR, KeySalt: hex.EncodeToString(ks), KeyID: KeyID(opts.ImageKey)}
	}
	salt := veritySalt(digest[:], ks)
	if bc == nil {
		// Start writing the image to the disk while it is hashed, so that
		// the fsync below has less left to wait for; best effort. (Not
		// for an image about to be encrypted: its plaintext is not pushed
		// to the disk on purpose.)
		unix.SyncFileRange(int(f.Fd()), 0, size, unix.SYNC_FILE_RANGE_WRITE)
	}
	var leaves []byte
	if bc != nil {
		leaves, err = encryptAndHash(f, dataBlocks, salt, bc, progress)
	} else {
		leaves, err = hashLeaves(f, dataBlocks, salt, progress)
	}
	if err != nil {
		return nil, "", err
	}
	tree, root := buildTree(leaves, dataBlocks, salt)
	vp := verityParams{dataBlocks: dataBlocks, salt: salt, uuid: verityUUID(salt)}
	if _, err := f.WriteAt(vp.superblock(), size); err != nil {
		return nil, "", fmt.Errorf("writing the hash tree: %w", err)
	}
	if _, err := f.WriteAt(tree, size+BlockSize); err != nil {
		return nil, "", fmt.Errorf("writing the hash tree: %w", err)
	}
	syncStart := time.Now()
	if err := f.Sync(); err != nil {
		return nil, "", fmt.Errorf("syncing the image: %w", err)
	}
	st.SyncTime = time.Since(syncStart)
	info.Size = size + BlockSize + int64(len(tree))
	info.Salt = hex.EncodeToString(salt)
	info.RootHash = hex.EncodeToString(root[:])
	return info, hex.EncodeToString(digest[:]), nil
}

// hashFile returns SHA-256 of the first size bytes of f.
func hashFile(f *os.File, size int64) ([]byte, error) {
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, size)); err != nil {
		return nil, fmt.Errorf("reading the image: %w", err)
	}
	return h.Sum(nil), nil
}

func encryptAndHash(f *os.File, dataBlocks uint64, salt []byte, bc *blockCipher, progress func(int64)) ([]byte, error) {
	return leavesOf(dataBlocks, salt, progress, func(b uint64, p []byte) error {
		if _, err := f.ReadAt(p, int64(b*BlockSize)); err != nil {
			return fmt.Errorf("reading image block %d: %w", b, err)
		}
		bc.xor(p, b)
		if _, err := f.WriteAt(p, int64(b*BlockSize)); err != nil {
			return fmt.Errorf("writing image block %d: %w", b, err)
		}
		return nil
	})
}

// manifestLine is one entry's contribution to the content digest.
func manifestLine(e bom.Entry, sum string) string {
	v := e.Link
	if e.Kind == bom.File {
		v = sum
	}
	return e.Kind.String() + "\x00" + e.Path + "\x00" + strconv.FormatUint(uint64(e.Mode.Perm()), 8) + "\x00" + v + "\n"
}

// writeTar streams entries (sorted by path) as a tar archive, hashing every
// file as it goes; it returns the content digest.
func writeTar(w io.Writer, entries []bom.Entry, nc *buildCache, progress func(int64)) ([32]byte, error) {
	tw := tar.NewWriter(w)
	dg := sha256.New()
	io.WriteString(dg, "veil content v1\n"+nc.Settings+"\n")
	buf := make([]byte, 1<<20)
	for _, e := range entries {
		if e.Path == "/" {
			io.WriteString(dg, manifestLine(e, ""))
			continue
		}
		hdr := &tar.Header{
			Name:    strings.TrimPrefix(e.Path, "/"),
			Mode:    int64(e.Mode.Perm()),
			ModTime: time.Unix(0, 0),
			Format:  tar.FormatPAX,
		}
		sum := ""
		switch e.Kind {
		case bom.Dir:
			hdr.Typeflag = tar.TypeDir
			hdr.Name += "/"
		case bom.Symlink:
			hdr.Typeflag = tar.TypeSymlink
			hdr.Linkname = e.Link
		case bom.File:
			hdr.Typeflag = tar.TypeReg
			hdr.Size = e.Size
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return [32]byte{}, fmt.Errorf("streaming %s: %w", e.Path, err)
		}
		if e.Kind == bom.File {
			s, err := copyFile(tw, e, buf, progress)
			if err != nil {
				return [32]byte{}, err
			}
			sum = s
			nc.Files[e.Source] = cacheEntry{Size: e.Size, MtimeNs: e.ModTime.UnixNano(), Inode: e.Inode, SHA256: sum}
		}
		io.WriteString(dg, manifestLine(e, sum))
	}
	if err := tw.Close(); err != nil {
		return [32]byte{}, fmt.Errorf("streaming the image: %w", err)
	}
	var d [32]byte
	dg.Sum(d[:0])
	return d, nil
}

func copyFile(w io.Writer, e bom.Entry, buf []byte, progress func(int64)) (string, error) {
	f, err := os.Open(e.Source)
	if err != nil {
		return "", fmt.Errorf("reading %s (%s): %w", e.Source, e.Origin, err)
	}
	defer f.Close()
	h := sha256.New()
	var n int64
	for {
		k, rerr := f.Read(buf)
		if k > 0 {
			if n+int64(k) > e.Size {
				return "", fmt.Errorf("%s: %w (it grew)", e.Source, ErrInputChanged)
			}
			h.Write(buf[:k])
			if _, err := w.Write(buf[:k]); err != nil {
				return "", fmt.Errorf("streaming %s: %w", e.Path, err)
			}
			n += int64(k)
			progress(int64(k))
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return "", fmt.Errorf("reading %s (%s): %w", e.Source, e.Origin, rerr)
		}
	}
	if n != e.Size {
		return "", fmt.Errorf("%s: %w (it shrank)", e.Source, ErrInputChanged)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if e.SHA256 != "" && sum != e.SHA256 {
		return "", fmt.Errorf("%s (%s): %w: file has sha256 %s, pinned %s", e.Source, e.Origin, ErrPinMismatch, sum, e.SHA256)
	}
	return sum, nil
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// addRuntimeDirs adds the directories the runtime mounts over — /proc,
// /dev, /tmp, /run, /run/secrets and every mount target with its parents —
// where the image lacks them: the image is read-only at run time, so they
// must exist in it.
func addRuntimeDirs(entries []bom.Entry, cfg *config.Config) ([]bom.Entry, error) {
	have := make(map[string]bom.Kind, len(entries))
	for _, e := range entries {
		have[e.Path] = e.Kind
	}
	want := []string{"/proc", "/dev", "/tmp", "/run", "/run/secrets"}
	for _, m := range cfg.Mounts {
		want = append(want, m.Target)
	}
	for _, s := range cfg.Secrets {
		if s.File != "" {
			want = append(want, path.Dir(s.File))
		}
	}
	added := false
	for _, w := range want {
		for p := w; p != "/" && p != "."; p = path.Dir(p) {
			k, ok := have[p]
			if ok && k != bom.Dir {
				if p == w {
					return nil, fmt.Errorf("%s is needed as a mount point but the image has a file or link there", p)
				}
				break // a symbolic link on the way (e.g. /run -> /var/run): leave it to the runtime
			}
			if !ok {
				have[p] = bom.Dir
				entries = append(entries, bom.Entry{Path: p, Kind: bom.Dir, Mode: 0o755, Origin: "runtime mount point"})
				added = true
			}
		}
	}
	if added {
		sort.Slice(entries, func(i, j int) bool { return entries[i].Path < entries[j].Path })
	}
	return entries, nil
}
