// Package cli implements the veil command line: one file per verb group,
// each a thin layer of flags and terminal output over the library packages.
// Only Main's caller (cmd/veil) exits the process.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/veil-tee/veil/instance/sandbox"
	"github.com/veil-tee/veil/internal/timing"
)

// Exit codes of the veil command; docs/cli.md lists them for users.
const (
	ExitOK        = 0 // success
	ExitFailure   = 1 // the operation failed (I/O, configuration, service errors)
	ExitUsage     = 2 // bad command line: unknown verb or flag, wrong arguments
	ExitIntegrity = 3 // data failed authentication: tampered, truncated, wrong key
	ExitDenied    = 4 // attestation evidence or a policy was not accepted
	ExitInterrupt = 130
)

// Env is what a command may touch of the outside world.
type Env struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
}

// Error is an error with an exit code and an optional hint the user can act on.
type Error struct {
	Err  error
	Hint string
	Code int
}

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// withHint attaches a hint to err, keeping its exit code.
func withHint(err error, hint string) error {
	if err == nil {
		return nil
	}
	var ce *Error
	if errors.As(err, &ce) {
		return &Error{Err: ce.Err, Hint: hint, Code: ce.Code}
	}
	return &Error{Err: err, Hint: hint}
}

// usageErrorf reports a bad command line (exit code 2).
func usageErrorf(format string, a ...any) error {
	return &Error{Err: fmt.Errorf(format, a...), Code: ExitUsage}
}

// exitCoders lists, in the order they are asked, the functions that map
// library sentinel errors to exit codes; each verb file supplies one.
func exitCoders() []func(error) int {
	return []func(error) int{attestExitCode, dataExitCode, gramineExitCode, bigdlExitCode, imageExitCode, packageExitCode, kmsExitCode, runExitCode}
}

func exitCode(err error) int {
	var ce *Error
	if errors.As(err, &ce) && ce.Code != 0 {
		return ce.Code
	}
	if errors.Is(err, context.Canceled) {
		return ExitInterrupt
	}
	for _, f := range exitCoders() {
		if c := f(err); c != 0 {
			return c
		}
	}
	return ExitFailure
}

// Command groups shown by `veil --help`.
const (
	groupImage   = "image"
	groupRuntime = "runtime"
	groupData    = "data"
	groupKeys    = "keys"
	groupAttest  = "attest"
)

var groups = []*cobra.Group{
	{ID: groupImage, Title: "Image:"},
	{ID: groupRuntime, Title: "Runtime:"},
	{ID: groupData, Title: "Data:"},
	{ID: groupKeys, Title: "Keys:"},
	{ID: groupAttest, Title: "Attestation:"},
}

// verb is a top-level command and its help group.
type verb struct {
	group string
	make  func(*Env) *cobra.Command
}

// verbs lists veil's top-level commands; `veil --help` sorts them by name.
func verbs() []verb {
	return []verb{
		{groupAttest, newSimCmd},
		{groupAttest, newAttestCmd},
		{groupData, newGenKeyCmd},
		{groupData, newEncryptCmd},
		{groupData, newDecryptCmd},
		{groupData, newInspectCmd},
		{groupImage, newNewCmd},
		{groupImage, newBuildCmd},
		{groupImage, newPrintCmd},
		{groupImage, newVerifyCmd},
		{groupImage, newPackageCmd},
		{groupImage, newUnpackCmd},
		{groupKeys, newGenSignKeyCmd},
		{groupKeys, newGenImageKeyCmd},
		{groupKeys, newKMSCmd},
		{groupRuntime, newRunCmd},
		{groupRuntime, newStartCmd},
		{groupRuntime, newExecCmd},
		{groupRuntime, newStopCmd},
		{groupRuntime, newKillCmd},
		{groupRuntime, newStatusCmd},
		{"", newSuperviseCmd},
		{"", newVersionCmd},
	}
}

// NewRoot builds the veil command tree over env.
func NewRoot(env *Env) *cobra.Command {
	root := &cobra.Command{
		Use:   "veil",
		Short: "Run unmodified programs in a trusted execution environment, with sealed data and attested keys",
		Long: `veil runs existing programs inside a trusted execution environment (TEE)
on machines whose owners are not trusted. Data stays sealed outside the TEE;
keys are released by a key service only to workloads whose identity is proven
by remote attestation.`,
		SilenceErrors:     true,
		SilenceUsage:      true,
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
	}
	root.SetIn(env.Stdin)
	root.SetOut(env.Stdout)
	root.SetErr(env.Stderr)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return &Error{Err: err, Code: ExitUsage, Hint: fmt.Sprintf("see '%s --help'", c.CommandPath())}
	})
	used := map[string]bool{}
	vs := verbs()
	cmds := make([]*cobra.Command, 0, len(vs))
	for _, r := range vs {
		c := r.make(env)
		c.GroupID = r.group
		used[r.group] = true
		cmds = append(cmds, c)
	}
	for _, g := range groups {
		if used[g.ID] {
			root.AddGroup(g)
		}
	}
	sort.Slice(cmds, func(i, j int) bool { return cmds[i].Name() < cmds[j].Name() })
	root.AddCommand(cmds...)
	return root
}

// Main runs veil with args and returns the process exit code.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if sandbox.IsInit() {
		return sandbox.Init()
	}
	timing.Mark("veil", "started")
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	env := &Env{Stdin: stdin, Stdout: stdout, Stderr: stderr}
	root := NewRoot(env)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return ExitOK
	}
	var es exitStatus
	if errors.As(err, &es) {
		return int(es) // the program's status; it has spoken for itself
	}
	if ctx.Err() != nil && !errors.Is(err, context.Canceled) {
		err = fmt.Errorf("interrupted: %w", err)
	}
	code := exitCode(err)
	if code == ExitFailure && isCobraUsageError(err) {
		code = ExitUsage
		err = withHint(err, "see 'veil --help'")
	}
	fmt.Fprintf(stderr, "veil: error: %s\n", oneLine(err.Error()))
	var ce *Error
	if errors.As(err, &ce) && ce.Hint != "" {
		fmt.Fprintf(stderr, "veil: hint: %s\n", oneLine(ce.Hint))
	}
	if ctx.Err() != nil {
		return ExitInterrupt
	}
	return code
}

// isCobraUsageError recognises the errors cobra itself returns for an
// unknown verb; cobra offers no typed error for them.
func isCobraUsageError(err error) bool {
	s := err.Error()
	return strings.HasPrefix(s, "unknown command") || strings.HasPrefix(s, "unknown shorthand flag") || strings.HasPrefix(s, "unknown flag")
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " ")), " ")
}

// exactArgs is cobra.ExactArgs with a usage exit code and the verb's usage line.
func exactArgs(n int) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if len(args) != n {
			return &Error{Err: fmt.Errorf("%s takes %d argument(s), got %d", c.CommandPath(), n, len(args)), Code: ExitUsage, Hint: "usage: " + c.UseLine()}
		}
		return nil
	}
}
