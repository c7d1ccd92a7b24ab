//! The agent's only door to containerd: its v1 gRPC services over the
//! Unix socket (containerd 1.6 and newer), through `containerd-client`.
//!
//! Every call carries `containerd-namespace`, and, during a pull, the
//! `containerd-lease` of that pull, so containerd's GC cannot collect
//! content or snapshots that nothing references yet.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    AbortRequest, AddResourceRequest, ApplyRequest, CreateImageRequest, CreateRequest,
    DeleteImageRequest, DeleteRequest, Image, InfoRequest, ListImagesRequest, Resource,
    UpdateImageRequest, UpdateRequest, WriteAction, WriteContentRequest,
};
use containerd_client::services::v1::{Info as ContentInfo, StatusRequest};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Request, Status};
use containerd_client::types::{Descriptor, Mount};
use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};

/// A containerd failure, with what the agent was doing.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    #[error("connecting to containerd at {path}: {message}")]
    Connect { path: String, message: String },
    #[error("containerd {op}: {status}")]
    Call {
        op: &'static str,
        #[source]
        status: Status,
    },
    #[error("containerd {0}")]
    Protocol(String),
}

impl ContainerdError {
    pub(crate) fn call(op: &'static str) -> impl FnOnce(Status) -> ContainerdError {
        move |status| ContainerdError::Call { op, status }
    }

    /// The gRPC code of a failed call.
    pub fn code(&self) -> Option<Code> {
        match self {
            ContainerdError::Call { status, .. } => Some(status.code()),
            _ => None,
        }
    }

    /// containerd went away (restarted, upgraded, socket gone) rather
    /// than refusing the call: worth waiting for. tonic reconnects the
    /// channel on the next call; a stream cut by the restart ends as
    /// `Unavailable`, `Cancelled` or a transport error, or as a send into
    /// a closed stream.
    pub fn is_unavailable(&self) -> bool {
        match self {
            ContainerdError::Connect { .. } | ContainerdError::Protocol(_) => true,
            ContainerdError::Call { status, .. } => match status.code() {
                Code::Unavailable | Code::Cancelled => true,
                // containerd's own failures are `Unknown` too; only the
                // transport's count here.
                Code::Unknown => {
                    let m = status.message().to_ascii_lowercase();
                    ["transport", "h2 protocol", "connection", "broken pipe"]
                        .iter()
                        .any(|t| m.contains(t))
                }
                _ => false,
            },
        }
    }
}

type Result<T> = std::result::Result<T, ContainerdError>;

/// A connection to one containerd namespace.
#[derive(Clone)]
pub struct Containerd {
    channel: Channel,
    namespace: String,
    snapshotter: String,
}

impl std::fmt::Debug for Containerd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Containerd")
            .field("namespace", &self.namespace)
            .field("snapshotter", &self.snapshotter)
            .finish()
    }
}

/// An image record as listed.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ImageInfo {
    pub name: String,
    pub digest: String,
    pub media_type: String,
    pub size: i64,
    /// Kept out of `images --json`, whose shape scripts already read; the
    /// image GC needs them.
    #[serde(skip)]
    pub labels: HashMap<String, String>,
    #[serde(skip)]
    pub created_at: Option<SystemTime>,
}

impl Containerd {
    pub async fn connect(socket: &Path, namespace: &str, snapshotter: &str) -> Result<Containerd> {
        let channel =
            containerd_client::connect(socket)
                .await
                .map_err(|e| ContainerdError::Connect {
                    path: socket.display().to_string(),
                    message: format!("{e} ({e:?})"),
                })?;
        Ok(Containerd {
            channel,
            namespace: namespace.to_owned(),
            snapshotter: snapshotter.to_owned(),
        })
    }

    pub fn snapshotter(&self) -> &str {
        &self.snapshotter
    }

