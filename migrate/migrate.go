// Package migrate turns the configuration of a Gramine or Occlum workload
// (a Gramine manifest, an Occlum.json) into a veil.json, and lists every
// input field it did not map, with the reason, so that nothing is dropped
// silently.
//
// It reads configuration only: it does not convert data (SEFS images and
// SGX-sealed files stay where they are; Gramine protected files are read by
// veil directly, see the gramine/pf package), and it never contacts a key
// service. What it writes is a starting point that config.Parse accepts;
// the reviewer decides which keys open sealed mounts.
package migrate

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/veil-tee/veil/config"
)

// ErrInput is wrapped by every error about the input file.
var ErrInput = errors.New("cannot import configuration")

// Note says what happened to one input field.
type Note struct {
	Field  string // dotted path in the input, such as "sgx.enclave_size" or "mount[2].type"
	Reason string
}

func (n Note) String() string { return n.Field + ": " + n.Reason }

// Result is an imported configuration.
type Result struct {
	Config *config.Config
	// Mapped says where each mapped field went (and how, when the mapping
	// is approximate).
	Mapped []Note
	// Unmapped lists every input field with no veil equivalent, and why.
	Unmapped []Note
}

// Options tune an import.
type Options struct {
	// BaseDir is the absolute directory relative host paths of the input
	// are resolved against (the directory of the input file).
	BaseDir string
	// SealedKey is the key reference for sealed mounts made from Occlum
	// SEFS mounts (default "file:keys/sealed.key").
	SealedKey string
	// GramineKeys maps a Gramine key_name to the key reference of its
	// 16-byte wrap key (default "file:keys/KEY_NAME.key").
	GramineKeys map[string]string
}

// walker records which input fields were used and reports the rest.
type walker struct {
	used     map[string]bool
	mapped   []Note
	unmapped []Note
}

func newWalker() *walker { return &walker{used: map[string]bool{}} }

// mapTo records that field went to the veil field to.
func (w *walker) mapTo(field, to string) {
	w.used[field] = true
	w.mapped = append(w.mapped, Note{field, to})
}

// skip records that field has no veil equivalent, and why.
func (w *walker) skip(field, reason string) {
	w.used[field] = true
	w.unmapped = append(w.unmapped, Note{field, reason})
}

// rest reports every leaf of v not under a used field, with the reason
// reason(field) gives.
func (w *walker) rest(v any, at string, reason func(string) string) {
	if at != "" && w.used[at] {
		return
	}
	switch t := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(t))
		for k := range t {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			w.rest(t[k], join(at, k), reason)
		}
	case []any:
		for i, e := range t {
			w.rest(e, fmt.Sprintf("%s[%d]", at, i), reason)
		}
	case []map[string]any:
		for i, e := range t {
			w.rest(e, fmt.Sprintf("%s[%d]", at, i), reason)
		}
	default:
		w.skip(at, reason(at))
	}
}

func join(at, k string) string {
	if at == "" {
		return k
	}
	return at + "." + k
}

// reasonFor returns the reason of the longest matching prefix in table,
// or a generic one.
func reasonFor(table map[string]string) func(string) string {
	return func(field string) string {
		best, reason := -1, ""
		for p, r := range table {
			if (field == p || strings.HasPrefix(field, p+".") || strings.HasPrefix(field, p+"[")) && len(p) > best {
				best, reason = len(p), r
			}
		}
		if best < 0 {
			return "no veil equivalent"
		}
		return reason
	}
}

// finish validates the configuration and returns the result.
func (w *walker) finish(c *config.Config) (*Result, error) {
	if c.Env.Default == nil {
		c.Env.Default = map[string]string{}
	}
	if c.Env.Passthrough == nil {
		c.Env.Passthrough = []string{}
	}
	if c.Mounts == nil {
		c.Mounts = []config.Mount{}
	}
	b, err := c.Marshal()
	if err != nil {
		return nil, err
	}
	parsed, err := config.Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%w: the imported veil.json does not validate: %w", ErrInput, err)
	}
	// Keep what was written, not the defaults Parse applied.
	_ = parsed
	sortNotes(w.mapped)
	sortNotes(w.unmapped)
	return &Result{Config: c, Mapped: w.mapped, Unmapped: w.unmapped}, nil
}

func sortNotes(n []Note) {
	slices.SortStableFunc(n, func(a, b Note) int { return strings.Compare(a.Field, b.Field) })
}

// hostPath resolves a host path of the input against base.
func hostPath(base, p string) string {
	if filepath.IsAbs(p) || base == "" {
		return filepath.Clean(p)
	}
	return filepath.Join(base, p)
}

// validTarget reports whether p can be a veil mount target.
func validTarget(p string) bool {
	return strings.HasPrefix(p, "/") && p != "/" && filepath.Clean(p) == p
}

// addMount appends m unless its target is taken; it reports success.
func addMount(c *config.Config, m config.Mount) bool {
	for _, o := range c.Mounts {
		if o.Target == m.Target {
			return false
		}
	}
	c.Mounts = append(c.Mounts, m)
	return true
}
