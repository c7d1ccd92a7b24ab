//! Berth's web portal and its JSON management API, served by `berth-server`
//! beside the OCI API.
//!
//! - [`api`]: `/api/v1/…`, described by the OpenAPI document in
//!   `openapi.json` (served at `/api/v1/openapi.json`).
//! - [`pages`]: server-rendered HTML (sign-in, repositories, one repository,
//!   nodes, one node)
//!   with the embedded script and style sheet.
//! - [`nodes`]: `/api/v1/nodes/…`, the account's enrolled nodes joined
//!   with what the control plane knows of them (status, report, commands,
//!   desired state); also served to the operator on the admin socket by
//!   [`admin_router`].
//! - [`caller`]: who is asking: a portal session (cookie, plus the anti-CSRF
//!   token on every change) or Basic credentials (scripts).
//! - [`html`]: escaping, formatting and the page frame.
//!
//! Everything goes through [`registry::Registry`] and [`auth::AuthService`];
//! nothing here knows a storage layout or schema. There is no cache between
//! the pages and the registry, so a push shows on the next page load.

pub mod api;
pub mod caller;
pub mod error;
mod html;
pub mod nodes;
pub mod pages;

use std::time::Duration;

use auth::AuthService;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::response::Response;
use axum::routing::{get, post};
use control::ControlPlane;
use http::{HeaderValue, header};
use registry::Registry;

pub use error::ApiError;

/// Largest request body the portal reads (JSON and forms). Batch deletes of
/// a thousand names fit many times over.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// How long a portal sign-in lasts.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(8 * 3600);

/// What the portal needs from the server that embeds it.
#[derive(Clone)]
pub struct PortalState {
    pub registry: Registry,
    /// `None` when accounts are disabled (`auth.enabled = false`): the API is
    /// then open (loopback only) and the pages say that there is no sign-in.
    pub auth: Option<AuthService>,
    /// `host[:port]` clients pull from, from `auth.public_url`; `None`: the
    /// request's Host header.
    pub public_host: Option<String>,
    /// Mark cookies `Secure` (the listener speaks TLS).
    pub secure_cookies: bool,
    pub session_ttl: Duration,
    /// The control plane, for the node pages and API; `None`: they answer
    /// that this server has none.
    pub control: Option<ControlPlane>,
    /// Set by [`admin_router`] only: every caller is the operator (the
    /// admin socket's file permissions are the access control).
    pub(crate) operator: bool,
}

impl std::fmt::Debug for PortalState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortalState")
            .field("accounts", &self.auth.is_some())
            .field("public_host", &self.public_host)
            .field("secure_cookies", &self.secure_cookies)
            .field("control", &self.control.is_some())
            .field("operator", &self.operator)
            .finish_non_exhaustive()
    }
}

impl PortalState {
    pub fn new(registry: Registry, auth: Option<AuthService>) -> Self {
        PortalState {
            registry,
            auth,
            public_host: None,
            secure_cookies: false,
            session_ttl: DEFAULT_SESSION_TTL,
            control: None,
            operator: false,
        }
    }

    pub fn with_control(mut self, control: Option<ControlPlane>) -> Self {
        self.control = control;
        self
    }

    /// Takes the pull host from a public URL such as
    /// `https://registry.example.com/`: `registry.example.com`.
    pub fn with_public_url(mut self, url: Option<&str>) -> Self {
        self.public_host = url.and_then(host_of_url);
        self
    }

    pub fn with_secure_cookies(mut self, secure: bool) -> Self {
        self.secure_cookies = secure;
        self
    }
}

/// `host[:port]` of an `http(s)://host[:port][/…]` URL.
fn host_of_url(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url);
    let host = rest.split('/').next().unwrap_or("");
    (!host.is_empty()).then(|| host.to_owned())
}

/// Every route of [`router`] as (method, OpenAPI path); the tests check this
/// list against the router and the OpenAPI document.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/api/v1/me"),
    ("GET", "/api/v1/repositories"),
    ("POST", "/api/v1/repositories:delete"),
    ("GET", "/api/v1/repositories/{name}"),
    ("DELETE", "/api/v1/repositories/{name}"),
    ("DELETE", "/api/v1/repositories/{name}/-/tags/{tag}"),
    ("POST", "/api/v1/repositories/{name}/-/tags:delete"),
    ("POST", "/api/v1/credentials"),
    ("GET", "/api/v1/nodes"),
    ("GET", "/api/v1/nodes/{id}"),
    ("GET", "/api/v1/nodes/{id}/commands"),
    ("POST", "/api/v1/nodes/{id}/commands"),
    ("GET", "/api/v1/nodes/{id}/commands/{cid}"),
    ("GET", "/api/v1/nodes/{id}/desired"),
    ("PUT", "/api/v1/nodes/{id}/desired"),
];

/// The node API's routes, on the portal's router and the admin router.
fn node_routes(router: Router<PortalState>) -> Router<PortalState> {
    router
        .route("/api/v1/nodes", get(nodes::list_nodes))
        .route("/api/v1/nodes/{id}", get(nodes::get_node))
        .route(
            "/api/v1/nodes/{id}/commands",
            get(nodes::list_commands).post(nodes::submit_command),
        )
        .route("/api/v1/nodes/{id}/commands/{cid}", get(nodes::get_command))
        .route(
            "/api/v1/nodes/{id}/desired",
            get(nodes::get_desired).put(nodes::put_desired),
        )
}

/// The portal's routes: the management API and the pages.
pub fn router(state: PortalState) -> Router {
    let router = Router::new()
        .route("/api/v1/openapi.json", get(api::openapi))
        .route("/api/v1/me", get(api::me))
        .route("/api/v1/repositories", get(api::list_repositories))
        .route(
            "/api/v1/repositories:delete",
            post(api::delete_repositories),
        )
        // Repository names hold '/', so one wildcard route carries the
        // repository and, after "/-/" (never part of a name), what in it.
        .route(
            "/api/v1/repositories/{*rest}",
            get(api::get_repository)
                .delete(api::delete_in_repository)
                .post(api::post_in_repository),
        )
        .route("/api/v1/credentials", post(api::mint_credential));
    node_routes(router)
        .route("/", get(pages::home))
        .route("/login", get(pages::sign_in_form).post(pages::sign_in))
        .route("/logout", post(pages::sign_out))
        .route("/repositories", get(pages::repositories))
        .route("/repositories/{*name}", get(pages::repository))
        .route("/nodes", get(pages::nodes))
        .route("/nodes/{id}", get(pages::node))
        .route("/assets/{file}", get(pages::asset))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::map_response(security_headers))
        .with_state(state)
}

/// The node API for berth-server's admin Unix socket: only the node routes
/// of [`ROUTES`], every caller the operator (all accounts, no anti-CSRF
/// token: the socket's file permissions are the access control). `GET
/// /api/v1/nodes` there takes `?account=NAME`, else lists every account's.
pub fn admin_router(mut state: PortalState) -> Router {
    state.operator = true;
    node_routes(Router::new())
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::map_response(security_headers))
        .with_state(state)
}

/// The Content-Security-Policy of every answer: scripts and styles only
/// from this origin (no inline code), no framing, forms only to here.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    // Pages and API answers show account data: never stored by a browser
    // or proxy. The static assets set their own policy.
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_url_host() {
        assert_eq!(
            host_of_url("https://registry.example.com/").as_deref(),
            Some("registry.example.com")
        );
        assert_eq!(
            host_of_url("http://127.0.0.1:5000").as_deref(),
            Some("127.0.0.1:5000")
        );
        assert_eq!(host_of_url("https://"), None);
    }
}
