package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/veil-tee/veil/attest"
	"github.com/veil-tee/veil/attest/sim"
	"github.com/veil-tee/veil/instance"
	"github.com/veil-tee/veil/instance/sandbox"
	"github.com/veil-tee/veil/kms/client"
	"github.com/veil-tee/veil/kms/workload"
	"github.com/veil-tee/veil/trustimage"
)

// runExitCode maps the run verbs' library errors to exit codes (0: not theirs).
func runExitCode(err error) int {
	if errors.Is(err, instance.ErrKeyDenied) || errors.Is(err, attest.ErrDenied) || errors.Is(err, instance.ErrKMSNotTrusted) || errors.Is(err, instance.ErrKMSIdentity) {
		return ExitDenied
	}
	if errors.Is(err, trustimage.ErrCorrupt) {
		return ExitIntegrity
	}
	return 0
}

// runtimeOptions are the flags shared by run and start.
type runtimeOptions struct {
	dir, imageKey, logFile, kmsCollateral string
	kmsAddrs                              []string // --kms-address NAME=ADDRESS
	kmsTries                              int
}

func (r *runtimeOptions) add(c *cobra.Command) {
	addDirFlag(c, &r.dir)
	c.Flags().StringVar(&r.imageKey, "image-key", "", "key of an encrypted image: kms:SECRETID@KMSNAME (released by the key service after attestation) or a key file")
	c.Flags().StringVar(&r.logFile, "log", "", "write runtime events (integrity failures, mounts) to this file as JSON; default: standard error")
	c.Flags().StringVar(&r.kmsCollateral, "kms-collateral", "", "Intel PCS collateral directory, for key services in SGX or TDX whose veil.json entry has an attest policy")
	c.Flags().IntVar(&r.kmsTries, "kms-tries", 3, "how many times to try each key service of veil.json at start before giving up (0.3 s apart, then 0.6 s, ..., at most 2 s)")
	c.Flags().StringArrayVar(&r.kmsAddrs, "kms-address", nil, "NAME=ADDRESS: reach key service NAME of veil.json at ADDRESS instead of its kms[].address (not measured; its pin still applies); also "+kmsAddressEnv+"NAME")
}

// supervisorArgs are the flags veil start hands to its supervisor.
func (r *runtimeOptions) supervisorArgs() []string {
	var args []string
	if r.imageKey != "" {
		args = append(args, "--image-key", r.imageKey)
	}
	if r.kmsCollateral != "" {
		args = append(args, "--kms-collateral", r.kmsCollateral)
	}
	for _, a := range r.kmsAddrs {
		args = append(args, "--kms-address", a)
	}
	if r.kmsTries != 3 {
		args = append(args, "--kms-tries", strconv.Itoa(r.kmsTries))
	}
	return args
}

func (r *runtimeOptions) options(env *Env) (instance.Options, func(), error) {
	o := instance.Options{
		Dir:              r.dir,
		MountRoot:        mountImage,
		MountSealed:      mountSealed,
		MountAttestation: mountAttestation,
		Warn:             func(s string) { fmt.Fprintf(env.Stderr, "veil: warning: %s\n", s) },
		Info:             func(s string) { fmt.Fprintf(env.Stderr, "veil: %s\n", s) },
		KMSRetries:       r.kmsTries,
	}
	done := func() {}
	if r.kmsTries < 1 {
		return o, done, usageErrorf("--kms-tries %d: want 1 or more", r.kmsTries)
	}
	var w io.Writer = env.Stderr
	if r.logFile != "" {
		f, err := os.OpenFile(r.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return o, done, fmt.Errorf("opening --log: %w", err)
		}
		w, done = f, func() { f.Close() }
	}
	o.Logger = slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn}))
	addrs, err := kmsAddresses(os.Environ(), r.kmsAddrs)
	if err != nil {
		done()
		return o, func() {}, err
	}
	o.KMSAddresses = addrs
	if r.kmsCollateral != "" {
		// The local sim platform stays trusted too, as without the flag.
		simCA := ""
		if d, err := sim.DefaultDir(); err == nil {
			if _, err := os.Stat(filepath.Join(d, "ca.pem")); err == nil {
				simCA = filepath.Join(d, "ca.pem")
			}
		}
		v, err := (workload.Trust{SimCA: simCA, Collateral: r.kmsCollateral}).EvidenceVerifier()
		if err != nil {
			done()
			return o, func() {}, fmt.Errorf("--kms-collateral: %w", err)
		}
		o.KMSVerifier = v
	}
	switch {
	case strings.HasPrefix(r.imageKey, "kms:"):
		o.ImageKeyRef = r.imageKey
	case r.imageKey != "":
		k, err := trustimage.LoadImageKey(strings.TrimPrefix(r.imageKey, "file:"))
		if err != nil {
			done()
			return o, func() {}, err
		}
		o.ImageKey = k
	}
	return o, done, nil
}

