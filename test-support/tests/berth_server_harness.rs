//! The [`BerthServer`] process harness (start, address file, restart on the
//! same data dir, SIGTERM, SIGKILL, start-up failures), exercised with a
//! small Python program that follows the `berth-server serve` contract.
//!
//! This checks the harness, not Berth: the real server is exercised by the
//! workspace's integration tests through the same code.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use test_support::{BerthServer, wait_for_tcp};

/// Follows the contract: binds --listen, writes the bound address to
/// --addr-file, counts its starts in the data dir, exits 0 on SIGTERM;
/// `--fail` makes it exit 2 before binding.
const STAND_IN: &str = r#"
import os, signal, socket, sys
args = sys.argv[1:]
assert args[0] == "serve", args
opts, i = {}, 1
while i < len(args):
    if args[i] == "--fail":
        print("config error: --fail given", file=sys.stderr, flush=True)
        sys.exit(2)
    opts[args[i]] = args[i + 1]
    i += 2
def term(*_):
    print("stand-in got SIGTERM", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
host, port = opts["--listen"].rsplit(":", 1)
sock = socket.socket()
sock.bind((host, int(port)))
sock.listen()
with open(os.path.join(opts["--data-dir"], "starts"), "a") as f:
    f.write("start\n")
print("stand-in greeting=%s env=%s" % (opts.get("--greeting"), os.environ.get("STANDIN_ENV")), flush=True)
addr = "%s:%d" % sock.getsockname()
with open(opts["--addr-file"], "w") as f:
    f.write(addr + "\n")
while True:
    conn, _ = sock.accept()
    conn.close()
"#;

fn stand_in(dir: &Path) -> PathBuf {
    let python = test_support::tools::require_tool_from("python3", "python3");
    let path = dir.join("berth-server");
    let mut f = std::fs::File::create(&path).expect("create stand-in");
    writeln!(f, "#!{}", python.display()).expect("write");
    f.write_all(STAND_IN.as_bytes()).expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

fn starts(server: &BerthServer) -> usize {
    std::fs::read_to_string(server.data_dir().join("starts"))
        .expect("starts file")
        .lines()
        .count()
}

#[test]
fn start_restart_terminate_kill() {
    let bin_dir = tempfile::tempdir().expect("tempdir");
    let mut server = BerthServer::builder()
        .binary(stand_in(bin_dir.path()))
        .arg("--greeting")
        .arg("hi")
        .env("STANDIN_ENV", "yes")
        .start();
    let first = server.addr();
    assert_ne!(first.port(), 0);
    assert_eq!(server.url(), format!("http://127.0.0.1:{}", first.port()));
    assert_eq!(server.host(), format!("127.0.0.1:{}", first.port()));
    wait_for_tcp(first, Duration::from_secs(5)).expect("listening");
    assert_eq!(starts(&server), 1);
    assert!(server.log_text().contains("stand-in greeting=hi env=yes"));
    let data_dir = server.data_dir().to_path_buf();

    // Restart while running: graceful stop, same data dir, new address.
    let old_pid = server.pid();
    server.restart();
    assert_ne!(server.pid(), old_pid);
    assert_eq!(server.data_dir(), data_dir);
    assert_eq!(starts(&server), 2);
    wait_for_tcp(server.addr(), Duration::from_secs(5)).expect("listening again");
    assert!(server.log_text().contains("stand-in got SIGTERM"));

    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    assert!(!server.is_running());

    server.restart();
    assert_eq!(starts(&server), 3);
    assert!(server.is_running());
    server.kill9();
    assert!(!server.is_running());

    // Restart after a crash, with other arguments.
    server.restart_with_args(["--greeting", "again"]);
    assert_eq!(starts(&server), 4);
    assert!(server.log_text().contains("stand-in greeting=again"));
    let pid = server.pid();
    drop(server);
    // Dropping kills the process and removes the owned data dir.
    assert!(!data_dir.exists());
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists() || {
            // A zombie cannot linger: drop reaps. Tolerate pid reuse by checking
            // the command line.
            let cmdline =
                std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            !cmdline.contains("berth-server")
        }
    );
}

#[test]
fn caller_data_dir_is_kept_and_startup_failure_is_reported() {
    let bin_dir = tempfile::tempdir().expect("tempdir");
    let data = tempfile::tempdir().expect("tempdir");
    let stand_in = stand_in(bin_dir.path());
    let server = BerthServer::builder()
        .binary(&stand_in)
        .data_dir(data.path().join("sub"))
        .start();
    assert_eq!(server.data_dir(), data.path().join("sub"));
    drop(server);
    assert!(data.path().join("sub/starts").exists());

    let err = BerthServer::builder()
        .binary(&stand_in)
        .arg("--fail")
        .try_start()
        .expect_err("start-up must fail");
    let message = format!("{err:#}");
    assert!(message.contains("exited during start-up"), "{message}");
    assert!(message.contains("config error: --fail given"), "{message}");
    assert!(message.contains("exit status: 2"), "{message}");
}

#[test]
fn kill9_is_a_crash() {
    let bin_dir = tempfile::tempdir().expect("tempdir");
    let mut server = BerthServer::builder()
        .binary(stand_in(bin_dir.path()))
        .start();
    let pid = server.pid();
    server.kill9();
    // The child was reaped by kill9: its /proc entry is gone.
    assert!(!Path::new(&format!("/proc/{pid}/status")).exists());
    // terminate() on a stopped server is a caller bug and says so.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| server.terminate()));
    assert!(result.is_err());
}
