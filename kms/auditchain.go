package kms

import (
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/veil-tee/veil/kms/api"
	"github.com/veil-tee/veil/kms/audit"
	"github.com/veil-tee/veil/kms/store"
)

// The audit chain's anchors in the meta bucket:
//
//   - meta/audit_genesis, written once by Initialize, MACed: its absence
//     means the log was emptied (a new service always has one);
//   - meta/audit_head, the last (seq, hash), MACed, rewritten with every
//     append; seq 0 with the zero hash right after Initialize.
//
// Both MACs use the audit key derived from the root key, with distinct
// labels, so only the running service can write them.

type auditGenesis struct {
	Version int       `json:"version"`
	Created time.Time `json:"created"`
	MAC     string    `json:"mac"`
}

type auditHead struct {
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
	// State is the hex state digest of the protected records
	// (store.StateDigest) as of this entry.
	State string `json:"state"`
	MAC   string `json:"mac"`
}

func (k *keyring) headMAC(seq uint64, hash, state string) string {
	m := hmac.New(sha256.New, k.auditK)
	m.Write([]byte("veil-audit-head-v2\n"))
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], seq)
	m.Write(b[:])
	m.Write([]byte(hash))
	m.Write([]byte(state))
	return hex.EncodeToString(m.Sum(nil))
}

func (h auditHead) state() store.StateDigest {
	var d store.StateDigest
	hex.Decode(d[:], []byte(h.State)) // checked by checkChain (MAC) before use
	return d
}

func newHead(k *keyring, seq uint64, hash string, state store.StateDigest) auditHead {
	return sealHead(k, auditHead{Seq: seq, Hash: hash, State: hex.EncodeToString(state[:])})
}

func (k *keyring) genesisMAC(version int, created time.Time) string {
	m := hmac.New(sha256.New, k.auditK)
	m.Write([]byte("veil-audit-genesis-v2\n"))
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], uint64(version))
	binary.BigEndian.PutUint64(b[8:], uint64(created.UnixNano()))
	m.Write(b[:])
	return hex.EncodeToString(m.Sum(nil))
}

// writeGenesis writes the genesis and the empty head of a new log.
func writeGenesis(tx store.Tx, k *keyring, now time.Time, state store.StateDigest) error {
	g := auditGenesis{Version: 2, Created: now.UTC()}
	g.MAC = k.genesisMAC(g.Version, g.Created)
	if err := putJSON(tx, "meta", "audit_genesis", g); err != nil {
		return err
	}
	return putJSON(tx, "meta", "audit_head", newHead(k, 0, audit.ZeroHash, state))
}

func auditKey(seq uint64) string { return fmt.Sprintf("%020d", seq) }

// errChain is a damaged chain: the reason is what /readyz reports.
type errChain struct{ reason string }

func (e *errChain) Error() string { return e.reason }

// checkChain verifies the anchors of the log in tx and returns the
// authentic head, or an *errChain naming what is wrong: a missing or
// forged genesis or head, a head whose entry is missing or differs, or
// entries stored beyond the head.
func checkChain(tx store.Tx, k *keyring) (auditHead, error) {
	var h auditHead
	var g auditGenesis
	// The anchors and the last entry in one round trip where the store
	// can (store.ReadMany): they are not protected records, they carry
	// their own MACs.
	rs := []store.Read{{Bucket: "meta", Key: "audit_genesis"}, {Bucket: "audit", Last: true}, {Bucket: "meta", Key: "audit_head"}}
	if err := store.ReadMany(tx, rs); err != nil {
		return h, err
	}
	err := decodeRead(rs[0], &g)
	if errors.Is(err, store.ErrNotFound) {
		return h, &errChain{"the audit log's genesis record is missing (the log was emptied or replaced)"}
	} else if err != nil {
		return h, unreadable("the audit log's genesis record", err)
	}
	if !hmac.Equal([]byte(g.MAC), []byte(k.genesisMAC(g.Version, g.Created))) {
		return h, &errChain{"the audit log's genesis record does not carry the service's MAC"}
	}
	lastKey, lastVal, lastErr := rs[1].Key, rs[1].Value, rs[1].Err
	if lastErr != nil && !errors.Is(lastErr, store.ErrNotFound) {
		return h, lastErr
	}
	err = decodeRead(rs[2], &h)
	if errors.Is(err, store.ErrNotFound) {
		if lastErr == nil {
			return h, &errChain{fmt.Sprintf("the audit log's head is missing while entries up to %s are stored", trimSeq(lastKey))}
		}
		return h, &errChain{"the audit log's head is missing"}
	} else if err != nil {
		return h, unreadable("the audit log's head", err)
	}
	if !hmac.Equal([]byte(h.MAC), []byte(k.headMAC(h.Seq, h.Hash, h.State))) || len(h.State) != 64 {
		return h, &errChain{"the audit log's head does not carry the service's MAC"}
	}
	if lastErr == nil && lastKey > auditKey(h.Seq) {
		return h, &errChain{fmt.Sprintf("audit entries up to %s are stored beyond the authenticated head %d", trimSeq(lastKey), h.Seq)}
	}
	if h.Seq == 0 {
		if h.Hash != audit.ZeroHash {
			return h, &errChain{"the empty audit log's head is not the genesis hash"}
		}
		return h, nil
	}
	// The entry at the head is the last one, unless entries are missing.
	b := lastVal
	if lastErr != nil || lastKey != auditKey(h.Seq) {
		b, err = tx.Get("audit", auditKey(h.Seq))
		if errors.Is(err, store.ErrNotFound) {
			return h, &errChain{fmt.Sprintf("the audit entry at the head (%d) is missing", h.Seq)}
		} else if err != nil {
			return h, err
		}
	}
	e, err := audit.Parse(b)
	if err != nil || e.Seq != h.Seq || e.Hash != h.Hash || audit.ComputeHash(e) != e.Hash {
		return h, &errChain{fmt.Sprintf("the audit entry at the head (%d) does not match the head", h.Seq)}
	}
	return h, nil
}

