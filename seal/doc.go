// Package seal implements veil's sealed-file format: a file encrypted and
// authenticated as a whole under a fresh per-file data-encryption key (DEK),
// whose header says, in one or more key slots, how the DEK is obtained.
//
// What it protects against: anyone who can read or change the stored bytes
// but holds none of the keys learns nothing but the plaintext length, and
// cannot change the content undetected — bit flips, truncation (also at a
// segment boundary), extension, reordering or splicing of segments, headers
// or segments taken from another sealed file, and the replacement of a
// segment by an older version of itself from the same file are all reported
// as integrity errors naming the offset. A torn write (a crash between
// writing data and committing it) is reported on the next open. A file
// sealed with Options.Place (format version 2) is bound to a mount and a
// path: opened with another place it is an integrity error naming the path
// it is bound to, so files swapped or moved by the host, also between
// mounts under the same key, are refused; Rebind moves the binding by
// rewriting the place block alone.
//
// What it does not protect against: rolling back the whole file to an
// earlier complete version (this needs state outside the file, such as a
// version counter kept by a key service); swaps and moves of version 1
// (unbound) files, and deletion of any file; a party that holds a key that
// opens one of the slots; traffic analysis of file sizes and write patterns.
//
// The format is specified in docs/formats/sealed-file.md. Three ways in:
// Writer and Reader seal and open streams (pipes of unknown length, in
// parallel on all cores; their goroutines start with the first batch and
// Close stops them and waits for them); File opens a sealed file for random-access reads
// (io.ReaderAt, one segment of work per read after Open), in-place writes and
// appends, as used by the runtime's sealed mounts.
package seal
