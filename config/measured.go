package config

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"strings"

	"github.com/veil-tee/veil/attest"
)

func sha256Sum(b []byte) []byte { s := sha256.Sum256(b); return s[:] }

// Measured is the part of a Config that enters the measurement: everything
// that decides what the workload is and what it trusts, and nothing the host
// chooses (mount sources, KMS addresses, BOM host paths — the BOM's effect
// is measured through the image root hash instead).
type Measured struct {
	Entrypoints []string        `json:"entrypoints"`
	Env         MeasuredEnv     `json:"env"`
	Args        Args            `json:"args"`
	Mounts      []MeasuredMount `json:"mounts"`
	Resources   MeasuredRes     `json:"resources"`
	// Network is "host" or left out: the default "none" (and an absent
	// setting) encodes as nothing, so instances that predate the setting
	// keep their measurement and mean the same.
	Network  string           `json:"network,omitempty"`
	Metadata Metadata         `json:"metadata"`
	KMS      []MeasuredKMS    `json:"kms"`
	Secrets  []MeasuredSecret `json:"secrets"`
}

// MeasuredEnv is Env in the measured form.
type MeasuredEnv struct {
	Default     map[string]string `json:"default"`
	Passthrough []string          `json:"passthrough"`
}

// MeasuredMount is a Mount without its host source.
type MeasuredMount struct {
	Target   string `json:"target"`
	Type     string `json:"type"`
	Key      string `json:"key"`
	WriteKey string `json:"write_key"`
	// AlsoWriteKeys is left out of the encoding when empty, so instances
	// without it keep their measurement.
	AlsoWriteKeys []string `json:"also_write_keys,omitempty"`
	ReadOnly      bool     `json:"read_only"`
	SizeBytes     int64    `json:"size_bytes"`
	// Format and PFPath are left out when empty, so instances without them
	// keep their measurement.
	Format string `json:"format,omitempty"`
	PFPath string `json:"pf_path,omitempty"`
}

// MeasuredRes is Resources with sizes in bytes.
type MeasuredRes struct {
	MemoryBytes  int64 `json:"memory_bytes"`
	MaxProcesses int   `json:"max_processes"`
}

// MeasuredKMS is a KMS entry without its address.
type MeasuredKMS struct {
	Name         string `json:"name"`
	PinSHA256    string `json:"pin_sha256"`
	CACertSHA256 string `json:"ca_cert_sha256"`
	// Attest is measured: which services the workload trusts with its
	// keys is part of its identity.
	Attest *attest.Policy `json:"attest,omitempty"`
}

// MeasuredSecret is a Secret in the measured form.
type MeasuredSecret struct {
	Name string `json:"name"`
	From string `json:"from"`
	File string `json:"file"`
	Env  string `json:"env"`
}

// Measured returns the measured view of a validated c. Lists keep their
// order (it is meaningful: mounts are applied in order); maps are sorted by
// the canonical encoding; nil and empty are the same.
func (c *Config) Measured() Measured {
	m := Measured{
		Entrypoints: append([]string{}, c.Entrypoints...),
		Env:         MeasuredEnv{Default: map[string]string{}, Passthrough: append([]string{}, c.Env.Passthrough...)},
		Args:        c.Args,
		Mounts:      []MeasuredMount{},
		Metadata:    c.Metadata,
		KMS:         []MeasuredKMS{},
		Secrets:     []MeasuredSecret{},
	}
	for k, v := range c.Env.Default {
		m.Env.Default[k] = v
	}
	for _, mt := range c.Mounts {
		size, _ := ParseSize(mt.Size)
		if mt.Size == "" {
			size = 0
		}
		m.Mounts = append(m.Mounts, MeasuredMount{Target: mt.Target, Type: mt.Type, Key: mt.Key, WriteKey: mt.WriteKey, AlsoWriteKeys: mt.AlsoWriteKeys, ReadOnly: mt.ReadOnly, SizeBytes: size, Format: strings.TrimPrefix(mt.Format, FormatVeil), PFPath: mt.PFPath})
	}
	if c.Resources.Memory != "" {
		m.Resources.MemoryBytes, _ = ParseSize(c.Resources.Memory)
	}
	m.Resources.MaxProcesses = c.Resources.MaxProcesses
	if c.Network == NetworkHost {
		m.Network = NetworkHost
	}
	for _, k := range c.KMS {
		m.KMS = append(m.KMS, MeasuredKMS{Name: k.Name, PinSHA256: k.PinSHA256, CACertSHA256: caCertDigest(k.CACert), Attest: k.Attest})
	}
	for _, s := range c.Secrets {
		m.Secrets = append(m.Secrets, MeasuredSecret(s))
	}
	return m
}

// Canonical encodes v as canonical JSON: UTF-8, no insignificant
// whitespace, object members sorted by key (byte order), integers in
// decimal, strings escaped as Go's encoding/json does without HTML escaping.
// For the value types used here (objects, arrays, strings, integers,
// booleans) this matches RFC 8785.
func Canonical(v any) ([]byte, error) {
	raw, err := marshalNoHTML(v)
	if err != nil {
		return nil, err
	}
	// Round-trip through generic values so every object's keys are sorted
	// (encoding/json sorts map keys; struct fields would keep their order).
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var g any
	if err := dec.Decode(&g); err != nil {
		return nil, err
	}
	return marshalNoHTML(g)
}

func marshalNoHTML(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}