// runtimeErr adds hints to the runtime's errors.
func runtimeErr(err error) error {
	switch {
	case errors.Is(err, trustimage.ErrNoInstance):
		return withHint(err, "pass the instance directory with -C DIR, or create one with veil new DIR")
	case errors.Is(err, trustimage.ErrNotBuilt):
		return withHint(err, "build the instance first: veil build -C DIR")
	case errors.Is(err, instance.ErrNotEntrypoint):
		return withHint(err, "add its directory to entrypoints in veil.json and rebuild")
	case errors.Is(err, instance.ErrNoPlatform):
		return withHint(err, "for development create the software platform: veil sim init")
	case errors.Is(err, instance.ErrNoProgram):
		return withHint(err, "put it in DIR/image/ or the bom section of veil.json, then veil build")
	case errors.Is(err, instance.ErrKMSNotTrusted):
		return withHint(err, "the key service must run `veil kms serve --attest` in a TEE its kms[].attest policy in veil.json accepts")
	case errors.Is(err, client.ErrWorkloadAuth) && strings.Contains(err.Error(), "unknown authority"):
		return withHint(err, "the key service does not trust this machine's sim platform: start it with --sim-ca "+simCAPath()+" (or run both under one VEIL_HOME)")
	case errors.Is(err, client.ErrPolicyDenied):
		return withHint(err, "no release policy of the key accepts this build; after a rebuild the key's owner runs: veil kms policy create --from-instance DIR --key KEY --replace (with --allow-sim for the sim backend)")
	case errors.Is(err, client.ErrKeyNotFound), errors.Is(err, client.Code("secret_not_found")):
		return withHint(err, "the id in veil.json is not at that key service (veil kms key list shows the owner's keys); names in veil.json are resolved by veil build")
	case errors.Is(err, instance.ErrKMSUnreachable):
		return withHint(err, "is the key service running? check kms[].address in veil.json, or give the address with "+kmsAddressEnv+"NAME or --kms-address NAME=ADDRESS")
	case errors.Is(err, instance.ErrKMSIdentity):
		return withHint(err, "the address leads to another key service than the one veil.json pins; check "+kmsAddressEnv+"NAME, --kms-address or kms[].address")
	case errors.Is(err, instance.ErrUnknownKMS):
		return withHint(err, kmsAddressEnv+"NAME and --kms-address name a key service of veil.json's kms list (NAME in capitals, - as _)")
	case errors.Is(err, sandbox.ErrDenied):
		return withHint(err, "the sandbox always runs in a user namespace (also as root): allow them (sysctl user.max_user_namespaces > 0); without root veil also needs fusermount3 and a readable /dev/fuse")
	case errors.Is(err, instance.ErrRunning):
		return withHint(err, "use veil exec to run programs in it, or veil stop first")
	case errors.Is(err, instance.ErrNotRunning):
		return withHint(err, "start it with veil start")
	case strings.Contains(err.Error(), "/dev/fuse is missing"):
		return withHint(err, "load the fuse module (modprobe fuse) or, in a container, pass --device /dev/fuse")
	}
	return err
}

func stdio(env *Env) (in, out, errf *os.File) {
	in, _ = env.Stdin.(*os.File)
	out, _ = env.Stdout.(*os.File)
	errf, _ = env.Stderr.(*os.File)
	return
}

