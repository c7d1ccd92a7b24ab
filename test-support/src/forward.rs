//! A TCP forwarder for fault tests: clients connect to a fixed address,
//! bytes go to a target that can change (a restarted server's new port),
//! and every open connection can be cut at once (a network cut, seen by
//! both ends as a reset). TLS passes through untouched.
//!
//! Runs on a thread with its own runtime, like [`crate::RoundRobinProxy`],
//! so blocking tests can use it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

#[derive(Debug, Default)]
struct State {
    target: Option<SocketAddr>,
    open: Vec<AbortHandle>,
    accepted: u64,
}

/// See the module documentation. Stops when dropped.
#[derive(Debug)]
pub struct TcpForwarder {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl TcpForwarder {
    /// Listens on an ephemeral port of 127.0.0.1, forwarding to `target`.
    pub fn start(target: SocketAddr) -> anyhow::Result<TcpForwarder> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tcp-forward")
            .enable_all()
            .build()?;
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            target: Some(target),
            ..State::default()
        }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shared = state.clone();
        std::thread::Builder::new()
            .name("tcp-forward".into())
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::select! {
                        _ = stopped => {}
                        _ = accept_loop(listener, shared.clone()) => {}
                    }
                    for h in shared
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .open
                        .drain(..)
                    {
                        h.abort();
                    }
                });
            })?;
        Ok(TcpForwarder {
            addr,
            state,
            _stop: stop,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// New connections go to `target` from now on (open ones stay).
    pub fn set_target(&self, target: SocketAddr) {
        self.lock().target = Some(target);
    }

    /// Drops every open connection.
    pub fn cut(&self) -> usize {
        let mut s = self.lock();
        let n = s.open.len();
        for h in s.open.drain(..) {
            h.abort();
        }
        n
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.lock().accepted
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<Mutex<State>>) {
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            continue;
        };
        let target = {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            s.accepted += 1;
            s.target
        };
        let Some(target) = target else { continue };
        let task = tokio::spawn(async move {
            if let Ok(mut server) = TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        });
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        s.open.retain(|h| !h.is_finished());
        s.open.push(task.abort_handle());
    }
}
