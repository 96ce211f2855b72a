package audit

import (
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"
)

func chain(n int) ([]Entry, Head) {
	var es []Entry
	prevSeq, prev := uint64(0), ZeroHash
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for i := range n {
		e := Entry{Time: t0.Add(time.Duration(i) * time.Second), Actor: Actor{Kind: "app", AppID: "a_1"}, Op: "decrypt", Key: fmt.Sprintf("k_%d", i), Result: Granted}
		Link(&e, prevSeq, prev)
		es = append(es, e)
		prevSeq, prev = e.Seq, e.Hash
	}
	return es, Head{Seq: prevSeq, Hash: prev}
}

func kinds(ps []Problem) map[string][]uint64 {
	m := map[string][]uint64{}
	for _, p := range ps {
		m[p.Kind] = append(m[p.Kind], p.Seq)
	}
	return m
}

func TestIntactChain(t *testing.T) {
	es, head := chain(6)
	if ps := Verify(es, head); len(ps) != 0 {
		t.Fatalf("intact chain: %v", ps)
	}
	// Round trip through storage encoding.
	for _, e := range es {
		got, err := Parse(Marshal(e))
		if err != nil || got.Hash != ComputeHash(got) {
			t.Fatalf("round trip: %v", err)
		}
	}
}

func TestDetectsTampering(t *testing.T) {
	t.Run("edited", func(t *testing.T) {
		es, head := chain(6)
		es[2].Result = Denied
		if got := kinds(Verify(es, head)); len(got[Edited]) == 0 || got[Edited][0] != 3 {
			t.Fatalf("got %v", got)
		}
	})
	t.Run("edited and rehashed", func(t *testing.T) {
		es, head := chain(6)
		es[2].Actor.AppID = "a_evil"
		es[2].Hash = ComputeHash(es[2])
		got := kinds(Verify(es, head))
		if len(got[Edited]) != 1 || got[Edited][0] != 3 {
			t.Fatalf("got %v", got)
		}
	})
	t.Run("whole tail rewritten", func(t *testing.T) {
		es, head := chain(6)
		es[4].Op = "nothing"
		Link(&es[4], es[3].Seq, es[3].Hash)
		Link(&es[5], es[4].Seq, es[4].Hash)
		if got := kinds(Verify(es, head)); len(got[Edited]) == 0 {
			t.Fatalf("rewritten tail not detected: %v", got)
		}
	})
	t.Run("reordered", func(t *testing.T) {
		es, head := chain(6)
		es[1], es[2] = es[2], es[1]
		if got := kinds(Verify(es, head)); len(got[Reordered]) == 0 {
			t.Fatalf("got %v", got)
		}
	})
	t.Run("deleted middle", func(t *testing.T) {
		es, head := chain(6)
		es = append(es[:2], es[3:]...)
		if got := kinds(Verify(es, head)); len(got[Deleted]) != 1 || got[Deleted][0] != 3 {
			t.Fatalf("got %v", got)
		}
	})
	t.Run("deleted tail", func(t *testing.T) {
		es, head := chain(6)
		if got := kinds(Verify(es[:4], head)); len(got[Deleted]) != 2 {
			t.Fatalf("got %v", got)
		}
	})
}

func TestParseStrict(t *testing.T) {
	if _, err := Parse([]byte(`{"seq":1,"bogus":2}`)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("unknown field: %v", err)
	}
	if _, err := Parse([]byte(`{"seq":1} {}`)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("trailing: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	es, _ := chain(2)
	f.Add(Marshal(es[0]))
	f.Add(Marshal(es[1]))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := Parse(b)
		if err != nil {
			return
		}
		e2, err := Parse(Marshal(e))
		if err != nil || ComputeHash(e2) != ComputeHash(e) {
			t.Fatalf("re-encoding changed the entry: %v", err)
		}
	})
}

func TestAppendedBeyondHead(t *testing.T) {
	es, _ := chain(6)
	old := Head{Seq: es[3].Seq, Hash: es[3].Hash}
	if got := kinds(Verify(es, old)); len(got[Appended]) != 2 || got[Appended][0] != 5 {
		t.Fatalf("entries beyond the head: %v", got)
	}
	// An empty log's head is the zero hash at 0: any entry is beyond it.
	if got := kinds(Verify(es[:1], Head{Hash: ZeroHash})); len(got[Appended]) != 1 {
		t.Fatalf("entry beyond the genesis head: %v", got)
	}
}

