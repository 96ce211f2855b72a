package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/veil-tee/veil/bigdl"
)

const formatBigDL = "bigdl"

// loadBigDLKey reads the single --key file:PATH holding a BigDL data key:
// the key string BigDL was given (the base64 text its KMS returned), of
// which BigDL uses the first 32 bytes.
func loadBigDLKey(refs []string) ([]byte, error) {
	hint := "BigDL files take their data key as BigDL used it: --key file:PATH holding the data-key text your KMS returned (at least 32 characters)"
	if len(refs) != 1 {
		return nil, &Error{Err: fmt.Errorf("a BigDL file needs exactly one --key, got %d", len(refs)), Code: ExitUsage, Hint: hint}
	}
	kind, path, ok := strings.Cut(refs[0], ":")
	if !ok || kind != "file" || path == "" {
		return nil, &Error{Err: fmt.Errorf("key %q: a BigDL data key must be given as file:PATH", refs[0]), Code: ExitUsage, Hint: hint}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the key: %w", unwrapPath(err))
	}
	k := bytes.TrimRight(b, "\r\n")
	if len(k) < bigdl.KeySize {
		clear(b)
		return nil, withHint(fmt.Errorf("key file %s: %w", path, bigdl.ErrKey), hint)
	}
	return k, nil
}

// decryptBigDL authenticates a BigDL PPML encrypted file and writes its
// plaintext to f.out.
func decryptBigDL(ctx context.Context, env *Env, f *cryptFlags) error {
	if f.in == "-" {
		return usageErrorf("--format bigdl reads a file (it is authenticated before any output): give -i FILE, not -")
	}
	key, err := loadBigDLKey(f.keys)
	if err != nil {
		return err
	}
	defer clear(key)
	fin, err := os.Open(f.in)
	if err != nil {
		return fmt.Errorf("opening %s: %w", f.in, unwrapPath(err))
	}
	defer fin.Close()
	fi, err := fin.Stat()
	if err != nil {
		return fmt.Errorf("opening %s: %w", f.in, err)
	}
	if fi.IsDir() {
		return usageErrorf("--format bigdl opens one file; %s is a directory", f.in)
	}
	run := func(w io.Writer) error {
		prog := newProgress(env, filepath.Base(f.in), fi.Size())
		defer prog.Done()
		_, err := bigdl.Decrypt(fin, fi.Size(), key, io.MultiWriter(w, prog))
		if errors.Is(err, bigdl.ErrAuth) {
			return withHint(fmt.Errorf("opening %s: %w", f.in, err), "check that --key holds the data key this file was written with")
		}
		if err != nil {
			return fmt.Errorf("opening %s: %w", f.in, err)
		}
		return nil
	}
	if f.out == "-" {
		return run(env.Stdout)
	}
	return cryptToFile(ctx, f.out, f.force, "opening "+f.in, run)
}

// bigdlExitCode maps BigDL file errors to exit codes (0: not theirs).
func bigdlExitCode(err error) int {
	if errors.Is(err, bigdl.ErrAuth) {
		return ExitIntegrity
	}
	return 0
}
