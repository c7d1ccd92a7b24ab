//! The portal in a real browser: headless Chromium driven through
//! chromedriver (WebDriver, with fantoccini) against a real `berth-server`
//! with accounts on.
//!
//! An account and an admin are made with the operator CLI, a busybox image
//! is pushed with skopeo under two tags of one digest, then in the browser:
//! a failed and a successful sign-in; the image on the Repositories page;
//! the Docker Login button's command, run with the real docker CLI; the
//! repository page's tags, digests and pull URIs; deleting one tag by typing
//! its name (a wrong name keeps Confirm disabled) while the other tag of the
//! digest stays; deleting the repository; sign-out. Each page is saved as a
//! PNG under `$BERTH_ARTIFACTS_DIR/portal` (default
//! `target/test-artifacts/portal`) for a person to look at.
#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use test_support::{
    Arch, BerthServer, Skopeo, busybox_image, free_port, require_tool, wait_for_tcp, workspace_bin,
    write_oci_layout,
};

const NS: &str = "acme.example.io";
const PASSWORD: &str = "browser-test-password";

/// `berth-server admin --data-dir D ARGS…` with `stdin`, returning stdout.
fn admin(server: &BerthServer, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(workspace_bin("berth-server"))
        .arg("admin")
        .arg("--data-dir")
        .arg(server.data_dir())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "admin {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// chromedriver on a free port, killed on drop.
struct ChromeDriver {
    child: Child,
    port: u16,
}

impl ChromeDriver {
    fn start() -> ChromeDriver {
        let port = free_port();
        let child = Command::new(require_tool("chromedriver"))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_tcp(([127, 0, 0, 1], port).into(), Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("chromedriver did not listen: {e:#}"));
        ChromeDriver { child, port }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &ChromeDriver, profile: &Path) -> Client {
    let chromium = require_tool("chromium");
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", "--disable-quic", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,1000",
                format!("--user-data-dir={}", profile.display()),
            ],
        },
    });
    let Value::Object(caps) = caps else {
        unreachable!()
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .unwrap_or_else(|e| panic!("starting Chromium through chromedriver: {e}"))
}

fn artifacts_dir() -> PathBuf {
    let dir = match std::env::var_os("BERTH_ARTIFACTS_DIR") {
        Some(d) => PathBuf::from(d).join("portal"),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts/portal"),
    };
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    let path = artifacts_dir().join(format!("{name}.png"));
    std::fs::write(&path, png).unwrap();
    println!("screenshot: {}", path.display());
}

async fn css(c: &Client, selector: &str) -> fantoccini::elements::Element {
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(selector))
        .await
        .unwrap_or_else(|e| panic!("{selector} did not appear: {e}"))
}

async fn text(c: &Client, selector: &str) -> String {
    css(c, selector).await.text().await.unwrap()
}

async fn page_text(c: &Client) -> String {
    text(c, "body").await
}

/// Polls until the confirm button's enabled state is `enabled`.
async fn confirm_enabled(c: &Client) -> bool {
    css(c, "#delete-confirm").await.is_enabled().await.unwrap()
}

/// Opens Actions → Delete and types `typed` into the confirmation field.
async fn start_delete(c: &Client, typed: &str) {
    css(c, "#actions summary").await.click().await.unwrap();
    css(c, "#action-delete").await.click().await.unwrap();
    let input = css(c, "#delete-items input").await;
    input.send_keys(typed).await.unwrap();
}

fn docker_login(command: &str) -> std::process::Output {
    let parts: Vec<&str> = command.split_whitespace().collect();
    assert_eq!(&parts[..2], ["docker", "login"], "{command}");
    let config = tempfile::tempdir().unwrap();
    Command::new(require_tool("docker"))
        .args(&parts[1..])
        .env("DOCKER_CONFIG", config.path())
        .output()
        .unwrap()
}

