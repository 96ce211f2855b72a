package kms

import (
	"context"
	"errors"
	"fmt"

	"github.com/veil-tee/veil/kms/api"
	"github.com/veil-tee/veil/kms/audit"
	"github.com/veil-tee/veil/kms/store"
)

// ---- secrets ----

func (s *Service) loadSecret(tx store.Tx, c Caller, ref string) (*secretRecord, error) {
	id := ref
	if !isID(ref, "s") {
		if c.Kind != KindApp {
			return nil, fail(ErrSecretNotFound, "secret %q not found (workloads name secrets by id)", ref)
		}
		b, err := tx.Get("names", "secret/"+c.AppID+"/"+ref)
		if errors.Is(err, store.ErrNotFound) {
			return nil, fail(ErrSecretNotFound, "secret %q not found", ref)
		} else if err != nil {
			return nil, err
		}
		id = string(b)
	}
	var r secretRecord
	err := getJSON(tx, "secrets", id, &r)
	if errors.Is(err, store.ErrNotFound) || (err == nil && c.Kind == KindApp && r.Owner != c.AppID) {
		return nil, fail(ErrSecretNotFound, "secret %q not found", ref)
	}
	return &r, err
}

// PutSecret stores a new version of the calling app's named secret.
func (s *Service) PutSecret(ctx context.Context, c Caller, name string, req api.PutSecretRequest) (api.Secret, error) {
	var out api.Secret
	if err := require(c, KindApp); err != nil {
		return out, err
	}
	if err := validName("name", name); err != nil {
		return out, err
	}
	if len(req.Value) == 0 || len(req.Value) > MaxSecretValue {
		return out, fail(ErrInvalidField, "field \"value\" must be 1-%d bytes", MaxSecretValue)
	}
	if len(req.Description) > MaxDescription {
		return out, fail(ErrInvalidField, "field \"description\" is longer than %d bytes", MaxDescription)
	}
	err := s.mutate(ctx, c, audit.Entry{Op: "secret.put", Owner: c.AppID}, func(tx store.Tx, kr *keyring, e *audit.Entry) error {
		now := s.now().UTC()
		r, err := s.loadSecret(tx, c, name)
		if errors.Is(err, ErrSecretNotFound) {
			r = &secretRecord{ID: newID("s"), Owner: c.AppID, Name: name, Created: now, Policies: []string{}}
			if err := tx.Put("names", "secret/"+c.AppID+"/"+name, []byte(r.ID)); err != nil {
				return err
			}
		} else if err != nil {
			return err
		}
		if req.Description != "" {
			r.Description = req.Description
		}
		v := 1
		if n := len(r.Versions); n > 0 {
			v = r.Versions[n-1].Version + 1
		}
		sealed, err := kr.seal(fmt.Sprintf("secret/%s/%d", r.ID, v), req.Value)
		if err != nil {
			return err
		}
		r.Versions = append(r.Versions, secretVersionRecord{Version: v, Created: now, Value: sealed})
		e.Secret = r.ID
		out = r.info()
		return putJSON(tx, "secrets", r.ID, r)
	})
	return out, err
}

// GetSecret returns a secret's value (version 0 means the latest) to its
// owner or to a workload that satisfies one of its policies.
func (s *Service) GetSecret(ctx context.Context, c Caller, ref string, version int) (api.Secret, error) {
	var out api.Secret
	if err := require(c, KindApp, KindWorkload); err != nil {
		return out, err
	}
	err := s.read(ctx, c, audit.Entry{Op: "secret.get"}, func(tx store.Tx, kr *keyring, e *audit.Entry) error {
		r, err := s.loadSecret(tx, c, ref)
		if err != nil {
			return err
		}
		e.Secret, e.Owner = r.ID, r.Owner
		if err := s.authorizeUse(tx, c, "secret "+r.ID, r.Owner, r.Policies); err != nil {
			return err
		}
		out = r.info()
		for _, v := range r.Versions {
			if v.Version == version || (version == 0 && v.Version == out.Version) {
				pt, err := kr.open(fmt.Sprintf("secret/%s/%d", r.ID, v.Version), v.Value)
				if err != nil {
					return err
				}
				out.Version, out.Value = v.Version, pt
				return nil
			}
		}
		return fail(ErrSecretNotFound, "secret %s has no version %d", r.ID, version)
	})
	return out, err
}

