// Package fusefs serves veil's file systems through FUSE: the sealed
// file system (read-write, every file a sealed file) and the verified image
// (read-only, MountImage).
//
// Sealed mounts protect the content of files — confidentiality and
// integrity, including truncation, rollback of single segments and torn
// writes, as package seal describes — from whoever controls the backing
// directory. They do not hide file names, the directory structure, file
// sizes, timestamps or access patterns from the host, and a host can delete
// or roll back whole files. A file that fails authentication is an I/O
// error (EIO) to the program and a log line naming the file and the offset.
//
// Image mounts serve only bytes the trustimage.Reader verified against the
// image's hash tree (and decrypted): a bad block is EIO and a log line
// naming the file, the offset and the block. They refuse every change
// (EROFS). They do not hide access patterns from the host, nor keep it from
// making the mount fail; pages already read stay in the kernel's page
// cache. See docs/formats/image.md, "Image mount".
package fusefs
