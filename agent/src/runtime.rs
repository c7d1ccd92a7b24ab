//! Running containers from pulled images, through containerd and runc
//! (the first slice of the runtime: run, ps, logs, stop, rm).
//!
//! A container is three containerd objects named after it: a snapshot
//! (key = the container's name) prepared on the image's top chain id, a
//! container record carrying the OCI spec the agent built (see [`spec`]),
//! and a task (runc's process). Every containerd call is in [`calls`], as
//! methods of [`Containerd`]; nothing else in the runtime talks to it.
//!
//! **Output.** The task's stdout and stderr go to one file,
//! `<data_dir>/containers/<name>/output.log`, given to containerd as a
//! `file://` URI. The runc shim (v2, containerd 1.6) opens that file
//! itself and copies the container's pipes into it, so output is kept
//! while no agent runs: `berth-agent run` is a CLI that exits after the
//! start. FIFOs (containerd's default, what `ctr run` uses) need a reader
//! for the container's whole life; with nobody reading them the container
//! blocks once the pipe buffer is full. With `--log-max-size` the output
//! goes to a FIFO instead, drained by a rotating copier process that
//! outlives the CLI (see [`logcopy`] for why the shim's file cannot be
//! rotated).
//!
//! **Settings.** Privileged mode, capabilities, bind mounts, named volumes
//! (`<data_dir>/volumes/<name>`, created on first use, never removed by
//! `rm`), memory and CPU limits are parsed and validated in [`settings`]
//! and become OCI spec fields in [`spec`].
//!
//! **Network.** By default containers share the host's network namespace
//! and get the host's `/etc/resolv.conf` and `/etc/hosts` read-only. With
//! `--network bridge` (implied by `--publish`) or `none` runc gives them a
//! namespace of their own, which [`network`] attaches through the CNI
//! plugins between task create and start, and detaches once the task has
//! ended; they get a generated `/etc/hosts` naming their address.

pub mod calls;
pub mod logcopy;
pub mod network;
pub mod settings;
pub mod spec;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use containerd_client::tonic::Code;
use containerd_client::types::Mount;
use containerd_client::types::v1::Status;

use crate::config::AgentConfig;
use crate::containerd::{Containerd, ContainerdError};
use crate::pull::{PullError, Puller, chain_ids};
use crate::reference::{ImageRef, ReferenceError};
use calls::NewContainer;

/// Largest manifest, index or config the runtime reads from containerd.
const MAX_JSON_BYTES: usize = 4 << 20;
/// How long a run's lease keeps its snapshot if the agent dies between
/// Prepare and the container record.
const RUN_LEASE_TTL: Duration = Duration::from_secs(600);
/// After SIGKILL, how long to wait for the exit before giving up.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// Label marking containers created by the agent.
pub const MANAGED_LABEL: &str = "io.berth.agent/managed";
/// Label with the image reference as given to `run`.
pub const REFERENCE_LABEL: &str = "io.berth.agent/reference";
/// Label with the container's stop timeout in seconds, what `stop` uses
/// unless told otherwise.
pub const STOP_TIMEOUT_LABEL: &str = "io.berth.agent/stop-timeout";
/// The stop timeout when `run` was given none (the product's default).
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Label with the named volumes a container uses, comma-separated, so
/// `volumes` can say which containers use a volume without parsing specs.
pub const VOLUMES_LABEL: &str = "io.berth.agent/volumes";
/// Label with the container's network mode (absent: host).
pub const NETWORK_LABEL: &str = "io.berth.agent/network";
/// Label with the published ports, comma-separated, so a second `run`
/// can refuse a host port already taken without reading every spec.
pub const PORTS_LABEL: &str = "io.berth.agent/ports";

/// Why a runtime operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0}")]
    Invalid(String),
    #[error("no container {0}")]
    NoContainer(String),
    #[error("container {0} already exists")]
    Exists(String),
    #[error("container {0} is running; stop it first")]
    Running(String),
    #[error("image {name}: {message}")]
    Image { name: String, message: String },
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Pull(#[from] PullError),
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
    #[error("building the OCI spec: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::Io {
        path: path.display().to_string(),
        source,
    }
}

type Result<T> = std::result::Result<T, RuntimeError>;

/// What `run` is asked for.
#[derive(Clone, Debug, Default)]
pub struct RunRequest {
    pub name: String,
    /// As typed on the box (`app:v1`); resolved into the namespace.
    pub image: String,
    pub overrides: spec::Overrides,
    /// Between SIGTERM and SIGKILL on `stop`; [`DEFAULT_STOP_TIMEOUT`]
    /// when `None`.
    pub stop_timeout: Option<Duration>,
}

/// A started container.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Started {
    pub name: String,
    /// containerd's image name.
    pub image: String,
    pub pid: u32,
    pub log: PathBuf,
    /// Whether `run` had to pull the image first.
    pub pulled: bool,
}

