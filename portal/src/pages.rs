//! The portal's pages, rendered on the server: sign-in, the Repositories
//! list and one repository's tags, the Nodes list and one node.
//! `assets/portal.js` adds selection, the delete dialogs, live filtering,
//! copy buttons, the Docker Login button and a node's live Pull, all
//! through the JSON API; the pages stay usable for reading without it.
//!
//! Sign-in is protected against login CSRF by a double-submit token (a
//! `SameSite=Strict` cookie that a cross-site form cannot send, echoed in
//! the form); every other form carries the session's anti-CSRF token.

use std::fmt::Write as _;

use auth::AuthError;
use auth::service::PortalSession;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};

use crate::PortalState;
use crate::api::{ListParams, listing, query_pairs, query_value, registry_host, visible_repo};
use crate::caller::{Caller, SESSION_COOKIE, constant_time_eq, cookie, source};
use crate::error::ApiError;
use crate::html::{Viewer, esc, page};

mod nodes;
mod tables;

/// Cookie holding the sign-in form's anti-CSRF token.
const LOGIN_COOKIE: &str = "berth_login";

const PORTAL_JS: &str = include_str!("assets/portal.js");
const PORTAL_CSS: &str = include_str!("assets/portal.css");
const FAVICON: &str = include_str!("assets/favicon.svg");

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

fn redirect(to: &'static str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
}

fn with_cookie(mut resp: Response, cookie: String) -> Response {
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

/// A `Set-Cookie` value: never readable by scripts, never sent cross-site.
fn cookie_value(state: &PortalState, name: &str, value: &str, path: &str, max_age: u64) -> String {
    let secure = if state.secure_cookies { "; Secure" } else { "" };
    format!("{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}")
}

/// The page shown instead of the portal when accounts are disabled.
fn accounts_disabled() -> Response {
    let main = "<section class=\"card narrow\">\n<h1>Accounts are disabled</h1>\n\
        <p>This berth-server runs with <code>auth.enabled = false</code>: there are no accounts, \
        so there is nothing to sign in to and the portal is off. Every registry and management \
        API request is allowed, on loopback only.</p>\n\
        <p>Browse repositories with the management API, described at \
        <a href=\"/api/v1/openapi.json\">/api/v1/openapi.json</a>, e.g. \
        <code>curl http://HOST/api/v1/repositories</code>.</p>\n\
        <p>To use the portal, enable accounts (<code>auth.enabled = true</code>, the default) and \
        create an account and a user with <code>berth-server admin</code>.</p>\n</section>";
    html(StatusCode::OK, page("Accounts disabled", None, main))
}

/// The signed-in session of a page request, if any.
async fn session(state: &PortalState, headers: &HeaderMap) -> Option<PortalSession> {
    let auth = state.auth.as_ref()?;
    let token = cookie(headers, SESSION_COOKIE)?;
    auth.session(token).await.ok()
}

fn viewer(s: &PortalSession) -> Viewer<'_> {
    Viewer {
        subject: &s.identity.subject,
        role: s.identity.role.as_str(),
        csrf: &s.csrf,
    }
}

fn error_page(status: StatusCode, s: Option<&PortalSession>, title: &str, text: &str) -> Response {
    let main = format!(
        "<section class=\"card narrow\">\n<h1>{}</h1>\n<p>{}</p>\n\
         <p><a href=\"/repositories\">Back to Repositories</a></p>\n</section>",
        esc(title),
        esc(text)
    );
    html(status, page(title, s.map(viewer).as_ref(), &main))
}

/// `GET /`.
pub async fn home(State(state): State<PortalState>, headers: HeaderMap) -> Response {
    if state.auth.is_none() {
        return accounts_disabled();
    }
    match session(&state, &headers).await {
        Some(_) => redirect("/repositories"),
        None => redirect("/login"),
    }
}

fn sign_in_page(
    state: &PortalState,
    status: StatusCode,
    error: Option<&str>,
    user: &str,
) -> Response {
    let token = uuid::Uuid::new_v4().simple().to_string();
    let mut main = String::from(
        "<section class=\"card narrow signin\">\n<h1>Sign in to Berth</h1>\n\
         <p class=\"muted\">Your private container registry.</p>\n",
    );
    if let Some(e) = error {
        let _ = writeln!(
            main,
            "<p class=\"error\" id=\"signin-error\" role=\"alert\">{}</p>",
            esc(e)
        );
    }
    let _ = write!(
        main,
        "<form method=\"post\" action=\"/login\" class=\"stack\">\n\
         <input type=\"hidden\" name=\"csrf\" value=\"{token}\">\n\
         <label>Username <input name=\"username\" id=\"username\" autocomplete=\"username\" \
         required autofocus value=\"{}\"></label>\n\
         <label>Password <input name=\"password\" id=\"password\" type=\"password\" \
         autocomplete=\"current-password\" required></label>\n\
         <button type=\"submit\" class=\"primary\" id=\"sign-in\">Sign in</button>\n</form>\n</section>",
        esc(user)
    );
    let resp = html(status, page("Sign in", None, &main));
    with_cookie(
        resp,
        cookie_value(state, LOGIN_COOKIE, &token, "/login", 3600),
    )
}

