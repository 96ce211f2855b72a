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

	"github.com/veil-tee/veil/internal/fsutil"
	"github.com/veil-tee/veil/seal"
)

// dataExitCode maps the data verbs' library errors to exit codes (0: not theirs).
func dataExitCode(err error) int {
	if errors.Is(err, seal.ErrIntegrity) || errors.Is(err, seal.ErrWrongKey) {
		return ExitIntegrity
	}
	return 0
}

func newGenKeyCmd(env *Env) *cobra.Command {
	return &cobra.Command{
		Use:   "gen-key FILE",
		Short: "Create a new random 256-bit wrap key for sealing files",
		Long: `gen-key writes a new random 256-bit wrap key to FILE (mode 0600) and prints
its key id, the fingerprint that sealed files record in their key slots.
It never overwrites an existing file.`,
		Args: exactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			k, err := seal.GenerateFileKey()
			if err != nil {
				return err
			}
			txt, _ := k.MarshalText()
			defer clear(txt)
			if err := fsutil.WriteFile(args[0], txt, 0o600, false); err != nil {
				if errors.Is(err, fsutil.ErrExists) {
					return withHint(fmt.Errorf("writing key: %w", err), "choose another path; veil never overwrites a key")
				}
				return fmt.Errorf("writing key: %w", err)
			}
			fmt.Fprintln(env.Stdout, k.ID())
			return nil
		},
	}
}

type cryptFlags struct {
	keys  []string
	in    string
	out   string
	force bool
}

func (f *cryptFlags) add(c *cobra.Command, keyHelp string) {
	c.Flags().StringArrayVarP(&f.keys, "key", "k", nil, keyHelp)
	c.Flags().StringVarP(&f.in, "in", "i", "", "input file or directory, - for standard input (required)")
	c.Flags().StringVarP(&f.out, "out", "o", "", "output file or directory, - for standard output (required)")
	c.Flags().BoolVarP(&f.force, "force", "f", false, "overwrite existing output files")
}

func (f *cryptFlags) check() error {
	if f.in == "" || f.out == "" {
		return &Error{Err: errors.New("both -i IN and -o OUT are required"), Code: ExitUsage, Hint: "use - for standard input or output"}
	}
	if f.in != "-" && f.out != "-" {
		ai, _ := filepath.Abs(f.in)
		ao, _ := filepath.Abs(f.out)
		if ai == ao {
			return usageErrorf("input and output are the same path %s", f.in)
		}
	}
	return nil
}

