package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/veil-tee/veil/gramine/pf"
	"github.com/veil-tee/veil/internal/fsutil"
)

// Gramine protected files in veil encrypt and decrypt: decrypt recognises
// the GRAFS_PF magic; encrypt writes the format with --format gramine-pf.

const formatGraminePF = "gramine-pf"

// gramineExitCode maps Gramine protected-file errors to exit codes (0: not theirs).
func gramineExitCode(err error) int {
	if errors.Is(err, pf.ErrIntegrity) {
		return ExitIntegrity
	}
	return 0
}

type pfFlags struct {
	format string // encrypt only
	path   string
}

func (p *pfFlags) addEncrypt(c *cobra.Command) {
	c.Flags().StringVar(&p.format, "format", "veil", "output format: veil (sealed file) or gramine-pf (Gramine protected file, 16-byte wrap key)")
	c.Flags().StringVar(&p.path, "pf-path", "", "gramine-pf: the path bound into the file, as Gramine will open it (default: the output path as given)")
}

func (p *pfFlags) addDecrypt(c *cobra.Command) {
	c.Flags().StringVar(&p.path, "pf-path", "", "Gramine protected files: the path the file must be bound to (default: the input path as given)")
}

// loadPFKey reads the single --key file:PATH holding a Gramine wrap key.
func loadPFKey(refs []string) (pf.Key, error) {
	hint := "Gramine protected files take one 16-byte wrap key: --key file:PATH (16 raw bytes or 32 hex digits, as gramine-sgx-pf-crypt uses)"
	if len(refs) != 1 {
		return pf.Key{}, &Error{Err: fmt.Errorf("a Gramine protected file needs exactly one --key, got %d", len(refs)), Code: ExitUsage, Hint: hint}
	}
	kind, path, ok := strings.Cut(refs[0], ":")
	if !ok || kind != "file" || path == "" {
		return pf.Key{}, &Error{Err: fmt.Errorf("key %q: a Gramine wrap key must be given as file:PATH", refs[0]), Code: ExitUsage, Hint: hint}
	}
	f, err := os.Open(path)
	if err != nil {
		return pf.Key{}, fmt.Errorf("reading key: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return pf.Key{}, fmt.Errorf("reading key %s: %w", path, err)
	}
	defer clear(b)
	k, err := pf.ParseKey(b)
	if err != nil {
		return pf.Key{}, withHint(fmt.Errorf("reading key %s: %w", path, err), hint)
	}
	return k, nil
}

// isPFFile reports whether path is a regular file starting with the
// protected-file magic.
func isPFFile(path string) bool {
	if path == "-" {
		return false
	}
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return false
	}
	b := make([]byte, len(pf.Magic))
	n, _ := io.ReadFull(f, b)
	return pf.IsPF(b[:n])
}

// decryptGraminePF opens a Gramine protected file, or a directory tree of
// them (as a Gramine encrypted mount holds), into f.out.
func decryptGraminePF(ctx context.Context, env *Env, f *cryptFlags, p *pfFlags) error {
	key, err := loadPFKey(f.keys)
	if err != nil {
		return err
	}
	defer clear(key[:])
	base := p.path
	if base == "" {
		base = f.in
	}
	if fi, err := os.Stat(f.in); err == nil && fi.IsDir() {
		if f.out == "-" {
			return usageErrorf("input %s is a directory; output must be a directory too, not -", f.in)
		}
		return eachFile(ctx, env, f.in, f.out, "opening", func(src, dst, rel string) error {
			if !isPFFile(src) {
				return errSkip
			}
			return decryptPFFile(ctx, env, key, src, dst, path.Join(base, rel), f.force)
		})
	}
	return decryptPFFile(ctx, env, key, f.in, f.out, base, f.force)
}

// decryptPFFile opens the protected file in, bound to bound, into out.
func decryptPFFile(ctx context.Context, env *Env, key pf.Key, in, out, bound string, force bool) error {
	fin, err := os.Open(in)
	if err != nil {
		return fmt.Errorf("opening %s: %w", in, unwrapPath(err))
	}
	defer fin.Close()
	fi, err := fin.Stat()
	if err != nil {
		return fmt.Errorf("opening %s: %w", in, err)
	}
	pfile, err := pf.Open(fin, fi.Size(), key, bound, nil)
	if err != nil {
		var pe *pf.PathError
		if errors.As(err, &pe) {
			return withHint(fmt.Errorf("opening %s: %w", in, err), fmt.Sprintf("Gramine binds a file to its path; if it was moved on purpose, pass --pf-path %s (for a directory: the directory its files were bound under)", pe.Bound))
		}
		if errors.Is(err, pf.ErrIntegrity) {
			return withHint(fmt.Errorf("opening %s: %w", in, err), "check that --key names the Gramine wrap key this file was written with")
		}
		return fmt.Errorf("opening %s: %w", in, err)
	}
	defer pfile.Close()
	copyOut := func(w io.Writer) error {
		prog := newProgress(env, filepath.Base(in), pfile.Size())
		defer prog.Done()
		buf := make([]byte, 1<<20)
		_, err := io.CopyBuffer(w, io.TeeReader(ctxReader{ctx, io.NewSectionReader(pfile, 0, pfile.Size())}, prog), buf)
		return err
	}
	if out == "-" {
		if err := copyOut(env.Stdout); err != nil {
			return fmt.Errorf("opening %s: %w", in, err)
		}
		return nil
	}
	return cryptToFile(ctx, out, force, "opening "+in, copyOut)
}

