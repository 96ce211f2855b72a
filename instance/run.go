package instance

import (
	"context"
	"errors"
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

// ErrInterrupted: a termination signal arrived while the instance was
// being set up (attestation, key services, mounts); nothing was left
// mounted and the program never started.
var ErrInterrupted = errors.New("interrupted during set-up")

// Run opens the instance, runs the program in its sandbox, forwards
// signals, unmounts everything when the program ends, and returns its
// status: the exit code, or 128 + the signal that killed it. A
// termination signal (SIGINT, SIGTERM, SIGHUP, SIGQUIT) on o.Signals
// before the program runs cancels the set-up instead (ErrInterrupted);
// signals reach the program only once it runs.
func Run(ctx context.Context, o RunOptions) (int, error) {
	o.Options.Program = o.Path
	setup := watchSetup(ctx, o.Signals)
	sb, in, err := start(setup.ctx, o)
	sig := setup.end()
	if err != nil {
		if sig != nil {
			return 0, interrupted{sig}
		}
		return 0, err
	}
	defer in.Close()
	if sig != nil {
		// It came as the program started: the program gets it.
		sb.Signal(0, sig.(syscall.Signal))
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

// start opens the instance and starts the program in its sandbox; on
// error nothing is left open or mounted.
func start(ctx context.Context, o RunOptions) (*sandbox.Sandbox, *Instance, error) {
	in, err := Open(ctx, o.Options)
	if err != nil {
		return nil, nil, err
	}
	cmd, err := in.Command(o.Path, o.Args, o.Env)
	if err == nil {
		var spec *sandbox.Spec
		if spec, err = in.Spec(cmd); err == nil && ctx.Err() == nil {
			in.Prefetch(cmd.Path)
			var sb *sandbox.Sandbox
			if sb, err = sandbox.Start(spec, sandbox.Options{InitPath: o.InitPath, Stdin: o.Stdin, Stdout: o.Stdout, Stderr: o.Stderr}); err == nil {
				return sb, in, nil
			}
		}
	}
	in.Close()
	if err == nil {
		err = ctx.Err()
	}
	return nil, nil, err
}

// interrupted is ErrInterrupted with its signal; it is also a
// context.Canceled, as a cancelled context's set-up is.
type interrupted struct{ sig os.Signal }

func (e interrupted) Error() string {
	return fmt.Sprintf("%s by %v; nothing was left mounted", ErrInterrupted, e.sig)
}

func (e interrupted) Is(target error) bool {
	return target == ErrInterrupted || target == context.Canceled
}

// setupWatch cancels ctx when a termination signal arrives during set-up.
type setupWatch struct {
	ctx    context.Context
	cancel context.CancelFunc
	stop   chan struct{}
	done   chan struct{}
	sig    os.Signal
}

// terminating are the signals that cancel a set-up.
var terminating = map[os.Signal]bool{syscall.SIGINT: true, syscall.SIGTERM: true, syscall.SIGHUP: true, syscall.SIGQUIT: true}

func watchSetup(ctx context.Context, sigs <-chan os.Signal) *setupWatch {
	w := &setupWatch{stop: make(chan struct{}), done: make(chan struct{})}
	w.ctx, w.cancel = context.WithCancel(ctx)
	go func() {
		defer close(w.done)
		for {
			select {
			case s := <-sigs:
				if terminating[s] {
					w.sig = s
					w.cancel()
					return
				}
				// Others (SIGUSR1, ...) are for the program, which does
				// not run yet: dropped.
			case <-w.stop:
				return
			}
		}
	}()
	return w
}

// end stops watching and returns the signal that cancelled the set-up, if any.
func (w *setupWatch) end() os.Signal {
	close(w.stop)
	<-w.done
	w.cancel()
	return w.sig
}
