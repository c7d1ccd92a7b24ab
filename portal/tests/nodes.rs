//! The node API and pages over a real control plane (SQLite store in the
//! test's data directory) with nodes enrolled through `AuthService` and a
//! simulated agent attached through `ControlPlane::attach`, answering the
//! commands it receives through `Session::receive`: listing and detail,
//! a pull command from the API to the node and its progress and result
//! back, every refusal (another account, a reader, no anti-CSRF token, an
//! invalid action, a revoked node), the desired state, the operator's admin
//! router, and the Nodes pages (escaping included).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use auth::Role;
use auth::model::Node;
use common::{Harness, Who};
use control::proto::{self, agent_message, server_message};
use control::{ControlConfig, ControlPlane, NodeRef, Session};
use http::{Method, StatusCode};
use portal::PortalState;
use serde_json::{Value, json};
use tokio::sync::mpsc::Receiver;

const NS: &str = "acme.example.io";

/// acme (admin alice, developer dave, reader rita) with nodes edge-1 and
/// edge-2 (never connected); globex (admin gary) with node gx-1; initech
/// (admin ivan) without nodes. The portal's router (and the admin router)
/// run over a control plane in the data directory.
struct Fleet {
    h: Harness,
    plane: ControlPlane,
    admin: axum::Router,
    edge1: Node,
    edge2: Node,
    gx1: Node,
}

async fn fleet() -> Fleet {
    let mut h = Harness::new(true).await;
    h.user("acme", NS, "alice", Role::Admin).await;
    h.user("acme", NS, "dave", Role::Developer).await;
    h.user("acme", NS, "rita", Role::Reader).await;
    h.user("globex", "globex.io", "gary", Role::Admin).await;
    h.user("initech", "initech.io", "ivan", Role::Admin).await;
    let store = control::open_store(h.dir.path(), None).await.unwrap();
    let plane = ControlPlane::new(store, ControlConfig::default());
    let state = PortalState::new(h.registry().clone(), h.app.auth.clone())
        .with_control(Some(plane.clone()));
    h.app.router = portal::router(state.clone());
    let admin = portal::admin_router(state);
    let enroll = |account: &'static str, name: &'static str| {
        let auth = h.auth().clone();
        async move { auth.enroll_node(account, name, None).await.unwrap().node }
    };
    let edge1 = enroll("acme", "edge-1").await;
    let edge2 = enroll("acme", "edge-2").await;
    let gx1 = enroll("globex", "gx-1").await;
    Fleet {
        h,
        plane,
        admin,
        edge1,
        edge2,
        gx1,
    }
}

fn hello(hostname: &str) -> proto::Hello {
    proto::Hello {
        agent_version: "0.9.0".into(),
        platform: Some(proto::Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: String::new(),
        }),
        hostname: hostname.into(),
        desired_generation: 0,
    }
}

/// Connects `node` as its agent would, and sends a first report.
async fn connect(
    plane: &ControlPlane,
    node: &Node,
    namespace: &str,
    hostname: &str,
) -> (Session, Receiver<proto::ServerMessage>) {
    let (mut session, rx) = plane
        .attach(
            NodeRef {
                node_id: node.id.clone(),
                node_name: node.name.clone(),
                account_id: node.account_id,
                namespace: namespace.into(),
            },
            hello(hostname),
        )
        .await
        .unwrap();
    send(&mut session, agent_message::Body::Report(report())).await;
    (session, rx)
}

fn report() -> proto::NodeReport {
    proto::NodeReport {
        desired_generation: 0,
        containers: vec![proto::Container {
            name: "web".into(),
            image: "acme.example.io/web:1.2".into(),
            state: "running".into(),
            pid: Some(42),
            exec_type: "service".into(),
            restarts: 3,
            desired: true,
            ..Default::default()
        }],
        images: vec![proto::Image {
            name: "acme.example.io/web:1.2".into(),
            digest: format!("sha256:{}", "ab".repeat(32)),
            size: 5 << 20,
            created_at: String::new(),
        }],
        drift: vec![proto::Drift {
            name: "cron".into(),
            kind: "missing".into(),
            detail: "not created yet".into(),
        }],
        desired_error: String::new(),
    }
}

async fn send(session: &mut Session, body: agent_message::Body) {
    session
        .receive(proto::AgentMessage { body: Some(body) })
        .await
        .unwrap();
}

/// The next command the node receives (skipping the welcome and desired
/// states).
async fn next_command(rx: &mut Receiver<proto::ServerMessage>) -> proto::Command {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("no command reached the node")
            .expect("the session ended");
        if let Some(server_message::Body::Command(c)) = msg.body {
            return c;
        }
    }
}

