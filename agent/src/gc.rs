//! Image GC: removes image records no container uses, by age and under
//! disk pressure; containerd's own GC then reclaims the content and
//! snapshots nothing references any more.
//!
//! An image is in use when a container record (running or stopped) names
//! it, or a definition in `containers.d` does (a defined on-demand or
//! recurring container may have no container record between runs). Its
//! age is the time since its last use ([`LAST_USED_LABEL`], set by `run`
//! and so by the supervisor) or, never used, since its record was
//! created. The policy itself is [`select`], a pure function.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::config::AgentConfig;
use crate::reference::ImageRef;
use crate::runtime::{Runtime, RuntimeError};
use crate::supervisor::definition::DefinitionStore;

type Result<T> = std::result::Result<T, RuntimeError>;

/// Label on the containerd image record: when a container was last
/// started from it, as seconds since the Unix epoch.
pub const LAST_USED_LABEL: &str = "io.berth.agent/last-used";

/// Manifests are small; a larger one is not read to size an image.
const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// One image as the policy sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ImageUse {
    pub name: String,
    /// Bytes on disk, roughly: the manifest's layers and config.
    pub size: u64,
    /// Since its last use, or its creation if never used.
    pub age_secs: u64,
    pub in_use: bool,
}

/// Usage of the file system holding containerd's root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Disk {
    pub total: u64,
    pub used: u64,
}

/// What a GC pass removes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Unused images at least this old go.
    pub max_age: Option<Duration>,
    /// `(high, low)` percentages: above `high`, unused images go oldest
    /// first until the estimate is below `low`.
    pub watermarks: Option<(u8, u8)>,
}

/// The names of the images to remove, oldest first. Never one in use.
pub fn select(images: &[ImageUse], policy: &Policy, disk: Option<Disk>) -> Vec<String> {
    let mut unused: Vec<&ImageUse> = images.iter().filter(|i| !i.in_use).collect();
    // Oldest first; ties by name so a pass is deterministic.
    unused.sort_by(|a, b| b.age_secs.cmp(&a.age_secs).then(a.name.cmp(&b.name)));
    let mut chosen: Vec<&ImageUse> = match policy.max_age {
        Some(max) => unused
            .iter()
            .copied()
            .filter(|i| i.age_secs >= max.as_secs())
            .collect(),
        None => Vec::new(),
    };
    if let (Some((high, low)), Some(disk)) = (policy.watermarks, disk) {
        let freed: u64 = chosen.iter().map(|i| i.size).sum();
        let mut used = disk.used.saturating_sub(freed);
        let over =
            |used: u64, pct: u8| u128::from(used) * 100 > u128::from(disk.total) * u128::from(pct);
        if over(used, high) {
            for i in &unused {
                if !over(used, low) {
                    break;
                }
                if chosen.iter().any(|c| c.name == i.name) {
                    continue;
                }
                used = used.saturating_sub(i.size);
                chosen.push(i);
            }
        }
    }
    chosen.sort_by(|a, b| b.age_secs.cmp(&a.age_secs).then(a.name.cmp(&b.name)));
    chosen.into_iter().map(|i| i.name.clone()).collect()
}

/// `30s`, `15m`, `1h`, `7d`, or plain seconds.
pub fn parse_age(s: &str) -> std::result::Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration like 30s, 15m, 1h or 7d"))?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: unit must be s, m, h or d")),
    };
    n.checked_mul(unit_secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?}: too long"))
}

/// The policy of the configuration (`gc.*`).
pub fn policy_from_config(cfg: &AgentConfig) -> Result<Policy> {
    let max_age = cfg
        .gc
        .max_image_age
        .as_deref()
        .map(parse_age)
        .transpose()
        .map_err(RuntimeError::Invalid)?;
    Ok(Policy {
        max_age,
        watermarks: Some((cfg.gc.high_disk_percent, cfg.gc.low_disk_percent)),
    })
}

/// Every image of the namespace with its size, age and use.
pub async fn image_uses(rt: &Runtime, cfg: &AgentConfig) -> Result<Vec<ImageUse>> {
    let ctrd = rt.containerd();
    let mut used: HashSet<String> = ctrd
        .list_containers()
        .await?
        .into_iter()
        .map(|c| c.image)
        .collect();
    let (defs, broken) = DefinitionStore::new(&cfg.data_dir)
        .list()
        .map_err(|e| RuntimeError::Invalid(e.to_string()))?;
    if !broken.is_empty() {
        // Its image is unknown, so any image might be it: no GC until the
        // file is fixed or removed, rather than removing its image.
        return Err(RuntimeError::Invalid(format!(
            "unreadable definitions {broken:?}: no image GC until they are fixed"
        )));
    }
    for d in defs.values() {
        let r = ImageRef::resolve(&d.image, &cfg.registry_host(), &cfg.registry.namespace)?;
        used.insert(r.image_name());
    }
    let now = SystemTime::now();
    let mut out = Vec::new();
    for img in ctrd.list_images().await? {
        let last_used = img
            .labels
            .get(LAST_USED_LABEL)
            .and_then(|v| v.parse::<u64>().ok())
            .and_then(|s| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(s)));
        let since = last_used.or(img.created_at).unwrap_or(now);
        let age_secs = now.duration_since(since).unwrap_or_default().as_secs();
        let size = image_size(rt, &img.digest)
            .await
            .unwrap_or(u64::try_from(img.size).unwrap_or(0));
        out.push(ImageUse {
            in_use: used.contains(&img.name),
            name: img.name,
            size,
            age_secs,
        });
    }
    Ok(out)
}

