//! Reading what a handler left of a request body before answering.
//!
//! Handlers refuse requests as early as they can: a PATCH whose
//! `Content-Range` does not continue the upload, a push to an upload session
//! that is gone, a manifest whose declared length is over the limit. If the
//! client is still sending when the answer goes out, the connection is
//! closed with unread data and the client sees a reset instead of the 416,
//! 404 or 413 that tells it what to do next (resume, restart, give up). So
//! the unread rest of a body is read and dropped first, within bounds.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::{Body, BodyDataStream};
use futures::StreamExt;
use http::{HeaderMap, header};

/// Most bytes read and dropped after a handler is done with a request; a
/// client sending more than this gets its connection closed.
const DRAIN_MAX_BYTES: u64 = 64 << 20;
/// Longest time spent draining one request.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

type Shared = Arc<Mutex<BodyDataStream>>;

/// The part of a request body the handler did not read.
pub(super) struct Unread(Option<Shared>);

/// Splits a request body into the body the handler reads and a handle on
/// what it leaves unread.
pub(super) fn share(body: Body, headers: &HeaderMap) -> (Body, Unread) {
    let expects_continue = headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let too_long = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n > DRAIN_MAX_BYTES);
    // A client waiting for "100 Continue" has not sent its body: reading it
    // would ask for it. One announcing more than the bound is not waited for.
    if expects_continue || too_long {
        return (body, Unread(None));
    }
    let shared: Shared = Arc::new(Mutex::new(body.into_data_stream()));
    let reader = shared.clone();
    let body = Body::from_stream(futures::stream::poll_fn(move |cx| {
        reader
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .poll_next_unpin(cx)
    }));
    (body, Unread(Some(shared)))
}

impl Unread {
    /// Reads and drops the rest of the body (nothing, when the handler read
    /// it all), within [`DRAIN_MAX_BYTES`] and [`DRAIN_TIMEOUT`].
    pub(super) async fn drain(self) {
        let Some(shared) = self.0 else { return };
        let next = || {
            futures::future::poll_fn(|cx| {
                shared
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .poll_next_unpin(cx)
            })
        };
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
            let mut read = 0u64;
            while let Some(Ok(chunk)) = next().await {
                read += chunk.len() as u64;
                if read > DRAIN_MAX_BYTES {
                    break;
                }
            }
        })
        .await;
    }
}
