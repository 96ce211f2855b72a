// Package fusefs serves veil's file systems through FUSE: the sealed
// file system (read-write, every file a sealed file) now, the verified image
// (read-only) with the runtime.
//
// Sealed mounts protect the content of files — confidentiality and
// integrity, including truncation, rollback of single segments and torn
// writes, as package seal describes — from whoever controls the backing
// directory. They do not hide file names, the directory structure, file
// sizes, timestamps or access patterns from the host, and a host can delete
// or roll back whole files. A file that fails authentication is an I/O
// error (EIO) to the program and a log line naming the file and the offset.
package fusefs
