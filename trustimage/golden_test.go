package trustimage

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// TestGoldenBuilds loads, verifies and reads the builds of every released
// format version in testdata/golden.
func TestGoldenBuilds(t *testing.T) {
	const signer = "9ba1b7a7dbb845fa89a7fd7cd272ce9d8c81d4915315ab5115fe16d9220ee5c7"
	cases := []struct {
		dir, mrenclave string
		encrypted      bool
	}{
		{"v1-plain", "fc528118da023f025cae7b5671973de529f352f51a7f9e11962b1172cdbcd24b", false},
		{"v1-encrypted", "ff97af865a7a07b1cdc397715eee0abd55757d9a2b8d88769b4214fe1b542853", true},
	}
	key, err := os.ReadFile("testdata/golden/image.key")
	if err != nil {
		t.Fatal(err)
	}
	sk, err := LoadSignKey("testdata/golden/sign-key.pem")
	if err != nil {
		t.Fatal(err)
	}
	if got := FormatRoot(sk.MrSigner()); got != signer {
		t.Fatalf("test key mrsigner %s", got)
	}
	for _, c := range cases {
		b, err := LoadBuild(filepath.Join("testdata/golden", c.dir))
		if err != nil {
			t.Fatalf("%s: %v", c.dir, err)
		}
		if b.MeasurementHex() != c.mrenclave || b.MrSignerHex() != signer || b.Encrypted() != c.encrypted {
			t.Fatalf("%s: mrenclave %s mrsigner %s encrypted %v", c.dir, b.MeasurementHex(), b.MrSignerHex(), b.Encrypted())
		}
		if b.ProductID() != 3 || b.SVN() != 4 || b.Debuggable() {
			t.Fatalf("%s: metadata %d %d %v", c.dir, b.ProductID(), b.SVN(), b.Debuggable())
		}
		var k []byte
		if c.encrypted {
			k = key
		}
		r, err := b.Open(k)
		if err != nil {
			t.Fatalf("%s: %v", c.dir, err)
		}
		if err := r.Verify(context.Background(), nil); err != nil {
			t.Fatalf("%s: %v", c.dir, err)
		}
		sq, err := r.SquashFS()
		if err != nil {
			t.Fatalf("%s: %v", c.dir, err)
		}
		f, err := sq.OpenFile("/app/job.py", os.O_RDONLY)
		if err != nil {
			t.Fatalf("%s: %v", c.dir, err)
		}
		got, _ := io.ReadAll(f)
		if string(got) != "print(\"golden\")\n" {
			t.Fatalf("%s: job.py = %q", c.dir, got)
		}
		r.Close()
	}
}
