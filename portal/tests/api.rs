//! The management API end to end through the server's router: every
//! endpoint, and every refusal (unauthenticated, another account, a reader
//! or developer deleting, missing or wrong anti-CSRF token, wrong
//! confirmation, bad input), each followed by a check that nothing changed.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use auth::Role;
use common::{Harness, Who};
use http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};

const NS: &str = "acme.example.io";

/// acme with an admin, a developer and a reader; globex with an admin and
/// one repository of its own.
async fn two_accounts() -> Harness {
    let h = Harness::new(true).await;
    h.user("acme", NS, "alice", Role::Admin).await;
    h.user("acme", NS, "dave", Role::Developer).await;
    h.user("acme", NS, "rita", Role::Reader).await;
    h.user("globex", "globex.io", "gary", Role::Admin).await;
    h.push("globex.io/secret", &["v1"], "globex").await;
    h
}

fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, _) in item.as_object().unwrap() {
            out.insert((method.to_uppercase(), path.clone()));
        }
    }
    out
}

/// Every `$ref` in `v` points at an existing component.
fn check_refs(doc: &Value, v: &Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                let path = r.strip_prefix("#/").unwrap();
                let mut at = doc;
                for part in path.split('/') {
                    at = &at[part];
                }
                assert!(!at.is_null(), "dangling $ref {r}");
            }
            m.values().for_each(|x| check_refs(doc, x));
        }
        Value::Array(a) => a.iter().for_each(|x| check_refs(doc, x)),
        _ => {}
    }
}

#[tokio::test]
async fn openapi_document_is_complete_and_every_route_is_in_it() {
    let h = two_accounts().await;
    let r = h.send(Request::get("/api/v1/openapi.json")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), "application/json");
    let doc = r.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    check_refs(&doc, &doc);
    let documented = operations(&doc);
    for (method, path) in portal::ROUTES {
        assert!(
            documented.contains(&(method.to_string(), path.to_string())),
            "{method} {path} is routed but not in openapi.json"
        );
    }
    for (method, path) in &documented {
        let op = &doc["paths"][path][method.to_lowercase()];
        assert!(
            op["operationId"].is_string(),
            "{method} {path}: operationId"
        );
        assert!(
            op["responses"].as_object().is_some_and(|r| !r.is_empty()),
            "{method} {path}: responses"
        );
        for p in op["parameters"].as_array().into_iter().flatten() {
            if p["in"] == "path" {
                let name = p["name"].as_str().unwrap();
                assert!(path.contains(&format!("{{{name}}}")), "{path}: {name}");
            }
        }
        // Documented means served: the router answers something other
        // than "no such route" or "wrong method".
        let uri = path
            .replace("{name}", "acme.example.io/app")
            .replace("{tag}", "v1")
            .replace("{id}", "some-node")
            .replace("{cid}", "some-command");
        let r = h
            .send(Request::builder().method(method.as_str()).uri(&uri))
            .await;
        assert!(
            r.status != StatusCode::NOT_FOUND && r.status != StatusCode::METHOD_NOT_ALLOWED,
            "{method} {uri} answered {}: documented but not routed",
            r.status
        );
    }
    // And the portal routes nothing undocumented under /api/v1/.
    let routed: BTreeSet<(String, String)> = portal::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let extra: Vec<_> = documented
        .difference(&routed)
        .filter(|(_, p)| p != "/api/v1/gc")
        .collect();
    assert!(
        extra.is_empty(),
        "documented, not in portal::ROUTES: {extra:?}"
    );
}

