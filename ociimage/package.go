package ociimage

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/veil-tee/veil/config"
	"github.com/veil-tee/veil/trustimage"
)

// Options says what to package.
type Options struct {
	// Instance is the built instance's directory (veil.json and build/).
	Instance string
	// Veil is the veil binary to ship: a static Linux ELF.
	Veil string
	// Version is the shipped veil's version, for the labels.
	Version string
	// Base, if set, is an image archive (OCI layout or docker save
	// format) the image is put on top of.
	Base string
	// Ref names the image in the archive (e.g. localhost/veil-app:latest).
	Ref string
	// Created is the time written into the image; the zero value means
	// the Unix epoch.
	Created time.Time
}

// Result describes a written package.
type Result struct {
	Digest      string // the image manifest's digest, sha256:...
	Size        int64  // bytes of the archive
	VeilBytes   int64  // compressed size of the veil binary's layer
	BuildBytes  int64  // compressed size of the instance's layer
	BaseBytes   int64  // compressed size of the base image's layers
	Measurement string
	Signer      string
	Ref         string
}

// Package writes the instance as an image archive at out (replaced
// atomically).
func Package(ctx context.Context, out string, opts Options) (*Result, error) {
	b, err := trustimage.LoadBuild(opts.Instance)
	if err != nil {
		return nil, err
	}
	arch, veilSum, err := checkBinary(opts.Veil, opts.Base != "")
	if err != nil {
		return nil, err
	}
	created := opts.Created
	if created.IsZero() {
		created = time.Unix(0, 0)
	}
	created = created.UTC()
	ref := opts.Ref
	if ref == "" {
		ref = DefaultRef(opts.Instance)
	}

	tmp, err := os.MkdirTemp(filepath.Dir(out), ".veil-package-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)

	base := empty.Image
	base = mutate.MediaType(base, types.OCIManifestSchema1)
	base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
	var baseDigest string
	if opts.Base != "" {
		if base, err = readBase(ctx, opts.Base, filepath.Join(tmp, "base")); err != nil {
			return nil, fmt.Errorf("reading base image %s: %w", opts.Base, err)
		}
		d, err := base.Digest()
		if err != nil {
			return nil, fmt.Errorf("reading base image %s: %w", opts.Base, err)
		}
		baseDigest = d.String()
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	veilLayer, err := writeLayer(tmp, []entry{{name: strings.TrimPrefix(VeilPath, "/"), src: opts.Veil, mode: 0o755}}, created, gzip.DefaultCompression)
	if err != nil {
		return nil, fmt.Errorf("writing the veil layer: %w", err)
	}
	inst := strings.TrimPrefix(InstancePath, "/")
	buildDir := filepath.Join(b.Dir, "build")
	// The build is already compressed (squashfs): the fastest gzip level
	// costs little size.
	buildLayer, err := writeLayer(tmp, []entry{
		{name: inst + "/" + config.FileName, src: filepath.Join(b.Dir, config.FileName), mode: 0o644},
		{name: inst + "/build/" + trustimage.RecordFile, src: filepath.Join(buildDir, trustimage.RecordFile), mode: 0o644},
		{name: inst + "/build/" + trustimage.ImageFile, src: b.ImagePath, mode: 0o644},
	}, created, gzip.BestSpeed)
	if err != nil {
		return nil, fmt.Errorf("writing the instance layer: %w", err)
	}
	// The build may have changed while it was copied: check the copy.
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	hist := func(what string) v1.History {
		return v1.History{Created: v1.Time{Time: created}, CreatedBy: "veil package: " + what}
	}
	img, err := mutate.Append(base,
		mutate.Addendum{Layer: veilLayer, History: hist("veil " + opts.Version), MediaType: types.OCILayer},
		mutate.Addendum{Layer: buildLayer, History: hist("instance " + b.MeasurementHex()), MediaType: types.OCILayer},
	)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	name := filepath.Base(filepath.Clean(b.Dir))
	labels := map[string]string{
		KeyMeasurement: b.MeasurementHex(),
		KeySigner:      b.MrSignerHex(),
		KeyVersion:     opts.Version,
		KeyVeilSHA256:  veilSum,
		KeyProductID:   strconv.Itoa(int(b.ProductID())),
		KeySVN:         strconv.Itoa(int(b.SVN())),
		KeyDebuggable:  strconv.FormatBool(b.Debuggable()),
		keyTitle:       name,
		keyDescription: "veil instance " + name + ": veil run -C " + InstancePath,
		keyCreated:     created.Format(time.RFC3339),
		keyVersion:     "svn" + strconv.Itoa(int(b.SVN())),
	}
	if baseDigest != "" {
		labels[keyBaseDigest] = baseDigest
	}
	cf.Created = v1.Time{Time: created}
	cf.OS = "linux"
	cf.Architecture = arch
	cf.Config.Entrypoint = []string{VeilPath, "run", "-C", InstancePath}
	cf.Config.Cmd = nil
	cf.Config.WorkingDir = "/"
	if !hasEnv(cf.Config.Env, "PATH") {
		cf.Config.Env = append(cf.Config.Env, "PATH=/usr/local/bin:/usr/bin:/bin")
	}
	if cf.Config.Labels == nil {
		cf.Config.Labels = map[string]string{}
	}
	for k, v := range labels {
		cf.Config.Labels[k] = v
	}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return nil, err
	}
	img, ok := mutate.Annotations(img, labels).(v1.Image)
	if !ok {
		return nil, errors.New("annotating the image: unexpected type")
	}

	res := &Result{Measurement: b.MeasurementHex(), Signer: b.MrSignerHex(), Ref: ref,
		VeilBytes: veilLayer.size, BuildBytes: buildLayer.size}
	part := filepath.Join(tmp, "archive")
	if err := writeArchive(ctx, part, img, ref, res); err != nil {
		return nil, fmt.Errorf("writing %s: %w", out, err)
	}
	// The build read for the layer must still be the one measured.
	if _, err := trustimage.LoadBuild(opts.Instance); err != nil {
		return nil, fmt.Errorf("the build changed while it was packaged: %w", err)
	}
	if err := os.Rename(part, out); err != nil {
		return nil, err
	}
	return res, nil
}

// DefaultRef is the image name used when none is given: the instance
// directory's name, lowercased, under localhost/.
func DefaultRef(dir string) string {
	n := strings.ToLower(filepath.Base(filepath.Clean(dir)))
	var sb strings.Builder
	for _, r := range n {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') || r == '-' || r == '.' || r == '_' {
			sb.WriteRune(r)
		} else {
			sb.WriteByte('-')
		}
	}
	s := strings.Trim(sb.String(), "-._")
	if s == "" {
		s = "instance"
	}
	return "localhost/veil-" + s + ":latest"
}

