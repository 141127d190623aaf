//! What tells one file from another: its `(device, inode)` ([`FileKey`]),
//! which survives renames by rotation, and a checksum of its first bytes
//! ([`Fingerprint`]), which tells it from a new file that reuses a deleted
//! file's inode and from itself rewritten or cut in place
//! ([`ResetReason`]).
//!
//! Discovery, the readers, the checkpoints and the per-file metrics all
//! speak of files in these terms; this module depends on nothing else in
//! the agent, so each of them can use it without using the others.

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Identity of a file that survives renames: device and inode numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FileKey {
    /// `st_dev`
    pub dev: u64,
    /// `st_ino`
    pub inode: u64,
}

impl FileKey {
    /// The key of a file from its metadata.
    pub fn of(metadata: &fs::Metadata) -> FileKey {
        FileKey {
            dev: metadata.dev(),
            inode: metadata.ino(),
        }
    }
}

/// How many leading bytes of a file make its fingerprint.
pub const FINGERPRINT_BYTES: usize = 256;

/// A checksum of the first bytes of a file (up to [`FINGERPRINT_BYTES`]):
/// with `(device, inode)` it tells a file from a new file that reuses a
/// deleted file's inode, and a rewritten file from the one we read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// How many bytes were summed (fewer than 256 while the file is short).
    pub len: u32,
    /// CRC-32 of those bytes.
    pub crc: u32,
}

impl Fingerprint {
    /// The fingerprint of a file whose first bytes are `head`.
    pub fn of(head: &[u8]) -> Fingerprint {
        let head = &head[..head.len().min(FINGERPRINT_BYTES)];
        Fingerprint {
            len: head.len() as u32,
            crc: crc32fast::hash(head),
        }
    }

    /// Whether a file starting with `head` is the file this was taken of:
    /// it must still have the summed bytes, and they must be the same.
    pub fn matches(&self, head: &[u8]) -> bool {
        let len = self.len as usize;
        head.len() >= len && crc32fast::hash(&head[..len]) == self.crc
    }

    /// Whether a file of `size` bytes starting with `head` holds the
    /// bytes this was taken of as a copy would: a full 256-byte
    /// fingerprint, or a short one of exactly the file's length, never a
    /// short common prefix (a timestamp).
    pub fn covers(&self, head: &[u8], size: u64) -> bool {
        self.len > 0
            && (self.len as usize == FINGERPRINT_BYTES || u64::from(self.len) == size)
            && self.matches(head)
    }

    pub(crate) fn pack(self) -> u64 {
        (u64::from(self.len) << 32) | u64::from(self.crc)
    }

    pub(crate) fn unpack(packed: u64) -> Fingerprint {
        Fingerprint {
            len: (packed >> 32) as u32,
            crc: packed as u32,
        }
    }
}

/// Why the file at a known identity is not the content known of it, so an
/// offset into that content does not fit it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// The file is shorter than the stored offset (truncated).
    Truncated,
    /// The first bytes differ: a new file reusing the inode, or rewritten.
    Fingerprint,
}

/// The first `min(size, 256)` bytes of `file`, of which its fingerprint is
/// taken. Blocking.
pub(crate) fn read_head(file: &fs::File, size: u64) -> std::io::Result<Vec<u8>> {
    let wanted = usize::try_from(size)
        .unwrap_or(usize::MAX)
        .min(FINGERPRINT_BYTES);
    let mut head = vec![0u8; wanted];
    let mut filled = 0;
    while filled < wanted {
        let read = file.read_at(&mut head[filled..], filled as u64)?;
        if read == 0 {
            break;
        }
        filled += read;
    }
    head.truncate(filled);
    Ok(head)
}

/// The regular file with identity `key` in `dir`, if any. Blocking.
pub(crate) fn find_in_dir(dir: &Path, key: FileKey) -> Option<PathBuf> {
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|entry| entry.path())
        .find(|candidate| {
            fs::symlink_metadata(candidate)
                .is_ok_and(|metadata| metadata.is_file() && FileKey::of(&metadata) == key)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_covers_at_most_the_first_256_bytes() {
        let long = vec![b'x'; 1000];
        let fingerprint = Fingerprint::of(&long);
        assert_eq!(fingerprint.len, 256);
        let mut other = long.clone();
        other[500] = b'y';
        assert!(fingerprint.matches(&other));
        other[10] = b'y';
        assert!(!fingerprint.matches(&other));
        assert!(!fingerprint.matches(&long[..100]), "shorter file");
        assert_eq!(Fingerprint::unpack(fingerprint.pack()), fingerprint);
        assert!(Fingerprint::of(b"").matches(b"anything"));
    }

    #[test]
    fn a_renamed_file_keeps_its_key_and_is_found_by_it() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("0.log");
        fs::write(&live, b"first generation\n").unwrap();
        let key = FileKey::of(&fs::metadata(&live).unwrap());
        let rotated = dir.path().join("0.log.1");
        fs::rename(&live, &rotated).unwrap();
        fs::write(&live, b"second generation\n").unwrap();
        assert_eq!(FileKey::of(&fs::metadata(&rotated).unwrap()), key);
        assert_ne!(FileKey::of(&fs::metadata(&live).unwrap()), key);
        assert_eq!(find_in_dir(dir.path(), key), Some(rotated.clone()));
        fs::remove_file(&rotated).unwrap();
        assert_eq!(find_in_dir(dir.path(), key), None);
    }

    #[test]
    fn the_head_is_at_most_the_fingerprinted_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        let content: Vec<u8> = (0..1000u32).map(|i| b'a' + (i % 26) as u8).collect();
        fs::write(&path, &content).unwrap();
        let file = fs::File::open(&path).unwrap();
        assert_eq!(
            read_head(&file, 1000).unwrap(),
            &content[..FINGERPRINT_BYTES]
        );
        assert_eq!(read_head(&file, 10).unwrap(), &content[..10]);
        // A size seen before the file shrank: only what is there.
        fs::write(&path, b"short").unwrap();
        assert_eq!(read_head(&file, 1000).unwrap(), b"short");
    }
}
