//! Test images built in memory, byte-for-byte reproducible and without
//! network access: the types ([`Blob`], [`Descriptor`], [`Image`],
//! [`Index`]) and the builders (busybox, random multi-layer, Docker schema 2,
//! multi-arch index, OCI 1.1 artifact).
//!
//! Digests are computed here with `sha2` directly rather than with the
//! registry crate: the helpers are the tests' independent oracle, so they
//! must not share code (or bugs) with what they check.
//!
//! - [`layers`]: reproducible tar+gzip layers and pseudo-random content.
//! - [`layout`]: OCI image layouts (and skopeo's `dir:` format) on disk, for
//!   skopeo and other clients.

pub mod layers;
pub mod layout;

use std::collections::BTreeMap;

use bytes::Bytes;
use flate2::Compression;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub use layers::{Layer, LayerBuilder, fill_random, gunzip, gunzip_diff_id, random_blob};
pub use layout::{
    LayoutEntry, read_oci_layout_blobs, read_oci_layout_index, read_oci_layout_manifest,
    read_skopeo_dir, write_oci_layout, write_skopeo_dir,
};

/// Media types the builders use.
pub mod media_types {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
}

/// Media type of the payload layer of [`artifact_with_subject`].
pub const ARTIFACT_PAYLOAD_MEDIA_TYPE: &str = "application/vnd.berth.test.payload.v1";

/// A fixed creation time: a real clock would break reproducibility.
const CREATED: &str = "1970-01-01T00:00:00Z";

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

/// A piece of content with its media type and digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    pub media_type: String,
    pub data: Bytes,
    /// `sha256:…` of `data`.
    pub digest: String,
}

impl Blob {
    pub fn new(media_type: impl Into<String>, data: impl Into<Bytes>) -> Blob {
        let data = data.into();
        Blob {
            media_type: media_type.into(),
            digest: sha256_digest(&data),
            data,
        }
    }

    /// The OCI empty descriptor's blob: `{}` as `application/vnd.oci.empty.v1+json`.
    pub fn empty_json() -> Blob {
        Blob::new(media_types::OCI_EMPTY, &b"{}"[..])
    }

    pub fn size(&self) -> u64 {
        self.data.len() as u64
    }

    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(&self.media_type, &self.digest, self.size())
    }
}

/// An OCI content descriptor. Field order is the order of the JSON keys, so
/// serialised manifests are stable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    #[serde(
        rename = "artifactType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub artifact_type: Option<String>,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: &str, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.to_owned(),
            artifact_type: None,
            digest: digest.to_owned(),
            size,
            annotations: None,
            platform: None,
        }
    }

    pub fn with_annotation(mut self, key: &str, value: &str) -> Descriptor {
        self.annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_owned(), value.to_owned());
        self
    }

    pub fn with_platform(mut self, platform: Option<Platform>) -> Descriptor {
        self.platform = platform;
        self
    }
}

/// An image platform as index entries carry it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// The architectures test images are built for. The content is the host's
/// busybox in every case: registries and agents only look at the metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    Amd64,
    Arm64,
    ArmV7,
}

impl Arch {
    pub const ALL: [Arch; 3] = [Arch::Amd64, Arch::Arm64, Arch::ArmV7];

    pub fn platform(self) -> Platform {
        let (architecture, variant) = match self {
            Arch::Amd64 => ("amd64", None),
            Arch::Arm64 => ("arm64", Some("v8")),
            Arch::ArmV7 => ("arm", Some("v7")),
        };
        Platform {
            architecture: architecture.to_owned(),
            os: "linux".to_owned(),
            variant: variant.map(str::to_owned),
        }
    }
}

/// An image (or artifact) manifest with the blobs it references.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// The manifest bytes exactly as pushed.
    pub manifest: Bytes,
    pub manifest_media_type: String,
    /// `sha256:…` of `manifest`.
    pub digest: String,
    pub config: Blob,
    pub layers: Vec<Blob>,
    pub platform: Option<Platform>,
    /// `artifactType` of artifact manifests.
    pub artifact_type: Option<String>,
    /// The manifest this one refers to (OCI 1.1 `subject`).
    pub subject: Option<Descriptor>,
}

impl Image {
    /// Descriptor of the manifest, with the platform if the image has one
    /// (as an index entry wants it).
    pub fn descriptor(&self) -> Descriptor {
        let mut d = Descriptor::new(
            &self.manifest_media_type,
            &self.digest,
            self.manifest.len() as u64,
        )
        .with_platform(self.platform.clone());
        d.artifact_type = self.artifact_type.clone();
        d
    }

    /// Config first, then the layers: the order a client pushes them in.
    pub fn blobs(&self) -> impl Iterator<Item = &Blob> {
        std::iter::once(&self.config).chain(&self.layers)
    }

