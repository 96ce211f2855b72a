package trustimage

import (
	"bytes"
	"context"
	"io"
	"os"
	"testing"

	"github.com/veil-tee/veil/bom"
)

// TestPandasImageReadsBack reads every regular file of the python3 +
// numpy + pandas image back through go-diskfs over the verifying,
// decrypting Reader and compares it with the host file.
func TestPandasImageReadsBack(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	needTool(t, "mksquashfs")
	dir, ents := pandasDir(t)
	key := make([]byte, 32)
	lb, _, err := Build(context.Background(), dir, Options{SignKey: signKey(t), ImageKey: key})
	if err != nil {
		t.Fatal(err)
	}
	r, err := lb.Open(key)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	sq, err := r.SquashFS()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if e.Kind != bom.File {
			continue
		}
		f, err := sq.OpenFile(e.Path, os.O_RDONLY)
		if err != nil {
			t.Fatalf("%s: %v", e.Path, err)
		}
		got, err := io.ReadAll(f)
		if err != nil {
			t.Fatalf("%s: %v", e.Path, err)
		}
		want, _ := os.ReadFile(e.Source)
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: content differs (%d vs %d bytes)", e.Path, len(got), len(want))
		}
		n++
	}
	t.Logf("%d files read back", n)
}
