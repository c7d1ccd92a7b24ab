//! Applying a layer to a prepared snapshot, in the agent.
//!
//! containerd's Diff.Apply reads the blob back from its content store once
//! the download is over, decompresses it, hashes the tar and writes the
//! files, all on containerd's side and after the fact. The agent instead
//! applies the layer from the bytes as they arrive (see `spool.rs`), on its
//! own thread, while containerd only stores the blob: on a two-core
//! appliance that is the difference between a pull that waits for every
//! Diff.Apply and one that is done when its downloads are (figures in
//! bench/src/agent.rs's report).
//!
//! What is written follows containerd 1.6's applier (`archive.Apply` with
//! the overlayfs whiteout conversion, `diff/apply/apply_linux.go`) so an
//! image unpacked here is the same as one unpacked by containerd, which
//! tests/tests/agent_unpack.rs checks file by file:
//! - every entry's parent is resolved inside the root, symlinks included
//!   (`fs.RootPath`: `..` and absolute links stop at the root);
//! - a missing parent directory is created with the attributes of the same
//!   directory in the lower layers (overlayfs) or 0755;
//! - an existing path is replaced, except a directory by a directory,
//!   which keeps its content and takes the entry's attributes;
//! - ownership (numeric), mode after ownership (setuid survives), the
//!   `SCHILY.xattr.*` records but `trusted.*`, and times (nanoseconds from PAX records);
//!   directory times are set at the end, after their content was written;
//! - whiteouts: on an overlayfs upper directory a `.wh.NAME` becomes a 0/0
//!   character device and `.wh..wh..opq` the `trusted.overlay.opaque`
//!   xattr; on a plain tree (native snapshotter, or overlayfs's first layer)
//!   they remove what lower layers left there;
//! - the diff id is the sha256 of the whole decompressed stream, trailing
//!   padding included.
//!
//! Why by hand: the `tar` crate parses well but its unpacker writes device
//! nodes as regular files, sets no directory times, no xattrs on anything
//! but regular files, and knows no whiteouts; no maintained crate applies
//! OCI layers with containerd's rules.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use sha2::{Digest as _, Sha256};

const WHITEOUT_PREFIX: &str = ".wh.";
const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const PAX_XATTR: &str = "SCHILY.xattr.";
/// How many symlinks one path may go through before it is refused.
const MAX_LINKS: usize = 255;

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("layer archive: {0}")]
    Archive(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> UnpackError {
    let what = what.into();
    move |source| UnpackError::Io { what, source }
}

fn nix_err(what: impl Into<String>) -> impl FnOnce(nix::Error) -> UnpackError {
    let what = what.into();
    move |e| UnpackError::Io {
        what,
        source: io::Error::from(e),
    }
}

/// Where a layer goes: what a prepared snapshot's mounts point at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An overlayfs upper directory over `lowers` (topmost first).
    Overlay {
        upper: PathBuf,
        lowers: Vec<PathBuf>,
    },
    /// A plain directory holding the whole tree.
    Tree { root: PathBuf },
}

impl Target {
    /// The target of a snapshot's mounts, when the agent can write it
    /// directly: one read-write bind mount, or one overlayfs mount with an
    /// upper directory in the kernel's trusted xattr namespace. Anything
    /// else (other snapshotters, rootless overlays) is left to Diff.Apply.
    pub fn from_mount(kind: &str, source: &str, options: &[String]) -> Option<Target> {
        match kind {
            "bind" | "rbind" => {
                if options.iter().any(|o| o == "ro") || source.is_empty() {
                    return None;
                }
                Some(Target::Tree {
                    root: PathBuf::from(source),
                })
            }
            "overlay" => {
                let mut upper = None;
                let mut lowers = Vec::new();
                for o in options {
                    if let Some(u) = o.strip_prefix("upperdir=") {
                        upper = Some(PathBuf::from(u));
                    } else if let Some(l) = o.strip_prefix("lowerdir=") {
                        lowers = l.split(':').map(PathBuf::from).collect();
                    } else if o == "userxattr" {
                        return None;
                    }
                }
                Some(Target::Overlay {
                    upper: upper?,
                    lowers,
                })
            }
            _ => None,
        }
    }

    fn root(&self) -> &Path {
        match self {
            Target::Overlay { upper, .. } => upper,
            Target::Tree { root } => root,
        }
    }
}

/// How a layer's bytes are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    None,
}

