package config

import (
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"path"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"github.com/veil-tee/veil/attest"
)

// The patterns are compiled on first use: keyIDRE alone costs a
// millisecond, paid otherwise by every start of veil (and of the sandbox's
// init, which validates nothing).
var (
	envNameRE = lazyRE(`^[A-Za-z_][A-Za-z0-9_]*$`)
	kmsNameRE = lazyRE(`^[a-z0-9][a-z0-9-]{0,62}$`)
	keyIDRE   = lazyRE(`^[A-Za-z0-9._:/-]{1,256}$`)
	hex256RE  = lazyRE(`^[0-9a-f]{64}$`)
	sizeRE    = lazyRE(`^([0-9]{1,15})([KMGT]i?B?|B)?$`)
)

func lazyRE(expr string) func() *regexp.Regexp {
	return sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(expr) })
}

// Validate checks every field and resolves every reference (KMS names in
// key references). The error is a *FieldError naming the first bad field.
func (c *Config) Validate() error {
	if len(c.Entrypoints) == 0 {
		return fieldErr("entrypoints", "at least one path prefix is required (such as \"/usr/bin/\")")
	}
	for i, e := range c.Entrypoints {
		if err := absPath(e, true); err != nil {
			return fieldErr(fmt.Sprintf("entrypoints[%d]", i), "%v", err)
		}
	}
	for k, v := range c.Env.Default {
		if !envNameRE().MatchString(k) {
			return fieldErr("env.default."+k, "not a valid variable name (letters, digits, _; not starting with a digit)")
		}
		if strings.ContainsRune(v, 0) {
			return fieldErr("env.default."+k, "value contains a NUL byte")
		}
	}
	seen := map[string]bool{}
	for i, k := range c.Env.Passthrough {
		f := fmt.Sprintf("env.passthrough[%d]", i)
		if !envNameRE().MatchString(k) {
			return fieldErr(f, "%q is not a valid variable name", k)
		}
		if _, ok := c.Env.Default[k]; ok {
			return fieldErr(f, "%q is also in env.default; a variable is either trusted or passed through", k)
		}
		if seen[k] {
			return fieldErr(f, "%q is listed twice", k)
		}
		seen[k] = true
	}
	kmsNames := map[string]bool{}
	for i, k := range c.KMS {
		f := fmt.Sprintf("kms[%d]", i)
		if !kmsNameRE().MatchString(k.Name) {
			return fieldErr(f+".name", "%q is not allowed (lowercase letters, digits and -, at most 63)", k.Name)
		}
		if kmsNames[k.Name] {
			return fieldErr(f+".name", "%q is used twice", k.Name)
		}
		kmsNames[k.Name] = true
		if k.Address == "" {
			return fieldErr(f+".address", "required (host:port or https URL)")
		}
		if k.PinSHA256 == "" && k.CACert == "" {
			return fieldErr(f, "a pin is required: pin_sha256 (hex SHA-256 of a public key) or ca_cert (PEM)")
		}
		if k.PinSHA256 != "" && !hex256RE().MatchString(k.PinSHA256) {
			return fieldErr(f+".pin_sha256", "want 64 lowercase hex digits")
		}
		if k.Attest != nil {
			if err := k.Attest.Check(); err != nil {
				var pe *attest.PolicyError
				if errors.As(err, &pe) {
					return fieldErr(f+".attest."+pe.Field, "%v (the key service's attestation policy)", pe.Err)
				}
				return fieldErr(f+".attest", "%v", err)
			}
		}
		if k.CACert != "" {
			if !isPEM(k.CACert) {
				return fieldErr(f+".ca_cert", "%q is neither PEM text nor a file read from the instance directory (veil.json loaded by path)", k.CACert)
			}
			if err := checkPEMCert(k.CACert); err != nil {
				return fieldErr(f+".ca_cert", "%v", err)
			}
		}
	}
	targets := map[string]bool{}
	for i, m := range c.Mounts {
		f := fmt.Sprintf("mounts[%d]", i)
		if err := absPath(m.Target, false); err != nil {
			return fieldErr(f+".target", "%v", err)
		}
		if m.Target == "/" {
			return fieldErr(f+".target", "cannot mount over the image root")
		}
		if targets[m.Target] {
			return fieldErr(f+".target", "%q is mounted twice", m.Target)
		}
		targets[m.Target] = true
		if m.Type != MountSealed && (m.Format != "" || m.PFPath != "") {
			return fieldErr(f+".format", "only allowed for sealed mounts")
		}
		switch m.Type {
		case MountSealed:
			if m.Source == "" {
				return fieldErr(f+".source", "required for a sealed mount (host directory holding the sealed files)")
			}
			if m.Key == "" {
				return fieldErr(f+".key", "required for a sealed mount (\"kms:KEYID@KMSNAME\" or \"file:PATH\")")
			}
			if err := checkKeyRef(m.Key, kmsNames); err != nil {
				return fieldErr(f+".key", "%v", err)
			}
			if err := checkKeyRef(m.WriteKey, kmsNames); err != nil {
				return fieldErr(f+".write_key", "%v", err)
			}
			for j, k := range m.AlsoWriteKeys {
				if err := checkKeyRef(k, kmsNames); err != nil {
					return fieldErr(fmt.Sprintf("%s.also_write_keys[%d]", f, j), "%v", err)
				}
			}
			if m.Size != "" {
				return fieldErr(f+".size", "only allowed for tmpfs mounts")
			}
			if err := validateFormat(f, m); err != nil {
				return err
			}
		case MountHostFS:
			if m.Source == "" {
				return fieldErr(f+".source", "required for a hostfs mount")
			}
			if m.Key != "" || m.WriteKey != "" || len(m.AlsoWriteKeys) > 0 {
				return fieldErr(f+".key", "hostfs mounts are not encrypted; use type sealed for keys")
			}
			if m.Size != "" {
				return fieldErr(f+".size", "only allowed for tmpfs mounts")
			}
		case MountTmpFS:
			if m.Source != "" {
				return fieldErr(f+".source", "not allowed for a tmpfs mount")
			}
			if m.Key != "" || m.WriteKey != "" || len(m.AlsoWriteKeys) > 0 {
				return fieldErr(f+".key", "not allowed for a tmpfs mount (it never leaves the TEE)")
			}
			if m.Size != "" {
				if _, err := ParseSize(m.Size); err != nil {
					return fieldErr(f+".size", "%v", err)
				}
			}
		case "":
			return fieldErr(f+".type", "required: sealed, hostfs or tmpfs")
		default:
			return fieldErr(f+".type", "%q is not allowed (want sealed, hostfs or tmpfs)", m.Type)
		}
	}
	if c.Resources.Memory != "" {
		if _, err := ParseSize(c.Resources.Memory); err != nil {
			return fieldErr("resources.memory", "%v", err)
		}
	}
	if c.Resources.MaxProcesses < 0 || c.Resources.MaxProcesses > 1<<22 {
		return fieldErr("resources.max_processes", "want 0 (no limit) to %d", 1<<22)
	}
	switch c.Network {
	case "", NetworkNone, NetworkHost:
	default:
		return fieldErr("network", "%q is not allowed (want %q or %q)", c.Network, NetworkNone, NetworkHost)
	}
	secretNames := map[string]bool{}
	secretDest := map[string]bool{}
	for i, s := range c.Secrets {
		f := fmt.Sprintf("secrets[%d]", i)
		if !keyIDRE().MatchString(s.Name) {
			return fieldErr(f+".name", "%q is not allowed (letters, digits and ._:/-)", s.Name)
		}
		if secretNames[s.Name] {
			return fieldErr(f+".name", "%q is used twice", s.Name)
		}
		secretNames[s.Name] = true
		if !strings.HasPrefix(s.From, "kms:") {
			return fieldErr(f+".from", "want \"kms:SECRETID@KMSNAME\"")
		}
		if err := checkKeyRef(s.From, kmsNames); err != nil {
			return fieldErr(f+".from", "%v", err)
		}
		switch {
		case s.File != "" && s.Env != "":
			return fieldErr(f, "set file or env, not both")
		case s.File != "":
			if err := absPath(s.File, false); err != nil || !strings.HasPrefix(s.File, "/run/secrets/") {
				return fieldErr(f+".file", "want an absolute path under /run/secrets/")
			}
			if secretDest["f"+s.File] {
				return fieldErr(f+".file", "%q is used twice", s.File)
			}
			secretDest["f"+s.File] = true
		case s.Env != "":
			if !envNameRE().MatchString(s.Env) {
				return fieldErr(f+".env", "%q is not a valid variable name", s.Env)
			}
			if secretDest["e"+s.Env] {
				return fieldErr(f+".env", "%q is used twice", s.Env)
			}
			secretDest["e"+s.Env] = true
		default:
			return fieldErr(f, "say where the secret appears: file (under /run/secrets/) or env")
		}
	}
	return c.BOM.Validate()
}

