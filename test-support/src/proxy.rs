//! [`RoundRobinProxy`]: an HTTP/1.1 reverse proxy on an ephemeral port that
//! sends each request to the next backend in turn, the way a load balancer
//! in front of berth-server replicas does. Requests alternate even within
//! one client connection (one backend connection per request), so an
//! upload's consecutive `PATCH`es land on different replicas.
//!
//! A backend that refuses the connection is skipped and the request goes to
//! the next one (nothing of it was sent, so that is safe for any method),
//! as a balancer's failover does; a backend that fails after the request
//! went out gets the client a 502, and the client retries.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

type ProxyBody = BoxBody<Bytes, hyper::Error>;

struct Shared {
    backends: Vec<SocketAddr>,
    next: AtomicUsize,
    /// Requests each backend answered (any status).
    served: Vec<AtomicU64>,
    /// Requests answered 502 (the backend failed mid-request).
    failed: AtomicU64,
}

/// A running proxy; stops when dropped.
pub struct RoundRobinProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// Ends the proxy's thread (and its runtime) when sent or dropped.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl std::fmt::Debug for RoundRobinProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoundRobinProxy")
            .field("addr", &self.addr)
            .field("backends", &self.shared.backends)
            .finish()
    }
}

impl RoundRobinProxy {
    /// Starts a proxy in front of `backends`, on a thread with its own
    /// runtime: synchronous and async tests alike can start and drop it
    /// (a runtime may be neither entered nor dropped inside another).
    pub fn start(backends: Vec<SocketAddr>) -> anyhow::Result<RoundRobinProxy> {
        anyhow::ensure!(!backends.is_empty(), "a proxy needs a backend");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("rr-proxy")
            .enable_all()
            .build()?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            served: backends.iter().map(|_| AtomicU64::new(0)).collect(),
            backends,
            next: AtomicUsize::new(0),
            failed: AtomicU64::new(0),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = shared.clone();
        std::thread::Builder::new()
            .name("rr-proxy".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("round-robin proxy: {e}");
                            return;
                        }
                    };
                    tokio::select! {
                        () = accept_loop(listener, serving) => {}
                        _ = stopped => {}
                    }
                });
            })?;
        Ok(RoundRobinProxy {
            addr,
            shared,
            _stop: stop,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:PORT`, as registry clients name it.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// How many requests each backend answered, in the backends' order.
    pub fn served(&self) -> Vec<u64> {
        self.shared
            .served
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// The backend (its index in the list given to [`Self::start`]) the
    /// next request goes to, if it is up.
    pub fn next_backend(&self) -> usize {
        self.shared.next.load(Ordering::Relaxed) % self.shared.backends.len()
    }

    /// Requests answered 502 because their backend failed mid-request.
    pub fn failed(&self) -> u64 {
        self.shared.failed.load(Ordering::Relaxed)
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(forward(&shared, req).await) }
            });
            // A client hanging up mid-request is the client's business.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn bad_gateway(why: String) -> Response<ProxyBody> {
    let mut resp = Response::new(
        Full::new(Bytes::from(why))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = StatusCode::BAD_GATEWAY;
    resp
}

async fn forward(shared: &Shared, req: Request<Incoming>) -> Response<ProxyBody> {
    let n = shared.backends.len();
    let first = shared.next.fetch_add(1, Ordering::Relaxed);
    for attempt in 0..n {
        let i = (first + attempt) % n;
        // Connect first: a refused connection means the request never left,
        // so it may go to the next backend whatever its method.
        let Ok(stream) = TcpStream::connect(shared.backends[i]).await else {
            continue;
        };
        let (mut sender, conn) =
            match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                Ok(pair) => pair,
                Err(_) => continue,
            };
        tokio::spawn(conn);
        return match sender.send_request(req).await {
            Ok(resp) => {
                shared.served[i].fetch_add(1, Ordering::Relaxed);
                resp.map(BodyExt::boxed)
            }
            Err(e) => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                bad_gateway(format!("backend {} failed: {e}\n", shared.backends[i]))
            }
        };
    }
    shared.failed.fetch_add(1, Ordering::Relaxed);
    bad_gateway("no backend is reachable\n".to_owned())
}
