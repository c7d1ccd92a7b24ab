//! The containerd calls of the runtime: Images.Get, Content.Read,
//! Snapshots (Prepare, Remove), Containers and Tasks.
//!
//! They live here rather than in [`crate::containerd`] so that module stays
//! the pull's; they are still methods of [`Containerd`] (its channel,
//! namespace header and error type), so "only the agent's containerd
//! client talks to containerd" holds: nothing else in the crate builds a
//! gRPC request.

use std::collections::HashMap;

use containerd_client::services::v1::container::Runtime as ContainerRuntime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{PrepareSnapshotRequest, RemoveSnapshotRequest};
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteProcessRequest, DeleteTaskRequest, ExecProcessRequest, GetContainerRequest,
    GetImageRequest, GetRequest, KillRequest, ListContainersRequest, ListTasksRequest,
    ReadContentRequest, StartRequest, WaitRequest,
};
use containerd_client::tonic::Code;
use containerd_client::types::Mount;
use containerd_client::types::v1::Process;

use crate::containerd::{Containerd, ContainerdError};

type Result<T> = std::result::Result<T, ContainerdError>;

/// containerd's type URL for an OCI runtime spec carried in an `Any`
/// (what `ctr` and the Go client send; the runc shim decodes it as JSON).
const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// The same for an OCI process spec (Tasks.Exec), as `ctr tasks exec` sends.
const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
/// The runc shim v2, the only runtime that works on these boxes (crun does
/// not under cgroup v1 hybrid).
pub const RUNC_RUNTIME: &str = "io.containerd.runc.v2";

/// What a new container is made of.
pub struct NewContainer<'a> {
    pub id: &'a str,
    pub image: &'a str,
    pub spec_json: Vec<u8>,
    pub snapshot_key: &'a str,
    pub labels: HashMap<String, String>,
}

impl Containerd {
    /// The target of the image record `name`, `None` when there is none.
    pub async fn image_target(
        &self,
        name: &str,
    ) -> Result<Option<containerd_client::types::Descriptor>> {
        match ImagesClient::new(self.channel())
            .get(self.request(
                GetImageRequest {
                    name: name.to_owned(),
                },
                None,
            ))
            .await
        {
            Ok(r) => Ok(r.into_inner().image.and_then(|i| i.target)),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(ContainerdError::call("image get")(s)),
        }
    }

    /// Reads a whole (small) blob from the content store: manifests,
    /// indexes and configs, refused above `max` bytes.
    pub async fn read_content(&self, digest: &str, max: usize) -> Result<Vec<u8>> {
        let mut stream = ContentClient::new(self.channel())
            .read(self.request(
                ReadContentRequest {
                    digest: digest.to_owned(),
                    offset: 0,
                    size: 0,
                },
                None,
            ))
            .await
            .map_err(ContainerdError::call("content read"))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(piece) = stream
            .message()
            .await
            .map_err(ContainerdError::call("content read"))?
        {
            out.extend_from_slice(&piece.data);
            if out.len() > max {
                return Err(ContainerdError::Protocol(format!(
                    "content {digest} is over {max} bytes"
                )));
            }
        }
        Ok(out)
    }

    /// Prepares the container's writable snapshot `key` on `parent` (the
    /// image's top chain id) under `lease`, so GC cannot take it before the
    /// container record references it.
    pub async fn prepare_labelled(
        &self,
        lease: &str,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        let r = SnapshotsClient::new(self.channel())
            .prepare(self.request(
                PrepareSnapshotRequest {
                    snapshotter: self.snapshotter().to_owned(),
                    key: key.to_owned(),
                    parent: parent.to_owned(),
                    labels,
                },
                Some(lease),
            ))
            .await
            .map_err(ContainerdError::call("snapshot prepare"))?;
        Ok(r.into_inner().mounts)
    }