func newEncryptCmd(env *Env) *cobra.Command {
	var f cryptFlags
	var pff pfFlags
	var segSize int
	var bindMount, bindPath string
	c := &cobra.Command{
		Use:   "encrypt --key KIND:REF -i IN -o OUT [--bind-mount TARGET --bind-path PATH]",
		Short: "Seal a file, a stream or a directory tree",
		Long: `encrypt seals IN into OUT under a fresh data key, wrapped in one key slot per
--key. A directory IN is sealed file by file into directory OUT, keeping
relative names. OUT appears only once it is complete.

--bind-mount and --bind-path bind a single file to its place in a sealed
mount: the mount's target in veil.json and the file's path below it. The
mount then refuses the file under any other name or in any other mount.
Without them the file is unbound and opens anywhere, as before.

With --format gramine-pf, IN is written as a Gramine protected file (the
format of Gramine's encrypted mounts) under a 16-byte wrap key
(--key file:PATH), bound to --pf-path or to OUT as given.`,
		Example: `  veil gen-key owner.key
  veil encrypt --key file:owner.key -i people.csv -o people.csv.sealed
  tar c data | veil encrypt --key file:owner.key -i - -o data.tar.sealed
  veil encrypt --key kms:owner-cmk -i people.csv -o in/people.csv --bind-mount /data --bind-path people.csv`,
		Args: exactArgs(0),
		RunE: func(c *cobra.Command, args []string) error {
			if err := f.check(); err != nil {
				return err
			}
			ctx := c.Context()
			switch pff.format {
			case "veil":
			case formatGraminePF:
				return encryptGraminePF(ctx, env, &f, &pff)
			default:
				return usageErrorf("--format %q: want veil or %s", pff.format, formatGraminePF)
			}
			ws, err := resolveWrappers(ctx, f.keys)
			if err != nil {
				return err
			}
			opts := &seal.Options{SegmentSize: segSize}
			if bindMount != "" || bindPath != "" {
				if bindMount == "" || bindPath == "" || !path.IsAbs(bindMount) {
					return usageErrorf("--bind-mount TARGET (absolute, as in veil.json) and --bind-path PATH (below it) go together")
				}
				if fi, err := os.Stat(f.in); err == nil && fi.IsDir() {
					return usageErrorf("--bind-path binds one file; IN is a directory")
				}
				opts.Place = &seal.Place{Mount: seal.MountID(path.Clean(bindMount)), Path: strings.TrimPrefix(bindPath, "./")}
			}
			op := func(ctx context.Context, in io.Reader, out io.Writer, size int64, label string) error {
				p := newProgress(env, label, size)
				defer p.Done()
				w, err := seal.NewWriter(out, opts, ws...)
				if err != nil {
					return err
				}
				buf := make([]byte, 4<<20)
				if _, err := io.CopyBuffer(w, io.TeeReader(ctxReader{ctx, in}, p), buf); err != nil {
					w.Close()
					return err
				}
				return w.Close()
			}
			return runCrypt(ctx, env, &f, "sealing", op)
		},
	}
	f.add(c, "key to wrap the file's data key: file:PATH (repeat for several slots)")
	pff.addEncrypt(c)
	c.Flags().IntVar(&segSize, "segment-size", 0, fmt.Sprintf("plaintext bytes per segment, a power of two from %d to %d (default %d)", seal.MinSegmentSize, seal.MaxSegmentSize, seal.DefaultSegmentSize))
	c.Flags().StringVar(&bindMount, "bind-mount", "", "bind the file to the sealed mount at this target (veil.json)")
	c.Flags().StringVar(&bindPath, "bind-path", "", "bind the file to this path below the mount's root")
	return c
}

func newDecryptCmd(env *Env) *cobra.Command {
	var f cryptFlags
	var pff pfFlags
	var format string
	c := &cobra.Command{
		Use:   "decrypt [--key KIND:REF] -i IN -o OUT",
		Short: "Open a sealed file, stream or directory tree",
		Long: `decrypt authenticates and opens IN into OUT. Output to a file is written beside
OUT and renamed only after the whole input authenticated, so a tampered input
never leaves plaintext at OUT. Output to standard output streams authenticated
segments and exits non-zero at the first bad one.

A Gramine protected file (GRAFS_PF) is recognised by its magic and opened
with its 16-byte wrap key (--key file:PATH); it must be bound to the input
path as given, or to --pf-path.

--format bigdl opens a file written by BigDL PPML (AES/CBC/PKCS5Padding)
with its data key (--key file:PATH holding the data-key text BigDL used);
the whole file is authenticated before any output (docs/formats/bigdl.md).`,
		Example: `  veil decrypt --key file:owner.key -i people.csv.sealed -o people.csv
  veil decrypt --key file:owner.key -i data.tar.sealed -o - | tar x
  veil decrypt --format bigdl --key file:datakey.txt -i people.csv.cbc -o people.csv`,
		Args: exactArgs(0),
		RunE: func(c *cobra.Command, args []string) error {
			if err := f.check(); err != nil {
				return err
			}
			ctx := c.Context()
			switch format {
			case "auto":
			case formatBigDL:
				return decryptBigDL(ctx, env, &f)
			default:
				return usageErrorf("--format %q: want auto or %s", format, formatBigDL)
			}
			if isPFInput(f.in) {
				return decryptGraminePF(ctx, env, &f, &pff)
			}
			u, err := resolveUnwrappers(ctx, f.keys)
			if err != nil {
				return err
			}
			op := func(ctx context.Context, in io.Reader, out io.Writer, size int64, label string) error {
				p := newProgress(env, label, size)
				defer p.Done()
				r, err := seal.NewReader(io.TeeReader(ctxReader{ctx, in}, p), u, nil)
				if err != nil {
					if errors.Is(err, seal.ErrNotSealed) {
						return withHint(err, "the input does not start with the sealed-file magic; it may be plaintext already")
					}
					if errors.Is(err, seal.ErrWrongKey) && len(f.keys) == 0 {
						return withHint(err, wrongKeyHint(f.in))
					}
					return err
				}
				defer r.Close()
				_, err = r.WriteTo(out)
				return err
			}
			return runCrypt(ctx, env, &f, "opening", op)
		},
	}
	f.add(c, "key that opens one of the file's slots: file:PATH (repeat to try several)")
	pff.addDecrypt(c)
	c.Flags().StringVar(&format, "format", "auto", "input format: auto (veil sealed file or Gramine protected file, by magic) or bigdl (BigDL PPML AES/CBC/PKCS5Padding file)")
	return c
}

