//! `scale-out`: berth-server on its scale-out engines (PostgreSQL metadata,
//! blobs in Garage over S3, both private servers started for the run), one
//! replica and two replicas behind a round-robin proxy, measured with the
//! same push, pull and manifest GET code as the embedded default. The
//! distribution column is distribution 2.8 under the same load: straight
//! for one replica, behind the same proxy (one backend) for two, so that
//! both columns pay the proxy's hop.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use test_support::{BerthServer, Garage, Postgres, RoundRobinProxy, S3Target};

use crate::MIB;
use crate::blobs::{self, PushKind};
use crate::manifests;
use crate::registries::Registry;
use crate::report::{Better, Report, Row, Target, median};

/// The scale-out servers of one run.
pub struct ScaleOut {
    pub replicas: Vec<BerthServer>,
    /// Round-robin over every replica.
    pub proxy: RoundRobinProxy,
    /// The same proxy code in front of distribution alone.
    pub distribution_proxy: RoundRobinProxy,
    pub bucket: S3Target,
}

impl ScaleOut {
    /// Starts PostgreSQL and Garage (private, on temp dirs), then two
    /// replicas of `binary` on them and the proxies.
    pub fn start(binary: &Path, distribution: SocketAddr) -> anyhow::Result<ScaleOut> {
        let pg = Postgres::shared();
        let bucket = Garage::shared().create_bucket();
        let mut env = pg.server_env(&pg.create_database());
        env.extend(bucket.server_env());
        let mut replicas = Vec::new();
        for i in 0..2 {
            let mut b = BerthServer::builder()
                .binary(binary)
                .postgres_metadata(false);
            for (k, v) in &env {
                b = b.env(k, v);
            }
            replicas.push(
                b.try_start()
                    .with_context(|| format!("starting scale-out replica {i}"))?,
            );
        }
        let proxy = RoundRobinProxy::start(replicas.iter().map(BerthServer::addr).collect())?;
        let distribution_proxy = RoundRobinProxy::start(vec![distribution])?;
        Ok(ScaleOut {
            replicas,
            proxy,
            distribution_proxy,
            bucket,
        })
    }

    /// One line for the report's header.
    pub fn describe(&self) -> String {
        format!(
            "scale-out: berth-server replicas pid {} and {} on a private PostgreSQL (port {}) \
             and Garage ({}, bucket {}); round-robin proxy {} (one backend connection per request)",
            self.replicas[0].pid(),
            self.replicas[1].pid(),
            Postgres::shared().port(),
            self.bucket.endpoint,
            self.bucket.bucket,
            self.proxy.url(),
        )
    }

    pub fn log_tails(&self, lines: usize) -> String {
        self.replicas
            .iter()
            .enumerate()
            .map(|(i, r)| {
                format!(
                    "----- replica {i} log tail -----\n{}",
                    crate::log_tail(&r.log_text(), lines)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The push, pull and manifest GET rows for one replica and for two.
pub async fn measure(
    so: &ScaleOut,
    distribution: &Registry,
    sizes: &crate::Sizes,
    runs: u32,
    report: &mut Report,
) -> anyhow::Result<()> {
    let first = &so.replicas[0];
    let configs = [
        (
            "x1",
            Registry::new("berth scale-out x1", &first.url(), first.pid(), 10_000)?,
            distribution.clone(),
        ),
        (
            "x2",
            Registry::new("berth scale-out x2", &so.proxy.url(), first.pid(), 10_000)?,
            Registry::new(
                "distribution via proxy",
                &so.distribution_proxy.url(),
                distribution.pid,
                distribution.max_catalog_page,
            )?,
        ),
    ];
    for (replicas, scale, dist) in configs {
        let what = match replicas {
            "x1" => "1 replica",
            _ => "2 replicas behind the proxy (dist. column: distribution behind it too)",
        };
        crate::progress::line(format!("scale-out, {what}: warm-up"));
        crate::warm_up(&scale).await?;
        crate::warm_up(&dist).await?;
        let regs = [scale, dist];

        crate::progress::line(format!("scale-out, {what}: monolithic push"));
        let ([b, d], _) = blobs::push_rates(&regs, PushKind::Monolithic, sizes.blob, runs).await?;
        report.rows.push(
            Row::new(
                "scale-out",
                format!(
                    "scale-out {replicas} (PG+S3): monolithic push ({} MiB)",
                    sizes.blob / MIB
                ),
                "MB/s",
                Better::Higher,
                (median(&b), median(&d)),
                Target::None,
            )
            .with_samples(b, d),
        );

        crate::progress::line(format!("scale-out, {what}: parallel pull"));
        let set = blobs::pull_setup(&regs, sizes.pull_blobs, sizes.blob).await?;
        let ([b, d], _) = blobs::pull_rates(&regs, &set, runs).await?;
        report.rows.push(
            Row::new(
                "scale-out",
                format!(
                    "scale-out {replicas} (PG+S3): {}-way parallel pull ({} MiB each)",
                    sizes.pull_blobs,
                    sizes.blob / MIB
                ),
                "MB/s",
                Better::Higher,
                (median(&b), median(&d)),
                Target::None,
            )
            .with_samples(b, d),
        );

        crate::progress::line(format!("scale-out, {what}: manifest GET"));
        let ([b, d], _) = manifests::manifest_get(&regs, sizes.wrk).await?;
        report.rows.push(Row::new(
            "scale-out",
            format!("scale-out {replicas} (PG+S3): manifest GET by tag (wrk)"),
            "req/s",
            Better::Higher,
            (b.requests_per_sec, d.requests_per_sec),
            Target::None,
        ));
        report.rows.push(Row::new(
            "scale-out",
            format!("  scale-out {replicas}: manifest GET p99 latency"),
            "ms",
            Better::Lower,
            (b.p99.as_secs_f64() * 1e3, d.p99.as_secs_f64() * 1e3),
            Target::None,
        ));
    }
    let served = so.proxy.served();
    report.notes.push(format!(
        "scale-out: the embedded default's rows are push, pull and manifest-get above; \
         through the proxy each request went to the next replica (requests served: replica 0 \
         {}, replica 1 {}); the proxy opens one backend connection per request, which both \
         columns of the x2 rows pay; PostgreSQL, Garage, both replicas, the proxy, wrk and \
         the client share this machine's 2 cores",
        served[0], served[1]
    ));
    Ok(())
}
