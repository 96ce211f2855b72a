package kms

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/veil-tee/veil/kms/api"
	"github.com/veil-tee/veil/kms/audit"
	"github.com/veil-tee/veil/kms/store"
)

// ---- keys ----

func (s *Service) effectiveState(k *keyRecord) string {
	if k.State == api.StatePendingDeletion && k.DeletionTime != nil && !s.now().Before(*k.DeletionTime) {
		return api.StateDeleted
	}
	return k.State
}

func (s *Service) loadKey(tx store.Tx, c Caller, ref string) (*keyRecord, error) {
	id := ref
	if !isID(ref, "k") {
		if c.Kind != KindApp {
			return nil, fail(ErrKeyNotFound, "key %q not found (workloads name keys by id)", ref)
		}
		b, err := tx.Get("names", "key/"+c.AppID+"/"+ref)
		if errors.Is(err, store.ErrNotFound) {
			return nil, fail(ErrKeyNotFound, "key %q not found", ref)
		} else if err != nil {
			return nil, err
		}
		id = string(b)
	}
	kr, _ := s.keyring() // nil when sealed: no cache
	k, err := getVerified(tx, kr, "keys", id, (*keyRecord).clone)
	if errors.Is(err, store.ErrNotFound) || (err == nil && c.Kind == KindApp && k.Owner != c.AppID) {
		return nil, fail(ErrKeyNotFound, "key %q not found", ref)
	}
	if err != nil {
		return nil, err
	}
	k.State = s.effectiveState(k)
	return k, nil
}

// clone copies k deeply enough that changing the copy (its state, versions
// or policies) leaves k as it was.
func (k *keyRecord) clone() *keyRecord {
	c := *k
	c.Versions = slices.Clone(k.Versions)
	c.Policies = slices.Clone(k.Policies)
	if k.DeletionTime != nil {
		t := *k.DeletionTime
		c.DeletionTime = &t
	}
	return &c
}

func usable(k *keyRecord) error {
	switch k.State {
	case api.StateEnabled:
		return nil
	case api.StateDisabled:
		return fail(ErrKeyDisabled, "key %s is disabled", k.ID)
	case api.StatePendingDeletion:
		return fail(ErrKeyPendingDelete, "key %s is scheduled for deletion on %s", k.ID, k.DeletionTime.UTC().Format(time.RFC3339))
	default:
		return fail(ErrKeyDeleted, "key %s was deleted", k.ID)
	}
}

// CreateKey creates a customer master key owned by the calling app.
func (s *Service) CreateKey(ctx context.Context, c Caller, req api.CreateKeyRequest) (api.Key, error) {
	return s.CreateKeyOnce(ctx, c, req, "")
}

// errRepeated ends the transaction of a create whose request id was
// already served (nothing is written; the earlier result is returned).
var errRepeated = errors.New("request already served")