func newRunCmd(env *Env) *cobra.Command {
	var r runtimeOptions
	c := &cobra.Command{
		Use:   "run [-C DIR] PATH [ARGS...]",
		Short: "Run a program of a built instance in the TEE, with its keys fetched by attestation",
		Long: `run verifies the instance in DIR (signature, measurement, veil.json), attests
to its key services and fetches what their policies release, mounts the
verified image as the root and the sealed, hostfs and tmpfs mounts, and runs
PATH in a sandbox. veil exits with the program's status (128 + signal if it
was killed). If a key service refuses a key, the program never starts.`,
		Example: `  veil run -C app /usr/bin/python3 /app/job.py`,
		Args: func(c *cobra.Command, args []string) error {
			if len(args) == 0 {
				return &Error{Err: errors.New("run needs the program to run"), Code: ExitUsage, Hint: "usage: " + c.UseLine()}
			}
			return nil
		},
		RunE: func(c *cobra.Command, args []string) error {
			o, done, err := r.options(env)
			if err != nil {
				return err
			}
			defer done()
			sigs := make(chan os.Signal, 4)
			signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2)
			defer signal.Stop(sigs)
			in, out, errf := stdio(env)
			status, err := instance.Run(context.Background(), instance.RunOptions{
				Options: o, Path: args[0], Args: args[1:], Env: os.Environ(),
				Stdin: in, Stdout: out, Stderr: errf, Signals: sigs,
			})
			if err != nil {
				return runtimeErr(err)
			}
			if status != 0 {
				return exitStatus(status)
			}
			return nil
		},
	}
	c.Flags().SetInterspersed(false)
	r.add(c)
	return c
}

func newStartCmd(env *Env) *cobra.Command {
	var r runtimeOptions
	c := &cobra.Command{
		Use:   "start [-C DIR]",
		Short: "Start an instance in the background for veil exec (attested once, mounts kept)",
		Args:  exactArgs(0),
		RunE: func(c *cobra.Command, _ []string) error {
			dir, err := filepath.Abs(r.dir)
			if err != nil {
				return err
			}
			if conn, err := instance.Dial(dir); err == nil {
				conn.Close()
				return runtimeErr(fmt.Errorf("%s: %w", dir, instance.ErrRunning))
			}
			if err := os.MkdirAll(filepath.Join(dir, "run"), 0o700); err != nil {
				return err
			}
			logPath := r.logFile
			if logPath == "" {
				logPath = filepath.Join(dir, "run", "supervisor.log")
			}
			self, err := os.Executable()
			if err != nil {
				return err
			}
			pr, pw, err := os.Pipe()
			if err != nil {
				return err
			}
			args := append([]string{"__supervise", "-C", dir, "--log", logPath}, r.supervisorArgs()...)
			cmd := exec.Command(self, args...)
			cmd.ExtraFiles = []*os.File{pw}
			cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
			if err := cmd.Start(); err != nil {
				return err
			}
			pw.Close()
			// Ctrl-C while the supervisor sets up (attestation, key
			// services, mounts) stops it: it cancels and cleans up.
			msgc := make(chan []byte, 1)
			go func() {
				msg, _ := io.ReadAll(io.LimitReader(pr, 1<<16))
				msgc <- msg
			}()
			var msg []byte
			select {
			case msg = <-msgc:
			case <-c.Context().Done():
				cmd.Process.Signal(syscall.SIGTERM)
				msg = <-msgc
			}
			pr.Close()
			if s := strings.TrimSpace(string(msg)); s != "ready" {
				cmd.Wait()
				if s == "" {
					s = "the supervisor exited during start; see " + logPath
				}
				return runtimeErr(errors.New(strings.TrimPrefix(s, "error: ")))
			}
			pid := cmd.Process.Pid
			cmd.Process.Release()
			fmt.Fprintf(env.Stderr, "veil: started %s (supervisor %d); run programs with veil exec -C %s PATH\n", dir, pid, r.dir)
			return nil
		},
	}
	r.add(c)
	return c
}

// newSuperviseCmd is the detached supervisor behind veil start.
func newSuperviseCmd(env *Env) *cobra.Command {
	var r runtimeOptions
	c := &cobra.Command{
		Use:    "__supervise",
		Hidden: true,
		Args:   exactArgs(0),
		RunE: func(c *cobra.Command, _ []string) error {
			ready := os.NewFile(3, "ready")
			report := func(s string) {
				if ready != nil {
					fmt.Fprintln(ready, s)
					ready.Close()
					ready = nil
				}
			}
			o, done, err := r.options(env)
			if err != nil {
				report("error: " + err.Error())
				return err
			}
			defer done()
			// Caught, not ignored: an ignored signal stays ignored in every
			// program the sandbox starts, which could then never be
			// interrupted (veil exec forwards Ctrl-C as SIGINT). During
			// set-up, SIGTERM and SIGINT cancel it.
			caught := make(chan os.Signal, 4)
			signal.Notify(caught, syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM)
			setupCtx, cancel := context.WithCancel(context.Background())
			defer cancel()
			setupDone := make(chan struct{})
			go func() {
				for {
					select {
					case s := <-caught:
						if s == syscall.SIGTERM || s == syscall.SIGINT {
							cancel()
						}
					case <-setupDone:
						return
					}
				}
			}()
			sup, err := instance.Supervise(setupCtx, o, "")
			close(setupDone)
			if err == nil && setupCtx.Err() != nil {
				sup.Stop(0)
				sup.Serve()
				err = context.Canceled
			}
			if err != nil {
				report("error: " + err.Error())
				return err
			}
			report("ready")
			// SIGTERM (kill, a service manager, shutdown) stops the
			// instance cleanly, like veil stop.
			term := make(chan os.Signal, 1)
			signal.Notify(term, syscall.SIGTERM)
			defer signal.Stop(term)
			go func() {
				if _, ok := <-term; ok {
					sup.Stop(0)
				}
			}()
			return sup.Serve()
		},
	}
	r.add(c)
	return c
}

