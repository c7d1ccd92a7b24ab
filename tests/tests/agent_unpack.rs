//! The agent's own layer unpacker (`agent/src/unpack.rs`) against
//! containerd's Diff.Apply: one image whose layers use what real images use
//! (owners, setuid, PAX times with nanoseconds, xattrs, hard links,
//! symlinks, device nodes, fifos, whiteouts of files and directories,
//! opaque directories, parents missing from the tar, a path through a
//! lower layer's symlink, a name that climbs above the root) is pulled
//! into two containerds, unpacked by the agent in one and by containerd in
//! the other, and every layer's snapshot directory must be the same, file
//! by file: type, mode, owner, size, content, link target, device number,
//! times to the nanosecond, extended attributes, link count.
#![allow(clippy::unwrap_used)]

mod common_agent;
mod common_auth;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use common_agent::{AgentOptions, agent_config_with, agent_ok, listed_digest, top_chain_id};
use common_auth::{ACME, ACME_NS, AuthServer};
use serde_json::Value;
use test_support::images::Layer;
use test_support::{Arch, Image, ImageBuilder, sha256_digest};
use tests::Containerd;

/// One tar entry of the test layers.
enum E<'a> {
    Dir(&'a str, u32, u64),
    File(&'a str, u32, &'a [u8]),
    Owned(&'a str, u32, u64, u64, &'a [u8]),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Char(&'a str, u32, u32, u32),
    Fifo(&'a str, u32),
    /// A file with PAX records (xattrs, nanosecond mtime).
    Pax(&'a str, &'a [(&'a str, &'a [u8])], &'a [u8]),
}

fn layer(entries: &[E<'_>]) -> Layer {
    let mut tar = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_size(0);
        let (path, data): (&str, &[u8]) = match e {
            E::Dir(p, mode, mtime) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_mtime(*mtime);
                (p, b"")
            }
            E::File(p, mode, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                (p, data)
            }
            E::Owned(p, mode, uid, gid, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_uid(*uid);
                h.set_gid(*gid);
                (p, data)
            }
            E::Symlink(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_link_name(target).unwrap();
                (p, b"")
            }
            E::Hardlink(p, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o644);
                h.set_link_name(target).unwrap();
                (p, b"")
            }
            E::Char(p, mode, major, minor) => {
                h.set_entry_type(tar::EntryType::Char);
                h.set_mode(*mode);
                h.set_device_major(*major).unwrap();
                h.set_device_minor(*minor).unwrap();
                (p, b"")
            }
            E::Fifo(p, mode) => {
                h.set_entry_type(tar::EntryType::Fifo);
                h.set_mode(*mode);
                (p, b"")
            }
            E::Pax(p, records, data) => {
                tar.append_pax_extensions(records.iter().map(|(k, v)| (*k, *v)))
                    .unwrap();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o640);
                (p, data)
            }
        };
        h.set_size(data.len() as u64);
        // Raw names: the builder's path checks would refuse `../`.
        {
            let name = &mut h.as_old_mut().name;
            name.fill(0);
            name[..path.len()].copy_from_slice(path.as_bytes());
        }
        h.set_cksum();
        tar.append(&h, data).unwrap();
    }
    let tar = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    Layer {
        data: gz.finish().unwrap().into(),
        diff_id: sha256_digest(&tar),
    }
}

