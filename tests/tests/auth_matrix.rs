//! The isolation and token-abuse matrix of Docker token auth, against a
//! real `berth-server` with two accounts (acme, globex) set up through the
//! operator CLI.
//!
//! - `refusal_matrix`: every registry route (23: `/v2/`, catalog, tags,
//!   manifest GET/HEAD/PUT/DELETE by tag and by digest, blob GET/HEAD/DELETE,
//!   upload POST plain / `?digest=` / `?mount=&from=`, PATCH, PUT, status,
//!   cancel, referrers, and the Berth API's repository DELETE) on a
//!   repository of acme, with every identity that must not get through:
//!   anonymous, garbage, expired, not-yet-valid, other-audience,
//!   other-issuer, bad-signature, tampered-payload, `alg: none`, HS256 keyed
//!   with the public key, unknown key, foreign key under the real `kid`,
//!   a revoked credential's token, a revoked node's token, wrong Basic
//!   credentials (all on all 23 routes); a globex token and globex Basic
//!   credentials (21 repository routes; `/v2/` is allowed and the catalog is
//!   filtered to globex); acme's reader (13 push/delete routes), developer
//!   (4 delete routes) and a valid node token (13 write routes + catalog).
//!   Each refusal must be a 401 with a `Bearer realm=…,service=…` challenge
//!   and `UNAUTHORIZED`, or a 403 `DENIED`, and after each cell the owner's
//!   view (catalog, tags, manifests, blobs, upload sessions, referrers) is
//!   unchanged. The management API route is not the OCI API: its refusals
//!   are 401, 403, or 404 for another account's repository, with its own
//!   error body. Then every route is allowed with an acme admin token scoped
//!   to exactly what the route needs (Basic credentials for the management
//!   API, which takes no registry tokens).
//! - `retired_signing_key_is_refused`: after two `admin keys rotate`, a
//!   token under the oldest key verifies during its grace and is refused on
//!   all 23 routes once the key retired.
//! - `mounts_do_not_cross_accounts`: mounting globex's blob into acme (with
//!   or without `from`) falls back to an upload and exposes nothing.
//! - `token_semantics`: grants are intersections, catalog scope, JWT shape
//!   (ES256, `kid`, claims, 300 s), refusals of the token endpoint, and
//!   tokens issued before a key rotation still working after it.
//!
//! Tokens that the token endpoint would never issue (expired, other
//! audience, retired key…) are forged by this test: it opens the auth store
//! of the server's data directory through the `auth` crate to read the
//! signing keys, and signs crafted claims with them.
#![allow(clippy::unwrap_used)]

mod common_auth;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use auth::store::SigningKey;
use auth::tokens::{Claims, Keyring};
use base64::Engine as _;
use bytes::Bytes;
use common_auth::{
    ACME_NS, AuthServer, Cred, GLOBEX_NS, SERVICE, Tenants, jwt_parts, repo_scope, small_image,
    str_field,
};
use reqwest::header::{
    ACCEPT, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE, WWW_AUTHENTICATE,
};
use reqwest::{RequestBuilder, Response, StatusCode, Url};
use serde_json::{Value, json};
use test_support::client::ALL_MANIFEST_TYPES;
use test_support::{Blob, Image, ImageBuilder, artifact_with_subject, assert_eventually_async};

/// The repository of acme every refusal targets.
const TARGET: &str = "acme.example.io/app";
/// The repository of acme where the allowed row runs (it deletes things).
const ALLOWED: &str = "acme.example.io/allowed";
/// acme's repository that cross-repository mounts take from.
const MOUNT_FROM: &str = "acme.example.io/other";
/// globex's repository.
const GLOBEX_REPO: &str = "globex.example.io/secret";

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

// --- routes -------------------------------------------------------------------

/// Every route of the registry that names or reaches a repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Base,
    Catalog,
    Tags,
    GetManifestTag,
    GetManifestDigest,
    HeadManifestTag,
    HeadManifestDigest,
    PutManifestTag,
    PutManifestDigest,
    GetBlob,
    HeadBlob,
    PostUpload,
    PostUploadDigest,
    PostMount,
    PatchUpload,
    GetUpload,
    PutUpload,
    DeleteUpload,
    Referrers,
    DeleteManifestTag,
    DeleteManifestDigest,
    DeleteBlob,
    DeleteRepository,
}

impl Route {
    /// In an order the allowed row can run in: destructive routes last.
    const ALL: [Route; 23] = [
        Route::Base,
        Route::Catalog,
        Route::Tags,
        Route::GetManifestTag,
        Route::GetManifestDigest,
        Route::HeadManifestTag,
        Route::HeadManifestDigest,
        Route::PutManifestTag,
        Route::PutManifestDigest,
        Route::GetBlob,
        Route::HeadBlob,
        Route::PostUpload,
        Route::PostUploadDigest,
        Route::PostMount,
        Route::PatchUpload,
        Route::GetUpload,
        Route::PutUpload,
        Route::DeleteUpload,
        Route::Referrers,
        Route::DeleteManifestTag,
        Route::DeleteManifestDigest,
        Route::DeleteBlob,
        Route::DeleteRepository,
    ];

    /// The scopes a token needs for this route on `repo`.
    fn scopes(self, repo: &str) -> Vec<String> {
        use Route::*;
        match self {
            Base => vec![],
            Catalog => vec!["registry:catalog:*".into()],
            Tags | GetManifestTag | GetManifestDigest | HeadManifestTag | HeadManifestDigest
            | GetBlob | HeadBlob | Referrers => vec![repo_scope(repo, "pull")],
            PutManifestTag | PutManifestDigest | PatchUpload | GetUpload | PutUpload
            | DeleteUpload => vec![repo_scope(repo, "push")],
            PostUpload | PostUploadDigest => vec![repo_scope(repo, "pull,push")],
            PostMount => vec![
                repo_scope(repo, "pull,push"),
                repo_scope(MOUNT_FROM, "pull"),
            ],
            DeleteManifestTag | DeleteManifestDigest | DeleteBlob | DeleteRepository => {
                vec![repo_scope(repo, "delete")]
            }
        }
    }

