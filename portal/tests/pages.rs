//! The portal's pages through the server's router: sign-in (errors, login
//! CSRF, cookie attributes), sign-out, the Repositories and repository
//! pages for admins and readers, escaping, empty states, paging, and the
//! security headers. The browser test (tests/tests/portal_browser.rs)
//! drives the same pages in Chromium.
#![allow(clippy::unwrap_used)]

mod common;

use auth::Role;
use common::{Harness, PASSWORD, Who};
use http::{Request, StatusCode, header};

const NS: &str = "acme.example.io";

async fn acme() -> Harness {
    let h = Harness::new(true).await;
    h.user("acme", NS, "alice", Role::Admin).await;
    h.user("acme", NS, "rita", Role::Reader).await;
    h.user("globex", "globex.io", "gary", Role::Admin).await;
    h
}

fn form(h: &Harness, uri: &str, cookie: &str, body: String) -> (http::request::Builder, String) {
    let _ = h;
    (
        Request::post(uri)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::COOKIE, cookie),
        body,
    )
}

#[tokio::test]
async fn sign_in_shows_errors_and_sets_a_strict_cookie() {
    let h = acme().await;
    let r = h.send(Request::get("/repositories")).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.header("location"), "/login");
    assert_eq!(h.send(Request::get("/")).await.header("location"), "/login");

    let page = h.send(Request::get("/login")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text().contains("Sign in to Berth"));
    let login = page.cookie("berth_login").unwrap();
    let token = page.hidden_input("csrf").unwrap();
    let cookie = format!("berth_login={login}");

    // Wrong password: the form again, with the error and the (escaped) name.
    let (req, body) = form(
        &h,
        "/login",
        &cookie,
        format!("username=%3Cb%3Ealice&password=nope&csrf={token}"),
    );
    let r = h.send_body(req, body.into()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(
        r.text().contains("Wrong username or password."),
        "{}",
        r.text()
    );
    assert!(
        r.text().contains("value=\"&lt;b&gt;alice\""),
        "{}",
        r.text()
    );
    assert!(!r.text().contains("<b>alice"));
    assert!(r.cookie("berth_session").is_none());

    // Without the login token's cookie (a cross-site form): refused.
    let (req, body) = form(
        &h,
        "/login",
        "",
        format!(
            "username=alice&password={}&csrf={token}",
            PASSWORD.replace(' ', "+")
        ),
    );
    let r = h.send_body(req, body.into()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.text().contains("The sign-in form expired"));
    assert!(r.cookie("berth_session").is_none());

    let (req, body) = form(
        &h,
        "/login",
        &cookie,
        format!("username=alice&password=&csrf={token}"),
    );
    let r = h.send_body(req, body.into()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    let (req, body) = form(
        &h,
        "/login",
        &cookie,
        format!(
            "username=alice&password={}&csrf={token}",
            PASSWORD.replace(' ', "+")
        ),
    );
    let r = h.send_body(req, body.into()).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.header("location"), "/repositories");
    let set = r.set_cookie("berth_session").unwrap();
    for attr in ["Path=/", "HttpOnly", "SameSite=Strict", "Max-Age="] {
        assert!(set.contains(attr), "{set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    // Signed in, / and /login lead to the repositories.
    let c = format!("berth_session={}", r.cookie("berth_session").unwrap());
    assert_eq!(
        h.send(Request::get("/login").header(header::COOKIE, &c))
            .await
            .header("location"),
        "/repositories"
    );
}

#[tokio::test]
async fn cookies_are_secure_behind_tls() {
    let h = Harness::with(|c| c.tls.self_signed = true).await;
    h.user("acme", NS, "alice", Role::Admin).await;
    let page = h.send(Request::get("/login")).await;
    assert!(page.set_cookie("berth_login").unwrap().contains("; Secure"));
    let login = page.cookie("berth_login").unwrap();
    let token = page.hidden_input("csrf").unwrap();
    let (req, body) = form(
        &h,
        "/login",
        &format!("berth_login={login}"),
        format!(
            "username=alice&password={}&csrf={token}",
            PASSWORD.replace(' ', "+")
        ),
    );
    let r = h.send_body(req, body.into()).await;
    assert!(r.set_cookie("berth_session").unwrap().contains("; Secure"));
}

#[tokio::test]
async fn sign_out_needs_the_csrf_token_and_ends_the_session() {
    let h = acme().await;
    let s = h.sign_in("alice").await;
    let c = format!("berth_session={}", s.cookie);
    let (req, body) = form(&h, "/logout", &c, "csrf=wrong".into());
    let r = h.send_body(req, body.into()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = h
        .send(Request::get("/repositories").header(header::COOKIE, &c))
        .await;
    assert_eq!(r.status, StatusCode::OK, "still signed in");
    let (req, body) = form(&h, "/logout", &c, format!("csrf={}", s.csrf));
    let r = h.send_body(req, body.into()).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(r.set_cookie("berth_session").unwrap().contains("Max-Age=0"));
    let r = h
        .send(Request::get("/repositories").header(header::COOKIE, &c))
        .await;
    assert_eq!(r.header("location"), "/login");
}

#[tokio::test]
async fn repositories_page_for_admins_and_readers() {
    let h = acme().await;
    let c = |s: &common::Session| format!("berth_session={}", s.cookie);
    let alice = h.sign_in("alice").await;
    let r = h
        .send(
            Request::get("/repositories")
                .header(header::COOKIE, c(&alice))
                .header(header::HOST, "127.0.0.1:5000"),
        )
        .await;
    let text = r.text();
    assert!(text.contains("No repositories yet."), "{text}");
    assert!(text.contains("docker push 127.0.0.1:5000/acme.example.io/alpine:latest"));
    assert!(text.contains("<code id=\"namespace-name\">acme.example.io</code>"));

    // A push shows at once.
    h.push(&format!("{NS}/nginx"), &["1.27", "latest"], "nginx")
        .await;
    h.push(&format!("{NS}/redis"), &["7"], "redis").await;
    h.push("globex.io/secret", &["v1"], "globex").await;
    let r = h
        .send(Request::get("/repositories").header(header::COOKIE, c(&alice)))
        .await;
    let text = r.text();
    assert!(
        text.contains("<a href=\"/repositories/acme.example.io/nginx\">"),
        "{text}"
    );
    assert!(text.contains("<strong>redis</strong>"));
    assert!(text.contains("<span class=\"badge\">linux/amd64</span>"));
    assert!(
        !text.contains("globex"),
        "another account's repository shows"
    );
    assert!(text.contains("class=\"select\" value=\"acme.example.io/nginx\""));
    assert!(text.contains("id=\"action-delete\" disabled data-allowed=\"true\""));
    assert!(text.contains("id=\"mint-login\""));
    assert!(text.contains("Showing 1–2 of 2"));
    assert!(text.contains(&format!(
        "<meta name=\"csrf-token\" content=\"{}\">",
        alice.csrf
    )));

    // A reader sees, without selection boxes, and Delete is disabled.
    let rita = h.sign_in("rita").await;
    let text = h
        .send(Request::get("/repositories").header(header::COOKIE, c(&rita)))
        .await
        .text();
    assert!(text.contains("<strong>nginx</strong>"));
    assert!(!text.contains("class=\"select\""));
    assert!(text.contains("data-allowed=\"false\" title=\"Only account admins can delete\""));

    // Filter: matches, no match (escaped), and paging keeps the filter.
    let get = |uri: String| Request::get(uri).header(header::COOKIE, c(&alice));
    let text = h.send(get("/repositories?q=ngi".into())).await.text();
    assert!(text.contains("<strong>nginx</strong>") && !text.contains("<strong>redis</strong>"));
    let text = h
        .send(get("/repositories?q=%3Cscript%3Ex".into()))
        .await
        .text();
    assert!(
        text.contains("No repository matches <strong>&lt;script&gt;x</strong>"),
        "{text}"
    );
    assert!(!text.contains("<script>x"));
    let text = h.send(get("/repositories?limit=1".into())).await.text();
    assert!(text.contains("Showing 1–1 of 2"));
    assert!(
        text.contains("href=\"/repositories?after=acme.example.io%2Fnginx&amp;start=2\""),
        "{text}"
    );
    let text = h
        .send(get(
            "/repositories?limit=1&after=acme.example.io%2Fnginx&start=2".into(),
        ))
        .await
        .text();
    assert!(text.contains("Showing 2–2 of 2") && text.contains("<strong>redis</strong>"));
    assert!(text.contains("id=\"first-page\""));
    let r = h.send(get("/repositories?limit=0".into())).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn repository_page_shows_tags_digests_and_pull_uris() {
    let h = acme().await;
    let repo = format!("{NS}/nginx");
    let digest = h.push(&repo, &["1.27", "latest"], "nginx").await;
    h.push("globex.io/secret", &["v1"], "globex").await;
    let alice = h.sign_in("alice").await;
    let get = |uri: &str| {
        Request::get(uri)
            .header(header::COOKIE, format!("berth_session={}", alice.cookie))
            .header(header::HOST, "127.0.0.1:5000")
    };
    let r = h.send(get(&format!("/repositories/{repo}"))).await;
    assert_eq!(r.status, StatusCode::OK);
    let text = r.text();
    for needle in [
        format!("data-repository=\"{repo}\""),
        "<tr data-tag=\"1.27\">".into(),
        "<tr data-tag=\"latest\">".into(),
        format!("data-digest=\"{digest}\""),
        format!("<code class=\"pull-tag\">127.0.0.1:5000/{repo}:1.27</code>"),
        format!("<code class=\"pull-digest\">127.0.0.1:5000/{repo}@{digest}</code>"),
        format!("data-copy=\"127.0.0.1:5000/{repo}@{digest}\""),
        "OCI image".into(),
        "<span class=\"badge\">linux/amd64</span>".into(),
        "class=\"select\" value=\"latest\"".into(),
    ] {
        assert!(text.contains(&needle), "{needle} missing in {text}");
    }
    for missing in [
        "/repositories/globex.io/secret",
        &format!("/repositories/{NS}/nope"),
    ] {
        let r = h.send(get(missing)).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{missing}");
        assert!(r.text().contains("not found"));
    }
    // Emptied of tags: a clear empty state.
    h.registry()
        .delete_manifest(
            &registry::RepoName::parse(&repo).unwrap(),
            &registry::Reference::Digest(digest),
        )
        .await
        .unwrap();
    let text = h.send(get(&format!("/repositories/{repo}"))).await.text();
    assert!(text.contains("This repository has no tags."), "{text}");
}

#[tokio::test]
async fn pages_carry_security_headers_and_assets_are_embedded() {
    let h = acme().await;
    let alice = h.sign_in("alice").await;
    for r in [
        h.send(Request::get("/login")).await,
        h.send(
            Request::get("/repositories")
                .header(header::COOKIE, format!("berth_session={}", alice.cookie)),
        )
        .await,
        h.call(&Who::Session(&alice), http::Method::GET, "/api/v1/me", None)
            .await,
    ] {
        let csp = r.header("content-security-policy");
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'"));
        assert_eq!(r.header("x-frame-options"), "DENY");
        assert_eq!(r.header("x-content-type-options"), "nosniff");
        assert_eq!(r.header("cache-control"), "no-store");
    }
    // No inline script or handler anywhere in a page.
    let text = h
        .send(
            Request::get("/repositories")
                .header(header::COOKIE, format!("berth_session={}", alice.cookie)),
        )
        .await
        .text();
    assert!(!text.contains("<script>") && !text.contains(" onclick="));
    for (asset, ty) in [
        ("portal.js", "text/javascript; charset=utf-8"),
        ("portal.css", "text/css; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
    ] {
        let r = h.send(Request::get(format!("/assets/{asset}"))).await;
        assert_eq!(
            (r.status, r.header("content-type")),
            (StatusCode::OK, ty),
            "{asset}"
        );
        assert!(!r.body.is_empty());
    }
    assert_eq!(
        h.send(Request::get("/assets/../Cargo.toml")).await.status,
        StatusCode::NOT_FOUND
    );
}
