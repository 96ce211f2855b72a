package kms

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"

	"github.com/veil-tee/veil/kms/api"
	"github.com/veil-tee/veil/kms/audit"
	"github.com/veil-tee/veil/kms/store"
)

// ---- apps (admin) ----

// Enroll registers an app and returns its API key, which is not stored.
func (s *Service) Enroll(ctx context.Context, c Caller, req api.EnrollRequest) (api.EnrollResponse, error) {
	if err := require(c, KindAdmin); err != nil {
		return api.EnrollResponse{}, err
	}
	if err := validName("name", req.Name); err != nil {
		return api.EnrollResponse{}, err
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return api.EnrollResponse{}, err
	}
	apiKey := "vak_" + fmt.Sprintf("%x", raw)
	clear(raw)
	id := newID("a")
	err := s.mutate(ctx, c, audit.Entry{Op: "app.enroll", App: id}, func(tx store.Tx, k *keyring, e *audit.Entry) error {
		if _, err := tx.Get("names", "app/"+req.Name); err == nil {
			return fail(ErrAlreadyExists, "an app named %q is already enrolled", req.Name)
		}
		sk := api.SigningKey(apiKey)
		sealed, err := k.seal("app/"+id, sk)
		clear(sk)
		if err != nil {
			return err
		}
		if err := putJSON(tx, "apps", id, appRecord{ID: id, Name: req.Name, Created: s.now().UTC(), SigningKey: sealed}); err != nil {
			return err
		}
		return tx.Put("names", "app/"+req.Name, []byte(id))
	})
	if err != nil {
		return api.EnrollResponse{}, err
	}
	return api.EnrollResponse{AppID: id, APIKey: apiKey}, nil
}

// ListApps lists enrolled apps.
func (s *Service) ListApps(ctx context.Context, c Caller) (api.AppList, error) {
	out := api.AppList{Apps: []api.App{}}
	if err := require(c, KindAdmin); err != nil {
		return out, err
	}
	err := s.read(ctx, c, audit.Entry{Op: "app.list"}, func(tx store.Tx, _ *keyring, _ *audit.Entry) error {
		return tx.List("apps", "", func(_ string, v []byte) error {
			var a appRecord
			if err := json.Unmarshal(v, &a); err != nil {
				return err
			}
			out.Apps = append(out.Apps, api.App{AppID: a.ID, Name: a.Name, Created: a.Created})
			return nil
		})
	})
	return out, err
}
