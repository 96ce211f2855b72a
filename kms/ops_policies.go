package kms

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"

	"github.com/veil-tee/veil/kms/api"
	"github.com/veil-tee/veil/kms/audit"
	"github.com/veil-tee/veil/kms/store"
)

// ---- policies ----

func (s *Service) loadPolicy(tx store.Tx, c Caller, ref string) (*policyRecord, error) {
	id := ref
	if !isID(ref, "p") {
		b, err := tx.Get("names", "policy/"+c.AppID+"/"+ref)
		if errors.Is(err, store.ErrNotFound) {
			return nil, fail(ErrPolicyNotFound, "policy %q not found", ref)
		} else if err != nil {
			return nil, err
		}
		id = string(b)
	}
	var p policyRecord
	err := getJSON(tx, "policies", id, &p)
	if errors.Is(err, store.ErrNotFound) || (err == nil && p.Owner != c.AppID) {
		return nil, fail(ErrPolicyNotFound, "policy %q not found", ref)
	}
	return &p, err
}

// CreatePolicy stores a release policy document owned by the calling app.
func (s *Service) CreatePolicy(ctx context.Context, c Caller, req api.CreatePolicyRequest) (api.Policy, error) {
	var out api.Policy
	if err := require(c, KindApp); err != nil {
		return out, err
	}
	if err := validName("name", req.Name); err != nil {
		return out, err
	}
	doc, err := s.checkPolicyDoc(req.Document)
	if err != nil {
		return out, err
	}
	id := newID("p")
	err = s.mutate(ctx, c, audit.Entry{Op: "policy.create", Policy: id, Owner: c.AppID}, func(tx store.Tx, _ *keyring, _ *audit.Entry) error {
		if _, err := tx.Get("names", "policy/"+c.AppID+"/"+req.Name); err == nil {
			return fail(ErrAlreadyExists, "you already have a policy named %q", req.Name)
		}
		p := policyRecord{ID: id, Owner: c.AppID, Name: req.Name, Created: s.now().UTC(), Document: doc, ByAdmin: c.ViaAdmin}
		if err := putJSON(tx, "policies", id, p); err != nil {
			return err
		}
		out = p.info()
		return tx.Put("names", "policy/"+c.AppID+"/"+req.Name, []byte(id))
	})
	return out, err
}