    /// The manifest parsed as JSON, for assertions.
    pub fn manifest_json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.manifest).expect("builders produce valid JSON")
    }

    /// The config parsed as JSON, for assertions.
    pub fn config_json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.config.data).expect("builders produce valid JSON")
    }
}

/// An image index (or Docker manifest list) with its child images.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index {
    pub manifest: Bytes,
    pub media_type: String,
    pub digest: String,
    pub children: Vec<Image>,
}

impl Index {
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(&self.media_type, &self.digest, self.manifest.len() as u64)
    }

    pub fn manifest_json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.manifest).expect("builders produce valid JSON")
    }
}

/// Which family of media types an image uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Oci,
    /// Docker image manifest v2, schema 2.
    Docker,
}

#[derive(Serialize)]
struct ManifestJson<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    #[serde(rename = "artifactType", skip_serializing_if = "Option::is_none")]
    artifact_type: Option<&'a str>,
    config: Descriptor,
    layers: Vec<Descriptor>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<Descriptor>,
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Serialize)]
struct IndexJson<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    manifests: Vec<Descriptor>,
}

#[derive(Serialize)]
struct ConfigJson<'a> {
    created: &'a str,
    architecture: &'a str,
    os: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'a str>,
    config: RunConfig<'a>,
    rootfs: RootFs<'a>,
}

#[derive(Serialize)]
struct RunConfig<'a> {
    #[serde(rename = "Env")]
    env: &'a [String],
    #[serde(rename = "Cmd", skip_serializing_if = "<[String]>::is_empty")]
    cmd: &'a [String],
}

#[derive(Serialize)]
struct RootFs<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    diff_ids: Vec<&'a str>,
}

fn to_json<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("manifest structs serialise"))
}

/// Assembles an image from layers: config with `diff_ids`, then manifest.
#[derive(Clone, Debug)]
pub struct ImageBuilder {
    platform: Platform,
    flavor: Flavor,
    env: Vec<String>,
    cmd: Vec<String>,
    layers: Vec<Layer>,
    annotations: BTreeMap<String, String>,
}

impl ImageBuilder {
    pub fn new(arch: Arch) -> ImageBuilder {
        ImageBuilder {
            platform: arch.platform(),
            flavor: Flavor::Oci,
            env: vec!["PATH=/bin".to_owned()],
            cmd: Vec::new(),
            layers: Vec::new(),
            annotations: BTreeMap::new(),
        }
    }

    pub fn flavor(mut self, flavor: Flavor) -> Self {
        self.flavor = flavor;
        self
    }

    pub fn cmd(mut self, cmd: &[&str]) -> Self {
        self.cmd = cmd.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    pub fn env(mut self, var: &str) -> Self {
        self.env.push(var.to_owned());
        self
    }

    pub fn layer(mut self, layer: Layer) -> Self {
        self.layers.push(layer);
        self
    }

    /// A manifest annotation (OCI images only; also a cheap way to get a
    /// distinct manifest digest over the same blobs).
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.to_owned(), value.to_owned());
        self
    }

    pub fn build(self) -> Image {
        let (manifest_type, config_type, layer_type) = match self.flavor {
            Flavor::Oci => (
                media_types::OCI_MANIFEST,
                media_types::OCI_CONFIG,
                media_types::OCI_LAYER_GZIP,
            ),
            Flavor::Docker => (
                media_types::DOCKER_MANIFEST,
                media_types::DOCKER_CONFIG,
                media_types::DOCKER_LAYER_GZIP,
            ),
        };
        let config = to_json(&ConfigJson {
            created: CREATED,
            architecture: &self.platform.architecture,
            os: &self.platform.os,
            variant: self.platform.variant.as_deref(),
            config: RunConfig {
                env: &self.env,
                cmd: &self.cmd,
            },
            rootfs: RootFs {
                kind: "layers",
                diff_ids: self.layers.iter().map(|l| l.diff_id.as_str()).collect(),
            },
        });
        let config = Blob::new(config_type, config);
        let layers: Vec<Blob> = self
            .layers
            .iter()
            .map(|l| Blob::new(layer_type, l.data.clone()))
            .collect();
        let annotations = (!self.annotations.is_empty() && self.flavor == Flavor::Oci)
            .then_some(self.annotations);
        let manifest = to_json(&ManifestJson {
            schema_version: 2,
            media_type: manifest_type,
            artifact_type: None,
            config: config.descriptor(),
            layers: layers.iter().map(Blob::descriptor).collect(),
            subject: None,
            annotations,
        });
        Image {
            digest: sha256_digest(&manifest),
            manifest,
            manifest_media_type: manifest_type.to_owned(),
            config,
            layers,
            platform: Some(self.platform),
            artifact_type: None,
            subject: None,
        }
    }
}