type cryptOp func(ctx context.Context, in io.Reader, out io.Writer, size int64, label string) error

// runCrypt applies op from f.in to f.out: streams, single files or trees.
func runCrypt(ctx context.Context, env *Env, f *cryptFlags, verb string, op cryptOp) error {
	if f.in == "-" {
		if f.out == "-" {
			return op(ctx, env.Stdin, env.Stdout, -1, verb)
		}
		return cryptToFile(ctx, f.out, f.force, verb+" standard input", func(w io.Writer) error {
			return op(ctx, env.Stdin, w, -1, verb)
		})
	}
	fi, err := os.Stat(f.in)
	if err != nil {
		return fmt.Errorf("%s %s: %w", verb, f.in, unwrapPath(err))
	}
	if fi.IsDir() {
		if f.out == "-" {
			return usageErrorf("input %s is a directory; output must be a directory too, not -", f.in)
		}
		return cryptTree(ctx, env, f, verb, op)
	}
	return cryptFile(ctx, env, f.in, f.out, f.force, verb, op)
}

func cryptFile(ctx context.Context, env *Env, inPath, outPath string, force bool, verb string, op cryptOp) error {
	in, err := os.Open(inPath)
	if err != nil {
		return fmt.Errorf("%s %s: %w", verb, inPath, unwrapPath(err))
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return fmt.Errorf("%s %s: %w", verb, inPath, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s %s: not a regular file", verb, inPath)
	}
	label := filepath.Base(inPath)
	if outPath == "-" {
		if err := op(ctx, in, env.Stdout, fi.Size(), label); err != nil {
			return fmt.Errorf("%s %s: %w", verb, inPath, err)
		}
		return nil
	}
	return cryptToFile(ctx, outPath, force, verb+" "+inPath, func(w io.Writer) error {
		return op(ctx, in, w, fi.Size(), label)
	})
}

// cryptToFile writes through fn into a temporary file beside outPath and
// renames it only if fn succeeded.
// Missing parent directories of outPath are created (mode 0700).
func cryptToFile(ctx context.Context, outPath string, force bool, what string, fn func(io.Writer) error) error {
	if dir := filepath.Dir(outPath); dir != "." {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("creating the output directory %s: %w", dir, unwrapPath(err))
		}
	}
	out, err := fsutil.CreateAtomic(outPath, 0o600, force)
	if err != nil {
		if errors.Is(err, fsutil.ErrExists) {
			return withHint(fmt.Errorf("output %w", err), "use --force to overwrite it")
		}
		return err // names outPath, never the temporary file
	}
	defer out.Abort()
	if err := fn(out); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := out.Commit(); err != nil {
		if errors.Is(err, fsutil.ErrExists) {
			return withHint(fmt.Errorf("output %w", err), "use --force to overwrite it")
		}
		return fmt.Errorf("writing %s: %w", outPath, err)
	}
	return nil
}

// cryptTree applies op to every regular file under f.in, keeping relative
// names under f.out. Other file types are skipped with a warning.
func cryptTree(ctx context.Context, env *Env, f *cryptFlags, verb string, op cryptOp) error {
	return eachFile(ctx, env, f.in, f.out, verb, func(src, dst, _ string) error {
		return cryptFile(ctx, env, src, dst, f.force, verb, op)
	})
}

// errSkip makes eachFile skip a file with a warning.
var errSkip = errors.New("not a Gramine protected file")