/// The next desired state the node receives.
async fn next_desired(rx: &mut Receiver<proto::ServerMessage>) -> proto::DesiredState {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("no desired state reached the node")
            .expect("the session ended");
        if let Some(server_message::Body::DesiredState(d)) = msg.body {
            return d;
        }
    }
}

fn names(list: &Value) -> Vec<String> {
    list["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn list_and_detail_show_online_state_and_the_report() {
    let f = fleet().await;
    let (_session, _rx) = connect(&f.plane, &f.edge1, NS, "edge-1.lan").await;
    let alice = f.h.sign_in("alice").await;

    let r =
        f.h.call(&Who::Session(&alice), Method::GET, "/api/v1/nodes", None)
            .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let list = r.json();
    assert_eq!(names(&list), ["edge-1", "edge-2"], "only acme's nodes");
    let e1 = &list["nodes"][0];
    assert_eq!(e1["id"], f.edge1.id.as_str());
    assert_eq!(e1["account"], "acme");
    assert_eq!(e1["revoked"], false);
    assert_eq!(e1["online"], true);
    assert_eq!(e1["agent_version"], "0.9.0");
    assert_eq!(e1["platform"], "linux/arm64");
    assert_eq!(e1["hostname"], "edge-1.lan");
    assert!(e1["last_seen"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        (&e1["containers"], &e1["images"], &e1["drift"]),
        (&json!(1), &json!(1), &json!(1))
    );
    // Never connected: no status.
    let e2 = &list["nodes"][1];
    assert_eq!(e2["online"], false);
    assert!(e2["agent_version"].is_null() && e2["last_seen"].is_null());
    assert_eq!(e2["containers"], 0);

    // Basic credentials (scripts) see the same; the detail has the report.
    let cred = f.h.credential("rita").await;
    let uri = format!("/api/v1/nodes/{}", f.edge1.id);
    let r =
        f.h.call(&Who::Basic("rita", &cred), Method::GET, &uri, None)
            .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let d = r.json();
    assert_eq!(d["name"], "edge-1");
    assert_eq!(d["online"], true);
    assert_eq!(d["report"]["containers"][0]["name"], "web");
    assert_eq!(d["report"]["containers"][0]["restarts"], 3);
    assert_eq!(d["report"]["images"][0]["size"], 5 << 20);
    assert_eq!(d["report"]["drift"][0]["kind"], "missing");
    assert!(d["desired"].is_null());
    assert_eq!(d["commands"], json!([]));

    let r =
        f.h.call(
            &Who::Session(&alice),
            Method::GET,
            &format!("/api/v1/nodes/{}", f.edge2.id),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.json()["report"].is_null());
}

#[tokio::test]
async fn a_pull_reaches_the_node_and_its_progress_and_result_show() {
    let f = fleet().await;
    let (mut session, mut rx) = connect(&f.plane, &f.edge1, NS, "edge-1.lan").await;
    let dave = f.h.sign_in("dave").await;
    let base = format!("/api/v1/nodes/{}/commands", f.edge1.id);

    let r =
        f.h.call(
            &Who::Session(&dave),
            Method::POST,
            &base,
            Some(json!({"action": {"pull": {"image": "nginx:1.27"}}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let c = r.json();
    let id = c["id"].as_str().unwrap().to_owned();
    assert_eq!(c["node_id"], f.edge1.id.as_str());
    assert_eq!(c["kind"], "pull");
    assert_eq!(c["state"], "queued");
    assert_eq!(c["actor"], "dave");
    assert_eq!(c["action"], json!({"pull": {"image": "nginx:1.27"}}));
    assert!(c["progress"].is_null() && c["result"].is_null());
    for k in ["created_at", "updated_at", "expires_at"] {
        assert!(c[k].as_str().unwrap().ends_with('Z'), "{k}");
    }

    // The node gets it on its stream.
    let got = next_command(&mut rx).await;
    assert_eq!(got.id, id);
    match got.action {
        Some(proto::command::Action::Pull(p)) => assert_eq!(p.image, "nginx:1.27"),
        other => panic!("{other:?}"),
    }

    let one = format!("{base}/{id}");
    let state = |r: common::Resp| r.json();
    send(
        &mut session,
        agent_message::Body::Ack(proto::CommandAck { id: id.clone() }),
    )
    .await;
    let digest = format!("sha256:{}", "cd".repeat(32));
    send(
        &mut session,
        agent_message::Body::Progress(proto::CommandProgress {
            id: id.clone(),
            blobs: vec![proto::BlobProgress {
                digest: digest.clone(),
                done: 512,
                total: 2048,
                state: "downloading".into(),
            }],
            message: "resolved sha256:…".into(),
        }),
    )
    .await;
    let c = state(
        f.h.call(&Who::Session(&dave), Method::GET, &one, None)
            .await,
    );
    assert_eq!(c["state"], "acked", "{c}");
    assert_eq!(c["progress"]["blobs"][0]["done"], 512);
    assert_eq!(c["progress"]["blobs"][0]["total"], 2048);
    assert_eq!(c["progress"]["message"], "resolved sha256:…");

    send(
        &mut session,
        agent_message::Body::Result(proto::CommandResult {
            id: id.clone(),
            error: String::new(),
            finished_at_ms: 1,
            output: Some(proto::command_result::Output::Pulled(proto::Pulled {
                image: "acme.example.io/nginx:1.27".into(),
                digest: digest.clone(),
                platform: "linux/arm64".into(),
                layers: 1,
                downloaded: 2048,
            })),
        }),
    )
    .await;
    let c = state(
        f.h.call(&Who::Session(&dave), Method::GET, &one, None)
            .await,
    );
    assert_eq!(c["state"], "succeeded", "{c}");
    assert_eq!(c["result"]["error"], "");
    assert_eq!(c["result"]["output"]["pulled"]["digest"], digest.as_str());

    // In the list and the node's detail, newest first.
    let r =
        f.h.call(&Who::Session(&dave), Method::GET, &base, None)
            .await;
    assert_eq!(r.json()["commands"][0]["id"], id.as_str());
    let r =
        f.h.call(
            &Who::Session(&dave),
            Method::GET,
            &format!("/api/v1/nodes/{}", f.edge1.id),
            None,
        )
        .await;
    assert_eq!(r.json()["commands"][0]["state"], "succeeded");
    let r =
        f.h.call(
            &Who::Session(&dave),
            Method::GET,
            &format!("{base}?limit=500"),
            None,
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
}

#[tokio::test]
async fn refusals_change_nothing() {
    let f = fleet().await;
    let alice = f.h.sign_in("alice").await;
    let rita = f.h.sign_in("rita").await;
    let gary = f.h.sign_in("gary").await;
    let pull = || Some(json!({"action": {"pull": {"image": "nginx"}}}));
    let edge1 = format!("/api/v1/nodes/{}", f.edge1.id);
    let cmds = format!("{edge1}/commands");

    // Unauthenticated.
    f.h.call(&Who::Nobody, Method::GET, "/api/v1/nodes", None)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");

    // Another account's node is as unknown as a missing one.
    for uri in [
        edge1.clone(),
        cmds.clone(),
        format!("{edge1}/desired"),
        "/api/v1/nodes/no-such-node".to_owned(),
    ] {
        f.h.call(&Who::Session(&gary), Method::GET, &uri, None)
            .await
            .assert_error(StatusCode::NOT_FOUND, "NODE_UNKNOWN");
    }
    f.h.call(&Who::Session(&gary), Method::POST, &cmds, pull())
        .await
        .assert_error(StatusCode::NOT_FOUND, "NODE_UNKNOWN");
    let r =
        f.h.call(&Who::Session(&gary), Method::GET, "/api/v1/nodes", None)
            .await;
    assert_eq!(names(&r.json()), ["gx-1"]);

    // A reader reads but sends nothing.
    let r =
        f.h.call(&Who::Session(&rita), Method::GET, &edge1, None)
            .await;
    assert_eq!(r.status, StatusCode::OK);
    f.h.call(&Who::Session(&rita), Method::POST, &cmds, pull())
        .await
        .assert_error(StatusCode::FORBIDDEN, "DENIED");
    f.h.call(
        &Who::Session(&rita),
        Method::PUT,
        &format!("{edge1}/desired"),
        Some(json!({"containers": []})),
    )
    .await
    .assert_error(StatusCode::FORBIDDEN, "DENIED");

    // A session change needs its anti-CSRF token.
    f.h.call(&Who::CookieOnly(&alice), Method::POST, &cmds, pull())
        .await
        .assert_error(StatusCode::FORBIDDEN, "CSRF_TOKEN_INVALID");
    f.h.call(&Who::WrongCsrf(&alice), Method::POST, &cmds, pull())
        .await
        .assert_error(StatusCode::FORBIDDEN, "CSRF_TOKEN_INVALID");

    // Invalid actions and bodies.
    for body in [
        json!({"action": {"pull": {"image": ""}}}),
        json!({"action": {"explode": {}}}),
        json!({"action": null}),
        json!({"nothing": true}),
    ] {
        f.h.call(&Who::Session(&alice), Method::POST, &cmds, Some(body))
            .await
            .assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    }

    // A command of another node is unknown under this one.
    let other = f
        .plane
        .submit(
            &f.edge2.id,
            f.edge2.account_id,
            proto::command::Action::ListImages(proto::ListImages {}),
            "test",
        )
        .await
        .unwrap();
    f.h.call(
        &Who::Session(&alice),
        Method::GET,
        &format!("{cmds}/{}", other.id),
        None,
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, "COMMAND_UNKNOWN");

    // A revoked node takes no commands.
    f.h.auth().revoke_node(&f.edge1.id).await.unwrap();
    let r =
        f.h.call(&Who::Session(&alice), Method::POST, &cmds, pull())
            .await;
    r.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    assert!(r.text().contains("node is revoked"), "{}", r.text());
    let r =
        f.h.call(&Who::Session(&alice), Method::GET, &edge1, None)
            .await;
    assert_eq!(r.json()["revoked"], true);

    // Nothing was queued for edge-1 by any of it.
    assert!(f.plane.commands(&f.edge1.id, 100).await.unwrap().is_empty());
    assert!(f.plane.desired(&f.edge1.id).await.unwrap().is_none());
}

#[tokio::test]
async fn the_desired_state_is_set_and_sent_to_the_node() {
    let f = fleet().await;
    let (_session, mut rx) = connect(&f.plane, &f.edge1, NS, "edge-1.lan").await;
    let dave = f.h.sign_in("dave").await;
    let uri = format!("/api/v1/nodes/{}/desired", f.edge1.id);

    let r =
        f.h.call(&Who::Session(&dave), Method::GET, &uri, None)
            .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["generation"], 0);

    let r =
        f.h.call(
            &Who::Session(&dave),
            Method::PUT,
            &uri,
            Some(json!({"containers": [{"name": "web", "image": "nginx:1.27"}]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json(), json!({"generation": 1}));
    let got = next_desired(&mut rx).await;
    assert_eq!(got.generation, 1);
    assert_eq!(got.containers[0].name, "web");
    assert_eq!(got.containers[0].exec_type, "service");

    let r =
        f.h.call(&Who::Session(&dave), Method::GET, &uri, None)
            .await;
    let d = r.json();
    assert_eq!(d["generation"], 1);
    assert_eq!(d["actor"], "dave");
    assert_eq!(d["containers"][0]["image"], "nginx:1.27");

    // Invalid specs are refused whole.
    for bad in [
        json!({"containers": [{"name": "bad name", "image": "x"}]}),
        json!({"containers": [{"name": "a", "image": "x"}, {"name": "a", "image": "y"}]}),
        json!({"containers": [{"name": "a", "image": "x", "exec_type": "recurring"}]}),
    ] {
        f.h.call(&Who::Session(&dave), Method::PUT, &uri, Some(bad))
            .await
            .assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    }
    let d = f.plane.desired(&f.edge1.id).await.unwrap().unwrap();
    assert_eq!(d.generation, 1);
}

#[tokio::test]
async fn the_operator_admin_router_sees_every_account() {
    let f = fleet().await;
    let (_session, mut rx) = connect(&f.plane, &f.gx1, "globex.io", "gx.lan").await;
    let op = Who::Nobody;

    let r =
        f.h.call_on(&f.admin, &op, Method::GET, "/api/v1/nodes", None)
            .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let mut all = names(&r.json());
    all.sort();
    assert_eq!(all, ["edge-1", "edge-2", "gx-1"]);
    let r =
        f.h.call_on(
            &f.admin,
            &op,
            Method::GET,
            "/api/v1/nodes?account=globex",
            None,
        )
        .await;
    assert_eq!(names(&r.json()), ["gx-1"]);
    assert_eq!(r.json()["nodes"][0]["online"], true);
    f.h.call_on(
        &f.admin,
        &op,
        Method::GET,
        "/api/v1/nodes?account=nobody",
        None,
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");

    // Commands without credentials or anti-CSRF token, as the operator.
    let r =
        f.h.call_on(
            &f.admin,
            &op,
            Method::POST,
            &format!("/api/v1/nodes/{}/commands", f.gx1.id),
            Some(json!({"action": {"list_images": {}}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert_eq!(r.json()["actor"], "operator");
    assert_eq!(r.json()["kind"], "list-images");
    assert_eq!(
        next_command(&mut rx).await.id,
        r.json()["id"].as_str().unwrap()
    );

    // Only the node API is there.
    let r =
        f.h.call_on(&f.admin, &op, Method::GET, "/api/v1/repositories", None)
            .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r =
        f.h.call_on(&f.admin, &op, Method::GET, "/nodes", None)
            .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn without_a_control_plane_the_node_api_says_so() {
    // Accounts off: no node CA, no node endpoint, so no control plane.
    let h = Harness::new(false).await;
    h.call(&Who::Nobody, Method::GET, "/api/v1/nodes", None)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "UNSUPPORTED");
}

#[tokio::test]
async fn the_node_pages_render_escape_and_hide_the_pull_form_from_readers() {
    let f = fleet().await;
    // Names an agent or a store could hold that must never become markup.
    let hostile = Node {
        id: "f00dfeed-0000-4000-8000-000000000001".into(),
        account_id: f.edge1.account_id,
        name: "<script>alert(1)</script>".into(),
        cert_serial: "1".into(),
        cert_fingerprint: "x".into(),
        enrolled_at: 1,
        revoked_at: None,
    };
    f.h.auth().store().insert_node(&hostile).await.unwrap();
    let (mut s1, _r1) = connect(&f.plane, &f.edge1, NS, "edge-1.lan").await;
    let (_s2, _r2) = connect(&f.plane, &hostile, NS, "<img src=x onerror=alert(2)>").await;
    let alice = f.h.sign_in("alice").await;
    let rita = f.h.sign_in("rita").await;
    let ivan = f.h.sign_in("ivan").await;

    let r =
        f.h.call(&Who::Session(&alice), Method::GET, "/nodes", None)
            .await;
    assert_eq!(r.status, StatusCode::OK);
    let t = r.text();
    assert!(t.contains("href=\"/nodes\""), "navigation link");
    assert!(t.contains(">edge-1<") && t.contains(">edge-2<"), "{t}");
    assert!(t.contains("online") && t.contains("offline"));
    assert!(t.contains("0.9.0") && t.contains("linux/arm64") && t.contains("edge-1.lan"));
    assert!(t.contains("never connected"));
    assert!(
        !t.contains("<script>alert") && !t.contains("<img src=x"),
        "{t}"
    );
    assert!(t.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(t.contains("&lt;img src=x onerror=alert(2)&gt;"));
    assert!(!t.contains("gx-1"), "another account's node");

    let page = format!("/nodes/{}", f.edge1.id);
    let r =
        f.h.call(&Who::Session(&alice), Method::GET, &page, None)
            .await;
    assert_eq!(r.status, StatusCode::OK);
    let t = r.text();
    for s in [
        "edge-1",
        "id=\"pull-form\"",
        "id=\"pull-image\"",
        "acme.example.io/web:1.2",
        "running",
        "service",
        "5.0 MiB",
        "missing",
        "not created yet",
        "No commands yet.",
    ] {
        assert!(t.contains(s), "{s} in {t}");
    }
    assert!(
        !r.header("content-security-policy")
            .contains("'unsafe-inline'")
    );
    assert!(!t.contains("<script>") && !t.contains("style=\""));

    // A command shows in the recent list, with its error.
    let c = f
        .plane
        .submit(
            &f.edge1.id,
            f.edge1.account_id,
            proto::command::Action::Pull(proto::PullImage {
                image: "nginx".into(),
            }),
            "alice",
        )
        .await
        .unwrap();
    send(
        &mut s1,
        agent_message::Body::Result(proto::CommandResult {
            id: c.id.clone(),
            error: "manifest unknown: <nginx>".into(),
            ..Default::default()
        }),
    )
    .await;
    let t =
        f.h.call(&Who::Session(&rita), Method::GET, &page, None)
            .await
            .text();
    assert!(t.contains(&format!("data-command=\"{}\"", c.id)), "{t}");
    assert!(t.contains("failed") && t.contains("manifest unknown: &lt;nginx&gt;"));
    assert!(!t.contains("pull-form"), "readers get no Pull form");

    let r =
        f.h.call(
            &Who::Session(&alice),
            Method::GET,
            &format!("/nodes/{}", hostile.id),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(!r.text().contains("<script>alert"));
    assert!(r.text().contains("<title>&lt;script&gt;"));

    // Another account's node page: not found; an account without nodes:
    // the empty state.
    let r =
        f.h.call(
            &Who::Session(&alice),
            Method::GET,
            &format!("/nodes/{}", f.gx1.id),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let t =
        f.h.call(&Who::Session(&ivan), Method::GET, "/nodes", None)
            .await
            .text();
    assert!(
        t.contains("No nodes yet") && t.contains("berth-server admin node enroll"),
        "{t}"
    );

    // Signed out: to the sign-in page.
    let r = f.h.call(&Who::Nobody, Method::GET, "/nodes", None).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
}
