//! The harness of the portal's tests: the whole `berth-server` application
//! (`server::App`, routers included) on a temporary data directory, driven
//! in-process without a socket; accounts and users made through
//! `AuthService`, images pushed through `Registry`.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;

use auth::{AuthService, Role};
use axum::body::Body;
use axum::extract::ConnectInfo;
use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use registry::{Digest, Reference, Registry, RepoName, Tag};
use serde_json::Value;
use server::App;
use server::config::Config;
use tower::ServiceExt;

pub const PASSWORD: &str = "correct horse battery staple";

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub app: App,
}

impl Harness {
    /// Accounts on (the default), or off (`auth.enabled = false`).
    pub async fn new(accounts: bool) -> Harness {
        Self::with(|cfg| cfg.auth.enabled = accounts).await
    }

    pub async fn with(tweak: impl FnOnce(&mut Config)) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        cfg.gc.enabled = false;
        tweak(&mut cfg);
        let app = App::build(&cfg).await.unwrap();
        Harness { dir, app }
    }

    pub fn auth(&self) -> &AuthService {
        self.app.auth.as_ref().unwrap()
    }

    pub fn registry(&self) -> &Registry {
        &self.app.registry
    }

    /// Creates account `account` (namespace `ns`) unless it exists, and a
    /// user in it with [`PASSWORD`].
    pub async fn user(&self, account: &str, ns: &str, username: &str, role: Role) {
        if self.auth().account(account).await.is_err() {
            self.auth().create_account(account, ns).await.unwrap();
        }
        self.auth()
            .create_user(account, username, role, Some(PASSWORD))
            .await
            .unwrap();
    }

    /// Signs in through the form, as a browser does; the session cookie and
    /// anti-CSRF token.
    pub async fn sign_in(&self, username: &str) -> Session {
        let form = self.send(Request::get("/login")).await;
        assert_eq!(form.status, StatusCode::OK);
        let login_cookie = form.cookie("berth_login").unwrap();
        let token = form.hidden_input("csrf").unwrap();
        let body = format!(
            "username={username}&password={}&csrf={token}",
            PASSWORD.replace(' ', "+")
        );
        let resp = self
            .send_body(
                Request::post("/login")
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .header(header::COOKIE, format!("berth_login={login_cookie}")),
                Body::from(body),
            )
            .await;
        assert_eq!(resp.status, StatusCode::SEE_OTHER, "{}", resp.text());
        let cookie = resp.cookie("berth_session").unwrap();
        let page = self
            .send(
                Request::get("/repositories")
                    .header(header::COOKIE, format!("berth_session={cookie}")),
            )
            .await;
        let csrf = page.meta("csrf-token").unwrap();
        Session { cookie, csrf }
    }

    /// A login credential for `username` (what `docker login -p` takes).
    pub async fn credential(&self, username: &str) -> String {
        self.auth()
            .mint_login_credential(username, None, None)
            .await
            .unwrap()
            .secret
    }

    /// Pushes a small linux/amd64 image to `repo` under `tags` (one
    /// manifest, `seed` makes it distinct); its digest.
    pub async fn push(&self, repo: &str, tags: &[&str], seed: &str) -> Digest {
        push_image(self.registry(), repo, tags, seed).await
    }

    pub async fn tags(&self, repo: &str) -> Option<Vec<String>> {
        let repo = RepoName::parse(repo).unwrap();
        match self.registry().repository_tags(&repo).await {
            Ok(t) => Some(t.into_iter().map(|t| t.tag).collect()),
            Err(registry::RegistryError::NameUnknown) => None,
            Err(e) => panic!("{e}"),
        }
    }

    pub async fn send(&self, req: http::request::Builder) -> Resp {
        self.send_body(req, Body::empty()).await
    }

    pub async fn send_body(&self, req: http::request::Builder, body: Body) -> Resp {
        send_to(&self.app.router, req, body).await
    }
}

/// Sends a request through `router` as from 127.0.0.1.
pub async fn send_to(router: &axum::Router, req: http::request::Builder, body: Body) -> Resp {
    let mut req = req.body(body).unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Resp {
        status,
        headers,
        body,
    }
}