// Validate checks the BOM section (also used for shipped snippets).
func (b BOM) Validate() error {
	for i, n := range b.Include {
		if n == "" || strings.ContainsAny(n, " \\") || strings.Contains(n, "..") {
			return fieldErr(fmt.Sprintf("bom.include[%d]", i), "%q is not a snippet name (such as \"debian/python3\")", n)
		}
	}
	if err := checkPatterns("bom.exclude", b.Exclude); err != nil {
		return err
	}
	for i, cp := range b.Copy {
		f := fmt.Sprintf("bom.copy[%d]", i)
		if err := absPath(cp.From, true); err != nil {
			return fieldErr(f+".from", "%v", err)
		}
		if cp.To != "" {
			if err := absPath(cp.To, true); err != nil {
				return fieldErr(f+".to", "%v", err)
			}
		}
		if cp.SHA256 != "" && !hex256RE().MatchString(cp.SHA256) {
			return fieldErr(f+".sha256", "want 64 lowercase hex digits")
		}
		if err := checkPatterns(f+".exclude", cp.Exclude); err != nil {
			return err
		}
	}
	for i, s := range b.Symlinks {
		f := fmt.Sprintf("bom.symlinks[%d]", i)
		if err := absPath(s.Link, false); err != nil || s.Link == "/" {
			return fieldErr(f+".link", "want an absolute path below /")
		}
		if s.Target == "" || strings.ContainsRune(s.Target, 0) {
			return fieldErr(f+".target", "required")
		}
	}
	return nil
}

