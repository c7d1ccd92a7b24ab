//! Parsing and validation of pushed manifests.
//!
//! The registry stores manifests byte for byte and needs only a handful of
//! their fields: the media type, the descriptors that must already exist, the
//! subject and artifact type for the referrers API, annotations, and platforms
//! for the portal. These are small serde structs rather than `oci-spec` types
//! on purpose: a registry must accept Docker schema 2 and OCI documents alike,
//! with unknown fields, while refusing exactly what the spec says to refuse,
//! and it must report *which* field is wrong to the client.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

pub mod media_types {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
    pub const DOCKER_SCHEMA1_SIGNED: &str =
        "application/vnd.docker.distribution.manifest.v1+prettyjws";
    pub const OCI_EMPTY_JSON: &str = "application/vnd.oci.empty.v1+json";

    /// Layer types that by design are not pushed to registries.
    pub const NON_DISTRIBUTABLE: &[&str] = &[
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    ];

    /// Every manifest media type the registry stores and serves.
    pub const MANIFESTS: &[&str] = &[
        OCI_MANIFEST,
        OCI_INDEX,
        DOCKER_MANIFEST,
        DOCKER_MANIFEST_LIST,
    ];

    pub fn is_index(mt: &str) -> bool {
        mt == OCI_INDEX || mt == DOCKER_MANIFEST_LIST
    }
}

/// The largest manifest the registry accepts. The distribution spec asks
/// registries to accept at least 4 MiB.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// Why a manifest was refused; each maps to `MANIFEST_INVALID` at the edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    #[error(
        "Docker schema 1 manifests are not supported; push with a client that produces schema 2 or OCI manifests"
    )]
    Schema1,
    #[error("unsupported manifest media type {0:?}")]
    UnknownMediaType(String),
    #[error("manifest has no media type: set the mediaType field or the Content-Type header")]
    NoMediaType,
    #[error("Content-Type {header:?} does not match the manifest's mediaType {field:?}")]
    MediaTypeMismatch { header: String, field: String },
    #[error("schemaVersion must be 2")]
    SchemaVersion,
    #[error("invalid descriptor at {path}: {reason}")]
    Descriptor { path: String, reason: String },
    #[error("manifest is larger than {MAX_MANIFEST_BYTES} bytes")]
    TooLarge,
}

/// Platform of an index entry (os, architecture, variant), kept for the
/// portal and for agents choosing what to pull.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    pub fn display(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}/{}", self.os, self.architecture, v),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }
}

/// A child manifest of an index, with its platform if the index gives one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildManifest {
    pub digest: Digest,
    pub platform: Option<Platform>,
}

/// What the registry keeps from a parsed manifest.
#[derive(Debug, Clone)]
pub struct ParsedManifest {
    pub media_type: String,
    /// `artifactType`, or for image manifests without it, the config media type,
    /// as the referrers API reports it.
    pub artifact_type: Option<String>,
    /// Config and layers that must exist in the repository.
    pub blobs: Vec<Digest>,
    /// Non-distributable layers: referenced if present, never required.
    pub optional_blobs: Vec<Digest>,
    /// Index entries that must exist in the repository.
    pub children: Vec<ChildManifest>,
    pub subject: Option<Digest>,
    /// Annotations, serialised as a JSON object, if the manifest has any.
    pub annotations: Option<String>,
    /// Sum of config and layer sizes (image manifests); the portal shows it.
    pub content_size: u64,
    /// The config's media type (image manifests).
    pub config_media_type: Option<String>,
    /// The config blob's digest and size (image manifests).
    pub config: Option<(Digest, u64)>,
    /// The image's platform, read from its config by the service (the
    /// parser sees only the manifest).
    pub platform: Option<Platform>,
}

