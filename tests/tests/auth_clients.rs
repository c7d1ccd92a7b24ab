//! Real clients against a `berth-server` with accounts on, each in its own
//! namespace: `docker login` (CLI only, no engine), podman (login, push,
//! pull), skopeo (`--dest-creds`/`--creds`, a robot's API key) and ctr (the
//! OAuth2 password grant containerd POSTs, plus the grant and refresh
//! grant checked directly). Each refusal into the other account's
//! namespace is checked for leaving nothing behind. Also: the audit log as
//! `admin audit` shows it, and failed-login throttling (429 with
//! `Retry-After` even for the right credential, until the window passes).
//!
//! Accounts, users, robots and credentials are made with the operator CLI
//! (`berth-server admin … --json`), as an operator would.
#![allow(clippy::unwrap_used)]

mod common_auth;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common_auth::{
    ACME, ACME_NS, AuthServer, Cred, GLOBEX_NS, SERVICE, jwt_parts, repo_scope, small_image,
    str_field,
};
use reqwest::StatusCode;
use serde_json::Value;
use test_support::{
    Arch, Image, LayoutEntry, Skopeo, assert_eventually_async, busybox_image, require_tool,
    write_oci_layout,
};
use tests::{Containerd, Podman};

const GLOBEX_SECRET: &str = "globex.example.io/secret";

/// What the owner sees of globex: its catalog, and the tags of `repo`
/// (`None` when the repository does not exist).
async fn globex_view(
    srv: &AuthServer,
    owner: &Cred,
    repo: &str,
) -> (Vec<String>, Option<Vec<String>>) {
    let token = srv
        .token(owner, &["registry:catalog:*", &repo_scope(repo, "pull")])
        .await;
    let client = srv.client(&token);
    let catalog = client.repositories().await.unwrap();
    let resp = client.tags_list(repo, None, None).await.unwrap();
    let tags = match resp.status() {
        StatusCode::NOT_FOUND => None,
        StatusCode::OK => Some(client.tags(repo).await.unwrap()),
        s => panic!("tags of {repo}: {s}"),
    };
    (catalog, tags)
}

/// An OCI layout holding `image` as `TAG`, and its `oci:DIR:TAG` reference.
fn layout(image: &Image, tag: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    write_oci_layout(dir.path(), &[(tag, LayoutEntry::from(image))]).unwrap();
    let reference = format!("oci:{}:{tag}", dir.path().display());
    (dir, reference)
}

/// Asserts that a client's error says it was refused access (the wording
/// differs per client: "unauthorized", "denied", "insufficient_scope").
fn assert_access_refused(err: &str) {
    let lower = err.to_lowercase();
    assert!(
        ["unauthorized", "denied", "insufficient_scope"]
            .iter()
            .any(|w| lower.contains(w)),
        "not an access refusal: {err}"
    );
}