func checkPatterns(field string, pats []string) error {
	for i, p := range pats {
		if _, err := path.Match(p, ""); err != nil || p == "" {
			return fieldErr(fmt.Sprintf("%s[%d]", field, i), "%q is not a valid pattern", p)
		}
	}
	return nil
}

// absPath checks p is absolute and clean; a trailing slash is allowed when
// slash is set (prefixes such as "/usr/bin/").
func absPath(p string, slash bool) error {
	if !strings.HasPrefix(p, "/") {
		return fmt.Errorf("%q is not an absolute path", p)
	}
	if strings.ContainsRune(p, 0) {
		return fmt.Errorf("path contains a NUL byte")
	}
	q := p
	if slash && len(q) > 1 {
		q = strings.TrimSuffix(q, "/")
	}
	if path.Clean(q) != q {
		return fmt.Errorf("%q is not a clean path (no //, . or .. components)", p)
	}
	return nil
}

// KeyRef is a parsed key reference.
type KeyRef struct {
	Kind string // "kms" or "file"
	ID   string // kms: the key id; file: the path
	KMS  string // kms: the KMS name
}

// ParseKeyRef parses "kms:KEYID@KMSNAME" or "file:PATH".
func ParseKeyRef(s string) (KeyRef, error) {
	kind, rest, ok := strings.Cut(s, ":")
	if !ok {
		return KeyRef{}, fmt.Errorf("%q is not a key reference (want \"kms:KEYID@KMSNAME\" or \"file:PATH\")", s)
	}
	switch kind {
	case "kms":
		at := strings.LastIndexByte(rest, '@')
		if at < 0 {
			return KeyRef{}, fmt.Errorf("%q lacks @KMSNAME", s)
		}
		id, name := rest[:at], rest[at+1:]
		if !keyIDRE().MatchString(id) {
			return KeyRef{}, fmt.Errorf("key id %q is not allowed (letters, digits and ._:/-)", id)
		}
		if !kmsNameRE().MatchString(name) {
			return KeyRef{}, fmt.Errorf("KMS name %q is not allowed", name)
		}
		return KeyRef{Kind: kind, ID: id, KMS: name}, nil
	case "file":
		if rest == "" || strings.ContainsRune(rest, 0) {
			return KeyRef{}, fmt.Errorf("%q lacks a path", s)
		}
		return KeyRef{Kind: kind, ID: rest}, nil
	}
	return KeyRef{}, fmt.Errorf("key reference kind %q is not allowed (want kms or file)", kind)
}