// CreateKeyOnce creates a key; a non-empty requestID (the client's
// api.HeaderRequestID) makes it idempotent across all servers of one
// store: a request repeated with the same id by the same app returns the
// key the first one created instead of creating another. The id is kept
// in the "requests" bucket under a unique key, written in the same
// transaction as the key.
func (s *Service) CreateKeyOnce(ctx context.Context, c Caller, req api.CreateKeyRequest, requestID string) (api.Key, error) {
	if err := require(c, KindApp); err != nil {
		return api.Key{}, err
	}
	if err := validName("name", req.Name); err != nil {
		return api.Key{}, err
	}
	if req.Spec == "" {
		req.Spec = api.SpecAES256GCM
	}
	if len(req.Description) > MaxDescription {
		return api.Key{}, fail(ErrInvalidField, "field \"description\" is longer than %d bytes", MaxDescription)
	}
	if requestID != "" && (len(requestID) > 64 || !isToken(requestID)) {
		return api.Key{}, fail(ErrBadRequest, "header %s must be 1-64 characters of [A-Za-z0-9_-]", api.HeaderRequestID)
	}
	reqKey := "key.create/" + c.AppID + "/" + requestID
	var out api.Key
	repeated := func(tx store.Tx) (bool, error) {
		if requestID == "" {
			return false, nil
		}
		b, err := tx.Get("requests", reqKey)
		if errors.Is(err, store.ErrNotFound) {
			return false, nil
		} else if err != nil {
			return false, err
		}
		var rec keyRecord
		if err := getJSON(tx, "keys", string(b), &rec); err != nil {
			return false, err
		}
		rec.State = s.effectiveState(&rec)
		out = rec.info()
		return true, nil
	}
	if requestID != "" {
		k, err := s.keyring()
		if err != nil {
			return out, err
		}
		var done bool
		err = s.view(ctx, k, func(tx store.Tx) error { var err error; done, err = repeated(tx); return err })
		if err != nil || done {
			return out, err
		}
	}
	id := newID("k")
	// Generate outside the write transaction: RSA takes a while.
	mat, err := newMaterial(req.Spec)
	if err != nil {
		return out, err
	}
	defer clear(mat)
	err = s.mutate(ctx, c, audit.Entry{Op: "key.create", Key: id, Owner: c.AppID, KeyVersion: 1}, func(tx store.Tx, k *keyring, e *audit.Entry) error {
		// Checked again under the writers' order: the same request may
		// have reached another server meanwhile.
		if done, err := repeated(tx); err != nil {
			return err
		} else if done {
			return errRepeated
		}
		if _, err := tx.Get("names", "key/"+c.AppID+"/"+req.Name); err == nil {
			return fail(ErrAlreadyExists, "you already have a key named %q", req.Name)
		}
		if requestID != "" {
			if err := tx.Put("requests", reqKey, []byte(id)); err != nil {
				return err
			}
		}
		sealed, err := k.seal(fmt.Sprintf("key/%s/1", id), mat)
		if err != nil {
			return err
		}
		now := s.now().UTC()
		rec := keyRecord{ID: id, Owner: c.AppID, Name: req.Name, Description: req.Description, Spec: req.Spec,
			State: api.StateEnabled, Created: now, Primary: 1, Policies: []string{},
			Versions: []keyVersionRecord{{Version: 1, Created: now, Material: sealed}}}
		if err := putJSON(tx, "keys", id, rec); err != nil {
			return err
		}
		out = rec.info()
		return tx.Put("names", "key/"+c.AppID+"/"+req.Name, []byte(id))
	})
	if errors.Is(err, errRepeated) {
		err = nil
	}
	return out, err
}

// ListKeys lists the calling app's keys.
func (s *Service) ListKeys(ctx context.Context, c Caller) (api.KeyList, error) {
	out := api.KeyList{Keys: []api.Key{}}
	if err := require(c, KindApp); err != nil {
		return out, err
	}
	err := s.read(ctx, c, audit.Entry{Op: "key.list", Owner: c.AppID}, func(tx store.Tx, _ *keyring, _ *audit.Entry) error {
		return tx.List("names", "key/"+c.AppID+"/", func(_ string, v []byte) error {
			var k keyRecord
			if err := getJSON(tx, "keys", string(v), &k); err != nil {
				return err
			}
			k.State = s.effectiveState(&k)
			out.Keys = append(out.Keys, k.info())
			return nil
		})
	})
	return out, err
}

// DescribeKey returns a key's metadata.
func (s *Service) DescribeKey(ctx context.Context, c Caller, ref string) (api.Key, error) {
	var out api.Key
	if err := require(c, KindApp); err != nil {
		return out, err
	}
	err := s.read(ctx, c, audit.Entry{Op: "key.describe"}, func(tx store.Tx, _ *keyring, e *audit.Entry) error {
		k, err := s.loadKey(tx, c, ref)
		if err != nil {
			return err
		}
		e.Key, e.Owner = k.ID, k.Owner
		out = k.info()
		return nil
	})
	return out, err
}

// KeyAction is a state change of a key.
type KeyAction string

// Key actions.
const (
	ActionEnable         KeyAction = "enable"
	ActionDisable        KeyAction = "disable"
	ActionRotate         KeyAction = "rotate"
	ActionScheduleDelete KeyAction = "schedule-deletion"
	ActionCancelDelete   KeyAction = "cancel-deletion"
)

