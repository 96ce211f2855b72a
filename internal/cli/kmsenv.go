package cli

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/veil-tee/veil/kms/client"
	devkms "github.com/veil-tee/veil/kms/dev"
)

// kmsEnvOptions are the flags of `veil kms env`.
type kmsEnvOptions struct {
	dataDir string
	wait    time.Duration
}

// newKMSEnvCmd is `veil kms env`: the settings of a running --dev key
// service as export lines, once it answers, for eval "$(veil kms env …)".
func newKMSEnvCmd(env *Env, _ *kmsOpts) *cobra.Command {
	o := &kmsEnvOptions{}
	c := &cobra.Command{
		Use:   "env --data DIR",
		Short: "Print the export lines of the --dev key service on DIR once it answers (for eval)",
		Long: `env waits until the development key service started with
'veil kms serve --dev --data DIR' answers, then prints the lines it printed
at start (VEIL_KMS_URL, VEIL_KMS_CA, VEIL_ADMIN_TOKEN), for

  veil kms serve --dev --data DIR &
  eval "$(veil kms env --data DIR)"`,
		Args: exactArgs(0),
		RunE: func(c *cobra.Command, _ []string) error { return o.run(c.Context(), env) },
	}
	c.Flags().StringVar(&o.dataDir, "data", "", "data directory of the running 'veil kms serve --dev'")
	c.Flags().DurationVar(&o.wait, "wait", 30*time.Second, "how long to wait for the service to answer")
	return c
}

func (o *kmsEnvOptions) run(ctx context.Context, env *Env) error {
	dataDir, wait := o.dataDir, o.wait
	if dataDir == "" {
		return usageErrorf("--data is required")
	}
	path := filepath.Join(dataDir, "dev", devkms.EnvFile)
	deadline := time.Now().Add(wait)
	var last error
	for {
		lines, err := readDevEnv(path)
		if err == nil {
			cl, cerr := client.New(client.Config{URL: lines["VEIL_KMS_URL"], CAPEM: lines.ca(), Timeout: 2 * time.Second})
			if cerr != nil {
				return cerr
			}
			if _, err = cl.Status(ctx); err == nil {
				fmt.Fprint(env.Stdout, lines.text())
				return nil
			}
			err = connErr(err)
		}
		last = err
		if time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	if errors.Is(last, os.ErrNotExist) {
		return withHint(fmt.Errorf("no development key service runs on %s (waited %s)", dataDir, wait), "start it first: veil kms serve --dev --data "+dataDir+" &")
	}
	return withHint(fmt.Errorf("the development key service on %s does not answer (waited %s): %w", dataDir, wait, last), "is 'veil kms serve --dev --data "+dataDir+"' still running? its log is on its standard error")
}

type devEnv map[string]string

func readDevEnv(path string) (devEnv, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	m := devEnv{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimPrefix(sc.Text(), "export "), "=")
		if ok {
			m[k] = v
		}
	}
	if m["VEIL_KMS_URL"] == "" || m["VEIL_KMS_CA"] == "" {
		return nil, fmt.Errorf("%s is incomplete", path)
	}
	return m, nil
}

func (m devEnv) ca() []byte {
	b, _ := os.ReadFile(m["VEIL_KMS_CA"])
	return b
}

func (m devEnv) text() string {
	var sb strings.Builder
	for _, k := range []string{"VEIL_KMS_URL", "VEIL_KMS_CA", "VEIL_ADMIN_TOKEN", "VEIL_KMS_MEASUREMENT", "VEIL_EHSM_URL"} {
		if v, ok := m[k]; ok {
			fmt.Fprintf(&sb, "export %s=%s\n", k, v)
		}
	}
	return sb.String()
}
