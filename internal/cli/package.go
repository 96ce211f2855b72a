package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/veil-tee/veil/ociimage"
)

// packageExitCode maps a tampered or mismatching package to the integrity
// exit code.
func packageExitCode(err error) int {
	if errors.Is(err, ociimage.ErrTampered) || errors.Is(err, ociimage.ErrMismatch) {
		return ExitIntegrity
	}
	return 0
}

func newPackageCmd(env *Env) *cobra.Command {
	var dir, out, veilBin, base, ref string
	c := &cobra.Command{
		Use:   "package [-C DIR] -o IMAGE.tar [--base IMAGE.tar] [--veil PATH] [--tag NAME]",
		Short: "Write the built instance and the veil binary as a reproducible OCI image archive",
		Args:  exactArgs(0),
		RunE: func(c *cobra.Command, args []string) error {
			if out == "" {
				return usageErrorf("package: -o IMAGE.tar is required")
			}
			if veilBin == "" {
				exe, err := os.Executable()
				if err != nil {
					return withHint(fmt.Errorf("finding the running veil binary: %w", err), "name the binary to ship with --veil PATH")
				}
				veilBin = exe
			}
			created, err := sourceDateEpoch()
			if err != nil {
				return err
			}
			res, err := ociimage.Package(c.Context(), out, ociimage.Options{
				Instance: dir, Veil: veilBin, Version: version, Base: base, Ref: ref, Created: created,
			})
			if errors.Is(err, ociimage.ErrBadBinary) {
				return withHint(err, "ship a static veil (CGO_ENABLED=0 go build ./cmd/veil) with --veil PATH, or give --base IMAGE.tar")
			}
			if err != nil {
				return loadHint(err)
			}
			baseNote := ""
			if res.BaseBytes > 0 {
				baseNote = fmt.Sprintf(" + base %s", human(res.BaseBytes))
			}
			fmt.Fprintf(env.Stderr, "veil: packaged %s as %s: %s (instance %s + veil %s%s)\n",
				filepath.Clean(dir), out, human(res.Size), human(res.BuildBytes), human(res.VeilBytes), baseNote)
			fmt.Fprintf(env.Stderr, "veil: load it with: docker load -i %s   (or podman load -i %s)\n", out, out)
			fmt.Fprintf(env.Stdout, "image     %s\nref       %s\nmrenclave %s\nmrsigner  %s\n", res.Digest, res.Ref, res.Measurement, res.Signer)
			return nil
		},
	}
	addDirFlag(c, &dir)
	c.Flags().StringVarP(&out, "output", "o", "", "image archive to write (OCI layout in a tar file)")
	c.Flags().StringVar(&veilBin, "veil", "", "veil binary to ship (default: the running one); must be static without --base")
	c.Flags().StringVar(&base, "base", "", "image archive (docker save or OCI layout tar) to put the image on top of")
	c.Flags().StringVar(&ref, "tag", "", "image name in the archive (default localhost/veil-DIRNAME:latest)")
	return c
}

// sourceDateEpoch is the image time: SOURCE_DATE_EPOCH if set, else zero
// (the Unix epoch).
func sourceDateEpoch() (time.Time, error) {
	s := os.Getenv("SOURCE_DATE_EPOCH")
	if s == "" {
		return time.Time{}, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return time.Time{}, usageErrorf("SOURCE_DATE_EPOCH=%q is not a number of seconds", s)
	}
	return time.Unix(n, 0), nil
}

func newUnpackCmd(env *Env) *cobra.Command {
	var measurement string
	c := &cobra.Command{
		Use:   "unpack IMAGE.tar DIR [--measurement HEX]",
		Short: "Check a packaged image (digests, signature, measurement, hash tree) and write its veil and instance under DIR",
		Args:  exactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			u, err := ociimage.Unpack(c.Context(), args[0], args[1], ociimage.UnpackOptions{Measurement: measurement})
			switch {
			case errors.Is(err, ociimage.ErrTampered):
				return withHint(err, "the image was changed after veil package; fetch it again from where it was published")
			case errors.Is(err, ociimage.ErrMismatch):
				return withHint(err, "this is not the instance you expect; check where the image came from")
			case err != nil:
				return err
			}
			fmt.Fprintf(env.Stderr, "veil: verified and unpacked %s into %s; run it with %s run -C %s PROGRAM\n", args[0], args[1], u.Veil, u.Instance)
			fmt.Fprintf(env.Stdout, "image     %s\nmrenclave %s\nmrsigner  %s\n", u.Digest, u.Measurement, u.Signer)
			return nil
		},
	}
	c.Flags().StringVar(&measurement, "measurement", "", "refuse the image unless its instance has this measurement (hex)")
	return c
}