// UpdateKey applies action to the calling app's key. pendingDays is used by
// ActionScheduleDelete (0 means the maximum, 30).
func (s *Service) UpdateKey(ctx context.Context, c Caller, ref string, action KeyAction, pendingDays int) (api.Key, error) {
	var out api.Key
	if err := require(c, KindApp); err != nil {
		return out, err
	}
	var mat []byte
	if action == ActionRotate {
		// Generate the new version outside the write transaction.
		var spec string
		kr, err := s.keyring()
		if err != nil {
			return out, err
		}
		err = s.view(ctx, kr, func(tx store.Tx) error {
			k, err := s.loadKey(tx, c, ref)
			if err == nil {
				spec = k.Spec
			}
			return err
		})
		if err == nil { // else the transaction below reports (and audits) the refusal
			if mat, err = newMaterial(spec); err != nil {
				return out, err
			}
			defer clear(mat)
		}
	}
	err := s.mutate(ctx, c, audit.Entry{Op: "key." + string(action)}, func(tx store.Tx, kr *keyring, e *audit.Entry) error {
		k, err := s.loadKey(tx, c, ref)
		if err != nil {
			return err
		}
		e.Key, e.Owner, e.KeyVersion = k.ID, k.Owner, k.Primary
		if k.State == api.StateDeleted {
			return fail(ErrKeyDeleted, "key %s was deleted", k.ID)
		}
		now := s.now().UTC()
		switch action {
		case ActionEnable, ActionDisable:
			if k.State == api.StatePendingDeletion {
				return fail(ErrKeyPendingDelete, "key %s is scheduled for deletion; cancel the deletion first", k.ID)
			}
			k.State = map[KeyAction]string{ActionEnable: api.StateEnabled, ActionDisable: api.StateDisabled}[action]
		case ActionRotate:
			if err := usable(k); err != nil {
				return err
			}
			v := k.Versions[len(k.Versions)-1].Version + 1
			if mat == nil {
				return fail(ErrInvalidState, "key %s changed during rotation; retry", k.ID)
			}
			sealed, err := kr.seal(fmt.Sprintf("key/%s/%d", k.ID, v), mat)
			if err != nil {
				return err
			}
			k.Versions = append(k.Versions, keyVersionRecord{Version: v, Created: now, Material: sealed})
			k.Primary = v
			e.KeyVersion = v
		case ActionScheduleDelete:
			if k.State == api.StatePendingDeletion {
				return fail(ErrKeyPendingDelete, "key %s is already scheduled for deletion", k.ID)
			}
			if pendingDays == 0 {
				pendingDays = MaxPendingDays
			}
			if pendingDays < 1 || pendingDays > MaxPendingDays {
				return fail(ErrInvalidField, "field \"pending_days\" must be 1-%d", MaxPendingDays)
			}
			t := now.Add(time.Duration(pendingDays) * 24 * time.Hour)
			k.State, k.DeletionTime = api.StatePendingDeletion, &t
		case ActionCancelDelete:
			if k.State != api.StatePendingDeletion {
				return fail(ErrInvalidState, "key %s is not scheduled for deletion", k.ID)
			}
			k.State, k.DeletionTime = api.StateDisabled, nil
		default:
			return fail(ErrBadRequest, "unknown key action %q", action)
		}
		out = k.info()
		return putJSON(tx, "keys", k.ID, k)
	})
	return out, err
}