func TestCheckpoint(t *testing.T) {
	_, priv, _ := ed25519.GenerateKey(nil)
	_, other, _ := ed25519.GenerateKey(nil)
	pub := hex.EncodeToString(priv.Public().(ed25519.PublicKey))
	es, head := chain(6)
	t0 := time.Date(2026, 2, 3, 4, 5, 6, 0, time.UTC)
	cp, err := SignCheckpoint(priv, Head{Seq: es[3].Seq, Hash: es[3].Hash}, t0)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(cp)
	cp2, err := ParseCheckpoint(b)
	if err != nil || cp2.Check(pub) != nil {
		t.Fatalf("round trip: %v %v", err, cp2.Check(pub))
	}
	if ps := VerifyCheckpoint(es, head, cp); len(ps) != 0 {
		t.Fatalf("log past the checkpoint: %v", ps)
	}
	// Rolled back to before the checkpoint.
	if ps := VerifyCheckpoint(es[:2], Head{Seq: es[1].Seq, Hash: es[1].Hash}, cp); len(ps) != 1 || ps[0].Kind != RolledBack {
		t.Fatalf("rollback: %v", ps)
	}
	// Rolled back and regrown: entry 4 differs.
	re, rh := chain(6)
	re[3].Op = "other"
	Link(&re[3], re[2].Seq, re[2].Hash)
	if ps := VerifyCheckpoint(re, rh, cp); len(ps) != 1 || ps[0].Kind != RolledBack {
		t.Fatalf("regrown: %v", ps)
	}
	for name, edit := range map[string]func(c *Checkpoint){
		"seq":    func(c *Checkpoint) { c.Seq-- },
		"time":   func(c *Checkpoint) { c.Time = c.Time.Add(time.Second) },
		"hash":   func(c *Checkpoint) { c.Hash = es[2].Hash },
		"signer": func(c *Checkpoint) { *c, _ = SignCheckpoint(other, Head{Seq: c.Seq, Hash: c.Hash}, c.Time) },
	} {
		c := cp
		edit(&c)
		if err := c.Check(pub); !errors.Is(err, ErrCheckpoint) {
			t.Errorf("%s edited: %v", name, err)
		}
	}
	if _, err := ParseCheckpoint([]byte(`{"seq":1,"extra":1}`)); !errors.Is(err, ErrCheckpoint) {
		t.Fatalf("unknown field: %v", err)
	}
}

func FuzzParseCheckpoint(f *testing.F) {
	_, priv, _ := ed25519.GenerateKey(nil)
	cp, _ := SignCheckpoint(priv, Head{Seq: 3, Hash: ZeroHash}, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	b, _ := json.Marshal(cp)
	f.Add(b)
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseCheckpoint(b)
		if err != nil {
			return
		}
		m, err := json.Marshal(c)
		if err != nil {
			return // e.g. a year outside 0-9999 does not re-encode
		}
		c2, err := ParseCheckpoint(m)
		if err != nil || c2.Seq != c.Seq || c2.Hash != c.Hash || !c2.Time.Equal(c.Time) || c2.Signature != c.Signature {
			t.Fatalf("re-encoding changed the checkpoint: %v", err)
		}
		c.Check(c.PublicKey) // must not panic
	})
}

// marshalCases are entries for which Marshal must give encoding/json's
// bytes: plain ones (written directly) and every kind that falls back.
func marshalCases() []Entry {
	t0 := time.Date(2026, 11, 29, 9, 30, 1, 123456789, time.UTC)
	plain := Entry{Seq: 7, Time: t0, Actor: Actor{Kind: "app", AppID: "a_0123"}, Op: "decrypt", Owner: "a_0123",
		Key: "k_abc", KeyVersion: 2, Result: Granted, Prev: ZeroHash, Hash: ZeroHash}
	var es []Entry
	add := func(f func(e *Entry)) {
		e := plain
		f(&e)
		es = append(es, e)
	}
	add(func(*Entry) {})
	add(func(e *Entry) { *e = Entry{} })
	add(func(e *Entry) { e.Time = t0.Truncate(time.Second) })
	add(func(e *Entry) { e.Time = t0.In(time.FixedZone("x", -(5*3600 + 30*60))) })
	add(func(e *Entry) { e.Time = time.Date(9999, 12, 31, 23, 59, 59, 1, time.UTC) })
	add(func(e *Entry) { e.KeyVersion = -3 })
	add(func(e *Entry) { e.Seq = 1<<64 - 1 })
	add(func(e *Entry) {
		e.Actor = Actor{Kind: "workload", Workload: &Claims{}}
		e.Secret, e.Policy, e.App, e.Reason = "s_1", "p_1", "a_2", "policy p_1: measurement not allowed"
	})
	for _, s := range []string{"<", ">", "&", `"`, `\`, "\x00", "\n", "\x7f", "é", "\u2028", "\xff", " ~"} {
		add(func(e *Entry) { e.Reason = "why" + s })
		add(func(e *Entry) { e.Actor.AppID = s })
	}
	return es
}

// TestMarshalIsEncodingJSON: the stored form does not depend on which
// path wrote it, so chains written before and after verify alike.
func TestMarshalIsEncodingJSON(t *testing.T) {
	for i, e := range marshalCases() {
		want, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		if got := Marshal(e); string(got) != string(want) {
			t.Errorf("case %d: Marshal\n%s\nencoding/json\n%s", i, got, want)
		}
	}
}

func FuzzMarshal(f *testing.F) {
	f.Add(uint64(1), int64(1764408601), 5, "app", "a_1", "decrypt", "k_1", "", "granted", "")
	f.Add(uint64(0), int64(0), 0, "", "", "", "", "<&>", "denied", "\u2028\xff")
	f.Fuzz(func(t *testing.T, seq uint64, unix int64, kv int, kind, app, op, key, secret, result, reason string) {
		e := Entry{Seq: seq, Time: time.Unix(unix, int64(kv)).UTC(), Actor: Actor{Kind: kind, AppID: app}, Op: op, Key: key,
			KeyVersion: kv, Secret: secret, Result: result, Reason: reason, Prev: ZeroHash, Hash: key}
		want, err := json.Marshal(e)
		if err != nil {
			return // years encoding/json refuses
		}
		if got := Marshal(e); string(got) != string(want) {
			t.Fatalf("Marshal\n%s\nencoding/json\n%s", got, want)
		}
	})
}

// BenchmarkMarshal: an app's release entry through encoding/json and
// written directly.
func BenchmarkMarshal(b *testing.B) {
	e := marshalCases()[0]
	b.Run("encoding-json", func(b *testing.B) {
		for b.Loop() {
			json.Marshal(e)
		}
	})
	b.Run("direct", func(b *testing.B) {
		for b.Loop() {
			Marshal(e)
		}
	})
}
