//! Bridge networking for containers, through the standard CNI plugins
//! (Debian's containernetworking-plugins: `loopback`, `bridge` with
//! `host-local` addresses, `portmap`, `firewall`).
//!
//! **Why by hand.** This is the runtime side of CNI (what Go's `libcni`
//! does for containerd's CRI and nerdctl): run each plugin of a list with
//! the `CNI_*` environment and the network's JSON on stdin, feed each one
//! the previous one's result, keep the last result for `DEL`. No
//! maintained Rust crate implements that side (the `cni-plugin` crate is
//! for writing plugins; netavark speaks its own protocol), and the
//! protocol is small.
//!
//! **Lifetime.** runc creates the container's network namespace at task
//! create; the runtime attaches it here (`ADD`, through
//! `/proc/<pid>/ns/net`) before the task starts, and detaches (`DEL`) when
//! the task has ended (stop, rm, or before a new task of the same name).
//! By then the namespace is gone with its last process, so `DEL` runs
//! without one: `host-local` frees the address and `portmap` its chains by
//! container id, `firewall` its rules by the addresses of the saved
//! result. The `bridge` plugin can only undo its per-container masquerade
//! rule from inside the namespace, so it is not asked for one; the agent
//! keeps one masquerade rule for the whole subnet instead (as Docker does
//! for its bridge).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::RuntimeError;
use super::settings::{NetworkMode, PortMapping};
use crate::config::NetworkSettings;

/// The CNI spec version the agent speaks; the plugins of Debian 12
/// (1.1.1) and later understand it.
const CNI_VERSION: &str = "1.0.0";
/// The network's name in every plugin's configuration.
const NETWORK_NAME: &str = "berth";
/// A plugin that has not answered in this long is killed.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest plugin answer read.
const MAX_PLUGIN_OUTPUT: usize = 1 << 20;
/// The comment on the agent's masquerade rule, which makes it findable.
const MASQUERADE_COMMENT: &str = "berth-agent bridge masquerade";

fn invalid(msg: String) -> RuntimeError {
    RuntimeError::Invalid(msg)
}

/// An IPv4 subnet in CIDR notation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    /// `10.87.0.0/16`: a network address (no host bits set) and a prefix
    /// of 8 to 30 bits, so there is room for a gateway and containers.
    pub fn parse(s: &str) -> Result<Subnet, String> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not in CIDR notation (10.87.0.0/16)"))?;
        let network: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (8..=30).contains(p))
            .ok_or_else(|| format!("prefix {prefix:?}: want 8 to 30"))?;
        let mask = u32::MAX << (32 - u32::from(prefix));
        if u32::from(network) & !mask != 0 {
            return Err(format!(
                "{s}: host bits set (the network is {}/{prefix})",
                Ipv4Addr::from(u32::from(network) & mask)
            ));
        }
        Ok(Subnet { network, prefix })
    }

    /// The bridge's own address, the containers' gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// What Linux accepts as an interface name (and nothing that could be an
/// option to a command).
pub fn valid_interface_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
        && !name.starts_with(['-', '.'])
}

/// What an attachment left behind, kept beside the container until it
/// is detached.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Attachment {
    pub mode: NetworkMode,
    /// The container's address on the bridge.
    pub address: Option<Ipv4Addr>,
    pub ports: Vec<PortMapping>,
    /// The last plugin's result: `DEL`'s `prevResult`.
    pub result: Option<Value>,
}

/// One plugin of the bridge network's list, in `ADD` order.
struct Plugin {
    typ: &'static str,
    conf: Value,
}

/// Runs the CNI plugins for the containers of one agent.
#[derive(Clone, Debug)]
pub struct Cni {
    bin_dirs: Vec<PathBuf>,
    bridge: String,
    subnet: Subnet,
    /// host-local's leases.
    ipam_dir: PathBuf,
}

