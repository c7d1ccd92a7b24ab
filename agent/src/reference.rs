//! Image references as people type them on the box, resolved into the
//! node's registry and account namespace.
//!
//! `nginx`, `nginx:1.27`, `nginx@sha256:…` and `team/app:v2` become
//! `<registry host>/<namespace>/…`; `<namespace>/…` and
//! `<registry host>/<namespace>/…` pass as they are. Anything else (another
//! registry, another namespace of this registry) is refused: a node's token
//! opens nothing outside its account, and silently pulling from Docker Hub
//! instead would be worse than an error.

use std::fmt;

/// Why a reference cannot be pulled.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("{0:?} is not an image reference: {1}")]
    Invalid(String, &'static str),
    #[error(
        "{reference:?} is outside this node's namespace: only images of {registry}/{namespace}/… can be pulled"
    )]
    OutsideNamespace {
        reference: String,
        registry: String,
        namespace: String,
    },
}

/// A resolved reference: registry host, full repository name, and a tag
/// or a digest (or both: the digest wins, the tag names the image record).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    pub registry: String,
    /// `<namespace>/<path>`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl ImageRef {
    /// Resolves `input` for a node of `namespace` on `registry` (`host[:port]`).
    pub fn resolve(
        input: &str,
        registry: &str,
        namespace: &str,
    ) -> Result<ImageRef, ReferenceError> {
        let invalid = |why| ReferenceError::Invalid(input.to_owned(), why);
        let outside = || ReferenceError::OutsideNamespace {
            reference: input.to_owned(),
            registry: registry.to_owned(),
            namespace: namespace.to_owned(),
        };
        if input.is_empty() {
            return Err(invalid("empty"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((name, digest)) => {
                validate_digest(digest).map_err(invalid)?;
                (name, Some(digest.to_owned()))
            }
            None => (input, None),
        };
        // A tag follows the last ':' after the last '/': a ':' before it
        // belongs to a host's port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &rest[last_slash + i + 1..];
                validate_tag(tag).map_err(invalid)?;
                (&rest[..last_slash + i], Some(tag.to_owned()))
            }
            None => (rest, None),
        };
        let ns_prefix = format!("{namespace}/");
        let repository = if let Some(path) = name.strip_prefix(&format!("{registry}/")) {
            if !path.starts_with(&ns_prefix) {
                return Err(outside());
            }
            path.to_owned()
        } else if name.starts_with(&ns_prefix) {
            name.to_owned()
        } else {
            let first = name.split('/').next().unwrap_or_default();
            let looks_like_host = name.contains('/')
                && (first.contains('.') || first.contains(':') || first == "localhost");
            if looks_like_host {
                return Err(outside());
            }
            format!("{namespace}/{name}")
        };
        validate_repository(&repository).map_err(invalid)?;
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_owned()),
            _ => tag,
        };
        Ok(ImageRef {
            registry: registry.to_owned(),
            repository,
            tag,
            digest,
        })
    }

    /// What the registry is asked for: the digest when there is one.
    pub fn reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// The name of containerd's image record, as `ctr images pull` would
    /// name it: `host/repo:tag`, or `host/repo@digest` when pulled by digest
    /// alone.
    pub fn image_name(&self) -> String {
        match (&self.tag, &self.digest) {
            (Some(tag), _) => format!("{}/{}:{tag}", self.registry, self.repository),
            (None, Some(d)) => format!("{}/{}@{d}", self.registry, self.repository),
            (None, None) => format!("{}/{}:latest", self.registry, self.repository),
        }
    }

    /// The same reference pinned to `digest`.
    pub fn with_digest(&self, digest: &str) -> ImageRef {
        ImageRef {
            digest: Some(digest.to_owned()),
            ..self.clone()
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn validate_digest(d: &str) -> Result<(), &'static str> {
    let (alg, hex) = d.split_once(':').ok_or("a digest is algorithm:hex")?;
    let len = match alg {
        "sha256" => 64,
        "sha512" => 128,
        _ => return Err("only sha256 and sha512 digests are supported"),
    };
    if hex.len() != len
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err("the digest's hex part is malformed");
    }
    Ok(())
}