// decodeRead decodes the JSON record of a store.Read.
func decodeRead(r store.Read, v any) error {
	if r.Err != nil {
		return r.Err
	}
	if err := json.Unmarshal(r.Value, v); err != nil {
		return fmt.Errorf("decoding %s/%s: %w", r.Bucket, r.Key, err)
	}
	return nil
}

// unreadable classifies a failed read of an anchor record: a record that
// fails its MAC or does not decode is damage; any other error (a database
// connection lost while it restarts, a cancelled request) is the store's,
// passed through so that the service does not latch itself damaged over a
// transient failure.
func unreadable(what string, err error) error {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	if errors.Is(err, store.ErrIntegrity) || errors.As(err, &se) || errors.As(err, &te) {
		return &errChain{fmt.Sprintf("%s is unreadable: %v", what, err)}
	}
	return err
}

func trimSeq(key string) string {
	n, err := strconv.ParseUint(key, 10, 64)
	if err != nil {
		return strconv.Quote(key)
	}
	return strconv.FormatUint(n, 10)
}

// appendAudit links e to the chain inside tx. It refuses to append to a
// damaged chain (see checkChain) and marks the service damaged, so that
// the damage is reported rather than overwritten.
// The head also carries the state digest of the protected records, updated
// by the changes the transaction made (store.IntegrityTx), so that
// deleting a record or putting back an older version of it makes the store
// disagree with the authenticated head (checkState).
func (s *Service) appendAudit(tx store.Tx, k *keyring, e audit.Entry) error {
	h, err := checkChain(tx, k)
	if err != nil {
		return s.chainDamaged(err)
	}
	_, err = linkAudit(tx, k, h, e)
	return err
}

// linkAudit appends e after the checked head h inside tx and writes the
// new head, which it returns.
func linkAudit(tx store.Tx, k *keyring, h auditHead, e audit.Entry) (auditHead, error) {
	nh, err := chainEntry(tx, k, h, e)
	if err != nil {
		return h, err
	}
	return sealHead(k, nh), putHead(tx, k, nh)
}

// chainEntry appends e after the checked head h inside tx and returns the
// new head without writing it and without its MAC: a group of entries in
// one transaction is checked once and its head MACed and written once
// (putHead), after the last.
func chainEntry(tx store.Tx, k *keyring, h auditHead, e audit.Entry) (auditHead, error) {
	state := h.state()
	if itx, ok := tx.(*store.IntegrityTx); ok {
		state = state.Add(itx.TakeDelta())
	}
	audit.Link(&e, h.Seq, h.Hash)
	if err := tx.Put("audit", auditKey(e.Seq), audit.Marshal(e)); err != nil {
		return h, err
	}
	return auditHead{Seq: e.Seq, Hash: e.Hash, State: hex.EncodeToString(state[:])}, nil
}

// sealHead sets h's MAC under k.
func sealHead(k *keyring, h auditHead) auditHead {
	h.MAC = k.headMAC(h.Seq, h.Hash, h.State)
	return h
}

// putHead writes h, MACed under k, as the head of the audit log.
func putHead(tx store.Tx, k *keyring, h auditHead) error {
	return putJSON(tx, "meta", "audit_head", sealHead(k, h))
}

