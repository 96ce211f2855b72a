package bom

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// ErrBadLDCache reports an ld.so.cache file that does not parse.
var ErrBadLDCache = errors.New("bad ld.so.cache")

// LDCacheEntry is one library of the dynamic loader's cache.
type LDCacheEntry struct {
	Name  string // soname, such as "libc.so.6"
	Path  string // host path
	Flags int32  // glibc FLAG_* bits: type in the low byte, architecture above
}

const (
	oldCacheMagic = "ld.so-1.7.0"
	newCacheMagic = "glibc-ld.so.cache"
	newCacheVer   = "1.1"
	maxCacheLibs  = 1 << 20
)

// ParseLDCache parses glibc's /etc/ld.so.cache: the "glibc-ld.so.cache1.1"
// format, optionally preceded by the old "ld.so-1.7.0" table (skipped).
// String offsets in the new format are relative to its header.
func ParseLDCache(data []byte) ([]LDCacheEntry, error) {
	le := binary.LittleEndian
	base := 0
	if bytes.HasPrefix(data, []byte(oldCacheMagic)) {
		// struct cache_file { char magic[11]; char pad[1]; uint32 nlibs;
		// struct file_entry { int32 flags; uint32 key, value; } libs[]; }
		if len(data) < 16 {
			return nil, fmt.Errorf("%w: truncated old header", ErrBadLDCache)
		}
		n := uint64(le.Uint32(data[12:]))
		if n > maxCacheLibs {
			return nil, fmt.Errorf("%w: too many entries", ErrBadLDCache)
		}
		end := 16 + n*12
		end = (end + 7) &^ 7 // the new table is 8-byte aligned
		if end > uint64(len(data)) {
			return nil, fmt.Errorf("%w: truncated old table", ErrBadLDCache)
		}
		base = int(end)
	}
	d := data[base:]
	// struct cache_file_new { char magic[17]; char version[3]; uint32 nlibs;
	// uint32 len_strings; uint8 flags; uint8 pad[3]; uint32 extension_offset;
	// uint32 unused[3]; struct file_entry_new libs[]; }  (48-byte header)
	// file_entry_new { int32 flags; uint32 key, value; uint32 osversion;
	// uint64 hwcap; } (24 bytes)
	if len(d) < 48 || string(d[:17]) != newCacheMagic || string(d[17:20]) != newCacheVer {
		return nil, fmt.Errorf("%w: no %s%s header", ErrBadLDCache, newCacheMagic, newCacheVer)
	}
	n := uint64(le.Uint32(d[20:]))
	if n > maxCacheLibs || 48+n*24 > uint64(len(d)) {
		return nil, fmt.Errorf("%w: entry table exceeds the file", ErrBadLDCache)
	}
	str := func(off uint32) (string, error) {
		o := int(off)
		if o < 0 || o >= len(d) {
			return "", fmt.Errorf("%w: string offset %d out of range", ErrBadLDCache, off)
		}
		end := bytes.IndexByte(d[o:], 0)
		if end < 0 {
			return "", fmt.Errorf("%w: unterminated string", ErrBadLDCache)
		}
		return string(d[o : o+end]), nil
	}
	out := make([]LDCacheEntry, 0, n)
	for i := uint64(0); i < n; i++ {
		e := d[48+i*24:]
		k, err := str(le.Uint32(e[4:]))
		if err != nil {
			return nil, err
		}
		v, err := str(le.Uint32(e[8:]))
		if err != nil {
			return nil, err
		}
		out = append(out, LDCacheEntry{Name: k, Path: v, Flags: int32(le.Uint32(e[0:]))})
	}
	return out, nil
}
