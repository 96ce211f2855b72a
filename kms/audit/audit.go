// Package audit defines the key service's audit log: a sequence of entries,
// each carrying the SHA-256 hash of the previous one over an explicit
// canonical encoding (docs/formats/audit.md), the verification that
// recomputes the chain, and signed checkpoints.
//
// The chain detects an entry that was edited, reordered or deleted after it
// was written, as long as the verifier knows the authentic head (the last
// sequence number and hash): the key service keeps the head MACed under a
// key derived from its root key, writes a MACed genesis when it is
// initialized (so an emptied log is not mistaken for a new one), and
// reports entries stored beyond the head. Rolling the whole store back to
// an older copy leaves an authentic older head; a Checkpoint signed by the
// service and kept elsewhere by the operator detects that. The log does not
// prevent tampering, only reveals it; it does not hide entries from whoever
// can read the store (entries hold identities and key ids, never key
// material or plaintext).
package audit

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Results of an audited operation.
const (
	Granted = "granted"
	Denied  = "denied"
)

// ZeroHash is the Prev of the first entry.
const ZeroHash = "0000000000000000000000000000000000000000000000000000000000000000"

// ErrMalformed is returned by Parse for an entry that is not valid JSON of
// the expected shape.
var ErrMalformed = errors.New("malformed audit entry")

// Claims is the attested identity of a workload as recorded in the log.
type Claims struct {
	TEE         string `json:"tee"`
	Measurement string `json:"measurement"`
	Signer      string `json:"signer"`
	ProductID   uint16 `json:"product_id"`
	SVN         uint16 `json:"svn"`
	Debug       bool   `json:"debug"`
}

// Actor says who asked.
type Actor struct {
	Kind     string  `json:"kind"` // "admin", "app", "workload", "operator", "anonymous"
	AppID    string  `json:"app_id,omitempty"`
	Workload *Claims `json:"workload,omitempty"`
}

// Entry is one audit record.
type Entry struct {
	Seq        uint64    `json:"seq"`
	Time       time.Time `json:"time"`
	Actor      Actor     `json:"actor"`
	Op         string    `json:"op"`
	Owner      string    `json:"owner,omitempty"` // app owning the object
	Key        string    `json:"key,omitempty"`
	KeyVersion int       `json:"key_version,omitempty"`
	Secret     string    `json:"secret,omitempty"`
	Policy     string    `json:"policy,omitempty"`
	App        string    `json:"app,omitempty"` // app acted upon (enroll)
	Result     string    `json:"result"`
	Reason     string    `json:"reason,omitempty"`
	Prev       string    `json:"prev"`
	Hash       string    `json:"hash"`
}

// ComputeHash returns the hex SHA-256 of e's canonical encoding (Encode),
// which covers Prev and therefore the chain.
func ComputeHash(e Entry) string {
	h := sha256.New()
	h.Write([]byte(hashLabel))
	h.Write(Encode(e))
	return hex.EncodeToString(h.Sum(nil))
}

const hashLabel = "veil-audit-v2\n"

// Encode returns the canonical encoding of e that its hash covers
// (docs/formats/audit.md): every field but Hash, in a fixed order, strings
// as a 4-byte big-endian length and their bytes, integers big-endian, the
// time as Unix nanoseconds, the workload claims behind a presence byte.
// It does not depend on encoding/json, so the hash is stable whatever
// the storage encoding.
func Encode(e Entry) []byte {
	var b []byte
	u64 := func(v uint64) { b = binary.BigEndian.AppendUint64(b, v) }
	str := func(s string) {
		b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	u64(e.Seq)
	u64(uint64(e.Time.UnixNano()))
	str(e.Actor.Kind)
	str(e.Actor.AppID)
	if w := e.Actor.Workload; w != nil {
		b = append(b, 1)
		str(w.TEE)
		str(w.Measurement)
		str(w.Signer)
		b = binary.BigEndian.AppendUint16(b, w.ProductID)
		b = binary.BigEndian.AppendUint16(b, w.SVN)
		if w.Debug {
			b = append(b, 1)
		} else {
			b = append(b, 0)
		}
	} else {
		b = append(b, 0)
	}
	str(e.Op)
	str(e.Owner)
	str(e.Key)
	u64(uint64(int64(e.KeyVersion)))
	str(e.Secret)
	str(e.Policy)
	str(e.App)
	str(e.Result)
	str(e.Reason)
	str(e.Prev)
	return b
}

// Link sets e.Seq, e.Prev and e.Hash so that e follows an entry with seq
// prevSeq and hash prevHash (0 and ZeroHash for the first entry).
func Link(e *Entry, prevSeq uint64, prevHash string) {
	e.Seq = prevSeq + 1
	e.Prev = prevHash
	e.Time = e.Time.UTC()
	e.Hash = ComputeHash(*e)
}

// Marshal encodes e for storage: the JSON of encoding/json, byte for
// byte. Entries without workload claims whose strings are plain ASCII
// (every entry of an app's or an admin's request) are written directly,
// without reflection; TestMarshalIsEncodingJSON and FuzzMarshal hold the
// two paths to the same bytes.
func Marshal(e Entry) []byte {
	if b, ok := appendPlain(make([]byte, 0, 320), e); ok {
		return b
	}
	b, err := json.Marshal(e)
	if err != nil {
		panic(err)
	}
	return b
}

// appendPlain appends e's JSON to b when encoding/json would write every
// field verbatim: no workload claims (a nested object of its own), a year
// within 0-9999 and strings of printable ASCII other than the characters
// encoding/json escapes ('"', '\\', '<', '>', '&').
func appendPlain(b []byte, e Entry) ([]byte, bool) {
	if e.Actor.Workload != nil || e.Time.Year() < 0 || e.Time.Year() > 9999 {
		return nil, false
	}
	for _, s := range [...]string{e.Actor.Kind, e.Actor.AppID, e.Op, e.Owner, e.Key, e.Secret, e.Policy, e.App, e.Result, e.Reason, e.Prev, e.Hash} {
		for i := 0; i < len(s); i++ {
			if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
				return nil, false
			}
		}
	}
	str := func(b []byte, name, v string, omitEmpty bool) []byte {
		if omitEmpty && v == "" {
			return b
		}
		b = append(b, `,"`...)
		b = append(b, name...)
		b = append(b, `":"`...)
		b = append(b, v...)
		return append(b, '"')
	}
	b = append(b, `{"seq":`...)
	b = strconv.AppendUint(b, e.Seq, 10)
	b = append(b, `,"time":"`...)
	b = e.Time.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","actor":{"kind":"`...)
	b = append(b, e.Actor.Kind...)
	b = append(b, '"')
	b = str(b, "app_id", e.Actor.AppID, true)
	b = append(b, `},"op":"`...)
	b = append(b, e.Op...)
	b = append(b, '"')
	b = str(b, "owner", e.Owner, true)
	b = str(b, "key", e.Key, true)
	if e.KeyVersion != 0 {
		b = append(b, `,"key_version":`...)
		b = strconv.AppendInt(b, int64(e.KeyVersion), 10)
	}
	b = str(b, "secret", e.Secret, true)
	b = str(b, "policy", e.Policy, true)
	b = str(b, "app", e.App, true)
	b = str(b, "result", e.Result, false)
	b = str(b, "reason", e.Reason, true)
	b = str(b, "prev", e.Prev, false)
	b = str(b, "hash", e.Hash, false)
	return append(b, '}'), true
}

