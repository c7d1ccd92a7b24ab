//! Ports and listeners: [`free_port`] for servers that cannot bind port 0
//! and report it, [`wait_for_tcp`] for waiting until one accepts.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::bail;

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// The port is released before returning, so another process may take it
/// before the caller's server binds it: prefer servers that bind port 0 and
/// report their address (as `berth-server --addr-file` does), and retry on
/// "address in use" where that is not possible.
pub fn free_port() -> u16 {
    let listener =
        TcpListener::bind(("127.0.0.1", 0)).expect("cannot bind an ephemeral port on 127.0.0.1");
    listener
        .local_addr()
        .expect("a bound listener has a local address")
        .port()
}

/// Waits until something accepts TCP connections on `addr`, or fails after
/// `timeout`.
pub fn wait_for_tcp(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        let attempt = left.clamp(Duration::from_millis(10), Duration::from_secs(1));
        match TcpStream::connect_timeout(&addr, attempt) {
            Ok(_) => return Ok(()),
            Err(e) if start.elapsed() >= timeout => {
                bail!("nothing accepted connections on {addr} within {timeout:?}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_bindable_and_waitable() {
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        assert!(wait_for_tcp(addr, Duration::from_millis(100)).is_err());
        let _listener = TcpListener::bind(addr).expect("free port should be bindable");
        wait_for_tcp(addr, Duration::from_secs(5)).expect("listener accepts");
    }
}
