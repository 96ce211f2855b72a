package seal

import (
	"flag"
	"os"
	"testing"
)

// Tests use small batches so that files of a few segments cross many batch
// boundaries; TestDefaultBatches covers the production size. Benchmarks
// (-bench) measure the production size.
func TestMain(m *testing.M) {
	flag.Parse()
	if f := flag.Lookup("test.bench"); f == nil || f.Value.String() == "" {
		batchBytes = 2 * MinSegmentSize
	}
	os.Exit(m.Run())
}
