package trustimage

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
)

// TestTreeMatchesVeritysetup formats random data with veritysetup and
// compares its root hash and its whole hash device (superblock and tree)
// with ours, for tree depths 1 to 3.
func TestTreeMatchesVeritysetup(t *testing.T) {
	needTool(t, "veritysetup")
	dir := t.TempDir()
	rootRE := regexp.MustCompile(`Root hash:\s+([0-9a-f]{64})`)
	for _, blocks := range []uint64{1, 128, 129, 128*128 + 1} {
		data := filepath.Join(dir, fmt.Sprintf("data%d", blocks))
		buf := make([]byte, blocks*BlockSize)
		rand.Read(buf[:min(len(buf), 1<<20)])
		os.WriteFile(data, buf, 0o600)
		salt := make([]byte, saltSize)
		rand.Read(salt)
		vp := verityParams{dataBlocks: blocks, salt: salt, uuid: verityUUID(salt)}
		leaves, err := hashLeaves(bytes.NewReader(buf), blocks, salt, nil)
		if err != nil {
			t.Fatal(err)
		}
		tree, root := buildTree(leaves, blocks, salt)
		hashFile := data + ".hash"
		u := vp.uuid
		uuid := fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
		out, err := exec.Command("veritysetup", "format", data, hashFile, "--salt", hex.EncodeToString(salt),
			"--uuid", uuid, "--data-block-size", "4096", "--hash-block-size", "4096", "--hash", "sha256").CombinedOutput()
		if err != nil {
			t.Fatalf("veritysetup format: %v: %s", err, out)
		}
		m := rootRE.FindSubmatch(out)
		if m == nil || string(m[1]) != hex.EncodeToString(root[:]) {
			t.Fatalf("%d blocks: veritysetup root %s, ours %x", blocks, m, root)
		}
		theirs, _ := os.ReadFile(hashFile)
		ours := append(vp.superblock(), tree...)
		if !bytes.Equal(theirs, ours) {
			t.Fatalf("%d blocks: hash device differs (%d vs %d bytes)", blocks, len(theirs), len(ours))
		}
	}
}

// TestVeritysetupVerifiesImage runs `veritysetup verify` on a built image
// (plain and encrypted), and checks it rejects a corrupted one.
func TestVeritysetupVerifiesImage(t *testing.T) {
	needTool(t, "veritysetup")
	needTool(t, "mksquashfs")
	key := make([]byte, 32)
	rand.Read(key)
	for _, k := range [][]byte{nil, key} {
		dir := t.TempDir()
		newInstance(t, dir, "", testFiles)
		b, _ := build(t, dir, k)
		im := b.Record.Image
		verify := func() error {
			return exec.Command("veritysetup", "verify", b.ImagePath, b.ImagePath, im.RootHash,
				"--hash-offset", fmt.Sprint(im.HashOffset)).Run()
		}
		if err := verify(); err != nil {
			t.Fatalf("veritysetup verify (encrypted=%v): %v", k != nil, err)
		}
		corrupt(t, b.ImagePath, BlockSize+9)
		if err := verify(); err == nil {
			t.Fatal("veritysetup accepted a corrupted image")
		}
	}
}

// TestGoSquashfsReadsThroughReader reads files of a built (encrypted) image
// with the go-diskfs squashfs reader over our verifying, decrypting Reader:
// the path a FUSE mount takes.
func TestGoSquashfsReadsThroughReader(t *testing.T) {
	needTool(t, "mksquashfs")
	key := make([]byte, 32)
	rand.Read(key)
	dir := t.TempDir()
	newInstance(t, dir, "", testFiles)
	b, _ := build(t, dir, key)
	r, err := b.Open(key)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	sq, err := r.SquashFS()
	if err != nil {
		t.Fatalf("go-diskfs cannot read the image: %v", err)
	}
	for name, want := range testFiles {
		f, err := sq.OpenFile("/"+name, os.O_RDONLY)
		if err != nil {
			t.Fatalf("opening %s: %v", name, err)
		}
		got, err := io.ReadAll(f)
		if err != nil || string(got) != want {
			t.Fatalf("%s: read %d bytes, err %v", name, len(got), err)
		}
	}
	if err := r.Verify(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
}