func (s *Service) checkPolicyDoc(d json.RawMessage) ([]byte, error) {
	if len(d) > MaxPolicyDoc {
		return nil, fail(ErrInvalidField, "field \"document\" is longer than %d bytes", MaxPolicyDoc)
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(d, &obj); err != nil || obj == nil {
		return nil, fail(ErrInvalidField, "field \"document\" must be a JSON object")
	}
	var doc bytes.Buffer
	if err := json.Compact(&doc, d); err != nil {
		return nil, fail(ErrInvalidField, "field \"document\": %v", err)
	}
	if v, ok := s.opt.Evaluator.(PolicyValidator); ok {
		if err := v.ValidatePolicy(doc.Bytes()); err != nil {
			return nil, fail(ErrInvalidField, "field \"document\": %v", err)
		}
	}
	return doc.Bytes(), nil
}

// ReplacePolicy replaces the document of one of the calling app's policies,
// keeping its id, so that every key and secret it is attached to follows
// the new document. Only the owning app may do it (never the admin):
// replacing an attached policy changes who may use the app's objects.
func (s *Service) ReplacePolicy(ctx context.Context, c Caller, ref string, req api.ReplacePolicyRequest) (api.Policy, error) {
	var out api.Policy
	if err := require(c, KindApp); err != nil {
		return out, err
	}
	doc, err := s.checkPolicyDoc(req.Document)
	if err != nil {
		return out, err
	}
	err = s.mutate(ctx, c, audit.Entry{Op: "policy.replace"}, func(tx store.Tx, _ *keyring, e *audit.Entry) error {
		if err := ownerOnly(c, true); err != nil {
			return err
		}
		p, err := s.loadPolicy(tx, c, ref)
		if err != nil {
			return err
		}
		e.Policy, e.Owner = p.ID, p.Owner
		p.Document, p.ByAdmin = doc, false
		out = p.info()
		return putJSON(tx, "policies", p.ID, p)
	})
	return out, err
}

// ListPolicies lists the calling app's policies.
func (s *Service) ListPolicies(ctx context.Context, c Caller) (api.PolicyList, error) {
	out := api.PolicyList{Policies: []api.Policy{}}
	if err := require(c, KindApp); err != nil {
		return out, err
	}
	err := s.read(ctx, c, audit.Entry{Op: "policy.list", Owner: c.AppID}, func(tx store.Tx, _ *keyring, _ *audit.Entry) error {
		return tx.List("names", "policy/"+c.AppID+"/", func(_ string, v []byte) error {
			var p policyRecord
			if err := getJSON(tx, "policies", string(v), &p); err != nil {
				return err
			}
			out.Policies = append(out.Policies, p.info())
			return nil
		})
	})
	return out, err
}

// GetPolicy returns one of the calling app's policies.
func (s *Service) GetPolicy(ctx context.Context, c Caller, ref string) (api.Policy, error) {
	var out api.Policy
	if err := require(c, KindApp); err != nil {
		return out, err
	}
	err := s.read(ctx, c, audit.Entry{Op: "policy.get"}, func(tx store.Tx, _ *keyring, e *audit.Entry) error {
		p, err := s.loadPolicy(tx, c, ref)
		if err != nil {
			return err
		}
		e.Policy, e.Owner = p.ID, p.Owner
		out = p.info()
		return nil
	})
	return out, err
}

// DeletePolicy deletes a policy that is attached to nothing.
func (s *Service) DeletePolicy(ctx context.Context, c Caller, ref string) error {
	if err := require(c, KindApp); err != nil {
		return err
	}
	return s.mutate(ctx, c, audit.Entry{Op: "policy.delete"}, func(tx store.Tx, _ *keyring, e *audit.Entry) error {
		p, err := s.loadPolicy(tx, c, ref)
		if err != nil {
			return err
		}
		e.Policy, e.Owner = p.ID, p.Owner
		var users []string
		for _, b := range []string{"keys", "secrets"} {
			err := tx.List(b, "", func(id string, v []byte) error {
				var r struct {
					Owner    string   `json:"owner"`
					Policies []string `json:"policies"`
				}
				if err := json.Unmarshal(v, &r); err != nil {
					return err
				}
				if r.Owner == c.AppID && slices.Contains(r.Policies, p.ID) {
					users = append(users, id)
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
		if len(users) > 0 {
			return fail(ErrPolicyInUse, "policy %s is attached to %s; detach it first", p.ID, strings.Join(users, ", "))
		}
		if err := tx.Delete("policies", p.ID); err != nil {
			return err
		}
		return tx.Delete("names", "policy/"+c.AppID+"/"+p.Name)
	})
}

// SetKeyPolicy attaches (or detaches) a policy to one of the app's keys.
func (s *Service) SetKeyPolicy(ctx context.Context, c Caller, keyRef, policyRef string, attach bool) (api.Key, error) {
	var out api.Key
	if err := require(c, KindApp); err != nil {
		return out, err
	}
	op := map[bool]string{true: "key.policy.attach", false: "key.policy.detach"}[attach]
	err := s.mutate(ctx, c, audit.Entry{Op: op}, func(tx store.Tx, _ *keyring, e *audit.Entry) error {
		k, err := s.loadKey(tx, c, keyRef)
		if err != nil {
			return err
		}
		e.Key, e.Owner = k.ID, k.Owner
		if err := ownerOnly(c, attach); err != nil {
			return err
		}
		p, err := s.loadPolicy(tx, c, policyRef)
		if err != nil {
			return err
		}
		e.Policy = p.ID
		k.Policies, err = editPolicies(k.Policies, p.ID, attach)
		if err != nil {
			return err
		}
		out = k.info()
		return putJSON(tx, "keys", k.ID, k)
	})
	return out, err
}

// ownerOnly refuses an admin acting for an app when the operation would
// widen who may use the app's objects: attaching a policy, or replacing the
// document of one. Only a request signed by the owning app does that; the
// admin may detach (revoke) and list.
func ownerOnly(c Caller, widens bool) error {
	if widens && (c.ViaAdmin || c.Kind != KindApp) {
		return fail(ErrForbidden, "only the owning app (a signed request) attaches or replaces release policies; the admin may only list and detach them")
	}
	return nil
}

func editPolicies(list []string, id string, attach bool) ([]string, error) {
	i := slices.Index(list, id)
	if attach {
		if i >= 0 {
			return nil, fail(ErrAlreadyExists, "policy %s is already attached", id)
		}
		return append(list, id), nil
	}
	if i < 0 {
		return nil, fail(ErrPolicyNotFound, "policy %s is not attached", id)
	}
	return slices.Delete(list, i, i+1), nil
}
