//! berth-agent's per-container settings under a real containerd + runc
//! started by the harness, from an image pulled from a real berth-server:
//! `--memory`/`--cpus` land in the container's cgroup files, a bind mount
//! and a named volume are visible inside (the volume's data survives `rm`
//! and is seen by a second container; `volumes` lists it), a missing bind
//! source is refused clearly, `--cap-drop ALL` makes `chown` fail where
//! the default allows it, `--privileged` gets the host's whole
//! capability set, and `--log-max-size`/`--log-max-files` rotate the log.
#![allow(clippy::unwrap_used)]

mod common_agent;
mod common_auth;

use std::path::Path;
use std::time::{Duration, Instant};

use common_agent::{
    agent_config, agent_fails, agent_ok, busybox_layer, cgroup_dir, json, ps_entry, read_trimmed,
};
use common_auth::{ACME, ACME_NS, AuthServer};
use test_support::{Arch, Image, ImageBuilder};
use tests::Containerd;

/// busybox with the applets the test uses.
fn busybox_image() -> Image {
    let base = busybox_layer(&[
        "sh", "echo", "sleep", "cat", "chown", "touch", "grep", "ls", "head", "seq",
    ])
    .dir("tmp/");
    ImageBuilder::new(Arch::Amd64)
        .layer(base.build())
        .cmd(&["/bin/sh", "-c", "echo default command"])
        .build()
}

/// [`common_agent::run_to_end`] with this test's image.
fn run_to_end(config: &Path, name: &str, flags: &[&str], script: &str) -> String {
    common_agent::run_to_end(config, name, "box:v1", flags, script)
}

/// `CapEff` of a `/proc/*/status` text.
fn cap_eff(status: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap_or_else(|| panic!("no CapEff in {status}"))
        .trim()
        .to_owned()
}