#[derive(Deserialize)]
struct RawDescriptor {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    digest: Option<String>,
    size: Option<serde_json::Value>,
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct RawManifest {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<serde_json::Value>,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    #[serde(rename = "artifactType")]
    artifact_type: Option<String>,
    config: Option<RawDescriptor>,
    layers: Option<Vec<RawDescriptor>>,
    manifests: Option<Vec<RawDescriptor>>,
    subject: Option<RawDescriptor>,
    annotations: Option<BTreeMap<String, String>>,
}

struct Checked {
    media_type: String,
    digest: Digest,
    size: u64,
}

fn check_descriptor(d: &RawDescriptor, path: &str) -> Result<Checked, ManifestError> {
    let err = |reason: &str| ManifestError::Descriptor {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let media_type = d
        .media_type
        .clone()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| err("mediaType is missing"))?;
    let digest = d
        .digest
        .as_deref()
        .ok_or_else(|| err("digest is missing"))?;
    let digest = Digest::parse(digest).map_err(|e| err(&e.to_string()))?;
    let size = d
        .size
        .as_ref()
        .and_then(|v| v.as_u64())
        .ok_or_else(|| err("size must be a non-negative integer"))?;
    Ok(Checked {
        media_type,
        digest,
        size,
    })
}

/// Decides the manifest's media type from its `mediaType` field and the
/// request's Content-Type, refusing schema 1 and unknown types.
fn effective_media_type(
    content_type: Option<&str>,
    field: Option<&str>,
) -> Result<String, ManifestError> {
    use media_types::*;
    let header = content_type
        .map(|c| c.split(';').next().unwrap_or(c).trim().to_owned())
        .filter(|c| !c.is_empty());
    for mt in [header.as_deref(), field].into_iter().flatten() {
        if mt == DOCKER_SCHEMA1 || mt == DOCKER_SCHEMA1_SIGNED {
            return Err(ManifestError::Schema1);
        }
    }
    let effective = match (field, header.as_deref()) {
        // Clients MUST send a manifest that has a mediaType field with that
        // Content-Type (distribution-spec, "Pushing Manifests"). A manifest
        // sent as something else, known type or not, is refused rather than
        // stored under a type the client did not declare.
        (Some(f), Some(h)) if f != h => {
            return Err(ManifestError::MediaTypeMismatch {
                header: h.to_owned(),
                field: f.to_owned(),
            });
        }
        (Some(f), _) => f.to_owned(),
        (None, Some(h)) => h.to_owned(),
        (None, None) => return Err(ManifestError::NoMediaType),
    };
    if !MANIFESTS.contains(&effective.as_str()) {
        return Err(ManifestError::UnknownMediaType(
            effective.chars().take(200).collect(),
        ));
    }
    Ok(effective)
}

/// Parses and validates a manifest body pushed with the given Content-Type.
pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<ParsedManifest, ManifestError> {
    if body.len() > MAX_MANIFEST_BYTES {
        return Err(ManifestError::TooLarge);
    }
    let raw: RawManifest =
        serde_json::from_slice(body).map_err(|e| ManifestError::Json(e.to_string()))?;
    match raw.schema_version.as_ref().and_then(|v| v.as_u64()) {
        Some(2) => {}
        Some(1) => return Err(ManifestError::Schema1),
        _ => return Err(ManifestError::SchemaVersion),
    }
    let media_type = effective_media_type(content_type, raw.media_type.as_deref())?;

    let subject = raw
        .subject
        .as_ref()
        .map(|s| check_descriptor(s, "subject").map(|c| c.digest))
        .transpose()?;
    let annotations = match &raw.annotations {
        Some(a) if !a.is_empty() => {
            Some(serde_json::to_string(a).map_err(|e| ManifestError::Json(e.to_string()))?)
        }
        _ => None,
    };
    let mut parsed = ParsedManifest {
        media_type: media_type.clone(),
        artifact_type: raw.artifact_type.clone().filter(|a| !a.is_empty()),
        blobs: Vec::new(),
        optional_blobs: Vec::new(),
        children: Vec::new(),
        subject,
        annotations,
        content_size: 0,
        config_media_type: None,
        config: None,
        platform: None,
    };

    if media_types::is_index(&media_type) {
        if raw.config.is_some() || raw.layers.is_some() {
            return Err(ManifestError::Descriptor {
                path: "config".into(),
                reason: "an index has no config or layers".into(),
            });
        }
        let entries = raw.manifests.as_deref().ok_or(ManifestError::Descriptor {
            path: "manifests".into(),
            reason: "an index must list its manifests (an empty list is allowed)".into(),
        })?;
        for (i, d) in entries.iter().enumerate() {
            let c = check_descriptor(d, &format!("manifests[{i}]"))?;
            parsed.content_size += c.size;
            parsed.children.push(ChildManifest {
                digest: c.digest,
                platform: d.platform.clone(),
            });
        }
    } else {
        if raw.manifests.is_some() {
            return Err(ManifestError::Descriptor {
                path: "manifests".into(),
                reason: "an image manifest has no manifests list".into(),
            });
        }
        let config = raw.config.as_ref().ok_or(ManifestError::Descriptor {
            path: "config".into(),
            reason: "an image manifest must have a config descriptor".into(),
        })?;
        let config = check_descriptor(config, "config")?;
        if parsed.artifact_type.is_none() {
            parsed.artifact_type = Some(config.media_type.clone());
        }
        parsed.content_size += config.size;
        parsed.config_media_type = Some(config.media_type.clone());
        parsed.config = Some((config.digest.clone(), config.size));
        parsed.blobs.push(config.digest);
        let layers = raw.layers.as_deref().ok_or(ManifestError::Descriptor {
            path: "layers".into(),
            reason: "an image manifest must have a layers list (an empty list is allowed)".into(),
        })?;
        for (i, d) in layers.iter().enumerate() {
            let c = check_descriptor(d, &format!("layers[{i}]"))?;
            parsed.content_size += c.size;
            if media_types::NON_DISTRIBUTABLE.contains(&c.media_type.as_str()) {
                parsed.optional_blobs.push(c.digest);
            } else {
                parsed.blobs.push(c.digest);
            }
        }
    }
    parsed.blobs.sort();
    parsed.blobs.dedup();
    parsed.optional_blobs.sort();
    parsed.optional_blobs.dedup();
    Ok(parsed)
}

/// Config media types of runnable images, whose config names a platform.
pub const IMAGE_CONFIGS: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// Reads `os`, `architecture` and `variant` from an image config.
pub fn platform_from_config(config: &[u8]) -> Option<Platform> {
    #[derive(Deserialize)]
    struct Cfg {
        os: Option<String>,
        architecture: Option<String>,
        variant: Option<String>,
    }
    let c: Cfg = serde_json::from_slice(config).ok()?;
    Some(Platform {
        os: c.os.filter(|s| !s.is_empty())?,
        architecture: c.architecture.filter(|s| !s.is_empty())?,
        variant: c.variant.filter(|s| !s.is_empty()),
    })
}

/// Chooses what to answer a manifest GET with, given the client's Accept
/// header values and the stored media type: `true` if the stored manifest
/// is acceptable.
pub fn accepts(accept_values: &[&str], stored_media_type: &str) -> bool {
    if accept_values.is_empty() {
        return true;
    }
    let mut any = false;
    for value in accept_values {
        for item in value.split(',') {
            let mut parts = item.split(';');
            let mt = parts.next().unwrap_or("").trim();
            if mt.is_empty() {
                continue;
            }
            any = true;
            // "q=0" means "not acceptable" (RFC 9110 §12.4.2).
            let refused = parts.any(|p| {
                let p = p.trim();
                p.strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            if refused {
                continue;
            }
            if mt == stored_media_type || mt == "*/*" || mt == "application/*" {
                return true;
            }
        }
    }
    // A header with only empty items is treated as absent.
    !any
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use media_types::*;

    fn d(n: u8) -> String {
        format!("sha256:{}", hex::encode([n; 32]))
    }

    fn image(extra: &str) -> Vec<u8> {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":10}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":20}}]{extra}}}"#,
            d(1),
            d(2)
        )
        .into_bytes()
    }

    #[test]
    fn parses_image_manifest() {
        let p = parse(Some(OCI_MANIFEST), &image("")).unwrap();
        assert_eq!(p.media_type, OCI_MANIFEST);
        assert_eq!(p.blobs.len(), 2);
        assert_eq!(p.content_size, 30);
        assert_eq!(
            p.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
        let with_subject = image(&format!(
            r#","subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":3}},"artifactType":"application/x-sig","annotations":{{"a":"b"}}"#,
            d(3)
        ));
        let p = parse(None, &with_subject).unwrap();
        assert_eq!(p.subject.unwrap().as_str(), d(3));
        assert_eq!(p.artifact_type.as_deref(), Some("application/x-sig"));
        assert_eq!(p.annotations.as_deref(), Some(r#"{"a":"b"}"#));
    }

    #[test]
    fn parses_index_with_platforms() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":5,"platform":{{"os":"linux","architecture":"arm","variant":"v7"}}}}]}}"#,
            d(4)
        );
        let p = parse(Some(OCI_INDEX), body.as_bytes()).unwrap();
        assert_eq!(p.children.len(), 1);
        assert_eq!(
            p.children[0].platform.as_ref().unwrap().display(),
            "linux/arm/v7"
        );
        assert!(p.blobs.is_empty());
    }

    #[test]
    fn refuses_bad_manifests() {
        let cases: Vec<(Option<&str>, Vec<u8>)> = vec![
            (Some(OCI_MANIFEST), b"not json".to_vec()),
            (Some(OCI_MANIFEST), br#"{"schemaVersion":1}"#.to_vec()),
            (Some(DOCKER_SCHEMA1_SIGNED), br#"{"schemaVersion":2}"#.to_vec()),
            (Some("text/plain"), br#"{"schemaVersion":2,"config":{},"layers":[]}"#.to_vec()),
            (Some(OCI_INDEX), image("")),
            (
                Some(OCI_MANIFEST),
                br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#
                    .to_vec(),
            ),
            (Some(OCI_MANIFEST), image("").repeat(1).iter().map(|b| if *b == b'1' { b'x' } else { *b }).collect()),
        ];
        for (ct, body) in cases {
            assert!(
                parse(ct, &body).is_err(),
                "{:?}",
                String::from_utf8_lossy(&body)
            );
        }
        assert_eq!(
            parse(Some(OCI_MANIFEST), &vec![b' '; MAX_MANIFEST_BYTES + 1]).unwrap_err(),
            ManifestError::TooLarge
        );
    }

    #[test]
    fn foreign_layers_are_optional() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"a/b","digest":"{}","size":1}},"layers":[{{"mediaType":"{}","digest":"{}","size":2,"urls":["https://x"]}}]}}"#,
            d(1),
            NON_DISTRIBUTABLE[1],
            d(2)
        );
        let p = parse(None, body.as_bytes()).unwrap();
        assert_eq!(p.blobs.len(), 1);
        assert_eq!(p.optional_blobs.len(), 1);
    }

    #[test]
    fn accept_negotiation() {
        assert!(accepts(&[], OCI_MANIFEST));
        assert!(accepts(
            &[&format!("{OCI_INDEX}, {OCI_MANIFEST}")],
            OCI_MANIFEST
        ));
        assert!(accepts(&["*/*"], OCI_INDEX));
        assert!(!accepts(&[DOCKER_MANIFEST], OCI_MANIFEST));
        assert!(!accepts(&[&format!("{OCI_MANIFEST};q=0")], OCI_MANIFEST));
    }
}