    /// Removes snapshot `key` of `snapshotter`; `false` when it was gone.
    pub async fn remove_snapshot_of(&self, snapshotter: &str, key: &str) -> Result<bool> {
        match SnapshotsClient::new(self.channel())
            .remove(self.request(
                RemoveSnapshotRequest {
                    snapshotter: snapshotter.to_owned(),
                    key: key.to_owned(),
                },
                None,
            ))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(ContainerdError::call("snapshot remove")(s)),
        }
    }

    /// Creates the container record (under `lease`, which still holds its
    /// snapshot).
    pub async fn create_container(&self, lease: &str, new: NewContainer<'_>) -> Result<()> {
        let container = Container {
            id: new.id.to_owned(),
            labels: new.labels,
            image: new.image.to_owned(),
            runtime: Some(ContainerRuntime {
                name: RUNC_RUNTIME.to_owned(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE_URL.to_owned(),
                value: new.spec_json,
            }),
            snapshotter: self.snapshotter().to_owned(),
            snapshot_key: new.snapshot_key.to_owned(),
            ..Container::default()
        };
        ContainersClient::new(self.channel())
            .create(self.request(
                CreateContainerRequest {
                    container: Some(container),
                },
                Some(lease),
            ))
            .await
            .map_err(ContainerdError::call("container create"))?;
        Ok(())
    }

    /// The container record `id`, `None` when there is none.
    pub async fn container(&self, id: &str) -> Result<Option<Container>> {
        match ContainersClient::new(self.channel())
            .get(self.request(GetContainerRequest { id: id.to_owned() }, None))
            .await
        {
            Ok(r) => Ok(r.into_inner().container),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(ContainerdError::call("container get")(s)),
        }
    }

    pub async fn list_containers(&self) -> Result<Vec<Container>> {
        let r = ContainersClient::new(self.channel())
            .list(self.request(ListContainersRequest { filters: vec![] }, None))
            .await
            .map_err(ContainerdError::call("container list"))?;
        Ok(r.into_inner().containers)
    }

    /// Deletes the container record; `false` when there was none.
    pub async fn delete_container(&self, id: &str) -> Result<bool> {
        match ContainersClient::new(self.channel())
            .delete(self.request(DeleteContainerRequest { id: id.to_owned() }, None))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(ContainerdError::call("container delete")(s)),
        }
    }

    /// Creates the container's task (runc create) with `rootfs` and both
    /// output streams going to `stdio_uri`; returns its pid.
    pub async fn create_task(&self, id: &str, rootfs: Vec<Mount>, stdio_uri: &str) -> Result<u32> {
        let r = TasksClient::new(self.channel())
            .create(self.request(
                CreateTaskRequest {
                    container_id: id.to_owned(),
                    rootfs,
                    stdin: String::new(),
                    stdout: stdio_uri.to_owned(),
                    stderr: stdio_uri.to_owned(),
                    terminal: false,
                    ..CreateTaskRequest::default()
                },
                None,
            ))
            .await
            .map_err(ContainerdError::call("task create"))?;
        Ok(r.into_inner().pid)
    }

    pub async fn start_task(&self, id: &str) -> Result<u32> {
        let r = TasksClient::new(self.channel())
            .start(self.request(
                StartRequest {
                    container_id: id.to_owned(),
                    exec_id: String::new(),
                },
                None,
            ))
            .await
            .map_err(ContainerdError::call("task start"))?;
        Ok(r.into_inner().pid)
    }

    /// The task's init process (state, pid, exit status), `None` when the
    /// container has no task.
    pub async fn task(&self, id: &str) -> Result<Option<Process>> {
        match TasksClient::new(self.channel())
            .get(self.request(
                GetRequest {
                    container_id: id.to_owned(),
                    exec_id: String::new(),
                },
                None,
            ))
            .await
        {
            Ok(r) => Ok(r.into_inner().process),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(ContainerdError::call("task get")(s)),
        }
    }

    /// The init processes of every task in the namespace.
    pub async fn list_tasks(&self) -> Result<Vec<Process>> {
        let r = TasksClient::new(self.channel())
            .list(self.request(
                ListTasksRequest {
                    filter: String::new(),
                },
                None,
            ))
            .await
            .map_err(ContainerdError::call("task list"))?;
        Ok(r.into_inner().tasks)
    }

    /// Sends `signal` to the task's processes (`all`: every process of the
    /// container, not only init). `false` when there is no task or it has
    /// already exited.
    pub async fn kill_task(&self, id: &str, signal: u32, all: bool) -> Result<bool> {
        match TasksClient::new(self.channel())
            .kill(self.request(
                KillRequest {
                    container_id: id.to_owned(),
                    exec_id: String::new(),
                    signal,
                    all,
                },
                None,
            ))
            .await
        {
            Ok(_) => Ok(true),
            // containerd answers NotFound both for no task and for a
            // process that already exited.
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(ContainerdError::call("task kill")(s)),
        }
    }

    /// Waits until the task's init process exits; its exit status.
    pub async fn wait_task(&self, id: &str) -> Result<u32> {
        let r = TasksClient::new(self.channel())
            .wait(self.request(
                WaitRequest {
                    container_id: id.to_owned(),
                    exec_id: String::new(),
                },
                None,
            ))
            .await
            .map_err(ContainerdError::call("task wait"))?;
        Ok(r.into_inner().exit_status)
    }

    /// Deletes the (stopped) task; `false` when there was none.
    pub async fn delete_task(&self, id: &str) -> Result<bool> {
        match TasksClient::new(self.channel())
            .delete(self.request(
                DeleteTaskRequest {
                    container_id: id.to_owned(),
                },
                None,
            ))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(ContainerdError::call("task delete")(s)),
        }
    }

    /// Adds process `exec_id` to the running task of `id` (`process_json`:
    /// an OCI process spec) with its output discarded, and starts it. The
    /// health checks of the supervisor use it.
    pub async fn exec_start(&self, id: &str, exec_id: &str, process_json: Vec<u8>) -> Result<()> {
        TasksClient::new(self.channel())
            .exec(self.request(
                ExecProcessRequest {
                    container_id: id.to_owned(),
                    // Empty stdio: the shim gives the process /dev/null,
                    // so nobody has to drain a pipe.
                    stdin: String::new(),
                    stdout: String::new(),
                    stderr: String::new(),
                    terminal: false,
                    spec: Some(prost_types::Any {
                        type_url: PROCESS_TYPE_URL.to_owned(),
                        value: process_json,
                    }),
                    exec_id: exec_id.to_owned(),
                },
                None,
            ))
            .await
            .map_err(ContainerdError::call("task exec"))?;
        TasksClient::new(self.channel())
            .start(self.request(
                StartRequest {
                    container_id: id.to_owned(),
                    exec_id: exec_id.to_owned(),
                },
                None,
            ))
            .await
            .map_err(ContainerdError::call("exec start"))?;
        Ok(())
    }

    /// Waits until exec process `exec_id` of `id` exits; its exit status.
    pub async fn exec_wait(&self, id: &str, exec_id: &str) -> Result<u32> {
        let r = TasksClient::new(self.channel())
            .wait(self.request(
                WaitRequest {
                    container_id: id.to_owned(),
                    exec_id: exec_id.to_owned(),
                },
                None,
            ))
            .await
            .map_err(ContainerdError::call("exec wait"))?;
        Ok(r.into_inner().exit_status)
    }

    /// SIGKILLs exec process `exec_id` (a probe past its timeout) and
    /// deletes it; best effort, errors ignored: the process may be gone.
    pub async fn exec_remove(&self, id: &str, exec_id: &str, kill: bool) {
        if kill {
            let _ = TasksClient::new(self.channel())
                .kill(self.request(
                    KillRequest {
                        container_id: id.to_owned(),
                        exec_id: exec_id.to_owned(),
                        signal: 9,
                        all: false,
                    },
                    None,
                ))
                .await;
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                self.exec_wait(id, exec_id),
            )
            .await;
        }
        let _ = TasksClient::new(self.channel())
            .delete_process(self.request(
                DeleteProcessRequest {
                    container_id: id.to_owned(),
                    exec_id: exec_id.to_owned(),
                },
                None,
            ))
            .await;
    }
}