impl Cni {
    pub fn new(settings: &NetworkSettings, data_dir: &Path) -> Result<Cni, RuntimeError> {
        let subnet =
            Subnet::parse(&settings.subnet).map_err(|e| invalid(format!("network.subnet: {e}")))?;
        if !valid_interface_name(&settings.bridge) {
            return Err(invalid(format!(
                "network.bridge: {:?} is not an interface name",
                settings.bridge
            )));
        }
        Ok(Cni {
            bin_dirs: settings.cni_bin_dirs.clone(),
            bridge: settings.bridge.clone(),
            subnet,
            ipam_dir: data_dir.join("cni").join("ipam"),
        })
    }

    /// The bridge network's plugins. `ports` go to portmap as its
    /// `portMappings` capability, which is how runtimes pass them.
    fn bridge_plugins(&self, ports: &[PortMapping]) -> Vec<Plugin> {
        let mut list = vec![Plugin {
            typ: "bridge",
            conf: json!({
                "type": "bridge",
                "bridge": self.bridge,
                "isGateway": true,
                // See the module comment: one rule for the subnet instead.
                "ipMasq": false,
                // A container can reach its own published ports through
                // the host's address.
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{
                        "subnet": self.subnet.to_string(),
                        "gateway": self.subnet.gateway().to_string(),
                    }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "dataDir": self.ipam_dir,
                },
            }),
        }];
        if !ports.is_empty() {
            let mappings: Vec<Value> = ports
                .iter()
                .map(|p| {
                    let mut m = json!({
                        "hostPort": p.host_port,
                        "containerPort": p.container_port,
                        "protocol": p.protocol.as_str(),
                    });
                    if let Some(ip) = p.host_ip {
                        m["hostIP"] = json!(ip.to_string());
                    }
                    m
                })
                .collect();
            list.push(Plugin {
                typ: "portmap",
                conf: json!({
                    "type": "portmap",
                    "capabilities": { "portMappings": true },
                    // Connections from the host itself (localhost
                    // included) are forwarded too.
                    "snat": true,
                    "runtimeConfig": { "portMappings": mappings },
                }),
            });
        }
        // Forwarding to and from the container's address is allowed even
        // where the FORWARD policy is DROP (as Docker leaves it).
        list.push(Plugin {
            typ: "firewall",
            conf: json!({ "type": "firewall", "backend": "iptables" }),
        });
        list
    }

    /// Connects the network namespace `netns` of container `id` (unique
    /// on the host: the caller prefixes containerd's namespace).
    pub async fn attach(
        &self,
        id: &str,
        netns: &Path,
        mode: NetworkMode,
        ports: &[PortMapping],
    ) -> Result<Attachment, RuntimeError> {
        // Every namespace of its own gets a working loopback; runc leaves
        // `lo` down.
        let lo = Plugin {
            typ: "loopback",
            conf: json!({ "type": "loopback" }),
        };
        self.exec(&lo, "ADD", id, Some(netns), "lo", None).await?;
        let mut attachment = Attachment {
            mode,
            address: None,
            ports: ports.to_vec(),
            result: None,
        };
        if mode != NetworkMode::Bridge {
            return Ok(attachment);
        }
        self.prepare_host().await?;
        let mut prev: Option<Value> = None;
        for (i, plugin) in self.bridge_plugins(ports).iter().enumerate() {
            match self
                .exec(plugin, "ADD", id, Some(netns), "eth0", prev.as_ref())
                .await
            {
                Ok(r) => prev = Some(r),
                Err(e) => {
                    // Undo what the earlier plugins did, as libcni does
                    // not but every runtime built on it does.
                    attachment.result = prev;
                    let done: Vec<Plugin> =
                        self.bridge_plugins(ports).into_iter().take(i).collect();
                    self.del_all(&done, id, attachment.result.as_ref()).await;
                    return Err(e);
                }
            }
        }
        attachment.address = prev.as_ref().and_then(first_ipv4);
        attachment.result = prev;
        Ok(attachment)
    }

    /// Undoes [`Cni::attach`] once the namespace is gone. Every plugin is
    /// asked even when one fails; the first error is returned.
    pub async fn detach(&self, id: &str, attachment: &Attachment) -> Result<(), RuntimeError> {
        if attachment.mode != NetworkMode::Bridge {
            return Ok(());
        }
        let plugins = self.bridge_plugins(&attachment.ports);
        match self.del_all(&plugins, id, attachment.result.as_ref()).await {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn del_all(
        &self,
        plugins: &[Plugin],
        id: &str,
        prev: Option<&Value>,
    ) -> Option<RuntimeError> {
        let mut first = None;
        for plugin in plugins.iter().rev() {
            if let Err(e) = self.exec(plugin, "DEL", id, None, "eth0", prev).await {
                tracing::warn!(container = id, plugin = plugin.typ, error = %e, "CNI DEL");
                first.get_or_insert(e);
            }
        }
        first
    }

    /// Forwarding on, and the subnet's masquerade rule in place (added
    /// once, found again by `-C` after an agent restart).
    async fn prepare_host(&self) -> Result<(), RuntimeError> {
        let forward = Path::new("/proc/sys/net/ipv4/ip_forward");
        match std::fs::read_to_string(forward) {
            Ok(v) if v.trim() == "1" => {}
            _ => std::fs::write(forward, "1").map_err(|e| {
                invalid(format!(
                    "enabling IPv4 forwarding ({}): {e}; the bridge network needs it",
                    forward.display()
                ))
            })?,
        }
        let subnet = self.subnet.to_string();
        let rule = [
            "POSTROUTING",
            "-s",
            &subnet,
            "!",
            "-o",
            &self.bridge,
            "-m",
            "comment",
            "--comment",
            MASQUERADE_COMMENT,
            "-j",
            "MASQUERADE",
        ];
        if iptables(&["-t", "nat", "-C"], &rule).await.is_ok() {
            return Ok(());
        }
        iptables(&["-t", "nat", "-A"], &rule).await
    }

    fn plugin_path(&self, typ: &str) -> Result<PathBuf, RuntimeError> {
        self.bin_dirs
            .iter()
            .map(|d| d.join(typ))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                invalid(format!(
                    "the CNI plugin {typ:?} is in none of {} (network.cni_bin_dirs); \
                     `--network bridge` and `--publish` need the package \
                     containernetworking-plugins",
                    self.bin_dirs
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }

    /// Runs one plugin once, as the CNI spec says: the command and the
    /// container in the environment, the configuration on stdin, a
    /// result or an error object on stdout.
    async fn exec(
        &self,
        plugin: &Plugin,
        command: &str,
        id: &str,
        netns: Option<&Path>,
        ifname: &str,
        prev: Option<&Value>,
    ) -> Result<Value, RuntimeError> {
        let path = self.plugin_path(plugin.typ)?;
        let mut conf = plugin.conf.clone();
        conf["cniVersion"] = json!(CNI_VERSION);
        conf["name"] = json!(NETWORK_NAME);
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        let stdin =
            serde_json::to_vec(&conf).map_err(|e| invalid(format!("CNI configuration: {e}")))?;
        let cni_path = std::env::join_paths(&self.bin_dirs)
            .map_err(|e| invalid(format!("network.cni_bin_dirs: {e}")))?;
        let mut child = tokio::process::Command::new(&path)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env(
                "CNI_NETNS",
                netns.map(|p| p.as_os_str()).unwrap_or_default(),
            )
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| invalid(format!("starting {}: {e}", path.display())))?;
        if let Some(mut input) = child.stdin.take() {
            // A plugin that exits without reading makes this fail; its
            // exit status says more, so that error is not returned.
            let _ = input.write_all(&stdin).await;
        }
        let out = tokio::time::timeout(PLUGIN_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| {
                invalid(format!(
                    "CNI {command} {}: no answer in {PLUGIN_TIMEOUT:?}",
                    plugin.typ
                ))
            })?
            .map_err(|e| invalid(format!("CNI {command} {}: {e}", plugin.typ)))?;
        let stdout = &out.stdout[..out.stdout.len().min(MAX_PLUGIN_OUTPUT)];
        if !out.status.success() {
            let why = serde_json::from_slice::<Value>(stdout)
                .ok()
                .map(|v| {
                    let msg = v["msg"].as_str().unwrap_or("").to_owned();
                    match v["details"].as_str() {
                        Some(d) if !d.is_empty() => format!("{msg}: {d}"),
                        _ => msg,
                    }
                })
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_owned());
            return Err(invalid(format!(
                "CNI {command} {} for {id}: {why}",
                plugin.typ
            )));
        }
        if command != "ADD" {
            return Ok(Value::Null);
        }
        serde_json::from_slice(stdout)
            .map_err(|e| invalid(format!("CNI ADD {}: unreadable result ({e})", plugin.typ)))
    }
}

/// The first IPv4 address of a CNI result.
fn first_ipv4(result: &Value) -> Option<Ipv4Addr> {
    result["ips"].as_array()?.iter().find_map(|ip| {
        let addr = ip["address"].as_str()?;
        addr.split('/').next()?.parse().ok()
    })
}

/// Runs `iptables` (the host's, nft or legacy: the plugins call the same
/// one).
async fn iptables(prefix: &[&str], rule: &[&str]) -> Result<(), RuntimeError> {
    let out = tokio::process::Command::new("iptables")
        .args(["-w", "10"])
        .args(prefix)
        .args(rule)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| {
            invalid(format!(
                "running iptables: {e}; the bridge network needs it"
            ))
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(invalid(format!(
            "iptables {}: {}",
            prefix.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// The `/etc/hosts` of a container with its own network: localhost, and
/// its name on its address once it has one.
pub fn hosts_file(hostname: &str, address: Option<Ipv4Addr>) -> String {
    let mut s = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    match address {
        Some(ip) => s.push_str(&format!("{ip}\t{hostname}\n")),
        None => s.push_str(&format!("127.0.1.1\t{hostname}\n")),
    }
    s
}

/// The resolver configuration for a container with its own network: the
/// host's, unless the host's only names loopback servers (systemd-resolved's
/// 127.0.0.53), which the container cannot reach; then resolved's list of
/// upstream servers, as Docker does.
pub fn resolv_conf_source() -> Option<PathBuf> {
    let host = Path::new("/etc/resolv.conf");
    let text = std::fs::read_to_string(host).ok()?;
    let servers: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .map(str::trim)
        .collect();
    let all_loopback = !servers.is_empty()
        && servers.iter().all(|s| {
            s.parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
        });
    let upstream = Path::new("/run/systemd/resolve/resolv.conf");
    if all_loopback && upstream.is_file() {
        return Some(upstream.to_path_buf());
    }
    Some(host.to_path_buf())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn subnets() {
        let s = Subnet::parse("10.87.0.0/16").unwrap();
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 87, 0, 1));
        assert_eq!(s.to_string(), "10.87.0.0/16");
        assert!(
            Subnet::parse("10.87.0.1/16")
                .unwrap_err()
                .contains("host bits")
        );
        assert!(Subnet::parse("10.87.0.0").is_err());
        assert!(Subnet::parse("10.87.0.0/31").is_err());
        assert!(Subnet::parse("fd00::/64").is_err());
    }

    #[test]
    fn interface_names() {
        assert!(valid_interface_name("berth0"));
        assert!(!valid_interface_name(""));
        assert!(!valid_interface_name("-o"));
        assert!(!valid_interface_name("a-very-long-name-x"));
        assert!(!valid_interface_name("br 0"));
    }

    #[test]
    fn result_addresses() {
        let r = json!({"ips": [{"address": "10.87.0.5/16", "gateway": "10.87.0.1"}]});
        assert_eq!(first_ipv4(&r), Some(Ipv4Addr::new(10, 87, 0, 5)));
        assert_eq!(first_ipv4(&json!({})), None);
    }

    #[test]
    fn hosts_names_the_container() {
        let h = hosts_file("web", Some(Ipv4Addr::new(10, 87, 0, 5)));
        assert!(h.contains("127.0.0.1\tlocalhost"));
        assert!(h.ends_with("10.87.0.5\tweb\n"));
    }
}
