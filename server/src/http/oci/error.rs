//! OCI error responses: every failure on the registry API answers with the
//! spec's `{"errors":[{"code","message","detail"}]}` body and status.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use registry::RegistryError;
use registry::manifest::ManifestError;
use registry::names::NameError;
use serde_json::json;

/// The error codes of the OCI Distribution Spec (plus `UNKNOWN` for
/// internal failures, as the spec tells clients to expect).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    Unknown,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BlobUnknown => "BLOB_UNKNOWN",
            Code::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            Code::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            Code::DigestInvalid => "DIGEST_INVALID",
            Code::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            Code::ManifestInvalid => "MANIFEST_INVALID",
            Code::ManifestUnknown => "MANIFEST_UNKNOWN",
            Code::NameInvalid => "NAME_INVALID",
            Code::NameUnknown => "NAME_UNKNOWN",
            Code::SizeInvalid => "SIZE_INVALID",
            Code::Unauthorized => "UNAUTHORIZED",
            Code::Denied => "DENIED",
            Code::Unsupported => "UNSUPPORTED",
            Code::TooManyRequests => "TOOMANYREQUESTS",
            Code::Unknown => "UNKNOWN",
        }
    }
}

/// An error answer of the registry API.
#[derive(Debug)]
pub struct OciError {
    pub status: StatusCode,
    pub code: Code,
    pub message: String,
    pub detail: Option<serde_json::Value>,
    /// Extra response headers (`Location`/`Range` on 416, `WWW-Authenticate` on 401).
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl OciError {
    pub fn new(status: StatusCode, code: Code, message: impl Into<String>) -> Self {
        OciError {
            status,
            code,
            message: message.into(),
            detail: None,
            headers: Vec::new(),
        }
    }

    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = Some(detail);
        self
    }

    pub fn header(mut self, name: header::HeaderName, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.push((name, v));
        }
        self
    }

    pub fn unsupported(message: impl Into<String>) -> Self {
        OciError::new(StatusCode::METHOD_NOT_ALLOWED, Code::Unsupported, message)
    }

    pub fn name_invalid(e: NameError) -> Self {
        OciError::new(StatusCode::BAD_REQUEST, Code::NameInvalid, e.to_string())
    }

    pub fn digest_invalid(message: impl Into<String>) -> Self {
        OciError::new(StatusCode::BAD_REQUEST, Code::DigestInvalid, message)
    }
}

impl IntoResponse for OciError {
    fn into_response(self) -> Response {
        let mut entry = json!({ "code": self.code.as_str(), "message": self.message });
        if let Some(d) = self.detail {
            entry["detail"] = d;
        }
        let body = json!({ "errors": [entry] }).to_string();
        let mut resp = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        for (k, v) in self.headers {
            resp.headers_mut().append(k, v);
        }
        resp
    }
}

impl From<RegistryError> for OciError {
    fn from(e: RegistryError) -> Self {
        use StatusCode as S;
        match e {
            RegistryError::BlobUnknown => {
                OciError::new(S::NOT_FOUND, Code::BlobUnknown, e.to_string())
            }
            RegistryError::UploadUnknown => {
                OciError::new(S::NOT_FOUND, Code::BlobUploadUnknown, e.to_string())
            }
            RegistryError::UploadInvalid(_) => {
                OciError::new(S::BAD_REQUEST, Code::BlobUploadInvalid, e.to_string())
            }
            RegistryError::DigestMismatch {
                ref expected,
                ref actual,
            } => {
                let detail = json!({ "expected": expected.as_str(), "actual": actual.as_str() });
                OciError::new(S::BAD_REQUEST, Code::DigestInvalid, e.to_string()).detail(detail)
            }
            RegistryError::ManifestBlobUnknown(ref d)
            | RegistryError::ManifestChildUnknown(ref d) => {
                let detail = json!({ "digest": d.as_str() });
                OciError::new(S::BAD_REQUEST, Code::ManifestBlobUnknown, e.to_string())
                    .detail(detail)
            }
            RegistryError::ManifestInvalid(ManifestError::TooLarge) => {
                OciError::new(S::PAYLOAD_TOO_LARGE, Code::ManifestInvalid, e.to_string())
            }
            RegistryError::ManifestInvalid(_) => {
                OciError::new(S::BAD_REQUEST, Code::ManifestInvalid, e.to_string())
            }
            RegistryError::ManifestUnknown | RegistryError::ManifestNotAcceptable(_) => {
                OciError::new(S::NOT_FOUND, Code::ManifestUnknown, e.to_string())
            }
            RegistryError::NameUnknown => {
                OciError::new(S::NOT_FOUND, Code::NameUnknown, e.to_string())
            }
            RegistryError::RangeNotSatisfiable { size } => {
                // Blob reads add `Content-Range: bytes */size`; uploads add
                // `Location`/`Range` where they know the session.
                OciError::new(
                    S::RANGE_NOT_SATISFIABLE,
                    Code::BlobUploadInvalid,
                    e.to_string(),
                )
                .detail(json!({ "size": size }))
            }
            RegistryError::TooLarge { .. } => {
                OciError::new(S::PAYLOAD_TOO_LARGE, Code::SizeInvalid, e.to_string())
            }
            RegistryError::Storage(ref cause) => {
                // The cause is for the operator's log, not for the client.
                tracing::error!(error = %cause, "storage failure");
                OciError::new(
                    S::INTERNAL_SERVER_ERROR,
                    Code::Unknown,
                    "internal server error",
                )
            }
        }
    }
}

pub type OciResult<T> = Result<T, OciError>;
