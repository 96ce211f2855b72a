package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/veil-tee/veil/bom"
	"github.com/veil-tee/veil/config"
	"github.com/veil-tee/veil/internal/fsutil"
	"github.com/veil-tee/veil/internal/userdir"
	"github.com/veil-tee/veil/trustimage"
)

// imageExitCode maps the image verbs' library errors to exit codes (0: not theirs).
func imageExitCode(err error) int {
	switch {
	case errors.Is(err, trustimage.ErrCorrupt), errors.Is(err, trustimage.ErrBadSignature),
		errors.Is(err, trustimage.ErrPinMismatch), errors.Is(err, trustimage.ErrWrongKey),
		errors.Is(err, trustimage.ErrBadSuperblock):
		return ExitIntegrity
	}
	return 0
}

// devSignKeyFile is the development signing key's name in the user dir.
const devSignKeyFile = "dev-sign-key.pem"

func newNewCmd(env *Env) *cobra.Command {
	var nf newFlags
	var imp importFlags
	c := &cobra.Command{
		Use:   "new DIR [--from-occlum Occlum.json | --from-gramine MANIFEST] [--bom SNIPPET] [--kms NAME[=URL][,ca=PATH]] [--mount TARGET=SOURCE[,key=REF]]",
		Short: "Create an instance directory with a documented veil.json and an empty image/",
		Example: `  veil new app
  veil new app --bom debian/python3 --kms main --mount /data=data,key=kms:bob-cmk@main`,
		Args: exactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			dir := args[0]
			base := []byte(config.Template)
			res, err := imp.load()
			if err != nil {
				return err
			}
			if res != nil {
				if base, err = res.Config.Marshal(); err != nil {
					return err
				}
			}
			cfg, err := newConfig(dir, base, &nf)
			if err != nil {
				return err
			}
			if _, err := os.Lstat(dir); err == nil {
				return withHint(fmt.Errorf("%s: %w", dir, fsutil.ErrExists), "choose a new directory; veil new never touches an existing one")
			}
			if err := os.Mkdir(dir, 0o755); err != nil {
				return fmt.Errorf("creating instance: %w", err)
			}
			if err := os.Mkdir(filepath.Join(dir, "image"), 0o755); err != nil {
				return fmt.Errorf("creating instance: %w", err)
			}
			if err := fsutil.WriteFile(filepath.Join(dir, config.FileName), cfg, 0o644, false); err != nil {
				return fmt.Errorf("creating instance: %w", err)
			}
			if _, err := config.Load(filepath.Join(dir, config.FileName)); err != nil {
				os.RemoveAll(dir) // made just now, by this command
				return withHint(fmt.Errorf("the flags make an invalid veil.json: %w", err), "see 'veil new --help' and docs/config.md")
			}
			if res != nil {
				if err := imp.report(env, dir, res); err != nil {
					return fmt.Errorf("creating instance: %w", err)
				}
			}
			fmt.Fprintf(env.Stderr, "veil: created %s: put the workload's files in %s/image/ or list host files in the bom section of %s/veil.json (docs/config.md), then run veil build -C %s\n", dir, dir, dir, dir)
			return nil
		},
	}
	f := c.Flags()
	f.StringArrayVar(&nf.bom, "bom", nil, "add a shipped BOM snippet to bom.include, e.g. debian/python3 (repeatable)")
	f.StringArrayVar(&nf.kms, "kms", nil, "add a key service: NAME[=URL][,ca=PATH][,pin=HEX]; URL and CA default to VEIL_KMS_URL and VEIL_KMS_CA (repeatable)")
	f.StringArrayVar(&nf.mounts, "mount", nil, "add a mount: TARGET=SOURCE,key=kms:KEY@NAME[,write_key=REF] (sealed), TARGET=SOURCE (hostfs) or TARGET,type=tmpfs[,size=64M]; relative paths are written relative to DIR (repeatable)")
	imp.add(c)
	return c
}

func addDirFlag(c *cobra.Command, dir *string) {
	c.Flags().StringVarP(dir, "dir", "C", ".", "instance directory")
}

