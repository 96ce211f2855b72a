package bom

import (
	"bytes"
	"embed"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"sort"
	"strings"

	"github.com/veil-tee/veil/config"
)

// Shipped BOM snippets, named by their path under snippets/ without .json
// ("debian/python3"). Each has the schema of veil.json's bom section.
//
//go:embed snippets
var snippetFS embed.FS

// Snippet returns the shipped snippet name.
func Snippet(name string) (config.BOM, error) {
	data, err := snippetFS.ReadFile("snippets/" + name + ".json")
	if err != nil {
		return config.BOM{}, fmt.Errorf("%w %q (known: %s)", ErrUnknownInclude, name, strings.Join(Snippets(), ", "))
	}
	return ParseSnippet(data)
}

// ParseSnippet decodes a snippet strictly and validates it.
func ParseSnippet(data []byte) (config.BOM, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var b config.BOM
	if err := dec.Decode(&b); err != nil {
		return config.BOM{}, fmt.Errorf("parsing snippet: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return config.BOM{}, fmt.Errorf("parsing snippet: trailing data")
	}
	if err := b.Validate(); err != nil {
		return config.BOM{}, err
	}
	return b, nil
}

// Snippets lists the shipped snippet names.
func Snippets() []string {
	var out []string
	fs.WalkDir(snippetFS, "snippets", func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".json") {
			out = append(out, strings.TrimSuffix(strings.TrimPrefix(p, "snippets/"), ".json"))
		}
		return nil
	})
	sort.Strings(out)
	return out
}
