package ociimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/veil-tee/veil/trustimage"
)

// UnpackOptions says what Unpack expects of the image.
type UnpackOptions struct {
	// Measurement, if set (hex), is the measurement the instance must have.
	Measurement string
}

// Unpacked describes an unpacked image.
type Unpacked struct {
	Digest      string // the manifest's digest
	Measurement string
	Signer      string
	Version     string
	Veil        string // the veil binary, under the root
	Instance    string // the instance directory, under the root
}

// veil's files in its two layers: nothing else may be in them.
var allowed = map[string]bool{
	"usr/": true, "usr/local/": true, "usr/local/bin/": true, "usr/local/bin/veil": true,
	"instance/": true, "instance/build/": true, "instance/veil.json": true,
	"instance/build/" + trustimage.RecordFile: true, "instance/build/" + trustimage.ImageFile: true,
}

// Unpack checks the image archive and writes veil's layers into root (a
// new or empty directory): root/usr/local/bin/veil and root/instance. Every
// blob is checked against its digest, the build's signature, measurement
// and signer against the annotations (and opts.Measurement), and every
// image block against the hash tree, before root is filled.
func Unpack(ctx context.Context, archive, root string, opts UnpackOptions) (*Unpacked, error) {
	if ents, err := os.ReadDir(root); err == nil && len(ents) > 0 {
		return nil, fmt.Errorf("%s is not empty", root)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	parent := filepath.Dir(filepath.Clean(root))
	tmp, err := os.MkdirTemp(parent, ".veil-unpack-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	lay := filepath.Join(tmp, "layout")
	if err := extractArchive(ctx, archive, lay); err != nil {
		return nil, fmt.Errorf("reading %s: %w", archive, err)
	}
	u, err := unpackLayout(ctx, lay, filepath.Join(tmp, "root"), opts)
	if err != nil {
		return nil, err
	}
	os.Remove(root) // an empty directory is replaced
	if err := os.Rename(filepath.Join(tmp, "root"), root); err != nil {
		return nil, err
	}
	u.Veil = filepath.Join(root, VeilPath)
	u.Instance = filepath.Join(root, InstancePath)
	return u, nil
}

func unpackLayout(ctx context.Context, lay, root string, opts UnpackOptions) (*Unpacked, error) {
	raw, err := os.ReadFile(filepath.Join(lay, "index.json"))
	if err != nil {
		return nil, fmt.Errorf("%w: no OCI index: %v", ErrNotPackage, err)
	}
	idx, err := v1.ParseIndexManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("%w: reading index.json: %v", ErrNotPackage, err)
	}
	if len(idx.Manifests) != 1 || !idx.Manifests[0].MediaType.IsImage() {
		return nil, fmt.Errorf("%w: the index must name exactly one image", ErrNotPackage)
	}
	desc := idx.Manifests[0]
	rawManifest, err := readBlob(lay, desc.Digest)
	if err != nil {
		return nil, fmt.Errorf("reading the manifest: %w", err)
	}
	m, err := v1.ParseManifest(bytes.NewReader(rawManifest))
	if err != nil {
		return nil, fmt.Errorf("%w: reading the manifest: %v", ErrNotPackage, err)
	}
	rawConfig, err := readBlob(lay, m.Config.Digest)
	if err != nil {
		return nil, fmt.Errorf("reading the image config: %w", err)
	}
	cf, err := v1.ParseConfigFile(bytes.NewReader(rawConfig))
	if err != nil {
		return nil, fmt.Errorf("%w: reading the image config: %v", ErrNotPackage, err)
	}
	n := len(m.Layers)
	if n < 2 || len(cf.RootFS.DiffIDs) != n {
		return nil, fmt.Errorf("%w: %d layers, %d diff ids", ErrNotPackage, n, len(cf.RootFS.DiffIDs))
	}
	ann := m.Annotations
	for _, k := range []string{KeyMeasurement, KeySigner, KeyVeilSHA256} {
		if ann[k] == "" || cf.Config.Labels[k] != ann[k] {
			return nil, fmt.Errorf("%w: annotation %s missing or unlike the config's label", ErrNotPackage, k)
		}
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, err
	}
	for i, l := range m.Layers {
		// Base layers are checked, veil's two extracted.
		extract := i >= n-2
		if err := readLayer(ctx, lay, l, cf.RootFS.DiffIDs[i], root, extract); err != nil {
			return nil, fmt.Errorf("layer %d of %d (%s): %w", i+1, n, l.Digest, err)
		}
	}

	veilSum, err := fileSHA256(filepath.Join(root, VeilPath))
	if err != nil {
		return nil, fmt.Errorf("%w: no veil binary: %v", ErrNotPackage, err)
	}
	if !equalHex(veilSum, ann[KeyVeilSHA256]) {
		return nil, fmt.Errorf("%w: the veil binary's SHA-256 is %s, the annotation says %s", ErrTampered, veilSum, ann[KeyVeilSHA256])
	}
	inst := filepath.Join(root, InstancePath)
	b, err := trustimage.LoadBuild(inst)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrTampered, err)
	}
	if !equalHex(b.MeasurementHex(), ann[KeyMeasurement]) {
		return nil, fmt.Errorf("%w: the instance's measurement is %s, the annotation says %s", ErrMismatch, b.MeasurementHex(), ann[KeyMeasurement])
	}
	if !equalHex(b.MrSignerHex(), ann[KeySigner]) {
		return nil, fmt.Errorf("%w: the instance's signer is %s, the annotation says %s", ErrMismatch, b.MrSignerHex(), ann[KeySigner])
	}
	if opts.Measurement != "" && !equalHex(b.MeasurementHex(), strings.ToLower(opts.Measurement)) {
		return nil, fmt.Errorf("%w: the instance's measurement is %s, expected %s", ErrMismatch, b.MeasurementHex(), opts.Measurement)
	}
	r, err := b.Open(nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrTampered, err)
	}
	defer r.Close()
	if err := r.Verify(ctx, nil); err != nil {
		return nil, fmt.Errorf("%w: verifying the instance's image: %w", ErrTampered, err)
	}
	return &Unpacked{Digest: desc.Digest.String(), Measurement: b.MeasurementHex(), Signer: b.MrSignerHex(), Version: ann[KeyVersion]}, nil
}