    fn is_repository(self) -> bool {
        !matches!(self, Route::Base | Route::Catalog)
    }

    /// Needs push or delete.
    fn writes(self) -> bool {
        self.scopes("r")
            .iter()
            .any(|s| s.ends_with("push") || s.ends_with("delete"))
    }

    fn deletes(self) -> bool {
        self.scopes("r").iter().any(|s| s.ends_with("delete"))
    }

    /// What the route answers when allowed.
    fn success(self) -> StatusCode {
        use Route::*;
        match self {
            Base | Catalog | Tags | GetManifestTag | GetManifestDigest | HeadManifestTag
            | HeadManifestDigest | GetBlob | HeadBlob | Referrers => StatusCode::OK,
            PutManifestTag | PutManifestDigest | PostUploadDigest | PostMount | PutUpload => {
                StatusCode::CREATED
            }
            PostUpload | PatchUpload | DeleteManifestTag | DeleteManifestDigest | DeleteBlob => {
                StatusCode::ACCEPTED
            }
            GetUpload | DeleteUpload | DeleteRepository => StatusCode::NO_CONTENT,
        }
    }
}

/// Credentials a request carries.
#[derive(Clone, Debug)]
enum Authz {
    None,
    Bearer(String),
    Basic(String, String),
}

impl Authz {
    fn apply(&self, req: RequestBuilder) -> RequestBuilder {
        match self {
            Authz::None => req,
            Authz::Bearer(t) => req.bearer_auth(t),
            Authz::Basic(u, p) => req.basic_auth(u, Some(p)),
        }
    }
}

/// Bytes the owner wrote into each of its upload sessions.
const FIRST_CHUNK: &[u8] = b"the owner's first chunk\n";
/// What a PATCH appends.
const PATCH_CHUNK: &[u8] = b"bytes appended by PATCH\n";
/// What the closing PUT sends.
const LAST_CHUNK: &[u8] = b"and the last bytes of the upload\n";

/// One repository of acme prepared by its admin, with everything each
/// route needs to exist (or not to exist).
#[derive(Debug)]
struct Target {
    repo: String,
    /// Pushed as `v1`.
    image: Image,
    /// A referrer of `image`, pushed by digest.
    artifact: Image,
    /// Same blobs as `image`, another manifest: never pushed (the PUT routes
    /// try to).
    evil: Image,
    /// Never pushed (`POST ?digest=` tries to).
    new_blob: Blob,
    /// In `MOUNT_FROM` only.
    mount_blob: Blob,
    /// Open sessions holding `FIRST_CHUNK`: one for PATCH and status, one
    /// for the closing PUT, one for DELETE.
    patch_session: Url,
    put_session: Url,
    cancel_session: Url,
    /// The digest the closing PUT would create.
    put_digest: String,
}

