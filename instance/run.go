package instance

import (
	"context"
	"fmt"
	"os"
	"syscall"

	"github.com/veil-tee/veil/instance/sandbox"
	"github.com/veil-tee/veil/internal/timing"
)

// RunOptions are Options plus the program to run.
type RunOptions struct {
	Options
	Path string   // program inside the image
	Args []string // arguments from the host (used if args.passthrough)
	Env  []string // the host environment (for env.passthrough)

	Stdin, Stdout, Stderr *os.File
	// Signals are forwarded to the program (e.g. from signal.Notify).
	Signals <-chan os.Signal
	// InitPath is the veil binary the sandbox re-executes (tests).
	InitPath string
}

// Run opens the instance, runs the program in its sandbox, forwards
// signals, unmounts everything when the program ends, and returns its
// status: the exit code, or 128 + the signal that killed it.
func Run(ctx context.Context, o RunOptions) (int, error) {
	o.Options.Program = o.Path
	in, err := Open(ctx, o.Options)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	cmd, err := in.Command(o.Path, o.Args, o.Env)
	if err != nil {
		return 0, err
	}
	spec, err := in.Spec(cmd)
	if err != nil {
		return 0, err
	}
	in.Prefetch(cmd.Path)
	sb, err := sandbox.Start(spec, sandbox.Options{InitPath: o.InitPath, Stdin: o.Stdin, Stdout: o.Stdout, Stderr: o.Stderr})
	if err != nil {
		return 0, err
	}
	for _, n := range sb.NotApplied {
		if o.Warn != nil {
			o.Warn(fmt.Sprintf("not applied: %s", n))
		}
	}
	for {
		select {
		case s := <-o.Signals:
			if sig, ok := s.(syscall.Signal); ok {
				sb.Signal(0, sig)
			}
		case <-ctx.Done():
			sb.Signal(0, syscall.SIGTERM)
			ctx = context.Background() // wait for the program to end
		case <-sb.Done():
			timing.Mark("veil", "program ended")
			return sb.Wait()
		}
	}
}