#[tokio::test]
async fn me_names_the_caller_account_namespace_role_and_host() {
    let h = two_accounts().await;
    let s = h.sign_in("rita").await;
    let r = h
        .send(
            Who::Session(&s)
                .apply(Request::get("/api/v1/me"))
                .header(header::HOST, "registry.test:5000"),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"subject": "rita", "kind": "user", "account": "acme", "namespace": NS,
               "role": "reader", "can_delete": false, "accounts_enabled": true,
               "registry": "registry.test:5000"})
    );
    let secret = h.credential("alice").await;
    let r = h
        .call(
            &Who::Basic("alice", &secret),
            Method::GET,
            "/api/v1/me",
            None,
        )
        .await;
    assert_eq!(r.json()["role"], "admin");
    assert_eq!(r.json()["can_delete"], true);
    // The configured public URL wins over the Host header.
    let h =
        Harness::with(|c| c.auth.public_url = Some("https://registry.example.com/".into())).await;
    h.user("acme", NS, "alice", Role::Admin).await;
    let s = h.sign_in("alice").await;
    let r = h
        .call(&Who::Session(&s), Method::GET, "/api/v1/me", None)
        .await;
    assert_eq!(r.json()["registry"], "registry.example.com");
}

#[tokio::test]
async fn unauthenticated_and_bad_credentials_get_401() {
    let h = two_accounts().await;
    let r = h
        .call(&Who::Nobody, Method::GET, "/api/v1/repositories", None)
        .await;
    r.assert_error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    let r = h
        .call(
            &Who::Basic("alice", "bcl_wrong_secret"),
            Method::GET,
            "/api/v1/me",
            None,
        )
        .await;
    r.assert_error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    // A password is for the portal's sign-in form, not for the API.
    let r = h
        .call(
            &Who::Basic("alice", common::PASSWORD),
            Method::GET,
            "/api/v1/me",
            None,
        )
        .await;
    r.assert_error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    let r = h
        .send(Request::get("/api/v1/me").header(header::AUTHORIZATION, "Bearer abc"))
        .await;
    r.assert_error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    let r = h
        .send(Request::get("/api/v1/me").header(header::COOKIE, "berth_session=forged"))
        .await;
    r.assert_error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    // A signed-out session is dead.
    let s = h.sign_in("alice").await;
    let r = h
        .send_body(
            Who::CookieOnly(&s)
                .apply(Request::post("/logout"))
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded"),
            format!("csrf={}", s.csrf).into(),
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let r = h
        .call(&Who::Session(&s), Method::GET, "/api/v1/me", None)
        .await;
    r.assert_error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
}

#[tokio::test]
async fn repositories_page_filter_and_stay_in_the_namespace() {
    let h = two_accounts().await;
    for name in [
        "alpine",
        "nginx",
        "nginx-proxy",
        "redis",
        "tools/nginx-exporter",
    ] {
        h.push(&format!("{NS}/{name}"), &["latest"], name).await;
    }
    let s = h.sign_in("rita").await;
    let who = Who::Session(&s);
    let r = h
        .call(&who, Method::GET, "/api/v1/repositories?limit=2", None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let page = r.json();
    assert_eq!(page["total"], 5);
    let names: Vec<&str> = page["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [format!("{NS}/alpine"), format!("{NS}/nginx")]);
    assert_eq!(page["next"], format!("{NS}/nginx"));
    let first = &page["repositories"][0];
    assert_eq!(first["tag_count"], 1);
    assert!(first["size"].as_u64().unwrap() > 0);
    assert_eq!(first["platforms"], json!(["linux/amd64"]));
    assert!(first["last_push"].as_str().unwrap().ends_with('Z'));

    let mut all = names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut next = page["next"].as_str().map(str::to_owned);
    while let Some(after) = next {
        let r = h
            .call(
                &who,
                Method::GET,
                &format!("/api/v1/repositories?limit=2&after={after}"),
                None,
            )
            .await;
        let p = r.json();
        assert_eq!(p["total"], 5);
        for r in p["repositories"].as_array().unwrap() {
            all.push(r["name"].as_str().unwrap().to_owned());
        }
        next = p["next"].as_str().map(str::to_owned);
    }
    assert_eq!(all.len(), 5, "{all:?}");
    assert!(
        all.iter().all(|n| n.starts_with("acme.example.io/")),
        "{all:?}"
    );

    let r = h
        .call(&who, Method::GET, "/api/v1/repositories?q=nginx", None)
        .await;
    let p = r.json();
    assert_eq!(p["total"], 3);
    assert_eq!(p["next"], Value::Null);
    // Another account's repositories match nothing, even by name.
    let r = h
        .call(&who, Method::GET, "/api/v1/repositories?q=secret", None)
        .await;
    assert_eq!(r.json()["total"], 0);

    for bad in [
        "limit=0",
        "limit=1001",
        "limit=ten",
        &format!("q={}", "x".repeat(300)),
    ] {
        let r = h
            .call(
                &who,
                Method::GET,
                &format!("/api/v1/repositories?{bad}"),
                None,
            )
            .await;
        r.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    }
}

#[tokio::test]
async fn repository_tags_with_digests_platforms_and_pull_uris() {
    let h = two_accounts().await;
    let repo = format!("{NS}/nginx");
    let digest = h.push(&repo, &["1.27", "latest"], "nginx").await;
    let other = h.push(&repo, &["1.26"], "old").await;
    let s = h.sign_in("rita").await;
    let r = h
        .send(
            Who::Session(&s)
                .apply(Request::get(format!("/api/v1/repositories/{repo}")))
                .header(header::HOST, "127.0.0.1:5000"),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["name"], repo);
    assert_eq!(v["pull"], format!("127.0.0.1:5000/{repo}"));
    let tags = v["tags"].as_array().unwrap();
    let names: Vec<&str> = tags.iter().map(|t| t["tag"].as_str().unwrap()).collect();
    assert_eq!(names, ["1.26", "1.27", "latest"]);
    let t = &tags[1];
    assert_eq!(t["digest"], digest.as_str());
    assert_eq!(
        t["media_type"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(t["platforms"], json!(["linux/amd64"]));
    assert!(t["size"].as_u64().unwrap() > 0);
    assert!(t["pushed_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(t["pull_by_tag"], format!("127.0.0.1:5000/{repo}:1.27"));
    assert_eq!(
        t["pull_by_digest"],
        format!("127.0.0.1:5000/{repo}@{digest}")
    );
    assert_eq!(tags[0]["digest"], other.as_str());

    let who = Who::Session(&s);
    for (uri, status, code) in [
        // Another account's existing repository looks like a missing one.
        (
            "/api/v1/repositories/globex.io/secret",
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
        ),
        (
            "/api/v1/repositories/acme.example.io/missing",
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
        ),
        (
            "/api/v1/repositories/acme.example.io/UPPER",
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            "/api/v1/repositories/acme.example.io/nginx/-/nope",
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
    ] {
        h.call(&who, Method::GET, uri, None)
            .await
            .assert_error(status, code);
    }
}

/// Tags of `repo` must still be `expected` (a refusal changed nothing).
async fn unchanged(h: &Harness, repo: &str, expected: &[&str]) {
    assert_eq!(h.tags(repo).await.unwrap(), expected, "{repo} changed");
}

#[tokio::test]
async fn deleting_a_repository_takes_an_admin_the_csrf_token_and_its_name() {
    let h = two_accounts().await;
    let repo = format!("{NS}/nginx");
    h.push(&repo, &["1.27", "latest"], "nginx").await;
    let (alice, rita, dave) = (
        h.sign_in("alice").await,
        h.sign_in("rita").await,
        h.sign_in("dave").await,
    );
    let gary = h.sign_in("gary").await;
    let dave_secret = h.credential("dave").await;
    let uri = format!("/api/v1/repositories/{repo}?confirm={repo}");
    let refusals: Vec<(&str, Who<'_>, String, StatusCode, &str)> = vec![
        (
            "unauthenticated",
            Who::Nobody,
            uri.clone(),
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
        ),
        (
            "reader",
            Who::Session(&rita),
            uri.clone(),
            StatusCode::FORBIDDEN,
            "DENIED",
        ),
        (
            "developer session",
            Who::Session(&dave),
            uri.clone(),
            StatusCode::FORBIDDEN,
            "DENIED",
        ),
        (
            "developer basic",
            Who::Basic("dave", &dave_secret),
            uri.clone(),
            StatusCode::FORBIDDEN,
            "DENIED",
        ),
        (
            "no CSRF token",
            Who::CookieOnly(&alice),
            uri.clone(),
            StatusCode::FORBIDDEN,
            "CSRF_TOKEN_INVALID",
        ),
        (
            "wrong CSRF token",
            Who::WrongCsrf(&alice),
            uri.clone(),
            StatusCode::FORBIDDEN,
            "CSRF_TOKEN_INVALID",
        ),
        (
            "another account's admin",
            Who::Session(&gary),
            uri.clone(),
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
        ),
        (
            "no confirmation",
            Who::Session(&alice),
            format!("/api/v1/repositories/{repo}"),
            StatusCode::BAD_REQUEST,
            "CONFIRMATION_MISMATCH",
        ),
        (
            "wrong confirmation",
            Who::Session(&alice),
            format!("/api/v1/repositories/{repo}?confirm=nginx"),
            StatusCode::BAD_REQUEST,
            "CONFIRMATION_MISMATCH",
        ),
        (
            "confirmation of a tag",
            Who::Session(&alice),
            format!("/api/v1/repositories/{repo}?confirm=latest"),
            StatusCode::BAD_REQUEST,
            "CONFIRMATION_MISMATCH",
        ),
    ];
    for (what, who, uri, status, code) in &refusals {
        let r = h.call(who, Method::DELETE, uri, None).await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (*status, *code),
            "{what}: {}",
            r.text()
        );
        unchanged(&h, &repo, &["1.27", "latest"]).await;
    }
    // globex's admin cannot delete acme's repository, nor acme's globex's.
    let r = h
        .call(
            &Who::Session(&alice),
            Method::DELETE,
            "/api/v1/repositories/globex.io/secret?confirm=globex.io/secret",
            None,
        )
        .await;
    r.assert_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN");
    unchanged(&h, "globex.io/secret", &["v1"]).await;

    let r = h
        .call(&Who::Session(&alice), Method::DELETE, &uri, None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert_eq!(h.tags(&repo).await, None);
    let r = h
        .call(&Who::Session(&alice), Method::DELETE, &uri, None)
        .await;
    r.assert_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN");
    // Basic credentials of an admin need no CSRF token.
    h.push(&repo, &["again"], "again").await;
    let secret = h.credential("alice").await;
    let r = h
        .call(&Who::Basic("alice", &secret), Method::DELETE, &uri, None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    // The delete is audited.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let log = h
        .auth()
        .audit_log(&auth::store::AuditQuery {
            action: Some("delete".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        log.iter()
            .any(|e| e.actor == "alice"
                && e.target.as_deref() == Some(&format!("repository {repo}"))),
        "{log:?}"
    );
}

#[tokio::test]
async fn deleting_a_tag_keeps_the_other_tags_of_its_digest() {
    let h = two_accounts().await;
    let repo = format!("{NS}/nginx");
    let digest = h.push(&repo, &["1.27", "latest", "stable"], "nginx").await;
    let (alice, rita) = (h.sign_in("alice").await, h.sign_in("rita").await);
    let tag_uri = |tag: &str, confirm: &str| {
        format!("/api/v1/repositories/{repo}/-/tags/{tag}?confirm={confirm}")
    };
    let all = ["1.27", "latest", "stable"];
    for (what, who, uri, status, code) in [
        (
            "reader",
            Who::Session(&rita),
            tag_uri("latest", "latest"),
            StatusCode::FORBIDDEN,
            "DENIED",
        ),
        (
            "no CSRF token",
            Who::CookieOnly(&alice),
            tag_uri("latest", "latest"),
            StatusCode::FORBIDDEN,
            "CSRF_TOKEN_INVALID",
        ),
        (
            "wrong confirmation",
            Who::Session(&alice),
            tag_uri("latest", "1.27"),
            StatusCode::BAD_REQUEST,
            "CONFIRMATION_MISMATCH",
        ),
        (
            "unknown tag",
            Who::Session(&alice),
            tag_uri("nope", "nope"),
            StatusCode::NOT_FOUND,
            "TAG_UNKNOWN",
        ),
        (
            "invalid tag",
            Who::Session(&alice),
            tag_uri("-x", "-x"),
            StatusCode::BAD_REQUEST,
            "TAG_INVALID",
        ),
        (
            "other namespace",
            Who::Session(&alice),
            "/api/v1/repositories/globex.io/secret/-/tags/v1?confirm=v1".into(),
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
        ),
        (
            "missing repository",
            Who::Session(&alice),
            format!("/api/v1/repositories/{NS}/gone/-/tags/v1?confirm=v1"),
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
        ),
    ] {
        let r = h.call(&who, Method::DELETE, &uri, None).await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (status, code),
            "{what}: {}",
            r.text()
        );
        unchanged(&h, &repo, &all).await;
    }
    unchanged(&h, "globex.io/secret", &["v1"]).await;

    let r = h
        .call(
            &Who::Session(&alice),
            Method::DELETE,
            &tag_uri("latest", "latest"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    unchanged(&h, &repo, &["1.27", "stable"]).await;
    let r = h
        .call(
            &Who::Session(&alice),
            Method::GET,
            &format!("/api/v1/repositories/{repo}"),
            None,
        )
        .await;
    assert!(
        r.json()["tags"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["digest"] == digest.as_str())
    );

    // Several at once: each confirmed, all checked before any goes.
    let batch = format!("/api/v1/repositories/{repo}/-/tags:delete");
    for (body, status, code) in [
        (
            json!({"tags": [{"tag": "1.27", "confirm": "1.27"}, {"tag": "stable", "confirm": "stabl"}]}),
            StatusCode::BAD_REQUEST,
            "CONFIRMATION_MISMATCH",
        ),
        (
            json!({"tags": [{"tag": "1.27", "confirm": "1.27"}, {"tag": "latest", "confirm": "latest"}]}),
            StatusCode::NOT_FOUND,
            "TAG_UNKNOWN",
        ),
        (
            json!({"tags": []}),
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (
            json!({"tags": [{"tag": "1.27"}]}),
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
    ] {
        let r = h
            .call(&Who::Session(&alice), Method::POST, &batch, Some(body))
            .await;
        r.assert_error(status, code);
        unchanged(&h, &repo, &["1.27", "stable"]).await;
    }
    let body = json!({"tags": [{"tag": "1.27", "confirm": "1.27"}, {"tag": "stable", "confirm": "stable"}]});
    let r = h
        .call(
            &Who::Session(&rita),
            Method::POST,
            &batch,
            Some(body.clone()),
        )
        .await;
    r.assert_error(StatusCode::FORBIDDEN, "DENIED");
    let r = h
        .call(
            &Who::CookieOnly(&alice),
            Method::POST,
            &batch,
            Some(body.clone()),
        )
        .await;
    r.assert_error(StatusCode::FORBIDDEN, "CSRF_TOKEN_INVALID");
    unchanged(&h, &repo, &["1.27", "stable"]).await;
    let r = h
        .call(&Who::Session(&alice), Method::POST, &batch, Some(body))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json(), json!({"deleted": ["1.27", "stable"]}));
    assert_eq!(h.tags(&repo).await.unwrap(), Vec::<String>::new());
}

#[tokio::test]
async fn deleting_several_repositories_checks_all_of_them_first() {
    let h = two_accounts().await;
    let (a, b, c) = (format!("{NS}/a"), format!("{NS}/b"), format!("{NS}/c"));
    for r in [&a, &b, &c] {
        h.push(r, &["v1"], r).await;
    }
    let alice = h.sign_in("alice").await;
    let rita = h.sign_in("rita").await;
    let uri = "/api/v1/repositories:delete";
    let item = |n: &str, c: &str| json!({"name": n, "confirm": c});
    let cases = [
        (
            "one wrong confirmation",
            json!({"repositories": [item(&a, &a), item(&b, "b")]}),
            StatusCode::BAD_REQUEST,
            "CONFIRMATION_MISMATCH",
        ),
        (
            "one missing",
            json!({"repositories": [item(&a, &a), item(&format!("{NS}/zz"), &format!("{NS}/zz"))]}),
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
        ),
        (
            "one of another account",
            json!({"repositories": [item(&a, &a), item("globex.io/secret", "globex.io/secret")]}),
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
        ),
        (
            "one invalid",
            json!({"repositories": [item(&a, &a), item("Bad Name", "Bad Name")]}),
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            "none",
            json!({"repositories": []}),
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (
            "unknown field",
            json!({"repositories": [item(&a, &a)], "force": true}),
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (
            "not a list",
            json!({"repositories": a}),
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
    ];
    for (what, body, status, code) in cases {
        let r = h
            .call(&Who::Session(&alice), Method::POST, uri, Some(body))
            .await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (status, code),
            "{what}: {}",
            r.text()
        );
        for r in [&a, &b, &c] {
            unchanged(&h, r, &["v1"]).await;
        }
    }
    let good = json!({"repositories": [item(&a, &a), item(&b, &b)]});
    let r = h
        .call(&Who::Session(&rita), Method::POST, uri, Some(good.clone()))
        .await;
    r.assert_error(StatusCode::FORBIDDEN, "DENIED");
    let r = h
        .call(
            &Who::WrongCsrf(&alice),
            Method::POST,
            uri,
            Some(good.clone()),
        )
        .await;
    r.assert_error(StatusCode::FORBIDDEN, "CSRF_TOKEN_INVALID");
    // Not JSON: refused (this also keeps cross-site HTML forms out).
    let r = h
        .send_body(
            Who::Session(&alice)
                .apply(Request::post(uri))
                .header(header::CONTENT_TYPE, "text/plain"),
            good.to_string().into(),
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    let r = h
        .send_body(
            Who::Session(&alice)
                .apply(Request::post(uri))
                .header(header::CONTENT_TYPE, "application/json"),
            "{not json".into(),
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    // Bodies are bounded.
    let r = h
        .send_body(
            Who::Session(&alice)
                .apply(Request::post(uri))
                .header(header::CONTENT_TYPE, "application/json"),
            vec![b' '; portal::MAX_BODY_BYTES + 1].into(),
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    for r in [&a, &b, &c] {
        unchanged(&h, r, &["v1"]).await;
    }

    let r = h
        .call(&Who::Session(&alice), Method::POST, uri, Some(good))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json(), json!({"deleted": [a, b]}));
    assert_eq!(h.tags(&a).await, None);
    assert_eq!(h.tags(&b).await, None);
    unchanged(&h, &c, &["v1"]).await;
    unchanged(&h, "globex.io/secret", &["v1"]).await;
}

#[tokio::test]
async fn minting_a_docker_login_credential() {
    let h = two_accounts().await;
    let rita = h.sign_in("rita").await;
    let r = h
        .send(
            Who::Session(&rita)
                .apply(Request::post("/api/v1/credentials"))
                .header(header::HOST, "127.0.0.1:5000"),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let v = r.json();
    let secret = v["secret"].as_str().unwrap();
    assert!(secret.starts_with("bcl_"), "{v}");
    assert_eq!(
        v["command"],
        format!("docker login -u rita -p {secret} 127.0.0.1:5000")
    );
    assert_eq!(v["username"], "rita");
    assert_eq!(v["registry"], "127.0.0.1:5000");
    assert!(v["expires_at"].as_str().unwrap().ends_with('Z'));
    // It is a working registry credential, and an API credential.
    h.auth().authenticate("rita", secret, None).await.unwrap();
    let r = h
        .call(&Who::Basic("rita", secret), Method::GET, "/api/v1/me", None)
        .await;
    assert_eq!(r.json()["subject"], "rita");

    let r = h
        .call(
            &Who::Session(&rita),
            Method::POST,
            "/api/v1/credentials",
            Some(json!({"description": "laptop"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let r = h
        .call(
            &Who::Session(&rita),
            Method::POST,
            "/api/v1/credentials",
            Some(json!({"ttl": 5})),
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    let r = h
        .call(
            &Who::CookieOnly(&rita),
            Method::POST,
            "/api/v1/credentials",
            None,
        )
        .await;
    r.assert_error(StatusCode::FORBIDDEN, "CSRF_TOKEN_INVALID");
    let r = h
        .call(&Who::Nobody, Method::POST, "/api/v1/credentials", None)
        .await;
    r.assert_error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    assert_eq!(h.auth().credentials("rita").await.unwrap().len(), 2);

    // Robots have API keys instead.
    h.auth()
        .create_robot("acme", "ci", Role::Developer)
        .await
        .unwrap();
    let robot = format!("robot+{NS}+ci");
    let key = h
        .auth()
        .create_api_key(&robot, None, None)
        .await
        .unwrap()
        .secret;
    let r = h
        .call(
            &Who::Basic(&robot, &key),
            Method::POST,
            "/api/v1/credentials",
            None,
        )
        .await;
    r.assert_error(StatusCode::FORBIDDEN, "DENIED");
    let r = h
        .call(
            &Who::Basic(&robot, &key),
            Method::GET,
            "/api/v1/repositories",
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

#[tokio::test]
async fn with_accounts_disabled_the_api_is_open_and_the_pages_say_so() {
    let h = Harness::new(false).await;
    h.push("acme/app", &["v1", "v2"], "x").await;
    let r = h
        .call(&Who::Nobody, Method::GET, "/api/v1/repositories", None)
        .await;
    assert_eq!(r.json()["total"], 1);
    let r = h.call(&Who::Nobody, Method::GET, "/api/v1/me", None).await;
    assert_eq!(r.json()["accounts_enabled"], false);
    assert_eq!(r.json()["can_delete"], true);
    let r = h
        .call(&Who::Nobody, Method::POST, "/api/v1/credentials", None)
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "UNSUPPORTED");
    let r = h
        .call(
            &Who::Nobody,
            Method::DELETE,
            "/api/v1/repositories/acme/app/-/tags/v1?confirm=v2",
            None,
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "CONFIRMATION_MISMATCH");
    let r = h
        .call(
            &Who::Nobody,
            Method::DELETE,
            "/api/v1/repositories/acme/app/-/tags/v1?confirm=v1",
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(h.tags("acme/app").await.unwrap(), ["v2"]);
    for page in ["/", "/login", "/repositories", "/repositories/acme/app"] {
        let r = h.send(Request::get(page)).await;
        assert_eq!(r.status, StatusCode::OK, "{page}");
        assert!(
            r.text().contains("Accounts are disabled"),
            "{page}: {}",
            r.text()
        );
    }
}

/// Puts `body` as a blob of `repo` and returns its descriptor fields.
async fn blob(h: &Harness, repo: &registry::RepoName, body: &str) -> (registry::Digest, usize) {
    let digest = registry::Digest::sha256_of(body.as_bytes());
    let bytes = bytes::Bytes::copy_from_slice(body.as_bytes());
    let stream: registry::ByteStream = Box::pin(futures::stream::once(async move { Ok(bytes) }));
    h.registry().put_blob(repo, &digest, stream).await.unwrap();
    (digest, body.len())
}

/// Puts a manifest by tag and returns its digest and size.
async fn manifest(
    h: &Harness,
    repo: &registry::RepoName,
    tag: &str,
    media_type: &str,
    body: String,
) -> (registry::Digest, usize) {
    let size = body.len();
    let pushed = h
        .registry()
        .put_manifest(
            repo,
            &registry::Reference::Tag(registry::Tag::parse(tag).unwrap()),
            Some(media_type),
            &bytes::Bytes::from(body),
            &[],
        )
        .await
        .unwrap();
    (pushed.digest, size)
}

#[tokio::test]
async fn docker_manifests_and_multi_arch_indexes_show_with_their_platforms() {
    const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    let h = two_accounts().await;
    let name = format!("{NS}/multi");
    let repo = registry::RepoName::parse(&name).unwrap();
    // Two Docker schema 2 images, arm64/v8 and arm/v7.
    let mut children = Vec::new();
    for (arch, variant) in [("arm64", "v8"), ("arm", "v7")] {
        let config = blob(
            &h,
            &repo,
            &format!(
                r#"{{"architecture":"{arch}","variant":"{variant}","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}}}}"#
            ),
        )
        .await;
        let layer = blob(&h, &repo, &format!("layer for {arch}")).await;
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"{}","size":{}}}]}}"#,
            config.0, config.1, layer.0, layer.1
        );
        let (digest, size) =
            manifest(&h, &repo, &format!("docker-{arch}"), DOCKER_MANIFEST, body).await;
        children.push((digest, size, arch, variant));
    }
    let entries: Vec<String> = children
        .iter()
        .map(|(d, s, arch, variant)| {
            format!(
                r#"{{"mediaType":"{DOCKER_MANIFEST}","digest":"{d}","size":{s},"platform":{{"architecture":"{arch}","os":"linux","variant":"{variant}"}}}}"#
            )
        })
        .collect();
    let list = format!(
        r#"{{"schemaVersion":2,"mediaType":"{DOCKER_LIST}","manifests":[{}]}}"#,
        entries.join(",")
    );
    let (list_digest, _) = manifest(&h, &repo, "list", DOCKER_LIST, list).await;
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
        entries.join(",")
    );
    manifest(&h, &repo, "index", OCI_INDEX, index).await;

    let s = h.sign_in("rita").await;
    let r = h
        .call(
            &Who::Session(&s),
            Method::GET,
            &format!("/api/v1/repositories/{name}"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    let by_tag = |tag: &str| -> Value {
        v["tags"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tag"] == tag)
            .unwrap_or_else(|| panic!("tag {tag} missing: {v}"))
            .clone()
    };
    let arm64 = by_tag("docker-arm64");
    assert_eq!(arm64["media_type"], DOCKER_MANIFEST);
    assert_eq!(arm64["platforms"], json!(["linux/arm64/v8"]));
    assert_eq!(by_tag("docker-arm")["platforms"], json!(["linux/arm/v7"]));
    let list = by_tag("list");
    assert_eq!(list["media_type"], DOCKER_LIST);
    assert_eq!(list["digest"], list_digest.as_str());
    assert_eq!(list["platforms"], json!(["linux/arm/v7", "linux/arm64/v8"]));
    let index = by_tag("index");
    assert_eq!(index["media_type"], OCI_INDEX);
    assert_eq!(
        index["platforms"],
        json!(["linux/arm/v7", "linux/arm64/v8"])
    );

    // The list shows the repository with every platform, at once.
    let r = h
        .call(
            &Who::Session(&s),
            Method::GET,
            "/api/v1/repositories?q=multi",
            None,
        )
        .await;
    let repos = r.json()["repositories"].clone();
    assert_eq!(repos[0]["name"], name.as_str());
    assert_eq!(repos[0]["tag_count"], 4);
    let platforms: BTreeSet<String> = repos[0]["platforms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        platforms,
        BTreeSet::from(["linux/arm/v7".to_owned(), "linux/arm64/v8".to_owned()])
    );
}