#[tokio::test]
async fn portal_in_chromium_lists_logs_in_and_deletes() {
    require_tool("chromium");
    require_tool("chromedriver");
    require_tool("docker");
    let files = tempfile::tempdir().unwrap();
    let node_addr_file = files.path().join("node-addr");
    let server = BerthServer::builder()
        .env("BERTH_AUTH__ENABLED", "true")
        .env("BERTH_NODES__LISTEN", "127.0.0.1:0")
        .env("BERTH_NODES__HEARTBEAT_SECS", "1")
        .arg("--node-addr-file")
        .arg(&node_addr_file)
        .start();
    let host = server.host();
    admin(
        &server,
        &["account", "create", "acme", "--namespace", NS],
        None,
    );
    admin(
        &server,
        &[
            "user",
            "create",
            "alice",
            "--account",
            "acme",
            "--role",
            "admin",
            "--password-stdin",
        ],
        Some(&format!("{PASSWORD}\n")),
    );
    let minted: Value = serde_json::from_str(&admin(
        &server,
        &["--json", "credential", "mint", "alice", "--host", &host],
        None,
    ))
    .unwrap();
    let secret = minted["secret"].as_str().unwrap();

    // Push busybox as 1.36 and latest: one digest, two tags.
    let skopeo = Skopeo::new();
    let image = busybox_image(Arch::Amd64);
    let layout = tempfile::tempdir().unwrap();
    write_oci_layout(layout.path(), &[("1.36", (&image).into())]).unwrap();
    let creds = format!("alice:{secret}");
    for tag in ["1.36", "latest"] {
        skopeo
            .copy(
                &format!("oci:{}:1.36", layout.path().display()),
                &format!("docker://{host}/{NS}/busybox:{tag}"),
                &["--dest-creds", &creds],
            )
            .unwrap();
    }

    let driver = ChromeDriver::start();
    let profile = tempfile::tempdir().unwrap();
    let c = browser(&driver, profile.path()).await;
    let base = server.url();

    // Sign in: a wrong password first.
    c.goto(&format!("{base}/repositories")).await.unwrap();
    assert!(c.current_url().await.unwrap().path().ends_with("/login"));
    css(&c, "#username").await.send_keys("alice").await.unwrap();
    css(&c, "#password").await.send_keys("wrong").await.unwrap();
    css(&c, "#sign-in").await.click().await.unwrap();
    assert_eq!(
        text(&c, "#signin-error").await,
        "Wrong username or password."
    );
    screenshot(&c, "01-sign-in-error").await;
    css(&c, "#password")
        .await
        .send_keys(PASSWORD)
        .await
        .unwrap();
    css(&c, "#sign-in").await.click().await.unwrap();

    // The Repositories page lists the image at once.
    let link = css(&c, &format!("a[href='/repositories/{NS}/busybox']")).await;
    let body = page_text(&c).await;
    assert!(body.contains(&format!("{NS}/busybox")), "{body}");
    assert!(body.contains("linux/amd64"), "{body}");
    assert!(body.contains("Showing 1–1 of 1"), "{body}");
    assert_eq!(text(&c, "#namespace-name").await, NS);
    let cells: Vec<String> = {
        let row = css(&c, "#repositories tbody tr").await;
        let mut v = Vec::new();
        for td in row.find_all(Locator::Css("td")).await.unwrap() {
            v.push(td.text().await.unwrap());
        }
        v
    };
    assert_eq!(cells[2], "2", "tag count: {cells:?}");
    assert!(
        cells[3].ends_with("KiB") || cells[3].ends_with("MiB"),
        "size: {cells:?}"
    );
    assert!(cells[4].ends_with("UTC"), "last push: {cells:?}");
    screenshot(&c, "02-repositories").await;

    // Docker Login: the button mints a credential; the command works.
    css(&c, "#mint-login").await.click().await.unwrap();
    css(&c, "#login-result:not([hidden])").await;
    let command = text(&c, "#login-command").await;
    assert!(
        command.starts_with("docker login -u alice -p bcl_") && command.ends_with(&host),
        "{command}"
    );
    screenshot(&c, "03-docker-login").await;
    let out = docker_login(&command);
    assert!(
        out.status.success(),
        "{command}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Login Succeeded"));

    // The repository: tags, digests and pull URIs.
    link.click().await.unwrap();
    css(&c, "#tags").await;
    let mut tags = Vec::new();
    for row in c.find_all(Locator::Css("#tags tbody tr")).await.unwrap() {
        let tag = row.attr("data-tag").await.unwrap().unwrap();
        let digest = row
            .find(Locator::Css("[data-digest]"))
            .await
            .unwrap()
            .attr("data-digest")
            .await
            .unwrap()
            .unwrap();
        let by_tag = row
            .find(Locator::Css(".pull-tag"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let by_digest = row
            .find(Locator::Css(".pull-digest"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        tags.push((tag, digest, by_tag, by_digest));
    }
    assert_eq!(tags.len(), 2, "{tags:?}");
    for (tag, digest, by_tag, by_digest) in &tags {
        assert_eq!(digest, &image.digest);
        assert_eq!(by_tag, &format!("{host}/{NS}/busybox:{tag}"));
        assert_eq!(by_digest, &format!("{host}/{NS}/busybox@{}", image.digest));
    }
    assert_eq!(tags[0].0, "1.36");
    assert_eq!(tags[1].0, "latest");
    screenshot(&c, "04-repository").await;

    // Delete the tag "latest": a wrong name keeps Confirm disabled.
    css(&c, "input.select[value='latest']")
        .await
        .click()
        .await
        .unwrap();
    assert_eq!(text(&c, "#selection-count").await, "1 selected");
    start_delete(&c, "lates").await;
    assert!(
        !confirm_enabled(&c).await,
        "Confirm enabled for a wrong name"
    );
    css(&c, "#delete-items input")
        .await
        .send_keys("t-")
        .await
        .unwrap();
    assert!(!confirm_enabled(&c).await);
    screenshot(&c, "05-delete-tag-wrong-name").await;
    let input = css(&c, "#delete-items input").await;
    input.clear().await.unwrap();
    input.send_keys("latest").await.unwrap();
    assert!(
        confirm_enabled(&c).await,
        "Confirm disabled for the right name"
    );
    screenshot(&c, "06-delete-tag-confirm").await;
    css(&c, "#delete-confirm").await.click().await.unwrap();
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#tags tbody tr[data-tag='1.36']:only-child"))
        .await
        .unwrap();
    let remaining = c.find_all(Locator::Css("#tags tbody tr")).await.unwrap();
    assert_eq!(remaining.len(), 1);
    let digest = text(&c, "#tags .pull-digest").await;
    assert_eq!(digest, format!("{host}/{NS}/busybox@{}", image.digest));
    // The registry agrees: only that tag went.
    let listed: Value = serde_json::from_slice(
        &skopeo
            .run([
                "list-tags",
                "--tls-verify=false",
                "--creds",
                &creds,
                &format!("docker://{host}/{NS}/busybox"),
            ])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(listed["Tags"], json!(["1.36"]));
    screenshot(&c, "07-after-tag-delete").await;

    // Delete the repository from the Repositories page.
    css(&c, ".crumbs a").await.click().await.unwrap();
    css(&c, &format!("input.select[value='{NS}/busybox']"))
        .await
        .click()
        .await
        .unwrap();
    start_delete(&c, "busybox").await;
    assert!(
        !confirm_enabled(&c).await,
        "Confirm enabled for a partial name"
    );
    css(&c, "#delete-items input").await.clear().await.unwrap();
    css(&c, "#delete-items input")
        .await
        .send_keys(&format!("{NS}/busybox"))
        .await
        .unwrap();
    assert!(confirm_enabled(&c).await);
    screenshot(&c, "08-delete-repository-confirm").await;
    css(&c, "#delete-confirm").await.click().await.unwrap();
    css(&c, "#listing .empty").await;
    let body = page_text(&c).await;
    assert!(body.contains("No repositories yet."), "{body}");
    screenshot(&c, "09-after-repository-delete").await;
    let err = skopeo
        .run([
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--creds",
            &creds,
            &format!("docker://{host}/{NS}/busybox:1.36"),
        ])
        .unwrap_err();
    assert!(format!("{err:#}").contains("manifest unknown"), "{err:#}");

    // Nodes: an enrolled node connected (a stand-in agent: the real client
    // library, no containerd) shows online; its page pulls with live
    // progress and shows the result.
    let node_dir = files.path().join("node");
    let enrolled: Value = serde_json::from_str(&admin(
        &server,
        &[
            "--json",
            "node",
            "enroll",
            "edge-1",
            "--account",
            "acme",
            "--out",
            node_dir.to_str().unwrap(),
        ],
        None,
    ))
    .unwrap();
    let node_id = enrolled["node"]["id"].as_str().unwrap().to_owned();
    let read = |f: &str| std::fs::read_to_string(node_dir.join(f)).unwrap();
    let node_addr = std::fs::read_to_string(&node_addr_file).unwrap();
    let cfg = control_plane_client::ClientConfig::new(
        format!("https://{}", node_addr.trim()),
        read("ca.crt"),
        read("node.crt"),
        read("node.key"),
    );
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut stand_in = control_plane_client::stand_in::spawn(cfg, stop);
    stand_in.connected(Duration::from_secs(30)).await.unwrap();
    c.goto(&format!("{base}/nodes")).await.unwrap();
    let row = css(&c, &format!("tr[data-node='{node_id}']")).await;
    let row_text = row.text().await.unwrap();
    assert!(row_text.contains("edge-1"), "{row_text}");
    assert!(row_text.contains("online"), "{row_text}");
    screenshot(&c, "10-nodes").await;
    css(&c, &format!("a[href='/nodes/{node_id}']"))
        .await
        .click()
        .await
        .unwrap();
    css(&c, "#pull-image")
        .await
        .send_keys("busybox:1.36")
        .await
        .unwrap();
    css(&c, "#pull-button").await.click().await.unwrap();
    let mut shown = String::new();
    for _ in 0..100 {
        shown = text(&c, "#pull-message").await;
        if shown.starts_with("Pulled") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(shown.contains("Pulled busybox:1.36"), "{shown}");
    assert_eq!(text(&c, "#pull-state").await, "succeeded");
    screenshot(&c, "11-node-pull").await;
    assert_eq!(
        stand_in.handler.received().len(),
        1,
        "one pull reached the node"
    );
    let _ = stop_tx.send(true);

    // Sign out: back to the sign-in page, and the pages need a new sign-in.
    css(&c, "#sign-out").await.click().await.unwrap();
    css(&c, "#sign-in").await;
    c.goto(&format!("{base}/repositories")).await.unwrap();
    css(&c, "#sign-in").await;
    c.close().await.unwrap();
}
