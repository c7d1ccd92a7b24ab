//! The background task running online garbage collection periodically.

use std::sync::Arc;
use std::time::{Duration, Instant};

use registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::config::GcConfig;
use crate::metrics::Metrics;

/// Runs GC every `interval_secs` until `shutdown`; every `sweep_every`th
/// pass also sweeps the blob store. A failed pass is logged and retried at
/// the next interval: GC is housekeeping, never a reason to stop serving.
pub async fn run(
    registry: Registry,
    cfg: GcConfig,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(Duration::from_secs(cfg.interval_secs));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick fires at once; skip it so start-up is not slowed down.
    ticker.tick().await;
    let mut pass: u64 = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        pass += 1;
        let sweep = pass.is_multiple_of(u64::from(cfg.sweep_every));
        let started = Instant::now();
        match registry.collect_garbage(sweep).await {
            Ok(report) if report.skipped => {
                tracing::debug!("garbage collection pass skipped: another replica is collecting");
            }
            Ok(report) => {
                metrics.record_gc(&report, started.elapsed().as_secs_f64());
                tracing::info!(
                    ?report,
                    sweep,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "garbage collection pass"
                );
            }
            Err(e) => {
                metrics.gc_failures.inc();
                tracing::error!(error = %e, "garbage collection pass failed");
            }
        }
    }
}
