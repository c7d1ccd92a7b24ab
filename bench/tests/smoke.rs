//! Smoke test of `berth-bench`: a fast subset (`--quick --only
//! manifest-get`) against the real servers, so the bench cannot rot
//! silently. It runs `berth-server` from the same target directory and
//! profile as this test (`cargo build --bins` first, as for every
//! integration test), or from `BERTH_BIN_DIR`.

use std::process::Command;

#[test]
fn quick_manifest_get_runs_and_reports_json() {
    let out = Command::new(env!("CARGO_BIN_EXE_berth-bench"))
        .args([
            "--quick",
            "--only",
            "manifest-get",
            "--wrk-duration",
            "1",
            "--json",
        ])
        .output()
        .expect("running berth-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "berth-bench failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains("manifest-get"),
        "no progress on stderr:\n{stderr}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"));
    let rows = json["results"].as_array().expect("a results array");
    let get = rows
        .iter()
        .find(|r| r["measure"] == "manifest-get" && r["unit"] == "req/s")
        .unwrap_or_else(|| panic!("no manifest GET row in {json:#}"));
    for side in ["berth", "distribution", "ratio"] {
        let v = get[side].as_f64().unwrap_or_default();
        assert!(v > 0.0, "{side} is {v} in {get:#}");
    }
    assert!(get["met"].is_boolean(), "{get:#}");
    assert!(
        rows.iter().all(|r| r["measure"] == "manifest-get"),
        "--only ran other measurements: {json:#}"
    );
}

#[test]
fn help_explains_every_measurement() {
    let out = Command::new(env!("CARGO_BIN_EXE_berth-bench"))
        .arg("--help")
        .output()
        .expect("running berth-bench --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for name in [
        "dd",
        "push",
        "push-chunked",
        "pull",
        "manifest-get",
        "manifest-put",
        "tags",
        "catalog",
        "rss",
    ] {
        assert!(
            help.contains(&format!("\n  {name} ")),
            "--help does not explain {name}:\n{help}"
        );
    }
}