impl Target {
    async fn prepare(srv: &AuthServer, owner: &Cred, repo: &str) -> Target {
        let image = small_image(repo);
        let evil = ImageBuilder::new(test_support::Arch::Amd64)
            .layer(
                test_support::images::LayerBuilder::new()
                    .file(
                        "etc/berth-test",
                        0o644,
                        Bytes::from(format!("content of {repo}\n")),
                    )
                    .build(),
            )
            .annotation("org.example.evil", "yes")
            .build();
        assert_eq!(evil.config, image.config);
        assert_eq!(evil.layers, image.layers);
        assert_ne!(evil.digest, image.digest);
        let artifact = artifact_with_subject(&image, "application/vnd.berth.test.sig", b"sig");
        let mount_blob = Blob::new("application/octet-stream", Bytes::from_static(b"mountable"));
        let token = srv
            .token(
                owner,
                &[
                    &repo_scope(repo, "pull,push,delete"),
                    &repo_scope(MOUNT_FROM, "pull,push"),
                ],
            )
            .await;
        let client = srv.client(&token);
        client.push_image(repo, &image, "v1").await.unwrap();
        client
            .push_image(repo, &artifact, &artifact.digest)
            .await
            .unwrap();
        client
            .ensure_blob(MOUNT_FROM, &mount_blob.digest, mount_blob.data.clone())
            .await
            .unwrap();
        let mut sessions = Vec::new();
        for _ in 0..3 {
            let resp = client.start_upload(repo).await.unwrap();
            assert_eq!(resp.status(), StatusCode::ACCEPTED);
            let location = client.location(&resp).unwrap();
            let resp = client
                .patch_chunk(&location, 0, Bytes::from_static(FIRST_CHUNK))
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::ACCEPTED);
            sessions.push(client.location(&resp).unwrap());
        }
        let put_digest = test_support::sha256_digest(&[FIRST_CHUNK, LAST_CHUNK].concat());
        Target {
            repo: repo.to_owned(),
            image,
            artifact,
            evil,
            new_blob: Blob::new(
                "application/octet-stream",
                Bytes::from(format!("a blob nobody may push into {repo}")),
            ),
            mount_blob,
            cancel_session: sessions.pop().unwrap(),
            put_session: sessions.pop().unwrap(),
            patch_session: sessions.pop().unwrap(),
            put_digest,
        }
    }

    fn layer(&self) -> &str {
        &self.image.layers[0].digest
    }

    /// The request of `route` against this repository.
    fn request(&self, srv: &AuthServer, route: Route, authz: &Authz) -> RequestBuilder {
        let base = srv.url();
        let repo = &self.repo;
        let http = &srv.http;
        let v2 = |path: &str| format!("{base}/v2/{repo}/{path}");
        let req = match route {
            Route::Base => http.get(format!("{base}/v2/")),
            Route::Catalog => http.get(format!("{base}/v2/_catalog")),
            Route::Tags => http.get(v2("tags/list")),
            Route::GetManifestTag => http
                .get(v2("manifests/v1"))
                .header(ACCEPT, ALL_MANIFEST_TYPES.join(", ")),
            Route::GetManifestDigest => http
                .get(v2(&format!("manifests/{}", self.image.digest)))
                .header(ACCEPT, ALL_MANIFEST_TYPES.join(", ")),
            Route::HeadManifestTag => http
                .head(v2("manifests/v1"))
                .header(ACCEPT, ALL_MANIFEST_TYPES.join(", ")),
            Route::HeadManifestDigest => http
                .head(v2(&format!("manifests/{}", self.image.digest)))
                .header(ACCEPT, ALL_MANIFEST_TYPES.join(", ")),
            Route::PutManifestTag => http
                .put(v2("manifests/v2"))
                .header(CONTENT_TYPE, &self.evil.manifest_media_type)
                .body(self.evil.manifest.clone()),
            Route::PutManifestDigest => http
                .put(v2(&format!("manifests/{}", self.evil.digest)))
                .header(CONTENT_TYPE, &self.evil.manifest_media_type)
                .body(self.evil.manifest.clone()),
            Route::GetBlob => http.get(v2(&format!("blobs/{}", self.layer()))),
            Route::HeadBlob => http.head(v2(&format!("blobs/{}", self.layer()))),
            Route::PostUpload => http.post(v2("blobs/uploads/")).header(CONTENT_LENGTH, 0),
            Route::PostUploadDigest => http
                .post(v2(&format!(
                    "blobs/uploads/?digest={}",
                    self.new_blob.digest
                )))
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(self.new_blob.data.clone()),
            Route::PostMount => http
                .post(v2(&format!(
                    "blobs/uploads/?mount={}&from={MOUNT_FROM}",
                    self.mount_blob.digest
                )))
                .header(CONTENT_LENGTH, 0),
            Route::PatchUpload => http
                .patch(self.patch_session.clone())
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(
                    CONTENT_RANGE,
                    format!(
                        "{}-{}",
                        FIRST_CHUNK.len(),
                        FIRST_CHUNK.len() + PATCH_CHUNK.len() - 1
                    ),
                )
                .body(PATCH_CHUNK),
            Route::GetUpload => http.get(self.patch_session.clone()),
            Route::PutUpload => {
                let mut url = self.put_session.clone();
                url.query_pairs_mut()
                    .append_pair("digest", &self.put_digest);
                http.put(url)
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .body(LAST_CHUNK)
            }
            Route::DeleteUpload => http.delete(self.cancel_session.clone()),
            Route::Referrers => http.get(v2(&format!("referrers/{}", self.image.digest))),
            Route::DeleteManifestTag => http.delete(v2("manifests/v1")),
            Route::DeleteManifestDigest => {
                http.delete(v2(&format!("manifests/{}", self.image.digest)))
            }
            Route::DeleteBlob => http.delete(v2(&format!("blobs/{}", self.layer()))),
            // With the typed confirmation the management API asks for, so
            // that a refusal is about who asks.
            Route::DeleteRepository => {
                http.delete(format!("{base}/api/v1/repositories/{repo}?confirm={repo}"))
            }
        };
        authz.apply(req)
    }

    async fn send(&self, srv: &AuthServer, route: Route, authz: &Authz) -> Response {
        self.request(srv, route, authz)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{route:?} on {}: {e}", self.repo))
    }

    /// What the owner sees of the repository: everything a refused request
    /// could have changed.
    async fn snapshot(&self, srv: &AuthServer, owner: &Cred) -> Snapshot {
        let token = srv
            .token(
                owner,
                &[&repo_scope(&self.repo, "pull,push"), "registry:catalog:*"],
            )
            .await;
        let client = srv.client(&token);
        let catalog = client.repositories().await.unwrap();
        let tags = client.tags(&self.repo).await.unwrap();
        let mut manifests = BTreeMap::new();
        for reference in [
            "v1",
            "v2",
            &self.image.digest,
            &self.artifact.digest,
            &self.evil.digest,
        ] {
            let resp = client
                .head_manifest(&self.repo, reference, &[])
                .await
                .unwrap();
            let digest = resp
                .headers()
                .get("docker-content-digest")
                .map(|d| d.to_str().unwrap().to_owned());
            manifests.insert(reference.to_owned(), (resp.status().as_u16(), digest));
        }
        let mut blobs = BTreeMap::new();
        let all: Vec<&str> = self
            .image
            .blobs()
            .chain(self.artifact.blobs())
            .map(|b| b.digest.as_str())
            .chain([
                self.new_blob.digest.as_str(),
                self.mount_blob.digest.as_str(),
                self.put_digest.as_str(),
            ])
            .collect();
        for digest in all {
            let resp = client.head_blob(&self.repo, digest).await.unwrap();
            blobs.insert(digest.to_owned(), resp.status().as_u16());
        }
        let mut sessions = Vec::new();
        for s in [&self.patch_session, &self.put_session, &self.cancel_session] {
            let resp = client.upload_status(s).await.unwrap();
            let range = resp
                .headers()
                .get(RANGE)
                .map(|r| r.to_str().unwrap().to_owned());
            sessions.push((resp.status().as_u16(), range));
        }
        let resp = client
            .referrers(&self.repo, &self.image.digest, None)
            .await
            .unwrap();
        let referrers: Value = resp.json().await.unwrap();
        let referrers = referrers["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| str_field(m, "digest"))
            .collect();
        Snapshot {
            catalog,
            tags,
            manifests,
            blobs,
            sessions,
            referrers,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    catalog: Vec<String>,
    tags: Vec<String>,
    manifests: BTreeMap<String, (u16, Option<String>)>,
    blobs: BTreeMap<String, u16>,
    sessions: Vec<(u16, Option<String>)>,
    referrers: Vec<String>,
}

// --- refusals -------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    /// 401 with a Bearer challenge: get (another) token.
    Unauthorized,
    /// 403: the token names the repository but not the action.
    Denied,
}

/// Checks a refusal of the Berth management API (`DELETE
/// /api/v1/repositories/…`): not the OCI API, so no token challenge is
/// owed; 401, 403, or 404 for a repository outside the caller's namespace
/// (which that API answers as unknown), with an error body.
async fn assert_api_refused(resp: Response, cell: &str) {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    assert!(
        [
            StatusCode::UNAUTHORIZED,
            StatusCode::FORBIDDEN,
            StatusCode::NOT_FOUND
        ]
        .contains(&status),
        "{cell}: {status} {body}"
    );
    let v: Value = serde_json::from_str(&body)
        .unwrap_or_else(|_| panic!("{cell}: refusal without a JSON error body: {body}"));
    let code = v["error"]["code"]
        .as_str()
        .or(v["errors"][0]["code"].as_str())
        .unwrap_or_else(|| panic!("{cell}: no error code in {body}"));
    assert!(
        ["UNAUTHENTICATED", "UNAUTHORIZED", "DENIED", "NAME_UNKNOWN"].contains(&code),
        "{cell}: {code}"
    );
}

/// Checks that `resp` is the refusal `expected`, in the shape clients rely on.
async fn assert_refused(
    srv: &AuthServer,
    resp: Response,
    expected: Refusal,
    route: Route,
    cell: &str,
) {
    if route == Route::DeleteRepository {
        return assert_api_refused(resp, cell).await;
    }
    let status = resp.status();
    let challenge = resp
        .headers()
        .get(WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = resp.text().await.unwrap_or_default();
    let code = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["errors"][0]["code"].as_str().map(str::to_owned));
    match expected {
        Refusal::Unauthorized => {
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{cell}: {body}");
            let challenge =
                challenge.unwrap_or_else(|| panic!("{cell}: 401 without WWW-Authenticate"));
            let prefix = format!("Bearer realm=\"{}\",service=\"{SERVICE}\"", srv.realm());
            assert!(
                challenge.starts_with(&prefix),
                "{cell}: challenge {challenge:?} does not start with {prefix:?}"
            );
            if route.is_repository() {
                assert!(
                    challenge.contains(&format!(",scope=\"repository:{TARGET}:")),
                    "{cell}: challenge {challenge:?} names no scope"
                );
            }
        }
        Refusal::Denied => {
            assert_eq!(status, StatusCode::FORBIDDEN, "{cell}: {body}");
        }
    }
    if !body.is_empty() {
        let want = match expected {
            Refusal::Unauthorized => "UNAUTHORIZED",
            Refusal::Denied => "DENIED",
        };
        assert_eq!(code.as_deref(), Some(want), "{cell}: error body {body}");
    } else {
        // Only HEAD answers have no body.
        assert!(
            matches!(
                route,
                Route::HeadBlob | Route::HeadManifestTag | Route::HeadManifestDigest
            ),
            "{cell}: refusal without an OCI error body"
        );
    }
}

/// What an identity must get on a route of acme's repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Refused(Refusal),
    /// A valid identity on a route any identity may use (`/v2/`).
    Allowed,
    /// The catalog, filtered to the caller's own namespace.
    OwnCatalog,
    /// Not a cell of this identity (it may do this).
    Skip,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Not a valid identity at all.
    Invalid,
    /// A valid token of another account.
    OtherAccount,
    /// Valid Basic credentials of another account: known to be valid, so
    /// refused (403) rather than challenged.
    OtherAccountBasic,
    /// acme's reader: pull only.
    Reader,
    /// acme's developer: no delete.
    Developer,
    /// A valid node token: pull only, no catalog.
    Node,
}