fn tricky_image() -> Image {
    let base = layer(&[
        E::Dir("etc/", 0o755, 1_500_000_000),
        E::File("etc/hosts-old", 0o644, b"127.0.0.1 old\n"),
        E::Hardlink("etc/hosts-link", "etc/hosts-old"),
        E::Dir("opt/", 0o750, 1_400_000_000),
        E::Dir("opt/keep/", 0o711, 1_300_000_000),
        E::Owned("opt/keep/a", 0o600, 1000, 1000, b"a"),
        E::Dir("var/", 0o755, 1_500_000_000),
        E::Dir("var/data/", 0o770, 1_500_000_000),
        E::File("var/data/old1", 0o644, b"1"),
        E::File("var/data/old2", 0o644, b"2"),
        E::Dir("var/tobefile/", 0o755, 1_500_000_000),
        E::Dir("srv/", 0o755, 1_500_000_000),
        E::Dir("srv/web/", 0o755, 1_500_000_000),
        E::File("srv/web/index.html", 0o644, b"<p>hi</p>"),
        // No "bin/" entry: the parent is made.
        E::Owned("bin/su", 0o4755, 0, 0, b"#!/bin/true\n"),
        E::Dir("usr/", 0o755, 1_500_000_000),
        E::Dir("usr/lib/", 0o755, 1_500_000_000),
        E::File("usr/lib/libx.so", 0o755, b"ELF"),
        E::Symlink("lib", "usr/lib"),
        E::Char("dev/null", 0o666, 1, 3),
        E::Fifo("run/fifo", 0o600),
        E::Pax(
            "etc/precise",
            &[
                ("mtime", b"1700000000.123456789"),
                ("SCHILY.xattr.user.berth", b"kept"),
            ],
            b"precise\n",
        ),
        // Climbs above the root: stops at it.
        E::File("../../escaped", 0o644, b"inside after all\n"),
        // A whiteout in the first layer hides nothing.
        E::File("etc/.wh.nothing", 0o644, b""),
    ]);
    let upper = layer(&[
        E::File("etc/.wh.hosts-old", 0o644, b""),
        E::File("srv/.wh.web", 0o644, b""),
        E::Dir("var/data/", 0o775, 1_550_000_000),
        E::File("var/data/.wh..wh..opq", 0o644, b""),
        E::File("var/data/new", 0o644, b"new"),
        E::File("var/tobefile", 0o600, b"now a file"),
        // Parents missing from the tar: made with the lower layer's
        // attributes (opt, opt/keep) or 0755 (deeper).
        E::File("opt/keep/deeper/b", 0o644, b"b"),
        // Through the lower layer's symlink `lib`.
        E::File("lib/libnew.so", 0o755, b"ELF2"),
        E::Pax(
            "etc/precise",
            &[
                ("mtime", b"1700000001.5"),
                ("SCHILY.xattr.trusted.berth", b"t"),
            ],
            b"precise two\n",
        ),
    ]);
    let top = layer(&[
        E::Dir("var/data/", 0o775, 1_560_000_000),
        E::File("var/data/new", 0o600, b"newer"),
        E::Symlink("etc/hosts", "/etc/hosts-link"),
    ]);
    ImageBuilder::new(Arch::Amd64)
        .layer(base)
        .layer(upper)
        .layer(top)
        .cmd(&["/bin/su"])
        .build()
}

/// What is compared of one file.
#[derive(Debug, PartialEq, Eq)]
struct Meta {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u64,
    rdev: u64,
    mtime: (i64, i64),
    content: String,
    xattrs: BTreeMap<String, Vec<u8>>,
}

fn tree(root: &Path) -> BTreeMap<PathBuf, Meta> {
    let recent = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        - 3600;
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for child in std::fs::read_dir(&dir).unwrap() {
            let path = child.unwrap().path();
            let m = std::fs::symlink_metadata(&path).unwrap();
            let ft = m.file_type();
            let (kind, content) = if ft.is_dir() {
                todo.push(path.clone());
                ("dir", String::new())
            } else if ft.is_symlink() {
                (
                    "symlink",
                    std::fs::read_link(&path).unwrap().display().to_string(),
                )
            } else if ft.is_file() {
                ("file", sha256_digest(&std::fs::read(&path).unwrap()))
            } else if ft.is_char_device() {
                ("char", String::new())
            } else if ft.is_block_device() {
                ("block", String::new())
            } else if ft.is_fifo() {
                ("fifo", String::new())
            } else {
                ("other", String::new())
            };
            let xattrs = xattr::list(&path)
                .unwrap()
                .map(|n| {
                    let v = xattr::get(&path, &n).unwrap().unwrap_or_default();
                    (n.to_string_lossy().into_owned(), v)
                })
                .collect();
            out.insert(
                path.strip_prefix(root).unwrap().to_path_buf(),
                Meta {
                    kind,
                    mode: m.mode(),
                    uid: m.uid(),
                    gid: m.gid(),
                    nlink: if ft.is_dir() { 0 } else { m.nlink() },
                    rdev: m.rdev(),
                    // Whiteout devices and directories made for parents
                    // missing from the tar are stamped now, different in
                    // every unpack (the layers' own times are years old).
                    mtime: if m.mtime() > recent {
                        (0, 0)
                    } else {
                        (m.mtime(), m.mtime_nsec())
                    },
                    content,
                    xattrs,
                },
            );
        }
    }
    out
}

