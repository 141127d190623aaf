//! The disk reserve: space held in a file, given back when the disk fills so
//! the stores have room to commit what was already acknowledged.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A file of `bytes` zeros in a directory of the data directory.
#[derive(Debug, Clone)]
pub struct DiskReserve {
    path: PathBuf,
    bytes: u64,
}

impl DiskReserve {
    /// Name of the reserve file in its directory.
    pub const FILE_NAME: &'static str = "disk-reserve";

    /// The reserve in `dir` (created if needed); nothing is written yet.
    pub fn open(dir: &Path, bytes: u64) -> std::io::Result<DiskReserve> {
        std::fs::create_dir_all(dir)?;
        Ok(DiskReserve {
            path: dir.join(DiskReserve::FILE_NAME),
            bytes,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Writes the reserve file to its full size unless it is there (real
    /// blocks, not a sparse file: file systems allocate at `write`, so no
    /// fsync is needed, and a reserve lost in a crash is written again at
    /// the next start); on failure removes what was written.
    pub fn take(&self) -> std::io::Result<()> {
        if std::fs::metadata(&self.path).is_ok_and(|meta| meta.len() >= self.bytes) {
            return Ok(());
        }
        let written = (|| {
            let mut file = std::fs::File::create(&self.path)?;
            let chunk = vec![0u8; 1024 * 1024];
            let mut left = self.bytes;
            while left > 0 {
                let size = left.min(chunk.len() as u64) as usize;
                file.write_all(&chunk[..size])?;
                left -= size as u64;
            }
            file.flush()
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&self.path);
        }
        written
    }

    /// Deletes the reserve file: its space is free for the stores.
    pub fn release(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_written_once_and_released() {
        let dir = tempfile::tempdir().unwrap();
        let reserve = DiskReserve::open(&dir.path().join("wal"), 3 * 1024 * 1024 + 5).unwrap();
        assert!(!reserve.path().exists(), "nothing written before take");
        reserve.take().unwrap();
        let mut bytes = std::fs::read(reserve.path()).unwrap();
        assert_eq!(bytes.len() as u64, reserve.bytes());
        assert!(bytes.iter().all(|byte| *byte == 0));
        bytes[0] = b'x';
        std::fs::write(reserve.path(), &bytes).unwrap();
        reserve.take().unwrap();
        assert_eq!(
            std::fs::read(reserve.path()).unwrap()[0],
            b'x',
            "a whole reserve is not written again"
        );
        reserve.release();
        assert!(!reserve.path().exists());
        // A short reserve (a crash while writing it) is written again.
        std::fs::write(reserve.path(), b"short").unwrap();
        reserve.take().unwrap();
        assert_eq!(
            std::fs::metadata(reserve.path()).unwrap().len(),
            reserve.bytes()
        );
    }
}
