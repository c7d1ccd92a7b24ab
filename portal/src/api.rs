//! The JSON management API (`/api/v1/…`), described by `openapi.json`.
//!
//! Deletes take a `confirm` value that must equal the repository name or
//! tag being deleted: the portal's dialogs send what the user typed, so a
//! script deletes exactly as deliberately as a person does. Batch deletes
//! check every item (role, namespace, confirmation, existence) before
//! deleting anything.

use std::collections::BTreeSet;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode, header};
use registry::{Reference, RegistryError, RepoName, RepositorySummary, Tag, TagDetail};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::PortalState;
use crate::caller::{Caller, source};
use crate::error::ApiError;
use crate::html::rfc3339;

/// The OpenAPI 3 document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Default and largest page of `GET /api/v1/repositories`.
pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 1000;
/// Most names one batch delete takes.
pub const MAX_BATCH: usize = 1000;
/// Longest `q` filter and `after` cursor accepted.
const MAX_QUERY_LEN: usize = 256;

/// `GET /api/v1/openapi.json` (public: it describes, it reveals nothing).
pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        OPENAPI.as_bytes(),
    )
        .into_response()
}

/// `host[:port]` that clients pull from: the configured public URL's host,
/// else the request's Host header when it is a plausible host name.
pub(crate) fn registry_host(state: &PortalState, headers: &HeaderMap) -> String {
    if let Some(h) = &state.public_host {
        return h.clone();
    }
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() < 256
                && h.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
                })
        })
        .unwrap_or("localhost")
        .to_owned()
}

/// Query parameters as pairs; unknown ones are ignored.
pub(crate) fn query_pairs(q: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(q.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

pub(crate) fn query_value<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

pub(crate) fn parse_repo(name: &str) -> Result<RepoName, ApiError> {
    RepoName::parse(name).map_err(|e| ApiError::NameInvalid(e.to_string()))
}

fn parse_tag(tag: &str) -> Result<Tag, ApiError> {
    Tag::parse(tag).map_err(|e| ApiError::TagInvalid(e.to_string()))
}

/// A repository the caller may see, or 404 as if it did not exist.
pub(crate) fn visible_repo(caller: &Caller, name: &str) -> Result<RepoName, ApiError> {
    let repo = parse_repo(name)?;
    if caller.sees(&repo) {
        Ok(repo)
    } else {
        Err(ApiError::NameUnknown(repo.to_string()))
    }
}

/// Registry errors about `repo`, with its name in the message.
fn about(repo: &RepoName) -> impl FnOnce(RegistryError) -> ApiError + '_ {
    move |e| match e {
        RegistryError::NameUnknown => ApiError::NameUnknown(repo.to_string()),
        other => other.into(),
    }
}

fn audit(state: &PortalState, caller: &Caller, headers: &http::Extensions, target: String) {
    let (Some(auth), Some(id)) = (state.auth.clone(), caller.identity.as_ref()) else {
        return;
    };
    let event = auth::model::AuditEvent {
        at: auth::service::now_millis(),
        account_id: Some(id.account_id),
        actor: id.subject.clone(),
        action: "delete".into(),
        target: Some(target),
        source: source(headers),
        outcome: "ok".into(),
        detail: Some("portal API".into()),
    };
    // Off the request path, as the registry's own audit lines are.
    tokio::spawn(async move { auth.audit(event).await });
}

/// `GET /api/v1/me`: who is calling, their account and the registry host.
pub async fn me(
    State(state): State<PortalState>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let account = match (&state.auth, &caller.identity) {
        (Some(auth), Some(id)) => Some(auth.account_by_id(id.account_id).await?.name),
        _ => None,
    };
    Ok(axum::Json(json!({
        "subject": caller.subject(),
        "kind": caller.identity.as_ref().map(|i| i.kind),
        "account": account,
        "namespace": caller.namespace(),
        "role": caller.role(),
        "can_delete": caller.can_delete(),
        "accounts_enabled": state.auth.is_some(),
        "registry": registry_host(&state, &headers),
    }))
    .into_response())
}

/// One page of the caller's repositories.
#[derive(Debug)]
pub(crate) struct Listing {
    pub repositories: Vec<RepositorySummary>,
    pub total: u64,
    /// The `after` of the next page, when there is one.
    pub next: Option<String>,
}

/// The parameters of a listing, validated.
#[derive(Debug, Default)]
pub(crate) struct ListParams {
    pub q: Option<String>,
    pub after: Option<String>,
    pub limit: usize,
}

impl ListParams {
    pub fn parse(pairs: &[(String, String)]) -> Result<ListParams, ApiError> {
        let text = |key: &str| -> Result<Option<String>, ApiError> {
            match query_value(pairs, key).map(str::trim) {
                Some(v) if v.len() > MAX_QUERY_LEN => Err(ApiError::Invalid(format!(
                    "{key} is longer than {MAX_QUERY_LEN} characters"
                ))),
                Some(v) if !v.is_empty() => Ok(Some(v.to_owned())),
                _ => Ok(None),
            }
        };
        let limit = match query_value(pairs, "limit") {
            None | Some("") => DEFAULT_LIMIT,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::Invalid(format!("limit must be a number from 1 to {MAX_LIMIT}"))
                })?,
        };
        Ok(ListParams {
            q: text("q")?,
            after: text("after")?,
            limit,
        })
    }
}