func checkKeyRef(s string, kmsNames map[string]bool) error {
	r, err := ParseKeyRef(s)
	if err != nil {
		return err
	}
	if r.Kind == "kms" && !kmsNames[r.KMS] {
		return fmt.Errorf("KMS %q is not declared in the kms section", r.KMS)
	}
	return nil
}

func checkPEMCert(s string) error {
	b, _ := pem.Decode([]byte(s))
	if b == nil || b.Type != "CERTIFICATE" {
		return fmt.Errorf("not a PEM CERTIFICATE block")
	}
	if _, err := x509.ParseCertificate(b.Bytes); err != nil {
		return fmt.Errorf("parsing certificate: %v", err)
	}
	return nil
}

// ParseSize parses sizes such as "4096", "64K", "512M", "2G", "1GiB" (binary
// multiples) into bytes.
func ParseSize(s string) (int64, error) {
	m := sizeRE().FindStringSubmatch(s)
	if m == nil {
		return 0, fmt.Errorf("%q is not a size (such as 512M or 2G)", s)
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a size", s)
	}
	shift := 0
	if m[2] != "" {
		shift = map[byte]int{'B': 0, 'K': 10, 'M': 20, 'G': 30, 'T': 40}[m[2][0]]
	}
	if n > (1<<62)>>shift {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return n << shift, nil
}

// CACertSHA256 returns the hex SHA-256 of the DER certificate in k.CACert
// ("" when unset); used by the measured form.
func caCertDigest(pemText string) string {
	if pemText == "" {
		return ""
	}
	b, _ := pem.Decode([]byte(pemText))
	if b == nil {
		return ""
	}
	return hexSHA256(b.Bytes)
}

func hexSHA256(b []byte) string { return hex.EncodeToString(sha256Sum(b)) }

// validateFormat checks a sealed mount's format and what it requires.
func validateFormat(f string, m Mount) error {
	switch m.Format {
	case "", FormatVeil:
		if m.PFPath != "" {
			return fieldErr(f+".pf_path", "only allowed with format %q", FormatGraminePF)
		}
	case FormatGraminePF:
		// One 16-byte wrap key opens and writes every file; the format has
		// no key slots.
		if r, _ := ParseKeyRef(m.Key); r.Kind != "file" {
			return fieldErr(f+".key", "format %s takes a 16-byte Gramine wrap key as \"file:PATH\"", FormatGraminePF)
		}
		if m.WriteKey != m.Key || len(m.AlsoWriteKeys) > 0 {
			return fieldErr(f+".write_key", "format %s has one key: leave write_key and also_write_keys unset", FormatGraminePF)
		}
		if strings.ContainsRune(m.PFPath, 0) {
			return fieldErr(f+".pf_path", "contains a NUL byte")
		}
	default:
		return fieldErr(f+".format", "%q is not allowed (want veil or %s)", m.Format, FormatGraminePF)
	}
	return nil
}
