package trustimage

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"

	"github.com/veil-tee/veil/bom"
)

// cacheFile is the rebuild cache's name in the instance directory.
const cacheFile = ".veil-build-cache.json"

// bytecodeDir holds the .pyc files bom.python_bytecode compiles, between
// builds (beside veil.json, like the cache).
const bytecodeDir = ".veil-bytecode"

// buildCache remembers the SHA-256 of every input file by (path, size,
// mtime, inode) and the content digest of the last build, so a rebuild of
// unchanged inputs reads no input file. It is a speed-up only: a missing or
// unreadable cache means a full build.
type buildCache struct {
	Settings string                `json:"settings"`
	Digest   string                `json:"digest"`
	RootHash string                `json:"root_hash"` // of the build the cache describes
	Files    map[string]cacheEntry `json:"files"`
}

type cacheEntry struct {
	Size    int64  `json:"size"`
	MtimeNs int64  `json:"mtime_ns"`
	Inode   uint64 `json:"inode"`
	SHA256  string `json:"sha256"`
}

func loadCache(path string) *buildCache {
	c := &buildCache{Files: map[string]cacheEntry{}}
	data, err := os.ReadFile(path)
	if err != nil {
		return c
	}
	if json.Unmarshal(data, c) != nil || c.Files == nil {
		return &buildCache{Files: map[string]cacheEntry{}}
	}
	return c
}

func (c *buildCache) marshal() ([]byte, error) { return json.Marshal(c) }

// digest computes the content digest from cached hashes alone. hit is false
// if any file is not in the cache as it is now, or violates its pin. Cached
// entries that still hold are copied into nc.
func (c *buildCache) digest(entries []bom.Entry, nc *buildCache) (string, bool) {
	dg := sha256.New()
	io.WriteString(dg, "veil content v1\n"+nc.Settings+"\n")
	for _, e := range entries {
		sum := ""
		if e.Kind == bom.File {
			ce, ok := c.Files[e.Source]
			if !ok || ce.Size != e.Size || ce.MtimeNs != e.ModTime.UnixNano() || ce.Inode != e.Inode {
				return "", false
			}
			if e.SHA256 != "" && e.SHA256 != ce.SHA256 {
				return "", false
			}
			sum = ce.SHA256
			nc.Files[e.Source] = ce
		}
		io.WriteString(dg, manifestLine(e, sum))
	}
	return hex.EncodeToString(dg.Sum(nil)), true
}
