package ociimage_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/veil-tee/veil/internal/veiltest"
	"github.com/veil-tee/veil/ociimage"
)

var veil string

func TestMain(m *testing.M) { veiltest.Main(m, &veil) }

// people is a small people-like instance: a CSV in the image and a shell
// job that counts the engineers in it.
func people(t *testing.T, home string) string {
	t.Helper()
	veiltest.NeedFUSE(t)
	veiltest.NeedCommand(t, "mksquashfs")
	dir := filepath.Join(t.TempDir(), "people")
	mustRun(t, home, veil, "new", dir)
	mustRun(t, home, veil, "sim", "init")
	cfg := map[string]any{
		"entrypoints": []string{"/usr/bin/", "/app/"},
		"env":         map[string]any{"default": map[string]string{"PATH": "/usr/bin"}, "passthrough": []string{}},
		"args":        map[string]any{"passthrough": true},
		"mounts":      []any{map[string]any{"target": "/tmp", "type": "tmpfs", "size": "16M"}},
		"resources":   map[string]any{"max_processes": 64},
		"metadata":    map[string]any{"product_id": 7, "svn": 2, "debuggable": false},
		"kms":         []any{},
		"secrets":     []any{},
		"bom": map[string]any{"copy": []any{
			map[string]any{"from": "/usr/bin/dash", "to": "/usr/bin/sh"},
			map[string]any{"from": "/usr/bin/grep"},
		}},
	}
	b, _ := json.MarshalIndent(cfg, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, "veil.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(dir, "image", "app"), 0o755)
	os.WriteFile(filepath.Join(dir, "image", "app", "people.csv"), []byte("name,job\nbob,engineer\nann,doctor\ncid,engineer\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "image", "app", "job.sh"), []byte("#!/usr/bin/sh\ngrep -c engineer /app/people.csv\n"), 0o755)
	mustRun(t, home, veil, "build", "-C", dir)
	return dir
}

func run(t *testing.T, home, bin string, args ...string) veiltest.Result {
	t.Helper()
	return veiltest.Run(t, bin, []string{"VEIL_HOME=" + home}, "", args...)
}

func mustRun(t *testing.T, home, bin string, args ...string) string {
	t.Helper()
	r := run(t, home, bin, args...)
	if r.Code != 0 {
		t.Fatalf("%s %v: exit %d\n%s", filepath.Base(bin), args, r.Code, r.Stderr)
	}
	return r.Stdout
}

func field(out, name string) string {
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == name {
			return f[1]
		}
	}
	return ""
}

// TestPackageUnpackRun packages an instance twice (same digest, same
// bytes), unpacks it with the library into a fresh root and runs the
// instance from there with the veil binary that came in the image.
func TestPackageUnpackRun(t *testing.T) {
	home := t.TempDir()
	app := people(t, home)
	mr := strings.TrimSpace(mustRun(t, home, veil, "print", "-C", app, "mrenclave"))
	out := t.TempDir()
	a, b := filepath.Join(out, "a.tar"), filepath.Join(out, "b.tar")
	outA := mustRun(t, home, veil, "package", "-C", app, "-o", a)
	outB := mustRun(t, home, veil, "package", "-C", app, "-o", b, "--veil", veil)
	if da, db := field(outA, "image"), field(outB, "image"); da == "" || da != db {
		t.Fatalf("digests differ or missing: %q %q", da, db)
	}
	if field(outA, "mrenclave") != mr {
		t.Fatalf("package printed mrenclave %q, build has %s", field(outA, "mrenclave"), mr)
	}
	ba, _ := os.ReadFile(a)
	bb, _ := os.ReadFile(b)
	if !bytes.Equal(ba, bb) {
		t.Fatal("the same instance packaged twice gave different archives")
	}
	// Nothing but veil, the build and veil.json: the archive is about the
	// size of the two (the source image/ directory is not shipped).
	vs, _ := os.Stat(veil)
	is, _ := os.Stat(filepath.Join(app, "build", "rootfs.img"))
	if st, _ := os.Stat(a); st.Size() > vs.Size()+is.Size()+1<<20 {
		t.Fatalf("archive %d bytes, veil %d + image %d", st.Size(), vs.Size(), is.Size())
	}
	m := manifest(t, a)
	if m.Annotations[ociimage.KeyMeasurement] != mr || m.Annotations[ociimage.KeySVN] != "2" || m.Annotations[ociimage.KeyProductID] != "7" {
		t.Fatalf("annotations %v", m.Annotations)
	}

	// An image tool other than veil reads the archive both ways: as an OCI
	// layout (podman load, docker load from 25 on) and through the Docker
	// manifest.json (older docker load).
	t.Run("skopeo", func(t *testing.T) {
		veiltest.NeedCommand(t, "skopeo")
		var info struct {
			Digest string
			Labels map[string]string
			Layers []string
		}
		out, err := exec.Command("skopeo", "inspect", "oci-archive:"+a).Output()
		if err != nil {
			t.Fatalf("skopeo inspect oci-archive: %v", err)
		}
		json.Unmarshal(out, &info)
		if info.Digest != field(outA, "image") || info.Labels[ociimage.KeyMeasurement] != mr || len(info.Layers) != 2 {
			t.Fatalf("skopeo sees %s", out)
		}
		out, err = exec.Command("skopeo", "inspect", "docker-archive:"+a).Output()
		if err != nil {
			t.Fatalf("skopeo inspect docker-archive: %v", err)
		}
		info.Labels = nil
		json.Unmarshal(out, &info)
		if info.Labels[ociimage.KeyMeasurement] != mr || len(info.Layers) != 2 {
			t.Fatalf("skopeo sees %s", out)
		}
	})

	root := filepath.Join(t.TempDir(), "root")
	u, err := ociimage.Unpack(context.Background(), a, root, ociimage.UnpackOptions{Measurement: mr})
	if err != nil {
		t.Fatal(err)
	}
	if u.Measurement != mr || u.Digest != field(outA, "image") {
		t.Fatalf("unpacked %+v", u)
	}
	var got []string
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			r, _ := filepath.Rel(root, p)
			got = append(got, r)
		}
		return nil
	})
	want := "instance/build/build.json instance/build/rootfs.img instance/veil.json usr/local/bin/veil"
	if strings.Join(got, " ") != want {
		t.Fatalf("unpacked files %v, want %s", got, want)
	}
	t.Cleanup(func() { detachUnder(filepath.Join(u.Instance, "run")) })
	r := run(t, home, u.Veil, "run", "-C", u.Instance, "/usr/bin/sh", "/app/job.sh")
	if r.Code != 0 || r.Stdout != "2\n" {
		t.Fatalf("run from the unpacked root: exit %d, out %q\n%s", r.Code, r.Stdout, r.Stderr)
	}

	// The command line does the same, and refuses another measurement.
	root2 := filepath.Join(t.TempDir(), "root")
	if o := mustRun(t, home, veil, "unpack", a, root2); field(o, "mrenclave") != mr {
		t.Fatalf("unpack printed %q", o)
	}
	other := strings.Repeat("0", 64)
	r = run(t, home, veil, "unpack", "--measurement", other, a, filepath.Join(t.TempDir(), "root"))
	if r.Code != 3 || !strings.Contains(r.Stderr, "expected "+other) {
		t.Fatalf("unpack with another expected measurement: exit %d\n%s", r.Code, r.Stderr)
	}
}