/// Pushes a one-layer linux/amd64 image through the registry service.
pub async fn push_image(registry: &Registry, repo: &str, tags: &[&str], seed: &str) -> Digest {
    let name = RepoName::parse(repo).unwrap();
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["SEED={seed}"]}},"rootfs":{{"type":"layers","diff_ids":[]}}}}"#
    );
    let layer = format!("layer of {seed}");
    let mut descriptors = Vec::new();
    for data in [config.as_bytes(), layer.as_bytes()] {
        let digest = Digest::sha256_of(data);
        let bytes = Bytes::copy_from_slice(data);
        let stream: registry::ByteStream =
            Box::pin(futures::stream::once(async move { Ok(bytes) }));
        registry.put_blob(&name, &digest, stream).await.unwrap();
        descriptors.push((digest, data.len()));
    }
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":{}}}]}}"#,
        descriptors[0].0, descriptors[0].1, descriptors[1].0, descriptors[1].1
    );
    let body = Bytes::from(manifest);
    let (first, rest) = tags.split_first().unwrap();
    let extra: Vec<Tag> = rest.iter().map(|t| Tag::parse(t).unwrap()).collect();
    let pushed = registry
        .put_manifest(
            &name,
            &Reference::Tag(Tag::parse(first).unwrap()),
            Some("application/vnd.oci.image.manifest.v1+json"),
            &body,
            &extra,
        )
        .await
        .unwrap();
    pushed.digest
}

/// A signed-in browser session.
#[derive(Clone, Debug)]
pub struct Session {
    pub cookie: String,
    pub csrf: String,
}

/// How a request authenticates.
#[derive(Clone, Debug)]
pub enum Who<'a> {
    Nobody,
    /// Cookie and the right anti-CSRF token.
    Session(&'a Session),
    /// Cookie without the anti-CSRF token.
    CookieOnly(&'a Session),
    /// Cookie with a wrong anti-CSRF token.
    WrongCsrf(&'a Session),
    Basic(&'a str, &'a str),
}

impl Who<'_> {
    pub fn apply(&self, mut req: http::request::Builder) -> http::request::Builder {
        match self {
            Who::Nobody => {}
            Who::Session(s) => {
                req = req
                    .header(header::COOKIE, format!("berth_session={}", s.cookie))
                    .header("x-csrf-token", &s.csrf);
            }
            Who::CookieOnly(s) => {
                req = req.header(header::COOKIE, format!("berth_session={}", s.cookie));
            }
            Who::WrongCsrf(s) => {
                req = req
                    .header(header::COOKIE, format!("berth_session={}", s.cookie))
                    .header("x-csrf-token", "not-the-token");
            }
            Who::Basic(u, p) => {
                let v = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
                req = req.header(header::AUTHORIZATION, format!("Basic {v}"));
            }
        }
        req
    }
}

impl Harness {
    /// A request as `who`, with an optional JSON body.
    pub async fn call(
        &self,
        who: &Who<'_>,
        method: Method,
        uri: &str,
        json: Option<Value>,
    ) -> Resp {
        let mut req = who.apply(Request::builder().method(method).uri(uri));
        let body = match json {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        self.send_body(req, body).await
    }

    /// [`Harness::call`] through another router (the admin router, say).
    pub async fn call_on(
        &self,
        router: &axum::Router,
        who: &Who<'_>,
        method: Method,
        uri: &str,
        json: Option<Value>,
    ) -> Resp {
        let mut req = who.apply(Request::builder().method(method).uri(uri));
        let body = match json {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        send_to(router, req, body).await
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    /// The code of a management API error.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code in {}", self.text()))
            .to_owned()
    }

    /// Asserts status and error code, with the body on failure.
    pub fn assert_error(&self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(self.error_code(), code, "{}", self.text());
    }

    /// The value a `Set-Cookie` gives cookie `name`.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| v.strip_prefix(&format!("{name}=")))
            .map(|v| v.split(';').next().unwrap_or("").to_owned())
    }

    pub fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{name}=")))
            .map(str::to_owned)
    }

    fn attr_after(&self, marker: &str, attr: &str) -> Option<String> {
        let text = self.text();
        let at = text.find(marker)?;
        let rest = &text[at..];
        let start = rest.find(&format!("{attr}=\""))? + attr.len() + 2;
        let end = rest[start..].find('"')?;
        Some(rest[start..start + end].to_owned())
    }

    pub fn hidden_input(&self, name: &str) -> Option<String> {
        self.attr_after(&format!("name=\"{name}\""), "value")
    }

    pub fn meta(&self, name: &str) -> Option<String> {
        self.attr_after(&format!("<meta name=\"{name}\""), "content")
    }
}
