package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// IDsFile, beside veil.json, holds the key service ids that veil build
// found for the key and secret names written in veil.json. Load applies
// it, so the measured form, and with it the measurement, names ids: a
// name re-pointed at another key later changes nothing for a build.
const IDsFile = ".veil-ids.json"

var kmsIDRE = regexp.MustCompile(`^[ks]_[0-9a-f]{32}$`)

// IsKMSID reports whether s is a key service id (k_… or s_…) rather than
// a name.
func IsKMSID(s string) bool { return kmsIDRE.MatchString(s) }

// IDs maps "NAME@KMSNAME" to the id the key service gave that name.
type IDs struct {
	Keys    map[string]string `json:"keys,omitempty"`
	Secrets map[string]string `json:"secrets,omitempty"`
}

// NameRef is a kms reference in veil.json that names a key or secret by
// name rather than id.
type NameRef struct {
	Field  string // JSON path, such as mounts[1].key
	Secret bool   // a secret (secrets[].from), else a key
	Name   string
	KMS    string
}

// Names lists the references of c that name keys or secrets by name.
func (c *Config) Names() []NameRef {
	var out []NameRef
	add := func(field, ref string, secret bool) {
		r, err := ParseKeyRef(ref)
		if err != nil || r.Kind != "kms" || IsKMSID(r.ID) {
			return
		}
		out = append(out, NameRef{Field: field, Secret: secret, Name: r.ID, KMS: r.KMS})
	}
	for i, m := range c.Mounts {
		f := fmt.Sprintf("mounts[%d]", i)
		add(f+".key", m.Key, false)
		if m.WriteKey != m.Key {
			add(f+".write_key", m.WriteKey, false)
		}
		for j, k := range m.AlsoWriteKeys {
			add(fmt.Sprintf("%s.also_write_keys[%d]", f, j), k, false)
		}
	}
	for i, s := range c.Secrets {
		add(fmt.Sprintf("secrets[%d].from", i), s.From, true)
	}
	return out
}

// ReadIDs reads IDsFile in the instance directory dir (empty if absent).
func ReadIDs(dir string) (IDs, error) {
	var m IDs
	b, err := os.ReadFile(filepath.Join(dir, IDsFile))
	if errors.Is(err, os.ErrNotExist) {
		return m, nil
	}
	if err != nil {
		return m, fmt.Errorf("reading key ids: %w", err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("%s: %w (delete it and run veil build)", filepath.Join(dir, IDsFile), err)
	}
	return m, nil
}

// Marshal encodes m for IDsFile (sorted keys, one per line).
func (m IDs) Marshal() []byte {
	b, _ := json.MarshalIndent(m, "", "  ")
	return append(b, '\n')
}

// Apply replaces the names of c's kms references by the ids in m.
func (m IDs) Apply(c *Config) {
	sub := func(ref string, table map[string]string) string {
		r, err := ParseKeyRef(ref)
		if err != nil || r.Kind != "kms" || IsKMSID(r.ID) {
			return ref
		}
		if id, ok := table[r.ID+"@"+r.KMS]; ok {
			return "kms:" + id + "@" + r.KMS
		}
		return ref
	}
	for i := range c.Mounts {
		mt := &c.Mounts[i]
		if mt.Key != "" {
			mt.Key = sub(mt.Key, m.Keys)
		}
		if mt.WriteKey != "" {
			mt.WriteKey = sub(mt.WriteKey, m.Keys)
		}
		for j := range mt.AlsoWriteKeys {
			mt.AlsoWriteKeys[j] = sub(mt.AlsoWriteKeys[j], m.Keys)
		}
	}
	for i := range c.Secrets {
		c.Secrets[i].From = sub(c.Secrets[i].From, m.Secrets)
	}
}

// String lists m's entries for messages, sorted.
func (m IDs) String() string {
	var s []string
	for k, v := range m.Keys {
		s = append(s, k+" = "+v)
	}
	for k, v := range m.Secrets {
		s = append(s, k+" = "+v)
	}
	sort.Strings(s)
	return strings.Join(s, ", ")
}
