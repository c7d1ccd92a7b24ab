//! OCI image layouts on disk (`oci-layout`, `index.json`, `blobs/sha256/…`)
//! and skopeo's `dir:` format: the hand-over formats to skopeo and other
//! clients, and the readers used to compare what they pulled.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Blob, Descriptor, Image, Index, media_types, sha256_digest};

/// The annotation an OCI layout's `index.json` names tags with.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// What a tag of a layout points at.
#[derive(Clone, Copy, Debug)]
pub enum LayoutEntry<'a> {
    Image(&'a Image),
    /// An index; its children are written too.
    Index(&'a Index),
}

impl<'a> From<&'a Image> for LayoutEntry<'a> {
    fn from(image: &'a Image) -> Self {
        LayoutEntry::Image(image)
    }
}

impl<'a> From<&'a Index> for LayoutEntry<'a> {
    fn from(index: &'a Index) -> Self {
        LayoutEntry::Index(index)
    }
}

#[derive(Serialize, Deserialize)]
struct LayoutIndex {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    manifests: Vec<Descriptor>,
}

/// Writes (or adds to) an OCI image layout in `dir`: every blob and manifest
/// of the entries under `blobs/sha256/`, and one `index.json` entry per tag.
/// Entries already in `index.json` under other tags are kept; a tag written
/// again is replaced.
///
/// Docker-typed images are written as well, but skopeo 1.9 does not see
/// them in a layout: give those to skopeo with [`write_skopeo_dir`].
pub fn write_oci_layout(dir: &Path, entries: &[(&str, LayoutEntry<'_>)]) -> anyhow::Result<()> {
    let blobs_dir = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs_dir)
        .with_context(|| format!("creating {}", blobs_dir.display()))?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .context("writing oci-layout")?;

    let index_path = dir.join("index.json");
    let mut index = if index_path.exists() {
        let text = std::fs::read(&index_path).context("reading index.json")?;
        serde_json::from_slice::<LayoutIndex>(&text).context("parsing index.json")?
    } else {
        LayoutIndex {
            schema_version: 2,
            media_type: Some(media_types::OCI_INDEX.to_owned()),
            manifests: Vec::new(),
        }
    };

    for (tag, entry) in entries {
        let descriptor = match entry {
            LayoutEntry::Image(image) => {
                write_image(&blobs_dir, image)?;
                image.descriptor()
            }
            LayoutEntry::Index(ix) => {
                for child in &ix.children {
                    write_image(&blobs_dir, child)?;
                }
                write_blob(&blobs_dir, &ix.digest, &ix.manifest)?;
                ix.descriptor()
            }
        };
        // The layout's own index names manifests; platforms stay in the
        // image indexes where registries see them.
        let descriptor = Descriptor {
            platform: None,
            ..descriptor
        }
        .with_annotation(REF_NAME, tag);
        index.manifests.retain(|d| {
            d.annotations
                .as_ref()
                .and_then(|a| a.get(REF_NAME))
                .is_none_or(|t| t != tag)
        });
        index.manifests.push(descriptor);
    }
    let json = serde_json::to_vec(&index).context("serialising index.json")?;
    std::fs::write(&index_path, json).context("writing index.json")?;
    Ok(())
}

fn write_image(blobs_dir: &Path, image: &Image) -> anyhow::Result<()> {
    for blob in image.blobs() {
        write_blob(blobs_dir, &blob.digest, &blob.data)?;
    }
    write_blob(blobs_dir, &image.digest, &image.manifest)
}

fn write_blob(blobs_dir: &Path, digest: &str, data: &[u8]) -> anyhow::Result<()> {
    let hex = digest
        .strip_prefix("sha256:")
        .with_context(|| format!("not a sha256 digest: {digest}"))?;
    let path = blobs_dir.join(hex);
    // Content addressed: an existing file already holds these bytes.
    if !path.exists() {
        std::fs::write(&path, data).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Every blob of the layout (manifests included) by `sha256:…` digest,
/// checking that each file's content matches its name.
pub fn read_oci_layout_blobs(dir: &Path) -> anyhow::Result<BTreeMap<String, Bytes>> {
    let blobs_dir = dir.join("blobs").join("sha256");
    let mut out = BTreeMap::new();
    for entry in
        std::fs::read_dir(&blobs_dir).with_context(|| format!("reading {}", blobs_dir.display()))?
    {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let data = Bytes::from(std::fs::read(entry.path())?);
        let digest = format!("sha256:{name}");
        let actual = sha256_digest(&data);
        ensure!(
            actual == digest,
            "blob {} holds content with digest {actual}",
            entry.path().display()
        );
        out.insert(digest, data);
    }
    Ok(out)
}

/// The entries of the layout's `index.json` (tags are in their
/// `org.opencontainers.image.ref.name` annotation).
pub fn read_oci_layout_index(dir: &Path) -> anyhow::Result<Vec<Descriptor>> {
    let text = std::fs::read(dir.join("index.json")).context("reading index.json")?;
    let index: LayoutIndex = serde_json::from_slice(&text).context("parsing index.json")?;
    Ok(index.manifests)
}

/// The manifest (or index) the layout tags `tag`, as a blob with its media
/// type.
pub fn read_oci_layout_manifest(dir: &Path, tag: &str) -> anyhow::Result<Blob> {
    let entries = read_oci_layout_index(dir)?;
    let Some(d) = entries.iter().find(|d| {
        d.annotations
            .as_ref()
            .and_then(|a| a.get(REF_NAME))
            .is_some_and(|t| t == tag)
    }) else {
        bail!("no tag {tag:?} in {}", dir.join("index.json").display());
    };
    let hex = d
        .digest
        .strip_prefix("sha256:")
        .with_context(|| format!("not a sha256 digest: {}", d.digest))?;
    let data = std::fs::read(dir.join("blobs").join("sha256").join(hex))
        .with_context(|| format!("reading manifest {}", d.digest))?;
    let blob = Blob::new(d.media_type.clone(), data);
    ensure!(blob.digest == d.digest, "manifest {} is corrupt", d.digest);
    Ok(blob)
}

/// The `version` file of skopeo's `dir:` transport.
const DIR_TRANSPORT_VERSION: &[u8] = b"Directory Transport Version: 1.1\n";

/// Writes `entry` in the format of skopeo's `dir:` transport
/// (`manifest.json`, `version`, blobs named by their hex digest, and
/// `<hex>.manifest.json` for the children of an index).
///
/// skopeo 1.9's `oci:` transport only finds `index.json` entries of OCI
/// media types, so Docker schema 2 images (and manifest lists) go through
/// this format instead; it accepts every manifest type.
pub fn write_skopeo_dir(dir: &Path, entry: LayoutEntry<'_>) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("version"), DIR_TRANSPORT_VERSION).context("writing version")?;
    let write_blobs = |image: &Image| -> anyhow::Result<()> {
        for blob in image.blobs() {
            write_blob(dir, &blob.digest, &blob.data)?;
        }
        Ok(())
    };
    match entry {
        LayoutEntry::Image(image) => {
            write_blobs(image)?;
            std::fs::write(dir.join("manifest.json"), &image.manifest)?;
        }
        LayoutEntry::Index(index) => {
            for child in &index.children {
                write_blobs(child)?;
                let hex = child.digest.trim_start_matches("sha256:");
                std::fs::write(dir.join(format!("{hex}.manifest.json")), &child.manifest)?;
            }
            std::fs::write(dir.join("manifest.json"), &index.manifest)?;
        }
    }
    Ok(())
}

/// Every blob and manifest of a `dir:` transport directory by digest.
pub fn read_skopeo_dir(dir: &Path) -> anyhow::Result<BTreeMap<String, Bytes>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "version" || name.starts_with("signature") {
            continue;
        }
        let data = Bytes::from(std::fs::read(entry.path())?);
        let digest = sha256_digest(&data);
        if let Some(hex) = name.strip_suffix(".manifest.json") {
            ensure!(
                digest.ends_with(hex),
                "{name} holds content with digest {digest}"
            );
        } else if name != "manifest.json" {
            ensure!(
                digest.strip_prefix("sha256:") == Some(name.as_str()),
                "{name} holds content with digest {digest}"
            );
        }
        out.insert(digest, data);
    }
    Ok(out)
}
