//! Content digests (`sha256:…`, `sha512:…`) and the resumable hasher that
//! computes them while an upload streams through the server.

use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;
use sha2::digest::common::hazmat::SerializableState;

/// The digest algorithms Berth stores content under. The OCI image spec
/// registers exactly these two; anything else is refused at the edge.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "sha256" => Some(Algorithm::Sha256),
            "sha512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }
}

/// Why a string is not a digest Berth can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest {0:?} is not of the form algorithm:encoded")]
    Malformed(String),
    #[error("digest algorithm {0:?} is not supported (use sha256 or sha512)")]
    UnsupportedAlgorithm(String),
    #[error(
        "digest {0:?} does not have the length and lowercase hex encoding its algorithm requires"
    )]
    BadEncoding(String),
}

/// A validated digest. The canonical string form is kept so that headers,
/// SQL keys and paths can borrow it without re-formatting.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    repr: String,
}

impl Digest {
    pub fn parse(s: &str) -> Result<Self, DigestError> {
        let (algo, encoded) = s
            .split_once(':')
            .ok_or_else(|| DigestError::Malformed(truncate(s)))?;
        if !valid_algorithm_component(algo) || encoded.is_empty() {
            return Err(DigestError::Malformed(truncate(s)));
        }
        let algorithm = Algorithm::from_name(algo)
            .ok_or_else(|| DigestError::UnsupportedAlgorithm(truncate(algo)))?;
        let lower_hex = encoded
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if encoded.len() != algorithm.hex_len() || !lower_hex {
            return Err(DigestError::BadEncoding(truncate(s)));
        }
        Ok(Digest {
            algorithm,
            repr: s.to_owned(),
        })
    }

    /// Digest of a byte slice held in memory (manifests, test data).
    pub fn of_bytes(algorithm: Algorithm, data: &[u8]) -> Self {
        let mut h = Hasher::new(algorithm);
        h.update(data);
        h.finish()
    }

    pub fn sha256_of(data: &[u8]) -> Self {
        Self::of_bytes(Algorithm::Sha256, data)
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The encoded (hex) part after the colon.
    pub fn hex(&self) -> &str {
        &self.repr[self.algorithm.name().len() + 1..]
    }

    pub fn as_str(&self) -> &str {
        &self.repr
    }
}

fn truncate(s: &str) -> String {
    // Error messages echo client input; keep them short.
    s.chars().take(200).collect()
}

/// `[a-z0-9]+([+._-][a-z0-9]+)*` from the OCI image spec's digest grammar.
fn valid_algorithm_component(s: &str) -> bool {
    let mut prev_sep = true;
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' => prev_sep = false,
            b'+' | b'.' | b'_' | b'-' if !prev_sep => prev_sep = true,
            _ => return false,
        }
    }
    !prev_sep
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.repr)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.repr)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.repr)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An incremental hasher whose state can be saved and restored.
///
/// Chunked uploads arrive as many requests, possibly across a server restart
/// (or, scaled out, on different replicas). Saving the hash state with the
/// upload's offset lets the final PUT verify the digest without reading the
/// whole blob a second time.
#[derive(Clone)]
pub enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

/// Why a saved hasher state could not be restored.
#[derive(Debug, thiserror::Error)]
#[error("saved hash state is corrupt")]
pub struct CorruptHashState;

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            Hasher::Sha256(_) => Algorithm::Sha256,
            Hasher::Sha512(_) => Algorithm::Sha512,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    /// The digest of everything fed so far; the hasher stays usable.
    pub fn peek(&self) -> Digest {
        self.clone().finish()
    }

    pub fn finish(self) -> Digest {
        let (algorithm, hex) = match self {
            Hasher::Sha256(h) => (Algorithm::Sha256, hex::encode(h.finalize())),
            Hasher::Sha512(h) => (Algorithm::Sha512, hex::encode(h.finalize())),
        };
        Digest {
            algorithm,
            repr: format!("{}:{hex}", algorithm.name()),
        }
    }

    /// Serialises the state as `algorithm-name NUL state-bytes`.
    pub fn save(&self) -> Vec<u8> {
        let mut out = self.algorithm().name().as_bytes().to_vec();
        out.push(0);
        match self {
            Hasher::Sha256(h) => out.extend_from_slice(&h.serialize()),
            Hasher::Sha512(h) => out.extend_from_slice(&h.serialize()),
        }
        out
    }

    pub fn restore(saved: &[u8]) -> Result<Self, CorruptHashState> {
        let nul = saved.iter().position(|b| *b == 0).ok_or(CorruptHashState)?;
        let name = std::str::from_utf8(&saved[..nul]).map_err(|_| CorruptHashState)?;
        let state = &saved[nul + 1..];
        match Algorithm::from_name(name).ok_or(CorruptHashState)? {
            Algorithm::Sha256 => {
                let arr = state.try_into().map_err(|_| CorruptHashState)?;
                sha2::Sha256::deserialize(arr)
                    .map(Hasher::Sha256)
                    .map_err(|_| CorruptHashState)
            }
            Algorithm::Sha512 => {
                let arr = state.try_into().map_err(|_| CorruptHashState)?;
                sha2::Sha512::deserialize(arr)
                    .map(Hasher::Sha512)
                    .map_err(|_| CorruptHashState)
            }
        }
    }
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hasher({})", self.algorithm().name())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const EMPTY_SHA256: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_rejects() {
        assert_eq!(Digest::parse(EMPTY_SHA256).unwrap().hex().len(), 64);
        for bad in [
            "",
            "sha256",
            "sha256:",
            ":abc",
            "sha256:abc",
            "SHA256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            "sha256:baddigeststring",
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn hashes_match_known_values() {
        assert_eq!(Digest::sha256_of(b"").as_str(), EMPTY_SHA256);
        let d = Digest::of_bytes(Algorithm::Sha512, b"");
        assert!(d.as_str().starts_with("sha512:cf83e1357eefb8bd"));
    }

    #[test]
    fn state_survives_save_and_restore() {
        for algo in [Algorithm::Sha256, Algorithm::Sha512] {
            let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
            let mut a = Hasher::new(algo);
            a.update(&data[..3333]);
            let saved = a.save();
            let mut b = Hasher::restore(&saved).unwrap();
            b.update(&data[3333..]);
            assert_eq!(b.finish(), Digest::of_bytes(algo, &data));
        }
        assert!(Hasher::restore(b"sha256\0short").is_err());
        assert!(Hasher::restore(b"nonsense").is_err());
    }
}
