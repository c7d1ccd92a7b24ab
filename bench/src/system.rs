//! What the bench reads from the machine rather than from the registries:
//! the `dd … conv=fdatasync` write rate, `sync`, a process's memory from
//! `/proc/<pid>/status`, and `wrk`'s output.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail, ensure};

/// Runs `dd if=/dev/zero of=DIR/dd-test bs=1M count=MIB conv=fdatasync` and
/// returns its write rate in MB/s (10^6 bytes per second, as dd prints it),
/// from the byte count and seconds dd reports.
pub fn dd_write_rate(dir: &Path, mib: u64) -> anyhow::Result<f64> {
    let file = dir.join("dd-test");
    let out = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", file.display()))
        .arg("bs=1M")
        .arg(format!("count={mib}"))
        .arg("conv=fdatasync")
        .output()
        .context("running dd (coreutils)")?;
    // The file is removed whatever happened, so a failed run leaves nothing.
    let _ = std::fs::remove_file(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "dd failed ({}): {stderr}", out.status);
    let (bytes, secs) = parse_dd(&stderr)?;
    ensure!(
        bytes == mib * 1024 * 1024,
        "dd wrote {bytes} bytes instead of {mib} MiB: {stderr}"
    );
    Ok(bytes as f64 / secs / 1e6)
}

/// Bytes and seconds from dd's summary line, e.g.
/// `268435456 bytes (268 MB, 256 MiB) copied, 0.853 s, 315 MB/s`.
pub fn parse_dd(stderr: &str) -> anyhow::Result<(u64, f64)> {
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.contains(" bytes") && l.contains("copied"))
        .with_context(|| format!("no summary line in dd's output: {stderr:?}"))?;
    let bytes: u64 = line
        .split_whitespace()
        .next()
        .and_then(|b| b.parse().ok())
        .with_context(|| format!("no byte count in {line:?}"))?;
    let secs: f64 = line
        .split("copied, ")
        .nth(1)
        .and_then(|rest| rest.split(" s").next())
        .and_then(|s| s.trim().replace(',', ".").parse().ok())
        .with_context(|| format!("no duration in {line:?}"))?;
    ensure!(secs > 0.0, "dd reported a zero duration: {line:?}");
    Ok((bytes, secs))
}

/// Flushes every dirty page of the machine (`sync`), so that one server's
/// unflushed writes never slow down the next timed run.
pub fn sync() -> anyhow::Result<()> {
    let status = Command::new("sync")
        .status()
        .context("running sync (coreutils)")?;
    ensure!(status.success(), "sync failed: {status}");
    Ok(())
}

/// The device a path lives on, to check that data dirs and the dd file share
/// a filesystem.
pub fn device_of(path: &Path) -> anyhow::Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("stat {}", path.display()))?
        .dev())
}

/// A `kB` field (`VmHWM`, `VmRSS`…) of `/proc/<pid>/status`, in bytes.
pub fn proc_status_bytes(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_status_field(&text, field).with_context(|| format!("no {field} in {path}"))
}

fn parse_status_field(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        let kb: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
        Some(kb * 1024)
    })
}

/// CPU time (user + system, all threads) a process has used so far, from
/// `/proc/<pid>/stat` (clock-tick resolution, 10 ms on usual kernels).
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let ticks = parse_stat_cpu_ticks(&text).with_context(|| format!("parsing {path}"))?;
    Ok(Duration::from_secs_f64(
        ticks as f64 / clock_ticks_per_sec(),
    ))
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The
/// command name (field 2) may hold spaces and parentheses: fields are
/// counted after its closing parenthesis.
fn parse_stat_cpu_ticks(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state), so field N is fields[N - 3].
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// cutime + cstime (fields 16 and 17) of a `/proc/<pid>/stat` line: the CPU
/// time of the children the process has waited for.
pub fn children_cpu_time(text: &str) -> Option<Duration> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let cutime: u64 = fields.get(13)?.parse().ok()?;
    let cstime: u64 = fields.get(14)?.parse().ok()?;
    Some(Duration::from_secs_f64(
        (cutime + cstime) as f64 / clock_ticks_per_sec(),
    ))
}

