package cli

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// Set at link time by the Makefile (-X).
var (
	version = "dev"
	commit  = ""
)

func newVersionCmd(env *Env) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print veil's version, commit and Go version",
		Args:  exactArgs(0),
		RunE: func(c *cobra.Command, args []string) error {
			rev := commit
			if rev == "" {
				rev = "unknown"
				if bi, ok := debug.ReadBuildInfo(); ok {
					for _, s := range bi.Settings {
						if s.Key == "vcs.revision" {
							rev = s.Value
						}
					}
				}
			}
			fmt.Fprintf(env.Stdout, "veil %s\ncommit %s\n%s %s/%s\n", version, rev, runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return nil
		},
	}
}