// Parse decodes a stored entry strictly.
func Parse(b []byte) (Entry, error) {
	var e Entry
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		return Entry{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if dec.More() {
		return Entry{}, fmt.Errorf("%w: trailing data", ErrMalformed)
	}
	return e, nil
}

// Head is the authentic end of the chain.
type Head struct {
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
}

// Kinds of Problem.
const (
	Edited     = "edited"
	Reordered  = "reordered"
	Deleted    = "deleted"
	Appended   = "appended"    // stored beyond the authenticated head
	Damaged    = "damaged"     // the head or genesis is missing or fails its MAC
	RolledBack = "rolled-back" // the log is older than a checkpoint
)

// Problem is one finding of Verify.
type Problem struct {
	Seq    uint64 `json:"seq"`
	Kind   string `json:"kind"`
	Detail string `json:"detail"`
}

func (p Problem) String() string { return fmt.Sprintf("entry %d %s: %s", p.Seq, p.Kind, p.Detail) }

// Verify recomputes the chain over entries, as stored (in storage order),
// against head, and returns every problem found (none for an intact log).
func Verify(entries []Entry, head Head) []Problem {
	var probs []Problem
	add := func(seq uint64, kind, format string, a ...any) {
		probs = append(probs, Problem{Seq: seq, Kind: kind, Detail: fmt.Sprintf(format, a...)})
	}
	bySeq := map[uint64]Entry{}
	var maxSeq uint64
	for i, e := range entries {
		if i > 0 && e.Seq <= entries[i-1].Seq {
			add(e.Seq, Reordered, "stored after entry %d", entries[i-1].Seq)
		}
		if ComputeHash(e) != e.Hash {
			add(e.Seq, Edited, "content does not match its hash")
		}
		if _, dup := bySeq[e.Seq]; dup {
			add(e.Seq, Reordered, "sequence number appears twice")
		}
		bySeq[e.Seq] = e
		maxSeq = max(maxSeq, e.Seq)
	}
	last := max(maxSeq, head.Seq)
	for seq := uint64(1); seq <= last; seq++ {
		e, ok := bySeq[seq]
		if !ok {
			add(seq, Deleted, "missing from the log")
			continue
		}
		want := ZeroHash
		if p, ok := bySeq[seq-1]; ok {
			want = p.Hash
		} else if seq > 1 {
			continue // predecessor missing: already reported
		}
		if e.Prev != want {
			add(seq-1, Edited, "rewritten: entry %d does not link to it", seq)
		}
	}
	if head.Seq == 0 && head.Hash != ZeroHash {
		add(0, Edited, "the empty log's head is not the genesis hash")
	}
	if e, ok := bySeq[head.Seq]; ok && e.Hash != head.Hash {
		add(head.Seq, Edited, "does not match the authenticated head of the log")
	}
	for seq := head.Seq + 1; seq <= maxSeq; seq++ {
		if _, ok := bySeq[seq]; ok {
			add(seq, Appended, "stored beyond the authenticated head %d", head.Seq)
		}
	}
	sort.SliceStable(probs, func(i, j int) bool { return probs[i].Seq < probs[j].Seq })
	return probs
}