// TestTamperedImageRefused changes a packaged image the ways an attacker
// between the trusted build machine and the cluster could, and checks that
// each is refused before anything is written or run.
func TestTamperedImageRefused(t *testing.T) {
	home := t.TempDir()
	app := people(t, home)
	a := filepath.Join(t.TempDir(), "app.tar")
	mustRun(t, home, veil, "package", "-C", app, "-o", a)

	cases := []struct {
		name string
		edit func(t *testing.T, lay string)
		want error
	}{
		{"layer bytes changed", func(t *testing.T, lay string) {
			p := instanceLayer(t, lay)
			b, _ := os.ReadFile(p)
			b[len(b)/2] ^= 1
			os.WriteFile(p, b, 0o644)
		}, ociimage.ErrTampered},
		{"program changed, digests recomputed", func(t *testing.T, lay string) {
			rewriteInstance(t, lay, func(name string, data []byte) []byte {
				if name == "instance/build/rootfs.img" {
					// A byte of the squashfs data, ahead of the hash tree.
					i := bytes.Index(data, []byte("engineer"))
					if i < 0 {
						i = 4096
					}
					data[i] ^= 0x20
				}
				return data
			})
		}, ociimage.ErrTampered},
		{"veil.json changed, digests recomputed", func(t *testing.T, lay string) {
			rewriteInstance(t, lay, func(name string, data []byte) []byte {
				if name == "instance/veil.json" {
					return bytes.Replace(data, []byte(`"max_processes": 64`), []byte(`"max_processes": 65`), 1)
				}
				return data
			})
		}, ociimage.ErrTampered},
		{"extra file in the instance layer", func(t *testing.T, lay string) {
			rewriteInstance(t, lay, func(name string, data []byte) []byte {
				if name == "instance/veil.json" {
					return nil // replaced by a file of another name below
				}
				return data
			})
		}, ociimage.ErrNotPackage},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			lay := t.TempDir()
			untar(t, a, lay)
			c.edit(t, lay)
			bad := filepath.Join(t.TempDir(), "bad.tar")
			retar(t, lay, bad)
			root := filepath.Join(t.TempDir(), "root")
			_, err := ociimage.Unpack(context.Background(), bad, root, ociimage.UnpackOptions{})
			t.Logf("refused: %v", err)
			if !errors.Is(err, c.want) {
				t.Fatalf("Unpack: %v, want %v", err, c.want)
			}
			if _, err := os.Stat(root); !errors.Is(err, os.ErrNotExist) {
				t.Fatal("a refused image left files behind")
			}
			r := run(t, home, veil, "unpack", bad, root)
			lines := strings.Split(strings.TrimSpace(r.Stderr), "\n")
			if r.Code == 0 || !strings.HasPrefix(lines[0], "veil: error: ") || len(lines) > 2 {
				t.Fatalf("veil unpack: exit %d\n%s", r.Code, r.Stderr)
			}
			if errors.Is(c.want, ociimage.ErrTampered) && r.Code != 3 {
				t.Fatalf("veil unpack of a tampered image: exit %d, want 3\n%s", r.Code, r.Stderr)
			}
		})
	}
}