func equalHex(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }

func blobPath(lay string, d v1.Hash) (string, error) {
	if d.Algorithm != "sha256" || len(d.Hex) != 64 {
		return "", fmt.Errorf("%w: unsupported digest %s", ErrNotPackage, d)
	}
	if _, err := hex.DecodeString(d.Hex); err != nil {
		return "", fmt.Errorf("%w: bad digest %s", ErrNotPackage, d)
	}
	return filepath.Join(lay, "blobs", "sha256", d.Hex), nil
}

// readBlob reads a small blob and checks it against its digest.
func readBlob(lay string, d v1.Hash) ([]byte, error) {
	p, err := blobPath(lay, d)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("%w: blob %s missing", ErrNotPackage, d)
	}
	if got := sha256.Sum256(data); !equalHex(hex.EncodeToString(got[:]), d.Hex) {
		return nil, fmt.Errorf("%w: blob %s has digest sha256:%x", ErrTampered, d, got)
	}
	return data, nil
}

// readLayer streams one layer, checking its digest and diff id, and
// extracts veil's files into root when extract is set.
func readLayer(ctx context.Context, lay string, desc v1.Descriptor, diffID v1.Hash, root string, extract bool) error {
	p, err := blobPath(lay, desc.Digest)
	if err != nil {
		return err
	}
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("%w: blob missing", ErrNotPackage)
	}
	defer f.Close()
	dig, diff := sha256.New(), sha256.New()
	var raw io.Reader = io.TeeReader(f, dig)
	switch desc.MediaType {
	case types.OCILayer, types.DockerLayer:
		z, err := gzip.NewReader(raw)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrTampered, err)
		}
		raw = z
	case types.OCIUncompressedLayer, types.DockerUncompressedLayer:
	default:
		if extract {
			return fmt.Errorf("%w: layer media type %s", ErrNotPackage, desc.MediaType)
		}
		// A base layer of another kind: only its digest is checked.
		raw = nil
	}
	if raw != nil {
		tr := io.TeeReader(raw, diff)
		if extract {
			err = extractLayer(ctx, tar.NewReader(tr), root)
		}
		if err == nil {
			_, err = io.Copy(io.Discard, tr) // tar padding, and all of a base layer
		}
		if err != nil {
			if errors.Is(err, ErrNotPackage) || errors.Is(err, context.Canceled) {
				return err
			}
			return fmt.Errorf("%w: %v", ErrTampered, err)
		}
	}
	if _, err := io.Copy(io.Discard, io.TeeReader(f, dig)); err != nil {
		return err
	}
	if got := sum(dig); got != desc.Digest {
		return fmt.Errorf("%w: its content has digest %s", ErrTampered, got)
	}
	if raw != nil {
		if got := sum(diff); got != diffID {
			return fmt.Errorf("%w: its uncompressed content has digest %s, the config says %s", ErrTampered, got, diffID)
		}
	}
	return nil
}

// extractLayer writes veil's files from a layer under root: regular files
// and directories at the paths veil puts there, nothing else.
func extractLayer(ctx context.Context, tr *tar.Reader, root string) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		name := hdr.Name
		if !allowed[name] || path.Clean("/"+name) != "/"+strings.TrimSuffix(name, "/") {
			return fmt.Errorf("%w: unexpected entry %q", ErrNotPackage, name)
		}
		dst := filepath.Join(root, filepath.FromSlash(name))
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(dst, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			mode := os.FileMode(0o644)
			if hdr.Mode&0o111 != 0 {
				mode = 0o755
			}
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return err
			}
			out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
			if err != nil {
				return err
			}
			_, err = io.Copy(out, tr)
			if cerr := out.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		default:
			return fmt.Errorf("%w: entry %q is not a file or directory", ErrNotPackage, name)
		}
	}
}

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// extractArchive unpacks an image archive (regular files and directories
// at relative paths only) into dir.
func extractArchive(ctx context.Context, archive, dir string) error {
	f, err := os.Open(archive)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tr := tar.NewReader(f)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w: %v", ErrNotPackage, err)
		}
		clean := path.Clean(hdr.Name)
		if path.IsAbs(clean) || clean == ".." || strings.HasPrefix(clean, "../") {
			return fmt.Errorf("%w: entry %q leaves the archive", ErrNotPackage, hdr.Name)
		}
		dst := filepath.Join(dir, filepath.FromSlash(clean))
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(dst, 0o700); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
				return err
			}
			out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
			if err != nil {
				return err
			}
			_, err = io.Copy(out, tr)
			if cerr := out.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		default:
			// Links and devices have no place in an image archive.
			return fmt.Errorf("%w: entry %q is not a file or directory", ErrNotPackage, hdr.Name)
		}
	}
}
