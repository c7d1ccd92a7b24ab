//! The supervisor: keeps the defined containers running according to
//! their execution type (`service`, `recurring`, `on-demand`), inside
//! `berth-agent daemon`.
//!
//! - [`definition`]: the definitions, JSON files under
//!   `<data_dir>/containers.d/` that the CLI writes and the daemon reads
//!   (polled every [`POLL`]), and the on-demand start requests.
//! - [`policy`]: restart backoff and cron ticks, pure.
//! - [`health`]: one health probe (Tasks.Exec inside the container).
//!
//! One worker task per definition looks at its container every [`POLL`]
//! (Tasks.Get) and acts. Polling rather than Tasks.Wait or the event
//! stream: a Wait is a gRPC stream per container that breaks whenever
//! containerd restarts and must be re-established, and exits that happen
//! while the daemon is down must be found by looking anyway; a poll finds
//! both the same way, costs one small call per container per tick, and
//! its worst-case latency (one tick) is noise next to a restart backoff.
//!
//! Containers outlive the daemon: the runc shim owns them, so stopping or
//! restarting the daemon stops nothing; a new daemon adopts what runs.
//! Restart and run counts survive in `<data_dir>/supervisor/status.json`,
//! which `ps` reads.

pub mod definition;
pub mod health;
pub mod policy;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use containerd_client::types::v1::Status;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::AgentConfig;
use crate::runtime::{Runtime, RuntimeError};
use definition::{Definition, DefinitionStore, ExecType};
use policy::{Backoff, Recurring, Tick};

/// How often definitions and containers are looked at.
pub const POLL: Duration = Duration::from_millis(500);
/// How long to wait before connecting to containerd again.
const RECONNECT: Duration = Duration::from_secs(2);

/// Why a supervisor operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl SupervisorError {
    fn io(path: &Path, source: std::io::Error) -> SupervisorError {
        SupervisorError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// What the supervisor knows of one container, persisted for `ps` and
/// for the next daemon.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerStatus {
    /// `service`, `recurring`, `on-demand`.
    #[serde(rename = "type")]
    pub exec_type: String,
    /// `running`, `exited`, `backoff` (waiting to restart), `idle`
    /// (waiting for a tick or a start), `unknown` (containerd unreachable).
    pub state: String,
    /// Starts after an exit or a failed health check.
    pub restarts: u64,
    /// Every start.
    pub runs: u64,
    /// The delay before the current or last restart.
    pub backoff_ms: u64,
    pub health_failures: u64,
    /// Recurring ticks skipped because the previous run still ran.
    pub skipped_ticks: u64,
    pub last_exit_status: Option<u32>,
    /// The next tick of a recurring container (RFC 3339).
    pub next_run: Option<String>,
    pub last_error: Option<String>,
}

/// `<data_dir>/supervisor/status.json`.
pub fn status_path(data_dir: &Path) -> PathBuf {
    data_dir.join("supervisor").join("status.json")
}

/// The status the daemon last wrote; empty when there is none.
pub fn read_status(data_dir: &Path) -> BTreeMap<String, ContainerStatus> {
    std::fs::read(status_path(data_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

type Labels = Vec<(String, String)>;

/// The supervisor's Prometheus metrics.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    containers: Family<Labels, Gauge>,
    restarts: Family<Labels, Counter>,
    health_failures: Family<Labels, Counter>,
    skipped_ticks: Family<Labels, Counter>,
}

/// Every state [`ContainerStatus::state`] takes, so a gauge drops to zero
/// when the last container leaves a state.
const STATES: [&str; 6] = ["running", "exited", "backoff", "idle", "held", "unknown"];

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "berth_agent_containers",
            "Supervised containers by state",
            self.containers.clone(),
        );
        registry.register(
            "berth_agent_container_restarts",
            "Restarts of supervised containers (after an exit or a failed health check)",
            self.restarts.clone(),
        );
        registry.register(
            "berth_agent_health_check_failures",
            "Failed health probes",
            self.health_failures.clone(),
        );
        registry.register(
            "berth_agent_recurring_skipped_ticks",
            "Cron ticks skipped because the previous run still ran",
            self.skipped_ticks.clone(),
        );
    }

    fn container(name: &str) -> Labels {
        vec![("container".to_owned(), name.to_owned())]
    }
}

/// What the workers share.
struct Ctx {
    runtime: Runtime,
    store: DefinitionStore,
    metrics: Metrics,
    status: Mutex<BTreeMap<String, ContainerStatus>>,
}