pub(crate) async fn listing(
    state: &PortalState,
    caller: &Caller,
    p: &ListParams,
) -> Result<Listing, ApiError> {
    // One more than asked tells whether a next page exists.
    let mut page = state
        .registry
        .repository_page(
            caller.namespace(),
            p.q.as_deref(),
            p.after.as_deref(),
            p.limit + 1,
        )
        .await?;
    let next = if page.repositories.len() > p.limit {
        page.repositories.truncate(p.limit);
        page.repositories.last().map(|r| r.name.clone())
    } else {
        None
    };
    Ok(Listing {
        repositories: page.repositories,
        total: page.total,
        next,
    })
}

fn repository_json(r: &RepositorySummary) -> Value {
    json!({
        "name": r.name,
        "tag_count": r.tag_count,
        "size": r.size,
        "last_push": rfc3339(r.last_push),
        "platforms": r.platforms,
    })
}

/// `GET /api/v1/repositories?q=&after=&limit=`.
pub async fn list_repositories(
    State(state): State<PortalState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = ListParams::parse(&query_pairs(query.as_deref()))?;
    let l = listing(&state, &caller, &params).await?;
    Ok(axum::Json(json!({
        "repositories": l.repositories.iter().map(repository_json).collect::<Vec<_>>(),
        "total": l.total,
        "next": l.next,
    }))
    .into_response())
}

pub(crate) fn tag_json(host: &str, repo: &RepoName, t: &TagDetail) -> Value {
    json!({
        "tag": t.tag,
        "digest": t.digest.as_str(),
        "media_type": t.media_type,
        "artifact_type": t.artifact_type,
        "size": t.size,
        "pushed_at": rfc3339(t.pushed_at),
        "platforms": t.platforms,
        "pull_by_tag": format!("{host}/{repo}:{}", t.tag),
        "pull_by_digest": format!("{host}/{repo}@{}", t.digest),
    })
}

/// What a `/api/v1/repositories/{*rest}` path names.
enum Target {
    Repository(RepoName),
    Tag(RepoName, Tag),
    TagsDelete(RepoName),
}

fn target(caller: &Caller, rest: &str) -> Result<Target, ApiError> {
    let Some((name, sub)) = rest.split_once("/-/") else {
        return Ok(Target::Repository(visible_repo(caller, rest)?));
    };
    let repo = visible_repo(caller, name)?;
    if sub == "tags:delete" {
        return Ok(Target::TagsDelete(repo));
    }
    match sub.strip_prefix("tags/") {
        Some(tag) => Ok(Target::Tag(repo, parse_tag(tag)?)),
        None => Err(ApiError::Invalid(format!(
            "unknown resource {sub:?} of repository {repo}"
        ))),
    }
}