/// A named volume as `volumes` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct VolumeInfo {
    pub name: String,
    pub path: PathBuf,
    /// The containers (running or not) that mount it.
    pub used_by: Vec<String>,
}

/// A container as `ps` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ContainerInfo {
    pub name: String,
    pub image: String,
    /// `created` (no task), `running`, `stopped`, `paused`, `unknown`.
    pub state: String,
    pub pid: Option<u32>,
    /// Set once the task has exited.
    pub exit_status: Option<u32>,
    /// `host`, `bridge` or `none`.
    pub network: String,
    /// The address on the bridge while the container is attached.
    pub address: Option<std::net::Ipv4Addr>,
    /// `[HOST_IP:]HOST_PORT:CONTAINER_PORT/PROTO`.
    pub ports: Vec<String>,
}

/// How a `stop` ended.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Stopped {
    pub name: String,
    /// `None` when the container was not running.
    pub exit_status: Option<u32>,
    /// SIGKILL was needed after the timeout.
    pub killed: bool,
    /// The timeout that applied, in seconds.
    pub timeout_secs: u64,
}

/// Runs containers of one node in its containerd namespace.
#[derive(Debug)]
pub struct Runtime {
    containerd: Containerd,
    cfg: AgentConfig,
}

impl Runtime {
    pub async fn new(cfg: &AgentConfig) -> Result<Runtime> {
        let containerd = Containerd::connect(
            &cfg.containerd.socket,
            &cfg.containerd.namespace,
            &cfg.containerd.snapshotter,
        )
        .await?;
        Ok(Runtime {
            containerd,
            cfg: cfg.clone(),
        })
    }

    /// The containerd client, for the supervisor's own calls (health
    /// checks, task states), which are methods in [`calls`] too.
    pub fn containerd(&self) -> &Containerd {
        &self.containerd
    }

