//! The node's side of the control plane: what `berth-agent daemon` does
//! with the server's commands and desired state (the connection itself is
//! `control-plane-client`'s).
//!
//! - Commands are journalled (`<data_dir>/control/commands/<id>.json`)
//!   before they run, so a command delivered twice (the server re-sends
//!   everything unfinished on each connection) runs once: the second copy
//!   gets the first one's result. A command that was running when the agent
//!   stopped is answered as interrupted, never run again (at most once:
//!   a half-done `run` is not safe to repeat blindly). Results stay in the
//!   journal until the server confirms them, and are sent again on every
//!   connection until then.
//! - The desired state (`<data_dir>/control/desired.json`) becomes
//!   supervisor definitions (`containers.d/`), which the supervisor runs
//!   whether or not the server is reachable; the containers the previous
//!   desired state named and the new one does not are undefined (stopped
//!   and removed). Definitions made on the box under other names are left
//!   alone. Drift (a desired container missing, not running, or redefined
//!   on the box) goes up with every report.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use control_plane_client::{Handler, Uplink};
use control_plane_proto as proto;
use proto::{agent_message, command, command_result, server_message};
use serde::{Deserialize, Serialize};

use crate::config::AgentConfig;
use crate::containerd::Containerd;
use crate::runtime::settings::SettingsInput;
use crate::runtime::spec::Overrides;
use crate::runtime::{RunRequest, Runtime, RuntimeError};
use crate::supervisor::definition::{
    BackoffSettings, Definition, DefinitionStore, ExecType, HealthCheck, RunOptions,
};
use crate::{Progress, Puller};

/// Journal entries confirmed by the server are kept this long (a command
/// re-sent after that would run again; the server stops re-sending once
/// it has the result, which it confirms).
const KEEP_CONFIRMED: Duration = Duration::from_secs(7 * 86_400);
/// Pull progress goes up at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// Most bytes of container output a `logs` command returns.
const MAX_LOG_BYTES: u64 = 1 << 20;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0))
}

/// One journalled command.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    id: String,
    kind: String,
    received_at_ms: u64,
    result: Option<proto::CommandResult>,
    /// The server confirmed it stored the result.
    confirmed: bool,
}

/// The commands this node has received, on disk.
#[derive(Debug)]
struct Journal {
    dir: PathBuf,
}

impl Journal {
    fn path(&self, id: &str) -> Option<PathBuf> {
        // Ids are the server's UUIDs; anything else never becomes a path.
        let ok = !id.is_empty()
            && id.len() <= 64
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        ok.then(|| self.dir.join(format!("{id}.json")))
    }

