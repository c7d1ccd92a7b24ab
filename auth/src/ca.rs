//! Berth's node certificate authority: issues node client certificates
//! (or signs a node's CSR), issues the server certificate of the node
//! endpoint, and reads a presented node certificate back into a node id.
//!
//! A node certificate names its node as the URI SAN `urn:berth:node:<id>`
//! (also its CN). What a CSR asks for is ignored except its public key:
//! the CA decides the identity.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use sha2::Digest as _;
use time::{Duration, OffsetDateTime};

use crate::error::{AuthError, Result};

const NODE_URI_PREFIX: &str = "urn:berth:node:";

fn crypto(e: impl std::fmt::Display) -> AuthError {
    AuthError::Crypto(e.to_string())
}

/// A CA certificate with its key, as PEM.
#[derive(Debug, Clone)]
pub struct NodeCa {
    pub cert_pem: String,
    key_pem: String,
}

/// A certificate issued to a node (or a server).
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    /// PEM private key; absent when a CSR was signed (the node keeps its key).
    pub key_pem: Option<String>,
    /// Hex serial number.
    pub serial: String,
    /// Hex SHA-256 of the certificate's DER.
    pub fingerprint: String,
}

fn random_serial() -> (SerialNumber, String) {
    let mut bytes: [u8; 16] = rand::random();
    // Positive, as DER INTEGER serials must be.
    bytes[0] &= 0x7f;
    (SerialNumber::from_slice(&bytes), hex::encode(bytes))
}

fn fingerprint(der: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(der))
}

impl NodeCa {
    /// Creates a new CA, valid for 20 years.
    pub fn generate() -> Result<NodeCa> {
        let key = KeyPair::generate().map_err(crypto)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Berth node CA");
        dn.push(DnType::OrganizationName, "Berth");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(365 * 20);
        params.serial_number = Some(random_serial().0);
        let cert = params.self_signed(&key).map_err(crypto)?;
        Ok(NodeCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    pub fn from_pem(cert_pem: &str, key_pem: &str) -> NodeCa {
        NodeCa {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        }
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>> {
        let key = KeyPair::from_pem(&self.key_pem).map_err(crypto)?;
        Issuer::from_ca_cert_pem(&self.cert_pem, key).map_err(crypto)
    }

    fn node_params(node_id: &str, days: i64) -> Result<(CertificateParams, String)> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_id);
        dn.push(DnType::OrganizationName, "Berth node");
        params.distinguished_name = dn;
        let uri = format!("{NODE_URI_PREFIX}{node_id}");
        params.subject_alt_names = vec![SanType::URI(uri.try_into().map_err(crypto)?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(days);
        params.use_authority_key_identifier_extension = true;
        let (serial, hex_serial) = random_serial();
        params.serial_number = Some(serial);
        Ok((params, hex_serial))
    }

    /// Issues a client certificate and a fresh key for node `node_id`.
    pub fn issue_node(&self, node_id: &str, days: i64) -> Result<IssuedCert> {
        let (params, serial) = Self::node_params(node_id, days)?;
        let key = KeyPair::generate().map_err(crypto)?;
        let cert = params.signed_by(&key, &self.issuer()?).map_err(crypto)?;
        Ok(IssuedCert {
            fingerprint: fingerprint(cert.der()),
            cert_pem: cert.pem(),
            key_pem: Some(key.serialize_pem()),
            serial,
        })
    }

    /// Signs a node's CSR (PEM). Only its public key is used.
    pub fn sign_node_csr(&self, node_id: &str, csr_pem: &str, days: i64) -> Result<IssuedCert> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| AuthError::Invalid(format!("certificate signing request: {e}")))?;
        let (params, serial) = Self::node_params(node_id, days)?;
        let csr = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        };
        let cert = csr.signed_by(&self.issuer()?).map_err(crypto)?;
        Ok(IssuedCert {
            fingerprint: fingerprint(cert.der()),
            cert_pem: cert.pem(),
            key_pem: None,
            serial,
        })
    }

    /// Issues a server certificate for the node endpoint, for the given DNS
    /// names and IP addresses.
    pub fn issue_server(&self, names: &[String], days: i64) -> Result<IssuedCert> {
        let mut params = CertificateParams::new(names.to_vec()).map_err(crypto)?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().map(String::as_str).unwrap_or("berth-server"),
        );
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(days);
        params.use_authority_key_identifier_extension = true;
        let (serial, hex_serial) = random_serial();
        params.serial_number = Some(serial);
        let key = KeyPair::generate().map_err(crypto)?;
        let cert = params.signed_by(&key, &self.issuer()?).map_err(crypto)?;
        Ok(IssuedCert {
            fingerprint: fingerprint(cert.der()),
            cert_pem: cert.pem(),
            key_pem: Some(key.serialize_pem()),
            serial: hex_serial,
        })
    }
}

/// A generated self-signed server certificate (for local TLS when no
/// certificate files are configured).
pub fn self_signed_server(names: &[String]) -> Result<(String, String)> {
    let key = KeyPair::generate().map_err(crypto)?;
    let mut params = CertificateParams::new(names.to_vec()).map_err(crypto)?;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(825);
    let cert = params.self_signed(&key).map_err(crypto)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// What a verified client certificate says about the node presenting it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentedNode {
    pub node_id: String,
    pub fingerprint: String,
}

/// Reads the node id out of a client certificate (DER) that TLS already
/// verified against the node CA.
pub fn presented_node(cert_der: &[u8]) -> Result<PresentedNode> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(cert_der)
        .map_err(|e| AuthError::Invalid(format!("client certificate: {e}")))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| AuthError::Invalid(format!("client certificate SAN: {e}")))?;
    let node_id = san
        .into_iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .find_map(|n| match n {
            GeneralName::URI(u) => u.strip_prefix(NODE_URI_PREFIX).map(str::to_owned),
            _ => None,
        })
        .ok_or_else(|| AuthError::Forbidden("client certificate names no Berth node".into()))?;
    Ok(PresentedNode {
        node_id,
        fingerprint: fingerprint(cert_der),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn der_of(pem: &str) -> Vec<u8> {
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    }

    #[test]
    fn issues_and_reads_node_certificates() {
        let ca = NodeCa::generate().unwrap();
        let issued = ca.issue_node("node-123", 365).unwrap();
        let presented = presented_node(&der_of(&issued.cert_pem)).unwrap();
        assert_eq!(presented.node_id, "node-123");
        assert_eq!(presented.fingerprint, issued.fingerprint);
        assert!(issued.key_pem.is_some());
    }

    #[test]
    fn signs_csrs_with_its_own_identity() {
        let ca = NodeCa::generate().unwrap();
        let node_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["evil.example".into()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "someone-else");
        let csr = params.serialize_request(&node_key).unwrap().pem().unwrap();
        let issued = ca.sign_node_csr("node-9", &csr, 30).unwrap();
        assert!(issued.key_pem.is_none());
        assert_eq!(
            presented_node(&der_of(&issued.cert_pem)).unwrap().node_id,
            "node-9"
        );
        assert!(ca.sign_node_csr("n", "not a csr", 30).is_err());
    }
}