fn wrong_method() -> ApiError {
    ApiError::Invalid("method not supported on this resource; see /api/v1/openapi.json".into())
}

/// `GET /api/v1/repositories/{name}`: the repository's tags.
pub async fn get_repository(
    State(state): State<PortalState>,
    caller: Caller,
    headers: HeaderMap,
    Path(rest): Path<String>,
) -> Result<Response, ApiError> {
    let Target::Repository(repo) = target(&caller, &rest)? else {
        return Err(wrong_method());
    };
    let tags = state
        .registry
        .repository_tags(&repo)
        .await
        .map_err(about(&repo))?;
    let host = registry_host(&state, &headers);
    Ok(axum::Json(json!({
        "name": repo.as_str(),
        "pull": format!("{host}/{repo}"),
        "tags": tags.iter().map(|t| tag_json(&host, &repo, t)).collect::<Vec<_>>(),
    }))
    .into_response())
}

fn confirmed(confirm: Option<&str>, expected: &str) -> Result<(), ApiError> {
    if confirm == Some(expected) {
        Ok(())
    } else {
        Err(ApiError::Confirmation {
            expected: expected.to_owned(),
        })
    }
}

/// `DELETE /api/v1/repositories/{name}?confirm={name}` and
/// `DELETE /api/v1/repositories/{name}/-/tags/{tag}?confirm={tag}`.
pub async fn delete_in_repository(
    State(state): State<PortalState>,
    caller: Caller,
    RawQuery(query): RawQuery,
    Path(rest): Path<String>,
    req: http::Extensions,
) -> Result<Response, ApiError> {
    caller.require_delete()?;
    let pairs = query_pairs(query.as_deref());
    let confirm = query_value(&pairs, "confirm");
    match target(&caller, &rest)? {
        Target::Repository(repo) => {
            confirmed(confirm, repo.as_str())?;
            state
                .registry
                .delete_repository(&repo)
                .await
                .map_err(about(&repo))?;
            tracing::info!(repository = %repo, by = caller.subject(), "repository deleted");
            audit(&state, &caller, &req, format!("repository {repo}"));
        }
        Target::Tag(repo, tag) => {
            confirmed(confirm, tag.as_str())?;
            delete_tag(&state, &repo, &tag).await?;
            audit(&state, &caller, &req, format!("tag {repo}:{tag}"));
        }
        Target::TagsDelete(_) => return Err(wrong_method()),
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn delete_tag(state: &PortalState, repo: &RepoName, tag: &Tag) -> Result<(), ApiError> {
    match state
        .registry
        .delete_manifest(repo, &Reference::Tag(tag.clone()))
        .await
    {
        Ok(()) => {
            tracing::info!(repository = %repo, tag = %tag, "tag deleted");
            Ok(())
        }
        Err(RegistryError::ManifestUnknown) => {
            // Say which is missing: the repository or only the tag.
            state
                .registry
                .repository_tags(repo)
                .await
                .map_err(about(repo))?;
            Err(ApiError::TagUnknown(format!("{repo}:{tag}")))
        }
        Err(e) => Err(about(repo)(e)),
    }
}

/// Reads a JSON request body; scripts must say it is JSON, which also keeps
/// cross-site HTML forms (which cannot) out.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<T, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if !is_json {
        return Err(ApiError::Invalid(
            "send the body as Content-Type: application/json".into(),
        ));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::Invalid(format!("invalid JSON body: {e}")))
}

