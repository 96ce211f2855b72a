package instance

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"

	"github.com/veil-tee/veil/config"
	"github.com/veil-tee/veil/gramine/pf"
)

// GraminePFMount is what a mount of Gramine protected files needs.
type GraminePFMount struct {
	Key    pf.Key // the 16-byte wrap key
	PFPath string // the directory as Gramine names it
}

// graminePFMount loads the wrap key of a gramine-pf sealed mount and
// checks it against one existing file, as the program will open it.
func graminePFMount(m config.Mount, src string) (*SealedMount, error) {
	ref, err := config.ParseKeyRef(m.Key)
	if err != nil {
		return nil, err
	}
	if ref.Kind != "file" {
		return nil, fmt.Errorf("format %s takes a wrap key file, not %s", config.FormatGraminePF, m.Key)
	}
	f, err := os.Open(ref.ID)
	if err != nil {
		return nil, fmt.Errorf("reading wrap key: %w", err)
	}
	b, err := io.ReadAll(io.LimitReader(f, 4096))
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("reading wrap key %s: %w", ref.ID, err)
	}
	key, err := pf.ParseKey(b)
	clear(b)
	if err != nil {
		return nil, fmt.Errorf("reading wrap key %s: %w", ref.ID, err)
	}
	g := &GraminePFMount{Key: key, PFPath: m.PFPath}
	if p := firstPF(src); p != "" {
		rel, _ := filepath.Rel(src, p)
		osf, err := os.Open(p)
		if err == nil {
			var fi os.FileInfo
			if fi, err = osf.Stat(); err == nil {
				var pff *pf.File
				pff, err = pf.Open(osf, fi.Size(), key, pf.NormPath(path.Join(m.PFPath, filepath.ToSlash(rel))), nil)
				if err == nil {
					pff.Close()
				}
			}
			osf.Close()
		}
		if err != nil {
			return nil, fmt.Errorf("opening %s: %w", rel, err)
		}
	}
	return &SealedMount{Source: src, ReadOnly: m.ReadOnly, GraminePF: g}, nil
}

// firstPF returns a protected file under dir, or "".
func firstPF(dir string) string {
	found, seen := "", 0
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || seen > 1000 {
			return filepath.SkipAll
		}
		seen++
		if d.Type().IsRegular() {
			if f, err := os.Open(p); err == nil {
				head := make([]byte, len(pf.Magic))
				n, _ := io.ReadFull(f, head)
				f.Close()
				if pf.IsPF(head[:n]) {
					found = p
					return filepath.SkipAll
				}
			}
		}
		return nil
	})
	return found
}