/// A one-layer OCI image of the host's busybox (`bin/busybox` plus applet
/// links `sh`, `echo`, `cat`, `sleep`, …) with `Cmd ["/bin/sh"]`.
pub fn busybox_image(arch: Arch) -> Image {
    busybox_image_with_cmd(arch, &["/bin/sh"])
}

/// [`busybox_image`] with another command; different commands give
/// different configs and manifests over the same layer.
pub fn busybox_image_with_cmd(arch: Arch, cmd: &[&str]) -> Image {
    ImageBuilder::new(arch)
        .layer(layers::busybox_layer())
        .cmd(cmd)
        .build()
}

/// The busybox image with Docker schema 2 media types.
pub fn docker_image(arch: Arch) -> Image {
    ImageBuilder::new(arch)
        .flavor(Flavor::Docker)
        .layer(layers::busybox_layer())
        .cmd(&["/bin/sh"])
        .build()
}

/// An amd64 OCI image of `layers` gzip layers, each one tar holding a file
/// `data/layer-<i>.bin` of `layer_size` pseudo-random bytes. Layers are
/// stored uncompressed inside gzip (random data does not compress), so
/// building is fast and a layer's size is about `layer_size`.
pub fn multi_layer_image(layers: usize, layer_size: usize, seed: u64) -> Image {
    let mut builder = ImageBuilder::new(Arch::Amd64);
    for i in 0..layers {
        let layer_seed = layers::splitmix64(seed ^ layers::splitmix64(i as u64));
        let layer = LayerBuilder::new()
            .dir("data/")
            .random_file(
                &format!("data/layer-{i}.bin"),
                layer_size as u64,
                layer_seed,
            )
            .compression(Compression::none())
            .build();
        builder = builder.layer(layer);
    }
    builder.build()
}

fn index_of(media_type: &str, images: &[Image]) -> Index {
    let manifest = to_json(&IndexJson {
        schema_version: 2,
        media_type,
        manifests: images.iter().map(Image::descriptor).collect(),
    });
    Index {
        digest: sha256_digest(&manifest),
        manifest,
        media_type: media_type.to_owned(),
        children: images.to_vec(),
    }
}

/// An OCI image index over `images`; each entry carries its image's
/// platform.
pub fn multi_arch_index(images: &[Image]) -> Index {
    index_of(media_types::OCI_INDEX, images)
}

/// A Docker manifest list over (Docker-typed) `images`.
pub fn docker_manifest_list(images: &[Image]) -> Index {
    index_of(media_types::DOCKER_MANIFEST_LIST, images)
}

/// The OCI index of busybox for amd64, arm64 and arm/v7.
pub fn busybox_multi_arch() -> Index {
    let images: Vec<Image> = Arch::ALL.into_iter().map(busybox_image).collect();
    multi_arch_index(&images)
}

/// An OCI 1.1 artifact referring to `subject`: `artifactType`, the empty
/// config, one layer holding `payload`, a `subject` descriptor, and
/// annotations (a fixed creation time, so it is reproducible).
pub fn artifact_with_subject(subject: &Image, artifact_type: &str, payload: &[u8]) -> Image {
    let mut descriptor = subject.descriptor();
    // The subject descriptor identifies a manifest; platform and artifact
    // type belong to index entries and referrers responses.
    descriptor.platform = None;
    descriptor.artifact_type = None;
    artifact_for(descriptor, artifact_type, payload)
}

/// [`artifact_with_subject`] for any subject (an index, say).
pub fn artifact_for(subject: Descriptor, artifact_type: &str, payload: &[u8]) -> Image {
    let config = Blob::empty_json();
    let layer = Blob::new(ARTIFACT_PAYLOAD_MEDIA_TYPE, Bytes::copy_from_slice(payload));
    let annotations = BTreeMap::from([
        (
            "org.opencontainers.image.created".to_owned(),
            CREATED.to_owned(),
        ),
        (
            "org.opencontainers.image.description".to_owned(),
            "berth test artifact".to_owned(),
        ),
    ]);
    let manifest = to_json(&ManifestJson {
        schema_version: 2,
        media_type: media_types::OCI_MANIFEST,
        artifact_type: Some(artifact_type),
        config: config.descriptor(),
        layers: vec![
            layer
                .descriptor()
                .with_annotation("org.opencontainers.image.title", "payload"),
        ],
        subject: Some(subject.clone()),
        annotations: Some(annotations),
    });
    Image {
        digest: sha256_digest(&manifest),
        manifest,
        manifest_media_type: media_types::OCI_MANIFEST.to_owned(),
        config,
        layers: vec![layer],
        platform: None,
        artifact_type: Some(artifact_type.to_owned()),
        subject: Some(subject),
    }
}