/// The manifest's config and layer sizes; `None` for an index or an
/// unreadable manifest (the caller falls back to the record's size).
async fn image_size(rt: &Runtime, digest: &str) -> Option<u64> {
    let bytes = rt
        .containerd()
        .read_content(digest, MAX_MANIFEST_BYTES)
        .await
        .ok()?;
    let m: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let layers = m.get("layers")?.as_array()?;
    let size = |v: &serde_json::Value| v.get("size").and_then(|s| s.as_u64()).unwrap_or(0);
    Some(layers.iter().map(size).sum::<u64>() + m.get("config").map(size).unwrap_or(0))
}

/// Used and total bytes of the file system holding `path`.
pub fn disk_usage(path: &Path) -> Result<Disk> {
    let stat = nix::sys::statvfs::statvfs(path).map_err(|e| RuntimeError::Io {
        path: path.display().to_string(),
        source: std::io::Error::from(e),
    })?;
    // The field types are u32 on some 32-bit targets (ARM boxes), u64
    // here: the conversions are needed there, useless here.
    #[allow(clippy::useless_conversion)]
    let (total, free) = {
        let frsize = u64::from(stat.fragment_size());
        (
            u64::from(stat.blocks()).saturating_mul(frsize),
            u64::from(stat.blocks_free()).saturating_mul(frsize),
        )
    };
    Ok(Disk {
        total,
        used: total.saturating_sub(free),
    })
}

/// One GC pass: selects with `policy` and deletes those image records.
/// Returns what was removed.
pub async fn prune(rt: &Runtime, cfg: &AgentConfig, policy: &Policy) -> Result<Vec<ImageUse>> {
    let images = image_uses(rt, cfg).await?;
    let disk = match policy.watermarks {
        Some(_) => Some(disk_usage(&cfg.containerd.root)?),
        None => None,
    };
    let chosen = select(&images, policy, disk);
    let mut removed = Vec::new();
    for name in chosen {
        if rt.containerd().delete_image(&name).await? {
            tracing::info!(image = %name, "image GC removed an unused image");
            if let Some(i) = images.iter().find(|i| i.name == name) {
                removed.push(i.clone());
            }
        }
    }
    Ok(removed)
}

/// The [`LAST_USED_LABEL`] value for a start at `now`: Unix seconds, which
/// `ctr images ls` shows readably and needs no date parsing to compare.
pub fn last_used_value(now: SystemTime) -> String {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        .to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn img(name: &str, age_secs: u64, size: u64, in_use: bool) -> ImageUse {
        ImageUse {
            name: name.into(),
            size,
            age_secs,
            in_use,
        }
    }

    #[test]
    fn age_selects_only_old_unused_images() {
        let images = [
            img("old-used", 100 * 86_400, 10, true),
            img("old", 10 * 86_400, 10, false),
            img("older", 20 * 86_400, 10, false),
            img("new", 3600, 10, false),
        ];
        let p = Policy {
            max_age: Some(Duration::from_secs(7 * 86_400)),
            watermarks: None,
        };
        assert_eq!(select(&images, &p, None), ["older", "old"]);
        let zero = Policy {
            max_age: Some(Duration::ZERO),
            watermarks: None,
        };
        assert_eq!(select(&images, &zero, None), ["older", "old", "new"]);
        assert!(select(&images, &Policy::default(), None).is_empty());
    }

    #[test]
    fn disk_pressure_removes_oldest_unused_until_low_watermark() {
        let images = [
            img("in-use", 1000, 50, true),
            img("a", 300, 10, false),
            img("b", 200, 10, false),
            img("c", 100, 10, false),
        ];
        let p = Policy {
            max_age: None,
            watermarks: Some((80, 70)),
        };
        // 79 % used: under the high watermark, nothing goes.
        let disk = |used| Some(Disk { total: 100, used });
        assert!(select(&images, &p, disk(79)).is_empty());
        // 85 %: down to 70 % takes two images, the oldest.
        assert_eq!(select(&images, &p, disk(85)), ["a", "b"]);
        // 99 %: all unused go, the image in use never does.
        assert_eq!(select(&images, &p, disk(99)), ["a", "b", "c"]);
        // Images already chosen by age count towards the space freed.
        let both = Policy {
            max_age: Some(Duration::from_secs(250)),
            watermarks: Some((80, 70)),
        };
        // (85 - 10 = 75 %: under the high watermark once `a` is gone.)
        assert_eq!(select(&images, &both, disk(85)), ["a"]);
        assert_eq!(select(&images, &both, disk(95)), ["a", "b", "c"]);
    }

    #[test]
    fn ages_parse() {
        assert_eq!(parse_age("7d").unwrap(), Duration::from_secs(7 * 86_400));
        assert_eq!(parse_age("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_age("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_age("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_age("1w").is_err());
        assert!(parse_age("d").is_err());
    }
}
