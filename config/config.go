// Package config is veil.json: its schema, strict parsing, defaults,
// validation and the canonical "measured" form that enters an instance's
// measurement.
//
// What it protects against: typos and unknown fields silently changing what
// an instance does (unknown fields are errors, every error names the field),
// and host-controlled values being mistaken for trusted ones (host paths and
// KMS addresses are kept out of the measured form, everything else that
// decides the workload's behaviour is in it).
//
// What it does not do: it does not resolve key references against a key
// service or read host paths; the runtime and the KMS client do that, and
// the image package measures the canonical form.
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"

	"github.com/veil-tee/veil/attest"
)

// FileName is the name of the configuration file in an instance directory.
const FileName = "veil.json"

// MaxSize bounds the size of a veil.json file.
const MaxSize = 1 << 20

// ErrInvalid is wrapped by every parsing and validation error.
var ErrInvalid = errors.New("invalid veil.json")

// FieldError names the offending field (a JSON path such as
// "mounts[1].type") and says what is wrong or allowed.
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string {
	if e.Field == "" {
		return e.Msg
	}
	return e.Field + ": " + e.Msg
}

// Unwrap makes every FieldError match ErrInvalid.
func (e *FieldError) Unwrap() error { return ErrInvalid }

func fieldErr(field, format string, a ...any) error {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, a...)}
}

// Config is the parsed veil.json. See docs/config.md for every field.
type Config struct {
	Entrypoints []string  `json:"entrypoints"`
	Env         Env       `json:"env"`
	Args        Args      `json:"args"`
	Mounts      []Mount   `json:"mounts"`
	Resources   Resources `json:"resources"`
	// Network is the workload's network: NetworkNone (the default) or
	// NetworkHost. Measured.
	Network  string   `json:"network,omitempty"`
	Metadata Metadata `json:"metadata"`
	KMS      []KMS    `json:"kms"`
	Secrets  []Secret `json:"secrets"`
	BOM      BOM      `json:"bom"`
}

// Env is the workload's environment.
type Env struct {
	// Default holds trusted variables set for the workload (measured).
	Default map[string]string `json:"default"`
	// Passthrough names variables whose values the host supplies at run
	// time (untrusted; the list of names is measured).
	Passthrough []string `json:"passthrough"`
}

// Args says whether host command-line arguments reach the workload.
type Args struct {
	Passthrough bool `json:"passthrough"`
}

// Network settings.
const (
	// NetworkNone gives the workload a network namespace of its own with
	// only a loopback interface: it reaches nothing outside the sandbox
	// (the runtime talks to the key services from outside it).
	NetworkNone = "none"
	// NetworkHost leaves the workload in the host's network namespace, for
	// workloads that serve clients or join a cluster.
	NetworkHost = "host"
)

// Mount types.
const (
	MountSealed = "sealed" // files sealed with a key released by a KMS or a key file
	MountHostFS = "hostfs" // a host directory, untrusted, passed through as is
	MountTmpFS  = "tmpfs"  // memory-backed scratch space inside the TEE
)

// Mount is one file system the runtime mounts into the workload's tree.
type Mount struct {
	Target   string `json:"target"`
	Type     string `json:"type"`
	Source   string `json:"source,omitempty"`    // host directory (not measured)
	Key      string `json:"key,omitempty"`       // sealed: key reference opening the files
	WriteKey string `json:"write_key,omitempty"` // sealed: key reference sealing new files (default: Key)
	// AlsoWriteKeys are more keys each new file is sealed for (one key slot
	// each), so several parties can open what the workload writes.
	AlsoWriteKeys []string `json:"also_write_keys,omitempty"`
	ReadOnly      bool     `json:"read_only,omitempty"`
	Size          string   `json:"size,omitempty"` // tmpfs: size limit such as "64M"
	// Format of a sealed mount's files: "" or "veil" (sealed files), or
	// "gramine-pf" (Gramine protected files under a 16-byte wrap key, so a
	// Gramine workload's encrypted directory is mounted unchanged).
	Format string `json:"format,omitempty"`
	// PFPath is, for format gramine-pf, the directory as Gramine named it
	// (the path of the encrypted mount's uri): a file's bound path is
	// PFPath/RELATIVE-NAME.
	PFPath string `json:"pf_path,omitempty"`
}

// Sealed mount formats.
const (
	FormatVeil      = "veil"
	FormatGraminePF = "gramine-pf"
)

// Resources are limits applied by the runtime where the kernel allows.
type Resources struct {
	Memory       string `json:"memory,omitempty"` // such as "512M" or "2G"; empty: no limit
	MaxProcesses int    `json:"max_processes,omitempty"`
}