// encryptGraminePF writes f.in as a Gramine protected file at f.out, or a
// directory tree as the directory of a Gramine encrypted mount.
func encryptGraminePF(ctx context.Context, env *Env, f *cryptFlags, p *pfFlags) error {
	if f.out == "-" {
		return usageErrorf("--format gramine-pf writes a file with random access; give -o FILE, not -")
	}
	key, err := loadPFKey(f.keys)
	if err != nil {
		return err
	}
	defer clear(key[:])
	base := p.path
	if base == "" {
		base = f.out
	}
	if f.in == "-" {
		if err := encryptPFFile(ctx, env, key, env.Stdin, -1, "standard input", f.out, base, f.force); err != nil {
			return err
		}
		fmt.Fprintf(env.Stderr, "veil: bound to path %q (Gramine must open it under this path)\n", pf.NormPath(base))
		return nil
	}
	fi, err := os.Stat(f.in)
	if err != nil {
		return fmt.Errorf("sealing %s: %w", f.in, unwrapPath(err))
	}
	if fi.IsDir() {
		err := eachFile(ctx, env, f.in, f.out, "sealing", func(src, dst, rel string) error {
			fin, err := os.Open(src)
			if err != nil {
				return fmt.Errorf("sealing %s: %w", src, unwrapPath(err))
			}
			defer fin.Close()
			st, err := fin.Stat()
			if err != nil {
				return fmt.Errorf("sealing %s: %w", src, err)
			}
			return encryptPFFile(ctx, env, key, fin, st.Size(), src, dst, path.Join(base, rel), f.force)
		})
		if err != nil {
			return err
		}
		fmt.Fprintf(env.Stderr, "veil: files bound under %q (a Gramine encrypted mount with uri \"file:%s\")\n", pf.NormPath(base), pf.NormPath(base))
		return nil
	}
	if !fi.Mode().IsRegular() {
		return usageErrorf("--format gramine-pf: %s is not a regular file or directory", f.in)
	}
	fin, err := os.Open(f.in)
	if err != nil {
		return fmt.Errorf("sealing %s: %w", f.in, unwrapPath(err))
	}
	defer fin.Close()
	if err := encryptPFFile(ctx, env, key, fin, fi.Size(), f.in, f.out, base, f.force); err != nil {
		return err
	}
	fmt.Fprintf(env.Stderr, "veil: bound to path %q (Gramine must open it under this path)\n", pf.NormPath(base))
	return nil
}

// encryptPFFile writes in as a protected file at out, bound to bound; out
// appears only once complete.
func encryptPFFile(ctx context.Context, env *Env, key pf.Key, in io.Reader, size int64, label, out, bound string, force bool) error {
	af, err := fsutil.CreateAtomic(out, 0o600, force)
	if err != nil {
		if errors.Is(err, fsutil.ErrExists) {
			return withHint(fmt.Errorf("output %w", err), "use --force to overwrite it")
		}
		return fmt.Errorf("creating output: %w", err)
	}
	defer af.Abort()
	pfile, err := pf.Create(af.File, key, bound, nil)
	if err != nil {
		return fmt.Errorf("writing %s: %w", out, err)
	}
	prog := newProgress(env, filepath.Base(label), size)
	buf := make([]byte, 1<<20)
	_, err = io.CopyBuffer(io.NewOffsetWriter(pfile, 0), io.TeeReader(ctxReader{ctx, in}, prog), buf)
	prog.Done()
	if err != nil {
		pfile.Close()
		return fmt.Errorf("sealing %s: %w", label, err)
	}
	if err := pfile.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", out, err)
	}
	if err := af.Commit(); err != nil {
		if errors.Is(err, fsutil.ErrExists) {
			return withHint(fmt.Errorf("output %w", err), "use --force to overwrite it")
		}
		return fmt.Errorf("writing %s: %w", out, err)
	}
	return nil
}

// notSealedHint is the hint for a file without the sealed-file magic.
func notSealedHint(path string) string {
	if isPFFile(path) {
		return "it is a Gramine protected file: open it with veil decrypt --key file:WRAP_KEY (docs/formats/gramine-pf.md)"
	}
	return "the file does not start with the sealed-file magic; it may be plaintext"
}

// isPFInput reports whether path is a protected file, or a directory
// holding one (among its first 1000 entries).
func isPFInput(p string) bool {
	fi, err := os.Stat(p)
	if err != nil || !fi.IsDir() {
		return isPFFile(p)
	}
	found, seen := false, 0
	filepath.WalkDir(p, func(q string, d fs.DirEntry, err error) error {
		if err != nil || seen > 1000 {
			return filepath.SkipAll
		}
		seen++
		if d.Type().IsRegular() && isPFFile(q) {
			found = true
			return filepath.SkipAll
		}
		return nil
	})
	return found
}
