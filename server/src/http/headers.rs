//! Header names of the registry protocol.

use http::HeaderName;

pub const DOCKER_CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
pub const DOCKER_UPLOAD_UUID: HeaderName = HeaderName::from_static("docker-upload-uuid");
pub const DOCKER_DISTRIBUTION_API_VERSION: HeaderName =
    HeaderName::from_static("docker-distribution-api-version");
/// Acknowledges that a pushed manifest's `subject` was processed (referrers API).
pub const OCI_SUBJECT: HeaderName = HeaderName::from_static("oci-subject");
/// One per tag applied from `?tag=` parameters on a push by digest.
pub const OCI_TAG: HeaderName = HeaderName::from_static("oci-tag");
/// Names the referrers filters actually applied.
pub const OCI_FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");
