//! The one way tav writes a file: into a hidden `.name.partial` file next to the target,
//! flushed to disk, then renamed over it. An interrupted run never leaves a truncated file
//! that looks finished; on failure the partial file is removed and the target left as it was.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::Path;

/// Writes through `write` atomically (see the module). Parent directories are created. I/O
/// failures become `E` through `io_error`, which is told the path that failed.
pub fn write_with<E>(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> Result<(), E>,
    io_error: impl Fn(&Path, io::Error) -> E,
) -> Result<(), E> {
    let Some(file_name) = path.file_name() else {
        let reason = io::Error::new(
            io::ErrorKind::InvalidInput,
            "the output path has no file name",
        );
        return Err(io_error(path, reason));
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
    let partial = parent.join(format!(".{}.partial", file_name.to_string_lossy()));
    let result = write_and_sync(&partial, write, &io_error)
        .and_then(|()| fs::rename(&partial, path).map_err(|e| io_error(path, e)));
    if result.is_err() {
        // Best effort: the original error matters more than a failed clean-up.
        let _ = fs::remove_file(&partial);
    }
    result
}

/// Writes `bytes` atomically.
pub fn write_bytes<E>(
    path: &Path,
    bytes: &[u8],
    io_error: impl Fn(&Path, io::Error) -> E,
) -> Result<(), E> {
    write_with(
        path,
        |out| out.write_all(bytes).map_err(|e| io_error(path, e)),
        &io_error,
    )
}

fn write_and_sync<E>(
    partial: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> Result<(), E>,
    io_error: &impl Fn(&Path, io::Error) -> E,
) -> Result<(), E> {
    let file = File::create(partial).map_err(|e| io_error(partial, e))?;
    let mut writer = BufWriter::new(file);
    write(&mut writer)?;
    let file = writer
        .into_inner()
        .map_err(|e| io_error(partial, e.into_error()))?;
    file.sync_all().map_err(|e| io_error(partial, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(path: &Path, e: io::Error) -> String {
        format!("{}: {e}", path.display())
    }

    /// A finished write replaces the file whole; a failed one leaves the old file and no
    /// partial file behind.
    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_partial() {
        let dir = std::env::temp_dir().join(format!("tav-atomic-{}", std::process::id()));
        let path = dir.join("out.bin");
        write_bytes(&path, b"first", error).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"first");
        let failed = write_with(
            &path,
            |out| {
                out.write_all(b"half").unwrap();
                Err("the encoder failed".to_string())
            },
            error,
        );
        assert_eq!(failed.unwrap_err(), "the encoder failed");
        assert_eq!(fs::read(&path).unwrap(), b"first");
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["out.bin"], "no partial file left");
        assert!(
            write_bytes(Path::new("/"), b"x", error)
                .unwrap_err()
                .contains("no file name")
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
