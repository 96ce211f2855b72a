package bom

import (
	"io/fs"
	"time"
)

// Kind is the type of an image entry.
type Kind uint8

// Entry kinds.
const (
	Dir Kind = iota + 1
	File
	Symlink
)

func (k Kind) String() string {
	switch k {
	case Dir:
		return "dir"
	case File:
		return "file"
	case Symlink:
		return "symlink"
	}
	return "unknown"
}

// Entry is one path of the image to build.
type Entry struct {
	Path   string      // absolute, clean path inside the image
	Kind   Kind        // Dir, File or Symlink
	Mode   fs.FileMode // permission bits (0777 mask)
	Source string      // File: host path of the content
	Link   string      // Symlink: target, as stored
	SHA256 string      // File: optional pin (hex), checked at build time
	Origin string      // where the entry comes from, for messages ("image/", "bom.copy[2]", "ELF dependency of /usr/bin/python3")

	// Stat of Source when planned (File only), for the rebuild cache.
	Size    int64
	ModTime time.Time
	Inode   uint64
}