fn check_batch_size(n: usize) -> Result<(), ApiError> {
    if n == 0 || n > MAX_BATCH {
        return Err(ApiError::Invalid(format!(
            "name between 1 and {MAX_BATCH} items to delete"
        )));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RepositoriesDelete {
    repositories: Vec<NamedConfirm>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NamedConfirm {
    name: String,
    confirm: String,
}

/// `POST /api/v1/repositories:delete` with
/// `{"repositories": [{"name", "confirm"}, …]}`.
pub async fn delete_repositories(
    State(state): State<PortalState>,
    caller: Caller,
    headers: HeaderMap,
    req: http::Extensions,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.require_delete()?;
    let batch: RepositoriesDelete = json_body(&headers, &body)?;
    check_batch_size(batch.repositories.len())?;
    let mut repos = BTreeSet::new();
    for item in &batch.repositories {
        let repo = visible_repo(&caller, &item.name)?;
        confirmed(Some(&item.confirm), repo.as_str())?;
        repos.insert(repo);
    }
    for repo in &repos {
        state
            .registry
            .repository_tags(repo)
            .await
            .map_err(about(repo))?;
    }
    let mut deleted = Vec::with_capacity(repos.len());
    for repo in &repos {
        match state.registry.delete_repository(repo).await {
            // Gone since the check: someone else deleted it, as asked.
            Ok(()) | Err(RegistryError::NameUnknown) => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!(repository = %repo, by = caller.subject(), "repository deleted");
        audit(&state, &caller, &req, format!("repository {repo}"));
        deleted.push(repo.to_string());
    }
    Ok(axum::Json(json!({ "deleted": deleted })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TagsDelete {
    tags: Vec<TagConfirm>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TagConfirm {
    tag: String,
    confirm: String,
}

/// `POST /api/v1/repositories/{name}/-/tags:delete` with
/// `{"tags": [{"tag", "confirm"}, …]}`.
pub async fn post_in_repository(
    State(state): State<PortalState>,
    caller: Caller,
    headers: HeaderMap,
    Path(rest): Path<String>,
    req: http::Extensions,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Target::TagsDelete(repo) = target(&caller, &rest)? else {
        return Err(wrong_method());
    };
    caller.require_delete()?;
    let batch: TagsDelete = json_body(&headers, &body)?;
    check_batch_size(batch.tags.len())?;
    let mut tags = BTreeSet::new();
    for item in &batch.tags {
        let tag = parse_tag(&item.tag)?;
        confirmed(Some(&item.confirm), tag.as_str())?;
        tags.insert(tag);
    }
    let existing: BTreeSet<String> = state
        .registry
        .repository_tags(&repo)
        .await
        .map_err(about(&repo))?
        .into_iter()
        .map(|t| t.tag)
        .collect();
    if let Some(missing) = tags.iter().find(|t| !existing.contains(t.as_str())) {
        return Err(ApiError::TagUnknown(format!("{repo}:{missing}")));
    }
    let mut deleted = Vec::with_capacity(tags.len());
    for tag in &tags {
        match delete_tag(&state, &repo, tag).await {
            Ok(()) | Err(ApiError::TagUnknown(_)) => {}
            Err(e) => return Err(e),
        }
        audit(&state, &caller, &req, format!("tag {repo}:{tag}"));
        deleted.push(tag.to_string());
    }
    Ok(axum::Json(json!({ "deleted": deleted })).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MintRequest {
    description: Option<String>,
}

/// `POST /api/v1/credentials`: a registry login credential for the calling
/// user, with the ready `docker login` command. The secret is shown once.
pub async fn mint_credential(
    State(state): State<PortalState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some(auth) = &state.auth else {
        return Err(ApiError::Unsupported(
            "accounts are disabled on this server (auth.enabled = false): no login is needed"
                .into(),
        ));
    };
    if !caller.is_user() {
        return Err(ApiError::Denied(
            "only users mint login credentials; robots use their API keys".into(),
        ));
    }
    let request: MintRequest = if body.is_empty() {
        MintRequest::default()
    } else {
        json_body(&headers, &body)?
    };
    let description = request.description.unwrap_or_else(|| "portal".into());
    if description.len() > 200 {
        return Err(ApiError::Invalid(
            "description is longer than 200 characters".into(),
        ));
    }
    let username = caller.subject().to_owned();
    let minted = auth
        .mint_login_credential(&username, None, Some(&description))
        .await?;
    let host = registry_host(&state, &headers);
    let command = format!("docker login -u {username} -p {} {host}", minted.secret);
    let body = json!({
        "username": username,
        "secret": minted.secret,
        "expires_at": minted.credential.expires_at.map(rfc3339),
        "registry": host,
        "command": command,
    });
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}
