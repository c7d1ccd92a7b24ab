//! `berth-server admin …`: the operator CLI. It works on the data
//! directory's auth store directly, whether or not the server runs (a
//! running server picks changes up within `auth.refresh_interval_ms`), and
//! reaches the running server's admin socket for online GC. Every command
//! prints one readable result, or JSON with `--json`; secrets come on stdin
//! and are shown once.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use auth::model::{Credential, Role};
use auth::store::AuditQuery;
use auth::{AuthService, service::now_millis};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use server::config::Config;

#[derive(Subcommand, Debug)]
pub enum Admin {
    /// Accounts (tenants), each owning one namespace.
    #[command(subcommand)]
    Account(AccountCmd),
    /// People who sign in to the portal and mint login credentials.
    #[command(subcommand)]
    User(UserCmd),
    /// Robot accounts for CI, authenticating with API keys.
    #[command(subcommand)]
    Robot(RobotCmd),
    /// Registry login credentials (what `docker login -p` takes).
    #[command(subcommand)]
    Credential(CredentialCmd),
    /// Node appliances and their certificates.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Token signing keys.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Show the audit log (newest first).
    Audit {
        /// Only this account's events.
        #[arg(long)]
        account: Option<String>,
        /// Only events of this action (login, token, push, delete, node.enroll, node.revoke).
        #[arg(long)]
        action: Option<String>,
        /// Only events of the last N seconds.
        #[arg(long, value_name = "SECONDS")]
        since_secs: Option<u64>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Run one garbage collection pass now, on the running server.
    Gc,
    /// Remote commands to nodes and their status, through the running
    /// server (pull, run, stop, rm, images, ps, rmi, logs, test, desired).
    #[command(subcommand)]
    Nodes(crate::cli_nodes::NodesCmd),
}

#[derive(Subcommand, Debug)]
pub enum AccountCmd {
    /// Create an account owning NAMESPACE (e.g. acme.example.io).
    Create {
        name: String,
        #[arg(long)]
        namespace: String,
    },
    /// List accounts.
    List,
}

#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Create a user in ACCOUNT with ROLE (admin, developer, reader).
    Create {
        username: String,
        #[arg(long)]
        account: String,
        #[arg(long, default_value = "developer")]
        role: String,
        /// Read the portal password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users and robots of ACCOUNT.
    List {
        #[arg(long)]
        account: String,
    },
    /// Change a user's role.
    SetRole { username: String, role: String },
    /// Set a user's password (first line of stdin).
    Password { username: String },
    /// Disable a user or robot: its credentials and tokens stop working.
    Disable { username: String },
}

#[derive(Subcommand, Debug)]
pub enum RobotCmd {
    /// Create a robot NAME in ACCOUNT; its username is robot+<namespace>+<name>.
    Create {
        name: String,
        #[arg(long)]
        account: String,
        #[arg(long, default_value = "developer")]
        role: String,
    },
    /// Create an API key for a robot (shown once).
    Key {
        username: String,
        /// Expire after this many seconds (default: never; revoke instead).
        #[arg(long)]
        ttl_secs: Option<u64>,
        #[arg(long)]
        description: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum CredentialCmd {
    /// Mint a registry login credential for USERNAME (shown once).
    Mint {
        username: String,
        /// Lifetime in seconds (default and maximum: auth.login_credential_ttl_secs).
        #[arg(long)]
        ttl_secs: Option<u64>,
        #[arg(long)]
        description: Option<String>,
        /// Registry host for the printed `docker login` command.
        #[arg(long, default_value = "localhost:5000")]
        host: String,
    },
    /// List a user's credentials and API keys (never their secrets).
    List { username: String },
    /// Revoke a credential or API key by id.
    Revoke { id: String },
}

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// Enroll node NAME into ACCOUNT: writes node.crt, node.key (unless
    /// --csr) and ca.crt into --out. Enrolling a name again replaces its
    /// certificate.
    Enroll {
        name: String,
        #[arg(long)]
        account: String,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Sign this PEM CSR instead of generating a key (the node keeps its key).
        #[arg(long, value_name = "FILE")]
        csr: Option<PathBuf>,
    },
    /// List the nodes of ACCOUNT.
    List {
        #[arg(long)]
        account: String,
    },
    /// Revoke a node by id: it gets no new token, and its tokens stop working.
    Revoke { id: String },
    /// Print the node CA certificate (PEM).
    Ca,
}

#[derive(Subcommand, Debug)]
pub enum KeysCmd {
    /// Start signing tokens with a new key; the old key verifies until its tokens expire.
    Rotate,
}

/// Flags shared by every admin command.
#[derive(Args, Debug)]
pub struct AdminOpts {
    /// Print results as JSON.
    #[arg(long, global = true)]
    pub json: bool,
}

fn read_stdin_line(what: &str) -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .with_context(|| format!("reading the {what} from stdin"))?;
    let line = line.trim_end_matches(['\r', '\n']).to_owned();
    if line.is_empty() {
        bail!("no {what} on stdin");
    }
    Ok(line)
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

fn credential_json(c: &Credential) -> Value {
    json!({
        "id": c.id,
        "kind": c.kind.as_str(),
        "description": c.description,
        "created_at": rfc3339(c.created_at),
        "expires_at": c.expires_at.map(rfc3339),
        "revoked_at": c.revoked_at.map(rfc3339),
    })
}

/// Prints `value` as JSON, or `text` for people.
fn out(json_mode: bool, value: Value, text: impl FnOnce() -> String) {
    let mut stdout = std::io::stdout().lock();
    let _ = if json_mode {
        writeln!(stdout, "{value}")
    } else {
        writeln!(stdout, "{}", text())
    };
}

fn write_file(path: &Path, contents: &str, private: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

pub async fn run(cfg: &Config, cmd: Admin, opts: AdminOpts) -> anyhow::Result<()> {
    if let Admin::Gc = cmd {
        return gc(cfg, opts.json).await;
    }
    if let Admin::Nodes(n) = cmd {
        return crate::cli_nodes::run(cfg, n, opts.json).await;
    }
    let engine = cfg.metadata_engine()?;
    let store = auth::open_store(&cfg.data_dir, engine.postgres())
        .await
        .context("opening the auth store")?;
    let svc = AuthService::open(store, cfg.auth_config()).await?;
    let j = opts.json;
    match cmd {
        Admin::Account(AccountCmd::Create { name, namespace }) => {
            let a = svc.create_account(&name, &namespace).await?;
            out(j, json!(a), || {
                format!("account {} created with namespace {}", a.name, a.namespace)
            });
        }
        Admin::Account(AccountCmd::List) => {
            let all = svc.accounts().await?;
            out(j, json!(all), || {
                all.iter()
                    .map(|a| format!("{}\t{}", a.name, a.namespace))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        Admin::User(UserCmd::Create {
            username,
            account,
            role,
            password_stdin,
        }) => {
            let password = if password_stdin {
                Some(read_stdin_line("password")?)
            } else {
                None
            };
            let u = svc
                .create_user(
                    &account,
                    &username,
                    Role::parse(&role)?,
                    password.as_deref(),
                )
                .await?;
            out(j, json!(u), || {
                format!(
                    "user {} created in {account} as {}",
                    u.username,
                    u.role.as_str()
                )
            });
        }
        Admin::User(UserCmd::List { account }) => {
            let users = svc.users(&account).await?;
            out(j, json!(users), || {
                users
                    .iter()
                    .map(|u| {
                        let state = if u.disabled_at.is_some() {
                            "disabled"
                        } else {
                            "active"
                        };
                        format!(
                            "{}\t{}\t{}\t{state}",
                            u.username,
                            u.kind.as_str(),
                            u.role.as_str()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        Admin::User(UserCmd::SetRole { username, role }) => {
            svc.set_role(&username, Role::parse(&role)?).await?;
            out(j, json!({"username": username, "role": role}), || {
                format!("{username} is now {role}")
            });
        }
        Admin::User(UserCmd::Password { username }) => {
            svc.set_password(&username, &read_stdin_line("password")?)
                .await?;
            out(j, json!({"username": username}), || {
                format!("password of {username} set")
            });
        }
        Admin::User(UserCmd::Disable { username }) => {
            svc.disable_user(&username).await?;
            out(j, json!({"username": username, "disabled": true}), || {
                format!("{username} disabled")
            });
        }
        Admin::Robot(RobotCmd::Create {
            name,
            account,
            role,
        }) => {
            let u = svc
                .create_robot(&account, &name, Role::parse(&role)?)
                .await?;
            out(j, json!(u), || format!("robot created: {}", u.username));
        }
        Admin::Robot(RobotCmd::Key {
            username,
            ttl_secs,
            description,
        }) => {
            let m = svc
                .create_api_key(
                    &username,
                    ttl_secs.map(Duration::from_secs),
                    description.as_deref(),
                )
                .await?;
            let mut v = credential_json(&m.credential);
            v["secret"] = Value::String(m.secret.clone());
            v["username"] = Value::String(username.clone());
            out(j, v, || {
                format!(
                    "API key {} for {username} (shown once):\n{}",
                    m.credential.id, m.secret
                )
            });
        }
        Admin::Credential(CredentialCmd::Mint {
            username,
            ttl_secs,
            description,
            host,
        }) => {
            let m = svc
                .mint_login_credential(
                    &username,
                    ttl_secs.map(Duration::from_secs),
                    description.as_deref(),
                )
                .await?;
            let login = format!("docker login -u {username} -p {} {host}", m.secret);
            let mut v = credential_json(&m.credential);
            v["secret"] = Value::String(m.secret.clone());
            v["username"] = Value::String(username.clone());
            v["docker_login"] = Value::String(login.clone());
            let expires = m.credential.expires_at.map(rfc3339).unwrap_or_default();
            out(j, v, || {
                format!(
                    "login credential {} for {username}, valid until {expires} (shown once):\n{login}",
                    m.credential.id
                )
            });
        }
        Admin::Credential(CredentialCmd::List { username }) => {
            let creds = svc.credentials(&username).await?;
            let now = now_millis();
            out(
                j,
                json!(creds.iter().map(credential_json).collect::<Vec<_>>()),
                || {
                    creds
                        .iter()
                        .map(|c| {
                            let state = if c.revoked_at.is_some() {
                                "revoked"
                            } else if c.usable_at(now) {
                                "active"
                            } else {
                                "expired"
                            };
                            format!(
                                "{}\t{}\t{state}\t{}",
                                c.id,
                                c.kind.as_str(),
                                c.description.as_deref().unwrap_or("")
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                },
            );
        }
        Admin::Credential(CredentialCmd::Revoke { id }) => {
            if !svc.revoke_credential(&id).await? {
                bail!("credential {id:?} not found or already revoked");
            }
            out(j, json!({"id": id, "revoked": true}), || {
                format!("credential {id} revoked")
            });
        }
        Admin::Node(NodeCmd::Enroll {
            name,
            account,
            out: dir,
            csr,
        }) => {
            let csr = csr
                .map(|p| {
                    std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
                })
                .transpose()?;
            let e = svc.enroll_node(&account, &name, csr.as_deref()).await?;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            write_file(&dir.join("node.crt"), &e.cert_pem, false)?;
            write_file(&dir.join("ca.crt"), &e.ca_pem, false)?;
            if let Some(key) = &e.key_pem {
                write_file(&dir.join("node.key"), key, true)?;
            }
            out(
                j,
                json!({"node": e.node, "dir": dir.display().to_string()}),
                || {
                    format!(
                        "node {} enrolled as {}; certificate in {}",
                        e.node.name,
                        e.node.id,
                        dir.display()
                    )
                },
            );
        }
        Admin::Node(NodeCmd::List { account }) => {
            let nodes = svc.nodes(&account).await?;
            out(j, json!(nodes), || {
                nodes
                    .iter()
                    .map(|n| {
                        let state = if n.revoked_at.is_some() {
                            "revoked"
                        } else {
                            "active"
                        };
                        format!(
                            "{}\t{}\t{state}\tenrolled {}",
                            n.id,
                            n.name,
                            rfc3339(n.enrolled_at)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        Admin::Node(NodeCmd::Revoke { id }) => {
            if !svc.revoke_node(&id).await? {
                bail!("node {id:?} not found or already revoked");
            }
            out(j, json!({"id": id, "revoked": true}), || {
                format!("node {id} revoked")
            });
        }
        Admin::Node(NodeCmd::Ca) => {
            let pem = svc.node_ca_pem().to_owned();
            out(j, json!({"certificate": pem}), || pem.trim_end().to_owned());
        }
        Admin::Keys(KeysCmd::Rotate) => {
            let kid = svc.rotate_signing_key().await?;
            out(j, json!({"kid": kid}), || {
                format!("now signing with key {kid}")
            });
        }
        Admin::Audit {
            account,
            action,
            since_secs,
            limit,
        } => {
            let account_id = match account {
                Some(a) => Some(svc.account(&a).await?.id),
                None => None,
            };
            let q = AuditQuery {
                account_id,
                since: since_secs.map(|s| now_millis() - (s as i64) * 1000),
                action,
                limit,
            };
            let events = svc.audit_log(&q).await?;
            out(j, json!(events), || {
                events
                    .iter()
                    .map(|e| {
                        format!(
                            "{}\t{}\t{}\t{}\t{}\t{}",
                            rfc3339(e.at),
                            e.actor,
                            e.action,
                            e.outcome,
                            e.target.as_deref().unwrap_or("-"),
                            e.source.as_deref().unwrap_or("-")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        // Handled above, before the auth store is opened.
        Admin::Gc | Admin::Nodes(_) => {}
    }
    Ok(())
}

/// Asks the running server, over its admin socket, for a GC pass.
async fn gc(cfg: &Config, json_mode: bool) -> anyhow::Result<()> {
    use http_body_util::{BodyExt, Empty};
    let path = cfg.admin_socket_path();
    let stream = tokio::net::UnixStream::connect(&path)
        .await
        .with_context(|| {
            format!(
                "connecting to {} (is berth-server running?)",
                path.display()
            )
        })?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::post("/api/v1/gc")
        .header(hyper::header::HOST, "localhost")
        .body(Empty::<bytes::Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if status == hyper::StatusCode::CONFLICT {
        bail!("another berth-server replica is collecting garbage now; try again when it is done");
    }
    if !status.is_success() {
        bail!(
            "garbage collection failed: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }
    let v: Value = serde_json::from_slice(&body)?;
    out(json_mode, v.clone(), || {
        format!(
            "reclaimed {} blobs ({} bytes), {} manifests, {} orphaned files, {} uploads",
            v["blobs"], v["bytes"], v["manifests"], v["orphans"], v["uploads"]
        )
    });
    Ok(())
}