func newExecCmd(env *Env) *cobra.Command {
	var dir string
	c := &cobra.Command{
		Use:   "exec [-C DIR] PATH [ARGS...]",
		Short: "Run another program in a started instance, with this terminal's stdio",
		Args: func(c *cobra.Command, args []string) error {
			if len(args) == 0 {
				return &Error{Err: errors.New("exec needs the program to run"), Code: ExitUsage, Hint: "usage: " + c.UseLine()}
			}
			return nil
		},
		RunE: func(c *cobra.Command, args []string) error {
			conn, err := instance.Dial(dir)
			if err != nil {
				return runtimeErr(err)
			}
			defer conn.Close()
			in, out, errf := stdio(env)
			if in == nil || out == nil || errf == nil {
				return errors.New("exec needs file descriptors for stdin, stdout and stderr")
			}
			sigs := make(chan os.Signal, 4)
			signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
			defer signal.Stop(sigs)
			if _, err := instance.Call(conn, &instance.Request{Op: "exec", Path: args[0], Args: args[1:], Env: os.Environ()}, in, out, errf); err != nil {
				return runtimeErr(err)
			}
			go func() {
				for s := range sigs {
					instance.SendRequest(conn, &instance.Request{Op: "signal", Sig: int(s.(syscall.Signal))})
				}
			}()
			r, err := instance.ReadReply(conn)
			if err != nil {
				return err
			}
			if r.Status != 0 {
				return exitStatus(r.Status)
			}
			return nil
		},
	}
	c.Flags().SetInterspersed(false)
	addDirFlag(c, &dir)
	return c
}

func newStopCmd(env *Env) *cobra.Command {
	var dir string
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "stop [-C DIR] [--timeout D]",
		Short: "Stop a started instance: TERM, then KILL after the timeout, then unmount",
		Args:  exactArgs(0),
		RunE: func(c *cobra.Command, _ []string) error {
			conn, err := instance.Dial(dir)
			if err != nil {
				return runtimeErr(err)
			}
			defer conn.Close()
			if _, err := instance.Call(conn, &instance.Request{Op: "stop", Timeout: timeout.Milliseconds()}); err != nil {
				return err
			}
			// The supervisor unmounts and exits after answering; wait for its socket to go.
			deadline := time.Now().Add(timeout + 10*time.Second)
			for time.Now().Before(deadline) {
				if _, err := os.Stat(instance.SocketPath(absDir(dir))); errors.Is(err, os.ErrNotExist) {
					return nil
				}
				time.Sleep(50 * time.Millisecond)
			}
			return errors.New("the supervisor did not finish stopping")
		},
	}
	addDirFlag(c, &dir)
	c.Flags().DurationVar(&timeout, "timeout", 10*time.Second, "time between TERM and KILL")
	return c
}

func absDir(d string) string {
	a, err := filepath.Abs(d)
	if err != nil {
		return d
	}
	return a
}

func newKillCmd(env *Env) *cobra.Command {
	var dir, sigName string
	c := &cobra.Command{
		Use:   "kill [-C DIR] [--signal SIG] [PID]",
		Short: "Send a signal to a process of a started instance (all of them without PID)",
		Args: func(c *cobra.Command, args []string) error {
			if len(args) > 1 {
				return usageErrorf("kill takes at most one PID")
			}
			return nil
		},
		RunE: func(c *cobra.Command, args []string) error {
			sig, err := parseSignal(sigName)
			if err != nil {
				return err
			}
			pid := 0
			if len(args) == 1 {
				if pid, err = strconv.Atoi(args[0]); err != nil || pid <= 0 {
					return usageErrorf("PID %q is not a process id (see veil status)", args[0])
				}
			}
			conn, err := instance.Dial(dir)
			if err != nil {
				return runtimeErr(err)
			}
			defer conn.Close()
			_, err = instance.Call(conn, &instance.Request{Op: "kill", PID: pid, Sig: int(sig)})
			return err
		},
	}
	addDirFlag(c, &dir)
	c.Flags().StringVarP(&sigName, "signal", "s", "TERM", "signal name (TERM, KILL, INT, HUP, USR1, …) or number")
	return c
}