fn combined(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `docker login -u USER --password-stdin HOST` with a private config dir.
fn docker_login(config: &Path, host: &str, user: &str, secret: &str) -> Output {
    let mut child = Command::new(require_tool("docker"))
        .env("DOCKER_CONFIG", config)
        .args(["login", "-u", user, "--password-stdin", host])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{secret}\n").as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn docker_login_takes_credentials_and_refuses_wrong_and_revoked_ones() {
    require_tool("docker");
    let srv = AuthServer::start();
    let t = srv.setup_tenants();
    let config = tempfile::tempdir().unwrap();
    let host = srv.host();

    for cred in [&t.acme_dev, &t.acme_reader, &t.globex_admin] {
        let out = docker_login(config.path(), &host, &cred.username, &cred.secret);
        assert!(
            out.status.success() && combined(&out).contains("Login Succeeded"),
            "docker login as {}: {}",
            cred.username,
            combined(&out)
        );
    }
    let saved: Value =
        serde_json::from_slice(&std::fs::read(config.path().join("config.json")).unwrap()).unwrap();
    assert!(saved["auths"][&host].is_object(), "{saved}");

    // A wrong secret, and a secret of another user.
    let wrong = format!("{}x", t.acme_dev.secret);
    for (user, secret) in [
        (t.acme_dev.username.as_str(), wrong.as_str()),
        (t.acme_dev.username.as_str(), t.acme_reader.secret.as_str()),
        ("nobody", t.acme_dev.secret.as_str()),
    ] {
        let out = docker_login(config.path(), &host, user, secret);
        assert!(
            !out.status.success(),
            "docker login {user} with a bad secret"
        );
        assert!(
            combined(&out).to_lowercase().contains("unauthorized"),
            "{}",
            combined(&out)
        );
    }

    // A revoked credential stops working at once.
    let extra = srv.mint(&t.acme_dev.username);
    let out = docker_login(config.path(), &host, &extra.username, &extra.secret);
    assert!(out.status.success(), "{}", combined(&out));
    let revoked = srv.admin(&["credential", "revoke", &extra.id]);
    assert_eq!(revoked["revoked"], true);
    let out = docker_login(config.path(), &host, &extra.username, &extra.secret);
    assert!(
        !out.status.success(),
        "revoked credential: {}",
        combined(&out)
    );
    let listed = srv.admin(&["credential", "list", &t.acme_dev.username]);
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == extra.id.as_str())
        .unwrap();
    assert!(!entry["revoked_at"].is_null(), "{entry}");
    // The other credential of the same user is untouched.
    let out = docker_login(
        config.path(),
        &host,
        &t.acme_dev.username,
        &t.acme_dev.secret,
    );
    assert!(out.status.success(), "{}", combined(&out));
}

#[tokio::test]
async fn podman_pushes_and_pulls_in_its_namespace_only() {
    let srv = AuthServer::start();
    let t = srv.setup_tenants();
    let host = srv.host();
    let podman = Podman::new(&[&host]);
    let image = busybox_image(Arch::Amd64);
    srv.push_as(&t.globex_admin, GLOBEX_SECRET, &small_image("globex"), "v1")
        .await;

    // Seed acme's registry with skopeo; podman pulls it from there.
    let (_dir, source) = layout(&image, "v1");
    let seed = format!("{host}/{ACME_NS}/seed/busybox:v1");
    Skopeo::new()
        .copy(
            &source,
            &format!("docker://{seed}"),
            &[
                "--dest-creds",
                &format!("{}:{}", t.acme_dev.username, t.acme_dev.secret),
            ],
        )
        .unwrap();
    let out = podman
        .run([
            "login",
            "--tls-verify=false",
            "-u",
            &t.acme_dev.username,
            "-p",
            &t.acme_dev.secret,
            &host,
        ])
        .unwrap();
    assert!(out.contains("Login Succeeded"), "{out}");
    let id = podman.pull(&seed).unwrap();

    // Push into acme's namespace, then pull it back.
    let own = format!("{host}/{ACME_NS}/podman/busybox:v1");
    let digest = podman.push(&id, &own, &[]).unwrap();
    let reader = srv
        .token(
            &t.acme_reader,
            &[&repo_scope(&format!("{ACME_NS}/podman/busybox"), "pull")],
        )
        .await;
    let client = srv.client(&reader);
    let resp = client
        .head_manifest(&format!("{ACME_NS}/podman/busybox"), "v1", &[])
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["docker-content-digest"], digest.as_str());
    podman.run(["rmi", "--force", &own]).unwrap();
    let pulled = podman.pull(&own).unwrap();
    assert_eq!(pulled, id, "pulled image id");

    // Into globex's namespace: refused, and nothing written.
    let stolen_repo = format!("{GLOBEX_NS}/stolen");
    let before = globex_view(&srv, &t.globex_admin, &stolen_repo).await;
    assert_eq!(before, (vec![GLOBEX_SECRET.to_owned()], None));
    let stolen = format!("{host}/{stolen_repo}:v1");
    let err = podman.push(&id, &stolen, &[]).unwrap_err();
    assert_access_refused(&format!("{err:#}"));
    assert_eq!(
        globex_view(&srv, &t.globex_admin, &stolen_repo).await,
        before
    );
    let token = srv
        .token(&t.globex_admin, &[&repo_scope(&stolen_repo, "pull")])
        .await;
    for blob in image.blobs() {
        let resp = srv
            .client(&token)
            .head_blob(&stolen_repo, &blob.digest)
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{}", blob.digest);
    }
    // Nor can acme's developer pull globex's image.
    let err = podman
        .pull(&format!("{host}/{GLOBEX_SECRET}:v1"))
        .unwrap_err();
    assert_access_refused(&format!("{err:#}"));
}