#[tokio::test]
async fn agent_applies_limits_mounts_volumes_and_capabilities() {
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
    let node = srv.enroll("edge-settings", ACME, None);
    let config = agent_config(&srv, &node, &ctrd, srv.files());
    agent_ok(&config, &["pull", "box:v1", "--json"]);
    // Container ids must be unique on the machine (cgroups and runc's
    // state are per namespace and id, shared by every containerd).
    let pid = std::process::id();

    // Memory and CPU limits, read from the running container's cgroups.
    let limited = format!("limited-{pid}");
    let started = json(
        &config,
        &[
            "run",
            &limited,
            "box:v1",
            "--memory",
            "64m",
            "--cpus",
            "0.5",
            "--json",
            "--",
            "/bin/sleep",
            "1000",
        ],
    );
    let task = started["pid"].as_u64().unwrap();
    let memory = cgroup_dir(task, "memory");
    assert_eq!(
        read_trimmed(&memory.join("memory.limit_in_bytes")),
        (64u64 << 20).to_string(),
        "{}",
        memory.display()
    );
    let cpu = cgroup_dir(task, "cpu");
    assert_eq!(read_trimmed(&cpu.join("cpu.cfs_quota_us")), "50000");
    assert_eq!(read_trimmed(&cpu.join("cpu.cfs_period_us")), "100000");
    agent_ok(&config, &["rm", "--force", &limited]);

    // A read-only bind mount and a named volume.
    let host_dir = srv.files().join("host-share");
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(host_dir.join("greeting"), "hello-from-host\n").unwrap();
    let volume = format!("data-{pid}");
    let bind = format!(
        "type=bind,source={},target=/host,readonly",
        host_dir.display()
    );
    let writer = format!("writer-{pid}");
    let out = run_to_end(
        &config,
        &writer,
        &["--mount", &bind, "--volume", &format!("{volume}:/data")],
        "cat /host/greeting; \
         echo persisted > /data/file && echo wrote-volume; \
         touch /host/nope 2>/dev/null || echo bind-is-readonly; \
         echo end",
    );
    assert!(out.contains("hello-from-host"), "{out}");
    assert!(out.contains("wrote-volume"), "{out}");
    assert!(out.contains("bind-is-readonly"), "{out}");
    assert!(!host_dir.join("nope").exists());
    // Kept after `rm`, on the host and in `volumes`.
    let volume_dir = srv.files().join("agent-data/volumes").join(&volume);
    assert_eq!(
        std::fs::read_to_string(volume_dir.join("file")).unwrap(),
        "persisted\n"
    );
    let listed = json(&config, &["volumes", "--json"]);
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == volume.as_str())
        .unwrap_or_else(|| panic!("{volume} not in {listed}"));
    assert_eq!(entry["used_by"], serde_json::json!([]), "{entry}");
    // A second container sees the data (mounted read-only this time), and
    // `volumes` names it while it exists.
    let reader = format!("reader-{pid}");
    agent_ok(
        &config,
        &[
            "run",
            &reader,
            "box:v1",
            "--mount",
            &format!("type=volume,source={volume},target=/data,readonly"),
            "--",
            "/bin/sh",
            "-c",
            "cat /data/file; echo more > /data/file2 2>/dev/null || echo volume-is-readonly; \
             echo end; sleep 1000",
        ],
    );
    let table = agent_ok(&config, &["volumes"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&volume) && l.contains(&reader)),
        "{table}"
    );
    let start = Instant::now();
    let out = loop {
        let out = agent_ok(&config, &["logs", &reader]);
        if out.contains("end") {
            break out;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{out}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(out.contains("persisted"), "{out}");
    assert!(out.contains("volume-is-readonly"), "{out}");
    agent_ok(&config, &["rm", "--force", &reader]);
    assert!(volume_dir.join("file").exists());

    // A bind source that does not exist is refused before anything is
    // created, naming the path.
    let missing = srv.files().join("no-such-dir");
    let err = agent_fails(
        &config,
        &[
            "run",
            &format!("missing-{pid}"),
            "box:v1",
            "--mount",
            &format!("type=bind,source={},target=/x", missing.display()),
        ],
    );
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert!(ps_entry(&config, &format!("missing-{pid}")).is_none());
    // Bad values are refused with the flag named.
    let err = agent_fails(&config, &["run", "x", "box:v1", "--memory", "lots"]);
    assert!(err.contains("--memory"), "{err}");
    let err = agent_fails(&config, &["run", "x", "box:v1", "--cap-add", "FLY"]);
    assert!(err.contains("unknown capability"), "{err}");

    // chown needs CAP_CHOWN: allowed by default, refused after --cap-drop ALL.
    let chown = "touch /tmp/f; chown 1234 /tmp/f && echo chown-ok || echo chown-failed; \
                 grep CapEff /proc/self/status; echo end";
    let out = run_to_end(&config, &format!("caps-default-{pid}"), &[], chown);
    assert!(out.contains("chown-ok"), "{out}");
    assert_eq!(cap_eff(&out), "00000000a80425fb", "{out}");
    let out = run_to_end(
        &config,
        &format!("caps-none-{pid}"),
        &["--cap-drop", "ALL"],
        chown,
    );
    assert!(out.contains("chown-failed"), "{out}");
    assert_eq!(cap_eff(&out), "0000000000000000", "{out}");
    let out = run_to_end(
        &config,
        &format!("caps-one-{pid}"),
        &["--cap-drop", "ALL", "--cap-add", "CHOWN"],
        chown,
    );
    assert!(out.contains("chown-ok"), "{out}");
    assert_eq!(cap_eff(&out), "0000000000000001", "{out}");

    // Privileged: every capability the host can grant (the agent's own
    // bounding set), and a writable /sys.
    let host = std::fs::read_to_string("/proc/self/status").unwrap();
    let host_bounding = host
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .unwrap()
        .trim()
        .to_owned();
    let out = run_to_end(
        &config,
        &format!("privileged-{pid}"),
        &["--privileged"],
        "grep CapEff /proc/self/status; \
         grep ' /sys ' /proc/self/mounts | head -n 1; ls /dev | grep -c . ; echo end",
    );
    assert_eq!(cap_eff(&out), host_bounding, "{out}");
    assert!(out.contains("sysfs /sys sysfs rw"), "{out}");
    assert!(
        ctrd.run_ctr(["containers", "ls", "-q"])
            .unwrap()
            .trim()
            .is_empty()
    );
}