impl Kind {
    fn expect(self, route: Route) -> Expect {
        use Expect::*;
        match (self, route) {
            (Kind::Invalid, _) => Refused(Refusal::Unauthorized),
            (Kind::OtherAccount | Kind::OtherAccountBasic, Route::Base) => Allowed,
            (Kind::OtherAccount | Kind::OtherAccountBasic, Route::Catalog) => OwnCatalog,
            (Kind::OtherAccount, _) => Refused(Refusal::Unauthorized),
            (Kind::OtherAccountBasic, _) => Refused(Refusal::Denied),
            (Kind::Reader, r) if r.writes() => Refused(Refusal::Denied),
            (Kind::Developer, r) if r.deletes() => Refused(Refusal::Denied),
            (Kind::Node, Route::Catalog) => Refused(Refusal::Unauthorized),
            (Kind::Node, r) if r.writes() => Refused(Refusal::Denied),
            _ => Skip,
        }
    }
}

struct Identity {
    name: String,
    kind: Kind,
    authz: Authz,
}

impl Identity {
    fn new(name: &str, kind: Kind, authz: Authz) -> Identity {
        Identity {
            name: name.to_owned(),
            kind,
            authz,
        }
    }
}

// --- forging ----------------------------------------------------------------------

/// Signs crafted claims with the server's keys, read from its auth store.
struct Forger {
    keys: Vec<SigningKey>,
}

impl Forger {
    async fn open(srv: &AuthServer) -> Forger {
        let store = auth::open_embedded(srv.data_dir()).unwrap();
        Forger {
            keys: store.signing_keys().await.unwrap(),
        }
    }

    /// Signs with the key `kid`, retired or not.
    fn sign_with(&self, kid: &str, claims: &Claims) -> String {
        let mut key = self
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .unwrap_or_else(|| panic!("no signing key {kid}"))
            .clone();
        key.retire_at = None;
        let ring = Keyring::from_keys(&[key], now_secs() * 1000).unwrap();
        ring.sign(claims).unwrap()
    }

    fn public_pem(&self, kid: &str) -> &str {
        &self.keys.iter().find(|k| k.kid == kid).unwrap().public_pem
    }
}

fn claims_of(token: &str) -> Claims {
    serde_json::from_value(jwt_parts(token).1).unwrap()
}

fn kid_of(token: &str) -> String {
    str_field(&jwt_parts(token).0, "kid")
}