impl Compression {
    /// The compression of a layer media type the agent unpacks itself
    /// (zstd and anything unknown go to Diff.Apply).
    pub fn of_media_type(media_type: &str) -> Option<Compression> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                Some(Compression::Gzip)
            }
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Some(Compression::None),
            _ => None,
        }
    }
}

/// Hashes everything read through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Applies the layer read from `input` to `target`; its diff id.
pub fn apply(
    target: &Target,
    compression: Compression,
    input: impl Read,
) -> Result<String, UnpackError> {
    // Large reads: the input is a file being written (page cache) and the
    // decoder's output feeds whole file bodies. The `bufread` decoder
    // inflates straight from this buffer (the `read` one would copy it into
    // a second, 32 KiB buffer of its own first).
    let input = BufReader::with_capacity(256 << 10, input);
    let decoded: Box<dyn Read> = match compression {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
        Compression::None => Box::new(input),
    };
    let mut hashed = Hashing {
        inner: decoded,
        hasher: Sha256::new(),
    };
    {
        let mut archive = tar::Archive::new(&mut hashed);
        let mut applier = Applier::new(target);
        let entries = archive
            .entries()
            .map_err(|e| UnpackError::Archive(e.to_string()))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| UnpackError::Archive(e.to_string()))?;
            applier.entry(&mut entry)?;
        }
        applier.finish()?;
    }
    // What follows the end-of-archive blocks is part of the diff id too.
    io::copy(&mut hashed, &mut io::sink()).map_err(|e| UnpackError::Archive(e.to_string()))?;
    Ok(format!("sha256:{}", hex::encode(hashed.hasher.finalize())))
}

/// Access and modification times of an entry.
#[derive(Debug, Clone, Copy)]
struct Times {
    atime: TimeSpec,
    mtime: TimeSpec,
}

struct Applier<'a> {
    root: &'a Path,
    /// Lower layers (overlayfs), topmost first.
    lowers: &'a [PathBuf],
    overlay: bool,
    /// Directories whose times are set at the end.
    dirs: Vec<(PathBuf, Times)>,
    /// What this layer wrote (a plain tree's opaque directory keeps it).
    written: HashSet<PathBuf>,
    /// File bodies go through it (see `copy_large`).
    buffer: Vec<u8>,
}

/// File bodies are copied in pieces of this size: `io::copy`'s 8 KiB
/// meant a write system call, a decoder call and a hash update per 8 KiB.
const COPY_BUFFER: usize = 1 << 20;

