package cli

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/veil-tee/veil/config"
	"github.com/veil-tee/veil/internal/fsutil"
	"github.com/veil-tee/veil/kms/client"
)

// newFlags are the veil.json choices `veil new` takes on its command line.
type newFlags struct {
	bom    []string // bom.include snippets
	kms    []string // NAME[=URL][,ca=PATH][,pin=HEX]
	mounts []string // TARGET=SOURCE[,key=REF][,write_key=REF][,type=T][,ro]
}

func (f *newFlags) empty() bool { return len(f.bom)+len(f.kms)+len(f.mounts) == 0 }

// rebase returns p, given relative to the current directory, as a path
// relative to the instance directory dir; absolute paths stay as they are.
func rebase(dir, p string) (string, error) {
	if filepath.IsAbs(p) {
		return p, nil
	}
	ad, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	ap, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	return filepath.Rel(ad, ap)
}

// options splits "A,k=v,flag" into the head A and its options.
func options(s string) (string, map[string]string) {
	parts := strings.Split(s, ",")
	opts := map[string]string{}
	for _, p := range parts[1:] {
		k, v, ok := strings.Cut(p, "=")
		if !ok {
			v = "true"
		}
		opts[strings.TrimSpace(k)] = v
	}
	return parts[0], opts
}

func unknownOpts(flag, val string, opts map[string]string, allowed ...string) error {
	for k := range opts {
		found := false
		for _, a := range allowed {
			if k == a {
				found = true
			}
		}
		if !found {
			return usageErrorf("--%s %s: unknown option %q (allowed: %s)", flag, val, k, strings.Join(allowed, ", "))
		}
	}
	return nil
}

// newConfig returns the veil.json `veil new DIR` writes with flags f.
func newConfig(dir string, base []byte, f *newFlags) ([]byte, error) {
	if f.empty() {
		return base, nil
	}
	c, err := config.Parse(base)
	if err != nil {
		return nil, err
	}
	c.BOM.Include = append(c.BOM.Include, f.bom...)
	for _, k := range f.kms {
		head, opts := options(k)
		if err := unknownOpts("kms", k, opts, "ca", "pin"); err != nil {
			return nil, err
		}
		name, addr, _ := strings.Cut(head, "=")
		if addr == "" {
			addr = os.Getenv("VEIL_KMS_URL")
		}
		ca, hasCA := opts["ca"]
		pin := opts["pin"]
		if !hasCA && pin == "" {
			ca = os.Getenv("VEIL_KMS_CA")
		}
		if addr == "" {
			return nil, withHint(usageErrorf("--kms %s: no address", k), "write --kms NAME=https://HOST:PORT,ca=CA.pem, or set VEIL_KMS_URL and VEIL_KMS_CA")
		}
		if ca == "" && pin == "" {
			return nil, withHint(usageErrorf("--kms %s: no pin", k), "add ,ca=CA.pem (the PEM CA of the service) or ,pin=HEX, or set VEIL_KMS_CA")
		}
		e := config.KMS{Name: name, Address: addr, PinSHA256: pin}
		if ca != "" {
			if _, err := os.Stat(ca); err != nil {
				return nil, usageErrorf("--kms %s: CA certificate %s: %v", k, ca, unwrapPath(err))
			}
			if e.CACert, err = rebase(dir, ca); err != nil {
				return nil, err
			}
		}
		c.KMS = append(c.KMS, e)
	}
	for _, m := range f.mounts {
		head, opts := options(m)
		if err := unknownOpts("mount", m, opts, "key", "write_key", "type", "ro", "size"); err != nil {
			return nil, err
		}
		target, src, _ := strings.Cut(head, "=")
		mt := config.Mount{Target: target, Type: opts["type"], Key: opts["key"], WriteKey: opts["write_key"], ReadOnly: opts["ro"] == "true", Size: opts["size"]}
		if mt.Type == "" {
			mt.Type = config.MountSealed
			if mt.Key == "" {
				mt.Type = config.MountHostFS
			}
		}
		if src != "" {
			if mt.Source, err = rebase(dir, src); err != nil {
				return nil, err
			}
		}
		c.Mounts = append(c.Mounts, mt)
	}
	// What is written must load: check it as Load will (paths relative to
	// the instance directory are checked when it is loaded).
	b, err := c.Marshal()
	if err != nil {
		return nil, err
	}
	return b, nil
}

