//! Sizes on disk, as the stores report them in their self-telemetry.

use std::path::Path;

/// Bytes on disk under `dir`, recursively; what cannot be read counts as 0.
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|entry| entry.ok())
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => dir_size(&entry.path()),
            _ => entry.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_nested_files_and_nothing_for_a_missing_dir() {
        let dir = std::env::temp_dir().join(format!("sightline-vocab-fs-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("x"), [0u8; 10]).unwrap();
        std::fs::write(dir.join("a/b/y"), [0u8; 32]).unwrap();
        assert_eq!(super::dir_size(&dir), 42);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(super::dir_size(&dir), 0);
    }
}