impl Ctx {
    fn update(&self, name: &str, f: impl FnOnce(&mut ContainerStatus)) {
        let mut all = self.status.lock().unwrap_or_else(|e| e.into_inner());
        f(all.entry(name.to_owned()).or_default());
    }
}

struct Worker {
    def: Definition,
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

/// Before a `stop` of `name`: a supervised service or recurring container
/// is held, so that its supervisor does not start it again (`true`).
/// Containers run once, and on-demand ones, need nothing.
pub fn hold_if_defined(data_dir: &Path, name: &str) -> Result<bool, SupervisorError> {
    let store = DefinitionStore::new(data_dir);
    match store.load(name)? {
        Some(d) if d.exec_type != ExecType::OnDemand => {
            store.hold(name)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Runs the supervisor until `shutdown` turns true. Containers are left
/// running on shutdown: a daemon upgrade or restart must not restart them.
pub async fn run(cfg: AgentConfig, metrics: Metrics, mut shutdown: watch::Receiver<bool>) {
    let runtime = loop {
        match Runtime::new(&cfg).await {
            Ok(r) => break r,
            Err(e) => {
                tracing::warn!(error = %e, "supervisor: containerd unreachable; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(RECONNECT) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    };
    let ctx = Arc::new(Ctx {
        runtime,
        store: DefinitionStore::new(&cfg.data_dir),
        metrics,
        status: Mutex::new(read_status(&cfg.data_dir)),
    });
    let status_file = status_path(&cfg.data_dir);
    let mut workers: HashMap<String, Worker> = HashMap::new();
    let mut written = String::new();
    tracing::info!(dir = %ctx.store.dir().display(), "supervisor running");
    loop {
        reconcile(&ctx, &mut workers).await;
        publish(&ctx, &status_file, &mut written);
        if *shutdown.borrow() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.changed() => {}
        }
    }
    for (_, w) in workers.drain() {
        let _ = w.stop.send(true);
        let _ = w.handle.await;
    }
    publish(&ctx, &status_file, &mut written);
    tracing::info!("supervisor stopped; containers keep running");
}

/// Workers for new definitions; changed ones restarted; containers of
/// removed definitions stopped and removed.
async fn reconcile(ctx: &Arc<Ctx>, workers: &mut HashMap<String, Worker>) {
    let (defs, broken) = match ctx.store.list() {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "reading the definitions");
            return;
        }
    };
    for name in &broken {
        tracing::warn!(name, "definition does not parse or validate; left as it is");
    }
    // Known from the status file too: a definition removed while no
    // daemon ran still has its container removed.
    let gone: BTreeSet<String> = {
        let status = ctx.status.lock().unwrap_or_else(|e| e.into_inner());
        status
            .keys()
            .chain(workers.keys())
            .filter(|n| !defs.contains_key(*n) && !broken.contains(n))
            .cloned()
            .collect()
    };
    for name in gone {
        if let Some(w) = workers.remove(&name) {
            let _ = w.stop.send(true);
            let _ = w.handle.await;
        }
        tracing::info!(name, "undefined: stopping and removing");
        if remove_container(&ctx.runtime, &name).await {
            let mut status = ctx.status.lock().unwrap_or_else(|e| e.into_inner());
            status.remove(&name);
        }
    }
    for (name, def) in defs {
        if let Some(w) = workers.get(&name) {
            if w.def == def && !w.handle.is_finished() {
                continue;
            }
            // Redefined: the old container goes, the new definition
            // starts from scratch.
            if let Some(w) = workers.remove(&name) {
                let _ = w.stop.send(true);
                let _ = w.handle.await;
                if w.def != def {
                    tracing::info!(name, "redefined: replacing the container");
                    remove_container(&ctx.runtime, &name).await;
                }
            }
        }
        let (stop, stop_rx) = watch::channel(false);
        let handle = tokio::spawn(worker(ctx.clone(), def.clone(), stop_rx));
        workers.insert(name, Worker { def, stop, handle });
    }
}

/// Stop (the container's own timeout) then remove; `true` when nothing is
/// left.
async fn remove_container(runtime: &Runtime, name: &str) -> bool {
    match runtime.stop(name, None).await {
        Ok(_) | Err(RuntimeError::NoContainer(_)) => {}
        Err(e) => tracing::warn!(name, error = %e, "stopping"),
    }
    match runtime.rm(name, true).await {
        Ok(()) | Err(RuntimeError::NoContainer(_)) => true,
        Err(e) => {
            tracing::error!(name, error = %e, "removing");
            false
        }
    }
}

/// Gauges from the statuses; the status file rewritten when it changed.
fn publish(ctx: &Ctx, path: &Path, written: &mut String) {
    let status = ctx.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for state in STATES {
        let n = status.values().filter(|s| s.state == state).count();
        ctx.metrics
            .containers
            .get_or_create(&vec![("state".to_owned(), state.to_owned())])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    let Ok(json) = serde_json::to_string_pretty(&status) else {
        return;
    };
    if json != *written {
        match definition::write_atomic(path, json.as_bytes()) {
            Ok(()) => *written = json,
            Err(e) => tracing::warn!(error = %e, "writing the supervisor status"),
        }
    }
}

/// The container as one poll sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    Running,
    /// Exited, or a record without a running task.
    Exited(Option<u32>),
    Missing,
}

async fn look(runtime: &Runtime, name: &str) -> Result<Seen, RuntimeError> {
    let ctrd = runtime.containerd();
    if ctrd.container(name).await?.is_none() {
        return Ok(Seen::Missing);
    }
    Ok(match ctrd.task(name).await? {
        Some(p) => match Status::try_from(p.status).unwrap_or(Status::Unknown) {
            // Paused is the operator's business: not an exit.
            Status::Running | Status::Paused | Status::Pausing | Status::Created => Seen::Running,
            Status::Stopped => Seen::Exited(Some(p.exit_status)),
            Status::Unknown => Seen::Exited(None),
        },
        None => Seen::Exited(None),
    })
}

/// One container's loop.
async fn worker(ctx: Arc<Ctx>, def: Definition, mut stop: watch::Receiver<bool>) {
    let name = def.name.clone();
    let mut backoff = Backoff::new(def.backoff.clone());
    let mut recurring = def
        .schedule
        .as_deref()
        .and_then(|s| policy::parse_schedule(s).ok())
        .map(|c| Recurring::new(c, chrono::Local::now()));
    ctx.update(&name, |s| {
        s.exec_type = def.exec_type.as_str().to_owned();
        s.next_run = recurring
            .as_ref()
            .and_then(Recurring::next)
            .map(|t| t.to_rfc3339());
    });
    // When a service may start next (now, at first).
    let mut next_start = Instant::now();
    // The run in progress as this worker knows it: since when.
    let mut running_since: Option<Instant> = None;
    let mut health = HealthState::default();
    // Once this worker has seen the container run or exit, the next
    // start is a restart.
    let mut ran = false;
    while !*stop.borrow() {
        let seen = match look(&ctx.runtime, &name).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(name, error = %e, "looking at the container");
                ctx.update(&name, |s| {
                    s.state = "unknown".into();
                    s.last_error = Some(e.to_string());
                });
                sleep_or_stop(&mut stop).await;
                continue;
            }
        };
        let now = Instant::now();
        match seen {
            Seen::Running => {
                if running_since.is_none() {
                    // Adopted from an earlier daemon, or started by us.
                    running_since = Some(now);
                    health.reset(def.health.as_ref(), now);
                }
                ran = true;
                ctx.update(&name, |s| s.state = "running".into());
            }
            Seen::Exited(status) => {
                if let Some(since) = running_since.take() {
                    let ran_for = now.duration_since(since);
                    tracing::info!(name, ?status, ?ran_for, "exited");
                    if def.exec_type == ExecType::Service {
                        let delay = backoff.on_exit(ran_for);
                        next_start = now + delay;
                        ctx.update(&name, |s| s.backoff_ms = millis(delay));
                    }
                }
                ran = true;
                ctx.update(&name, |s| {
                    s.last_exit_status = status;
                    s.state = if def.exec_type == ExecType::Service {
                        "backoff".into()
                    } else {
                        "exited".into()
                    };
                });
            }
            Seen::Missing => {
                running_since = None;
                ctx.update(&name, |s| {
                    s.state = if def.exec_type == ExecType::Service {
                        "backoff".into()
                    } else {
                        "idle".into()
                    };
                });
            }
        }
        let running = seen == Seen::Running;
        // Stopped by hand (`stop`): no automatic start until released.
        let held = def.exec_type != ExecType::OnDemand && ctx.store.is_held(&name);
        if held && !running {
            ctx.update(&name, |s| s.state = "held".into());
        }
        let start = match def.exec_type {
            ExecType::Service => !running && !held && now >= next_start,
            ExecType::Recurring => {
                let tick = recurring
                    .as_mut()
                    .map_or(Tick::Wait, |r| r.poll(chrono::Local::now(), running));
                if tick == Tick::Skip {
                    tracing::info!(name, "tick skipped: the previous run still runs");
                    ctx.metrics
                        .skipped_ticks
                        .get_or_create(&Metrics::container(&name))
                        .inc();
                    ctx.update(&name, |s| s.skipped_ticks += 1);
                }
                let next = recurring
                    .as_ref()
                    .and_then(Recurring::next)
                    .map(|t| t.to_rfc3339());
                ctx.update(&name, |s| s.next_run = next);
                tick == Tick::Start && !held
            }
            ExecType::OnDemand => match ctx.store.take_start(&name) {
                Ok(true) if running => {
                    tracing::info!(name, "start asked while running: ignored");
                    false
                }
                Ok(asked) => asked,
                Err(e) => {
                    tracing::warn!(name, error = %e, "reading the start request");
                    false
                }
            },
        };
        let mut restart = false;
        if running
            && let Some(check) = &def.health
            && health.due(now)
        {
            match health::probe(ctx.runtime.containerd(), &name, check).await {
                Ok(()) => health.passed(check, Instant::now()),
                Err(why) => {
                    ctx.metrics
                        .health_failures
                        .get_or_create(&Metrics::container(&name))
                        .inc();
                    ctx.update(&name, |s| s.health_failures += 1);
                    restart = health.failed(check, Instant::now());
                    tracing::warn!(name, why, failures = health.failures, "health check failed");
                }
            }
        }
        if start || restart {
            if restart {
                tracing::warn!(name, "unhealthy: restarting");
            }
            let is_restart = restart || (ran && def.exec_type == ExecType::Service);
            match start_container(&ctx, &def).await {
                Ok(()) => {
                    let now = Instant::now();
                    running_since = Some(now);
                    health.reset(def.health.as_ref(), now);
                    ran = true;
                    if is_restart {
                        ctx.metrics
                            .restarts
                            .get_or_create(&Metrics::container(&name))
                            .inc();
                    }
                    ctx.update(&name, |s| {
                        s.runs += 1;
                        s.restarts += u64::from(is_restart);
                        s.state = "running".into();
                        s.last_error = None;
                    });
                }
                Err(e) => {
                    tracing::error!(name, error = %e, "start failed");
                    running_since = None;
                    if def.exec_type == ExecType::Service {
                        let delay = backoff.on_exit(Duration::ZERO);
                        next_start = Instant::now() + delay;
                        ctx.update(&name, |s| s.backoff_ms = millis(delay));
                    }
                    ctx.update(&name, |s| s.last_error = Some(e.to_string()));
                }
            }
        }
        sleep_or_stop(&mut stop).await;
    }
}

/// A new run: what is left of the previous one (stopped task, record,
/// snapshot) removed, then `run` as the CLI does it (pulling if needed).
async fn start_container(ctx: &Ctx, def: &Definition) -> Result<(), RuntimeError> {
    match ctx.runtime.rm(&def.name, true).await {
        Ok(()) | Err(RuntimeError::NoContainer(_)) => {}
        Err(e) => return Err(e),
    }
    ctx.runtime.run(&def.run_request()).await.map(|_| ())
}

async fn sleep_or_stop(stop: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(POLL) => {}
        _ = stop.changed() => {}
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Probe timing of the current run.
#[derive(Debug, Default)]
struct HealthState {
    next: Option<Instant>,
    failures: u32,
}

impl HealthState {
    fn reset(&mut self, check: Option<&definition::HealthCheck>, now: Instant) {
        self.failures = 0;
        self.next = check.map(|c| {
            now + Duration::from_millis(c.start_period_ms) + Duration::from_millis(c.interval_ms)
        });
    }

    fn due(&self, now: Instant) -> bool {
        self.next.is_some_and(|t| now >= t)
    }

    fn passed(&mut self, check: &definition::HealthCheck, now: Instant) {
        self.failures = 0;
        self.next = Some(now + Duration::from_millis(check.interval_ms));
    }

    /// `true` when this failure makes the container unhealthy.
    fn failed(&mut self, check: &definition::HealthCheck, now: Instant) -> bool {
        self.failures += 1;
        self.next = Some(now + Duration::from_millis(check.interval_ms));
        self.failures >= check.retries
    }
}