/// `GET /login`.
pub async fn sign_in_form(State(state): State<PortalState>, headers: HeaderMap) -> Response {
    if state.auth.is_none() {
        return accounts_disabled();
    }
    if session(&state, &headers).await.is_some() {
        return redirect("/repositories");
    }
    sign_in_page(&state, StatusCode::OK, None, "")
}

fn form_fields(body: &Bytes) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

/// `POST /login` (form: username, password, csrf).
pub async fn sign_in(
    State(state): State<PortalState>,
    headers: HeaderMap,
    ext: http::Extensions,
    body: Bytes,
) -> Response {
    let Some(auth) = &state.auth else {
        return accounts_disabled();
    };
    let fields = form_fields(&body);
    let field = |k: &str| query_value(&fields, k).unwrap_or("");
    let user = field("username").trim();
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or("");
    if expected.is_empty() || !constant_time_eq(field("csrf"), expected) {
        return sign_in_page(
            &state,
            StatusCode::FORBIDDEN,
            Some("The sign-in form expired. Please try again."),
            user,
        );
    }
    if user.is_empty() || field("password").is_empty() {
        return sign_in_page(
            &state,
            StatusCode::BAD_REQUEST,
            Some("Enter your username and password."),
            user,
        );
    }
    let ttl = state.session_ttl;
    match auth
        .sign_in(user, field("password"), source(&ext).as_deref(), ttl)
        .await
    {
        Ok(s) => {
            let resp = with_cookie(
                redirect("/repositories"),
                cookie_value(&state, SESSION_COOKIE, &s.token, "/", ttl.as_secs()),
            );
            with_cookie(resp, cookie_value(&state, LOGIN_COOKIE, "", "/login", 0))
        }
        Err(AuthError::RateLimited { retry_after_secs }) => sign_in_page(
            &state,
            StatusCode::TOO_MANY_REQUESTS,
            Some(&format!(
                "Too many failed sign-ins. Try again in {retry_after_secs} seconds."
            )),
            user,
        ),
        Err(AuthError::Unauthenticated) => sign_in_page(
            &state,
            StatusCode::UNAUTHORIZED,
            Some("Wrong username or password."),
            user,
        ),
        Err(e) => {
            tracing::error!(error = %e, "portal sign-in failed");
            sign_in_page(
                &state,
                StatusCode::INTERNAL_SERVER_ERROR,
                Some("Signing in failed on the server. Please try again later."),
                user,
            )
        }
    }
}

/// `POST /logout` (form: csrf).
pub async fn sign_out(
    State(state): State<PortalState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(auth) = &state.auth else {
        return accounts_disabled();
    };
    if let Some(s) = session(&state, &headers).await {
        let fields = form_fields(&body);
        if !constant_time_eq(query_value(&fields, "csrf").unwrap_or(""), &s.csrf) {
            return error_page(
                StatusCode::FORBIDDEN,
                Some(&s),
                "Sign-out refused",
                "The form did not carry this session's anti-CSRF token. Use the Sign out button.",
            );
        }
        if let Err(e) = auth.sign_out(&s.token).await {
            tracing::warn!(error = %e, "ending a portal session failed");
        }
    }
    with_cookie(
        redirect("/login"),
        cookie_value(&state, SESSION_COOKIE, "", "/", 0),
    )
}

fn caller_of(s: &PortalSession) -> Caller {
    Caller {
        identity: Some(s.identity.clone()),
        csrf: Some(s.csrf.clone()),
    }
}