// Metadata is the identity a signer gives the build.
type Metadata struct {
	ProductID  uint16 `json:"product_id"`
	SVN        uint16 `json:"svn"`
	Debuggable bool   `json:"debuggable"`
}

// KMS is a key service the workload trusts.
type KMS struct {
	Name    string `json:"name"`
	Address string `json:"address"` // host:port or https URL, or several replicas' comma-separated (not measured)
	// PinSHA256 is the hex SHA-256 of the DER SubjectPublicKeyInfo of the
	// service's key or CA; CACert is a PEM CA certificate. At least one.
	PinSHA256 string `json:"pin_sha256,omitempty"`
	CACert    string `json:"ca_cert,omitempty"`
	// Attest, when set, requires the service to prove with evidence that
	// its TLS key lives in a TEE satisfying this policy (the service runs
	// `veil kms serve --attest`); without it only the pin is checked.
	Attest *attest.Policy `json:"attest,omitempty"`
}

// Secret is fetched from a KMS at start and handed to the workload as a
// file or an environment variable.
type Secret struct {
	Name string `json:"name"`
	From string `json:"from"`           // key reference "kms:ID@KMSNAME"
	File string `json:"file,omitempty"` // absolute path under /run/secrets
	Env  string `json:"env,omitempty"`  // environment variable name
}

// BOM lists host files copied into the image at build time.
type BOM struct {
	// Include names shipped BOM snippets such as "debian/python3".
	Include  []string  `json:"include,omitempty"`
	Copy     []Copy    `json:"copy,omitempty"`
	Symlinks []Symlink `json:"symlinks,omitempty"`
	// Exclude holds patterns applied to every copy (see docs/config.md).
	Exclude []string `json:"exclude,omitempty"`
	// ResolveELF copies the shared libraries of every copied ELF file;
	// default true.
	ResolveELF *bool `json:"resolve_elf,omitempty"`
	// PythonBytecode compiles every .py file of the image with the image's
	// own Python into hash-based .pyc files (PEP 552), so programs do not
	// compile their modules at every start.
	PythonBytecode bool `json:"python_bytecode,omitempty"`
	// PythonPackages places pip target directories (pip install --target)
	// in the image.
	PythonPackages []PythonPackages `json:"python_packages,omitempty"`
}

// DefaultPythonPackagesDir is where python_packages go by default; the
// workload finds them through PYTHONPATH (see docs/config.md).
const DefaultPythonPackagesDir = "/usr/lib/python3/veil-site"

// PythonPackages is a host directory filled by pip install --target,
// placed at To in the image.
type PythonPackages struct {
	From    string   `json:"from"`
	To      string   `json:"to,omitempty"` // default DefaultPythonPackagesDir
	Exclude []string `json:"exclude,omitempty"`
}

// Copy copies a host file or directory (recursively) into the image.
type Copy struct {
	From    string   `json:"from"`
	To      string   `json:"to,omitempty"` // path in the image; default From
	SHA256  string   `json:"sha256,omitempty"`
	Exclude []string `json:"exclude,omitempty"`
}

// Symlink creates a symbolic link in the image.
type Symlink struct {
	Link   string `json:"link"`
	Target string `json:"target"`
}

// ResolveELFEnabled reports bom.resolve_elf with its default applied.
func (b BOM) ResolveELFEnabled() bool { return b.ResolveELF == nil || *b.ResolveELF }

// Load reads, parses and validates path. Relative to the directory
// holding path (the instance directory) it resolves what veil.json may
// name by file: a kms[].ca_cert that is a path (its PEM content replaces
// the path, so the measurement covers the certificate, not where it was
// read from), and relative mounts[].source directories. It then applies
// the key and secret ids that veil build recorded for names (IDsFile).
func Load(path string) (*Config, error) { return load(path, true) }

// LoadNames is Load without applying IDsFile: kms references keep the
// names written in veil.json (veil build resolves them).
func LoadNames(path string) (*Config, error) { return load(path, false) }

