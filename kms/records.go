package kms

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"regexp"
	"strings"
	"time"

	"github.com/veil-tee/veil/kms/api"
)

// Stored records. Fields holding secrets are encrypted under the root key
// (keyring.seal) with a label naming the record, so a sealed field cannot
// be moved to another record.

type appRecord struct {
	ID         string    `json:"id"`
	Name       string    `json:"name"`
	Created    time.Time `json:"created"`
	SigningKey []byte    `json:"signing_key"` // sealed, label "app/ID"
	Disabled   bool      `json:"disabled,omitempty"`
	// SelfKeyed is set once the app rotated its own API key: from then on
	// only the app knows it, and the admin may disable the app but not
	// re-key it (which would hand the admin the app's credentials).
	SelfKeyed bool `json:"self_keyed,omitempty"`
}

type keyVersionRecord struct {
	Version  int       `json:"version"`
	Created  time.Time `json:"created"`
	Material []byte    `json:"material,omitempty"` // sealed, label "key/ID/VERSION"; nil once deleted
}

type keyRecord struct {
	ID           string             `json:"id"`
	Owner        string             `json:"owner"`
	Name         string             `json:"name"`
	Description  string             `json:"description,omitempty"`
	Spec         string             `json:"spec"`
	State        string             `json:"state"`
	Created      time.Time          `json:"created"`
	DeletionTime *time.Time         `json:"deletion_time,omitempty"`
	Primary      int                `json:"primary"`
	Versions     []keyVersionRecord `json:"versions"`
	Policies     []string           `json:"policies"`
}

type secretVersionRecord struct {
	Version int       `json:"version"`
	Created time.Time `json:"created"`
	Value   []byte    `json:"value"` // sealed, label "secret/ID/VERSION"
}

type secretRecord struct {
	ID          string                `json:"id"`
	Owner       string                `json:"owner"`
	Name        string                `json:"name"`
	Description string                `json:"description,omitempty"`
	Created     time.Time             `json:"created"`
	Versions    []secretVersionRecord `json:"versions"`
	Policies    []string              `json:"policies"`
}

type policyRecord struct {
	ID       string          `json:"id"`
	Owner    string          `json:"owner"`
	Name     string          `json:"name"`
	Created  time.Time       `json:"created"`
	Document json.RawMessage `json:"document"`
	// ByAdmin marks a document written by the admin on the app's behalf
	// (it then takes effect only once the app itself attaches it).
	ByAdmin bool `json:"by_admin,omitempty"`
}

func newID(prefix string) string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return prefix + "_" + hex.EncodeToString(b)
}

var (
	idRE   = regexp.MustCompile(`^[akps]_[0-9a-f]{32}$`)
	nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
)

// isID reports whether ref is an id with prefix ("k": k_ and 32
// lower-case hex digits), the shape idRE matches, without a regexp: it
// runs on every request.
func isID(ref, prefix string) bool {
	if len(ref) != 34 || len(prefix) != 1 || ref[0] != prefix[0] || ref[1] != '_' || !strings.Contains("akps", prefix) {
		return false
	}
	for i := 2; i < len(ref); i++ {
		if c := ref[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func validName(field, name string) error {
	if !nameRE.MatchString(name) {
		return fail(ErrInvalidField, "field %q must be 1-128 characters of [A-Za-z0-9._-] starting with a letter or digit", field)
	}
	if idRE.MatchString(name) {
		return fail(ErrInvalidField, "field %q must not look like an id", field)
	}
	return nil
}

func (k *keyRecord) info() api.Key {
	out := api.Key{ID: k.ID, Name: k.Name, Owner: k.Owner, Description: k.Description, Spec: k.Spec,
		State: k.State, Created: k.Created, DeletionTime: k.DeletionTime, PrimaryVersion: k.Primary,
		Policies: append([]string{}, k.Policies...)}
	for _, v := range k.Versions {
		out.Versions = append(out.Versions, api.KeyVersion{Version: v.Version, Created: v.Created})
	}
	return out
}

func (s *secretRecord) info() api.Secret {
	out := api.Secret{ID: s.ID, Name: s.Name, Owner: s.Owner, Description: s.Description, Created: s.Created,
		Versions: len(s.Versions), Policies: append([]string{}, s.Policies...)}
	if n := len(s.Versions); n > 0 {
		out.Version = s.Versions[n-1].Version
	}
	return out
}

func (p *policyRecord) info() api.Policy {
	return api.Policy{ID: p.ID, Name: p.Name, Owner: p.Owner, Created: p.Created, Document: p.Document, ByAdmin: p.ByAdmin}
}