func hasEnv(env []string, k string) bool {
	for _, e := range env {
		if strings.HasPrefix(e, k+"=") {
			return true
		}
	}
	return false
}

// checkBinary returns the binary's OCI architecture and SHA-256; without a
// base image the binary must be static, as there is no libc to load.
func checkBinary(p string, haveBase bool) (string, string, error) {
	f, err := elf.Open(p)
	if err != nil {
		return "", "", fmt.Errorf("%w: %s: %v", ErrBadBinary, p, err)
	}
	defer f.Close()
	var arch string
	switch f.Machine {
	case elf.EM_X86_64:
		arch = "amd64"
	case elf.EM_AARCH64:
		arch = "arm64"
	default:
		return "", "", fmt.Errorf("%w: %s: unsupported machine %v", ErrBadBinary, p, f.Machine)
	}
	if !haveBase {
		for _, prog := range f.Progs {
			if prog.Type == elf.PT_INTERP {
				return "", "", fmt.Errorf("%w: %s is dynamically linked and the image has no base", ErrBadBinary, p)
			}
		}
	}
	in, err := os.Open(p)
	if err != nil {
		return "", "", err
	}
	defer in.Close()
	h := sha256.New()
	if _, err := io.Copy(h, in); err != nil {
		return "", "", err
	}
	return arch, hex.EncodeToString(h.Sum(nil)), nil
}

