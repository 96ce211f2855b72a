package kms

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/veil-tee/veil/kms/shamir"
	"github.com/veil-tee/veil/kms/store"
)

// RootKeySize is the size of the root key in bytes.
const RootKeySize = 32

// Root key modes stored in the data directory.
const (
	ModeShamir = "shamir" // root key split into shares, never stored
	ModeDev    = "dev"    // root key in a local file (veil kms serve --dev)
)

const sharePrefix = "vks1-"

// FormatVersion is the version of the data directory's records. Version 1
// (before record MACs, the audit genesis and share commitments) is refused.
const FormatVersion = 2

// rootMeta is the "meta/root" record: how the root key is held and a blob
// that only the right root key opens.
type rootMeta struct {
	Version   int       `json:"version"`
	Mode      string    `json:"mode"`
	Shares    int       `json:"shares,omitempty"`
	Threshold int       `json:"threshold,omitempty"`
	Created   time.Time `json:"created"`
	Check     []byte    `json:"check"`
	// Commitments holds, per share index (1-based, as a decimal string),
	// the hex shamir.Commitment of the share issued for it.
	Commitments map[string]string `json:"commitments,omitempty"`
}

type adminMeta struct {
	TokenHash string `json:"token_hash"` // hex SHA-256 of the admin token
}

// InitResult is what Initialize returns once: the shares (or, in dev mode,
// the root key) and the admin token. None of it is stored.
type InitResult struct {
	Shares     []string
	RootKey    []byte // dev mode only
	AdminToken string
}