/// `token` with one byte of its signature changed.
fn flip_signature(token: &str) -> String {
    let (rest, sig) = token.rsplit_once('.').unwrap();
    let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig)
        .unwrap();
    raw[10] ^= 0x01;
    format!("{rest}.{}", b64(&raw))
}

/// `token`'s header and signature around another payload.
fn swap_payload(token: &str, claims: &Claims) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    format!(
        "{}.{}.{}",
        parts[0],
        b64(&serde_json::to_vec(claims).unwrap()),
        parts[2]
    )
}

/// Every scope the full-access tokens of the matrix ask for.
fn all_scopes() -> Vec<String> {
    vec![
        repo_scope(TARGET, "pull,push,delete"),
        repo_scope(MOUNT_FROM, "pull,push,delete"),
        "registry:catalog:*".into(),
    ]
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Runs one identity on every route of `target`; returns the cells checked.
async fn run_identity(
    srv: &AuthServer,
    target: &Target,
    owner: &Cred,
    before: &Snapshot,
    id: &Identity,
) -> usize {
    let mut cells = 0;
    for route in Route::ALL {
        let expect = id.kind.expect(route);
        if expect == Expect::Skip {
            continue;
        }
        let cell = format!("{} × {route:?}", id.name);
        let resp = target.send(srv, route, &id.authz).await;
        match expect {
            Expect::Refused(r) => {
                assert_refused(srv, resp, r, route, &cell).await;
                cells += 1;
            }
            Expect::Allowed => assert_eq!(resp.status(), StatusCode::OK, "{cell}"),
            Expect::OwnCatalog => {
                assert_eq!(resp.status(), StatusCode::OK, "{cell}");
                let v: Value = resp.json().await.unwrap();
                let repos = v["repositories"].as_array().unwrap();
                assert!(
                    repos
                        .iter()
                        .all(|r| r.as_str().unwrap().starts_with(&format!("{GLOBEX_NS}/"))),
                    "{cell}: catalog shows another account's repositories: {v}"
                );
            }
            Expect::Skip => unreachable!(),
        }
        let after = target.snapshot(srv, owner).await;
        assert_eq!(&after, before, "{cell} changed the repository");
    }
    cells
}

/// A server with generous failed-login limits: the matrix sends wrong
/// Basic credentials two dozen times from 127.0.0.1.
fn matrix_server() -> (AuthServer, Tenants) {
    let srv = AuthServer::start_with(&[("BERTH_AUTH__MAX_FAILED_LOGINS", "100000")]);
    let tenants = srv.setup_tenants();
    (srv, tenants)
}

#[tokio::test]
async fn refusal_matrix() {
    let started = Instant::now();
    let (srv, t) = matrix_server();
    let owner = &t.acme_admin;
    let target = Target::prepare(&srv, owner, TARGET).await;
    srv.push_as(&t.globex_admin, GLOBEX_REPO, &small_image("globex"), "v1")
        .await;

    // Identities whose tokens the token endpoint issues.
    let admin_token = srv.token(owner, &refs(&all_scopes())).await;
    let globex_scopes = [
        repo_scope(TARGET, "pull,push,delete"),
        repo_scope(MOUNT_FROM, "pull,push,delete"),
        repo_scope(GLOBEX_REPO, "pull,push,delete"),
        "registry:catalog:*".into(),
    ];
    let globex_token = srv.token(&t.globex_admin, &refs(&globex_scopes)).await;
    assert_eq!(
        claims_of(&globex_token).access.len(),
        2,
        "globex gets its own repository and the catalog, nothing of acme"
    );
    let reader_token = srv.token(&t.acme_reader, &refs(&all_scopes())).await;
    let dev_token = srv.token(&t.acme_dev, &refs(&all_scopes())).await;

    // A revoked credential's token: works, then the CLI revokes it.
    let ops = srv.user(common_auth::ACME, "acme-ops", "admin");
    let revoked_token = srv.token(&ops, &refs(&all_scopes())).await;
    let get_manifest = |token: String| {
        let srv = &srv;
        let target = &target;
        async move {
            target
                .send(srv, Route::GetManifestTag, &Authz::Bearer(token))
                .await
                .status()
        }
    };
    assert_eq!(get_manifest(revoked_token.clone()).await, StatusCode::OK);
    srv.admin(&["credential", "revoke", &ops.id]);
    assert_eventually_async!(
        Duration::from_secs(3),
        || async { get_manifest(revoked_token.clone()).await == StatusCode::UNAUTHORIZED },
        "the token of a revoked credential still works"
    );

    // Node tokens: a valid one, and a revoked node's.
    let node_scope = repo_scope(TARGET, "pull");
    let edge = srv.enroll("edge-ok", common_auth::ACME, None);
    let node_token = srv.node_token(&edge, None, &[&node_scope]).await;
    let gone = srv.enroll("edge-revoked", common_auth::ACME, None);
    let revoked_node_token = srv.node_token(&gone, None, &[&node_scope]).await;
    assert_eq!(get_manifest(node_token.clone()).await, StatusCode::OK);
    assert_eq!(
        get_manifest(revoked_node_token.clone()).await,
        StatusCode::OK
    );
    srv.admin(&["node", "revoke", &gone.id]);
    assert_eventually_async!(
        Duration::from_secs(3),
        || async { get_manifest(revoked_node_token.clone()).await == StatusCode::UNAUTHORIZED },
        "the token of a revoked node still works"
    );

    // Forged tokens.
    let forger = Forger::open(&srv).await;
    let kid = kid_of(&admin_token);
    let template = claims_of(&admin_token);
    let now = now_secs();
    let forge = |edit: &dyn Fn(&mut Claims)| {
        let mut c = template.clone();
        c.jti = format!("forged-{}", c.jti);
        edit(&mut c);
        forger.sign_with(&kid, &c)
    };
    // The control: claims as the server would issue them, signed the way
    // this test signs, are accepted — so the refusals below are about what
    // each forgery changes.
    assert_eq!(get_manifest(forge(&|_| {})).await, StatusCode::OK);
    let expired = forge(&|c| {
        c.iat = now - 900;
        c.nbf = now - 900;
        c.exp = now - 120;
    });
    let not_yet = forge(&|c| {
        c.iat = now + 600;
        c.nbf = now + 600;
        c.exp = now + 900;
    });
    let other_audience = forge(&|c| c.aud = "another-registry".into());
    let other_issuer = forge(&|c| c.iss = "someone-else".into());
    let mut escalated = claims_of(&globex_token);
    escalated.access = template.access.clone();
    let tampered = swap_payload(&globex_token, &escalated);
    let header_none = b64(format!(r#"{{"alg":"none","typ":"JWT","kid":"{kid}"}}"#).as_bytes());
    let alg_none = format!("{header_none}.{}.", admin_token.split('.').nth(1).unwrap());
    let mut hs_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs_header.kid = Some(kid.clone());
    let hs256 = jsonwebtoken::encode(
        &hs_header,
        &template,
        &jsonwebtoken::EncodingKey::from_secret(forger.public_pem(&kid).as_bytes()),
    )
    .unwrap();
    let now_ms = now * 1000;
    let rogue = |kid: &str| {
        let key = auth::tokens::generate_key(kid, now_ms).unwrap();
        Keyring::from_keys(&[key], now_ms)
            .unwrap()
            .sign(&template)
            .unwrap()
    };

    let bearer = |t: &str| Authz::Bearer(t.to_owned());
    let identities = vec![
        Identity::new("anonymous", Kind::Invalid, Authz::None),
        Identity::new("garbage bearer", Kind::Invalid, bearer("not-a-jwt")),
        Identity::new("expired token", Kind::Invalid, bearer(&expired)),
        Identity::new("token not yet valid", Kind::Invalid, bearer(&not_yet)),
        Identity::new("other audience", Kind::Invalid, bearer(&other_audience)),
        Identity::new("other issuer", Kind::Invalid, bearer(&other_issuer)),
        Identity::new(
            "flipped signature",
            Kind::Invalid,
            bearer(&flip_signature(&admin_token)),
        ),
        Identity::new("tampered payload", Kind::Invalid, bearer(&tampered)),
        Identity::new("alg none", Kind::Invalid, bearer(&alg_none)),
        Identity::new("HS256 with the public key", Kind::Invalid, bearer(&hs256)),
        Identity::new("unknown kid", Kind::Invalid, bearer(&rogue("rogue"))),
        Identity::new("foreign key, real kid", Kind::Invalid, bearer(&rogue(&kid))),
        Identity::new("revoked credential", Kind::Invalid, bearer(&revoked_token)),
        Identity::new("revoked node", Kind::Invalid, bearer(&revoked_node_token)),
        Identity::new(
            "wrong Basic secret",
            Kind::Invalid,
            Authz::Basic(owner.username.clone(), format!("{}x", owner.secret)),
        ),
        Identity::new(
            "revoked credential, Basic",
            Kind::Invalid,
            Authz::Basic(ops.username.clone(), ops.secret.clone()),
        ),
        Identity::new("globex token", Kind::OtherAccount, bearer(&globex_token)),
        Identity::new(
            "globex Basic",
            Kind::OtherAccountBasic,
            Authz::Basic(
                t.globex_admin.username.clone(),
                t.globex_admin.secret.clone(),
            ),
        ),
        Identity::new("acme reader", Kind::Reader, bearer(&reader_token)),
        Identity::new(
            "acme reader, Basic",
            Kind::Reader,
            Authz::Basic(t.acme_reader.username.clone(), t.acme_reader.secret.clone()),
        ),
        Identity::new("acme developer", Kind::Developer, bearer(&dev_token)),
        Identity::new(
            "acme developer, Basic",
            Kind::Developer,
            Authz::Basic(t.acme_dev.username.clone(), t.acme_dev.secret.clone()),
        ),
        Identity::new("node token", Kind::Node, bearer(&node_token)),
    ];

    let before = target.snapshot(&srv, owner).await;
    assert_eq!(before.tags, ["v1"]);
    assert_eq!(
        before.referrers,
        std::slice::from_ref(&target.artifact.digest)
    );
    assert_eq!(before.manifests[&target.evil.digest].0, 404);
    assert_eq!(before.blobs[&target.new_blob.digest], 404);
    assert_eq!(before.blobs[&target.put_digest], 404);
    assert_eq!(before.blobs[&target.mount_blob.digest], 404);
    assert!(before.catalog.iter().all(|r| r.starts_with(ACME_NS)));
    let mut cells = 0;
    for id in &identities {
        cells += run_identity(&srv, &target, owner, &before, id).await;
    }
    eprintln!(
        "refusal matrix: {cells} refused cells over {} routes × {} identities in {:?}",
        Route::ALL.len(),
        identities.len(),
        started.elapsed()
    );
    assert!(cells >= 350, "only {cells} cells checked");

    // The allowed row: acme's admin with exactly the scope each route
    // needs, on a repository prepared the same way.
    let allowed = Target::prepare(&srv, owner, ALLOWED).await;
    for route in Route::ALL {
        let scopes = route.scopes(ALLOWED);
        let token = srv.token(owner, &refs(&scopes)).await;
        // The management API takes Basic credentials (or a portal
        // session), not registry tokens.
        let authz = match route {
            Route::DeleteRepository => Authz::Basic(owner.username.clone(), owner.secret.clone()),
            _ => Authz::Bearer(token),
        };
        let resp = allowed.send(&srv, route, &authz).await;
        let status = resp.status();
        let body = resp.text().await.unwrap();
        assert_eq!(
            status,
            route.success(),
            "acme admin with {scopes:?} on {route:?}: {body}"
        );
        if route == Route::Catalog {
            let v: Value = serde_json::from_str(&body).unwrap();
            let repos: Vec<&str> = v["repositories"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap())
                .collect();
            assert_eq!(repos, [ALLOWED, TARGET, MOUNT_FROM], "acme's catalog");
        }
    }
    // What the allowed row wrote is there (and the deletes took effect).
    let token = srv.token(owner, &[&repo_scope(TARGET, "pull")]).await;
    assert_eq!(srv.client(&token).tags(TARGET).await.unwrap(), ["v1"]);
    let token = srv.token(owner, &[&repo_scope(ALLOWED, "pull")]).await;
    let resp = srv
        .client(&token)
        .tags_list(ALLOWED, None, None)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND, "repository deleted");
}

#[tokio::test]
async fn retired_signing_key_is_refused() {
    // A rotated-out key verifies for the longest token lifetime plus the
    // 30 s leeway: with 1 s lifetimes the grace is 31 s.
    let srv = AuthServer::start_with(&[
        ("BERTH_AUTH__TOKEN_TTL_SECS", "1"),
        ("BERTH_AUTH__NODE_TOKEN_TTL_SECS", "1"),
    ]);
    let t = srv.setup_tenants();
    let owner = &t.acme_admin;
    let target = Target::prepare(&srv, owner, TARGET).await;
    let token = srv.token(owner, &refs(&all_scopes())).await;
    let oldest = kid_of(&token);
    let template = claims_of(&token);

    let first = srv.admin(&["keys", "rotate"]);
    let second = srv.admin(&["keys", "rotate"]);
    let newest = str_field(&second, "kid");
    assert_ne!(str_field(&first, "kid"), oldest);
    assert_ne!(newest, oldest);
    let forger = Forger::open(&srv).await;
    let retire_at = forger
        .keys
        .iter()
        .find(|k| k.kid == oldest)
        .unwrap()
        .retire_at
        .expect("the oldest key has a retirement time");
    let forge = || {
        let mut c = template.clone();
        let now = now_secs();
        c.iat = now;
        c.nbf = now;
        c.exp = now + 300;
        forger.sign_with(&oldest, &c)
    };
    let status = |token: String| {
        let srv = &srv;
        let target = &target;
        async move {
            target
                .send(srv, Route::GetManifestTag, &Authz::Bearer(token))
                .await
                .status()
        }
    };
    // During its grace, the oldest key still verifies.
    assert!(now_secs() * 1000 < retire_at - 5_000, "grace already over");
    assert_eq!(status(forge()).await, StatusCode::OK);
    assert_eventually_async!(
        Duration::from_secs(5),
        || async { kid_of(&srv.token(owner, &[]).await) == newest },
        "the server does not sign with the newest key"
    );

    // Once retired (and the server noticed), nothing signed by it passes.
    let wait = Duration::from_millis((retire_at - now_secs() * 1000).max(0) as u64);
    tokio::time::sleep(wait).await;
    assert_eventually_async!(
        Duration::from_secs(5),
        || async { status(forge()).await == StatusCode::UNAUTHORIZED },
        "a token signed by a retired key is still accepted"
    );
    let before = target.snapshot(&srv, owner).await;
    let id = Identity::new("retired key", Kind::Invalid, Authz::Bearer(forge()));
    let cells = run_identity(&srv, &target, owner, &before, &id).await;
    assert_eq!(cells, Route::ALL.len());
}

#[tokio::test]
async fn mounts_do_not_cross_accounts() {
    let srv = AuthServer::start();
    let t = srv.setup_tenants();
    let secret = small_image("globex secret");
    srv.push_as(&t.globex_admin, GLOBEX_REPO, &secret, "v1")
        .await;
    let acme_repo = format!("{ACME_NS}/app");
    srv.push_as(&t.acme_admin, &acme_repo, &small_image("acme"), "v1")
        .await;
    let layer = &secret.layers[0].digest;

    // acme's admin asks for the globex repository too: granted nothing there.
    let token = srv
        .token(
            &t.acme_admin,
            &[
                &repo_scope(&acme_repo, "pull,push"),
                &repo_scope(GLOBEX_REPO, "pull"),
            ],
        )
        .await;
    assert_eq!(claims_of(&token).access.len(), 1);
    let client = srv.client(&token);
    for from in [Some(GLOBEX_REPO), None] {
        let resp = client.mount_blob(&acme_repo, layer, from).await.unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::ACCEPTED,
            "mount of globex's blob (from {from:?}) must fall back to an upload"
        );
        assert!(resp.headers().contains_key(LOCATION));
        let head = client.head_blob(&acme_repo, layer).await.unwrap();
        assert_eq!(head.status(), StatusCode::NOT_FOUND, "from {from:?}");
        let get = client.get_blob(&acme_repo, layer, None).await.unwrap();
        assert_eq!(get.status(), StatusCode::NOT_FOUND, "from {from:?}");
    }
    // Nor does globex's blob leak through acme's own name for it.
    let resp = client.get_blob(GLOBEX_REPO, layer, None).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // Within an account mounts work, with and without `from`.
    let other = format!("{ACME_NS}/other");
    let token = srv
        .token(
            &t.acme_admin,
            &[
                &repo_scope(&acme_repo, "pull"),
                &repo_scope(&other, "pull,push"),
            ],
        )
        .await;
    let client = srv.client(&token);
    let acme_layer = small_image("acme").layers[0].digest.clone();
    let resp = client
        .mount_blob(&other, &acme_layer, Some(&acme_repo))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    // globex mounting acme's blob anonymously gets an upload, not the blob.
    let token = srv
        .token(&t.globex_admin, &[&repo_scope(GLOBEX_REPO, "pull,push")])
        .await;
    let globex = srv.client(&token);
    let resp = globex
        .mount_blob(GLOBEX_REPO, &acme_layer, None)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let resp = globex.head_blob(GLOBEX_REPO, &acme_layer).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn token_semantics() {
    let srv = AuthServer::start();
    let t = srv.setup_tenants();
    let app = format!("{ACME_NS}/app");
    let tools = format!("{ACME_NS}/team/tools");
    srv.push_as(&t.acme_dev, &app, &small_image("app"), "v1")
        .await;
    srv.push_as(&t.acme_dev, &tools, &small_image("tools"), "v1")
        .await;
    srv.push_as(&t.globex_dev, GLOBEX_REPO, &small_image("g"), "v1")
        .await;

    // The endpoint's answer.
    let started = now_secs();
    let resp = srv
        .token_response(
            &t.acme_reader.username,
            &t.acme_reader.secret,
            &[&repo_scope(&app, "pull,push")],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers().get("cache-control").unwrap(),
        "no-store",
        "tokens must not be cached"
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["token"], body["access_token"]);
    assert_eq!(body["expires_in"], 300);
    let issued_at = str_field(&body, "issued_at");
    assert!(
        issued_at.len() >= 20 && issued_at.as_bytes()[10] == b'T' && issued_at.ends_with('Z'),
        "issued_at {issued_at:?} is not RFC 3339 UTC"
    );
    let token = str_field(&body, "token");
    let (header, claims) = jwt_parts(&token);
    assert_eq!(header["alg"], "ES256");
    assert!(!str_field(&header, "kid").is_empty());
    assert_eq!(claims["iss"], "berth");
    assert_eq!(claims["sub"], "acme-reader");
    assert_eq!(claims["aud"], SERVICE);
    let iat = claims["iat"].as_i64().unwrap();
    assert!((started - 5..=now_secs() + 5).contains(&iat), "iat {iat}");
    assert_eq!(claims["exp"].as_i64().unwrap() - iat, 300);
    assert!(claims["nbf"].as_i64().unwrap() <= iat);
    assert!(!str_field(&claims, "jti").is_empty());
    // The reader asked for pull and push: it gets pull.
    assert_eq!(
        claims["access"],
        json!([{"type": "repository", "name": app, "actions": ["pull"]}])
    );
    // Every token is distinct.
    let again = srv
        .token(&t.acme_reader, &[&repo_scope(&app, "pull,push")])
        .await;
    assert_ne!(jwt_parts(&again).1["jti"], claims["jti"]);

    // Intersections per role; another namespace grants nothing, without error.
    let access = |token: &str| jwt_parts(token).1["access"].clone();
    let all = repo_scope(&app, "pull,push,delete");
    let dev = srv.token(&t.acme_dev, &[&all]).await;
    assert_eq!(access(&dev)[0]["actions"], json!(["pull", "push"]));
    let admin = srv.token(&t.acme_admin, &[&repo_scope(&app, "*")]).await;
    assert_eq!(
        access(&admin)[0]["actions"],
        json!(["pull", "push", "delete"])
    );
    let robot = srv.token(&t.acme_robot, &[&all]).await;
    assert_eq!(access(&robot)[0]["actions"], json!(["pull", "push"]));
    assert_eq!(jwt_parts(&robot).1["sub"], t.acme_robot.username);
    let foreign = srv
        .token(
            &t.acme_admin,
            &[
                &repo_scope(GLOBEX_REPO, "pull,push,delete"),
                &repo_scope("globex.example.io.evil/app", "pull"),
                &repo_scope(ACME_NS, "pull"),
            ],
        )
        .await;
    assert_eq!(access(&foreign), json!([]));
    let mixed = srv
        .token(
            &t.acme_admin,
            &[&repo_scope(GLOBEX_REPO, "pull"), &repo_scope(&app, "pull")],
        )
        .await;
    assert_eq!(
        access(&mixed),
        json!([{"type": "repository", "name": app, "actions": ["pull"]}])
    );
    // A token with nothing granted opens nothing.
    let resp = srv
        .client(&foreign)
        .get_manifest(GLOBEX_REPO, "v1", &[])
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // The catalog scope, filtered to the caller's namespace.
    let catalog = srv.token(&t.acme_reader, &["registry:catalog:*"]).await;
    assert_eq!(
        access(&catalog),
        json!([{"type": "registry", "name": "catalog", "actions": ["*"]}])
    );
    assert_eq!(
        srv.client(&catalog).repositories().await.unwrap(),
        [app.clone(), tools.clone()]
    );
    let globex_catalog = srv.token(&t.globex_dev, &["registry:catalog:*"]).await;
    assert_eq!(
        srv.client(&globex_catalog).repositories().await.unwrap(),
        [GLOBEX_REPO]
    );
    // Without the catalog scope: a challenge naming it.
    let resp = srv.client(&dev).catalog(None, None).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let challenge = resp.headers()[WWW_AUTHENTICATE].to_str().unwrap();
    assert!(
        challenge.contains("scope=\"registry:catalog:*\""),
        "{challenge}"
    );

    // Refusals of the endpoint itself.
    let resp = srv
        .http
        .get(format!("{}?service={SERVICE}", srv.realm()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "no credentials");
    assert!(
        resp.headers()[WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Basic ")
    );
    let resp = srv
        .http
        .get(format!("{}?service=another-registry", srv.realm()))
        .basic_auth(&t.acme_dev.username, Some(&t.acme_dev.secret))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "another service");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "UNSUPPORTED");
    let resp = srv
        .token_response(&t.acme_dev.username, &t.acme_admin.secret, &[])
        .await;
    assert_eq!(
        resp.status(),
        StatusCode::UNAUTHORIZED,
        "someone else's credential"
    );

    // Key rotation: a token issued before still works after it.
    let before = srv.token(&t.acme_dev, &[&repo_scope(&app, "pull")]).await;
    let old_kid = kid_of(&before);
    let rotated = srv.admin(&["keys", "rotate"]);
    let new_kid = str_field(&rotated, "kid");
    assert_ne!(new_kid, old_kid);
    assert_eventually_async!(
        Duration::from_secs(5),
        || async { kid_of(&srv.token(&t.acme_dev, &[]).await) == new_kid },
        "the server does not sign with the rotated key"
    );
    let after = srv.token(&t.acme_dev, &[&repo_scope(&app, "pull")]).await;
    for (what, token) in [("before", &before), ("after", &after)] {
        let resp = srv
            .client(token)
            .get_manifest(&app, "v1", &[])
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "token issued {what} the rotation"
        );
    }
}
