//! When a pull lets containerd commit a downloaded layer blob.
//!
//! containerd 1.6 commits a blob (an fsync of the whole file, then a
//! rename) inside a write transaction of its metadata database, so every
//! other metadata write waits until the blob is on disk. Those include the
//! unpacker's snapshot commit and the next layer's prepare, which are the
//! chain a pull's time hangs on: the layers unpack one after the other.
//! Measured with `berth-bench --only agent-pull`, a 50 MiB blob's commit
//! holds that lock about 0.1 s on a quiet SSD; on an appliance's SD card or
//! eMMC it is seconds.
//!
//! So blob commits go one at a time, and only when they are least in the
//! way:
//! - freely while the unpacker waits for a download (it needs containerd
//!   for nothing then), and once it is done;
//! - one per layer while the unpacker applies a layer (let in by its
//!   prepare), since applying takes a while and needs no metadata write;
//! - never while the unpacker is between two layers (committing one,
//!   preparing the next);
//! - never the blob of the very layer being applied: its bytes just ended,
//!   so its apply is about to end too, and its snapshot commit goes first.
//!
//! A commit already running cannot be stopped; this only chooses when the
//! next one starts.

use std::sync::Mutex;

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct CommitGate {
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Debug, Default)]
struct State {
    window: Window,
    /// The layer the unpacker is applying, if any.
    applying: Option<usize>,
    /// A blob commit holds the gate.
    busy: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Window {
    /// Any number of commits, one after the other.
    #[default]
    Open,
    /// One more commit.
    One,
    Closed,
}

/// Held while a blob commits; lets the next one through when dropped.
#[derive(Debug)]
pub struct Pass<'a>(&'a CommitGate);

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        self.0.update(|s| s.busy = false);
    }
}

impl CommitGate {
    /// The unpacker waits for downloads, or is done: commits go freely.
    pub fn open(&self) {
        self.update(|s| {
            s.window = Window::Open;
            s.applying = None;
        });
    }

    /// The unpacker is between two layers: no commit starts.
    pub fn close(&self) {
        self.update(|s| {
            s.window = Window::Closed;
            s.applying = None;
        });
    }

    /// The unpacker prepared layer `layer` and applies it now: one commit,
    /// of another layer's blob, may start.
    pub fn applying(&self, layer: usize) {
        self.update(|s| {
            s.window = Window::One;
            s.applying = Some(layer);
        });
    }

    /// Waits until the blob of layer `layer` may be committed.
    pub async fn pass(&self, layer: usize) -> Pass<'_> {
        loop {
            // Registered before the state is read, so a change in between
            // is not missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut s = self.lock();
                let admitted = !s.busy
                    && match s.window {
                        Window::Open => true,
                        Window::One => s.applying != Some(layer),
                        Window::Closed => false,
                    };
                if admitted {
                    s.busy = true;
                    if s.window == Window::One {
                        s.window = Window::Closed;
                    }
                    return Pass(self);
                }
            }
            changed.await;
        }
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.lock());
        self.changed.notify_waiters();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn passes(gate: &CommitGate, layer: usize) -> bool {
        tokio::time::timeout(Duration::from_millis(50), gate.pass(layer))
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn open_lets_commits_through_one_at_a_time() {
        let gate = CommitGate::default();
        let first = gate.pass(0).await;
        assert!(!passes(&gate, 1).await, "a second commit while one runs");
        drop(first);
        assert!(passes(&gate, 1).await);
        assert!(passes(&gate, 2).await);
    }

    #[tokio::test]
    async fn closed_holds_commits_until_a_layer_is_applied() {
        let gate = CommitGate::default();
        gate.close();
        assert!(!passes(&gate, 3).await);
        gate.applying(1);
        // The applied layer's own blob waits; one other blob goes, then
        // the window is shut until the next layer.
        assert!(!passes(&gate, 1).await);
        assert!(passes(&gate, 3).await);
        assert!(!passes(&gate, 4).await);
        gate.applying(2);
        assert!(passes(&gate, 1).await);
        gate.open();
        assert!(passes(&gate, 4).await);
    }

    #[tokio::test]
    async fn a_waiting_commit_is_woken_by_the_unpacker() {
        let gate = std::sync::Arc::new(CommitGate::default());
        gate.close();
        let waiting = tokio::spawn({
            let gate = std::sync::Arc::clone(&gate);
            async move {
                let _pass = gate.pass(5).await;
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        gate.applying(0);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .expect("no panic");
    }
}