// ListSecrets lists the calling app's secrets (without values).
func (s *Service) ListSecrets(ctx context.Context, c Caller) (api.SecretList, error) {
	out := api.SecretList{Secrets: []api.Secret{}}
	if err := require(c, KindApp); err != nil {
		return out, err
	}
	err := s.read(ctx, c, audit.Entry{Op: "secret.list", Owner: c.AppID}, func(tx store.Tx, _ *keyring, _ *audit.Entry) error {
		return tx.List("names", "secret/"+c.AppID+"/", func(_ string, v []byte) error {
			var r secretRecord
			if err := getJSON(tx, "secrets", string(v), &r); err != nil {
				return err
			}
			out.Secrets = append(out.Secrets, r.info())
			return nil
		})
	})
	return out, err
}

// DeleteSecret deletes all versions of a secret.
func (s *Service) DeleteSecret(ctx context.Context, c Caller, ref string) error {
	if err := require(c, KindApp); err != nil {
		return err
	}
	return s.mutate(ctx, c, audit.Entry{Op: "secret.delete"}, func(tx store.Tx, _ *keyring, e *audit.Entry) error {
		r, err := s.loadSecret(tx, c, ref)
		if err != nil {
			return err
		}
		e.Secret, e.Owner = r.ID, r.Owner
		if err := tx.Delete("secrets", r.ID); err != nil {
			return err
		}
		return tx.Delete("names", "secret/"+c.AppID+"/"+r.Name)
	})
}

// SetSecretPolicy attaches (or detaches) a policy to one of the app's secrets.
func (s *Service) SetSecretPolicy(ctx context.Context, c Caller, secretRef, policyRef string, attach bool) (api.Secret, error) {
	var out api.Secret
	if err := require(c, KindApp); err != nil {
		return out, err
	}
	op := map[bool]string{true: "secret.policy.attach", false: "secret.policy.detach"}[attach]
	err := s.mutate(ctx, c, audit.Entry{Op: op}, func(tx store.Tx, _ *keyring, e *audit.Entry) error {
		r, err := s.loadSecret(tx, c, secretRef)
		if err != nil {
			return err
		}
		e.Secret, e.Owner = r.ID, r.Owner
		if err := ownerOnly(c, attach); err != nil {
			return err
		}
		p, err := s.loadPolicy(tx, c, policyRef)
		if err != nil {
			return err
		}
		e.Policy = p.ID
		r.Policies, err = editPolicies(r.Policies, p.ID, attach)
		if err != nil {
			return err
		}
		out = r.info()
		return putJSON(tx, "secrets", r.ID, r)
	})
	return out, err
}

// RefuseUnverifiedWorkload audits the refusal of a release of secret ref
// to a workload whose evidence did not verify, for listeners that
// authenticate workloads themselves (Gramine secret provisioning), so that
// such refusals sit in the audit chain beside the workload API's. It
// returns the refusal as ErrWorkloadAuth, naming cause.
func (s *Service) RefuseUnverifiedWorkload(ctx context.Context, ref string, cause error) error {
	refusal := fail(ErrWorkloadAuth, "verifying the workload's evidence: %v", cause)
	if _, err := s.keyring(); err != nil {
		return err
	}
	if err := s.chainUsable(); err != nil {
		return err
	}
	s.auditBatch(ctx, audit.Entry{Op: "secret.get", Secret: ref, Actor: audit.Actor{Kind: KindWorkload}}, refusal)
	return refusal
}
