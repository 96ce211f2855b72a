package seal

import (
	"bytes"
	"encoding/hex"
	"errors"
	"flag"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Golden files: one set per released format version, frozen. Every test run
// decrypts them; re-sealing with the recorded randomness must reproduce
// them byte for byte (so they double as test vectors).
//
// -write-golden creates missing files of the current version; it never
// overwrites an existing one.
var writeGolden = flag.Bool("write-golden", false, "create missing golden files for the current format version")

type goldenCase struct {
	name    string
	seed    byte // ChaCha8 seed [32]byte{seed}: DEK, file ID and nonces
	segment int
	plain   func() []byte
	keys    []string // key files under testdata/v1
}

var goldenV1 = []goldenCase{
	{"empty", 1, DefaultSegmentSize, func() []byte { return nil }, []string{"alice.key"}},
	{"hello", 2, DefaultSegmentSize, func() []byte { return []byte("hello, veil\n") }, []string{"alice.key"}},
	{"people", 3, MinSegmentSize, goldenPeople, []string{"alice.key", "bob.key"}},
}

func goldenPeople() []byte {
	var b bytes.Buffer
	b.WriteString("name,age,job\n")
	jobs := []string{"engineer", "teacher", "doctor", "artist"}
	for i := 0; i < 500; i++ {
		b.WriteString("person" + string(rune('a'+i%26)) + "," + string(rune('0'+(20+i%40)/10)) + string(rune('0'+(20+i%40)%10)) + "," + jobs[i%4] + "\n")
	}
	return b.Bytes()
}

func goldenKey(t *testing.T, name string) *FileKey {
	t.Helper()
	path := filepath.Join("testdata", "v1", name)
	if *writeGolden {
		if _, err := os.Stat(path); os.IsNotExist(err) {
			seed := [32]byte{0xee, byte(len(name))}
			copy(seed[2:], name)
			raw := make([]byte, KeySize)
			mrand.NewChaCha8(seed).Read(raw)
			k, _ := NewFileKey(raw)
			txt, _ := k.MarshalText()
			if err := os.WriteFile(path, txt, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	k, err := LoadFileKey(path)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestGoldenV1(t *testing.T) { testGolden(t, "v1", goldenV1) }

// goldenV2: version 2 files, bound to a place of the mount at /data.
var goldenV2 = []goldenCase{
	{"hello", 2, DefaultSegmentSize, func() []byte { return []byte("hello, veil\n") }, []string{"alice.key"}},
	{"people", 3, MinSegmentSize, goldenPeople, []string{"alice.key", "bob.key"}},
}

// goldenV2Place is where each version 2 golden file is bound.
func goldenV2Place(name string) *Place {
	return &Place{Mount: MountID("/data"), Path: "in/" + name + ".csv"}
}

// TestGoldenV2 decrypts the version 2 golden files at their place, refuses
// them at another, and reproduces them from the recorded randomness.
func TestGoldenV2(t *testing.T) {
	testGolden(t, "v2", goldenV2)
	for _, c := range goldenV2 {
		golden, err := os.ReadFile(filepath.Join("testdata", "v2", c.name+".sealed"))
		if err != nil {
			t.Fatal(err)
		}
		k := goldenKey(t, c.keys[0])
		f, err := Open(memStorage(golden), k, &Options{Place: goldenV2Place(c.name)})
		if err != nil {
			t.Fatalf("%s at its place: %v", c.name, err)
		}
		f.Close()
		if _, err := Open(memStorage(golden), k, &Options{Place: &Place{Mount: MountID("/data"), Path: "in/other.csv"}}); !errors.Is(err, ErrIntegrity) || !strings.Contains(err.Error(), goldenV2Place(c.name).Path) {
			t.Fatalf("%s under another name: %v; want an integrity error naming %s", c.name, err, goldenV2Place(c.name).Path)
		}
	}
}

func testGolden(t *testing.T, version string, cases []goldenCase) {
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var wrappers []KeyWrapper
			var keys []*FileKey
			for _, kn := range c.keys {
				k := goldenKey(t, kn)
				wrappers = append(wrappers, k)
				keys = append(keys, k)
			}
			plain := c.plain()
			opts := &Options{SegmentSize: c.segment, Rand: mrand.NewChaCha8([32]byte{c.seed}), Concurrency: 1}
			if version == "v2" {
				opts.Place = goldenV2Place(c.name)
			}
			fresh := sealBytes(t, plain, opts, wrappers...)
			path := filepath.Join("testdata", version, c.name+".sealed")
			if _, err := os.Stat(path); os.IsNotExist(err) && *writeGolden {
				os.MkdirAll(filepath.Dir(path), 0o755)
				if err := os.WriteFile(path, fresh, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			golden, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("golden file missing (run go test -write-golden once for a new version): %v", err)
			}
			for _, k := range keys {
				got, err := openBytes(golden, k)
				if err != nil {
					t.Fatalf("decrypting golden file with %s: %v", k.ID(), err)
				}
				if !bytes.Equal(got, plain) {
					t.Fatal("golden plaintext differs")
				}
			}
			if !bytes.Equal(fresh, golden) {
				t.Fatalf("sealing with the recorded randomness no longer reproduces %s: the %s format changed", path, version)
			}
			if os.Getenv("VEIL_PRINT_VECTORS") != "" && c.name == "hello" && version == "v1" {
				t.Logf("key %s\nsealed %s", keys[0].ID(), hex.EncodeToString(golden))
			}
		})
	}
}