// checkState recomputes the state digest over the stored protected
// records and compares it with the authenticated head's. On a mismatch it
// names the records whose MAC fails (they are counted in the metrics too);
// a deleted record or an older authentic version cannot be named.
func (s *Service) checkState(tx store.Tx, k *keyring, h auditHead) error {
	d, err := store.ComputeState(tx, k.stateK, protectedBuckets, protectedRecord)
	if err != nil {
		return err
	}
	if d == h.state() {
		return nil
	}
	var bad []string
	itx := s.itx(tx, k)
	for _, b := range protectedBuckets {
		tx.List(b, "", func(key string, _ []byte) error {
			if protectedRecord(b, key) {
				if _, err := itx.Get(b, key); errors.Is(err, store.ErrIntegrity) && len(bad) < 10 {
					bad = append(bad, b+"/"+key)
				}
			}
			return nil
		})
	}
	reason := "the stored records do not match the authenticated head of the audit log: a record was deleted, added, edited or replaced by an older version"
	if len(bad) > 0 {
		reason += "; records failing their integrity check: " + strings.Join(bad, ", ")
	}
	return &errChain{reason}
}

// chainDamaged records a damaged chain (an *errChain) and returns the
// service error for it; other errors pass through.
func (s *Service) chainDamaged(err error) error {
	var ec *errChain
	if !errors.As(err, &ec) {
		return err
	}
	r := ec.reason
	if s.damaged.CompareAndSwap(nil, &r) {
		s.log.Error("audit log damaged; refusing requests", "reason", r)
	}
	return fail(ErrAuditDamaged, "%s", r)
}

// chainUsable refuses every audited operation once the chain is damaged:
// the service cannot record what it does.
func (s *Service) chainUsable() error {
	if r := s.damaged.Load(); r != nil {
		return fail(ErrAuditDamaged, "%s; the service refuses audited requests until the data directory is restored", *r)
	}
	return nil
}

// checkChainOnUnseal checks the log once the root key is known, so that
// /readyz reports damage before the first request.
func (s *Service) checkChainOnUnseal(ctx context.Context, k *keyring) {
	err := s.st.View(ctx, func(tx store.Tx) error {
		h, err := checkChain(tx, k)
		if err != nil {
			return err
		}
		return s.checkState(tx, k, h)
	})
	if err != nil {
		s.chainDamaged(err)
	}
}

// AuditHead returns the stored head of the chain, whether its MAC
// verifies under the root key, what (if anything) is wrong with the
// chain's anchors, and the public key that signs checkpoints.
func (s *Service) AuditHead(ctx context.Context, c Caller) (api.AuditHead, error) {
	var out api.AuditHead
	if err := require(c, KindAdmin); err != nil {
		return out, err
	}
	k, err := s.keyring()
	if err != nil {
		return out, err
	}
	out.CheckpointKey = hex.EncodeToString(k.checkpoint.Public().(ed25519.PublicKey))
	var h auditHead
	var chainErr error
	err = s.st.View(ctx, func(tx store.Tx) error {
		gerr := getJSON(tx, "meta", "audit_head", &h)
		if gerr != nil && !errors.Is(gerr, store.ErrNotFound) {
			return gerr
		}
		ch, cerr := checkChain(tx, k)
		if cerr == nil {
			cerr = s.checkState(tx, k, ch)
		}
		chainErr = cerr
		return nil
	})
	if err != nil {
		return out, err
	}
	out.Seq, out.Hash = h.Seq, h.Hash
	out.Authentic = h.MAC != "" && hmac.Equal([]byte(k.headMAC(h.Seq, h.Hash, h.State)), []byte(h.MAC))
	var ec *errChain
	if errors.As(chainErr, &ec) {
		out.Damaged = ec.reason
		s.chainDamaged(chainErr)
	} else if chainErr != nil {
		return out, chainErr
	}
	return out, nil
}

// AuditCheckpoint returns a checkpoint of the current authentic head,
// signed by the service's audit signer (derived from the root key). It
// refuses when the chain's anchors are damaged.
func (s *Service) AuditCheckpoint(ctx context.Context, c Caller) (audit.Checkpoint, error) {
	if err := require(c, KindAdmin); err != nil {
		return audit.Checkpoint{}, err
	}
	k, err := s.keyring()
	if err != nil {
		return audit.Checkpoint{}, err
	}
	var h auditHead
	err = s.st.View(ctx, func(tx store.Tx) error { h, err = checkChain(tx, k); return err })
	if err != nil {
		return audit.Checkpoint{}, s.chainDamaged(err)
	}
	return audit.SignCheckpoint(k.checkpoint, audit.Head{Seq: h.Seq, Hash: h.Hash}, s.now())
}
