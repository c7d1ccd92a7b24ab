//! The control plane's service and store on both engines (`sqlite::…`,
//! `postgres::…` on the test process's private PostgreSQL): a node's
//! session gets the welcome, the desired state and its commands; states
//! only move forward; one node's messages never touch another node's
//! commands; a reconnect re-sends what is unfinished; a newer session
//! replaces an older one; commands for offline nodes expire.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use control::proto::{self, agent_message, command, server_message};
use control::store::ControlStore;
use control::{CommandState, ControlConfig, ControlPlane, NodeRef};
use tokio::sync::mpsc::Receiver;

#[derive(Debug, Clone, Copy)]
enum Engine {
    Sqlite,
    Postgres,
}

async fn store(engine: Engine, dir: &std::path::Path) -> Arc<dyn ControlStore> {
    match engine {
        Engine::Sqlite => control::open_store(dir, None).await.unwrap(),
        Engine::Postgres => {
            let pg = test_support::Postgres::shared();
            let options = pg_pool::ConnectOptions {
                url: pg.url(&pg.create_database()),
                password: Some(pg.password().to_owned()),
                max_connections: 4,
            };
            control::open_store(dir, Some(&options)).await.unwrap()
        }
    }
}

macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Engine::Sqlite).await
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Engine::Postgres).await
            })*
        }
    };
}

on_both_engines!(
    commands_are_delivered_acknowledged_and_finished_once,
    a_node_cannot_touch_another_nodes_commands,
    a_reconnect_resends_unfinished_commands_and_the_desired_state,
    undelivered_commands_expire,
);

fn node(id: &str, account: i64) -> NodeRef {
    NodeRef {
        node_id: id.into(),
        node_name: format!("name-{id}"),
        account_id: account,
        namespace: "acme.example.io".into(),
    }
}

fn hello(generation: u64) -> proto::Hello {
    proto::Hello {
        agent_version: "1.2.3".into(),
        platform: Some(proto::Platform {
            os: "linux".into(),
            architecture: "arm".into(),
            variant: "v7".into(),
        }),
        hostname: "box".into(),
        desired_generation: generation,
    }
}

async fn plane(engine: Engine, dir: &std::path::Path) -> ControlPlane {
    ControlPlane::new(
        store(engine, dir).await,
        ControlConfig {
            poll_interval: Duration::from_millis(50),
            ..ControlConfig::default()
        },
    )
}

async fn next(rx: &mut Receiver<proto::ServerMessage>) -> server_message::Body {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a message within 10 s")
        .expect("the stream is open")
        .body
        .unwrap()
}

fn pull(image: &str) -> command::Action {
    command::Action::Pull(proto::PullImage {
        image: image.into(),
    })
}

fn up(body: agent_message::Body) -> proto::AgentMessage {
    proto::AgentMessage { body: Some(body) }
}

async fn commands_are_delivered_acknowledged_and_finished_once(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let cp = plane(engine, dir.path()).await;
    let (mut session, mut rx) = cp.attach(node("n1", 7), hello(0)).await.unwrap();
    match next(&mut rx).await {
        server_message::Body::Welcome(w) => {
            assert_eq!(w.node_id, "n1");
            assert_eq!(w.namespace, "acme.example.io");
        }
        other => panic!("expected the welcome, got {other:?}"),
    }
    let status = cp.status("n1").await.unwrap().unwrap();
    assert_eq!(status.platform, "linux/arm/v7");
    assert_eq!(status.agent_version, "1.2.3");
    assert!(cp.online(&status));

    let rec = cp.submit("n1", 7, pull("box:v1"), "alice").await.unwrap();
    assert_eq!(rec.state, CommandState::Queued);
    let cmd = match next(&mut rx).await {
        server_message::Body::Command(c) => c,
        other => panic!("expected the command, got {other:?}"),
    };
    assert_eq!(cmd.id, rec.id);
    assert_eq!(
        cp.command(&rec.id).await.unwrap().unwrap().state,
        CommandState::Sent
    );

    session
        .receive(up(agent_message::Body::Ack(proto::CommandAck {
            id: rec.id.clone(),
        })))
        .await
        .unwrap();
    session
        .receive(up(agent_message::Body::Progress(proto::CommandProgress {
            id: rec.id.clone(),
            blobs: vec![proto::BlobProgress {
                digest: "sha256:aa".into(),
                done: 5,
                total: 10,
                state: "downloading".into(),
            }],
            message: String::new(),
        })))
        .await
        .unwrap();
    session
        .receive(up(agent_message::Body::Progress(proto::CommandProgress {
            id: rec.id.clone(),
            blobs: vec![proto::BlobProgress {
                digest: "sha256:aa".into(),
                done: 10,
                total: 10,
                state: "done".into(),
            }],
            message: "unpacking layer 1/1".into(),
        })))
        .await
        .unwrap();
    let seen = cp.command(&rec.id).await.unwrap().unwrap();
    assert_eq!(seen.state, CommandState::Acked);
    let p = seen.progress.unwrap();
    assert_eq!(p.blobs.len(), 1, "progress merges per blob");
    assert_eq!(p.blobs[0].done, 10);
    assert_eq!(p.message, "unpacking layer 1/1");

    let result = proto::CommandResult {
        id: rec.id.clone(),
        error: String::new(),
        finished_at_ms: 1,
        output: Some(proto::command_result::Output::Pulled(proto::Pulled {
            image: "box".into(),
            digest: "sha256:bb".into(),
            ..Default::default()
        })),
    };
    session
        .receive(up(agent_message::Body::Result(result.clone())))
        .await
        .unwrap();
    assert!(
        matches!(next(&mut rx).await, server_message::Body::ResultReceived(r) if r.id == rec.id)
    );
    // A repeated result (after a reconnect) is confirmed but changes nothing;
    // a late ack or a failure does not move it back.
    let mut failed = result.clone();
    failed.error = "boom".into();
    session
        .receive(up(agent_message::Body::Result(failed)))
        .await
        .unwrap();
    assert!(matches!(
        next(&mut rx).await,
        server_message::Body::ResultReceived(_)
    ));
    session
        .receive(up(agent_message::Body::Ack(proto::CommandAck {
            id: rec.id.clone(),
        })))
        .await
        .unwrap();
    let done = cp.command(&rec.id).await.unwrap().unwrap();
    assert_eq!(done.state, CommandState::Succeeded);
    assert_eq!(done.result.unwrap(), result);
    assert!(
        cp.submit("n1", 7, pull(""), "alice").await.is_err(),
        "empty image refused"
    );
    session.detach().await;
    let status = cp.status("n1").await.unwrap().unwrap();
    assert!(!cp.online(&status), "offline once the stream ended");
}