func parseSignal(s string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil && n > 0 && n < 65 {
		return syscall.Signal(n), nil
	}
	name := strings.ToUpper(strings.TrimPrefix(strings.ToUpper(s), "SIG"))
	if sig := unix.SignalNum("SIG" + name); sig != 0 {
		return sig, nil
	}
	return 0, usageErrorf("unknown signal %q", s)
}

func newStatusCmd(env *Env) *cobra.Command {
	var dir string
	var asJSON bool
	c := &cobra.Command{
		Use:   "status [-C DIR] [--json]",
		Short: "Show whether an instance runs: measurement, backend, mounts, processes",
		Args:  exactArgs(0),
		RunE: func(c *cobra.Command, _ []string) error {
			st := &instance.Status{State: "stopped", Dir: absDir(dir)}
			if conn, err := instance.Dial(dir); err == nil {
				r, err := instance.Call(conn, &instance.Request{Op: "status"})
				conn.Close()
				if err != nil {
					return err
				}
				st = r.State
			} else if b, err := trustimage.LoadBuild(dir); err == nil {
				st.Measurement, st.Signer = b.MeasurementHex(), b.MrSignerHex()
			} else {
				return runtimeErr(err)
			}
			if asJSON {
				return printJSON(env.Stdout, st)
			}
			w := env.Stdout
			fmt.Fprintf(w, "state:        %s\n", st.State)
			fmt.Fprintf(w, "instance:     %s\n", st.Dir)
			fmt.Fprintf(w, "measurement:  %s\n", st.Measurement)
			fmt.Fprintf(w, "signer:       %s\n", st.Signer)
			if st.State == "running" {
				fmt.Fprintf(w, "backend:      %s\n", st.Backend)
				for _, k := range st.KMSAttested {
					fmt.Fprintf(w, "kms attested: %s\n", k)
				}
				fmt.Fprintf(w, "supervisor:   %d, since %s\n", st.Supervisor, st.Since.Format(time.RFC3339))
				for _, m := range st.Mounts {
					fmt.Fprintf(w, "mount:        %s %s %s\n", m.Target, m.Type, m.Source)
				}
				for _, l := range st.NotApplied {
					fmt.Fprintf(w, "not applied:  %s\n", l)
				}
				for _, p := range st.Processes {
					fmt.Fprintf(w, "process:      %d %s\n", p.PID, strings.Join(p.Args, " "))
				}
			}
			return nil
		},
	}
	addDirFlag(c, &dir)
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

// simCAPath names the local sim platform's CA certificate.
func simCAPath() string {
	d, err := sim.DefaultDir()
	if err != nil {
		return "CA.pem"
	}
	return filepath.Join(d, sim.CAFile)
}

// kmsAddressEnv prefixes the environment variables that give a key
// service's address at run time: VEIL_KMS_ADDRESS_OWNER for kms entry
// "owner" (a - in the name is _ in the variable).
const kmsAddressEnv = "VEIL_KMS_ADDRESS_"

// kmsAddresses collects the address overrides of the environment and of
// --kms-address (which wins), by key service name.
func kmsAddresses(environ, flags []string) (map[string]string, error) {
	addrs := map[string]string{}
	for _, kv := range environ {
		k, v, _ := strings.Cut(kv, "=")
		if name, ok := strings.CutPrefix(k, kmsAddressEnv); ok {
			addrs[strings.ReplaceAll(strings.ToLower(name), "_", "-")] = v
		}
	}
	for _, f := range flags {
		name, addr, ok := strings.Cut(f, "=")
		if !ok || name == "" {
			return nil, usageErrorf("--kms-address %q: want NAME=ADDRESS (NAME: a key service of veil.json's kms list)", f)
		}
		addrs[name] = addr
	}
	if len(addrs) == 0 {
		return nil, nil
	}
	return addrs, nil
}
