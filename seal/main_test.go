package seal

import (
	"os"
	"testing"
)

// Tests use small batches so that files of a few segments cross many batch
// boundaries; TestDefaultBatches covers the production size.
func TestMain(m *testing.M) {
	batchBytes = 2 * MinSegmentSize
	os.Exit(m.Run())
}