    /// Where a container's output goes.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.cfg
            .data_dir
            .join("containers")
            .join(name)
            .join("output.log")
    }

    /// Creates and starts container `name` from an image, pulling the
    /// image first when containerd does not have it.
    pub async fn run(&self, req: &RunRequest) -> Result<Started> {
        validate_name(&req.name)?;
        req.overrides.settings.validate()?;
        check_bind_sources(&req.overrides.settings)?;
        let image = ImageRef::resolve(
            &req.image,
            &self.cfg.registry_host(),
            &self.cfg.registry.namespace,
        )?;
        let image_name = image.image_name();
        if self.containerd.container(&req.name).await?.is_some() {
            return Err(RuntimeError::Exists(req.name.clone()));
        }
        self.check_ports_free(&req.name, &req.overrides.settings.ports)
            .await?;
        let (target, pulled) = match self.containerd.image_target(&image_name).await? {
            Some(t) => (t, false),
            None => {
                // Only now is the node identity needed: a box running
                // cached images keeps working without the registry.
                let puller = Puller::new(&self.cfg).await?;
                puller.pull(&req.image, Arc::new(|_| {})).await?;
                let t = self
                    .containerd
                    .image_target(&image_name)
                    .await?
                    .ok_or_else(|| RuntimeError::Image {
                        name: image_name.clone(),
                        message: "no image record after the pull".into(),
                    })?;
                (t, true)
            }
        };
        // Before the container exists, so the image GC never sees a fresh
        // container's image as unused for long; a failure only costs GC
        // accuracy (the image ages from its creation), not the run.
        if let Err(e) = self
            .containerd
            .set_image_label(
                &image_name,
                crate::gc::LAST_USED_LABEL,
                &crate::gc::last_used_value(std::time::SystemTime::now()),
            )
            .await
        {
            tracing::warn!(image = %image_name, error = %e, "recording the image's last use");
        }
        let (config, top_chain) = self.image_config(&image_name, &target.digest).await?;
        let image_process = spec::ImageProcess::from_config(&config);

        let lease = self.containerd.create_lease(RUN_LEASE_TTL).await?;
        let created = self
            .create(req, &image_name, &image_process, &top_chain, &lease)
            .await;
        if let Err(e) = self.containerd.delete_lease(&lease).await {
            // It expires by itself; the container record holds the
            // snapshot from now on.
            tracing::warn!(%lease, error = %e, "deleting the run lease");
        }
        // `create` cleans up after itself: a failure there may be another
        // `run` of the same name winning the race, whose objects must stay.
        let rootfs = created?;
        match self.start(&req.name, rootfs, &req.overrides).await {
            Ok((pid, log)) => Ok(Started {
                name: req.name.clone(),
                image: image_name,
                pid,
                log,
                pulled,
            }),
            Err(e) => {
                self.cleanup(&req.name).await;
                Err(e)
            }
        }
    }

    /// Snapshot, spec and container record; the rootfs mounts.
    async fn create(
        &self,
        req: &RunRequest,
        image_name: &str,
        image_process: &spec::ImageProcess,
        top_chain: &str,
        lease: &str,
    ) -> Result<Vec<Mount>> {
        let mounts = match self
            .containerd
            .prepare_labelled(lease, &req.name, top_chain, HashMap::new())
            .await
        {
            Ok(m) => m,
            Err(e) if e.code() == Some(Code::AlreadyExists) => {
                return Err(RuntimeError::Invalid(format!(
                    "a snapshot named {} already exists: another `run` of that name, or an \
                     orphan of an interrupted one (containerd's GC removes it within {} s)",
                    req.name,
                    RUN_LEASE_TTL.as_secs()
                )));
            }
            Err(e) => return Err(e.into()),
        };
        let result = self
            .create_record(req, image_name, image_process, &mounts, lease)
            .await;
        if let Err(e) = result {
            // The snapshot is ours (its key is the name and Prepare
            // succeeded); the container record, if any, is not.
            let snapshotter = self.containerd.snapshotter().to_owned();
            let _ = self
                .containerd
                .remove_snapshot_of(&snapshotter, &req.name)
                .await;
            return Err(e);
        }
        Ok(mounts)
    }

    /// The spec and the container record on the prepared snapshot.
    async fn create_record(
        &self,
        req: &RunRequest,
        image_name: &str,
        image_process: &spec::ImageProcess,
        mounts: &[Mount],
        lease: &str,
    ) -> Result<()> {
        let layers = layer_dirs(mounts);
        let lookup = move |path: &str| read_from_layers(&layers, path);
        let plan = spec::plan(image_process, &req.overrides, &lookup)?;
        let hostname = req.overrides.hostname.as_deref().unwrap_or(&req.name);
        let cgroups = format!("/{}/{}", self.containerd.namespace(), req.name);
        let host = spec::HostFacts {
            volumes_dir: self.prepare_volumes(&req.overrides.settings)?,
            devices: if req.overrides.settings.privileged {
                settings::host_devices(Path::new("/dev"))
            } else {
                Vec::new()
            },
            // Only "every capability" needs the host's set (one more
            // connection to containerd's socket).
            capabilities: if req.overrides.settings.privileged
                || req
                    .overrides
                    .settings
                    .cap_add
                    .contains(&settings::CapName::All)
            {
                self.privileged_capabilities().await
            } else {
                None
            },
        };
        let network = req.overrides.settings.network;
        let host_files = if network == settings::NetworkMode::Host {
            spec::host_network_files()
        } else {
            self.own_network_files(&req.name, hostname)?
        };
        let oci = spec::build_with(
            &plan,
            hostname,
            &cgroups,
            &host_files,
            &req.overrides.settings,
            &host,
        )?;
        let spec_json = serde_json::to_vec(&oci)
            .map_err(|e| RuntimeError::Invalid(format!("serialising the spec: {e}")))?;
        let mut labels = HashMap::from([
            (MANAGED_LABEL.to_owned(), "true".to_owned()),
            (REFERENCE_LABEL.to_owned(), req.image.clone()),
            (
                STOP_TIMEOUT_LABEL.to_owned(),
                req.stop_timeout
                    .unwrap_or(DEFAULT_STOP_TIMEOUT)
                    .as_secs()
                    .to_string(),
            ),
        ]);
        let volumes = req.overrides.settings.volume_names();
        if !volumes.is_empty() {
            labels.insert(VOLUMES_LABEL.to_owned(), volumes.join(","));
        }
        if network != settings::NetworkMode::Host {
            labels.insert(NETWORK_LABEL.to_owned(), network.as_str().to_owned());
        }
        let ports = &req.overrides.settings.ports;
        if !ports.is_empty() {
            let list: Vec<String> = ports.iter().map(ToString::to_string).collect();
            labels.insert(PORTS_LABEL.to_owned(), list.join(","));
        }
        self.containerd
            .create_container(
                lease,
                NewContainer {
                    id: &req.name,
                    image: image_name,
                    spec_json,
                    snapshot_key: &req.name,
                    labels,
                },
            )
            .await
            .map_err(|e| match e.code() {
                Some(Code::AlreadyExists) => RuntimeError::Exists(req.name.clone()),
                _ => e.into(),
            })?;
        Ok(())
    }

    /// `<data_dir>/volumes`, with a directory for each volume `settings`
    /// uses, created on first use and never removed by `rm` (that is
    /// what makes it a volume).
    fn prepare_volumes(&self, settings: &settings::Settings) -> Result<PathBuf> {
        let dir = self.volumes_dir();
        for v in &settings.volumes {
            let path = dir.join(&v.name);
            std::fs::create_dir_all(&path).map_err(io_err(&path))?;
        }
        if settings.volumes.is_empty() {
            return Ok(dir);
        }
        // The shim resolves mount sources on its own: they must be absolute.
        std::fs::canonicalize(&dir).map_err(io_err(&dir))
    }

    fn volumes_dir(&self) -> PathBuf {
        self.cfg.data_dir.join("volumes")
    }

    /// The named volumes on this node and the containers using them.
    pub async fn volumes(&self) -> Result<Vec<VolumeInfo>> {
        let dir = self.volumes_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        let mut users: HashMap<String, Vec<String>> = HashMap::new();
        for c in self.containerd.list_containers().await? {
            if let Some(list) = c.labels.get(VOLUMES_LABEL) {
                for v in list.split(',').filter(|v| !v.is_empty()) {
                    users.entry(v.to_owned()).or_default().push(c.id.clone());
                }
            }
        }
        let mut out = Vec::new();
        for e in entries {
            let e = e.map_err(io_err(&dir))?;
            let is_dir = e.file_type().map_err(io_err(&e.path()))?.is_dir();
            let name = e.file_name().to_string_lossy().into_owned();
            if !is_dir || settings::validate_volume_name(&name).is_err() {
                continue;
            }
            let mut used_by = users.remove(&name).unwrap_or_default();
            used_by.sort();
            out.push(VolumeInfo {
                name,
                path: e.path(),
                used_by,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Task create (runc create) and start, output into the log file:
    /// written by the shim itself without a size limit, by a rotating
    /// copier reading a FIFO with one (see [`logcopy`] for why).
    async fn start(
        &self,
        name: &str,
        rootfs: Vec<Mount>,
        overrides: &spec::Overrides,
    ) -> Result<(u32, PathBuf)> {
        let limits = &overrides.settings.log;
        let log = self.log_path(name);
        let dir = log.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        // The shim resolves the URI in its own working directory: it
        // must be absolute.
        let dir = std::fs::canonicalize(dir).map_err(io_err(dir))?;
        let log = dir.join("output.log");
        // A new run starts a new log (the shim appends).
        logcopy::remove_all(&log).map_err(io_err(&log))?;
        std::fs::File::create(&log).map_err(io_err(&log))?;
        if limits.max_size.is_none() {
            let uri = format!("file://{}", log.display());
            self.containerd.create_task(name, rootfs, &uri).await?;
        } else {
            let fifo = dir.join("output.fifo");
            match std::fs::remove_file(&fifo) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&fifo)(e)),
            }
            nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(|e| io_err(&fifo)(e.into()))?;
            let mut copier = spawn_copier(&dir, &fifo, &log, limits)?;
            // A path without a scheme is a FIFO to the shim.
            let path = fifo.display().to_string();
            if let Err(e) = self.containerd.create_task(name, rootfs, &path).await {
                // No shim will open the FIFO: the copier would wait forever.
                let _ = copier.kill();
                let _ = copier.wait();
                return Err(e.into());
            }
            // Reaped by a thread so the daemon collects no zombies; the
            // CLI exits first and leaves the copier to init.
            std::thread::spawn(move || {
                let _ = copier.wait();
            });
        }
        if overrides.settings.network != settings::NetworkMode::Host {
            let hostname = overrides.hostname.as_deref().unwrap_or(name);
            self.attach_network(name, hostname, &overrides.settings)
                .await?;
        }
        let pid = self.containerd.start_task(name).await?;
        Ok((pid, log))
    }

    /// What "every capability" can mean for a privileged container on
    /// this box: containerd's bounding set, which its shims and runc
    /// inherit (runc cannot grant a capability its parent lacks: the start
    /// fails with EPERM), as containerd's own `WithPrivileged` uses. Found
    /// through the socket's peer credentials, so the agent's own set (its
    /// systemd unit narrows it to what the agent itself needs) does not
    /// limit containers; the agent's set when containerd's cannot be read.
    async fn privileged_capabilities(
        &self,
    ) -> Option<std::collections::HashSet<oci_spec::runtime::Capability>> {
        let containerd_pid = match tokio::net::UnixStream::connect(&self.cfg.containerd.socket)
            .await
            .and_then(|s| s.peer_cred())
        {
            Ok(cred) => cred.pid(),
            Err(e) => {
                tracing::debug!(error = %e, "containerd's peer credentials");
                None
            }
        };
        containerd_pid
            .and_then(|pid| settings::bounding_set_of(&pid.to_string()))
            .or_else(settings::current_bounding_set)
    }

    /// `/etc/hosts` (generated) and `/etc/resolv.conf` for a container
    /// with a network namespace of its own.
    fn own_network_files(&self, name: &str, hostname: &str) -> Result<Vec<spec::HostFile>> {
        let dir = self.container_dir(name)?;
        let hosts = dir.join("hosts");
        write_atomic(&hosts, network::hosts_file(hostname, None).as_bytes())?;
        let mut files = vec![spec::HostFile {
            source: hosts,
            target: "/etc/hosts".into(),
        }];
        if let Some(resolv) = network::resolv_conf_source() {
            files.push(spec::HostFile {
                source: resolv,
                target: "/etc/resolv.conf".into(),
            });
        }
        Ok(files)
    }

    /// `<data_dir>/containers/<name>`, created, absolute (the shim and
    /// runc resolve paths on their own).
    fn container_dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.cfg.data_dir.join("containers").join(name);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        std::fs::canonicalize(&dir).map_err(io_err(&dir))
    }

    fn network_state_path(&self, name: &str) -> PathBuf {
        self.cfg
            .data_dir
            .join("containers")
            .join(name)
            .join("network.json")
    }

    /// The CNI container id: containerd's namespace keeps two agents'
    /// containers of one name apart on one host.
    fn cni_id(&self, name: &str) -> String {
        format!("{}-{name}", self.containerd.namespace())
    }

    /// Attaches the created task's network namespace (CNI ADD), records
    /// the attachment for the detach, and names the address in the
    /// container's `/etc/hosts`.
    async fn attach_network(
        &self,
        name: &str,
        hostname: &str,
        settings: &settings::Settings,
    ) -> Result<()> {
        // A crash may have left the attachment of an earlier task.
        self.release_network(name).await;
        let pid = self
            .containerd
            .task(name)
            .await?
            .map(|p| p.pid)
            .filter(|pid| *pid > 0)
            .ok_or_else(|| RuntimeError::Invalid(format!("container {name}: no task to attach")))?;
        let netns = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let cni = network::Cni::new(&self.cfg.network, &self.cfg.data_dir)?;
        let state = self.network_state_path(name);
        let attachment = cni
            .attach(
                &self.cni_id(name),
                &netns,
                settings.network,
                &settings.ports,
            )
            .await?;
        let json = serde_json::to_vec(&attachment)
            .map_err(|e| RuntimeError::Invalid(format!("recording the network: {e}")))?;
        if let Err(e) = write_atomic(&state, &json) {
            // Without the record nothing would ever detach it.
            let _ = cni.detach(&self.cni_id(name), &attachment).await;
            return Err(e);
        }
        let hosts = self.container_dir(name)?.join("hosts");
        // In place, not by rename: the container has the file's inode
        // bind-mounted already.
        std::fs::write(&hosts, network::hosts_file(hostname, attachment.address))
            .map_err(io_err(&hosts))?;
        Ok(())
    }

    /// Detaches the network of a container whose task has ended (CNI DEL:
    /// its address, port forwards and firewall rules). Failures are
    /// logged: they leave rules behind, which the next attach of the name
    /// retries, and must not keep a container from being stopped or
    /// removed.
    async fn release_network(&self, name: &str) {
        let state = self.network_state_path(name);
        let bytes = match std::fs::read(&state) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::warn!(container = name, error = %e, "reading the network record");
                return;
            }
        };
        let attachment: network::Attachment = match serde_json::from_slice(&bytes) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(container = name, error = %e, "unreadable network record; dropped");
                let _ = std::fs::remove_file(&state);
                return;
            }
        };
        let result = match network::Cni::new(&self.cfg.network, &self.cfg.data_dir) {
            Ok(cni) => cni.detach(&self.cni_id(name), &attachment).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                let _ = std::fs::remove_file(&state);
            }
            Err(e) => tracing::warn!(container = name, error = %e, "detaching the network"),
        }
    }

    /// Refuses host ports another container of the namespace publishes
    /// (running or not: it gets them back when it starts again).
    async fn check_ports_free(&self, name: &str, ports: &[settings::PortMapping]) -> Result<()> {
        if ports.is_empty() {
            return Ok(());
        }
        for c in self.containerd.list_containers().await? {
            let Some(theirs) = c.labels.get(PORTS_LABEL) else {
                continue;
            };
            for p in ports {
                let clash = theirs
                    .split(',')
                    .filter_map(|t| settings::parse_port(t).ok())
                    .any(|t| t.host_port == p.host_port && t.protocol == p.protocol);
                if clash && c.id != name {
                    return Err(RuntimeError::Invalid(format!(
                        "host port {}/{} is already published by container {}",
                        p.host_port,
                        p.protocol.as_str(),
                        c.id
                    )));
                }
            }
        }
        Ok(())
    }

    /// Best effort removal after a failed run: a failed `run` leaves
    /// nothing for `rm` to do.
    async fn cleanup(&self, name: &str) {
        let _ = self.containerd.kill_task(name, 9, true).await;
        let _ = self.containerd.delete_task(name).await;
        self.release_network(name).await;
        let _ = self.containerd.delete_container(name).await;
        let snapshotter = self.containerd.snapshotter().to_owned();
        let _ = self.containerd.remove_snapshot_of(&snapshotter, name).await;
    }

    /// The image's config and the chain id of its top layer, from
    /// containerd's content store (the node's platform picked from an
    /// index, as the pull did).
    async fn image_config(
        &self,
        name: &str,
        target: &str,
    ) -> Result<(oci_spec::image::ImageConfiguration, String)> {
        let bad = |message: String| RuntimeError::Image {
            name: name.to_owned(),
            message,
        };
        let mut digest = target.to_owned();
        let bytes = self
            .containerd
            .read_content(&digest, MAX_JSON_BYTES)
            .await?;
        let mut doc: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("{digest}: {e}")))?;
        if doc.get("manifests").is_some() {
            let platform = self.cfg.platform();
            let index: oci_spec::image::ImageIndex =
                serde_json::from_value(doc).map_err(|e| bad(format!("index {digest}: {e}")))?;
            let chosen = index
                .manifests()
                .iter()
                .find(|m| {
                    m.platform().as_ref().is_some_and(|p| {
                        platform.matches(
                            &p.os().to_string(),
                            &p.architecture().to_string(),
                            p.variant().as_deref(),
                        )
                    })
                })
                .ok_or_else(|| bad(format!("no manifest for this node's platform {platform}")))?;
            digest = chosen.digest().to_string();
            let bytes = self
                .containerd
                .read_content(&digest, MAX_JSON_BYTES)
                .await?;
            doc = serde_json::from_slice(&bytes).map_err(|e| bad(format!("{digest}: {e}")))?;
        }
        let manifest: oci_spec::image::ImageManifest =
            serde_json::from_value(doc).map_err(|e| bad(format!("manifest {digest}: {e}")))?;
        let config_digest = manifest.config().digest().to_string();
        let bytes = self
            .containerd
            .read_content(&config_digest, MAX_JSON_BYTES)
            .await?;
        let config: oci_spec::image::ImageConfiguration = serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("config {config_digest}: {e}")))?;
        let diff_ids: Vec<String> = config.rootfs().diff_ids().clone();
        let top = chain_ids(&diff_ids)
            .pop()
            .ok_or_else(|| bad("the image has no layers".into()))?;
        Ok((config, top))
    }

    /// Every container of the namespace with its task's state.
    pub async fn ps(&self) -> Result<Vec<ContainerInfo>> {
        // One list of tasks rather than a Get per container; a task that
        // appears between the two lists shows as `created` this time.
        let containers = self.containerd.list_containers().await?;
        let mut tasks: HashMap<String, containerd_client::types::v1::Process> = self
            .containerd
            .list_tasks()
            .await?
            .into_iter()
            // containerd 1.6 leaves `container_id` empty in this list; an
            // init process's `id` is its container's.
            .map(|p| {
                let id = if p.container_id.is_empty() {
                    p.id.clone()
                } else {
                    p.container_id.clone()
                };
                (id, p)
            })
            .collect();
        let mut out = Vec::new();
        for c in containers {
            let task = tasks.remove(&c.id);
            let (state, pid, exit_status) = match task {
                None => ("created", None, None),
                Some(p) => match Status::try_from(p.status).unwrap_or(Status::Unknown) {
                    Status::Running => ("running", Some(p.pid), None),
                    Status::Stopped => ("stopped", None, Some(p.exit_status)),
                    Status::Created => ("created", Some(p.pid), None),
                    Status::Paused | Status::Pausing => ("paused", Some(p.pid), None),
                    Status::Unknown => ("unknown", None, None),
                },
            };
            let address = std::fs::read(self.network_state_path(&c.id))
                .ok()
                .and_then(|b| serde_json::from_slice::<network::Attachment>(&b).ok())
                .and_then(|a| a.address);
            out.push(ContainerInfo {
                network: c
                    .labels
                    .get(NETWORK_LABEL)
                    .cloned()
                    .unwrap_or_else(|| "host".into()),
                ports: c
                    .labels
                    .get(PORTS_LABEL)
                    .map(|l| l.split(',').map(str::to_owned).collect())
                    .unwrap_or_default(),
                address,
                name: c.id,
                image: c.image,
                state: state.to_owned(),
                pid,
                exit_status,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The log file of an existing container.
    pub async fn logs(&self, name: &str) -> Result<PathBuf> {
        validate_name(name)?;
        if self.containerd.container(name).await?.is_none() {
            return Err(RuntimeError::NoContainer(name.to_owned()));
        }
        Ok(self.log_path(name))
    }

    /// SIGTERM, then SIGKILL (to every process of the container) if it
    /// has not exited after `timeout` (default: the container's own stop
    /// timeout, given to `run`). The task stays, stopped, so `ps` shows
    /// the exit status; `rm` deletes it.
    pub async fn stop(&self, name: &str, timeout: Option<Duration>) -> Result<Stopped> {
        let stopped = self.stop_task(name, timeout).await?;
        // The task has ended: its network namespace is gone, and its
        // address and port forwards go with it.
        self.release_network(name).await;
        Ok(stopped)
    }

    async fn stop_task(&self, name: &str, timeout: Option<Duration>) -> Result<Stopped> {
        validate_name(name)?;
        let Some(container) = self.containerd.container(name).await? else {
            return Err(RuntimeError::NoContainer(name.to_owned()));
        };
        let timeout = timeout.unwrap_or_else(|| {
            container
                .labels
                .get(STOP_TIMEOUT_LABEL)
                .and_then(|s| s.parse().ok())
                .map_or(DEFAULT_STOP_TIMEOUT, Duration::from_secs)
        });
        let not_running = Stopped {
            name: name.to_owned(),
            exit_status: None,
            killed: false,
            timeout_secs: timeout.as_secs(),
        };
        match self.containerd.task(name).await? {
            Some(p) if p.status == Status::Running as i32 => {}
            Some(p) if p.status == Status::Stopped as i32 => {
                return Ok(Stopped {
                    exit_status: Some(p.exit_status),
                    ..not_running
                });
            }
            Some(_) => {
                // Created or paused: nothing ran to ask politely.
                self.containerd.kill_task(name, 9, true).await?;
                let status = self.wait(name, KILL_WAIT).await?;
                return Ok(Stopped {
                    exit_status: status,
                    killed: true,
                    ..not_running
                });
            }
            None => return Ok(not_running),
        }
        // SIGTERM to init only, as Docker does: it is init's job to pass
        // it on; SIGKILL below reaches everything.
        if !self.containerd.kill_task(name, 15, false).await? {
            let status = self.containerd.task(name).await?.map(|p| p.exit_status);
            return Ok(Stopped {
                exit_status: status,
                ..not_running
            });
        }
        if let Some(status) = self.wait(name, timeout).await? {
            return Ok(Stopped {
                exit_status: Some(status),
                ..not_running
            });
        }
        tracing::info!(name, ?timeout, "no exit after SIGTERM; sending SIGKILL");
        self.containerd.kill_task(name, 9, true).await?;
        let status = self.wait(name, KILL_WAIT).await?;
        if status.is_none() {
            return Err(RuntimeError::Invalid(format!(
                "container {name} did not exit {KILL_WAIT:?} after SIGKILL"
            )));
        }
        Ok(Stopped {
            exit_status: status,
            killed: true,
            ..not_running
        })
    }

    /// The exit status, or `None` if the task did not exit within `limit`.
    async fn wait(&self, name: &str, limit: Duration) -> Result<Option<u32>> {
        match tokio::time::timeout(limit, self.containerd.wait_task(name)).await {
            Ok(r) => Ok(Some(r?)),
            Err(_) => Ok(None),
        }
    }

    /// Deletes the task, the container record, its snapshot and its log.
    /// A running container is refused unless `force` (then it is killed).
    pub async fn rm(&self, name: &str, force: bool) -> Result<()> {
        validate_name(name)?;
        let Some(container) = self.containerd.container(name).await? else {
            return Err(RuntimeError::NoContainer(name.to_owned()));
        };
        if let Some(p) = self.containerd.task(name).await? {
            if p.status != Status::Stopped as i32 {
                if !force {
                    return Err(RuntimeError::Running(name.to_owned()));
                }
                self.containerd.kill_task(name, 9, true).await?;
                if self.wait(name, KILL_WAIT).await?.is_none() {
                    return Err(RuntimeError::Invalid(format!(
                        "container {name} did not exit {KILL_WAIT:?} after SIGKILL"
                    )));
                }
            }
            self.containerd.delete_task(name).await?;
        }
        self.release_network(name).await;
        self.containerd.delete_container(name).await?;
        // The container record was what kept the snapshot; remove it now
        // rather than wait for GC.
        if !container.snapshot_key.is_empty() {
            self.containerd
                .remove_snapshot_of(&container.snapshotter, &container.snapshot_key)
                .await?;
        }
        let dir = self.cfg.data_dir.join("containers").join(name);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&dir)(e)),
        }
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::fsutil::write_atomic(path, bytes).map_err(io_err(path))
}

/// Starts `berth-agent log-copier` (this same executable) on `fifo`,
/// its errors into `<dir>/log-copier.err`.
fn spawn_copier(
    dir: &Path,
    fifo: &Path,
    log: &Path,
    limits: &settings::LogLimits,
) -> Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().map_err(io_err(Path::new("/proc/self/exe")))?;
    let err_path = dir.join("log-copier.err");
    let err = std::fs::File::create(&err_path).map_err(io_err(&err_path))?;
    let mut cmd = std::process::Command::new(&exe);
    cmd.arg(logcopy::COPIER_SUBCOMMAND)
        .arg(fifo)
        .arg(log)
        .arg("--max-size")
        .arg(limits.max_size.unwrap_or(u64::MAX).to_string())
        .arg("--max-files")
        .arg(limits.max_files.to_string())
        .env_remove("BERTH_AGENT_CONFIG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(err)
        // Its own process group: a Ctrl-C meant for `run` must not end
        // the container's logging.
        .process_group(0);
    cmd.spawn().map_err(io_err(&exe))
}

/// Every bind source must exist on the host: runc would otherwise fail
/// at start with an error naming neither the flag nor the path, or
/// (Docker's old behaviour) create an empty directory where a file was
/// meant.
fn check_bind_sources(settings: &settings::Settings) -> Result<()> {
    for m in &settings.mounts {
        if let Err(e) = std::fs::metadata(&m.source) {
            return Err(RuntimeError::Invalid(format!(
                "--mount source {} (for {}): {e}",
                m.source.display(),
                m.target
            )));
        }
    }
    Ok(())
}

/// containerd's identifier rule (letters and digits, single `.`, `_` or
/// `-` between them, at most 76 characters); the name is also a directory
/// under the data dir, which the rule keeps safe.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 76
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && name
            .as_bytes()
            .first()
            .is_some_and(u8::is_ascii_alphanumeric)
        && name
            .as_bytes()
            .last()
            .is_some_and(u8::is_ascii_alphanumeric)
        && !name.contains("..")
        && !name
            .as_bytes()
            .windows(2)
            .any(|w| !w[0].is_ascii_alphanumeric() && !w[1].is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::Invalid(format!(
            "container name {name:?}: use letters, digits and single . _ - between them (at most 76)"
        )))
    }
}