/// The directories of the image's layers in `ctrd`, lowest first: the
/// lower directories of an overlay view of its top snapshot.
fn layer_dirs(ctrd: &Containerd, top: &str, layers: usize) -> Vec<PathBuf> {
    let out = ctrd
        .run_ctr(["snapshots", "view", "--mounts", "compare-view", top])
        .unwrap();
    let mounts: Value = serde_json::from_str(out.trim()).unwrap();
    // Go's field names: ctr prints containerd's Mount struct as it is.
    let options = mounts[0]["Options"]
        .as_array()
        .or_else(|| mounts[0]["options"].as_array())
        .unwrap_or_else(|| panic!("no mount options in {out}"));
    let lower = options
        .iter()
        .filter_map(|o| o.as_str()?.strip_prefix("lowerdir="))
        .next()
        .unwrap();
    let mut dirs: Vec<PathBuf> = lower.split(':').map(PathBuf::from).collect();
    dirs.reverse();
    assert_eq!(dirs.len(), layers, "{out}");
    dirs
}

#[tokio::test]
async fn the_agent_unpacks_exactly_as_containerd_does() {
    let srv = AuthServer::start();
    let t = srv.setup_tenants();
    let image = tricky_image();
    srv.push_as(&t.acme_dev, &format!("{ACME_NS}/tricky"), &image, "v1")
        .await;
    let node = srv.enroll("edge-unpack", ACME, None);
    let name = format!("{}/{ACME_NS}/tricky:v1", srv.host());

    let mut trees = Vec::new();
    for by in ["agent", "containerd"] {
        let ctrd = Containerd::start();
        let dir = srv.files().join(by);
        std::fs::create_dir_all(&dir).unwrap();
        let config = agent_config_with(
            &srv,
            &node,
            &ctrd,
            &dir,
            &AgentOptions {
                unpack: Some(by),
                ..AgentOptions::default()
            },
        );
        let out = agent_ok(&config, &["pull", "--json", "tricky:v1"]);
        let pulled: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(pulled["digest"], image.digest.as_str());
        assert_eq!(listed_digest(&ctrd, &name), Some(image.digest.clone()));
        // containerd itself finds the image complete and unpacked.
        let check = ctrd.run_ctr(["images", "check"]).unwrap();
        assert!(
            check.lines().any(|l| l.contains(&name)
                && l.contains("complete")
                && l.trim_end().ends_with("true")),
            "{check}"
        );
        let dirs = layer_dirs(&ctrd, &top_chain_id(&image), image.layers.len());
        trees.push(dirs.iter().map(|d| tree(d)).collect::<Vec<_>>());
        drop(ctrd);
    }
    let (agent, containerd) = (&trees[0], &trees[1]);
    for (i, (a, c)) in agent.iter().zip(containerd).enumerate() {
        let paths: Vec<_> = a.keys().chain(c.keys()).collect();
        for p in paths {
            assert_eq!(
                a.get(p),
                c.get(p),
                "layer {i}, {}: agent's unpack (left) differs from containerd's (right)",
                p.display()
            );
        }
    }

    // And what the comparison covered is what the layers hold (a
    // comparison of two empty trees would pass too).
    let base = &agent[0];
    let su = &base[Path::new("bin/su")];
    assert_eq!(su.mode & 0o7777, 0o4755);
    assert_eq!(base[Path::new("dev/null")].kind, "char");
    assert_eq!(base[Path::new("run/fifo")].kind, "fifo");
    assert_eq!(base[Path::new("etc/hosts-link")].nlink, 2);
    assert_eq!(base[Path::new("opt/keep/a")].uid, 1000);
    assert!(base.contains_key(Path::new("escaped")));
    let precise = &base[Path::new("etc/precise")];
    assert_eq!(precise.mtime, (1_700_000_000, 123_456_789));
    assert_eq!(
        precise.xattrs.get("user.berth").map(Vec::as_slice),
        Some(&b"kept"[..])
    );
    let upper = &agent[1];
    assert_eq!(upper[Path::new("etc/hosts-old")].kind, "char");
    assert_eq!(upper[Path::new("srv/web")].kind, "char");
    assert_eq!(
        upper[Path::new("var/data")]
            .xattrs
            .get("trusted.overlay.opaque")
            .map(Vec::as_slice),
        Some(&b"y"[..])
    );
    assert_eq!(upper[Path::new("opt")].mode & 0o7777, 0o750);
    assert_eq!(upper[Path::new("opt/keep/deeper")].mode & 0o7777, 0o755);
    assert_eq!(upper[Path::new("lib")].kind, "dir");
    // A layer's trusted.* xattrs are not applied (they would steer overlayfs).
    assert!(upper[Path::new("etc/precise")].xattrs.is_empty());
    assert_eq!(upper[Path::new("var/tobefile")].kind, "file");
}