// eachFile applies fn to every regular file under in, with its
// counterpart under out and its slash-separated relative name, creating the
// directories under out. Other file types, and files for which fn returns
// errSkip, are skipped with a warning.
func eachFile(ctx context.Context, env *Env, in, out, verb string, fn func(src, dst, rel string) error) error {
	var done, skipped int
	err := filepath.WalkDir(in, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("%s: %w", verb, err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(in, p)
		if err != nil {
			return err
		}
		dst := filepath.Join(out, rel)
		switch {
		case d.IsDir():
			if err := os.MkdirAll(dst, 0o700); err != nil {
				return fmt.Errorf("creating %s: %w", dst, err)
			}
			return nil
		case d.Type().IsRegular():
			err := fn(p, dst, filepath.ToSlash(rel))
			if errors.Is(err, errSkip) {
				skipped++
				fmt.Fprintf(env.Stderr, "veil: warning: skipping %s: %v\n", p, err)
				return nil
			}
			if err != nil {
				return err
			}
			done++
			return nil
		default:
			skipped++
			fmt.Fprintf(env.Stderr, "veil: warning: skipping %s: not a regular file\n", p)
			return nil
		}
	})
	if err != nil {
		return fmt.Errorf("%w (%d file(s) done before it)", err, done)
	}
	if skipped > 0 {
		fmt.Fprintf(env.Stderr, "veil: %d file(s) done, %d skipped\n", done, skipped)
	}
	return nil
}

// ctxReader stops reading once ctx is cancelled (Ctrl-C).
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

func newInspectCmd(env *Env) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "inspect FILE",
		Short: "Show a sealed file's header (format, sizes, key slots) without a key",
		Args:  exactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			info, err := seal.Inspect(args[0])
			if err != nil {
				if errors.Is(err, seal.ErrNotSealed) {
					return withHint(fmt.Errorf("%s: %w", args[0], err), notSealedHint(args[0]))
				}
				return fmt.Errorf("inspecting %s: %w", args[0], err)
			}
			if asJSON {
				return printJSON(env.Stdout, info)
			}
			w := env.Stdout
			fmt.Fprintf(w, "format:          veil sealed file, version %d\n", info.Version)
			fmt.Fprintf(w, "algorithm:       %s\n", info.Algorithm)
			fmt.Fprintf(w, "file id:         %s\n", info.FileID)
			fmt.Fprintf(w, "segment size:    %d bytes\n", info.SegmentSize)
			fmt.Fprintf(w, "header size:     %d bytes\n", info.HeaderSize)
			if info.BoundPath != "" {
				fmt.Fprintf(w, "bound to:        %s in mount %s (unauthenticated until opened with a key)\n", info.BoundPath, info.BoundMount)
			}
			fmt.Fprintf(w, "stored size:     %d bytes\n", info.StoredSize)
			if info.PlaintextSize >= 0 {
				fmt.Fprintf(w, "plaintext size:  %d bytes (%s; unauthenticated until opened with a key)\n", info.PlaintextSize, plural(int64(info.Segments), "segment", "segments"))
			} else {
				fmt.Fprintf(w, "plaintext size:  unknown: %s\n", info.Problem)
			}
			fmt.Fprintf(w, "key slots:       %d\n", len(info.Slots))
			for i, s := range info.Slots {
				fmt.Fprintf(w, "  %d. %-5s %s\n", i+1, s.Kind, s.KeyID)
			}
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

// unwrapPath drops the operation and path of an *fs.PathError when the
// caller's message already names the path.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// plural writes n with the singular or plural noun.
func plural(n int64, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

// wrongKeyHint says how to open the sealed file in (its slots read
// without a key) when no slot opened.
func wrongKeyHint(in string) string {
	var kmsIDs []string
	file := false
	if in != "-" {
		if info, err := seal.Inspect(in); err == nil {
			for _, s := range info.Slots {
				if s.Kind == "kms" {
					kmsIDs = append(kmsIDs, s.KeyID)
				} else {
					file = true
				}
			}
		}
	}
	switch {
	case len(kmsIDs) > 0 && !file:
		return "the file is sealed under key service key " + strings.Join(kmsIDs, ", ") + ": only the app that owns it (VEIL_APP_ID, VEIL_API_KEY at its VEIL_KMS_URL) or a workload its policy admits can open it"
	case len(kmsIDs) > 0:
		return "give the key with --key file:PATH, or open it as the app that owns key service key " + strings.Join(kmsIDs, ", ") + "; veil inspect shows the file's key slots"
	}
	return "give the key with --key file:PATH; veil inspect shows the file's key slots"
}
