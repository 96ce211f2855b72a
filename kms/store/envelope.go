package store

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
)

// Record integrity.
//
// A security-relevant record is stored with a MAC over (bucket, key,
// value) under a key the caller derives from its root key, so whoever can
// write the backing file or table but does not hold the root key cannot
// forge, edit, or move a record to another key or bucket: the record is
// refused by name when it is read. The MAC alone does not detect that a
// record was deleted, or replaced by an older authentic version of itself;
// the state digest below does, when the caller keeps it authenticated.
//
// The envelope is the four fields (bucket, key, value, mac); the MAC is
//
//	HMAC-SHA256(macKey, "veil-kms-record-mac-v1" || 0x00 ||
//	            u32be(len(bucket)) || bucket ||
//	            u32be(len(key))    || key    ||
//	            u64be(len(value))  || value)
//
// bbolt stores it in the value as 0x01 || mac (32 bytes) || value; a
// table-backed store (PostgreSQL) keeps the columns (bucket, key, value,
// mac) and checks the same MAC.

// RecordMACSize is the size of a record MAC in bytes.
const RecordMACSize = sha256.Size

const envelopeV1 = 0x01

// ErrIntegrity matches every *IntegrityError.
var ErrIntegrity = errors.New("record fails its integrity check")

// IntegrityError names a stored record whose MAC does not verify.
type IntegrityError struct {
	Bucket, Key string
	Reason      string
}

func (e *IntegrityError) Error() string {
	return fmt.Sprintf("stored record %s/%s fails its integrity check: %s", e.Bucket, e.Key, e.Reason)
}

// Unwrap makes errors.Is(err, ErrIntegrity) true.
func (e *IntegrityError) Unwrap() error { return ErrIntegrity }

// RecordMAC returns the MAC of a record.
func RecordMAC(macKey []byte, bucket, key string, value []byte) []byte {
	m := hmac.New(sha256.New, macKey)
	m.Write([]byte("veil-kms-record-mac-v1\x00"))
	var n [8]byte
	binary.BigEndian.PutUint32(n[:4], uint32(len(bucket)))
	m.Write(n[:4])
	m.Write([]byte(bucket))
	binary.BigEndian.PutUint32(n[:4], uint32(len(key)))
	m.Write(n[:4])
	m.Write([]byte(key))
	binary.BigEndian.PutUint64(n[:], uint64(len(value)))
	m.Write(n[:])
	m.Write(value)
	return m.Sum(nil)
}

// SealValue returns the stored form of value (envelope version, MAC, value).
func SealValue(macKey []byte, bucket, key string, value []byte) []byte {
	out := make([]byte, 0, 1+RecordMACSize+len(value))
	out = append(out, envelopeV1)
	out = append(out, RecordMAC(macKey, bucket, key, value)...)
	return append(out, value...)
}

// OpenValue checks the stored form of a record and returns its value (a
// sub-slice of stored).
func OpenValue(macKey []byte, bucket, key string, stored []byte) ([]byte, error) {
	mac, value, err := splitValue(bucket, key, stored)
	if err != nil {
		return nil, err
	}
	if !hmac.Equal(mac, RecordMAC(macKey, bucket, key, value)) {
		return nil, &IntegrityError{Bucket: bucket, Key: key, Reason: "its MAC does not verify under the root key"}
	}
	return value, nil
}

// PeekValue returns the value of a stored record without checking its MAC,
// for reads that must happen before the root key is known.
func PeekValue(bucket, key string, stored []byte) ([]byte, error) {
	_, value, err := splitValue(bucket, key, stored)
	return value, err
}

func splitValue(bucket, key string, stored []byte) (mac, value []byte, err error) {
	if len(stored) < 1+RecordMACSize || stored[0] != envelopeV1 {
		return nil, nil, &IntegrityError{Bucket: bucket, Key: key, Reason: "it carries no MAC envelope"}
	}
	return stored[1 : 1+RecordMACSize], stored[1+RecordMACSize:], nil
}

// State digest.
//
// The MAC of one record does not reveal that the record was deleted, or
// replaced by an older authentic version of itself. The state digest
// does: it is the sum modulo 2^256 of StateElement over every protected
// record (bucket, key, stored value), elements being HMAC-SHA256 under a
// second key that never leaves the service, so nobody without it can
// compute an element or find records whose elements cancel. The caller
// keeps the digest authenticated (the key service binds it into the MACed
// audit head) and recomputes it over the store to compare.

// StateDigest is a state digest or a change of one (a 256-bit big-endian
// integer modulo 2^256).
type StateDigest [32]byte

// Add returns d + e modulo 2^256.
func (d StateDigest) Add(e StateDigest) StateDigest {
	var out StateDigest
	var carry uint16
	for i := 31; i >= 0; i-- {
		v := uint16(d[i]) + uint16(e[i]) + carry
		out[i], carry = byte(v), v>>8
	}
	return out
}

// Neg returns -d modulo 2^256.
func (d StateDigest) Neg() StateDigest {
	var inv StateDigest
	for i := range d {
		inv[i] = ^d[i]
	}
	var one StateDigest
	one[31] = 1
	return inv.Add(one)
}