// resolveNames asks the key services named in veil.json for the ids of
// the keys and secrets veil.json names by name, as their owner app
// (VEIL_APP_ID, VEIL_API_KEY), and records them in config.IDsFile, which
// every later load applies: the measurement names ids.
func resolveNames(ctx context.Context, stderr io.Writer, dir string) error {
	cfg, err := config.LoadNames(filepath.Join(dir, config.FileName))
	if err != nil {
		return err
	}
	names := cfg.Names()
	if len(names) == 0 {
		return nil
	}
	base, err := (&kmsOpts{}).config(false)
	if err != nil {
		return err
	}
	if base.AppID == "" {
		n := names[0]
		return withHint(fmt.Errorf("%s names %s %q at kms %s by name: veil build asks the key service for its id as its owner, and no app is set", n.Field, kindOf(n), n.Name, n.KMS),
			`set VEIL_APP_ID and VEIL_API_KEY of the owner (eval "$(veil kms enroll --name NAME)"), or write the id in veil.json (veil kms key list)`)
	}
	ids := config.IDs{Keys: map[string]string{}, Secrets: map[string]string{}}
	clients := map[string]*client.Client{}
	for _, n := range names {
		cl := clients[n.KMS]
		if cl == nil {
			var entry config.KMS
			for _, k := range cfg.KMS {
				if k.Name == n.KMS {
					entry = k
				}
			}
			cc := base
			cc.URL = entry.Address
			if !strings.Contains(cc.URL, "://") {
				cc.URL = "https://" + cc.URL
			}
			cc.CAPEM = []byte(entry.CACert)
			if entry.PinSHA256 != "" {
				cc.PinSHA256, _ = hex.DecodeString(entry.PinSHA256)
			}
			cc.AdminToken, cc.WorkloadCertificate = "", nil
			if cl, err = client.New(cc); err != nil {
				return err
			}
			clients[n.KMS] = cl
		}
		id, err := lookupName(ctx, cl, n, base.AppID)
		if err != nil {
			return err
		}
		if n.Secret {
			ids.Secrets[n.Name+"@"+n.KMS] = id
		} else {
			ids.Keys[n.Name+"@"+n.KMS] = id
		}
	}
	path := filepath.Join(dir, config.IDsFile)
	old, _ := config.ReadIDs(dir)
	if err := fsutil.WriteFile(path, ids.Marshal(), 0o644, true); err != nil {
		return fmt.Errorf("recording key ids: %w", unwrapPath(err))
	}
	if old.String() != ids.String() {
		var lines []string
		for k, v := range ids.Keys {
			lines = append(lines, "key "+k+" is "+v)
		}
		for k, v := range ids.Secrets {
			lines = append(lines, "secret "+k+" is "+v)
		}
		sort.Strings(lines)
		fmt.Fprintf(stderr, "veil: %s (recorded in %s; the measurement names ids)\n", strings.Join(lines, ", "), path)
	}
	return nil
}

func kindOf(n config.NameRef) string {
	if n.Secret {
		return "secret"
	}
	return "key"
}

func lookupName(ctx context.Context, cl *client.Client, n config.NameRef, app string) (string, error) {
	if !n.Secret {
		k, err := cl.DescribeKey(ctx, n.Name)
		if errors.Is(err, client.ErrKeyNotFound) {
			return "", withHint(fmt.Errorf("%s: key %q not found at kms %s for app %s", n.Field, n.Name, n.KMS, app), "veil kms key list shows the app's keys; veil build resolves names as the key's owner app")
		}
		if err != nil {
			return "", fmt.Errorf("%s: looking up key %q at kms %s: %w", n.Field, n.Name, n.KMS, kmsErr(err))
		}
		return k.ID, nil
	}
	sl, err := cl.ListSecrets(ctx)
	if err != nil {
		return "", fmt.Errorf("%s: looking up secret %q at kms %s: %w", n.Field, n.Name, n.KMS, kmsErr(err))
	}
	for _, s := range sl.Secrets {
		if s.Name == n.Name {
			return s.ID, nil
		}
	}
	return "", withHint(fmt.Errorf("%s: secret %q not found at kms %s for app %s", n.Field, n.Name, n.KMS, app), "veil kms secret list shows the app's secrets")
}