    /// The gRPC channel, for the container calls in `runtime::calls`.
    pub(crate) fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The namespace all calls go to (containers' cgroups are named after it).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub(crate) fn request<T>(&self, msg: T, lease: Option<&str>) -> Request<T> {
        let mut req = Request::new(msg);
        let md = req.metadata_mut();
        // Namespaces and lease ids are validated ASCII identifiers (our
        // config and our own uuids); a failure to parse is impossible, and
        // would only drop the header, which containerd then reports.
        if let Ok(v) = self.namespace.parse() {
            md.insert("containerd-namespace", v);
        }
        if let Some(lease) = lease
            && let Ok(v) = lease.parse()
        {
            md.insert("containerd-lease", v);
        }
        req
    }

    /// Creates a lease that expires by itself after `ttl`, so a crashed
    /// pull leaks nothing for long.
    pub async fn create_lease(&self, ttl: Duration) -> Result<String> {
        let id = format!("berth-agent-{}", uuid::Uuid::new_v4());
        let expire = rfc3339(SystemTime::now() + ttl);
        let labels = HashMap::from([("containerd.io/gc.expire".to_owned(), expire)]);
        LeasesClient::new(self.channel.clone())
            .create(self.request(
                CreateRequest {
                    id: id.clone(),
                    labels,
                },
                None,
            ))
            .await
            .map_err(ContainerdError::call("lease create"))?;
        Ok(id)
    }

    pub async fn delete_lease(&self, lease: &str) -> Result<()> {
        LeasesClient::new(self.channel.clone())
            .delete(self.request(
                DeleteRequest {
                    id: lease.to_owned(),
                    sync: false,
                },
                None,
            ))
            .await
            .map_err(ContainerdError::call("lease delete"))?;
        Ok(())
    }

    /// Adds existing content or a snapshot to `lease`, so GC keeps what an
    /// earlier pull left until this one references it.
    pub async fn lease_resource(&self, lease: &str, id: &str, kind: &str) -> Result<()> {
        LeasesClient::new(self.channel.clone())
            .add_resource(self.request(
                AddResourceRequest {
                    id: lease.to_owned(),
                    resource: Some(Resource {
                        id: id.to_owned(),
                        r#type: kind.to_owned(),
                    }),
                },
                None,
            ))
            .await
            .map_err(ContainerdError::call("lease add resource"))?;
        Ok(())
    }

    /// The content store's entry for `digest`, if it holds it.
    pub async fn content_info(&self, digest: &str) -> Result<Option<ContentInfo>> {
        match ContentClient::new(self.channel.clone())
            .info(self.request(
                InfoRequest {
                    digest: digest.to_owned(),
                },
                None,
            ))
            .await
        {
            Ok(r) => Ok(r.into_inner().info),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(ContainerdError::call("content info")(s)),
        }
    }

    /// Sets `labels` on existing content (the others stay).
    pub async fn label_content(&self, digest: &str, labels: HashMap<String, String>) -> Result<()> {
        if labels.is_empty() {
            return Ok(());
        }
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        ContentClient::new(self.channel.clone())
            .update(self.request(
                UpdateRequest {
                    info: Some(ContentInfo {
                        digest: digest.to_owned(),
                        labels,
                        ..ContentInfo::default()
                    }),
                    update_mask: Some(prost_types::FieldMask { paths }),
                },
                None,
            ))
            .await
            .map_err(ContainerdError::call("content update"))?;
        Ok(())
    }

