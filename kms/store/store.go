// Package store is the persistence seam of the key service: a small
// transactional key/value interface over named buckets, and its embedded
// implementation on a bbolt file.
//
// The store protects against lost acknowledged writes (every committed
// transaction is fsynced before Update returns) and against two servers
// writing the same data directory (an exclusive file lock). It does not
// protect confidentiality: callers encrypt key material under the root key
// before it reaches the store. Integrity is the caller's choice per record:
// WithIntegrity (envelope.go) MACs values under a key the caller derives
// from its root key, bound to bucket and key, so edits, forgeries and moved
// records are refused by name, and a state digest over all protected
// records (kept authenticated by the caller) reveals deletions and
// rollbacks to older authentic values.
//
// The networked backend (postgres.go, for replicas) implements the same
// interface with one table (bucket, key, value, mac), writers ordered by a
// row lock and reads on snapshots; the service logic never sees which
// backend it runs on, apart from the optional NonceStore and Pinger, and
// WriteClocker (bbolt only: the count of writes per bucket that lets the
// service keep checked records while nothing else can have changed them).
package store

import (
	"context"
	"errors"
	"sync/atomic"
)

// ErrNotFound is returned by Tx.Get for a missing key.
var ErrNotFound = errors.New("not found")

// ErrUnavailable is returned when a networked store cannot be reached.
var ErrUnavailable = errors.New("the store's database is unreachable")

// Pinger is implemented by networked stores: Ping reports (as
// ErrUnavailable) whether the database answers.
type Pinger interface {
	Ping(ctx context.Context) error
}

// ErrLocked is returned by Open when another process holds the data directory.
var ErrLocked = errors.New("data directory is in use by another process")

// Buckets returns the buckets used by the key service (a new slice on every
// call). A backend creates them on open.
func Buckets() []string {
	return []string{"meta", "apps", "keys", "names", "secrets", "policies", "audit", "requests"}
}

// Store is a transactional key/value store over named buckets.
type Store interface {
	// View runs fn in a read-only transaction.
	View(ctx context.Context, fn func(Tx) error) error
	// Update runs fn in a read-write transaction and commits it durably
	// when fn returns nil.
	Update(ctx context.Context, fn func(Tx) error) error
	Close() error
}

// Tx is one transaction. Byte slices returned by Get and passed to List's
// callback are valid only until the transaction ends; copy them to keep them.
type Tx interface {
	Get(bucket, key string) ([]byte, error)
	Put(bucket, key string, value []byte) error
	Delete(bucket, key string) error
	// List calls fn for every key starting with prefix, in byte order,
	// stopping at the first error.
	List(bucket, prefix string, fn func(key string, value []byte) error) error
	// Last returns the greatest key of bucket and its value, or ErrNotFound.
	Last(bucket string) (string, []byte, error)
}

// WriteClock counts the writes to one bucket of a store that no other
// process can write while it is open (WriteClocker). A cache of that
// bucket's records is current for as long as the clock reads the same
// count with no write in progress.
type WriteClock struct{ begun, ended atomic.Uint64 }

// Now returns how many write transactions to the bucket have ended and
// whether none is in progress. A record read between two calls that both
// returned (n, true) is the record as of n; a value cached with n is
// current while Now returns (n, true).
func (c *WriteClock) Now() (n uint64, quiet bool) {
	e := c.ended.Load()
	// begun >= ended always; begun == e here means that, at this load, no
	// write had begun that had not ended, and exactly e had ended.
	return e, c.begun.Load() == e
}

// WriteClocker is implemented by stores written only through this process
// (bbolt, whose file lock keeps other processes out): every write
// transaction that puts or deletes a record of a bucket moves its clock,
// the start before the write can be seen and the end after it commits or
// rolls back. Shared stores (PostgreSQL, written by other replicas) do not
// implement it.
type WriteClocker interface {
	WriteClock(bucket string) *WriteClock
}

// Read is one read of ReadMany: the record (Bucket, Key), or with Last the
// greatest key of Bucket. ReadMany fills Key (for Last), Value (valid only
// until the transaction ends, like Get's) and Err (ErrNotFound when there
// is no such record).
type Read struct {
	Bucket, Key string
	Last        bool
	Value       []byte
	Err         error
}

// ManyReader is implemented by transactions that send several reads in
// one round trip (PostgreSQL).
type ManyReader interface {
	ReadMany(reads []Read) error
}

// ReadMany performs reads in tx, in one round trip where tx can; it
// returns an error only when the reads could not be made at all (each
// read's own outcome is in its Err). Records are returned as stored: an
// IntegrityTx is read through its Raw transaction, so only unprotected
// records should be read this way.
func ReadMany(tx Tx, reads []Read) error {
	if itx, ok := tx.(*IntegrityTx); ok {
		tx = itx.Raw()
	}
	if mr, ok := tx.(ManyReader); ok {
		return mr.ReadMany(reads)
	}
	for i := range reads {
		r := &reads[i]
		if r.Last {
			r.Key, r.Value, r.Err = tx.Last(r.Bucket)
		} else {
			r.Value, r.Err = tx.Get(r.Bucket, r.Key)
		}
	}
	return nil
}
