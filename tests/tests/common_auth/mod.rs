//! Shared set-up of the account tests (`auth_clients.rs`, `auth_matrix.rs`,
//! `node_auth.rs`): a `berth-server` with accounts on and a node endpoint,
//! driven the way an operator drives it — through the `berth-server admin`
//! CLI (`--json`) on the same data directory — plus the small protocol
//! helpers those tests share (token requests, JWT decoding, mTLS clients for
//! the node endpoint, pushing as a given user).
//!
//! Each test file compiles this module on its own and uses part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use reqwest::{Response, StatusCode, Url};
use serde_json::Value;
use tempfile::TempDir;
use test_support::images::LayerBuilder;
use test_support::{Arch, BerthServer, Image, ImageBuilder, OciClient, workspace_bin};

/// The service name of challenges and token audiences (the default).
pub const SERVICE: &str = "berth-registry";
/// The two tenants every test creates.
pub const ACME: &str = "acme";
pub const ACME_NS: &str = "acme.example.io";
pub const GLOBEX: &str = "globex";
pub const GLOBEX_NS: &str = "globex.example.io";

/// A username and the secret it logs in with (a login credential or a
/// robot's API key), with the credential's id for `credential revoke`.
#[derive(Clone, Debug)]
pub struct Cred {
    pub username: String,
    pub secret: String,
    pub id: String,
}

/// The users every test gets, created through the CLI.
#[derive(Clone, Debug)]
pub struct Tenants {
    pub acme_admin: Cred,
    pub acme_dev: Cred,
    pub acme_reader: Cred,
    /// `robot+acme.example.io+ci`, developer role, with an API key.
    pub acme_robot: Cred,
    pub globex_admin: Cred,
    pub globex_dev: Cred,
}

/// A node enrolled with `admin node enroll`: what it wrote into `--out`.
#[derive(Clone, Debug)]
pub struct Enrolled {
    pub id: String,
    pub name: String,
    pub dir: PathBuf,
    pub cert_pem: String,
    /// Absent when enrolled with `--csr`: the node keeps its own key.
    pub key_pem: Option<String>,
    pub ca_pem: String,
}

/// `berth-server serve` with accounts on (`BERTH_AUTH__ENABLED=true`) and a
/// node endpoint on an ephemeral port (`BERTH_NODES__LISTEN=127.0.0.1:0`,
/// `--node-addr-file`).
#[derive(Debug)]
pub struct AuthServer {
    pub server: BerthServer,
    /// The node endpoint (mTLS).
    pub node_addr: SocketAddr,
    /// Plain HTTP client for the main endpoint.
    pub http: reqwest::Client,
    files: TempDir,
    env: Vec<(String, String)>,
    enrolments: std::sync::atomic::AtomicU32,
}

impl AuthServer {
    /// A server with the default auth settings.
    pub fn start() -> AuthServer {
        Self::start_with(&[])
    }