    /// Drops a half-written ingest (`ref`), if there is one.
    pub async fn abort_write(&self, ingest_ref: &str) -> Result<()> {
        match ContentClient::new(self.channel.clone())
            .abort(self.request(
                AbortRequest {
                    r#ref: ingest_ref.to_owned(),
                },
                None,
            ))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(ContainerdError::call("content abort")(s)),
        }
    }

    /// Whether an ingest `ingest_ref` exists (a read: no metadata lock).
    pub async fn ingest_exists(&self, ingest_ref: &str) -> Result<bool> {
        match ContentClient::new(self.channel.clone())
            .status(self.request(
                StatusRequest {
                    r#ref: ingest_ref.to_owned(),
                },
                None,
            ))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(ContainerdError::call("content status")(s)),
        }
    }

    /// Opens a content writer for one blob under `lease`.
    pub async fn writer(
        &self,
        lease: &str,
        ingest_ref: &str,
        digest: &str,
        size: u64,
    ) -> Result<ContentWriter> {
        let (mut tx, rx) = mpsc::channel::<WriteContentRequest>(4);
        let total = i64::try_from(size)
            .map_err(|_| ContainerdError::Protocol(format!("blob {digest} is too large")))?;
        let stat = WriteContentRequest {
            action: WriteAction::Stat as i32,
            r#ref: ingest_ref.to_owned(),
            total,
            expected: digest.to_owned(),
            ..WriteContentRequest::default()
        };
        tx.send(stat)
            .await
            .map_err(|e| ContainerdError::Protocol(format!("content write: {e}")))?;
        let mut responses = ContentClient::new(self.channel.clone())
            .write(self.request(rx, Some(lease)))
            .await
            .map_err(ContainerdError::call("content write"))?
            .into_inner();
        let first = responses
            .message()
            .await
            .map_err(ContainerdError::call("content write (stat)"))?
            .ok_or_else(|| ContainerdError::Protocol("content write closed at stat".into()))?;
        Ok(ContentWriter {
            tx,
            responses,
            ingest_ref: ingest_ref.to_owned(),
            digest: digest.to_owned(),
            total,
            offset: first.offset,
            pending: std::collections::VecDeque::new(),
        })
    }

    /// Prepares an active snapshot `key` on `parent` and returns its mounts.
    pub async fn prepare(&self, lease: &str, key: &str, parent: &str) -> Result<Vec<Mount>> {
        let r = SnapshotsClient::new(self.channel.clone())
            .prepare(self.request(
                PrepareSnapshotRequest {
                    snapshotter: self.snapshotter.clone(),
                    key: key.to_owned(),
                    parent: parent.to_owned(),
                    labels: HashMap::new(),
                },
                Some(lease),
            ))
            .await
            .map_err(ContainerdError::call("snapshot prepare"))?;
        Ok(r.into_inner().mounts)
    }

    /// Whether the committed snapshot `name` exists.
    pub async fn snapshot_exists(&self, name: &str) -> Result<bool> {
        match SnapshotsClient::new(self.channel.clone())
            .stat(self.request(
                StatSnapshotRequest {
                    snapshotter: self.snapshotter.clone(),
                    key: name.to_owned(),
                },
                None,
            ))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(ContainerdError::call("snapshot stat")(s)),
        }
    }

    /// Commits the active snapshot `key` as `name`.
    pub async fn commit(&self, lease: &str, name: &str, key: &str) -> Result<()> {
        SnapshotsClient::new(self.channel.clone())
            .commit(self.request(
                CommitSnapshotRequest {
                    snapshotter: self.snapshotter.clone(),
                    name: name.to_owned(),
                    key: key.to_owned(),
                    labels: HashMap::new(),
                },
                Some(lease),
            ))
            .await
            .map_err(ContainerdError::call("snapshot commit"))?;
        Ok(())
    }

    pub async fn remove_snapshot(&self, key: &str) -> Result<()> {
        SnapshotsClient::new(self.channel.clone())
            .remove(self.request(
                RemoveSnapshotRequest {
                    snapshotter: self.snapshotter.clone(),
                    key: key.to_owned(),
                },
                None,
            ))
            .await
            .map_err(ContainerdError::call("snapshot remove"))?;
        Ok(())
    }

    /// Applies the layer `layer` onto `mounts`; the digest of what was
    /// applied (the uncompressed tar: the diff id).
    pub async fn apply(
        &self,
        lease: &str,
        layer: Descriptor,
        mounts: Vec<Mount>,
    ) -> Result<String> {
        let r = DiffClient::new(self.channel.clone())
            .apply(self.request(
                ApplyRequest {
                    diff: Some(layer),
                    mounts,
                    payloads: HashMap::new(),
                    sync_fs: false,
                },
                Some(lease),
            ))
            .await
            .map_err(ContainerdError::call("diff apply"))?;
        r.into_inner()
            .applied
            .map(|d| d.digest)
            .ok_or_else(|| ContainerdError::Protocol("diff apply returned no descriptor".into()))
    }

    /// Creates the image record `name` → `target`, or points an existing
    /// one at it.
    pub async fn put_image(&self, name: &str, target: Descriptor) -> Result<()> {
        let image = Image {
            name: name.to_owned(),
            target: Some(target),
            ..Image::default()
        };
        let created = ImagesClient::new(self.channel.clone())
            .create(self.request(
                CreateImageRequest {
                    image: Some(image.clone()),
                    ..CreateImageRequest::default()
                },
                None,
            ))
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => {
                ImagesClient::new(self.channel.clone())
                    .update(self.request(
                        UpdateImageRequest {
                            image: Some(image),
                            update_mask: Some(prost_types::FieldMask {
                                paths: vec!["target".into()],
                            }),
                            ..UpdateImageRequest::default()
                        },
                        None,
                    ))
                    .await
                    .map_err(ContainerdError::call("image update"))?;
                Ok(())
            }
            Err(s) => Err(ContainerdError::call("image create")(s)),
        }
    }

    pub async fn list_images(&self) -> Result<Vec<ImageInfo>> {
        let r = ImagesClient::new(self.channel.clone())
            .list(self.request(ListImagesRequest { filters: vec![] }, None))
            .await
            .map_err(ContainerdError::call("image list"))?;
        Ok(r.into_inner()
            .images
            .into_iter()
            .map(|i| {
                let t = i.target.unwrap_or_default();
                let created_at = i.created_at.and_then(|ts| {
                    let secs = u64::try_from(ts.seconds).ok()?;
                    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
                });
                ImageInfo {
                    name: i.name,
                    digest: t.digest,
                    media_type: t.media_type,
                    size: t.size,
                    labels: i.labels,
                    created_at,
                }
            })
            .collect())
    }

    /// Sets one label of image record `name`, leaving the rest of the
    /// record alone (the `labels.<key>` field path updates that key only).
    pub async fn set_image_label(&self, name: &str, key: &str, value: &str) -> Result<()> {
        let image = Image {
            name: name.to_owned(),
            labels: HashMap::from([(key.to_owned(), value.to_owned())]),
            ..Image::default()
        };
        ImagesClient::new(self.channel.clone())
            .update(self.request(
                UpdateImageRequest {
                    image: Some(image),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec![format!("labels.{key}")],
                    }),
                    ..UpdateImageRequest::default()
                },
                None,
            ))
            .await
            .map_err(ContainerdError::call("image label update"))?;
        Ok(())
    }

    /// Deletes the image record; containerd's GC then reclaims content and
    /// snapshots nothing else references. `false` when there was none.
    pub async fn delete_image(&self, name: &str) -> Result<bool> {
        match ImagesClient::new(self.channel.clone())
            .delete(self.request(
                DeleteImageRequest {
                    name: name.to_owned(),
                    sync: true,
                    ..DeleteImageRequest::default()
                },
                None,
            ))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(ContainerdError::call("image delete")(s)),
        }
    }
}

