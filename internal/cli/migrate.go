package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/veil-tee/veil/migrate"
)

// veil new --from-occlum / --from-gramine: the instance's veil.json is
// imported instead of the template, and every field that did not map is
// listed.

// migrationFile records, in the new instance, what was imported and what
// was not.
const migrationFile = "MIGRATION.txt"

type importFlags struct {
	occlum, gramine string
	sealedKey       string
	gramineKeys     []string
}

func (f *importFlags) add(c *cobra.Command) {
	c.Flags().StringVar(&f.occlum, "from-occlum", "", "import an Occlum.json (entry points, env, resource limits, metadata, mounts)")
	c.Flags().StringVar(&f.gramine, "from-gramine", "", "import a rendered Gramine manifest (TOML)")
	c.Flags().StringVar(&f.sealedKey, "sealed-key", "", `--from-occlum: key reference of the sealed mounts made from SEFS mounts (default "file:keys/sealed.key")`)
	c.Flags().StringArrayVar(&f.gramineKeys, "gramine-key", nil, `--from-gramine: NAME=REF, the key reference of Gramine key NAME's 16-byte wrap key (default "file:keys/NAME.key"; repeatable)`)
}

// load imports the configuration, or returns nil if no import was asked for.
func (f *importFlags) load() (*migrate.Result, error) {
	if f.occlum != "" && f.gramine != "" {
		return nil, usageErrorf("give --from-occlum or --from-gramine, not both")
	}
	in := f.occlum + f.gramine
	if in == "" {
		if f.sealedKey != "" || len(f.gramineKeys) > 0 {
			return nil, usageErrorf("--sealed-key and --gramine-key go with --from-occlum or --from-gramine")
		}
		return nil, nil
	}
	data, err := readLimited(in, 1<<20)
	if err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(in)
	if err != nil {
		return nil, err
	}
	opts := migrate.Options{BaseDir: filepath.Dir(abs), SealedKey: f.sealedKey, GramineKeys: map[string]string{}}
	for _, kv := range f.gramineKeys {
		name, ref, ok := strings.Cut(kv, "=")
		if !ok || name == "" || ref == "" {
			return nil, usageErrorf("--gramine-key %q: want NAME=REF, such as default=file:wrap.key", kv)
		}
		opts.GramineKeys[name] = ref
	}
	var res *migrate.Result
	if f.occlum != "" {
		res, err = migrate.FromOcclum(data, opts)
	} else {
		res, err = migrate.FromGramine(data, opts)
	}
	if err != nil {
		if errors.Is(err, migrate.ErrInput) {
			return nil, withHint(fmt.Errorf("importing %s: %w", in, err), "docs/migrating.md lists what is imported")
		}
		return nil, fmt.Errorf("importing %s: %w", in, err)
	}
	return res, nil
}

func readLimited(path string, limit int64) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, unwrapPath(err))
	}
	defer fh.Close()
	b, err := io.ReadAll(io.LimitReader(fh, limit+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("reading %s: larger than %d bytes", path, limit)
	}
	return b, nil
}

// report writes MIGRATION.txt into dir and lists the unmapped fields on
// stderr.
func (f *importFlags) report(env *Env, dir string, res *migrate.Result) error {
	var b strings.Builder
	fmt.Fprintf(&b, "veil.json imported from %s\n\nMapped:\n", f.occlum+f.gramine)
	for _, n := range res.Mapped {
		fmt.Fprintf(&b, "  %s -> %s\n", n.Field, n.Reason)
	}
	fmt.Fprintf(&b, "\nNot mapped:\n")
	for _, n := range res.Unmapped {
		fmt.Fprintf(&b, "  %s: %s\n", n.Field, n.Reason)
		fmt.Fprintf(env.Stderr, "veil: not mapped: %s: %s\n", n.Field, n.Reason)
	}
	fmt.Fprintf(env.Stderr, "veil: imported %d field(s), %d not mapped (listed in %s)\n", len(res.Mapped), len(res.Unmapped), filepath.Join(dir, migrationFile))
	return os.WriteFile(filepath.Join(dir, migrationFile), []byte(b.String()), 0o644)
}
