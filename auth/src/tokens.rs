//! Registry bearer tokens: ES256 JWTs in the shape the Docker token
//! protocol expects (`iss`, `sub`, `aud`, `exp`, `nbf`, `iat`, `jti`,
//! `access`), signed with a key named by `kid`, plus Berth's own claims
//! (account, namespace, and the credential or node that obtained the token,
//! so that revocations take effect before the token expires).

use std::collections::HashMap;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::{AuthError, Result};
use crate::model::{AccountId, Millis, PrincipalKind, UserId};
use crate::store::SigningKey;

/// One `access` entry: `{"type":"repository","name":"ns/app","actions":["pull"]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

/// Berth's private claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BerthClaims {
    pub acct: AccountId,
    pub ns: String,
    pub kind: PrincipalKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cred: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<UserId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub nbf: i64,
    pub iat: i64,
    pub jti: String,
    pub access: Vec<AccessEntry>,
    pub berth: BerthClaims,
}

impl Claims {
    /// Whether the token grants `action` on repository `name`.
    pub fn allows(&self, name: &str, action: &str) -> bool {
        self.access.iter().any(|a| {
            a.kind == "repository"
                && a.name == name
                && a.actions.iter().any(|x| x == action || x == "*")
        })
    }

    /// Whether the token mentions repository `name` at all.
    pub fn mentions(&self, name: &str) -> bool {
        self.access
            .iter()
            .any(|a| a.kind == "repository" && a.name == name)
    }

    pub fn allows_catalog(&self) -> bool {
        self.access.iter().any(|a| {
            a.kind == "registry" && a.name == "catalog" && a.actions.iter().any(|x| x == "*")
        })
    }
}

/// The keys tokens are signed with (the newest) and verified with (every
/// key not yet retired).
#[derive(Clone)]
pub struct Keyring {
    current: Option<(String, EncodingKey)>,
    verifying: HashMap<String, (DecodingKey, Option<Millis>)>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current.as_ref().map(|c| &c.0))
            .field("verifying", &self.verifying.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn crypto(e: impl std::fmt::Display) -> AuthError {
    AuthError::Crypto(e.to_string())
}

/// A new P-256 key for ES256, as PKCS#8 and SPKI PEM.
pub fn generate_key(kid: &str, now: Millis) -> Result<SigningKey> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(crypto)?;
    Ok(SigningKey {
        kid: kid.to_owned(),
        private_pem: key.serialize_pem(),
        public_pem: key.public_key_pem(),
        created_at: now,
        retire_at: None,
    })
}

impl Keyring {
    /// Builds the keyring from stored keys as of `now`: the newest key not
    /// retired signs; every key not retired verifies.
    pub fn from_keys(keys: &[SigningKey], now: Millis) -> Result<Keyring> {
        let mut verifying = HashMap::new();
        let mut current: Option<&SigningKey> = None;
        for k in keys {
            if k.retire_at.is_some_and(|r| r <= now) {
                continue;
            }
            let dk = DecodingKey::from_ec_pem(k.public_pem.as_bytes()).map_err(crypto)?;
            verifying.insert(k.kid.clone(), (dk, k.retire_at));
            if k.retire_at.is_none() && current.is_none_or(|c| c.created_at <= k.created_at) {
                current = Some(k);
            }
        }
        let current = match current {
            Some(k) => Some((
                k.kid.clone(),
                EncodingKey::from_ec_pem(k.private_pem.as_bytes()).map_err(crypto)?,
            )),
            None => None,
        };
        Ok(Keyring { current, verifying })
    }

    pub fn current_kid(&self) -> Option<&str> {
        self.current.as_ref().map(|c| c.0.as_str())
    }