/// One blob being written into the content store: `write` pieces in
/// order, then `commit`, which containerd refuses unless the bytes hash to
/// the expected digest.
pub struct ContentWriter {
    tx: mpsc::Sender<WriteContentRequest>,
    responses:
        containerd_client::tonic::Streaming<containerd_client::services::v1::WriteContentResponse>,
    ingest_ref: String,
    digest: String,
    total: i64,
    /// Bytes sent for this ingest (containerd's offset once every pending
    /// write is answered).
    offset: i64,
    /// The offsets containerd must answer the writes in flight with, in
    /// order.
    pending: std::collections::VecDeque<i64>,
}

/// Writes sent to containerd before the first of them must be answered.
/// containerd answers each write after writing and hashing it; waiting for
/// every answer before sending the next chunk (as ctr's writer does) leaves
/// containerd idle while the agent prepares the next one and the agent
/// idle while containerd hashes.
const WRITES_IN_FLIGHT: usize = 4;

impl ContentWriter {
    /// Where containerd's ingest stands (bytes already written).
    pub fn offset(&self) -> u64 {
        u64::try_from(self.offset).unwrap_or(0)
    }

    /// Ends the write without committing, and waits until containerd has
    /// ended its side of the stream, which it does only after closing the
    /// ingest's files. An abort sent right after merely dropping the writer
    /// races that close and can fail ("unlinkat …/ingest/…: directory not
    /// empty"), leaving the ingest behind.
    pub async fn close(mut self) {
        self.tx.close_channel();
        let drain = async {
            while let Some(r) = self.responses.next().await {
                if r.is_err() {
                    break;
                }
            }
        };
        // Bounded: a containerd that never ends the stream must not hang
        // the pull; the abort then reports what is wrong.
        if tokio::time::timeout(Duration::from_secs(10), drain)
            .await
            .is_err()
        {
            tracing::warn!(ingest = %self.ingest_ref, "containerd did not end the content write stream");
        }
    }