async fn a_node_cannot_touch_another_nodes_commands(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let cp = plane(engine, dir.path()).await;
    let (mut intruder, mut rx) = cp.attach(node("evil", 9), hello(0)).await.unwrap();
    next(&mut rx).await;
    let rec = cp
        .submit("victim", 7, pull("box:v1"), "alice")
        .await
        .unwrap();
    intruder
        .receive(up(agent_message::Body::Result(proto::CommandResult {
            id: rec.id.clone(),
            error: "forged".into(),
            ..Default::default()
        })))
        .await
        .unwrap();
    intruder
        .receive(up(agent_message::Body::Ack(proto::CommandAck {
            id: rec.id.clone(),
        })))
        .await
        .unwrap();
    let seen = cp.command(&rec.id).await.unwrap().unwrap();
    assert_eq!(seen.state, CommandState::Queued);
    assert!(seen.result.is_none());
    // Nor is it ever sent to the intruder (which only hears its own
    // results confirmed: an id it sent, nothing of the victim's).
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
        assert!(
            matches!(m.body, Some(server_message::Body::ResultReceived(_))),
            "another node's command reached the intruder: {m:?}"
        );
    }
}

async fn a_reconnect_resends_unfinished_commands_and_the_desired_state(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let cp = plane(engine, dir.path()).await;
    // Queued while offline, with a desired state.
    let rec = cp.submit("n2", 7, pull("box:v1"), "alice").await.unwrap();
    let spec = proto::ContainerSpec {
        name: "web".into(),
        image: "box:v1".into(),
        ..Default::default()
    };
    let generation = cp.set_desired("n2", 7, vec![spec], "alice").await.unwrap();
    assert_eq!(generation, 1);
    let (first, mut rx) = cp.attach(node("n2", 7), hello(0)).await.unwrap();
    next(&mut rx).await;
    match next(&mut rx).await {
        server_message::Body::DesiredState(d) => {
            assert_eq!(d.generation, 1);
            assert_eq!(
                d.containers[0].exec_type, "service",
                "supervised by default"
            );
        }
        other => panic!("expected the desired state, got {other:?}"),
    }
    assert!(matches!(next(&mut rx).await, server_message::Body::Command(c) if c.id == rec.id));
    // The same node connects again (the old stream is not yet known dead):
    // the new session wins and gets the unfinished command again; an agent
    // already at generation 1 does not get the state again.
    let (second, mut rx2) = cp.attach(node("n2", 7), hello(1)).await.unwrap();
    assert!(first.closed().is_cancelled(), "the older session is closed");
    next(&mut rx2).await;
    assert!(matches!(next(&mut rx2).await, server_message::Body::Command(c) if c.id == rec.id));
    // The old session ending does not mark the node offline.
    first.detach().await;
    let status = cp.status("n2").await.unwrap().unwrap();
    assert!(cp.online(&status));
    // A changed desired state goes out on the live session.
    cp.set_desired("n2", 7, vec![], "alice").await.unwrap();
    assert!(
        matches!(next(&mut rx2).await, server_message::Body::DesiredState(d) if d.generation == 2)
    );
    second.detach().await;
}

async fn undelivered_commands_expire(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let store = store(engine, dir.path()).await;
    let cp = ControlPlane::new(
        store.clone(),
        ControlConfig {
            command_ttl: Duration::from_millis(1),
            ..ControlConfig::default()
        },
    );
    let rec = cp.submit("n3", 7, pull("box:v1"), "alice").await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        store.expire_commands(control::now_millis()).await.unwrap(),
        1
    );
    assert_eq!(
        cp.command(&rec.id).await.unwrap().unwrap().state,
        CommandState::Expired
    );
    // Never sent to a node that connects afterwards.
    let (_s, mut rx) = cp.attach(node("n3", 7), hello(0)).await.unwrap();
    next(&mut rx).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err()
    );
}