// readBase reads an image archive: an OCI layout in a tar (the first image
// of its index) or a docker save archive.
func readBase(ctx context.Context, archive, dir string) (v1.Image, error) {
	if err := extractArchive(ctx, archive, dir); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(dir, "index.json")); err == nil {
		idx, err := layout.ImageIndexFromPath(dir)
		if err != nil {
			return nil, err
		}
		im, err := idx.IndexManifest()
		if err != nil {
			return nil, err
		}
		for _, d := range im.Manifests {
			if d.MediaType.IsImage() {
				return idx.Image(d.Digest)
			}
		}
		return nil, errors.New("the archive's index names no image")
	}
	return tarball.ImageFromPath(archive, nil)
}

// writeArchive writes img as an OCI image layout in a tar file, with a
// Docker manifest.json for older docker load; entries are sorted and
// timeless, so equal images give equal archives.
func writeArchive(ctx context.Context, out string, img v1.Image, ref string, res *Result) error {
	rawManifest, err := img.RawManifest()
	if err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	rawConfig, err := img.RawConfigFile()
	if err != nil {
		return err
	}
	configName, err := img.ConfigName()
	if err != nil {
		return err
	}
	mt, err := img.MediaType()
	if err != nil {
		return err
	}
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	type blob struct {
		data  []byte
		layer v1.Layer
		size  int64
	}
	blobs := map[string]blob{
		digest.Hex:     {data: rawManifest},
		configName.Hex: {data: rawConfig},
	}
	var layerPaths []string
	for i, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return err
		}
		sz, err := l.Size()
		if err != nil {
			return err
		}
		if i < len(layers)-2 {
			res.BaseBytes += sz
		}
		blobs[d.Hex] = blob{layer: l, size: sz}
		layerPaths = append(layerPaths, "blobs/sha256/"+d.Hex)
	}
	tag := "latest"
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		tag = ref[i+1:]
	}
	index, err := json.Marshal(v1.IndexManifest{
		SchemaVersion: 2,
		MediaType:     types.OCIImageIndex,
		Manifests: []v1.Descriptor{{
			MediaType:   mt,
			Size:        int64(len(rawManifest)),
			Digest:      digest,
			Annotations: map[string]string{keyImageName: ref, keyRefName: tag},
		}},
	})
	if err != nil {
		return err
	}
	docker, err := json.Marshal([]map[string]any{{
		"Config":   "blobs/sha256/" + configName.Hex,
		"RepoTags": []string{ref},
		"Layers":   layerPaths,
	}})
	if err != nil {
		return err
	}

	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	dir := func(n string) error {
		return tw.WriteHeader(&tar.Header{Name: n, Typeflag: tar.TypeDir, Mode: 0o755, ModTime: time.Unix(0, 0), Format: tar.FormatPAX})
	}
	file := func(n string, size int64, r io.Reader) error {
		if err := tw.WriteHeader(&tar.Header{Name: n, Typeflag: tar.TypeReg, Mode: 0o644, Size: size, ModTime: time.Unix(0, 0), Format: tar.FormatPAX}); err != nil {
			return err
		}
		_, err := io.Copy(tw, r)
		return err
	}
	if err := dir("blobs/"); err != nil {
		return err
	}
	if err := dir("blobs/sha256/"); err != nil {
		return err
	}
	hexes := make([]string, 0, len(blobs))
	for h := range blobs {
		hexes = append(hexes, h)
	}
	sort.Strings(hexes)
	for _, h := range hexes {
		if err := ctx.Err(); err != nil {
			return err
		}
		bl := blobs[h]
		if bl.layer == nil {
			err = file("blobs/sha256/"+h, int64(len(bl.data)), strings.NewReader(string(bl.data)))
		} else {
			var rc io.ReadCloser
			if rc, err = bl.layer.Compressed(); err == nil {
				err = file("blobs/sha256/"+h, bl.size, rc)
				rc.Close()
			}
		}
		if err != nil {
			return err
		}
	}
	for _, e := range []struct {
		name string
		data []byte
	}{
		{"index.json", index},
		{"manifest.json", docker},
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
	} {
		if err := file(e.name, int64(len(e.data)), strings.NewReader(string(e.data))); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil {
		return err
	}
	res.Digest = digest.String()
	res.Size = st.Size()
	return f.Close()
}
