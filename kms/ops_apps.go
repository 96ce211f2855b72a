package kms

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
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
	apiKey, err := newAPIKey()
	if err != nil {
		return api.EnrollResponse{}, err
	}
	id := newID("a")
	err = s.mutate(ctx, c, audit.Entry{Op: "app.enroll", App: id}, func(tx store.Tx, k *keyring, e *audit.Entry) error {
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
			out.Apps = append(out.Apps, api.App{AppID: a.ID, Name: a.Name, Created: a.Created, Disabled: a.Disabled, SelfKeyed: a.SelfKeyed})
			return nil
		})
	})
	return out, err
}

func newAPIKey() (string, error) {
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	k := "vak_" + fmt.Sprintf("%x", raw)
	clear(raw)
	return k, nil
}

// loadApp reads an app by id or name.
func loadApp(tx store.Tx, ref string) (*appRecord, error) {
	id := ref
	if !isID(ref, "a") {
		b, err := tx.Get("names", "app/"+ref)
		if errors.Is(err, store.ErrNotFound) {
			return nil, fail(ErrAppNotFound, "app %q is not enrolled", ref)
		} else if err != nil {
			return nil, err
		}
		id = string(b)
	}
	var a appRecord
	err := getJSON(tx, "apps", id, &a)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fail(ErrAppNotFound, "app %q is not enrolled", ref)
	}
	return &a, err
}

// RotateAppKey gives an app a new API key and refuses the old one from
// then on. An app may rotate only its own key; the admin (who saw the key
// issued at enrollment) may rotate the key of an app that has not rotated
// its own yet. Once an app has rotated its own key nobody else learns its
// credentials: the admin can then only disable it.
func (s *Service) RotateAppKey(ctx context.Context, c Caller, ref string) (api.EnrollResponse, error) {
	if err := require(c, KindAdmin, KindApp); err != nil {
		return api.EnrollResponse{}, err
	}
	if c.Kind == KindApp && ref != c.AppID {
		return api.EnrollResponse{}, fail(ErrForbidden, "an app rotates only its own API key (%s)", c.AppID)
	}
	apiKey, err := newAPIKey()
	if err != nil {
		return api.EnrollResponse{}, err
	}
	var id string
	var kr *keyring
	err = s.mutate(ctx, c, audit.Entry{Op: "app.rotate-key"}, func(tx store.Tx, k *keyring, e *audit.Entry) error {
		a, err := loadApp(tx, ref)
		if err != nil {
			return err
		}
		e.App, id, kr = a.ID, a.ID, k
		if a.Disabled {
			return fail(ErrAppDisabled, "app %s is disabled", a.ID)
		}
		if c.Kind == KindAdmin && a.SelfKeyed {
			return fail(ErrForbidden, "app %s rotated its own API key, which only it knows; the admin may disable the app but not re-key it", a.ID)
		}
		a.SelfKeyed = c.Kind == KindApp
		sk := api.SigningKey(apiKey)
		a.SigningKey, err = k.seal("app/"+a.ID, sk)
		clear(sk)
		if err != nil {
			return err
		}
		return putJSON(tx, "apps", a.ID, a)
	})
	if err != nil {
		return api.EnrollResponse{}, err
	}
	kr.forgetApp(id)
	return api.EnrollResponse{AppID: id, APIKey: apiKey}, nil
}

// DisableApp refuses every request signed by an app from now on (admin).
// Its keys, secrets and policies stay; workloads keep the releases its
// policies grant. Re-enable is not offered: enroll a new app instead.
func (s *Service) DisableApp(ctx context.Context, c Caller, ref string) (api.App, error) {
	var out api.App
	if err := require(c, KindAdmin); err != nil {
		return out, err
	}
	var kr *keyring
	err := s.mutate(ctx, c, audit.Entry{Op: "app.disable"}, func(tx store.Tx, k *keyring, e *audit.Entry) error {
		a, err := loadApp(tx, ref)
		if err != nil {
			return err
		}
		e.App, kr = a.ID, k
		a.Disabled = true
		out = api.App{AppID: a.ID, Name: a.Name, Created: a.Created, Disabled: true}
		return putJSON(tx, "apps", a.ID, a)
	})
	if err != nil {
		return out, err
	}
	kr.forgetApp(out.AppID)
	return out, nil
}