// TestBaseImage puts the package on top of another image and keeps the
// base's layers first.
func TestBaseImage(t *testing.T) {
	home := t.TempDir()
	app := people(t, home)
	dir := t.TempDir()
	base := filepath.Join(dir, "base.tar")
	mustRun(t, home, veil, "package", "-C", app, "-o", base)
	out := filepath.Join(dir, "on-base.tar")
	mustRun(t, home, veil, "package", "-C", app, "-o", out, "--base", base)
	mb, m := manifest(t, base), manifest(t, out)
	if len(m.Layers) != 4 || m.Layers[0].Digest != mb.Layers[0].Digest {
		t.Fatalf("layers %v on base %v", m.Layers, mb.Layers)
	}
	root := filepath.Join(t.TempDir(), "root")
	if _, err := ociimage.Unpack(context.Background(), out, root, ociimage.UnpackOptions{}); err != nil {
		t.Fatal(err)
	}
	// A dynamically linked veil needs a base image to load its libc from.
	r := run(t, home, veil, "package", "-C", app, "-o", filepath.Join(dir, "x.tar"), "--veil", "/usr/bin/dash")
	if r.Code == 0 || !strings.Contains(r.Stderr, "dynamically linked") {
		t.Fatalf("dynamic veil without base: exit %d\n%s", r.Code, r.Stderr)
	}
}

