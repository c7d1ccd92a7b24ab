//! Size-limited container logs: a copier reads the container's output
//! from a FIFO and writes it into `output.log`, rotating to
//! `output.log.1`, `.2`… when the file would pass the size limit.
//!
//! **Why a FIFO and a copier, not the shim's file.** Without limits the
//! runc shim writes the output file itself (`file://`), which needs no
//! process of ours. But the shim keeps that file open for the container's
//! whole life, so it cannot be rotated safely: renaming it leaves the shim
//! writing into the renamed file, and truncating it in place
//! ("copytruncate") loses what the shim writes between the copy and the
//! truncation. So with a limit the task's stdout and stderr go to a FIFO,
//! and the agent's copier owns the files: it alone decides when to rotate,
//! and loses nothing doing it.
//!
//! **Why a separate process.** `berth-agent run` is a CLI that exits after
//! the start, and the daemon may be restarted while containers keep
//! running: a task inside either would die with it. So `run` starts the
//! copier as a child of its own (`berth-agent log-copier …`, in its own
//! process group so a Ctrl-C at the terminal does not reach it), which
//! lives exactly as long as the container's output: it ends at EOF, when
//! the shim closes the FIFO after the container's last process is gone.
//!
//! **Limitation.** If the copier is killed while the container runs,
//! nobody drains the FIFO (the shim holds a read end of its own only to
//! keep it open): once the pipe's buffer (64 KiB) is full, the container
//! blocks on its next write. Restarting the container starts a new
//! copier.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::settings::LogLimits;

/// The hidden `berth-agent` subcommand that runs [`copy_rotating`].
pub const COPIER_SUBCOMMAND: &str = "log-copier";

/// The rotated file `n` (1 = the newest) of `log`.
pub fn rotated(log: &Path, n: u32) -> PathBuf {
    let mut s = log.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// `log`'s files, oldest first, those that exist (for `logs`).
pub fn files_oldest_first(log: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = (1..=1000u32)
        .map(|n| rotated(log, n))
        .take_while(|p| p.exists())
        .collect();
    out.reverse();
    if log.exists() {
        out.push(log.to_path_buf());
    }
    out
}

/// Removes `log` and its rotated files (a new run starts a new log).
pub fn remove_all(log: &Path) -> std::io::Result<()> {
    for p in files_oldest_first(log) {
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes everything read from `input` into `log`, keeping each file at
/// most `limits.max_size` bytes (a file is cut at the last newline that
/// fits, so lines stay whole unless one alone is over the limit) and
/// `limits.max_files` files in all. Returns at EOF.
pub fn copy_rotating(input: &mut dyn Read, log: &Path, limits: LogLimits) -> std::io::Result<()> {
    let max = limits.max_size.unwrap_or(u64::MAX).max(1);
    let mut out = open_append(log)?;
    let mut size = out.metadata()?.len();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut data = &buf[..n];
        while !data.is_empty() {
            let room = usize::try_from(max.saturating_sub(size)).unwrap_or(usize::MAX);
            if room == 0 {
                out = rotate(log, limits.max_files)?;
                size = 0;
                continue;
            }
            let mut take = room.min(data.len());
            if take < data.len() {
                match data[..take].iter().rposition(|b| *b == b'\n') {
                    Some(i) => take = i + 1,
                    // No line end fits: a fresh file takes the line (cut
                    // only if it alone is over the limit).
                    None if size > 0 => {
                        out = rotate(log, limits.max_files)?;
                        size = 0;
                        continue;
                    }
                    None => {}
                }
            }
            out.write_all(&data[..take])?;
            size += take as u64;
            data = &data[take..];
        }
    }
}

fn open_append(log: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(log)
}

/// Shifts `log.N` to `log.N+1` (dropping the oldest beyond `max_files`),
/// `log` to `log.1`, and opens a new, empty `log`.
fn rotate(log: &Path, max_files: u32) -> std::io::Result<File> {
    if max_files <= 1 {
        return OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(log);
    }
    // The rename onto `log.{max_files-1}` replaces the oldest kept file.
    for n in (1..max_files - 1).rev() {
        let from = rotated(log, n);
        if from.exists() {
            std::fs::rename(&from, rotated(log, n + 1))?;
        }
    }
    std::fs::rename(log, rotated(log, 1))?;
    open_append(log)
}

/// The copier's process: opens the FIFO (waiting for the shim to open its
/// write end) and copies until the container's output ends.
pub fn run_copier(fifo: &Path, log: &Path, limits: LogLimits) -> std::io::Result<()> {
    let mut input = File::open(fifo)?;
    copy_rotating(&mut input, log, limits)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn limits(size: u64, files: u32) -> LogLimits {
        LogLimits {
            max_size: Some(size),
            max_files: files,
        }
    }

    #[test]
    fn rotates_at_line_ends_and_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("output.log");
        let text: String = (0..100).map(|i| format!("line {i:03}\n")).collect();
        copy_rotating(&mut text.as_bytes(), &log, limits(30, 3)).unwrap();
        let files = files_oldest_first(&log);
        assert_eq!(files.len(), 3, "{files:?}");
        let mut kept = String::new();
        for f in &files {
            let s = std::fs::read_to_string(f).unwrap();
            assert!(s.len() <= 30, "{f:?}: {}", s.len());
            assert!(s.ends_with('\n'));
            kept.push_str(&s);
        }
        // The newest lines, in order, without gaps.
        assert!(text.ends_with(&kept), "{kept}");
        assert!(kept.ends_with("line 099\n"));
        assert!(!rotated(&log, 3).exists());
    }

    #[test]
    fn one_file_is_truncated_and_long_lines_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("output.log");
        let long = "x".repeat(25);
        copy_rotating(&mut long.as_bytes(), &log, limits(10, 1)).unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "xxxxx");
        assert_eq!(files_oldest_first(&log), std::slice::from_ref(&log));
        remove_all(&log).unwrap();
        assert!(files_oldest_first(&log).is_empty());
    }

    #[test]
    fn no_limit_appends() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("output.log");
        std::fs::write(&log, "old\n").unwrap();
        copy_rotating(&mut &b"new\n"[..], &log, LogLimits::default()).unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "old\nnew\n");
    }
}
