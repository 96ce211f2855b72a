package fsutil

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteFileRefusesOverwrite(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := WriteFile(p, []byte("one"), 0o600, false); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(p, []byte("two"), 0o600, false); !errors.Is(err, ErrExists) {
		t.Fatalf("got %v, want ErrExists", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "one" {
		t.Fatalf("content %q after refused overwrite", b)
	}
	if err := WriteFile(p, []byte("two"), 0o600, true); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); string(b) != "two" {
		t.Fatalf("content %q after overwrite", b)
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode())
	}
}

func TestCommitRefusesTargetCreatedMeanwhile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	a, err := CreateAtomic(p, 0o600, false)
	if err != nil {
		t.Fatal(err)
	}
	a.WriteString("late")
	os.WriteFile(p, []byte("first"), 0o600)
	if err := a.Commit(); !errors.Is(err, ErrExists) {
		t.Fatalf("got %v, want ErrExists", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "first" {
		t.Fatal("commit clobbered a file created meanwhile")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("temporary file left: %v", ents)
	}
}

func TestAbortLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	a, err := CreateAtomic(filepath.Join(dir, "f"), 0o600, false)
	if err != nil {
		t.Fatal(err)
	}
	a.WriteString("partial")
	a.Abort()
	a.Abort() // idempotent
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("left behind: %v", ents)
	}
}

// Errors name the file asked for, never the temporary file beside it.
func TestErrorsNameNoTemporaryFile(t *testing.T) {
	dir := t.TempDir()
	ro := filepath.Join(dir, "ro")
	os.Mkdir(ro, 0o555)
	if os.Geteuid() == 0 {
		// Root writes anywhere: make the directory a file instead.
		os.Remove(ro)
		os.WriteFile(ro, nil, 0o644)
	}
	_, err := CreateAtomic(filepath.Join(ro, "out"), 0o600, false)
	if err == nil || strings.Contains(err.Error(), ".tmp-") || !strings.Contains(err.Error(), filepath.Join(ro, "out")) {
		t.Fatalf("CreateAtomic: %v", err)
	}
	f, err := CreateAtomic(filepath.Join(dir, "out"), 0o600, false)
	if err != nil {
		t.Fatal(err)
	}
	f.File.Close() // writes now fail
	if _, err := f.Write([]byte("x")); err == nil || strings.Contains(err.Error(), ".tmp-") || !strings.Contains(err.Error(), filepath.Join(dir, "out")) {
		t.Fatalf("Write: %v", err)
	}
	f.Abort()
}
