package ociimage

import (
	"archive/tar"
	"compress/gzip"
	"crypto/sha256"
	"fmt"
	"hash"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// entry is one file or directory of a layer: name is its path in the image
// without the leading slash; src is the host file for a regular file.
type entry struct {
	name string
	src  string
	mode int64
}

// fileLayer is a gzip-compressed layer written once to a temporary file,
// with both of its digests computed in the same pass.
type fileLayer struct {
	path           string
	digest, diffID v1.Hash
	size, rawSize  int64
}

var _ v1.Layer = (*fileLayer)(nil)

func (l *fileLayer) Digest() (v1.Hash, error)            { return l.digest, nil }
func (l *fileLayer) DiffID() (v1.Hash, error)            { return l.diffID, nil }
func (l *fileLayer) Size() (int64, error)                { return l.size, nil }
func (l *fileLayer) MediaType() (types.MediaType, error) { return types.OCILayer, nil }
func (l *fileLayer) Compressed() (io.ReadCloser, error)  { return os.Open(l.path) }
func (l *fileLayer) Uncompressed() (io.ReadCloser, error) {
	f, err := os.Open(l.path)
	if err != nil {
		return nil, err
	}
	z, err := gzip.NewReader(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	return readCloser{z, f}, nil
}

type readCloser struct {
	io.Reader
	f *os.File
}

func (r readCloser) Close() error { return r.f.Close() }

type counter struct{ n int64 }

func (c *counter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// writeLayer writes entries, with their parent directories, as a layer in
// tmpDir. Entries are sorted; every header has owner 0:0, the given time,
// the entry's mode and no user or group names, so equal inputs give equal
// bytes.
func writeLayer(tmpDir string, entries []entry, mtime time.Time, level int) (*fileLayer, error) {
	all := map[string]entry{}
	for _, e := range entries {
		all[e.name] = e
		for d := path.Dir(e.name); d != "." && d != "/"; d = path.Dir(d) {
			if _, ok := all[d+"/"]; !ok {
				all[d+"/"] = entry{name: d + "/", mode: 0o755}
			}
		}
	}
	names := make([]string, 0, len(all))
	for n := range all {
		names = append(names, n)
	}
	sort.Strings(names)

	f, err := os.CreateTemp(tmpDir, "layer-")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	dig, diff := sha256.New(), sha256.New()
	var zc, rc counter
	z, err := gzip.NewWriterLevel(io.MultiWriter(f, dig, &zc), level)
	if err != nil {
		return nil, err
	}
	tw := tar.NewWriter(io.MultiWriter(z, diff, &rc))
	for _, n := range names {
		e := all[n]
		hdr := &tar.Header{Name: n, Mode: e.mode, ModTime: mtime, Format: tar.FormatPAX}
		if strings.HasSuffix(n, "/") {
			hdr.Typeflag = tar.TypeDir
			if err := tw.WriteHeader(hdr); err != nil {
				return nil, err
			}
			continue
		}
		if err := addFile(tw, hdr, e.src); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := z.Close(); err != nil {
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	return &fileLayer{path: f.Name(), digest: sum(dig), diffID: sum(diff), size: zc.n, rawSize: rc.n}, nil
}

func addFile(tw *tar.Writer, hdr *tar.Header, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file", src)
	}
	hdr.Typeflag = tar.TypeReg
	hdr.Size = st.Size()
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	n, err := io.Copy(tw, in)
	if err != nil {
		return fmt.Errorf("reading %s: %w", src, err)
	}
	if n != hdr.Size {
		return fmt.Errorf("%s changed while it was packaged", src)
	}
	return nil
}

func sum(h hash.Hash) v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", h.Sum(nil))}
}