    pub fn sign(&self, claims: &Claims) -> Result<String> {
        let (kid, key) = self
            .current
            .as_ref()
            .ok_or_else(|| AuthError::Crypto("no signing key".into()))?;
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.clone());
        header.typ = Some("JWT".into());
        jsonwebtoken::encode(&header, claims, key).map_err(crypto)
    }

    /// Verifies signature (ES256 only: `alg: none` and HMAC tricks fail),
    /// key id, issuer, audience and time window, with `leeway_secs` of
    /// clock skew.
    pub fn verify(
        &self,
        token: &str,
        issuer: &str,
        audience: &str,
        now: Millis,
        leeway_secs: u64,
    ) -> Result<Claims> {
        let bad = |m: &str| AuthError::Token(m.to_owned());
        let header = jsonwebtoken::decode_header(token).map_err(|_| bad("malformed"))?;
        if header.alg != Algorithm::ES256 {
            return Err(bad("unsupported algorithm"));
        }
        let kid = header.kid.ok_or_else(|| bad("no key id"))?;
        let (key, retire_at) = self
            .verifying
            .get(&kid)
            .ok_or_else(|| bad("unknown or retired signing key"))?;
        if retire_at.is_some_and(|r| r <= now) {
            return Err(bad("signing key retired"));
        }
        let mut v = Validation::new(Algorithm::ES256);
        v.set_issuer(&[issuer]);
        v.set_audience(&[audience]);
        // The time window is checked below against `now`, the same clock
        // the verified-token cache uses, rather than jsonwebtoken's own.
        v.validate_exp = false;
        v.validate_nbf = false;
        v.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        let data =
            jsonwebtoken::decode::<Claims>(token, key, &v).map_err(|e| bad(&e.to_string()))?;
        let leeway = i64::try_from(leeway_secs).unwrap_or(i64::MAX);
        if data.claims.exp.saturating_add(leeway).saturating_mul(1000) <= now {
            return Err(bad("token expired"));
        }
        if data.claims.nbf.saturating_sub(leeway).saturating_mul(1000) > now {
            return Err(bad("token not yet valid"));
        }
        Ok(data.claims)
    }

    /// Whether key `kid` still verifies at `now`.
    fn verifies_with(&self, kid: &str, now: Millis) -> bool {
        self.verifying
            .get(kid)
            .is_some_and(|(_, retire_at)| retire_at.is_none_or(|r| r > now))
    }
}

/// Tokens whose signature and claims were verified, so that a client
/// sending the same bearer token on every request pays the ES256 check
/// (about 0.3 ms of CPU, three quarters of a manifest GET) once per token,
/// not once per request.
///
/// Keyed by the SHA-256 of the token, so lookups compare digests, never
/// token text. A hit is only taken while the token's own `exp` (plus the
/// leeway) has not passed and its signing key still verifies; revocations
/// are checked by the caller on every request, cached or not. Bounded:
/// when full, expired entries go, and if that frees nothing, all of them.
#[derive(Debug)]
pub struct VerifiedTokens {
    entries: parking_lot::Mutex<HashMap<[u8; 32], VerifiedToken>>,
    capacity: usize,
}

#[derive(Debug)]
struct VerifiedToken {
    claims: Claims,
    kid: String,
    valid_until: Millis,
}

