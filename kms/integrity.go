package kms

import (
	"context"
	"errors"

	"github.com/veil-tee/veil/kms/store"
)

// ErrDataFormat is returned by New for a data directory written in another
// format version.
var ErrDataFormat = errors.New("unsupported data directory format")

// protectedRecord reports which stored records carry a MAC under the root
// key (store.WithIntegrity): everything that decides who may do what —
// apps and their signing keys, keys, secrets, policies, the name index and
// the admin token hash. The audit bucket is protected by its hash chain,
// and meta/root and meta/audit_* carry their own authentication.
func protectedRecord(bucket, key string) bool {
	switch bucket {
	case "apps", "keys", "names", "secrets", "policies", "requests":
		return true
	case "meta":
		return key == "admin"
	}
	return false
}

// itx returns tx with record integrity under k.
func (s *Service) itx(tx store.Tx, k *keyring) store.Tx {
	return store.WithIntegrity(tx, k.recordK, k.stateK, protectedRecord, s.metrics.integrityFailure)
}

// protectedBuckets are the buckets holding protected records.
var protectedBuckets = []string{"apps", "keys", "names", "secrets", "policies", "requests", "meta"}

// view and update run fn in a transaction whose protected records are
// MACed under k.
func (s *Service) view(ctx context.Context, k *keyring, fn func(store.Tx) error) error {
	return serviceError(s.st.View(ctx, func(tx store.Tx) error { return fn(s.itx(tx, k)) }))
}

func (s *Service) update(ctx context.Context, k *keyring, fn func(store.Tx) error) error {
	return serviceError(s.st.Update(ctx, func(tx store.Tx) error { return fn(s.itx(tx, k)) }))
}

// serviceError turns a record that failed its integrity check into a
// service error naming the record; other errors pass through.
func serviceError(err error) error {
	var ie *store.IntegrityError
	var se *Error
	if errors.As(err, &ie) && !errors.As(err, &se) {
		return fail(ErrRecordIntegrity, "%s", ie.Error())
	}
	if errors.Is(err, store.ErrUnavailable) && !errors.As(err, &se) {
		return fail(ErrStoreUnavailable, "%v", err)
	}
	return err
}
