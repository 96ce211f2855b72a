package trustimage

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestLoadBuildSaysWhatIsMissing(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadBuild(dir); !errors.Is(err, ErrNoInstance) {
		t.Fatalf("empty directory: %v, want ErrNoInstance", err)
	}
	os.WriteFile(filepath.Join(dir, "veil.json"), []byte(`{}`), 0o644)
	if _, err := LoadBuild(dir); !errors.Is(err, ErrNotBuilt) {
		t.Fatalf("instance without a build: %v, want ErrNotBuilt", err)
	}
}
