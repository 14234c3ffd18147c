//! Files replaced whole.

use std::path::Path;

/// Replace `path` with `bytes` whole: written to `<path>.tmp` beside it, then renamed over
/// it, so a reader (or a process that dies half-way) sees the old file or the new one,
/// never a part.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() -> std::io::Result<()> {
        let dir = std::env::temp_dir().join(format!("zenvoy-base-fs-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("state.json");
        write_atomically(&path, b"one")?;
        write_atomically(&path, b"two")?;
        assert_eq!(std::fs::read(&path)?, b"two");
        assert!(!dir.join("state.tmp").exists());
        std::fs::remove_dir_all(&dir)
    }
}
