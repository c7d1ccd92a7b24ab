//! Secrets: argon2id hashing of passwords and credential secrets, random
//! secret generation, and the `bcl_<id>_<secret>` credential format.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;

use crate::error::{AuthError, Result};
use crate::model::CredentialKind;

/// argon2id with the OWASP-recommended minimum (19 MiB, 2 passes).
fn hasher() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

pub fn hash(secret: &str) -> Result<String> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    hasher()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Crypto(e.to_string()))
}

/// Constant-time verification of `secret` against a stored argon2 hash.
pub fn verify(secret: &str, stored: &str) -> bool {
    match PasswordHash::new(stored) {
        Ok(parsed) => hasher().verify_password(secret.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

/// A hash of a random secret, verified against when the presented user or
/// credential does not exist, so that timing does not reveal which.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash(&random_token(24)).unwrap_or_default())
}

/// `n` random bytes, URL-safe base64 without padding.
pub fn random_token(n: usize) -> String {
    let bytes: Vec<u8> = (0..n).map(|_| rand::random::<u8>()).collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A short random id: lowercase letters and digits.
pub fn random_id(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// The string a client presents: `<prefix>_<id>_<secret>`. The id finds the
/// stored hash without trying every credential; the secret is checked
/// against it.
pub fn format_credential(kind: CredentialKind, id: &str, secret: &str) -> String {
    format!("{}_{id}_{secret}", kind.prefix())
}

/// Splits a presented credential into its kind, id and secret.
pub fn parse_credential(s: &str) -> Option<(CredentialKind, &str, &str)> {
    let (prefix, rest) = s.split_once('_')?;
    let kind = [
        CredentialKind::Login,
        CredentialKind::ApiKey,
        CredentialKind::Refresh,
    ]
    .into_iter()
    .find(|k| k.prefix() == prefix)?;
    let (id, secret) = rest.split_once('_')?;
    if id.is_empty() || secret.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    Some((kind, id, secret))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hashes_verify_and_refuse() {
        let h = hash("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify("s3cret", &h));
        assert!(!verify("s3creT", &h));
        assert!(!verify("s3cret", "garbage"));
    }

    #[test]
    fn credential_format_round_trips() {
        let secret = random_token(32);
        let s = format_credential(CredentialKind::Login, "abc123", &secret);
        let (k, id, sec) = parse_credential(&s).unwrap();
        assert_eq!(
            (k, id, sec),
            (CredentialKind::Login, "abc123", secret.as_str())
        );
        assert!(parse_credential("password").is_none());
        assert!(parse_credential("bcl__x").is_none());
        assert!(parse_credential("xyz_a_b").is_none());
    }
}
