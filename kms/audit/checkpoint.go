package audit

import (
	"crypto/ed25519"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Checkpoint is a signed statement by the key service that its audit log
// had the head (Seq, Hash) at Time. The operator stores it away from the
// service's data directory; verifying the log against it later detects a
// rollback of the whole store to a copy older than the checkpoint, which
// the MACed head alone cannot (an old head is still authentic).
type Checkpoint struct {
	Version   int       `json:"version"`
	Seq       uint64    `json:"seq"`
	Hash      string    `json:"hash"`
	Time      time.Time `json:"time"`
	PublicKey string    `json:"public_key"` // hex Ed25519 key of the service's audit signer
	Signature string    `json:"signature"`  // hex Ed25519 over SignedBytes
}

// CheckpointVersion is the Version of checkpoints this package writes.
const CheckpointVersion = 1

// ErrCheckpoint is returned for a checkpoint that does not parse or whose
// signature does not verify.
var ErrCheckpoint = errors.New("invalid audit checkpoint")

// SignedBytes returns the bytes the signature covers: a label, the
// sequence number (8 bytes big-endian), the hash (32 bytes) and the time
// (Unix nanoseconds, 8 bytes big-endian).
func (c Checkpoint) SignedBytes() ([]byte, error) {
	h, err := hex.DecodeString(c.Hash)
	if err != nil || len(h) != 32 {
		return nil, fmt.Errorf("%w: hash must be 64 hex digits", ErrCheckpoint)
	}
	b := []byte("veil-audit-checkpoint-v1\n")
	b = binary.BigEndian.AppendUint64(b, c.Seq)
	b = append(b, h...)
	return binary.BigEndian.AppendUint64(b, uint64(c.Time.UnixNano())), nil
}

// SignCheckpoint returns a checkpoint of head at t signed with key.
func SignCheckpoint(key ed25519.PrivateKey, head Head, t time.Time) (Checkpoint, error) {
	c := Checkpoint{Version: CheckpointVersion, Seq: head.Seq, Hash: head.Hash, Time: t.UTC(),
		PublicKey: hex.EncodeToString(key.Public().(ed25519.PublicKey))}
	msg, err := c.SignedBytes()
	if err != nil {
		return Checkpoint{}, err
	}
	c.Signature = hex.EncodeToString(ed25519.Sign(key, msg))
	return c, nil
}

// Check verifies the checkpoint's signature under publicKey (hex), the
// service's current audit signer: a checkpoint signed by another key (or
// edited) fails.
func (c Checkpoint) Check(publicKey string) error {
	if c.Version != CheckpointVersion {
		return fmt.Errorf("%w: version %d, want %d", ErrCheckpoint, c.Version, CheckpointVersion)
	}
	if !strings.EqualFold(c.PublicKey, publicKey) {
		return fmt.Errorf("%w: signed by %s, but this service's audit signer is %s", ErrCheckpoint, c.PublicKey, publicKey)
	}
	pub, err := hex.DecodeString(publicKey)
	if err != nil || len(pub) != ed25519.PublicKeySize {
		return fmt.Errorf("%w: public key must be %d hex bytes", ErrCheckpoint, ed25519.PublicKeySize)
	}
	sig, err := hex.DecodeString(c.Signature)
	if err != nil {
		return fmt.Errorf("%w: signature is not hex", ErrCheckpoint)
	}
	msg, err := c.SignedBytes()
	if err != nil {
		return err
	}
	if !ed25519.Verify(pub, msg, sig) {
		return fmt.Errorf("%w: the signature does not verify", ErrCheckpoint)
	}
	return nil
}

// ParseCheckpoint decodes a checkpoint strictly (unknown fields refused).
func ParseCheckpoint(b []byte) (Checkpoint, error) {
	var c Checkpoint
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return Checkpoint{}, fmt.Errorf("%w: %v", ErrCheckpoint, err)
	}
	if dec.More() {
		return Checkpoint{}, fmt.Errorf("%w: trailing data", ErrCheckpoint)
	}
	return c, nil
}

// VerifyCheckpoint reports whether the log (entries as stored, and its
// authentic head) still contains the checkpointed head: a log that ends
// before it, or whose entry at the checkpoint's sequence number has another
// hash, was rolled back (or rewritten) since the checkpoint was taken. The
// caller checks the signature first (Checkpoint.Check).
func VerifyCheckpoint(entries []Entry, head Head, c Checkpoint) []Problem {
	if head.Seq < c.Seq {
		return []Problem{{Seq: c.Seq, Kind: RolledBack, Detail: fmt.Sprintf("the log ends at entry %d, before the checkpoint of %s at entry %d", head.Seq, c.Time.UTC().Format(time.RFC3339), c.Seq)}}
	}
	if c.Seq == 0 {
		if c.Hash != ZeroHash {
			return []Problem{{Seq: 0, Kind: RolledBack, Detail: "the checkpoint's genesis hash differs"}}
		}
		return nil
	}
	for _, e := range entries {
		if e.Seq == c.Seq {
			if e.Hash != c.Hash {
				return []Problem{{Seq: c.Seq, Kind: RolledBack, Detail: fmt.Sprintf("entry %d differs from the one checkpointed at %s", c.Seq, c.Time.UTC().Format(time.RFC3339))}}
			}
			return nil
		}
	}
	return []Problem{{Seq: c.Seq, Kind: Deleted, Detail: "the checkpointed entry is missing from the log"}}
}