// manifest reads the image manifest of an archive.
func manifest(t *testing.T, archive string) *v1.Manifest {
	t.Helper()
	lay := t.TempDir()
	untar(t, archive, lay)
	var idx v1.IndexManifest
	readJSON(t, filepath.Join(lay, "index.json"), &idx)
	var m v1.Manifest
	readJSON(t, blob(lay, idx.Manifests[0].Digest), &m)
	return &m
}

func readJSON(t *testing.T, p string, v any) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatal(err)
	}
}

func blob(lay string, d v1.Hash) string { return filepath.Join(lay, "blobs", "sha256", d.Hex) }

func instanceLayer(t *testing.T, lay string) string {
	t.Helper()
	var idx v1.IndexManifest
	readJSON(t, filepath.Join(lay, "index.json"), &idx)
	var m v1.Manifest
	readJSON(t, blob(lay, idx.Manifests[0].Digest), &m)
	return blob(lay, m.Layers[len(m.Layers)-1].Digest)
}

// rewriteInstance edits the files of the instance layer and recomputes
// every digest that names it (layer, diff id, config, manifest, index), as
// an attacker with write access to the registry could; a nil result
// renames the file to instance/extra.
func rewriteInstance(t *testing.T, lay string, edit func(string, []byte) []byte) {
	t.Helper()
	var idx v1.IndexManifest
	readJSON(t, filepath.Join(lay, "index.json"), &idx)
	var m v1.Manifest
	readJSON(t, blob(lay, idx.Manifests[0].Digest), &m)
	var cf map[string]any
	readJSON(t, blob(lay, m.Config.Digest), &cf)

	last := len(m.Layers) - 1
	f, err := os.Open(blob(lay, m.Layers[last].Digest))
	if err != nil {
		t.Fatal(err)
	}
	z, _ := gzip.NewReader(f)
	tr := tar.NewReader(z)
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		if hdr.Typeflag == tar.TypeReg {
			if nd := edit(hdr.Name, data); nd != nil {
				data = nd
			} else {
				hdr.Name = "instance/extra"
			}
			hdr.Size = int64(len(data))
		}
		tw.WriteHeader(hdr)
		tw.Write(data)
	}
	tw.Close()
	f.Close()
	var zb bytes.Buffer
	zw := gzip.NewWriter(&zb)
	zw.Write(raw.Bytes())
	zw.Close()

	os.Remove(blob(lay, m.Layers[last].Digest))
	m.Layers[last].Digest = put(t, lay, zb.Bytes())
	m.Layers[last].Size = int64(zb.Len())
	diffIDs := cf["rootfs"].(map[string]any)["diff_ids"].([]any)
	diffIDs[last] = fmt.Sprintf("sha256:%x", sha256.Sum256(raw.Bytes()))
	cb, _ := json.Marshal(cf)
	m.Config.Digest = put(t, lay, cb)
	m.Config.Size = int64(len(cb))
	mb, _ := json.Marshal(m)
	idx.Manifests[0].Digest = put(t, lay, mb)
	idx.Manifests[0].Size = int64(len(mb))
	ib, _ := json.Marshal(idx)
	os.WriteFile(filepath.Join(lay, "index.json"), ib, 0o644)
}

func put(t *testing.T, lay string, data []byte) v1.Hash {
	h := v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", sha256.Sum256(data))}
	if err := os.WriteFile(blob(lay, h), data, 0o644); err != nil {
		t.Fatal(err)
	}
	return h
}

func untar(t *testing.T, archive, dir string) {
	t.Helper()
	if out, err := exec.Command("tar", "-xf", archive, "-C", dir).CombinedOutput(); err != nil {
		t.Fatalf("tar -x: %v\n%s", err, out)
	}
}

func retar(t *testing.T, dir, archive string) {
	t.Helper()
	if out, err := exec.Command("tar", "-cf", archive, "-C", dir, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar -c: %v\n%s", err, out)
	}
}

// detachUnder detaches whatever a failed run left mounted below dir.
func detachUnder(dir string) {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			syscall.Unmount(f[4], syscall.MNT_DETACH)
		}
	}
}