// Sweep deletes the material of keys whose deletion time has passed. The
// server runs it periodically; it returns how many keys it deleted.
func (s *Service) Sweep(ctx context.Context) (int, error) {
	k, err := s.keyring()
	if err != nil {
		return 0, err
	}
	n := 0
	err = s.update(ctx, k, func(tx store.Tx) error {
		n = 0
		var due []keyRecord
		err := tx.List("keys", "", func(_ string, v []byte) error {
			var r keyRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
			if r.State == api.StatePendingDeletion && s.effectiveState(&r) == api.StateDeleted {
				due = append(due, r)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, r := range due {
			r.State = api.StateDeleted
			k.mu.Lock()
			for i := range r.Versions {
				r.Versions[i].Material = nil
				delete(k.aeads, fmt.Sprintf("key/%s/%d", r.ID, r.Versions[i].Version))
			}
			k.mu.Unlock()
			if err := putJSON(tx, "keys", r.ID, r); err != nil {
				return err
			}
			if err := tx.Delete("names", "key/"+r.Owner+"/"+r.Name); err != nil {
				return err
			}
			e := audit.Entry{Time: s.now(), Actor: audit.Actor{Kind: "system"}, Op: "key.delete", Key: r.ID, Owner: r.Owner, Result: audit.Granted}
			if err := s.appendAudit(tx, k, e); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	return n, err
}

// ---- release decisions ----

// authorizeUse lets an app use its own objects (ownership was checked when
// loading) and a workload use objects whose policies it satisfies. Only
// policies that belong to the object's owner count: a policy of another app
// on the list (however it got there) is ignored and reported as unmet.
func (s *Service) authorizeUse(tx store.Tx, c Caller, what, owner string, policies []string) error {
	switch c.Kind {
	case KindApp:
		return nil
	case KindWorkload:
	default:
		return fail(ErrForbidden, "%s callers may not use keys or secrets", c.Kind)
	}
	if len(policies) == 0 {
		return &Error{Status: ErrPolicyDenied.Status, Code: ErrPolicyDenied.Code,
			Detail: what + " has no release policy, so no workload may use it", Unmet: []string{"no release policy attached"}}
	}
	if s.opt.Evaluator == nil {
		return fail(ErrNoPolicyEvaluator, "this server has no policy evaluator configured")
	}
	var unmet []string
	for _, pid := range policies {
		kr, _ := s.keyring()
		p, err := getVerified(tx, kr, "policies", pid, func(p policyRecord) policyRecord { return p })
		if err != nil {
			if !errors.Is(err, store.ErrNotFound) {
				return err // a record failing its integrity check is refused by name
			}
			unmet = append(unmet, fmt.Sprintf("policy %s: not found", pid))
			continue
		}
		if p.Owner != owner || p.ID != pid {
			unmet = append(unmet, fmt.Sprintf("policy %s: belongs to %s, not to the owner %s", pid, p.Owner, owner))
			continue
		}
		ok, why := s.opt.Evaluator.Evaluate(p.Document, *c.Workload)
		if ok {
			return nil
		}
		for _, w := range why {
			unmet = append(unmet, p.Name+": "+w)
		}
	}
	return &Error{Status: ErrPolicyDenied.Status, Code: ErrPolicyDenied.Code,
		Detail: what + ": the workload satisfies none of the release policies: " + strings.Join(unmet, "; "), Unmet: unmet}
}

func (s *Service) keyAEAD(kr *keyring, k *keyRecord, version int) (cipher.AEAD, error) {
	if err := needSpec(k, "symmetric encryption", api.SpecAES256GCM); err != nil {
		return nil, err
	}
	for _, v := range k.Versions {
		if v.Version != version || v.Material == nil {
			continue
		}
		label := fmt.Sprintf("key/%s/%d", k.ID, v.Version)
		return cached(kr, kr.aeads, label, func() (cipher.AEAD, error) {
			mat, err := kr.open(label, v.Material)
			if err != nil {
				return nil, err
			}
			blk, err := aes.NewCipher(mat)
			clear(mat)
			if err != nil {
				return nil, err
			}
			return cipher.NewGCM(blk)
		})
	}
	return nil, fail(ErrDecryptFailed, "key %s has no version %d", k.ID, version)
}

func checkAAD(aad []byte) error {
	if len(aad) > MaxAAD {
		return fail(ErrInvalidField, "field \"aad\" is longer than %d bytes", MaxAAD)
	}
	return nil
}

// encryptWith seals plaintext under the key's primary version.
func (s *Service) encryptWith(kr *keyring, k *keyRecord, plaintext, aad []byte) ([]byte, error) {
	a, err := s.keyAEAD(kr, k, k.Primary)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, blobNonceLen)
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	b := blob{KeyID: k.ID, Version: uint32(k.Primary), Nonce: nonce}
	b.Sealed = a.Seal(nil, nonce, plaintext, blobAAD(k.ID, k.Owner, b.Version, aad))
	return b.marshal(), nil
}

// Encrypt encrypts a small plaintext under a key.
func (s *Service) Encrypt(ctx context.Context, c Caller, ref string, req api.EncryptRequest) (api.CipherResponse, error) {
	var out api.CipherResponse
	if err := require(c, KindApp, KindWorkload); err != nil {
		return out, err
	}
	if len(req.Plaintext) > MaxPlaintext {
		return out, fail(ErrInvalidField, "field \"plaintext\" is longer than %d bytes; encrypt a data key instead", MaxPlaintext)
	}
	if err := checkAAD(req.AAD); err != nil {
		return out, err
	}
	err := s.release(ctx, c, audit.Entry{Op: "key.encrypt"}, func(tx store.Tx, kr *keyring, e *audit.Entry) error {
		k, err := s.loadKey(tx, c, ref)
		if err != nil {
			return err
		}
		e.Key, e.Owner, e.KeyVersion = k.ID, k.Owner, k.Primary
		if err := usable(k); err != nil {
			return err
		}
		if err := s.authorizeUse(tx, c, "key "+k.ID, k.Owner, k.Policies); err != nil {
			return err
		}
		ct, err := s.encryptWith(kr, k, req.Plaintext, req.AAD)
		out = api.CipherResponse{KeyID: k.ID, KeyVersion: k.Primary, Ciphertext: ct}
		return err
	})
	return out, err
}

// GenerateDataKey returns a fresh data key wrapped under a key, and the
// plaintext too unless withoutPlaintext.
func (s *Service) GenerateDataKey(ctx context.Context, c Caller, ref string, req api.DataKeyRequest, withoutPlaintext bool) (api.CipherResponse, error) {
	var out api.CipherResponse
	if err := require(c, KindApp, KindWorkload); err != nil {
		return out, err
	}
	if req.Length == 0 {
		req.Length = 32
	}
	if req.Length < 16 || req.Length > 64 {
		return out, fail(ErrInvalidField, "field \"length\" must be 16-64 bytes")
	}
	if err := checkAAD(req.AAD); err != nil {
		return out, err
	}
	op := "key.generate-data-key"
	if withoutPlaintext {
		op += "-without-plaintext"
	}
	err := s.release(ctx, c, audit.Entry{Op: op}, func(tx store.Tx, kr *keyring, e *audit.Entry) error {
		k, err := s.loadKey(tx, c, ref)
		if err != nil {
			return err
		}
		e.Key, e.Owner, e.KeyVersion = k.ID, k.Owner, k.Primary
		if err := usable(k); err != nil {
			return err
		}
		if err := s.authorizeUse(tx, c, "key "+k.ID, k.Owner, k.Policies); err != nil {
			return err
		}
		dk := make([]byte, req.Length)
		if _, err := rand.Read(dk); err != nil {
			return err
		}
		ct, err := s.encryptWith(kr, k, dk, req.AAD)
		if err != nil {
			return err
		}
		out = api.CipherResponse{KeyID: k.ID, KeyVersion: k.Primary, Ciphertext: ct}
		if !withoutPlaintext {
			out.Plaintext = dk
		} else {
			clear(dk)
		}
		return nil
	})
	return out, err
}

// Decrypt opens a blob made by Encrypt or GenerateDataKey; the blob names
// its key and version.
func (s *Service) Decrypt(ctx context.Context, c Caller, req api.DecryptRequest) (api.DecryptResponse, error) {
	var out api.DecryptResponse
	if err := require(c, KindApp, KindWorkload); err != nil {
		return out, err
	}
	if err := checkAAD(req.AAD); err != nil {
		return out, err
	}
	b, err := parseBlob(req.Ciphertext)
	if err != nil {
		return out, fail(ErrInvalidField, "field \"ciphertext\": %v", err)
	}
	err = s.release(ctx, c, audit.Entry{Op: "decrypt", Key: b.KeyID, KeyVersion: int(b.Version)}, func(tx store.Tx, kr *keyring, e *audit.Entry) error {
		if !isID(b.KeyID, "k") {
			return fail(ErrKeyNotFound, "the ciphertext names key %q, which does not exist", b.KeyID)
		}
		k, err := s.loadKey(tx, c, b.KeyID)
		if err != nil {
			return err
		}
		e.Owner = k.Owner
		if err := usable(k); err != nil {
			return err
		}
		if err := s.authorizeUse(tx, c, "key "+k.ID, k.Owner, k.Policies); err != nil {
			return err
		}
		a, err := s.keyAEAD(kr, k, int(b.Version))
		if err != nil {
			return err
		}
		pt, err := a.Open(nil, b.Nonce, b.Sealed, blobAAD(k.ID, k.Owner, b.Version, req.AAD))
		if err != nil {
			return fail(ErrDecryptFailed, "the ciphertext does not authenticate under key %s version %d with this aad", k.ID, b.Version)
		}
		out = api.DecryptResponse{KeyID: k.ID, KeyVersion: int(b.Version), Plaintext: pt}
		return nil
	})
	return out, err
}