// loadSignKey returns the key named by path, or the per-user development
// key (created on first use), telling the user which one signs.
func loadSignKey(env *Env, path string) (*trustimage.SignKey, error) {
	if path != "" {
		return trustimage.LoadSignKey(path)
	}
	d, err := userdir.Ensure()
	if err != nil {
		return nil, err
	}
	p := filepath.Join(d, devSignKeyFile)
	k, err := trustimage.LoadSignKey(p)
	if errors.Is(err, os.ErrNotExist) {
		k, err = trustimage.WriteSignKey(p)
		if err != nil {
			return nil, err
		}
		m := k.MrSigner()
		fmt.Fprintf(env.Stderr, "veil: created a development signing key %s (mrsigner %x); it is for development only, use --sign-key with a key from veil gen-sign-key for production\n", p, m)
		return k, nil
	}
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(env.Stderr, "veil: signing with the development key %s (development only; see --sign-key)\n", p)
	return k, nil
}

func newBuildCmd(env *Env) *cobra.Command {
	var dir, signKey, imageKey, compression string
	c := &cobra.Command{
		Use:   "build [-C DIR] [--sign-key KEY] [--image-key FILE]",
		Short: "Pack image/ and the BOM into a signed, hash-tree protected (optionally encrypted) image in DIR/build",
		Args:  exactArgs(0),
		RunE: func(c *cobra.Command, args []string) error {
			// Check veil.json first: a bad configuration should not create
			// a development key.
			if _, err := config.LoadNames(filepath.Join(dir, config.FileName)); err != nil {
				return buildHint(err)
			}
			if err := resolveNames(c.Context(), env.Stderr, dir); err != nil {
				return err
			}
			k, err := loadSignKey(env, signKey)
			if err != nil {
				return err
			}
			opts := trustimage.Options{SignKey: k, Compression: compression}
			if imageKey != "" {
				key, err := trustimage.LoadImageKey(imageKey)
				if err != nil {
					return withHint(err, "create one with veil gen-image-key FILE")
				}
				defer clear(key)
				opts.ImageKey = key
			}
			var bar *progress
			var last int64
			opts.Progress = func(done, total int64) {
				if bar == nil {
					bar = newProgress(env, "building", total)
				}
				bar.total = total // the image size is known once mksquashfs is done
				bar.Add(done - last)
				last = done
			}
			b, st, err := trustimage.Build(c.Context(), dir, opts)
			bar.Done()
			if err != nil {
				return buildHint(err)
			}
			how := "built"
			if st.Reused {
				how = "rebuilt (image unchanged, verified and reused)"
			}
			enc := ""
			if b.Encrypted() {
				enc = ", encrypted"
			}
			fmt.Fprintf(env.Stderr, "veil: %s %s: %d files, %s of content, image %s%s, in %.2fs\n",
				how, filepath.Join(dir, "build"), st.Files, human(st.ContentBytes), human(st.ImageBytes), enc, st.Duration.Seconds())
			fmt.Fprintf(env.Stdout, "mrenclave %s\nmrsigner  %s\n", b.MeasurementHex(), b.MrSignerHex())
			return nil
		},
	}
	addDirFlag(c, &dir)
	c.Flags().StringVar(&signKey, "sign-key", "", "signing key from veil gen-sign-key (default: the per-user development key)")
	c.Flags().StringVar(&imageKey, "image-key", "", "encrypt the image with this key from veil gen-image-key")
	c.Flags().StringVar(&compression, "compression", trustimage.DefaultCompression, "squashfs compression: zstd or none")
	return c
}

func buildHint(err error) error {
	switch {
	case errors.Is(err, config.ErrInvalid):
		return withHint(err, "see docs/config.md for the fields of veil.json")
	case errors.Is(err, bom.ErrMissing), errors.Is(err, bom.ErrUnresolved):
		return withHint(err, "install the missing file on the build host or remove it from the bom section; the previous build is intact")
	case errors.Is(err, trustimage.ErrPinMismatch):
		return withHint(err, "the host file is not the one pinned in veil.json; the previous build is intact")
	case errors.Is(err, trustimage.ErrMksquashfs):
		return withHint(err, "mksquashfs comes from squashfs-tools; the previous build is intact")
	}
	return err
}