func load(path string, ids bool) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading configuration: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if len(data) > MaxSize {
		return nil, fmt.Errorf("%s: %w", path, fieldErr("", "file is larger than %d bytes", MaxSize))
	}
	c, err := decode(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	dir, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return nil, err
	}
	if err := c.resolveFiles(dir); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if ids {
		m, err := ReadIDs(dir)
		if err != nil {
			return nil, err
		}
		m.Apply(c)
	}
	c.applyDefaults()
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Parse decodes data strictly (unknown fields, trailing data and type
// mismatches are errors naming the field), applies defaults and validates.
// Unlike Load it reads no files: a ca_cert must be PEM text.
func Parse(data []byte) (*Config, error) {
	c, err := decode(data)
	if err != nil {
		return nil, err
	}
	c.applyDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

func decode(data []byte) (*Config, error) {
	if err := checkUnknown(data, reflect.TypeOf(Config{})); err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var c Config
	if err := dec.Decode(&c); err != nil {
		return nil, decodeError(err, data)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fieldErr("", "unexpected data after the top-level object")
	}
	return &c, nil
}

// isPEM reports whether s holds PEM text rather than a file name.
func isPEM(s string) bool { return strings.HasPrefix(strings.TrimSpace(s), "-----BEGIN") }

// resolveFiles reads ca_cert files and makes mount sources absolute,
// both relative to dir.
func (c *Config) resolveFiles(dir string) error {
	for i := range c.KMS {
		k := &c.KMS[i]
		if k.CACert == "" || isPEM(k.CACert) {
			continue
		}
		p := k.CACert
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return fieldErr(fmt.Sprintf("kms[%d].ca_cert", i), "reading the CA certificate %s: %v", p, unwrapPathErr(err))
		}
		if !isPEM(string(b)) {
			return fieldErr(fmt.Sprintf("kms[%d].ca_cert", i), "%s holds no PEM certificate", p)
		}
		k.CACert = string(b)
	}
	for i := range c.Mounts {
		m := &c.Mounts[i]
		if m.Source != "" && !filepath.IsAbs(m.Source) {
			m.Source = filepath.Join(dir, m.Source)
		}
	}
	return nil
}

func unwrapPathErr(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// JSONPosition returns the 1-based line and column of byte offset off in
// data, for error messages.
func JSONPosition(data []byte, off int64) (line, col int) {
	if off > int64(len(data)) {
		off = int64(len(data))
	}
	line, col = 1, 1
	for _, b := range data[:off] {
		if b == '\n' {
			line++
			col = 1
		} else {
			col++
		}
	}
	return line, col
}

func decodeError(err error, data []byte) error {
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	switch {
	case errors.As(err, &te):
		field := te.Field
		if field == "" {
			field = "(top level)"
		}
		return fieldErr(field, "expected %s, got JSON %s", jsonType(te.Type.String()), te.Value)
	case errors.As(err, &se):
		// The offset is just past the offending byte.
		line, col := JSONPosition(data, max(se.Offset-1, 0))
		return fieldErr("", "JSON syntax error at line %d, column %d: %v", line, col, se)
	case errors.Is(err, io.EOF):
		return fieldErr("", "empty file (want a JSON object)")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return fieldErr("", "truncated JSON")
	}
	msg := err.Error()
	if rest, ok := strings.CutPrefix(msg, "json: unknown field "); ok {
		return fieldErr(strings.Trim(rest, `"`), "unknown field (see docs/config.md for the allowed fields)")
	}
	return fieldErr("", "%s", strings.TrimPrefix(msg, "json: "))
}

func jsonType(goType string) string {
	switch {
	case goType == "string":
		return "a string"
	case goType == "bool":
		return "true or false"
	case strings.HasPrefix(goType, "uint16"):
		return "an integer from 0 to 65535"
	case strings.HasPrefix(goType, "int"):
		return "an integer"
	case strings.HasPrefix(goType, "[]"):
		return "an array"
	case strings.HasPrefix(goType, "map"):
		return "an object of strings"
	}
	return "an object"
}

func (c *Config) applyDefaults() {
	for i := range c.Mounts {
		m := &c.Mounts[i]
		if m.Type == MountSealed && m.WriteKey == "" {
			m.WriteKey = m.Key
		}
	}
}

// Marshal returns c as indented JSON that Parse accepts.
func (c *Config) Marshal() ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(c); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Template is the veil.json written by `veil new`.
const Template = `{
  "entrypoints": ["/usr/bin/", "/app/"],
  "env": {
    "default": {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"},
    "passthrough": []
  },
  "args": {"passthrough": true},
  "mounts": [
    {"target": "/tmp", "type": "tmpfs", "size": "64M"}
  ],
  "resources": {"memory": "1G", "max_processes": 64},
  "metadata": {"product_id": 0, "svn": 0, "debuggable": false},
  "kms": [],
  "secrets": [],
  "bom": {
    "include": [],
    "copy": [],
    "symlinks": [],
    "exclude": ["__pycache__", "*.pyc"]
  }
}
`
