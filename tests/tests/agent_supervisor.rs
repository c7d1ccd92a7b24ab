//! `berth-agent daemon` supervising containers under a real containerd +
//! runc started by the harness, from an image pulled from a real
//! berth-server: a `service` that exits after a second is restarted with
//! growing backoff; a failing health check (Tasks.Exec) restarts its
//! container while a passing one leaves its container alone; a `recurring`
//! container on a seconds schedule runs at its ticks and skips ticks while
//! the previous run runs; an `on-demand` one runs once per `start`; a
//! daemon killed and started again leaves its services running and goes on
//! supervising them; `undefine` stops and removes. The daemon's metrics
//! show it all.
#![allow(clippy::unwrap_used)]

mod common_agent;
mod common_auth;

use std::path::Path;
use std::time::{Duration, Instant};

use common_agent::{
    AgentOptions, Daemon, agent, agent_config_with, agent_ok, busybox_layer, cgroup_dir, ps_entry,
    read_trimmed,
};
use common_auth::{ACME, ACME_NS, AuthServer};
use serde_json::Value;
use test_support::images::LayerBuilder;
use test_support::{Arch, Image, ImageBuilder};
use tests::Containerd;

fn busybox_image() -> Image {
    let base = busybox_layer(&["sh", "echo", "sleep", "test", "true", "touch", "cat"]);
    ImageBuilder::new(Arch::Amd64)
        .layer(base.build())
        .layer(LayerBuilder::new().dir("tmp/").build())
        .cmd(&["/bin/sh", "-c", "echo default command"])
        .build()
}