/// The directories of the image's layers, top first, from a prepared
/// snapshot's mounts: overlay's `upperdir` and `lowerdir`s, or a bind's
/// source (one layer, or the native snapshotter).
fn layer_dirs(mounts: &[Mount]) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for m in mounts {
        match m.r#type.as_str() {
            "overlay" => {
                for o in &m.options {
                    if let Some(u) = o.strip_prefix("upperdir=") {
                        dirs.insert(0, PathBuf::from(u));
                    } else if let Some(l) = o.strip_prefix("lowerdir=") {
                        dirs.extend(l.split(':').map(PathBuf::from));
                    }
                }
            }
            "bind" | "rbind" => dirs.push(PathBuf::from(&m.source)),
            _ => {}
        }
    }
    dirs
}

/// Reads `path` (absolute, inside the image) as overlay would show it,
/// without mounting: the topmost layer holding it wins; a whiteout (a
/// character device) hides it. (Opaque directories are not honoured: an
/// image replacing all of `/etc` in an upper layer is rare, and the worst
/// outcome is a user name found that the image deleted.)
fn read_from_layers(dirs: &[PathBuf], path: &str) -> Option<String> {
    use std::os::unix::fs::FileTypeExt;
    let rel = path.trim_start_matches('/');
    for d in dirs {
        let p = d.join(rel);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_char_device() => return None,
            Ok(m) if m.is_file() => return std::fs::read_to_string(&p).ok(),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_follow_containerd() {
        for ok in ["web", "web-1", "a.b_c", "X9"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-web",
            "web-",
            "a..b",
            "a/b",
            "a b",
            "a-_b",
            &"x".repeat(77),
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn layers_read_top_first() {
        let dir = tempfile::tempdir().unwrap();
        let upper = dir.path().join("upper");
        let l1 = dir.path().join("l1");
        let l2 = dir.path().join("l2");
        for d in [&upper, &l1, &l2] {
            std::fs::create_dir_all(d.join("etc")).unwrap();
        }
        std::fs::write(l2.join("etc/passwd"), "old").unwrap();
        std::fs::write(l1.join("etc/passwd"), "new").unwrap();
        std::fs::write(l2.join("etc/group"), "g").unwrap();
        let mounts = vec![Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: vec![
                "index=off".into(),
                format!("workdir={}", dir.path().join("work").display()),
                format!("upperdir={}", upper.display()),
                format!("lowerdir={}:{}", l1.display(), l2.display()),
            ],
        }];
        let dirs = layer_dirs(&mounts);
        assert_eq!(dirs, [upper, l1, l2]);
        assert_eq!(
            read_from_layers(&dirs, "/etc/passwd").as_deref(),
            Some("new")
        );
        assert_eq!(read_from_layers(&dirs, "/etc/group").as_deref(), Some("g"));
        assert_eq!(read_from_layers(&dirs, "/etc/shadow"), None);
    }
}