fn validate_tag(t: &str) -> Result<(), &'static str> {
    let ok = !t.is_empty()
        && t.len() <= 128
        && t.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok { Ok(()) } else { Err("malformed tag") }
}

/// The distribution spec's repository grammar: lowercase components of
/// alphanumerics joined by `.`, `_`, `__` or runs of `-`.
fn validate_repository(r: &str) -> Result<(), &'static str> {
    if r.len() > 255 {
        return Err("repository name too long");
    }
    for c in r.split('/') {
        let bytes = c.as_bytes();
        let ok = !bytes.is_empty()
            && bytes[0].is_ascii_alphanumeric()
            && bytes[bytes.len() - 1].is_ascii_alphanumeric()
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(b))
            && !c.contains("..")
            && !c.contains("___");
        if !ok {
            return Err("malformed repository name (lowercase letters, digits, '.', '_', '-')");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const REG: &str = "registry.example.com:5000";
    const NS: &str = "acme.example.io";
    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn resolution_table() {
        let d_ref = format!("nginx@{D}");
        let full = format!("{REG}/{NS}/team/app:v2");
        let tag_and_digest = format!("{NS}/nginx:1.27@{D}");
        let cases: Vec<(&str, &str, Option<&str>, Option<&str>)> = vec![
            ("nginx", "acme.example.io/nginx", Some("latest"), None),
            ("nginx:1.27", "acme.example.io/nginx", Some("1.27"), None),
            (&d_ref, "acme.example.io/nginx", None, Some(D)),
            ("team/app:v2", "acme.example.io/team/app", Some("v2"), None),
            (
                "acme.example.io/nginx",
                "acme.example.io/nginx",
                Some("latest"),
                None,
            ),
            (&full, "acme.example.io/team/app", Some("v2"), None),
            (
                &tag_and_digest,
                "acme.example.io/nginx",
                Some("1.27"),
                Some(D),
            ),
        ];
        for (input, repo, tag, digest) in cases {
            let r = ImageRef::resolve(input, REG, NS).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.registry, REG, "{input}");
            assert_eq!(r.repository, repo, "{input}");
            assert_eq!(r.tag.as_deref(), tag, "{input}");
            assert_eq!(r.digest.as_deref(), digest, "{input}");
        }
        let r = ImageRef::resolve("nginx:1.27", REG, NS).unwrap();
        assert_eq!(r.image_name(), format!("{REG}/{NS}/nginx:1.27"));
        assert_eq!(r.reference(), "1.27");
        let r = ImageRef::resolve(&d_ref, REG, NS).unwrap();
        assert_eq!(r.image_name(), format!("{REG}/{NS}/nginx@{D}"));
        assert_eq!(r.reference(), D);
    }

    #[test]
    fn outside_the_namespace_is_refused() {
        for input in [
            "docker.io/library/nginx:1.27",
            "globex.example.io/app:v1",
            "localhost/app",
            "127.0.0.1:5000/acme.example.io/app",
            "registry.example.com:5000/globex.example.io/app:v1",
            "registry.example.com:5000/nginx",
            "acme.example.io.evil/app",
        ] {
            let err = ImageRef::resolve(input, REG, NS).unwrap_err();
            assert!(
                matches!(err, ReferenceError::OutsideNamespace { .. }),
                "{input}: {err:?}"
            );
            assert!(
                err.to_string().contains("outside this node's namespace"),
                "{err}"
            );
        }
    }

    #[test]
    fn malformed_references_are_refused() {
        for input in [
            "",
            "Nginx",
            "nginx:",
            "nginx:-x",
            "nginx@sha256:abc",
            "nginx@md5:0123",
            "team//app",
            "app/",
        ] {
            assert!(
                matches!(
                    ImageRef::resolve(input, REG, NS),
                    Err(ReferenceError::Invalid(..))
                ),
                "{input:?} accepted"
            );
        }
    }
}