impl VerifiedTokens {
    pub fn new(capacity: usize) -> VerifiedTokens {
        VerifiedTokens {
            entries: parking_lot::Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// [`Keyring::verify`] through the cache.
    pub fn verify(
        &self,
        keyring: &Keyring,
        token: &str,
        issuer: &str,
        audience: &str,
        now: Millis,
        leeway_secs: u64,
    ) -> Result<Claims> {
        use sha2::Digest as _;
        let id: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if let Some(hit) = self.entries.lock().get(&id)
            && hit.valid_until > now
            && keyring.verifies_with(&hit.kid, now)
        {
            return Ok(hit.claims.clone());
        }
        let claims = keyring.verify(token, issuer, audience, now, leeway_secs)?;
        // `verify` checked the header, so the kid is there.
        let kid = jsonwebtoken::decode_header(token)
            .ok()
            .and_then(|h| h.kid)
            .unwrap_or_default();
        let valid_until = claims
            .exp
            .saturating_add(i64::try_from(leeway_secs).unwrap_or(i64::MAX))
            .saturating_mul(1000);
        let mut entries = self.entries.lock();
        if entries.len() >= self.capacity {
            entries.retain(|_, t| t.valid_until > now);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(
            id,
            VerifiedToken {
                claims: claims.clone(),
                kid,
                valid_until,
            },
        );
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use base64::Engine as _;

    fn claims(now_s: i64) -> Claims {
        Claims {
            iss: "berth".into(),
            sub: "alice".into(),
            aud: "registry".into(),
            exp: now_s + 300,
            nbf: now_s,
            iat: now_s,
            jti: "j".into(),
            access: vec![AccessEntry {
                kind: "repository".into(),
                name: "acme.io/app".into(),
                actions: vec!["pull".into()],
            }],
            berth: BerthClaims {
                acct: 1,
                ns: "acme.io".into(),
                kind: PrincipalKind::User,
                cred: Some("c1".into()),
                node: None,
                uid: Some(1),
            },
        }
    }

    fn now() -> (Millis, i64) {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        (ms, ms / 1000)
    }

    #[test]
    fn signs_verifies_and_refuses_tampering() {
        let (ms, s) = now();
        let k1 = generate_key("k1", ms).unwrap();
        let ring = Keyring::from_keys(std::slice::from_ref(&k1), ms).unwrap();
        let token = ring.sign(&claims(s)).unwrap();
        let c = ring.verify(&token, "berth", "registry", ms, 0).unwrap();
        assert!(c.allows("acme.io/app", "pull"));
        assert!(!c.allows("acme.io/app", "push"));
        assert!(
            ring.verify(&token, "berth", "other-service", ms, 0)
                .is_err()
        );
        assert!(ring.verify(&token, "someone", "registry", ms, 0).is_err());

        // alg: none with the same payload.
        let parts: Vec<&str> = token.split('.').collect();
        let none = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#);
        assert!(
            ring.verify(&format!("{none}.{}.", parts[1]), "berth", "registry", ms, 0)
                .is_err()
        );
        // A payload edited after signing.
        let mut forged = claims(s);
        forged.access[0].actions.push("push".into());
        let body = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&forged).unwrap());
        assert!(
            ring.verify(
                &format!("{}.{body}.{}", parts[0], parts[2]),
                "berth",
                "registry",
                ms,
                0
            )
            .is_err()
        );
        // Signed by another key under the same kid.
        let other = Keyring::from_keys(&[generate_key("k1", ms).unwrap()], ms).unwrap();
        assert!(
            ring.verify(&other.sign(&claims(s)).unwrap(), "berth", "registry", ms, 0)
                .is_err()
        );
        // Expired.
        let mut old = claims(s - 1000);
        old.exp = s - 10;
        assert!(
            ring.verify(&ring.sign(&old).unwrap(), "berth", "registry", ms, 0)
                .is_err()
        );
    }

    #[test]
    fn rotation_keeps_the_previous_key_until_it_retires() {
        let (ms, s) = now();
        let mut k1 = generate_key("k1", ms - 10).unwrap();
        let k2 = generate_key("k2", ms).unwrap();
        let old_ring = Keyring::from_keys(std::slice::from_ref(&k1), ms).unwrap();
        let old_token = old_ring.sign(&claims(s)).unwrap();
        k1.retire_at = Some(ms + 60_000);
        let ring = Keyring::from_keys(&[k1.clone(), k2.clone()], ms).unwrap();
        assert_eq!(ring.current_kid(), Some("k2"));
        ring.verify(&old_token, "berth", "registry", ms, 0).unwrap();
        // After retirement the old key verifies nothing.
        let later = Keyring::from_keys(&[k1, k2], ms + 61_000).unwrap();
        assert!(
            later
                .verify(&old_token, "berth", "registry", ms + 61_000, 3600)
                .is_err()
        );
    }

    #[test]
    fn verified_tokens_cache_never_widens_what_verifies() {
        let (ms, s) = now();
        let k1 = generate_key("k1", ms).unwrap();
        let ring = Keyring::from_keys(std::slice::from_ref(&k1), ms).unwrap();
        let cache = VerifiedTokens::new(2);
        let token = ring.sign(&claims(s)).unwrap();
        let first = cache
            .verify(&ring, &token, "berth", "registry", ms, 0)
            .unwrap();
        let again = cache
            .verify(&ring, &token, "berth", "registry", ms, 0)
            .unwrap();
        assert_eq!(first, again);

        // A tampered copy of a cached token is its own entry: verified, refused.
        let parts: Vec<&str> = token.split('.').collect();
        let mut forged = claims(s);
        forged.access[0].actions.push("push".into());
        let body = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&forged).unwrap());
        let tampered = format!("{}.{body}.{}", parts[0], parts[2]);
        assert!(
            cache
                .verify(&ring, &tampered, "berth", "registry", ms, 0)
                .is_err()
        );

        // Past its expiry, a cached token is refused.
        let later = ms + 301_000;
        assert!(
            cache
                .verify(&ring, &token, "berth", "registry", later, 0)
                .is_err()
        );

        // Once its key is retired, a cached token is refused.
        let mut retired = k1.clone();
        retired.retire_at = Some(ms + 1);
        let ring2 = Keyring::from_keys(&[retired, generate_key("k2", ms).unwrap()], ms).unwrap();
        assert!(
            cache
                .verify(&ring2, &token, "berth", "registry", ms, 0)
                .is_ok()
        );
        assert!(
            cache
                .verify(&ring2, &token, "berth", "registry", ms + 2, 0)
                .is_err()
        );

        // Bounded: more tokens than capacity still all verify.
        for i in 0..5 {
            let mut c = claims(s);
            c.jti = format!("j{i}");
            let t = ring.sign(&c).unwrap();
            assert_eq!(
                cache
                    .verify(&ring, &t, "berth", "registry", ms, 0)
                    .unwrap()
                    .jti,
                format!("j{i}")
            );
        }
        assert!(cache.entries.lock().len() <= 2);
    }
}