    async fn send(&mut self, req: WriteContentRequest, op: &'static str) -> Result<()> {
        self.tx
            .send(req)
            .await
            .map_err(|e| ContainerdError::Protocol(format!("{op}: {e}")))
    }

    async fn response(&mut self, op: &'static str) -> Result<i64> {
        let resp = self
            .responses
            .message()
            .await
            .map_err(ContainerdError::call(op))?
            .ok_or_else(|| ContainerdError::Protocol(format!("{op}: stream closed")))?;
        Ok(resp.offset)
    }

    /// Waits for the oldest write in flight; its answer must be the offset
    /// it was sent to reach.
    async fn settle_one(&mut self) -> Result<()> {
        let Some(expected) = self.pending.pop_front() else {
            return Ok(());
        };
        let offset = self.response("content write").await?;
        if offset != expected {
            return Err(ContainerdError::Protocol(format!(
                "content write of {}: containerd is at {offset}, expected {expected}",
                self.digest
            )));
        }
        Ok(())
    }

    /// Appends `data` at the current offset.
    /// Makes the next write go to offset 0, which containerd takes as
    /// "truncate the ingest first". For an ingest holding bytes this
    /// process cannot vouch for: after a containerd restart cut a write
    /// short, an abort does not remove the data of an ingest that names its
    /// expected digest, and the next writer finds them again.
    pub fn start_over(&mut self) {
        self.offset = 0;
    }

    /// Sends `data` for the current offset; up to `WRITES_IN_FLIGHT`
    /// writes wait for containerd's answer at once (checked in order).
    pub async fn write(&mut self, data: bytes::Bytes) -> Result<()> {
        let len = i64::try_from(data.len()).unwrap_or(i64::MAX);
        let req = WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: self.ingest_ref.clone(),
            offset: self.offset,
            // Without a copy when the caller holds the only reference.
            data: Vec::from(data),
            ..WriteContentRequest::default()
        };
        self.send(req, "content write").await?;
        self.offset += len;
        self.pending.push_back(self.offset);
        while self.pending.len() >= WRITES_IN_FLIGHT {
            self.settle_one().await?;
        }
        Ok(())
    }

    /// Commits with `labels`; containerd verifies size and digest.
    pub async fn commit(mut self, labels: HashMap<String, String>) -> Result<()> {
        let req = WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: self.ingest_ref.clone(),
            // containerd truncates the ingest when a request says offset 0
            // while it holds data: the commit must name where we are.
            offset: self.offset,
            total: self.total,
            expected: self.digest.clone(),
            labels,
            ..WriteContentRequest::default()
        };
        while !self.pending.is_empty() {
            self.settle_one().await?;
        }
        self.send(req, "content commit").await?;
        self.response("content commit").await?;
        self.tx.close_channel();
        // containerd 1.6 answers the commit once more after the client
        // closes its side: drain the stream so the call ends cleanly.
        while let Some(r) = self.responses.next().await {
            if let Err(s) = r {
                tracing::debug!(status = %s, "content write stream ended with an error after commit");
                break;
            }
        }
        Ok(())
    }
}

/// RFC 3339 in UTC, what containerd's `gc.expire` label wants.
fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_251_199);
        assert_eq!(rfc3339(t), "2024-02-29T23:59:59Z");
    }
}
