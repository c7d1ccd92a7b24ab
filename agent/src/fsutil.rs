//! File writes the agent's state relies on.

use std::io::Write;
use std::path::Path;

/// Temp file in the same directory, fsync, rename over `path`, fsync of
/// the directory (so the rename itself survives a power cut): a reader
/// sees the old content or the new, never half of it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let no = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{}: no {what}", path.display()),
        )
    };
    let dir = path.parent().ok_or_else(|| no("parent"))?;
    std::fs::create_dir_all(dir)?;
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| no("file name"))?;
    // A dot name without the file's extension: listings of `*.json`
    // never read a temp file left by a crash.
    let tmp = dir.join(format!(".{file_name}.{}.tmp", uuid::Uuid::new_v4()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::File::open(dir).and_then(|d| d.sync_all())
}