// StateElement returns the digest element of one stored record.
func StateElement(stateKey []byte, bucket, key string, stored []byte) StateDigest {
	m := hmac.New(sha256.New, stateKey)
	m.Write([]byte("veil-kms-state-element-v1\x00"))
	var n [8]byte
	binary.BigEndian.PutUint32(n[:4], uint32(len(bucket)))
	m.Write(n[:4])
	m.Write([]byte(bucket))
	binary.BigEndian.PutUint32(n[:4], uint32(len(key)))
	m.Write(n[:4])
	m.Write([]byte(key))
	binary.BigEndian.PutUint64(n[:], uint64(len(stored)))
	m.Write(n[:])
	m.Write(stored)
	var d StateDigest
	copy(d[:], m.Sum(nil))
	return d
}

// ComputeState returns the state digest of the protected records in
// buckets of tx, as stored (whether or not their MACs verify).
func ComputeState(tx Tx, stateKey []byte, buckets []string, protected func(bucket, key string) bool) (StateDigest, error) {
	var d StateDigest
	for _, b := range buckets {
		err := tx.List(b, "", func(k string, v []byte) error {
			if protected(b, k) {
				d = d.Add(StateElement(stateKey, b, k, v))
			}
			return nil
		})
		if err != nil {
			return d, err
		}
	}
	return d, nil
}

// IntegrityTx is a Tx that seals and checks protected records (see
// WithIntegrity) and accumulates the change of the state digest made by
// its writes.
type IntegrityTx struct {
	tx        Tx
	key       []byte
	stateKey  []byte
	protected func(bucket, key string) bool
	onFail    func(*IntegrityError)
	delta     StateDigest
}

// WithIntegrity returns a Tx over tx that seals the values of protected
// records on Put and checks them on Get, List and Last; protected reports
// which (bucket, key) pairs are protected. onFail, when non-nil, is called
// for every record that fails (for metrics). Other records pass through.
// Writes of protected records add to the state digest change (TakeDelta),
// with elements under stateKey.
func WithIntegrity(tx Tx, macKey, stateKey []byte, protected func(bucket, key string) bool, onFail func(*IntegrityError)) *IntegrityTx {
	return &IntegrityTx{tx: tx, key: macKey, stateKey: stateKey, protected: protected, onFail: onFail}
}

// TakeDelta returns the change of the state digest made by the writes so
// far and resets it.
func (t *IntegrityTx) TakeDelta() StateDigest {
	d := t.delta
	t.delta = StateDigest{}
	return d
}

// forget subtracts the element of the record currently stored at
// (bucket, key), if any.
func (t *IntegrityTx) forget(bucket, key string) error {
	old, err := t.tx.Get(bucket, key)
	if errors.Is(err, ErrNotFound) {
		return nil
	} else if err != nil {
		return err
	}
	t.delta = t.delta.Add(StateElement(t.stateKey, bucket, key, old).Neg())
	return nil
}

func (t *IntegrityTx) open(bucket, key string, v []byte) ([]byte, error) {
	if !t.protected(bucket, key) {
		return v, nil
	}
	out, err := OpenValue(t.key, bucket, key, v)
	if err != nil {
		var ie *IntegrityError
		if t.onFail != nil && errors.As(err, &ie) {
			t.onFail(ie)
		}
		return nil, err
	}
	return out, nil
}

// Raw returns the transaction under t, which neither seals nor checks.
func (t *IntegrityTx) Raw() Tx { return t.tx }

// Check checks stored, the stored form of (bucket, key) as Raw().Get
// returned it, exactly as Get would, and returns its value.
func (t *IntegrityTx) Check(bucket, key string, stored []byte) ([]byte, error) {
	return t.open(bucket, key, stored)
}

// Get reads and checks a record.
func (t *IntegrityTx) Get(bucket, key string) ([]byte, error) {
	v, err := t.tx.Get(bucket, key)
	if err != nil {
		return nil, err
	}
	return t.open(bucket, key, v)
}

// Put seals and writes a record.
func (t *IntegrityTx) Put(bucket, key string, value []byte) error {
	if t.protected(bucket, key) {
		if err := t.forget(bucket, key); err != nil {
			return err
		}
		value = SealValue(t.key, bucket, key, value)
		t.delta = t.delta.Add(StateElement(t.stateKey, bucket, key, value))
	}
	return t.tx.Put(bucket, key, value)
}

// Delete removes a record.
func (t *IntegrityTx) Delete(bucket, key string) error {
	if t.protected(bucket, key) {
		if err := t.forget(bucket, key); err != nil {
			return err
		}
	}
	return t.tx.Delete(bucket, key)
}

// List lists and checks records.
func (t *IntegrityTx) List(bucket, prefix string, fn func(key string, value []byte) error) error {
	return t.tx.List(bucket, prefix, func(k string, v []byte) error {
		v, err := t.open(bucket, k, v)
		if err != nil {
			return err
		}
		return fn(k, v)
	})
}

// Last returns and checks the last record of a bucket.
func (t *IntegrityTx) Last(bucket string) (string, []byte, error) {
	k, v, err := t.tx.Last(bucket)
	if err != nil {
		return k, v, err
	}
	v, err = t.open(bucket, k, v)
	return k, v, err
}