#[tokio::test]
async fn skopeo_copies_with_user_and_robot_credentials_in_its_namespace_only() {
    let srv = AuthServer::start();
    let t = srv.setup_tenants();
    let host = srv.host();
    let skopeo = Skopeo::new();
    let image = small_image("skopeo");
    let (_dir, source) = layout(&image, "v1");
    let creds = |c: &Cred| format!("{}:{}", c.username, c.secret);
    let docker = |repo: &str| format!("docker://{host}/{repo}:v1");

    // globex's own image, pushed by globex.
    skopeo
        .copy(
            &source,
            &docker(GLOBEX_SECRET),
            &["--dest-creds", &creds(&t.globex_dev)],
        )
        .unwrap();
    // acme's developer into acme's namespace.
    let own = format!("{ACME_NS}/skopeo/app");
    skopeo
        .copy(
            &source,
            &docker(&own),
            &["--dest-creds", &creds(&t.acme_dev)],
        )
        .unwrap();
    let raw = skopeo
        .run([
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--creds",
            &creds(&t.acme_reader),
            &docker(&own),
        ])
        .unwrap();
    assert_eq!(raw, image.manifest, "manifest as pushed");

    // Into globex's namespace: refused, nothing written.
    let stolen = format!("{GLOBEX_NS}/skopeo/app");
    let before = globex_view(&srv, &t.globex_admin, &stolen).await;
    let err = skopeo
        .copy(
            &source,
            &docker(&stolen),
            &["--dest-creds", &creds(&t.acme_admin)],
        )
        .unwrap_err();
    assert_access_refused(&format!("{err:#}"));
    assert_eq!(globex_view(&srv, &t.globex_admin, &stolen).await, before);
    // Reading globex's image with acme's credentials: refused; with globex's: fine.
    for who in [&t.acme_admin, &t.acme_robot] {
        let err = skopeo
            .run([
                "inspect",
                "--raw",
                "--tls-verify=false",
                "--creds",
                &creds(who),
                &docker(GLOBEX_SECRET),
            ])
            .unwrap_err();
        assert_access_refused(&format!("{err:#}"));
    }
    skopeo
        .run([
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--creds",
            &creds(&t.globex_admin),
            &docker(GLOBEX_SECRET),
        ])
        .unwrap();
    // acme's reader may not push, even into acme.
    let readers = format!("{ACME_NS}/skopeo/by-reader");
    let err = skopeo
        .copy(
            &source,
            &docker(&readers),
            &["--dest-creds", &creds(&t.acme_reader)],
        )
        .unwrap_err();
    assert_access_refused(&format!("{err:#}"));

    // The robot's API key pushes (developer role), and may not delete.
    let ci = format!("{ACME_NS}/ci/app");
    skopeo
        .copy(
            &source,
            &docker(&ci),
            &["--dest-creds", &creds(&t.acme_robot)],
        )
        .unwrap();
    let token = srv.token(&t.acme_reader, &[&repo_scope(&ci, "pull")]).await;
    assert_eq!(srv.client(&token).tags(&ci).await.unwrap(), ["v1"]);
    let delete = |who: &Cred| {
        skopeo.run([
            "delete",
            "--tls-verify=false",
            "--creds",
            &creds(who),
            &docker(&ci),
        ])
    };
    assert!(delete(&t.acme_robot).is_err(), "a developer robot deleted");
    assert_eq!(srv.client(&token).tags(&ci).await.unwrap(), ["v1"]);
    delete(&t.acme_admin).unwrap();

    // A wrong secret, for the audit log below.
    let wrong = format!("{}:{}x", t.acme_dev.username, t.acme_dev.secret);
    assert!(
        skopeo
            .run([
                "inspect",
                "--tls-verify=false",
                "--creds",
                &wrong,
                &docker(&own)
            ])
            .is_err()
    );

    // The audit log: tokens and pushes with who and from where; denied
    // logins with the name tried.
    let acme_id = srv
        .admin(&["account", "list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == ACME)
        .unwrap()["id"]
        .clone();
    let has = |events: &Value, action: &str, actor: &str, target: &str| {
        events.as_array().unwrap().iter().any(|e| {
            e["action"] == action
                && e["actor"] == actor
                && e["source"] == "127.0.0.1"
                && e["target"].as_str().unwrap_or("").contains(target)
        })
    };
    assert_eventually_async!(
        Duration::from_secs(5),
        || async {
            let events = srv.admin(&["audit", "--account", ACME]);
            has(&events, "push", &t.acme_dev.username, &own)
                && has(&events, "push", &t.acme_robot.username, &ci)
                && has(&events, "delete", &t.acme_admin.username, &ci)
        },
        "pushes and deletes missing from acme's audit log"
    );
    let events = srv.admin(&["audit", "--account", ACME]);
    assert!(has(
        &events,
        "token",
        &t.acme_dev.username,
        &format!("repository:{own}:pull,push")
    ));
    assert!(has(&events, "token", &t.acme_robot.username, &ci));
    for e in events.as_array().unwrap() {
        assert_eq!(e["account_id"], acme_id, "acme's log shows {e}");
        assert!(e["at"].as_i64().unwrap() > 0);
        assert!(
            !e["target"].as_str().unwrap_or("").contains(GLOBEX_NS),
            "{e}"
        );
    }
    let denied = srv.admin(&["audit", "--account", ACME, "--action", "login"]);
    assert!(
        denied
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["actor"] == t.acme_dev.username.as_str()
                && e["outcome"] == "denied"
                && e["source"] == "127.0.0.1"),
        "acme's log lacks the denied login of acme-dev: {denied}"
    );
}

#[tokio::test]
async fn ctr_pulls_with_the_oauth2_password_grant() {
    let srv = AuthServer::start();
    let t = srv.setup_tenants();
    let host = srv.host();
    let image = busybox_image(Arch::Amd64);
    let own = format!("{ACME_NS}/ctr/app");
    srv.push_as(&t.acme_dev, &own, &image, "v1").await;
    srv.push_as(&t.globex_dev, GLOBEX_SECRET, &small_image("globex"), "v1")
        .await;
    let containerd = Containerd::start();
    let user = format!("{}:{}", t.acme_reader.username, t.acme_reader.secret);

    let reference = format!("{host}/{own}:v1");
    containerd
        .run_ctr([
            "images",
            "pull",
            "--plain-http",
            "--user",
            &user,
            &reference,
        ])
        .unwrap();
    let images = containerd.images().unwrap();
    assert!(
        images.contains(&(reference.clone(), image.digest.clone())),
        "{images:?}"
    );
    for blob in image.blobs() {
        let out = containerd
            .ctr()
            .args(["content", "get", &blob.digest])
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stdout == blob.data,
            "{}",
            blob.digest
        );
    }
    // globex's image with acme's credentials: refused.
    let foreign = format!("{host}/{GLOBEX_SECRET}:v1");
    let err = containerd
        .run_ctr(["images", "pull", "--plain-http", "--user", &user, &foreign])
        .unwrap_err();
    assert_access_refused(&format!("{err:#}"));
    assert!(
        containerd
            .images()
            .unwrap()
            .iter()
            .all(|(n, _)| n != &foreign)
    );

    // The grant containerd POSTs, checked directly.
    let post = |form: Vec<(&'static str, String)>| {
        let srv = &srv;
        async move {
            let resp = srv.http.post(srv.realm()).form(&form).send().await.unwrap();
            let status = resp.status();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    let scope = repo_scope(&own, "pull");
    let password = |secret: &str, offline: bool| {
        let mut form = vec![
            ("grant_type", "password".to_owned()),
            ("username", t.acme_reader.username.clone()),
            ("password", secret.to_owned()),
            ("service", SERVICE.to_owned()),
            ("client_id", "containerd-client".to_owned()),
            ("scope", scope.clone()),
        ];
        if offline {
            form.push(("access_type", "offline".to_owned()));
        }
        form
    };
    let (status, body) = post(password(&t.acme_reader.secret, false)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["expires_in"], 300);
    assert!(body.get("refresh_token").is_none(), "{body}");
    let access = str_field(&body, "access_token");
    assert_eq!(
        jwt_parts(&access).1["access"][0]["actions"],
        serde_json::json!(["pull"])
    );
    let (status, body) = post(password(&t.acme_reader.secret, true)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let refresh = str_field(&body, "refresh_token");
    let refreshed = |token: String| {
        post(vec![
            ("grant_type", "refresh_token".to_owned()),
            ("refresh_token", token),
            ("service", SERVICE.to_owned()),
            ("client_id", "containerd-client".to_owned()),
            ("scope", scope.clone()),
        ])
    };
    let (status, body) = refreshed(refresh.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = str_field(&body, "access_token");
    assert_eq!(jwt_parts(&token).1["sub"], t.acme_reader.username.as_str());
    let resp = srv
        .client(&token)
        .get_manifest(&own, "v1", &[])
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // A wrong password, an unknown grant, a forged refresh token.
    let (status, body) = post(password("bcl_wrong", false)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    let (status, body) = post(vec![("grant_type", "client_credentials".to_owned())]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "unsupported_grant_type");
    let (status, _) = refreshed(format!("{refresh}x")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Revoking the credential ends its refresh tokens too.
    srv.admin(&["credential", "revoke", &t.acme_reader.id]);
    let (status, body) = refreshed(refresh).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}

#[tokio::test]
async fn failed_logins_are_throttled_until_the_window_passes() {
    let srv = AuthServer::start_with(&[
        ("BERTH_AUTH__MAX_FAILED_LOGINS", "3"),
        ("BERTH_AUTH__FAILED_LOGIN_WINDOW_SECS", "3"),
    ]);
    let t = srv.setup_tenants();
    let dev = &t.acme_dev;
    let wrong = format!("{}x", dev.secret);
    for _ in 0..3 {
        let resp = srv.token_response(&dev.username, &wrong, &[]).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
    // Locked out, even with the right credential, on every way in.
    let check_429 = |resp: reqwest::Response, what: &'static str| async move {
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS, "{what}");
        let retry: u64 = resp.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=3).contains(&retry), "{what}: Retry-After {retry}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["errors"][0]["code"], "TOOMANYREQUESTS", "{what}");
    };
    check_429(
        srv.token_response(&dev.username, &dev.secret, &[]).await,
        "token endpoint",
    )
    .await;
    let resp = srv
        .http
        .get(format!("{}/v2/", srv.url()))
        .basic_auth(&dev.username, Some(&dev.secret))
        .send()
        .await
        .unwrap();
    check_429(resp, "Basic on /v2/").await;
    let resp = srv
        .http
        .post(srv.realm())
        .form(&[
            ("grant_type", "password"),
            ("username", &dev.username),
            ("password", &dev.secret),
            ("service", SERVICE),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "password grant"
    );
    assert!(resp.headers().contains_key("retry-after"));

    // Once the window has passed, the right credential works again.
    assert_eventually_async!(
        Duration::from_secs(8),
        || async {
            srv.token_response(&dev.username, &dev.secret, &[])
                .await
                .status()
                == StatusCode::OK
        },
        "still locked out after the window"
    );
}
