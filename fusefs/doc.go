// Package fusefs serves veil's file systems through FUSE: the sealed
// file system (read-write, every file a sealed file) and the verified image
// (read-only, MountImage).
//
// Sealed mounts protect the content of files — confidentiality and
// integrity, including truncation, rollback of single segments and torn
// writes, as package seal describes — from whoever controls the backing
// directory. Every file created in a sealed mount is bound to the mount's
// id and its path below the mount root (seal format version 2): a file the
// host swapped with another, moved, or copied in from another mount under
// the same key is EIO, and the log line names the path it is bound to. A
// rename through the mount re-binds the files it moves (a header rewrite);
// a path too long for a file's place block is EXDEV, so mv(1) copies.
// Sealed mounts do not hide file names, the directory structure, file
// sizes, timestamps or access patterns from the host, and a host can delete
// or roll back whole files; files sealed unbound (format version 1, or
// `veil encrypt` without --bind-path) can be swapped. A file that fails
// authentication is an I/O error (EIO) to the program and a log line naming
// the file and the offset.
//
// The attestation files (MountAttestation) give a program evidence bound
// under the workload label with its instance measurement
// (docs/formats/report-data.md): it can never pass as the runtime's
// evidence, which the key service requires.
//
// Image mounts serve only bytes the trustimage.Reader verified against the
// image's hash tree (and decrypted): a bad block is EIO and a log line
// naming the file, the offset and the block. They refuse every change
// (EROFS). They do not hide access patterns from the host, nor keep it from
// making the mount fail; pages already read stay in the kernel's page
// cache. See docs/formats/image.md, "Image mount".
package fusefs
