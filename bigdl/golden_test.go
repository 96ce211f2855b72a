package bigdl_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/veil-tee/veil/bigdl"
	"github.com/veil-tee/veil/internal/bigdltest"
)

// TestGolden decodes the checked-in file (testdata/README.md) and checks
// that the test writer still produces it byte for byte. Set
// VEIL_UPDATE_GOLDEN=1 to write it again.
func TestGolden(t *testing.T) {
	dir := "testdata"
	key := []byte("c2VjcmV0LWRhdGEta2V5LWZvci1iaWdkbC1nb2xkZW4=") // base64 text, as BigDL uses it
	plain := []byte("id,name,salary\n1,ann,100\n2,bob,200\n")
	when := time.Unix(1700000000, 0)
	path := filepath.Join(dir, "people.csv.cbc")
	if os.Getenv("VEIL_UPDATE_GOLDEN") == "1" {
		os.WriteFile(filepath.Join(dir, "datakey.txt"), append(key, '\n'), 0o644)
		os.WriteFile(filepath.Join(dir, "people.csv"), plain, 0o644)
		os.WriteFile(path, bigdltest.Write(key, plain, when), 0o644)
	}
	f, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	h, err := bigdl.Decrypt(bytes.NewReader(f), int64(len(f)), key, &out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), plain) || !h.Time.Equal(when) {
		t.Fatalf("golden file decodes to %q at %v", out.Bytes(), h.Time)
	}
	if !bytes.Equal(bigdltest.Write(key, plain, when), f) {
		t.Fatal("the test writer no longer produces the golden file")
	}
}
