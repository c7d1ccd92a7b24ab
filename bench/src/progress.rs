//! Progress on stderr, so that long runs are never silent.
//!
//! Every step is announced with a plain line (kept in logs when stderr is not
//! a terminal); long loops and transfers also get an indicatif bar, which
//! indicatif hides by itself when stderr is not a terminal.

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

fn multi() -> &'static MultiProgress {
    static MULTI: OnceLock<MultiProgress> = OnceLock::new();
    MULTI.get_or_init(MultiProgress::new)
}

fn is_terminal() -> bool {
    static TERMINAL: OnceLock<bool> = OnceLock::new();
    *TERMINAL.get_or_init(|| std::io::stderr().is_terminal())
}

/// Prints one progress line on stderr (above any bar being drawn).
pub fn line(msg: impl AsRef<str>) {
    let msg = format!("berth-bench: {}", msg.as_ref());
    if is_terminal() {
        // MultiProgress::println draws above the bars; it fails only when
        // the terminal went away, in which case eprintln is as good.
        if multi().println(&msg).is_err() {
            eprintln!("{msg}");
        }
    } else {
        eprintln!("{msg}");
    }
}

/// A bar counting `len` items (requests, repositories…).
pub fn counter(len: u64, what: &str) -> ProgressBar {
    let bar = multi().add(ProgressBar::new(len));
    bar.set_style(
        ProgressStyle::with_template("  {msg} {wide_bar} {pos}/{len} ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// A bar counting `len` bytes.
pub fn bytes(len: u64, what: &str) -> ProgressBar {
    let bar = multi().add(ProgressBar::new(len));
    bar.set_style(
        ProgressStyle::with_template(
            "  {msg} {wide_bar} {bytes}/{total_bytes} ({binary_bytes_per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
