package pf

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// Golden files: written by this package's writer with a deterministic
// randomness source (see testdata/README.md). Every run decodes them and
// writes them again byte for byte, so a change in the format is noticed.
var goldenSizes = []int{0, 1, mdDataSize, mdDataSize + 1, 40000}

var goldenKey = Key{0xf0, 0xe1, 0xd2, 0xc3, 0xb4, 0xa5, 0x96, 0x87, 0x78, 0x69, 0x5a, 0x4b, 0x3c, 0x2d, 0x1e, 0x0f}

func goldenName(n int) string { return fmt.Sprintf("golden-v2-%d.pf", n) }

func TestGolden(t *testing.T) {
	for _, n := range goldenSizes {
		name := goldenName(n)
		bound := "data/" + name
		p := filepath.Join("testdata", name)
		plain := testPlain(n)
		out := writeFile(t, filepath.Join(t.TempDir(), name), goldenKey, bound, plain, &Options{Rand: &detRand{seed: name}})
		if *update {
			if err := os.WriteFile(p, out, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		want, err := os.ReadFile(p)
		if err != nil {
			t.Fatalf("%v (run go test -run TestGolden -update to create it)", err)
		}
		f, err := Open(bytes.NewReader(want), int64(len(want)), goldenKey, bound, nil)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got, err := readAll(f)
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("%s: decoding: %v", name, err)
		}
		if !bytes.Equal(out, want) {
			t.Errorf("%s: the writer no longer produces the golden bytes", name)
		}
	}
}

func FuzzOpen(f *testing.F) {
	seeds := 0
	for _, n := range goldenSizes {
		b, err := os.ReadFile(filepath.Join("testdata", goldenName(n)))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		seeds++
	}
	if seeds == 0 {
		f.Fatal("no seed files")
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, n := range goldenSizes {
			file, err := Open(bytes.NewReader(b), int64(len(b)), goldenKey, "data/"+goldenName(n), nil)
			if err != nil {
				continue
			}
			readAll(file)
			file.Close()
		}
	})
}
