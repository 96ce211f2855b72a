package audit

import (
	"encoding/hex"
	"encoding/json"
	"os"
	"testing"
	"time"
)

// goldenEntries is a two-entry chain exercising every field of the
// canonical encoding (docs/formats/audit.md lists the same vectors).
func goldenEntries() []Entry {
	e1 := Entry{Time: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC), Actor: Actor{Kind: "app", AppID: "a_00112233445566778899aabbccddeeff"},
		Op: "key.create", Owner: "a_00112233445566778899aabbccddeeff", Key: "k_0123456789abcdef0123456789abcdef", KeyVersion: 1, Result: Granted}
	Link(&e1, 0, ZeroHash)
	e2 := Entry{Time: time.Date(2026, 1, 2, 3, 4, 6, 0, time.UTC),
		Actor: Actor{Kind: "workload", Workload: &Claims{TEE: "tdx", Measurement: "5f5f", Signer: "", ProductID: 2, SVN: 3, Debug: true}},
		Op:    "secret.get", Owner: "a_00112233445566778899aabbccddeeff", Secret: "s_0123456789abcdef0123456789abcdef",
		Policy: "p_0123456789abcdef0123456789abcdef", Result: Denied, Reason: "policy_denied: measurement 5f5f is not allowed"}
	Link(&e2, e1.Seq, e1.Hash)
	return []Entry{e1, e2}
}

type vector struct {
	Entry     json.RawMessage `json:"entry"`
	Canonical string          `json:"canonical"` // hex of Encode
	Hash      string          `json:"hash"`
}

// TestGoldenVectors pins the canonical encoding and the hash: the stored
// form in testdata/vectors.json decodes, encodes to the pinned bytes and
// hashes to the pinned hash, and the chain links.
func TestGoldenVectors(t *testing.T) {
	b, err := os.ReadFile("testdata/vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var vs []vector
	if err := json.Unmarshal(b, &vs); err != nil {
		t.Fatal(err)
	}
	want := goldenEntries()
	if len(vs) != len(want) {
		t.Fatalf("%d vectors, want %d", len(vs), len(want))
	}
	var es []Entry
	for i, v := range vs {
		e, err := Parse(v.Entry)
		if err != nil {
			t.Fatalf("vector %d: %v", i, err)
		}
		if got := hex.EncodeToString(Encode(e)); got != v.Canonical {
			t.Errorf("vector %d: canonical encoding\n got %s\nwant %s", i, got, v.Canonical)
		}
		if got := ComputeHash(e); got != v.Hash || e.Hash != v.Hash {
			t.Errorf("vector %d: hash %s, stored %s, want %s", i, got, e.Hash, v.Hash)
		}
		if want[i].Hash != v.Hash {
			t.Errorf("vector %d: Link gives %s, want %s", i, want[i].Hash, v.Hash)
		}
		es = append(es, e)
	}
	if ps := Verify(es, Head{Seq: es[1].Seq, Hash: es[1].Hash}); len(ps) != 0 {
		t.Fatalf("golden chain: %v", ps)
	}
}
