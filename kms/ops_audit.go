package kms

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/veil-tee/veil/kms/api"
	"github.com/veil-tee/veil/kms/store"
)

// ---- audit (admin) ----

// AuditEntries returns up to limit stored entries after seq after,
// optionally only those naming key (a key id).
func (s *Service) AuditEntries(ctx context.Context, c Caller, key string, after uint64, limit int) (api.AuditPage, error) {
	out := api.AuditPage{Entries: []json.RawMessage{}}
	if err := require(c, KindAdmin); err != nil {
		return out, err
	}
	if limit <= 0 || limit > 1000 {
		limit = 1000
	}
	if _, err := s.keyring(); err != nil {
		return out, err
	}
	errStop := errors.New("page full")
	err := s.st.View(ctx, func(tx store.Tx) error {
		return tx.List("audit", "", func(k string, v []byte) error {
			seq, err := strconv.ParseUint(k, 10, 64)
			if err != nil {
				return fmt.Errorf("audit key %q: %w", k, err)
			}
			if seq <= after {
				return nil
			}
			if len(out.Entries) == limit {
				out.Next = seq - 1
				return errStop
			}
			if key != "" {
				var e struct {
					Key string `json:"key"`
				}
				if json.Unmarshal(v, &e) != nil || e.Key != key {
					return nil
				}
			}
			out.Entries = append(out.Entries, append(json.RawMessage(nil), v...))
			return nil
		})
	})
	if errors.Is(err, errStop) {
		err = nil
	}
	return out, err
}
