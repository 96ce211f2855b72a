package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// BoltFile is the name of the database file inside the data directory.
const BoltFile = "kms.db"

// BoltOptions tunes OpenBolt.
type BoltOptions struct {
	// LockTimeout bounds the wait for the file lock (default 500 ms).
	LockTimeout time.Duration
}

// Bolt is the embedded Store on a bbolt file.
type Bolt struct {
	db     *bolt.DB
	clocks map[string]*WriteClock // one per bucket of Buckets(), fixed at open
}

// OpenBolt opens (creating if needed) DIR/kms.db with mode 0600. A second
// process opening the same directory fails with ErrLocked.
func OpenBolt(dir string, opt BoltOptions) (*Bolt, error) {
	if opt.LockTimeout == 0 {
		opt.LockTimeout = 500 * time.Millisecond
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating data directory: %w", err)
	}
	path := filepath.Join(dir, BoltFile)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: opt.LockTimeout, NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("opening %s: %w", path, ErrLocked)
		}
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range Buckets() {
			if _, err := tx.CreateBucketIfNotExists([]byte(b)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("creating buckets in %s: %w", path, err)
	}
	b := &Bolt{db: db, clocks: map[string]*WriteClock{}}
	for _, name := range Buckets() {
		b.clocks[name] = new(WriteClock)
	}
	return b, nil
}

// WriteClock implements WriteClocker: bbolt's file lock keeps every other
// process out while b is open, so every write to the file goes through
// b.Update.
func (b *Bolt) WriteClock(bucket string) *WriteClock { return b.clocks[bucket] }

// GetOne implements OneReader: one record in a read-only transaction of
// its own (a copy, valid after it ends).
func (b *Bolt) GetOne(ctx context.Context, bucket, key string) ([]byte, error) {
	var v []byte
	err := b.View(ctx, func(tx Tx) error {
		got, err := tx.Get(bucket, key)
		v = bytes.Clone(got)
		return err
	})
	return v, err
}

// View implements Store.
func (b *Bolt) View(ctx context.Context, fn func(Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return b.db.View(func(tx *bolt.Tx) error { return fn(boltTx{tx: tx}) })
}

// Update implements Store.
func (b *Bolt) Update(ctx context.Context, fn func(Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	var touched []*WriteClock
	defer func() {
		// After the commit (or the rollback): the writes are visible to
		// every transaction that starts from now on.
		for _, c := range touched {
			c.ended.Add(1)
		}
	}()
	return b.db.Update(func(tx *bolt.Tx) error { return fn(boltTx{tx: tx, b: b, touched: &touched}) })
}

// Close implements Store.
func (b *Bolt) Close() error { return b.db.Close() }

type boltTx struct {
	tx *bolt.Tx
	// In Update: the store, and the clocks of the buckets written so far.
	b       *Bolt
	touched *[]*WriteClock
}

// writing starts the clock of bucket for this transaction's first write
// to it, before the write can become visible.
func (t boltTx) writing(bucket string) {
	if t.touched == nil {
		return
	}
	c := t.b.clocks[bucket]
	if c == nil {
		return
	}
	for _, d := range *t.touched {
		if d == c {
			return
		}
	}
	c.begun.Add(1)
	*t.touched = append(*t.touched, c)
}

func (t boltTx) bucket(name string) (*bolt.Bucket, error) {
	bk := t.tx.Bucket([]byte(name))
	if bk == nil {
		return nil, fmt.Errorf("bucket %q: %w", name, ErrNotFound)
	}
	return bk, nil
}

func (t boltTx) Get(bucket, key string) ([]byte, error) {
	bk, err := t.bucket(bucket)
	if err != nil {
		return nil, err
	}
	v := bk.Get([]byte(key))
	if v == nil {
		return nil, ErrNotFound
	}
	return v, nil
}

func (t boltTx) Put(bucket, key string, value []byte) error {
	bk, err := t.bucket(bucket)
	if err != nil {
		return err
	}
	t.writing(bucket)
	return bk.Put([]byte(key), value)
}

func (t boltTx) Delete(bucket, key string) error {
	bk, err := t.bucket(bucket)
	if err != nil {
		return err
	}
	t.writing(bucket)
	return bk.Delete([]byte(key))
}

func (t boltTx) List(bucket, prefix string, fn func(string, []byte) error) error {
	bk, err := t.bucket(bucket)
	if err != nil {
		return err
	}
	c := bk.Cursor()
	p := []byte(prefix)
	for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
		if err := fn(string(k), v); err != nil {
			return err
		}
	}
	return nil
}

func (t boltTx) Last(bucket string) (string, []byte, error) {
	bk, err := t.bucket(bucket)
	if err != nil {
		return "", nil, err
	}
	k, v := bk.Cursor().Last()
	if k == nil {
		return "", nil, ErrNotFound
	}
	return string(k), v, nil
}