/// Copies `from` to `to` through `buffer` (filled as far as it goes before
/// each write).
fn copy_large(
    from: &mut impl Read,
    to: &mut impl io::Write,
    buffer: &mut Vec<u8>,
) -> io::Result<u64> {
    buffer.resize(COPY_BUFFER, 0);
    let mut total = 0u64;
    loop {
        let mut filled = 0;
        while filled < buffer.len() {
            match from.read(&mut buffer[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            return Ok(total);
        }
        to.write_all(&buffer[..filled])?;
        total += filled as u64;
    }
}

impl<'a> Applier<'a> {
    fn new(target: &'a Target) -> Applier<'a> {
        let (lowers, overlay): (&[PathBuf], bool) = match target {
            Target::Overlay { lowers, .. } => (lowers, true),
            Target::Tree { .. } => (&[], false),
        };
        Applier {
            root: target.root(),
            lowers,
            overlay,
            dirs: Vec::new(),
            written: HashSet::new(),
            buffer: Vec::new(),
        }
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions()
            || kind.is_gnu_longname()
            || kind.is_gnu_longlink()
        {
            return Ok(());
        }
        let name = entry
            .path()
            .map_err(|e| UnpackError::Archive(format!("entry name: {e}")))?
            .into_owned();
        let Some((parent_rel, base)) = split_clean(&name) else {
            // "." or "/": containerd leaves the root alone.
            return Ok(());
        };
        let parent = root_path(self.root, &parent_rel)?;
        let path = parent.join(&base);
        if path == self.root {
            return Ok(());
        }
        if parent != self.root {
            self.mkparent(&parent)?;
        }

        let base_str = base.to_string_lossy();
        if let Some(hidden) = base_str.strip_prefix(WHITEOUT_PREFIX) {
            return self.whiteout(entry, &parent, &base_str, hidden);
        }

        if let Ok(existing) = fs::symlink_metadata(&path)
            && !(existing.is_dir() && kind.is_dir())
        {
            remove_all(&path)?;
        }

        let header = entry.header().clone();
        let mode = header
            .mode()
            .map_err(|e| UnpackError::Archive(format!("{}: mode: {e}", name.display())))?
            & 0o7777;
        let uid = header
            .uid()
            .map_err(|e| UnpackError::Archive(format!("{}: uid: {e}", name.display())))?;
        let gid = header
            .gid()
            .map_err(|e| UnpackError::Archive(format!("{}: gid: {e}", name.display())))?;
        let times = entry_times(entry)?;
        let xattrs = entry_xattrs(entry)?;
        let shown = path.display().to_string();

        let mut chmod = true;
        match kind {
            tar::EntryType::Directory => {
                if !fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                    fs::create_dir(&path).map_err(io_err(format!("mkdir {shown}")))?;
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let mut f = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(io_err(format!("creating {shown}")))?;
                copy_large(entry, &mut f, &mut self.buffer)
                    .map_err(io_err(format!("writing {shown}")))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| UnpackError::Archive(format!("{}: link: {e}", name.display())))?
                    .ok_or_else(|| {
                        UnpackError::Archive(format!("{}: symlink without target", name.display()))
                    })?;
                std::os::unix::fs::symlink(&target, &path)
                    .map_err(io_err(format!("symlink {shown}")))?;
                chmod = false;
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(|e| UnpackError::Archive(format!("{}: link: {e}", name.display())))?
                    .ok_or_else(|| {
                        UnpackError::Archive(format!(
                            "{}: hard link without target",
                            name.display()
                        ))
                    })?
                    .into_owned();
                let source = self.hardlink_path(&link)?;
                fs::hard_link(&source, &path)
                    .map_err(io_err(format!("hard link {shown} to {}", source.display())))?;
                // A hard link to a symlink keeps the symlink's (absent) mode.
                chmod = !fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let (flag, dev) = match kind {
                    tar::EntryType::Char => (SFlag::S_IFCHR, device(&header)?),
                    tar::EntryType::Block => (SFlag::S_IFBLK, device(&header)?),
                    _ => (SFlag::S_IFIFO, 0),
                };
                nix::sys::stat::mknod(&path, flag, Mode::from_bits_truncate(0o600), dev)
                    .map_err(nix_err(format!("mknod {shown}")))?;
            }
            other => {
                return Err(UnpackError::Archive(format!(
                    "{}: unhandled entry type {:?}",
                    name.display(),
                    other
                )));
            }
        }

        // Ownership first: a chown clears setuid and setgid, the mode
        // below puts them back.
        std::os::unix::fs::lchown(
            &path,
            Some(u32::try_from(uid).unwrap_or(u32::MAX)),
            Some(u32::try_from(gid).unwrap_or(u32::MAX)),
        )
        .map_err(io_err(format!("chown {shown}")))?;
        for (key, value) in &xattrs {
            set_xattr(&path, key, value)?;
        }
        if chmod {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                .map_err(io_err(format!("chmod {shown}")))?;
        }
        if kind.is_dir() {
            self.dirs.push((path.clone(), times));
        } else {
            set_times(&path, times)?;
        }
        if !self.overlay {
            self.written.insert(path);
        }
        Ok(())
    }

    /// `.wh.NAME` and `.wh..wh..opq` in directory `parent`.
    fn whiteout<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        parent: &Path,
        base: &str,
        hidden: &str,
    ) -> Result<(), UnpackError> {
        if base == WHITEOUT_OPAQUE {
            if self.overlay {
                xattr::set(parent, OVERLAY_OPAQUE_XATTR, b"y")
                    .map_err(io_err(format!("marking {} opaque", parent.display())))?;
            } else {
                self.remove_unwritten(parent)?;
            }
            return Ok(());
        }
        if hidden.is_empty() || hidden == "." || hidden == ".." || hidden.contains('/') {
            return Err(UnpackError::Archive(format!(
                "invalid whiteout name {base}"
            )));
        }
        let path = parent.join(hidden);
        if self.overlay {
            nix::sys::stat::mknod(&path, SFlag::S_IFCHR, Mode::empty(), 0)
                .map_err(nix_err(format!("whiteout {}", path.display())))?;
            let header = entry.header();
            let uid = header.uid().unwrap_or(0);
            let gid = header.gid().unwrap_or(0);
            std::os::unix::fs::lchown(
                &path,
                Some(u32::try_from(uid).unwrap_or(u32::MAX)),
                Some(u32::try_from(gid).unwrap_or(u32::MAX)),
            )
            .map_err(io_err(format!("chown {}", path.display())))?;
        } else {
            remove_all(&path)?;
        }
        Ok(())
    }

    /// A plain tree's opaque directory: everything in `dir` that this layer
    /// did not write goes.
    fn remove_unwritten(&self, dir: &Path) -> Result<(), UnpackError> {
        let list = match fs::read_dir(dir) {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(format!("listing {}", dir.display()))(e)),
        };
        for child in list {
            let child = child
                .map_err(io_err(format!("listing {}", dir.display())))?
                .path();
            if !self.written.contains(&child) {
                remove_all(&child)?;
            } else if fs::symlink_metadata(&child).is_ok_and(|m| m.is_dir()) {
                self.remove_unwritten(&child)?;
            }
        }
        Ok(())
    }

    /// Creates the missing directories of `path` (inside the root), each
    /// with the attributes of the same directory in the lower layers.
    fn mkparent(&self, path: &Path) -> Result<(), UnpackError> {
        match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => return Ok(()),
            Ok(_) => {
                return Err(UnpackError::Io {
                    what: format!("parent {}", path.display()),
                    source: io::Error::from_raw_os_error(nix::libc::ENOTDIR),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(format!("stat {}", path.display()))(e)),
        }
        if let Some(up) = path.parent()
            && up != self.root
            && up.starts_with(self.root)
        {
            self.mkparent(up)?;
        }
        if let Err(e) = fs::create_dir(path) {
            if fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
                return Ok(());
            }
            return Err(io_err(format!("mkdir {}", path.display()))(e));
        }
        fs::set_permissions(path, fs::Permissions::from_mode(0o755))
            .map_err(io_err(format!("chmod {}", path.display())))?;
        let rel = path.strip_prefix(self.root).unwrap_or(path);
        for lower in self.lowers {
            let candidate = root_path(lower, rel)?;
            match fs::symlink_metadata(&candidate) {
                Ok(m) if m.is_dir() => {
                    std::os::unix::fs::lchown(path, Some(m.uid()), Some(m.gid()))
                        .map_err(io_err(format!("chown {}", path.display())))?;
                    fs::set_permissions(path, fs::Permissions::from_mode(m.mode() & 0o7777))
                        .map_err(io_err(format!("chmod {}", path.display())))?;
                    set_times(
                        path,
                        Times {
                            atime: timespec(m.atime(), m.atime_nsec()),
                            mtime: timespec(m.mtime(), m.mtime_nsec()),
                        },
                    )?;
                    if let Ok(names) = xattr::list(&candidate) {
                        for name in names {
                            // A lower directory's opaque mark is that
                            // layer's, not this one's.
                            if name.to_string_lossy().starts_with("trusted.overlay.") {
                                continue;
                            }
                            if let Ok(Some(v)) = xattr::get(&candidate, &name) {
                                // Best effort, as containerd's copy-up.
                                let _ = xattr::set(path, &name, &v);
                            }
                        }
                    }
                    return Ok(());
                }
                // Replaced by something else in that layer: no attributes.
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(format!("stat {}", candidate.display()))(e)),
            }
        }
        Ok(())
    }

    /// A hard link's source: its parent resolved inside the root, its last
    /// component not followed.
    fn hardlink_path(&self, link: &Path) -> Result<PathBuf, UnpackError> {
        let Some((parent_rel, base)) = split_clean(link) else {
            return Err(UnpackError::Archive(format!(
                "hard link to the root ({})",
                link.display()
            )));
        };
        Ok(root_path(self.root, &parent_rel)?.join(base))
    }

    fn finish(&mut self) -> Result<(), UnpackError> {
        for (path, times) in std::mem::take(&mut self.dirs) {
            set_times(&path, times)?;
        }
        Ok(())
    }
}