func newPrintCmd(env *Env) *cobra.Command {
	var dir string
	c := &cobra.Command{
		Use:   "print [-C DIR] mrenclave|mrsigner",
		Short: "Print the build's measurement (mrenclave) or signer hash (mrsigner) as one hex line",
		Args:  exactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			what := args[0]
			if what != "mrenclave" && what != "mrsigner" {
				return usageErrorf("print: %q is not printable (want mrenclave or mrsigner)", what)
			}
			b, err := trustimage.LoadBuild(dir)
			if err != nil {
				return loadHint(err)
			}
			if what == "mrenclave" {
				fmt.Fprintln(env.Stdout, b.MeasurementHex())
			} else {
				fmt.Fprintln(env.Stdout, b.MrSignerHex())
			}
			return nil
		},
	}
	addDirFlag(c, &dir)
	return c
}

func loadHint(err error) error {
	switch {
	case errors.Is(err, trustimage.ErrNoInstance):
		return withHint(err, "pass the instance directory with -C DIR, or create one with veil new DIR")
	case errors.Is(err, trustimage.ErrNotBuilt):
		return withHint(err, "run veil build first")
	case errors.Is(err, trustimage.ErrConfigChanged):
		return withHint(err, "veil.json (or a file it names, such as a ca_cert file) changed since the build; run veil build")
	case errors.Is(err, config.ErrInvalid):
		return withHint(err, "see docs/config.md for the fields of veil.json")
	}
	return err
}

func newVerifyCmd(env *Env) *cobra.Command {
	var dir, imageKey string
	c := &cobra.Command{
		Use:   "verify [-C DIR] [--image-key FILE]",
		Short: "Check the build's signature, that veil.json still matches it, and every image block against the hash tree",
		Args:  exactArgs(0),
		RunE: func(c *cobra.Command, args []string) error {
			b, err := trustimage.LoadBuild(dir)
			if err != nil {
				return loadHint(err)
			}
			var key []byte
			if imageKey != "" {
				if key, err = trustimage.LoadImageKey(imageKey); err != nil {
					return err
				}
				defer clear(key)
			}
			r, err := b.Open(key)
			if err != nil {
				return fmt.Errorf("verifying %s: %w", b.ImagePath, err)
			}
			defer r.Close()
			bar := newProgress(env, "verifying", r.Size())
			err = r.Verify(c.Context(), bar.Add)
			bar.Done()
			var be *trustimage.BlockError
			if errors.As(err, &be) && be.Area == "data" {
				// Name the file too, when the file system can be read.
				if where := r.Locate(be.Block); where != "" {
					return fmt.Errorf("verifying %s: %w (in %s)", b.ImagePath, err, where)
				}
				if b.Encrypted() && key == nil {
					return withHint(fmt.Errorf("verifying %s: %w", b.ImagePath, err), "give --image-key to name the file the block belongs to")
				}
			}
			if err != nil {
				return fmt.Errorf("verifying %s: %w", b.ImagePath, err)
			}
			fmt.Fprintf(env.Stdout, "ok: signature, veil.json and %d image blocks verified\nmrenclave %s\nmrsigner  %s\n",
				b.Record.Image.DataBlocks, b.MeasurementHex(), b.MrSignerHex())
			return nil
		},
	}
	addDirFlag(c, &dir)
	c.Flags().StringVar(&imageKey, "image-key", "", "image key of an encrypted image (only used to name the file holding a bad block)")
	return c
}

func newGenSignKeyCmd(env *Env) *cobra.Command {
	return &cobra.Command{
		Use:   "gen-sign-key FILE",
		Short: "Create an Ed25519 build signing key (PEM, mode 0600) and print its mrsigner",
		Args:  exactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			k, err := trustimage.WriteSignKey(args[0])
			if err != nil {
				return err
			}
			m := k.MrSigner()
			fmt.Fprintf(env.Stdout, "%x\n", m)
			fmt.Fprintf(env.Stderr, "veil: wrote signing key %s; the line above is its mrsigner\n", args[0])
			return nil
		},
	}
}

func newGenImageKeyCmd(env *Env) *cobra.Command {
	return &cobra.Command{
		Use:   "gen-image-key FILE",
		Short: "Create a random 32-byte image encryption key (mode 0600)",
		Args:  exactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if err := trustimage.WriteImageKey(args[0]); err != nil {
				return err
			}
			fmt.Fprintf(env.Stderr, "veil: wrote image key %s; build with --image-key %s and give it to the KMS, never to the host\n", args[0], args[0])
			return nil
		},
	}
}