fn clock_ticks_per_sec() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .filter(|t: &f64| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// Resets the process's peak RSS (`VmHWM`) to its current RSS: writing `5`
/// to `/proc/<pid>/clear_refs` (Linux ≥ 4.0, needs permission on the
/// process).
pub fn reset_peak_rss(pid: u32) -> anyhow::Result<()> {
    let path = format!("/proc/{pid}/clear_refs");
    std::fs::write(&path, "5").with_context(|| format!("writing 5 to {path}"))
}

/// What the bench takes from a `wrk --latency` run.
#[derive(Debug, Clone, PartialEq)]
pub struct WrkResult {
    pub requests: u64,
    pub requests_per_sec: f64,
    pub p50: Duration,
    pub p99: Duration,
}

/// Parses `wrk --latency` output, failing on any non-2xx/3xx answer or
/// socket error (wrk itself only counts them).
pub fn parse_wrk(out: &str) -> anyhow::Result<WrkResult> {
    if let Some(line) = out.lines().find(|l| l.contains("Non-2xx or 3xx responses")) {
        bail!("wrk saw error answers ({}):\n{out}", line.trim());
    }
    if let Some(line) = out.lines().find(|l| l.contains("Socket errors")) {
        // "Socket errors: connect 0, read 0, write 0, timeout 0"
        let any = line
            .split(':')
            .nth(1)
            .unwrap_or_default()
            .split(',')
            .filter_map(|part| part.split_whitespace().nth(1))
            .any(|n| n != "0");
        if any {
            bail!("wrk saw socket errors ({}):\n{out}", line.trim());
        }
    }
    let requests_per_sec: f64 = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{out}"))?;
    let requests: u64 = out
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no request count in wrk's output:\n{out}"))?;
    let percentile = |p: &str| -> anyhow::Result<Duration> {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(p))
            .and_then(|v| parse_wrk_duration(v.trim()))
            .with_context(|| format!("no {p} latency in wrk's output (run with --latency):\n{out}"))
    };
    Ok(WrkResult {
        requests,
        requests_per_sec,
        p50: percentile("50%")?,
        p99: percentile("99%")?,
    })
}

/// wrk's durations: `371.40us`, `1.09ms`, `2.00s`, `1.50m`.
fn parse_wrk_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = s.split_at(split);
    let number: f64 = number.parse().ok()?;
    let secs = match unit {
        "us" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dd_summary() {
        let out = "256+0 records in\n256+0 records out\n268435456 bytes (268 MB, 256 MiB) copied, 0.853 s, 315 MB/s\n";
        assert_eq!(parse_dd(out).expect("parses"), (268_435_456, 0.853));
        assert!(parse_dd("dd: error").is_err());
    }

    #[test]
    fn parses_proc_status() {
        let text =
            "Name:\tberth-server\nVmPeak:\t  100 kB\nVmHWM:\t   2048 kB\nVmRSS:\t    1024 kB\n";
        assert_eq!(parse_status_field(text, "VmHWM"), Some(2048 * 1024));
        assert_eq!(parse_status_field(text, "VmRSS"), Some(1024 * 1024));
        assert_eq!(parse_status_field(text, "VmSwap"), None);
        assert!(proc_status_bytes(std::process::id(), "VmHWM").expect("own status") > 0);
    }

    #[test]
    fn parses_proc_stat_cpu() {
        let line =
            "1234 (berth (x) server) S 1 1234 1234 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 5 0";
        assert_eq!(parse_stat_cpu_ticks(line), Some(300));
        assert!(cpu_time(std::process::id()).is_ok());
        let waited = "1234 (bench) S 1 1234 1234 0 -1 4194560 1000 0 0 0 250 50 70 30 20 0 5 0";
        assert_eq!(
            children_cpu_time(waited),
            Some(Duration::from_secs_f64(100.0 / clock_ticks_per_sec()))
        );
    }

    const WRK: &str = "Running 10s test @ http://127.0.0.1:5000/v2/a/manifests/latest
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   371.40us  213.50us   8.57ms   90.87%
    Req/Sec    43.48k     3.77k   50.73k    71.00%
  Latency Distribution
     50%  320.00us
     75%  410.00us
     90%  530.00us
     99%    1.09ms
  865247 requests in 10.00s, 1.01GB read
Requests/sec:  86509.12
Transfer/sec:    103.27MB
";

    #[test]
    fn parses_wrk_output() {
        let r = parse_wrk(WRK).expect("parses");
        assert_eq!(r.requests, 865_247);
        assert!((r.requests_per_sec - 86509.12).abs() < 1e-6);
        assert_eq!(r.p50, Duration::from_micros(320));
        assert_eq!(r.p99, Duration::from_secs_f64(0.00109));
    }

    #[test]
    fn wrk_errors_abort() {
        let bad = WRK.replace(
            "Requests/sec",
            "  Non-2xx or 3xx responses: 12\nRequests/sec",
        );
        assert!(parse_wrk(&bad).is_err());
        let sock = WRK.replace(
            "Requests/sec",
            "  Socket errors: connect 0, read 3, write 0, timeout 0\nRequests/sec",
        );
        assert!(parse_wrk(&sock).is_err());
        let fine = WRK.replace(
            "Requests/sec",
            "  Socket errors: connect 0, read 0, write 0, timeout 0\nRequests/sec",
        );
        assert!(parse_wrk(&fine).is_ok());
    }
}