// Initialize creates the root key and the admin token of an empty store.
// In ModeShamir the root key is split into shares (threshold of shares
// recover it) and forgotten; in ModeDev it is returned for a local file.
func Initialize(ctx context.Context, st store.Store, mode string, shares, threshold int, now time.Time) (*InitResult, error) {
	root := make([]byte, RootKeySize)
	if _, err := rand.Read(root); err != nil {
		return nil, err
	}
	defer clear(root)
	res := &InitResult{}
	meta := rootMeta{Version: FormatVersion, Mode: mode, Created: now.UTC()}
	switch mode {
	case ModeShamir:
		parts, err := shamir.Split(root, shares, threshold)
		if err != nil {
			return nil, fmt.Errorf("splitting root key: %w", err)
		}
		meta.Commitments = map[string]string{}
		for _, p := range parts {
			res.Shares = append(res.Shares, sharePrefix+hex.EncodeToString(p))
			meta.Commitments[strconv.Itoa(int(p[0]))] = hex.EncodeToString(shamir.Commitment(p))
			clear(p)
		}
		meta.Shares, meta.Threshold = shares, threshold
	case ModeDev:
		res.RootKey = append([]byte(nil), root...)
	default:
		return nil, fmt.Errorf("unknown root key mode %q", mode)
	}
	k, err := newKeyring(root)
	if err != nil {
		return nil, err
	}
	meta.Check, err = k.seal("root-check", []byte("veil kms root key check"))
	if err != nil {
		return nil, err
	}
	tok := make([]byte, 32)
	if _, err := rand.Read(tok); err != nil {
		return nil, err
	}
	res.AdminToken = "vat_" + hex.EncodeToString(tok)
	err = st.Update(ctx, func(tx store.Tx) error {
		if _, err := tx.Get("meta", "root"); err == nil {
			return ErrAlreadyInit
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		mb, _ := json.Marshal(meta)
		if err := tx.Put("meta", "root", mb); err != nil {
			return err
		}
		itx := store.WithIntegrity(tx, k.recordK, k.stateK, protectedRecord, nil)
		if err := putJSON(itx, "meta", "admin", adminMeta{TokenHash: hashToken(res.AdminToken)}); err != nil {
			return err
		}
		return writeGenesis(tx, k, now, itx.TakeDelta())
	})
	if err != nil {
		return nil, fmt.Errorf("storing root key metadata: %w", err)
	}
	return res, nil
}

func hashToken(tok string) string {
	h := sha256.Sum256([]byte("veil-kms-admin-token-v1\n" + tok))
	return hex.EncodeToString(h[:])
}

// ParseShare decodes a share printed by Initialize.
func ParseShare(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if !strings.HasPrefix(s, sharePrefix) {
		return nil, fail(ErrBadShares, "a share starts with %q", sharePrefix)
	}
	b, err := hex.DecodeString(s[len(sharePrefix):])
	if err != nil || len(b) != 1+RootKeySize || b[0] == 0 {
		return nil, fail(ErrBadShares, "share is not %d hex bytes with a non-zero index", 1+RootKeySize)
	}
	return b, nil
}

// keyring holds the keys derived from the root key, and caches of opened
// per-record keys (immutable once written), all dropped when sealing.
type keyring struct {
	records cipher.AEAD // encrypts key material, secrets and app signing keys
	auditK  []byte      // MACs the audit head and genesis
	recordK []byte      // MACs stored records (store.WithIntegrity)
	stateK  []byte      // elements of the state digest of stored records
	// checkpoint signs audit checkpoints; its public key is stable for
	// the life of the root key.
	checkpoint ed25519.PrivateKey

	mu      sync.RWMutex
	appKeys map[string][]byte        // app id -> HMAC signing key
	appGen  map[string]uint64        // app id -> times its key was forgotten
	aeads   map[string]cipher.AEAD   // "key id/version" -> AEAD of that key version
	decoded map[string]decodedRecord // "bucket/key" -> checked and decoded record (getVerified)
	creds   map[string]appCred       // app id -> credential (shared stores, authenticateShared)
	// clocks is the store's write clocks when only this process can write
	// it (bbolt): then getVerified serves a cached record without reading
	// the store while its bucket's clock has not moved.
	clocks store.WriteClocker
}

// cached returns the value cached under k in m, or computes and caches it.
func cached[V any](kr *keyring, m map[string]V, k string, compute func() (V, error)) (V, error) {
	kr.mu.RLock()
	v, ok := m[k]
	kr.mu.RUnlock()
	if ok {
		return v, nil
	}
	v, err := compute()
	if err != nil {
		return v, err
	}
	kr.mu.Lock()
	if len(m) < 100_000 {
		m[k] = v
	}
	kr.mu.Unlock()
	return v, nil
}

// appKey returns app id's signing key from the cache, or loads it and
// caches it unless forgetApp ran meanwhile (a load that began before a
// rotation committed must not put the old key back).
func (k *keyring) appKey(id string, load func() ([]byte, error)) ([]byte, error) {
	k.mu.RLock()
	v, ok := k.appKeys[id]
	gen := k.appGen[id]
	k.mu.RUnlock()
	if ok {
		return v, nil
	}
	v, err := load()
	if err != nil {
		return nil, err
	}
	k.mu.Lock()
	if k.appGen[id] == gen && len(k.appKeys) < 100_000 {
		k.appKeys[id] = v
	}
	k.mu.Unlock()
	return v, nil
}

// forgetApp drops app id's cached signing key (after a rotation or a
// disable has committed).
func (k *keyring) forgetApp(id string) {
	k.mu.Lock()
	if v, ok := k.appKeys[id]; ok {
		clear(v)
		delete(k.appKeys, id)
	}
	k.appGen[id]++
	k.mu.Unlock()
}

func newKeyring(root []byte) (*keyring, error) {
	if len(root) != RootKeySize {
		return nil, fmt.Errorf("root key is %d bytes, want %d", len(root), RootKeySize)
	}
	rk, err := hkdf.Key(sha256.New, root, nil, "veil kms record key v1", 32)
	if err != nil {
		return nil, err
	}
	defer clear(rk)
	ak, err := hkdf.Key(sha256.New, root, nil, "veil kms audit head key v1", 32)
	if err != nil {
		return nil, err
	}
	mk, err := hkdf.Key(sha256.New, root, nil, "veil kms record mac key v1", 32)
	if err != nil {
		return nil, err
	}
	sk, err := hkdf.Key(sha256.New, root, nil, "veil kms state key v1", 32)
	if err != nil {
		return nil, err
	}
	seed, err := hkdf.Key(sha256.New, root, nil, "veil kms audit checkpoint key v1", ed25519.SeedSize)
	if err != nil {
		return nil, err
	}
	cp := ed25519.NewKeyFromSeed(seed)
	clear(seed)
	blk, err := aes.NewCipher(rk)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(blk)
	if err != nil {
		return nil, err
	}
	return &keyring{records: aead, auditK: ak, recordK: mk, stateK: sk, checkpoint: cp, appKeys: map[string][]byte{}, appGen: map[string]uint64{}, aeads: map[string]cipher.AEAD{}, decoded: map[string]decodedRecord{}, creds: map[string]appCred{}}, nil
}

// seal encrypts plaintext under the record key, bound to label.
func (k *keyring) seal(label string, plaintext []byte) ([]byte, error) {
	nonce := make([]byte, k.records.NonceSize(), k.records.NonceSize()+len(plaintext)+k.records.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return k.records.Seal(nonce, nonce, plaintext, []byte("veil-kms-record-v1\x00"+label)), nil
}

var errRecordAuth = errors.New("stored record does not authenticate under the root key")

func (k *keyring) open(label string, blob []byte) ([]byte, error) {
	ns := k.records.NonceSize()
	if len(blob) < ns+k.records.Overhead() {
		return nil, errRecordAuth
	}
	pt, err := k.records.Open(nil, blob[:ns], blob[ns:], []byte("veil-kms-record-v1\x00"+label))
	if err != nil {
		return nil, errRecordAuth
	}
	return pt, nil
}

// checkRoot verifies a candidate root key against the stored check blob.
func checkRoot(meta rootMeta, root []byte) (*keyring, error) {
	k, err := newKeyring(root)
	if err != nil {
		return nil, err
	}
	if _, err := k.open("root-check", meta.Check); err != nil {
		return nil, err
	}
	return k, nil
}

// decodedRecord is a stored record that passed its integrity check, with
// its decoded value.
type decodedRecord struct {
	stored []byte // the stored form, MAC included
	value  any
	// clocked: the record was read with its bucket's write clock quiet at
	// gen before and after the read (keyring.clocks), so it is the stored
	// record for as long as the clock reads (gen, quiet).
	clocked bool
	gen     uint64
}

// maxDecoded bounds the decoded-record cache of a keyring; it is emptied
// when full.
const maxDecoded = 10_000

// getVerified reads the protected record (bucket, key) of tx, a transaction
// of Service.view or Service.update, and decodes it into a *T. A record
// whose stored bytes are identical to those of a record already checked
// and decoded under this root key is not checked and decoded again: the
// same bytes give the same MAC verdict and the same value. Any change of
// the stored record (a write by any replica, an edit by whoever can write
// the store) changes its bytes and takes the full path. clone copies the
// cached value so that callers may modify what they get.
//
// On a store only this process writes (kr.clocks, bbolt), a record read
// on its own (outside a transaction, as the first read of a release) while
// its bucket saw no write is served from the cache without reading the
// store at all until the next write to that bucket (any record of it)
// begins; then it is read, and checked when its bytes changed, again.
func getVerified[T any](tx store.Tx, kr *keyring, bucket, key string, clone func(T) T) (T, error) {
	var zero T
	itx, ok := tx.(*store.IntegrityTx)
	if !ok || kr == nil {
		var v T
		err := getJSON(tx, bucket, key, &v)
		return v, err
	}
	ck := bucket + "/" + key
	var clock *store.WriteClock
	var gen uint64
	var quiet bool
	// Only a read outside any transaction (oneGetTx: its read starts after
	// the clock is read, where a transaction's snapshot may be older) and
	// only the first read of the request use the clock: a request that
	// reads more records reads them all again in one transaction (the
	// second read gets errNeedTx), so what it decides on is one snapshot.
	if one, ok := itx.Raw().(*oneGetTx); ok && !one.used && kr.clocks != nil {
		if clock = kr.clocks.WriteClock(bucket); clock != nil {
			gen, quiet = clock.Now()
		}
		if quiet {
			kr.mu.RLock()
			d, hit := kr.decoded[ck]
			kr.mu.RUnlock()
			if hit && d.clocked && d.gen == gen {
				one.used = true
				return clone(d.value.(T)), nil
			}
		}
	}
	stored, err := itx.Raw().Get(bucket, key)
	if err != nil {
		return zero, err
	}
	// The read is current as of gen if no write to the bucket began
	// since the clock was read.
	if quiet {
		g, q := clock.Now()
		quiet = q && g == gen
	}
	kr.mu.RLock()
	d, hit := kr.decoded[ck]
	kr.mu.RUnlock()
	if hit && bytes.Equal(d.stored, stored) {
		if quiet && (!d.clocked || d.gen != gen) {
			kr.mu.Lock()
			kr.decoded[ck] = decodedRecord{stored: d.stored, value: d.value, clocked: true, gen: gen}
			kr.mu.Unlock()
		}
		return clone(d.value.(T)), nil
	}
	b, err := itx.Check(bucket, key, stored)
	if err != nil {
		return zero, err
	}
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		return zero, fmt.Errorf("decoding %s/%s: %w", bucket, key, err)
	}
	kr.mu.Lock()
	if len(kr.decoded) >= maxDecoded {
		clear(kr.decoded)
	}
	kr.decoded[ck] = decodedRecord{stored: bytes.Clone(stored), value: clone(v), clocked: quiet, gen: gen}
	kr.mu.Unlock()
	return v, nil
}