    fn load(&self, id: &str) -> Option<Entry> {
        let bytes = std::fs::read(self.path(id)?).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn save(&self, e: &Entry) -> std::io::Result<()> {
        let path = self
            .path(&e.id)
            .ok_or_else(|| std::io::Error::other("bad command id"))?;
        std::fs::create_dir_all(&self.dir)?;
        let json = serde_json::to_vec(e).map_err(std::io::Error::other)?;
        crate::fsutil::write_atomic(&path, &json)
    }

    fn entries(&self) -> Vec<Entry> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|f| std::fs::read(f.path()).ok())
            .filter_map(|b| serde_json::from_slice::<Entry>(&b).ok())
            .collect()
    }

    /// Drops confirmed entries older than [`KEEP_CONFIRMED`].
    fn prune(&self) {
        let horizon =
            now_ms().saturating_sub(u64::try_from(KEEP_CONFIRMED.as_millis()).unwrap_or(0));
        for e in self.entries() {
            if e.confirmed
                && e.received_at_ms < horizon
                && let Some(p) = self.path(&e.id)
            {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// The desired state as the agent keeps it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Desired {
    generation: u64,
    containers: Vec<proto::ContainerSpec>,
    /// Why the last desired state could not be applied.
    error: Option<String>,
}

/// A pull's progress as the callback leaves it: the latest of each blob,
/// the blobs changed since the last message, the last stage message.
type ProgressTable = (
    BTreeMap<String, proto::BlobProgress>,
    HashSet<String>,
    String,
);

/// The agent's [`Handler`].
#[derive(Debug)]
pub struct Remote {
    cfg: AgentConfig,
    journal: Journal,
    desired_path: PathBuf,
    /// Commands running in this process.
    running: Mutex<HashSet<String>>,
    /// One desired-state change at a time.
    desired_lock: tokio::sync::Mutex<()>,
}

impl Remote {
    pub fn new(cfg: AgentConfig) -> Arc<Remote> {
        let dir = cfg.data_dir.join("control");
        let journal = Journal {
            dir: dir.join("commands"),
        };
        journal.prune();
        Arc::new(Remote {
            desired_path: dir.join("desired.json"),
            journal,
            cfg,
            running: Mutex::new(HashSet::new()),
            desired_lock: tokio::sync::Mutex::new(()),
        })
    }

    fn desired(&self) -> Desired {
        std::fs::read(&self.desired_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save_desired(&self, d: &Desired) -> std::io::Result<()> {
        if let Some(dir) = self.desired_path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let json = serde_json::to_vec_pretty(d).map_err(std::io::Error::other)?;
        crate::fsutil::write_atomic(&self.desired_path, &json)
    }

    fn is_running(&self, id: &str) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
    }

    /// A command from the server: acknowledged, then run once.
    async fn command(self: &Arc<Self>, c: proto::Command, up: Uplink) {
        let id = c.id.clone();
        if self.journal.path(&id).is_none() {
            tracing::warn!(id, "command with an unusable id ignored");
            return;
        }
        let ack = agent_message::Body::Ack(proto::CommandAck { id: id.clone() });
        match self.journal.load(&id) {
            Some(Entry {
                result: Some(r), ..
            }) => {
                // Already run: the same answer again.
                up.send(ack).await;
                up.send(agent_message::Body::Result(r)).await;
                return;
            }
            Some(_) if self.is_running(&id) => {
                up.send(ack).await;
                return;
            }
            Some(mut e) => {
                // Journalled, but no process runs it: the agent stopped
                // while it ran.
                let r = failure(
                    &id,
                    "interrupted: the agent restarted while this command ran; it was not run again",
                );
                e.result = Some(r.clone());
                if let Err(err) = self.journal.save(&e) {
                    tracing::error!(id, error = %err, "journalling a result");
                }
                up.send(ack).await;
                up.send(agent_message::Body::Result(r)).await;
                return;
            }
            None => {}
        }
        let Some(action) = c.action else {
            // A newer server's action this agent does not know.
            let r = failure(&id, "this agent does not know the command; upgrade it");
            up.send(ack).await;
            up.send(agent_message::Body::Result(r)).await;
            return;
        };
        let entry = Entry {
            id: id.clone(),
            kind: action.kind().to_owned(),
            received_at_ms: now_ms(),
            result: None,
            confirmed: false,
        };
        if let Err(e) = self.journal.save(&entry) {
            // Without the journal entry the command could run twice:
            // refuse it instead.
            let r = failure(&id, &format!("journalling the command: {e}"));
            up.send(agent_message::Body::Result(r)).await;
            return;
        }
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone());
        up.send(ack).await;
        tracing::info!(id, kind = action.kind(), "running a command");
        let this = self.clone();
        tokio::spawn(async move {
            let result = this.execute(&id, action, &up).await;
            let mut entry = entry;
            entry.result = Some(result.clone());
            if let Err(e) = this.journal.save(&entry) {
                tracing::error!(id, error = %e, "journalling a result");
            }
            this.running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            tracing::info!(id, error = %result.error, "command done");
            // Not sent now (disconnected): sent on the next connection.
            up.send(agent_message::Body::Result(result)).await;
        });
    }

    async fn execute(
        &self,
        id: &str,
        action: command::Action,
        up: &Uplink,
    ) -> proto::CommandResult {
        let out = match action {
            command::Action::Pull(p) => self.pull(id, &p.image, up).await,
            command::Action::Run(r) => match r.container {
                Some(spec) => self.run(spec).await,
                None => Err("no container".into()),
            },
            command::Action::Stop(s) => self.stop(&s.name, s.timeout_secs).await,
            command::Action::Remove(r) => self.remove(&r.name, r.force).await,
            command::Action::ListImages(_) => self
                .images()
                .await
                .map(|images| command_result::Output::Images(proto::ImageList { images })),
            command::Action::ListContainers(_) => self.containers().await.map(|containers| {
                command_result::Output::Containers(proto::ContainerList { containers })
            }),
            command::Action::DeleteImage(d) => self.delete_image(&d.image).await,
            command::Action::TestRegistry(t) => Ok(self.test_registry(&t.image).await),
            command::Action::Logs(l) => self.logs(&l.name, l.tail_bytes).await,
        };
        match out {
            Ok(output) => proto::CommandResult {
                id: id.to_owned(),
                error: String::new(),
                finished_at_ms: now_ms(),
                output: Some(output),
            },
            Err(e) => failure(id, &e),
        }
    }

    async fn pull(
        &self,
        id: &str,
        image: &str,
        up: &Uplink,
    ) -> Result<command_result::Output, String> {
        let puller = Puller::new(&self.cfg).await.map_err(|e| e.to_string())?;
        // The callback is synchronous and frequent: it updates a table;
        // a task sends what changed twice a second.
        let table: Arc<Mutex<ProgressTable>> = Arc::default();
        let progress: crate::pull::ProgressFn = {
            let table = table.clone();
            Arc::new(move |p: Progress| {
                let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
                let (blobs, dirty, message) = &mut *t;
                let mut touch = |digest: &str, f: &dyn Fn(&mut proto::BlobProgress)| {
                    let b = blobs
                        .entry(digest.to_owned())
                        .or_insert_with(|| proto::BlobProgress {
                            digest: digest.to_owned(),
                            ..Default::default()
                        });
                    f(b);
                    dirty.insert(digest.to_owned());
                };
                match p {
                    Progress::Resolved { image, digest } => {
                        *message = format!("resolved {image} to {digest}")
                    }
                    Progress::BlobStarted { digest, size } => touch(&digest, &|b| {
                        b.total = size;
                        b.state = "downloading".into();
                    }),
                    Progress::BlobBytes { digest, bytes } => touch(&digest, &|b| b.done += bytes),
                    Progress::BlobDone { digest, existed } => touch(&digest, &|b| {
                        b.done = b.total;
                        b.state = if existed { "exists" } else { "done" }.into();
                    }),
                    Progress::Retry {
                        digest, attempt, ..
                    } => touch(&digest, &|b| {
                        b.state = format!("retrying ({attempt})");
                    }),
                    Progress::Unpacking { layer, of } => {
                        *message = format!("unpacking layer {layer}/{of}")
                    }
                }
            })
        };
        let flush = {
            let (table, up, id) = (table.clone(), up.clone(), id.to_owned());
            move || {
                let (table, up, id) = (table.clone(), up.clone(), id.clone());
                async move {
                    let msg = {
                        let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
                        let (blobs, dirty, message) = &mut *t;
                        let changed: Vec<_> = dirty
                            .drain()
                            .filter_map(|d| blobs.get(&d).cloned())
                            .collect();
                        let message = std::mem::take(message);
                        (!changed.is_empty() || !message.is_empty()).then_some(
                            proto::CommandProgress {
                                id,
                                blobs: changed,
                                message,
                            },
                        )
                    };
                    if let Some(m) = msg {
                        up.send(agent_message::Body::Progress(m)).await;
                    }
                }
            }
        };
        let ticker = {
            let flush = flush.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(PROGRESS_EVERY).await;
                    flush().await;
                }
            })
        };
        let pulled = puller.pull(image, progress).await;
        ticker.abort();
        flush().await;
        let pulled = pulled.map_err(|e| e.to_string())?;
        Ok(command_result::Output::Pulled(proto::Pulled {
            image: pulled.name,
            digest: pulled.digest,
            platform: pulled.platform,
            layers: u32::try_from(pulled.layers).unwrap_or(u32::MAX),
            downloaded: pulled.downloaded,
        }))
    }

    async fn run(&self, spec: proto::ContainerSpec) -> Result<command_result::Output, String> {
        if spec.exec_type.is_empty() {
            let req = run_request(&spec).map_err(|e| e.to_string())?;
            let started = Runtime::new(&self.cfg)
                .await
                .map_err(|e| e.to_string())?
                .run(&req)
                .await
                .map_err(|e| e.to_string())?;
            return Ok(command_result::Output::Started(proto::ContainerStarted {
                name: started.name,
                image: started.image,
                pid: started.pid,
                how: "started".into(),
            }));
        }
        let def = definition(&spec).map_err(|e| e.to_string())?;
        let store = DefinitionStore::new(&self.cfg.data_dir);
        store.save(&def).map_err(|e| e.to_string())?;
        store.release(&def.name).map_err(|e| e.to_string())?;
        if def.exec_type == ExecType::OnDemand {
            store.request_start(&def.name).map_err(|e| e.to_string())?;
        }
        Ok(command_result::Output::Started(proto::ContainerStarted {
            name: def.name,
            image: def.image,
            pid: 0,
            how: def.exec_type.as_str().to_owned(),
        }))
    }

    async fn stop(
        &self,
        name: &str,
        timeout: Option<u64>,
    ) -> Result<command_result::Output, String> {
        crate::supervisor::hold_if_defined(&self.cfg.data_dir, name).map_err(|e| e.to_string())?;
        let stopped = Runtime::new(&self.cfg)
            .await
            .map_err(|e| e.to_string())?
            .stop(name, timeout.map(Duration::from_secs))
            .await
            .map_err(|e| e.to_string())?;
        Ok(command_result::Output::Stopped(proto::ContainerStopped {
            name: name.to_owned(),
            exit_status: stopped.exit_status,
            killed: stopped.killed,
        }))
    }

    /// Undefines a supervised container (the supervisor stops and removes
    /// it) and removes whatever is left, as `berth-agent undefine` does.
    async fn remove(&self, name: &str, force: bool) -> Result<command_result::Output, String> {
        let store = DefinitionStore::new(&self.cfg.data_dir);
        let defined = store.remove(name).map_err(|e| e.to_string())?;
        if defined {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
            while crate::supervisor::read_status(&self.cfg.data_dir).contains_key(name)
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let runtime = Runtime::new(&self.cfg).await.map_err(|e| e.to_string())?;
        let existed = match runtime.rm(name, force || defined).await {
            Ok(()) => true,
            Err(RuntimeError::NoContainer(_)) => false,
            Err(e) => return Err(e.to_string()),
        };
        if !defined && !existed {
            return Err(format!("no container {name}"));
        }
        Ok(command_result::Output::Removed(proto::Done {
            message: format!("{name} removed"),
        }))
    }

    async fn containerd(&self) -> Result<Containerd, String> {
        Containerd::connect(
            &self.cfg.containerd.socket,
            &self.cfg.containerd.namespace,
            &self.cfg.containerd.snapshotter,
        )
        .await
        .map_err(|e| e.to_string())
    }

    async fn images(&self) -> Result<Vec<proto::Image>, String> {
        let list = self
            .containerd()
            .await?
            .list_images()
            .await
            .map_err(|e| e.to_string())?;
        Ok(list
            .into_iter()
            .map(|i| proto::Image {
                name: i.name,
                digest: i.digest,
                size: u64::try_from(i.size).unwrap_or(0),
                created_at: i
                    .created_at
                    .map(|t| chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339())
                    .unwrap_or_default(),
            })
            .collect())
    }

    /// What `berth-agent ps` shows: containerd's containers, the
    /// supervisor's view of the defined ones, and whether the desired
    /// state names them.
    async fn containers(&self) -> Result<Vec<proto::Container>, String> {
        let list = Runtime::new(&self.cfg)
            .await
            .map_err(|e| e.to_string())?
            .ps()
            .await
            .map_err(|e| e.to_string())?;
        let (defs, _) = DefinitionStore::new(&self.cfg.data_dir)
            .list()
            .map_err(|e| e.to_string())?;
        let status = crate::supervisor::read_status(&self.cfg.data_dir);
        let desired: HashSet<String> = self
            .desired()
            .containers
            .into_iter()
            .map(|c| c.name)
            .collect();
        let mut out: Vec<proto::Container> = list
            .into_iter()
            .map(|c| proto::Container {
                exec_type: defs
                    .get(&c.name)
                    .map(|d| d.exec_type.as_str().to_owned())
                    .unwrap_or_default(),
                restarts: status
                    .get(&c.name)
                    .map_or(0, |s| u32::try_from(s.restarts).unwrap_or(u32::MAX)),
                desired: desired.contains(&c.name),
                name: c.name,
                image: c.image,
                state: c.state,
                pid: c.pid,
                exit_status: c.exit_status,
            })
            .collect();
        for (name, d) in &defs {
            if !out.iter().any(|c| &c.name == name) {
                out.push(proto::Container {
                    name: name.clone(),
                    image: d.image.clone(),
                    state: status
                        .get(name)
                        .map_or("defined".into(), |s| s.state.clone()),
                    exec_type: d.exec_type.as_str().to_owned(),
                    restarts: status
                        .get(name)
                        .map_or(0, |s| u32::try_from(s.restarts).unwrap_or(u32::MAX)),
                    desired: desired.contains(name),
                    ..Default::default()
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn delete_image(&self, image: &str) -> Result<command_result::Output, String> {
        let name = crate::ImageRef::resolve(
            image,
            &self.cfg.registry_host(),
            &self.cfg.registry.namespace,
        )
        .map_err(|e| e.to_string())?
        .image_name();
        let in_use = crate::gc::image_uses(
            &Runtime::new(&self.cfg).await.map_err(|e| e.to_string())?,
            &self.cfg,
        )
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .any(|u| u.name == name && u.in_use);
        if in_use {
            return Err(format!("{name} is used by a container or a definition"));
        }
        if self
            .containerd()
            .await?
            .delete_image(&name)
            .await
            .map_err(|e| e.to_string())?
        {
            Ok(command_result::Output::ImageDeleted(proto::Done {
                message: format!("{name} removed"),
            }))
        } else {
            Err(format!("no image {name}"))
        }
    }

    /// A pull token from the node endpoint, then (when an image is named)
    /// its manifest from the registry with that token.
    async fn test_registry(&self, image: &str) -> command_result::Output {
        let started = std::time::Instant::now();
        let mut check = proto::RegistryCheck {
            registry: self.cfg.registry.url.clone(),
            ..Default::default()
        };
        let probe = if image.is_empty() {
            "berth-connectivity-check"
        } else {
            image
        };
        let outcome = async {
            let puller = Puller::new(&self.cfg).await.map_err(|e| e.to_string())?;
            match puller.resolve_digest(probe).await {
                Ok(d) => Ok(Some(d)),
                // A token was granted and the registry answered: only the
                // probe repository does not exist.
                Err(crate::PullError::NotFound(_)) if image.is_empty() => Ok(None),
                Err(crate::PullError::Auth(e)) => Err(format!("node token: {e}")),
                Err(e) => {
                    check.token_ok = true;
                    Err(e.to_string())
                }
            }
        }
        .await;
        match outcome {
            Ok(digest) => {
                check.token_ok = true;
                check.api_ok = true;
                check.resolved = digest.unwrap_or_default();
            }
            Err(e) => check.detail = e,
        }
        check.latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        command_result::Output::Registry(check)
    }

    async fn logs(&self, name: &str, tail: u64) -> Result<command_result::Output, String> {
        use std::io::{Read as _, Seek as _};
        let path = Runtime::new(&self.cfg)
            .await
            .map_err(|e| e.to_string())?
            .logs(name)
            .await
            .map_err(|e| e.to_string())?;
        let tail = if tail == 0 {
            64 << 10
        } else {
            tail.min(MAX_LOG_BYTES)
        };
        let read = || -> std::io::Result<(String, bool)> {
            let mut f = std::fs::File::open(&path)?;
            let len = f.metadata()?.len();
            let from = len.saturating_sub(tail);
            f.seek(std::io::SeekFrom::Start(from))?;
            let mut buf = Vec::new();
            f.take(tail).read_to_end(&mut buf)?;
            Ok((String::from_utf8_lossy(&buf).into_owned(), from > 0))
        };
        let (text, truncated) = match read() {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (String::new(), false),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        Ok(command_result::Output::Logs(proto::Logs {
            name: name.to_owned(),
            text,
            truncated,
        }))
    }

    /// Applies a desired state: every spec is checked first, so a bad one
    /// changes nothing.
    async fn apply_desired(&self, d: proto::DesiredState) {
        let _guard = self.desired_lock.lock().await;
        let previous = self.desired();
        let store = DefinitionStore::new(&self.cfg.data_dir);
        let defs: Result<Vec<Definition>, String> = d
            .containers
            .iter()
            .map(|c| definition(c).map_err(|e| format!("{}: {e}", c.name)))
            .collect();
        let mut next = Desired {
            generation: d.generation,
            containers: d.containers.clone(),
            error: None,
        };
        match defs {
            Err(e) => {
                tracing::warn!(generation = d.generation, error = %e, "desired state refused");
                // Keep running the previous state; remember the refusal.
                next = Desired {
                    error: Some(e),
                    generation: d.generation,
                    ..previous.clone()
                };
            }
            Ok(defs) => {
                let names: HashSet<&str> = defs.iter().map(|d| d.name.as_str()).collect();
                for def in &defs {
                    let same = matches!(store.load(&def.name), Ok(Some(ref old)) if old == def);
                    if !same && let Err(e) = store.save(def) {
                        next.error = Some(format!("{}: {e}", def.name));
                    }
                    // A new desired state says these run: a `stop` from
                    // before no longer holds them.
                    if let Err(e) = store.release(&def.name) {
                        next.error = Some(format!("{}: {e}", def.name));
                    }
                }
                for old in &previous.containers {
                    if !names.contains(old.name.as_str())
                        && let Err(e) = store.remove(&old.name)
                    {
                        next.error = Some(format!("{}: {e}", old.name));
                    }
                }
                tracing::info!(
                    generation = d.generation,
                    containers = defs.len(),
                    "desired state applied"
                );
            }
        }
        if let Err(e) = self.save_desired(&next) {
            tracing::error!(error = %e, "saving the desired state");
        }
    }

    /// Containers, images and drift.
    pub async fn build_report(&self) -> proto::NodeReport {
        let desired = self.desired();
        let containers = self.containers().await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "report: listing containers");
            Vec::new()
        });
        let images = self.images().await.unwrap_or_default();
        let store = DefinitionStore::new(&self.cfg.data_dir);
        let mut drift = Vec::new();
        for spec in &desired.containers {
            let want = definition(spec).ok();
            let on_disk = store.load(&spec.name).ok().flatten();
            let seen = containers.iter().find(|c| c.name == spec.name);
            let (kind, detail) = match (on_disk, seen) {
                (None, _) => ("missing", "no definition on the node".to_owned()),
                (Some(d), _) if want.as_ref() != Some(&d) => {
                    ("changed-locally", "redefined on the node".to_owned())
                }
                (Some(_), None) if spec.exec_type == "service" => {
                    ("missing", "no container yet".to_owned())
                }
                (Some(_), Some(c)) if spec.exec_type == "service" && c.state != "running" => {
                    ("not-running", format!("state {}", c.state))
                }
                _ => continue,
            };
            drift.push(proto::Drift {
                name: spec.name.clone(),
                kind: kind.into(),
                detail,
            });
        }
        proto::NodeReport {
            desired_generation: desired.generation,
            containers,
            images,
            drift,
            desired_error: desired.error.unwrap_or_default(),
        }
    }
}

fn failure(id: &str, error: &str) -> proto::CommandResult {
    proto::CommandResult {
        id: id.to_owned(),
        error: error.to_owned(),
        finished_at_ms: now_ms(),
        output: None,
    }
}

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

fn settings(
    spec: &proto::ContainerSpec,
) -> Result<crate::runtime::settings::Settings, RuntimeError> {
    SettingsInput {
        privileged: spec.privileged,
        cap_add: spec.cap_add.clone(),
        cap_drop: spec.cap_drop.clone(),
        mounts: spec.mounts.clone(),
        volumes: spec.volumes.clone(),
        memory: opt(&spec.memory),
        cpus: opt(&spec.cpus),
        log_max_size: opt(&spec.log_max_size),
        log_max_files: spec.log_max_files,
        network: opt(&spec.network),
        publish: spec.publish.clone(),
    }
    .settings()
}

fn run_request(spec: &proto::ContainerSpec) -> Result<RunRequest, RuntimeError> {
    Ok(RunRequest {
        name: spec.name.clone(),
        image: spec.image.clone(),
        overrides: Overrides {
            cmd: spec.cmd.clone(),
            env: spec.env.clone(),
            hostname: opt(&spec.hostname),
            user: opt(&spec.user),
            settings: settings(spec)?,
        },
        stop_timeout: spec.stop_timeout_secs.map(Duration::from_secs),
    })
}

/// A spec with an execution type as a supervisor definition (the same
/// defaults as `berth-agent define`).
fn definition(spec: &proto::ContainerSpec) -> Result<Definition, String> {
    let exec_type: ExecType = spec.exec_type.parse()?;
    // Zero (protobuf's "unset") means the default, as an absent flag does.
    fn or<T: PartialEq + Default>(v: T, default: T) -> T {
        if v == T::default() { default } else { v }
    }
    let d = BackoffSettings::default();
    let backoff = match &spec.backoff {
        Some(b) => BackoffSettings {
            initial_ms: or(b.initial_ms, d.initial_ms),
            max_ms: or(b.max_ms, d.max_ms),
            reset_after_secs: or(b.reset_after_secs, d.reset_after_secs),
        },
        None => d,
    };
    let health = spec
        .health
        .as_ref()
        .filter(|h| !h.shell.is_empty())
        .map(|h| {
            let d = HealthCheck::default();
            HealthCheck {
                cmd: vec!["/bin/sh".into(), "-c".into(), h.shell.clone()],
                interval_ms: or(h.interval_ms, d.interval_ms),
                timeout_ms: or(h.timeout_ms, d.timeout_ms),
                retries: or(h.retries, d.retries),
                start_period_ms: h.start_period_ms,
            }
        });
    let def = Definition {
        name: spec.name.clone(),
        image: spec.image.clone(),
        exec_type,
        schedule: opt(&spec.schedule),
        run: RunOptions {
            cmd: spec.cmd.clone(),
            env: spec.env.clone(),
            hostname: opt(&spec.hostname),
            user: opt(&spec.user),
            stop_timeout_secs: spec.stop_timeout_secs,
            settings: settings(spec).map_err(|e| e.to_string())?,
        },
        backoff,
        health,
    };
    def.validate().map_err(|e| e.to_string())?;
    Ok(def)
}

/// The [`Handler`] the daemon plugs into the connection: a [`Remote`]
/// behind an `Arc`, since commands run on tasks of their own.
#[derive(Debug, Clone)]
pub struct RemoteHandler(pub Arc<Remote>);

impl Handler for RemoteHandler {
    async fn hello(&self) -> proto::Hello {
        let p = self.0.cfg.platform();
        proto::Hello {
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            platform: Some(proto::Platform {
                os: p.os,
                architecture: p.architecture,
                variant: p.variant.unwrap_or_default(),
            }),
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_default(),
            desired_generation: self.0.desired().generation,
        }
    }

    async fn connected(&self, _welcome: proto::Welcome, up: Uplink) {
        // Results the server has not confirmed: sent again (it keeps the
        // first, confirms every copy).
        for e in self.0.journal.entries() {
            if let (Some(r), false) = (e.result, e.confirmed) {
                up.send(agent_message::Body::Result(r)).await;
            }
        }
        let report = self.0.build_report().await;
        up.send(agent_message::Body::Report(report)).await;
    }

    async fn message(&self, msg: server_message::Body, up: Uplink) {
        match msg {
            server_message::Body::Welcome(_) => {}
            server_message::Body::Command(c) => {
                self.0.command(c, up).await;
            }
            server_message::Body::ResultReceived(r) => {
                if let Some(mut e) = self.0.journal.load(&r.id)
                    && !e.confirmed
                {
                    e.confirmed = true;
                    let _ = self.0.journal.save(&e);
                }
            }
            server_message::Body::DesiredState(d) => {
                self.0.apply_desired(d).await;
                let report = self.0.build_report().await;
                up.send(agent_message::Body::Report(report)).await;
            }
        }
    }

    async fn report(&self) -> Option<proto::NodeReport> {
        Some(self.0.build_report().await)
    }
}
