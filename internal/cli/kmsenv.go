package cli

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/veil-tee/veil/config"
	"github.com/veil-tee/veil/kms/client"
	devkms "github.com/veil-tee/veil/kms/dev"
)

// newKMSEnvCmd is `veil kms env`: the settings of a running --dev key
// service as export lines, once it answers, for eval "$(veil kms env …)".
func newKMSEnvCmd(env *Env, o *kmsOpts) *cobra.Command {
	var dataDir string
	var wait time.Duration
	c := &cobra.Command{
		Use:   "env --data DIR",
		Short: "Print the export lines of the --dev key service on DIR once it answers (for eval)",
		Long: `env waits until the development key service started with
'veil kms serve --dev --data DIR' answers, then prints the lines it printed
at start (VEIL_KMS_URL, VEIL_KMS_CA, VEIL_ADMIN_TOKEN), for

  veil kms serve --dev --data DIR &
  eval "$(veil kms env --data DIR)"`,
		Args: exactArgs(0),
		RunE: func(c *cobra.Command, _ []string) error {
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
					if _, err = cl.Status(c.Context()); err == nil {
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
				case <-c.Context().Done():
					return c.Context().Err()
				case <-time.After(100 * time.Millisecond):
				}
			}
			if errors.Is(last, os.ErrNotExist) {
				return withHint(fmt.Errorf("no development key service runs on %s (waited %s)", dataDir, wait), "start it first: veil kms serve --dev --data "+dataDir+" &")
			}
			return withHint(fmt.Errorf("the development key service on %s does not answer (waited %s): %w", dataDir, wait, last), "is 'veil kms serve --dev --data "+dataDir+"' still running? its log is on its standard error")
		},
	}
	c.Flags().StringVar(&dataDir, "data", "", "data directory of the running 'veil kms serve --dev'")
	c.Flags().DurationVar(&wait, "wait", 30*time.Second, "how long to wait for the service to answer")
	return c
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
	for _, k := range []string{"VEIL_KMS_URL", "VEIL_KMS_CA", "VEIL_ADMIN_TOKEN", "VEIL_KMS_MEASUREMENT"} {
		if v, ok := m[k]; ok {
			fmt.Fprintf(&sb, "export %s=%s\n", k, v)
		}
	}
	return sb.String()
}

// replacePolicies returns the ids of the policies attached to keyRef and
// secretRef, for `policy create --replace` to detach once the new one is
// attached. A policy that carries the new policy's name is detached and
// deleted now, so the name can be reused.
func replacePolicies(c *cobra.Command, o *kmsOpts, cl *client.Client, keyRef, secretRef, name string) ([]string, error) {
	ctx := o.ctx(c)
	var ids []string
	if keyRef != "" {
		k, err := cl.DescribeKey(ctx, keyRef)
		if err != nil {
			return nil, fmt.Errorf("reading key %s: %w", keyRef, err)
		}
		ids = append(ids, k.Policies...)
	}
	if secretRef != "" {
		sl, err := cl.ListSecrets(ctx)
		if err != nil {
			return nil, err
		}
		found := false
		for _, s := range sl.Secrets {
			if s.ID == secretRef || s.Name == secretRef {
				ids = append(ids, s.Policies...)
				found = true
			}
		}
		if !found {
			return nil, withHint(fmt.Errorf("secret %s not found", secretRef), "veil kms secret list shows the app's secrets")
		}
	}
	if name == "" {
		return ids, nil
	}
	pl, err := cl.ListPolicies(ctx)
	if err != nil {
		return nil, err
	}
	for _, p := range pl.Policies {
		if p.Name != name {
			continue
		}
		if keyRef != "" {
			if _, err := cl.DetachKeyPolicy(ctx, keyRef, p.ID); err != nil && !errors.Is(err, client.Code("policy_not_found")) {
				return nil, err
			}
		}
		if secretRef != "" {
			if _, err := cl.DetachSecretPolicy(ctx, secretRef, p.ID); err != nil && !errors.Is(err, client.Code("policy_not_found")) {
				return nil, err
			}
		}
		if err := cl.DeletePolicy(ctx, p.ID); err != nil {
			return nil, withHint(fmt.Errorf("replacing policy %s (%s): %w", name, p.ID, err), "it is attached elsewhere too; choose another --name")
		}
	}
	return ids, nil
}

// checkJSONFile reports a JSON syntax error in the file name with its line
// and column.
func checkJSONFile(name string, b []byte) error {
	var v any
	err := json.Unmarshal(b, &v)
	var se *json.SyntaxError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &se):
		line, col := config.JSONPosition(b, max(se.Offset-1, 0))
		return withHint(fmt.Errorf("%s: JSON syntax error at line %d, column %d: %v", name, line, col, se), "fix the JSON at that place")
	default:
		return fmt.Errorf("%s: %w", name, err)
	}
}