/// `name` cleaned (no `.`, leading `/` dropped, `..` kept for
/// `root_path` to bound) and split into its parent and last component;
/// None for the root itself.
fn split_clean(name: &Path) -> Option<(PathBuf, std::ffi::OsString)> {
    let mut parts: Vec<&OsStr> = Vec::new();
    for c in name.components() {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::ParentDir => {
                // Lexical, as Go's filepath.Clean: `a/../b` is `b`; a `..`
                // above the start stays for `root_path` to stop at the root.
                if parts.last().is_some_and(|p| *p != OsStr::new("..")) {
                    parts.pop();
                } else {
                    parts.push(OsStr::new(".."));
                }
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    let base = parts.pop()?;
    if base == OsStr::new("..") {
        return None;
    }
    Some((parts.iter().collect(), base.to_owned()))
}

/// `rel` joined to `root` with every symlink on the way resolved inside
/// `root` (an absolute target starts again at `root`, `..` stops there):
/// containerd's `fs.RootPath`. The last component is followed too.
fn root_path(root: &Path, rel: &Path) -> Result<PathBuf, UnpackError> {
    let mut resolved = root.to_path_buf();
    let mut pending: Vec<std::ffi::OsString> = rel
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut links = 0usize;
    while let Some(part) = pending.pop() {
        if part == ".." {
            if resolved != root {
                resolved.pop();
            }
            continue;
        }
        let next = resolved.join(&part);
        match fs::symlink_metadata(&next) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(UnpackError::Archive(format!(
                        "too many symlinks resolving {}",
                        rel.display()
                    )));
                }
                let target =
                    fs::read_link(&next).map_err(io_err(format!("readlink {}", next.display())))?;
                if target.is_absolute() {
                    resolved = root.to_path_buf();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(p) => pending.push(p.to_owned()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            _ => resolved = next,
        }
    }
    Ok(resolved)
}

fn remove_all(path: &Path) -> Result<(), UnpackError> {
    let r = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    r.map_err(io_err(format!("removing {}", path.display())))
}

fn device(header: &tar::Header) -> Result<u64, UnpackError> {
    let major = header
        .device_major()
        .map_err(|e| UnpackError::Archive(format!("device major: {e}")))?
        .unwrap_or(0);
    let minor = header
        .device_minor()
        .map_err(|e| UnpackError::Archive(format!("device minor: {e}")))?
        .unwrap_or(0);
    Ok(nix::sys::stat::makedev(u64::from(major), u64::from(minor)))
}

/// Times as Go's archive/tar reads them: PAX `mtime`/`atime` (with
/// fractions) over the header's seconds, GNU headers' access time; the
/// access time is never before the modification time (containerd's
/// `latestTime`).
fn entry_times<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Times, UnpackError> {
    let header = entry.header();
    let mut mtime = timespec(
        i64::try_from(header.mtime().unwrap_or(0)).unwrap_or(i64::MAX),
        0,
    );
    let mut atime = header
        .as_gnu()
        .and_then(|g| g.atime().ok())
        .filter(|a| *a != 0)
        .map(|a| timespec(i64::try_from(a).unwrap_or(i64::MAX), 0));
    if let Some(pax) = entry
        .pax_extensions()
        .map_err(|e| UnpackError::Archive(format!("pax records: {e}")))?
    {
        for ext in pax.flatten() {
            let parsed = ext.value().ok().and_then(parse_pax_time);
            match (ext.key().ok(), parsed) {
                (Some("mtime"), Some(t)) => mtime = t,
                (Some("atime"), Some(t)) => atime = Some(t),
                _ => {}
            }
        }
    }
    let atime = match atime {
        Some(a) if a > mtime => a,
        _ => mtime,
    };
    Ok(Times { atime, mtime })
}

/// `1700000000.123456789` (PAX time: seconds, optional fraction).
fn parse_pax_time(s: &str) -> Option<TimeSpec> {
    let (secs, frac) = match s.split_once('.') {
        Some((a, b)) => (a, b),
        None => (s, ""),
    };
    let secs: i64 = secs.parse().ok()?;
    let mut nanos = 0i64;
    for (i, d) in frac.chars().take(9).enumerate() {
        nanos += i64::from(d.to_digit(10)?) * 10i64.pow(8 - i as u32);
    }
    if secs < 0 && nanos > 0 {
        return Some(timespec(secs - 1, 1_000_000_000 - nanos));
    }
    Some(timespec(secs, nanos))
}

/// A `TimeSpec` from 64-bit seconds and nanoseconds. `time_t` has 32 bits
/// on armhf: times beyond its range saturate there.
#[allow(clippy::useless_conversion)]
fn timespec(secs: i64, nanos: i64) -> TimeSpec {
    let limit = if secs < 0 {
        nix::libc::time_t::MIN
    } else {
        nix::libc::time_t::MAX
    };
    TimeSpec::new(
        secs.try_into().unwrap_or(limit),
        nanos.try_into().unwrap_or(0),
    )
}

fn entry_xattrs<R: Read>(
    entry: &mut tar::Entry<'_, R>,
) -> Result<Vec<(String, Vec<u8>)>, UnpackError> {
    let mut out = Vec::new();
    if let Some(pax) = entry
        .pax_extensions()
        .map_err(|e| UnpackError::Archive(format!("pax records: {e}")))?
    {
        for ext in pax.flatten() {
            // trusted.* from a layer would steer overlayfs on the upper
            // directory (trusted.overlay.*); containerd 1.6 does not
            // apply that namespace either (tests/tests/agent_unpack.rs).
            if let Ok(key) = ext.key()
                && let Some(name) = key.strip_prefix(PAX_XATTR)
                && !name.starts_with("trusted.")
            {
                out.push((name.to_owned(), ext.value_bytes().to_vec()));
            }
        }
    }
    Ok(out)
}

/// Sets an xattr without following a symlink; like containerd, an xattr
/// the file system does not support (or a `security.*` one refused) is
/// skipped with a warning, not a failed pull.
fn set_xattr(path: &Path, key: &str, value: &[u8]) -> Result<(), UnpackError> {
    match xattr::set(path, key, value) {
        Ok(()) => Ok(()),
        Err(e)
            if e.raw_os_error() == Some(nix::libc::ENOTSUP)
                || (e.raw_os_error() == Some(nix::libc::EPERM) && key.starts_with("security.")) =>
        {
            tracing::warn!(path = %path.display(), key, error = %e, "xattr in the layer ignored");
            Ok(())
        }
        Err(e) => Err(io_err(format!("xattr {key} on {}", path.display()))(e)),
    }
}

fn set_times(path: &Path, t: Times) -> Result<(), UnpackError> {
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t.atime,
        &t.mtime,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(nix_err(format!("times of {}", path.display())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_are_cleaned_like_go() {
        let s = |n: &str| split_clean(Path::new(n)).map(|(p, b)| (p, b.into_string().unwrap()));
        assert_eq!(s("./a/b"), Some((PathBuf::from("a"), "b".into())));
        assert_eq!(s("/a/./b/"), Some((PathBuf::from("a"), "b".into())));
        assert_eq!(s("a/../b"), Some((PathBuf::new(), "b".into())));
        assert_eq!(
            s("../../etc/x"),
            Some((PathBuf::from("../../etc"), "x".into()))
        );
        assert_eq!(s("."), None);
        assert_eq!(s("/"), None);
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::os::unix::fs::symlink("/usr/lib", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", root.join("usr/up")).unwrap();
        assert_eq!(
            root_path(root, Path::new("abs/x")).unwrap(),
            root.join("usr/lib/x")
        );
        assert_eq!(
            root_path(root, Path::new("usr/up/passwd")).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(
            root_path(root, Path::new("../../x")).unwrap(),
            root.join("x")
        );
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert!(root_path(root, Path::new("loop/x")).is_err());
    }

    #[test]
    fn pax_times_keep_nanoseconds() {
        assert_eq!(
            parse_pax_time("1700000000.5"),
            Some(TimeSpec::new(1_700_000_000, 500_000_000))
        );
        assert_eq!(parse_pax_time("12.000000001"), Some(TimeSpec::new(12, 1)));
        assert_eq!(parse_pax_time("x"), None);
    }

    #[test]
    fn mounts_name_their_target() {
        let o = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            Target::from_mount("bind", "/s/1/fs", &o(&["rbind", "rw"])),
            Some(Target::Tree {
                root: "/s/1/fs".into()
            })
        );
        assert_eq!(
            Target::from_mount("bind", "/s/1/fs", &o(&["rbind", "ro"])),
            None
        );
        assert_eq!(
            Target::from_mount(
                "overlay",
                "overlay",
                &o(&[
                    "index=off",
                    "workdir=/s/3/work",
                    "upperdir=/s/3/fs",
                    "lowerdir=/s/2/fs:/s/1/fs"
                ])
            ),
            Some(Target::Overlay {
                upper: "/s/3/fs".into(),
                lowers: vec!["/s/2/fs".into(), "/s/1/fs".into()]
            })
        );
        assert_eq!(
            Target::from_mount(
                "overlay",
                "overlay",
                &o(&["upperdir=/u", "lowerdir=/l", "userxattr"])
            ),
            None
        );
        assert_eq!(Target::from_mount("btrfs", "/dev/x", &o(&[])), None);
    }
}