/// Polls `ps` until `pred` holds for `name`'s entry; the entry.
fn wait_for(config: &Path, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let entry = ps_entry(config, name).unwrap_or(Value::Null);
        if pred(&entry) {
            return entry;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{name}: {what} not seen within 60 s; last: {entry}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn num(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn daemon_supervises_services_recurring_and_on_demand_containers() {
    let srv = AuthServer::start();
    let t = srv.setup_tenants();
    let ctrd = Containerd::start();
    srv.push_as(
        &t.acme_dev,
        &format!("{ACME_NS}/box"),
        &busybox_image(),
        "v1",
    )
    .await;
    let node = srv.enroll("edge-supervisor", ACME, None);
    let config = agent_config_with(
        &srv,
        &node,
        &ctrd,
        srv.files(),
        &AgentOptions {
            log_json: true,
            ..Default::default()
        },
    );
    let log = srv.files().join("daemon.log");
    agent_ok(&config, &["pull", "box:v1", "--json"]);
    // Container ids must be unique on the machine (runc's state and the
    // cgroups are shared by every containerd).
    let pid = std::process::id();
    let flap = format!("flap-{pid}");
    let steady = format!("steady-{pid}");
    let sick = format!("sick-{pid}");
    let tick = format!("tick-{pid}");
    let once = format!("once-{pid}");

    let daemon = Daemon::start(&config, &log);
    #[rustfmt::skip]
    let defs: [Vec<&str>; 5] = [
        vec!["define", &flap, "box:v1", "--type", "service",
             "--backoff-initial", "300ms", "--backoff-max", "10s",
             "--", "/bin/sh", "-c", "echo up; sleep 1"],
        vec!["define", &steady, "box:v1", "--type", "service", "--stop-timeout", "1",
             "--memory", "64m",
             "--health-cmd", "true", "--health-interval", "500ms", "--health-timeout", "5s",
             "--", "/bin/sleep", "1000"],
        vec!["define", &sick, "box:v1", "--type", "service", "--stop-timeout", "1",
             "--backoff-initial", "200ms",
             "--health-cmd", "test -f /tmp/never", "--health-interval", "500ms",
             "--health-timeout", "5s", "--health-retries", "2",
             "--", "/bin/sleep", "1000"],
        // Every 2 s, runs of 5 s: most ticks find the last run running.
        vec!["define", &tick, "box:v1", "--type", "recurring",
             "--schedule", "*/2 * * * * *", "--stop-timeout", "1",
             "--", "/bin/sh", "-c", "echo tick; sleep 5"],
        vec!["define", &once, "box:v1", "--type", "on-demand",
             "--", "/bin/sh", "-c", "echo once"],
    ];
    for d in &defs {
        agent_ok(&config, d);
    }
    // Refused before the daemon sees them.
    let bad = agent(&config, &["define", "x", "box:v1", "--type", "recurring"]);
    assert!(!bad.status.success());
    let bad = agent(&config, &["start", &steady]);
    assert!(!bad.status.success(), "start of a service");

    // The service that exits is restarted, with a growing delay.
    let mut delays = Vec::new();
    let start = Instant::now();
    while num(&ps_entry(&config, &flap).unwrap_or(Value::Null), "restarts") < 4 {
        let e = ps_entry(&config, &flap).unwrap_or(Value::Null);
        let d = num(&e, "backoff_ms");
        if d > 0 && delays.last() != Some(&d) {
            delays.push(d);
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{e}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        delays.len() >= 2 && delays.windows(2).all(|w| w[1] > w[0]),
        "backoff should grow: {delays:?}"
    );
    assert_eq!(delays[0], 300, "{delays:?}");
    let e = ps_entry(&config, &flap).unwrap();
    assert_eq!(e["type"], "service", "{e}");

    // The failing health check restarts its container.
    let e = wait_for(&config, &sick, "a health restart", |e| {
        num(e, "restarts") >= 1
    });
    assert!(num(&e, "health_failures") >= 2, "{e}");

    // The recurring container ran at ticks and skipped some.
    let e = wait_for(&config, &tick, "two runs and a skipped tick", |e| {
        num(e, "runs") >= 2 && num(e, "skipped_ticks") >= 1
    });
    assert_eq!(e["type"], "recurring", "{e}");
    assert!(e["next_run"].is_string(), "{e}");

    // The on-demand container has not run; each `start` runs it once.
    let e = ps_entry(&config, &once).unwrap();
    assert_eq!(
        (e["state"].as_str(), num(&e, "runs")),
        (Some("defined"), 0),
        "{e}"
    );
    for n in 1..=2 {
        agent_ok(&config, &["start", &once]);
        let e = wait_for(&config, &once, "a run", |e| {
            num(e, "runs") == n && e["state"] == "stopped"
        });
        assert_eq!(e["exit_status"], 0, "{e}");
        let out = agent_ok(&config, &["logs", &once]);
        assert_eq!(out.matches("once").count(), 1, "{out}");
    }

    // The passing health check left its container alone.
    let e = ps_entry(&config, &steady).unwrap();
    assert_eq!(e["state"], "running", "{e}");
    assert_eq!(
        (num(&e, "restarts"), num(&e, "health_failures")),
        (0, 0),
        "{e}"
    );
    let steady_pid = e["pid"].as_u64().unwrap();
    // The definition's settings reach the container: its memory limit is
    // in its cgroup.
    assert_eq!(
        read_trimmed(&cgroup_dir(steady_pid, "memory").join("memory.limit_in_bytes")),
        (64u64 << 20).to_string()
    );

    let text = daemon.metrics().await;
    let restarts = |name: &str| {
        sample(
            &text,
            &format!("berth_agent_container_restarts_total{{container=\"{name}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert!(restarts(&flap) >= 4.0, "{text}");
    assert!(restarts(&sick) >= 1.0, "{text}");
    assert!(
        sample(
            &text,
            &format!("berth_agent_health_check_failures_total{{container=\"{sick}\"}}")
        )
        .unwrap_or(0.0)
            >= 2.0,
        "{text}"
    );
    assert!(
        sample(&text, "berth_agent_containers{state=\"running\"}").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "berth_agent_recurring_skipped_ticks_total{{container=\"{tick}\"}}"
        )),
        "{text}"
    );

    // A crashed daemon leaves the services running; a new one adopts
    // them (no restart) and goes on supervising.
    daemon.kill();
    let flap_before = num(&ps_entry(&config, &flap).unwrap(), "restarts");
    let e = ps_entry(&config, &steady).unwrap();
    assert_eq!(
        (e["state"].as_str(), e["pid"].as_u64()),
        (Some("running"), Some(steady_pid))
    );
    let daemon = Daemon::start(&config, &log);
    wait_for(&config, &flap, "restarts after the daemon's restart", |e| {
        num(e, "restarts") >= flap_before + 2
    });
    let e = ps_entry(&config, &steady).unwrap();
    assert_eq!(e["pid"].as_u64(), Some(steady_pid), "{e}");
    assert_eq!(num(&e, "restarts"), 0, "{e}");

    // Undefine stops and removes.
    for name in [&flap, &steady, &sick, &tick, &once] {
        agent_ok(&config, &["undefine", name]);
        assert!(ps_entry(&config, name).is_none(), "{name}");
    }
    // The daemon does not bring anything back.
    std::thread::sleep(Duration::from_secs(2));
    let left = ctrd.run_ctr(["containers", "ls", "-q"]).unwrap();
    assert!(left.trim().is_empty(), "{left}");
    daemon.stop();
}