    /// A server with extra `BERTH_*` settings; the admin CLI gets the same
    /// environment, as an operator's CLI reads the same configuration.
    pub fn start_with(extra_env: &[(&str, &str)]) -> AuthServer {
        let files = tempfile::Builder::new()
            .prefix("berth-auth-")
            .tempdir()
            .expect("temp dir");
        let node_addr_file = files.path().join("node-addr");
        let mut env: Vec<(String, String)> = vec![
            ("BERTH_AUTH__ENABLED".into(), "true".into()),
            ("BERTH_NODES__LISTEN".into(), "127.0.0.1:0".into()),
        ];
        env.extend(
            extra_env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let mut builder = BerthServer::builder()
            .arg("--node-addr-file")
            .arg(&node_addr_file);
        for (k, v) in &env {
            builder = builder.env(k, v);
        }
        let server = builder.start();
        // The admin CLI works on the same auth store (PostgreSQL in the
        // `*_postgres` targets).
        env.extend(server.metadata_env().iter().cloned());
        // The node address is written before the main one, which `start`
        // waited for.
        let node_addr: SocketAddr = std::fs::read_to_string(&node_addr_file)
            .expect("node address file")
            .trim()
            .parse()
            .expect("node address");
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .expect("reqwest client");
        AuthServer {
            server,
            node_addr,
            http,
            files,
            env,
            enrolments: std::sync::atomic::AtomicU32::new(0),
        }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.server.host()
    }

    /// The realm every challenge must name.
    pub fn realm(&self) -> String {
        format!("{}/auth/token", self.url())
    }

    pub fn data_dir(&self) -> &Path {
        self.server.data_dir()
    }

    /// A scratch directory living as long as the server.
    pub fn files(&self) -> &Path {
        self.files.path()
    }

    /// `berth-server admin --data-dir DIR --json ARGS…` with the server's
    /// environment plus `extra_env`.
    pub fn admin_command(&self, args: &[&str], extra_env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(workspace_bin("berth-server"));
        cmd.arg("admin")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--json")
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(extra_env.iter().copied())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        cmd
    }

    fn admin_output(&self, args: &[&str], extra_env: &[(&str, &str)]) -> Output {
        let mut cmd = self.admin_command(args, extra_env);
        cmd.output()
            .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
    }

    /// Runs an admin command that must succeed; its JSON output.
    pub fn admin(&self, args: &[&str]) -> Value {
        self.admin_env(args, &[])
    }

    pub fn admin_env(&self, args: &[&str], extra_env: &[(&str, &str)]) -> Value {
        let out = self.admin_output(args, extra_env);
        assert!(
            out.status.success(),
            "berth-server admin {args:?} failed with {}:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "berth-server admin {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Runs an admin command that must fail; its stderr.
    pub fn admin_fails(&self, args: &[&str]) -> String {
        let out = self.admin_output(args, &[]);
        assert!(
            !out.status.success(),
            "berth-server admin {args:?} should have failed; printed {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `admin credential mint USERNAME`.
    pub fn mint(&self, username: &str) -> Cred {
        let v = self.admin(&["credential", "mint", username]);
        Cred {
            username: username.to_owned(),
            secret: str_field(&v, "secret"),
            id: str_field(&v, "id"),
        }
    }

    /// `admin user create USERNAME --account ACCOUNT --role ROLE`, then a
    /// login credential for it.
    pub fn user(&self, account: &str, username: &str, role: &str) -> Cred {
        let v = self.admin(&[
            "user",
            "create",
            username,
            "--account",
            account,
            "--role",
            role,
        ]);
        assert_eq!(v["username"], username);
        assert_eq!(v["role"], role);
        self.mint(username)
    }

    /// Two accounts with users of every role, and a robot with an API key.
    pub fn setup_tenants(&self) -> Tenants {
        for (name, ns) in [(ACME, ACME_NS), (GLOBEX, GLOBEX_NS)] {
            let v = self.admin(&["account", "create", name, "--namespace", ns]);
            assert_eq!(v["namespace"], ns);
        }
        let robot = self.admin(&[
            "robot",
            "create",
            "ci",
            "--account",
            ACME,
            "--role",
            "developer",
        ]);
        let robot_name = str_field(&robot, "username");
        assert_eq!(robot_name, format!("robot+{ACME_NS}+ci"));
        let key = self.admin(&["robot", "key", &robot_name, "--description", "CI"]);
        Tenants {
            acme_admin: self.user(ACME, "acme-admin", "admin"),
            acme_dev: self.user(ACME, "acme-dev", "developer"),
            acme_reader: self.user(ACME, "acme-reader", "reader"),
            acme_robot: Cred {
                username: robot_name,
                secret: str_field(&key, "secret"),
                id: str_field(&key, "id"),
            },
            globex_admin: self.user(GLOBEX, "globex-admin", "admin"),
            globex_dev: self.user(GLOBEX, "globex-dev", "developer"),
        }
    }

    /// `admin node enroll NAME --account ACCOUNT --out DIR [--csr FILE]`.
    pub fn enroll(&self, name: &str, account: &str, csr_pem: Option<&str>) -> Enrolled {
        let n = self
            .enrolments
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let dir = self.files().join(format!("node-{name}-{n}"));
        let dir_s = dir.display().to_string();
        let mut args = vec![
            "node",
            "enroll",
            name,
            "--account",
            account,
            "--out",
            &dir_s,
        ];
        let csr_path = self.files().join(format!("node-{name}-{n}.csr"));
        let csr_s = csr_path.display().to_string();
        if let Some(csr) = csr_pem {
            std::fs::write(&csr_path, csr).expect("writing the CSR");
            args.extend(["--csr", &csr_s]);
        }
        let v = self.admin(&args);
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
        Enrolled {
            id: str_field(&v["node"], "id"),
            name: name.to_owned(),
            cert_pem: read("node.crt").expect("node.crt written"),
            key_pem: read("node.key"),
            ca_pem: read("ca.crt").expect("ca.crt written"),
            dir,
        }
    }

    /// `GET /auth/token?service=…&scope=…` with Basic credentials.
    pub async fn token_response(&self, username: &str, secret: &str, scopes: &[&str]) -> Response {
        let mut url = Url::parse(&self.realm()).expect("realm URL");
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("service", SERVICE);
            for s in scopes {
                q.append_pair("scope", s);
            }
        }
        self.http
            .get(url)
            .basic_auth(username, Some(secret))
            .send()
            .await
            .expect("token request")
    }

    /// A token for `cred` asking for `scopes`; panics unless 200.
    pub async fn token(&self, cred: &Cred, scopes: &[&str]) -> String {
        let resp = self
            .token_response(&cred.username, &cred.secret, scopes)
            .await;
        let status = resp.status();
        let body: Value = resp.json().await.expect("token JSON");
        assert_eq!(
            status,
            StatusCode::OK,
            "token for {}: {body}",
            cred.username
        );
        str_field(&body, "token")
    }

    /// An OCI client on the main endpoint sending `token`.
    pub fn client(&self, token: &str) -> OciClient {
        OciClient::with_http_client(&self.url(), self.http.clone()).bearer_token(token)
    }

    /// Pushes `image` as `cred` (a token for `pull,push` on `repo`).
    pub async fn push_as(&self, cred: &Cred, repo: &str, image: &Image, tag: &str) {
        let token = self.token(cred, &[&repo_scope(repo, "pull,push")]).await;
        self.client(&token)
            .push_image(repo, image, tag)
            .await
            .unwrap_or_else(|e| panic!("pushing {repo}:{tag} as {}: {e:#}", cred.username));
    }

    /// `https://127.0.0.1:NODE_PORT/auth/node-token?service=…&scope=…`.
    pub fn node_token_url(&self, scopes: &[&str]) -> Url {
        let mut url = Url::parse(&format!("https://{}/auth/node-token", self.node_addr))
            .expect("node token URL");
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("service", SERVICE);
            for s in scopes {
                q.append_pair("scope", s);
            }
        }
        url
    }

    /// A node token for `node` (its key in `key_pem` when enrolled with a
    /// CSR); panics unless the node endpoint answers 200.
    pub async fn node_token(
        &self,
        node: &Enrolled,
        key_pem: Option<&str>,
        scopes: &[&str],
    ) -> String {
        let key = key_pem
            .or(node.key_pem.as_deref())
            .expect("the node's private key");
        let client = node_client(&node.ca_pem, Some((&node.cert_pem, key)));
        let resp = client
            .get(self.node_token_url(scopes))
            .send()
            .await
            .expect("node token request");
        let status = resp.status();
        let body: Value = resp.json().await.expect("node token JSON");
        assert_eq!(
            status,
            StatusCode::OK,
            "node token for {}: {body}",
            node.name
        );
        str_field(&body, "token")
    }
}

/// `repository:REPO:ACTIONS`.
pub fn repo_scope(repo: &str, actions: &str) -> String {
    format!("repository:{repo}:{actions}")
}

/// A string field of a JSON object; panics naming the field.
pub fn str_field(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string {key:?} in {v}"))
        .to_owned()
}

/// A reqwest client for the node endpoint: trusts only `ca_pem` and
/// presents `identity` (certificate PEM, key PEM) when given.
pub fn node_client(ca_pem: &str, identity: Option<(&str, &str)>) -> reqwest::Client {
    try_node_client(ca_pem, identity).expect("node endpoint client")
}

/// [`node_client`], failing when reqwest refuses the identity (a key that
/// does not match the certificate).
pub fn try_node_client(
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> reqwest::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("CA certificate PEM"),
        )
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(20));
    if let Some((cert, key)) = identity {
        let pem = format!("{key}\n{cert}");
        builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes())?);
    }
    builder.build()
}

/// The decoded header and claims of a JWT (no verification: tests inspect
/// what the server issued).
pub fn jwt_parts(token: &str) -> (Value, Value) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a JWS compact token: {token}");
    let decode = |p: &str| -> Value {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .unwrap_or_else(|e| panic!("JWT part is not base64url: {e}"));
        serde_json::from_slice(&raw).unwrap_or_else(|e| panic!("JWT part is not JSON: {e}"))
    };
    (decode(parts[0]), decode(parts[1]))
}

/// A small single-layer OCI image, distinct per `seed`.
pub fn small_image(seed: &str) -> Image {
    let layer = LayerBuilder::new()
        .file(
            "etc/berth-test",
            0o644,
            Bytes::from(format!("content of {seed}\n")),
        )
        .build();
    ImageBuilder::new(Arch::Amd64).layer(layer).build()
}