/// `GET /repositories?q=&after=&limit=&start=`.
pub async fn repositories(
    State(state): State<PortalState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    if state.auth.is_none() {
        return accounts_disabled();
    }
    let Some(s) = session(&state, &headers).await else {
        return redirect("/login");
    };
    let pairs = query_pairs(query.as_deref());
    let params = match ListParams::parse(&pairs) {
        Ok(p) => p,
        Err(e) => {
            return error_page(
                StatusCode::BAD_REQUEST,
                Some(&s),
                "Bad request",
                &e.to_string(),
            );
        }
    };
    // Where this page starts, for "Showing 51–100": cursors do not know.
    let start = query_value(&pairs, "start")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1)
        .max(1);
    let caller = caller_of(&s);
    let list = match listing(&state, &caller, &params).await {
        Ok(l) => l,
        Err(e) => return api_error_page(&s, e),
    };
    let host = registry_host(&state, &headers);
    let main = tables::repositories_main(&tables::RepositoriesView {
        list: &list,
        params: &params,
        start,
        namespace: &s.identity.namespace,
        host: &host,
        can_delete: caller.can_delete(),
    });
    html(
        StatusCode::OK,
        page("Repositories", Some(&viewer(&s)), &main),
    )
}

fn api_error_page(s: &PortalSession, e: ApiError) -> Response {
    let status = e.status();
    let title = match status {
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::BAD_REQUEST => "Bad request",
        _ => "Something went wrong",
    };
    let text = match e {
        ApiError::Internal(_) => {
            // Logged by the conversion; the reader gets no internals.
            let _ = e.into_response();
            "The server could not answer. Please try again later.".to_owned()
        }
        other => other.to_string(),
    };
    error_page(status, Some(s), title, &text)
}

/// `GET /repositories/{name}`: the repository's tags.
pub async fn repository(
    State(state): State<PortalState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if state.auth.is_none() {
        return accounts_disabled();
    }
    let Some(s) = session(&state, &headers).await else {
        return redirect("/login");
    };
    let caller = caller_of(&s);
    let repo = match visible_repo(&caller, &name) {
        Ok(r) => r,
        Err(e) => return api_error_page(&s, e),
    };
    let tags = match state.registry.repository_tags(&repo).await {
        Ok(t) => t,
        Err(registry::RegistryError::NameUnknown) => {
            return api_error_page(&s, ApiError::NameUnknown(repo.to_string()));
        }
        Err(e) => return api_error_page(&s, e.into()),
    };
    let host = registry_host(&state, &headers);
    let main = tables::repository_main(&tables::RepositoryView {
        repo: &repo,
        tags: &tags,
        namespace: &s.identity.namespace,
        host: &host,
        can_delete: caller.can_delete(),
    });
    html(
        StatusCode::OK,
        page(repo.as_str(), Some(&viewer(&s)), &main),
    )
}

/// `GET /nodes`: the account's nodes.
pub async fn nodes(State(state): State<PortalState>, headers: HeaderMap) -> Response {
    if state.auth.is_none() {
        return accounts_disabled();
    }
    let Some(s) = session(&state, &headers).await else {
        return redirect("/login");
    };
    let list = match crate::nodes::node_list(&state, &caller_of(&s), None).await {
        Ok(l) => l,
        Err(e) => return api_error_page(&s, e),
    };
    let main = nodes::nodes_main(&list);
    html(StatusCode::OK, page("Nodes", Some(&viewer(&s)), &main))
}

/// `GET /nodes/{id}`: one node's status, containers, images, drift and
/// commands, with the Pull form for those who may send commands.
pub async fn node(
    State(state): State<PortalState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if state.auth.is_none() {
        return accounts_disabled();
    }
    let Some(s) = session(&state, &headers).await else {
        return redirect("/login");
    };
    let caller = caller_of(&s);
    let view = match crate::nodes::visible_node(&state, &caller, &id).await {
        Ok(v) => v,
        Err(e) => return api_error_page(&s, e),
    };
    let commands = match crate::nodes::plane(&state) {
        Ok(plane) => plane
            .commands(&view.node.id, crate::nodes::DEFAULT_COMMANDS)
            .await
            .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    let commands = match commands {
        Ok(c) => c,
        Err(e) => return api_error_page(&s, e),
    };
    let main = nodes::node_main(&nodes::NodeViewPage {
        node: &view,
        commands: &commands,
        can_operate: caller.can_operate(),
    });
    html(
        StatusCode::OK,
        page(&view.node.name, Some(&viewer(&s)), &main),
    )
}

/// `GET /assets/{file}`: the embedded script, style sheet and icon.
pub async fn asset(Path(file): Path<String>) -> Response {
    let (body, content_type) = match file.as_str() {
        "portal.js" => (PORTAL_JS, "text/javascript; charset=utf-8"),
        "portal.css" => (PORTAL_CSS, "text/css; charset=utf-8"),
        "favicon.svg" => (FAVICON, "image/svg+xml"),
        _ => return (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    };
    // Revalidated on every load: they change with the binary, and there is
    // no version in their URLs.
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
