//! Reproducible layer tarballs: [`LayerBuilder`] writes a tar with fixed
//! owners, modes and mtimes straight into a gzip stream while hashing the
//! uncompressed bytes (the config's `diff_id`), and the deterministic
//! pseudo-random content used for large layers and benchmark blobs.
//!
//! Reproducibility is the point: the same call gives the same digests on
//! every machine and every run, so tests can hard-code nothing yet compare
//! everything, and a benchmark's second run pushes the very same bytes.

use std::io::{self, Read, Write};
use std::sync::OnceLock;

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use sha2::{Digest as _, Sha256};

/// A compressed layer and the digest of its uncompressed tar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// The gzip stream, as pushed to a registry.
    pub data: Bytes,
    /// `sha256:…` of the uncompressed tar, for `rootfs.diff_ids`.
    pub diff_id: String,
}

#[derive(Clone, Debug)]
enum FileData {
    Bytes(Bytes),
    Random { size: u64, seed: u64 },
}

#[derive(Clone, Debug)]
enum Entry {
    Dir {
        path: String,
    },
    File {
        path: String,
        mode: u32,
        data: FileData,
    },
    Symlink {
        path: String,
        target: String,
    },
}

/// Builds one gzip-compressed tar layer with deterministic headers
/// (uid/gid 0, mtime 0, explicit modes), in the order entries were added.
#[derive(Clone, Debug)]
pub struct LayerBuilder {
    entries: Vec<Entry>,
    level: Compression,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl LayerBuilder {
    pub fn new() -> Self {
        LayerBuilder {
            entries: Vec::new(),
            level: Compression::default(),
        }
    }

    /// A directory entry (mode 0755); `path` like `bin/`.
    pub fn dir(mut self, path: &str) -> Self {
        self.entries.push(Entry::Dir {
            path: path.to_owned(),
        });
        self
    }

    pub fn file(mut self, path: &str, mode: u32, data: impl Into<Bytes>) -> Self {
        self.entries.push(Entry::File {
            path: path.to_owned(),
            mode,
            data: FileData::Bytes(data.into()),
        });
        self
    }

    /// A file of `size` bytes of [`fill_random`] content, generated while the
    /// tar is written (never held in memory uncompressed).
    pub fn random_file(mut self, path: &str, size: u64, seed: u64) -> Self {
        self.entries.push(Entry::File {
            path: path.to_owned(),
            mode: 0o644,
            data: FileData::Random { size, seed },
        });
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        self.entries.push(Entry::Symlink {
            path: path.to_owned(),
            target: target.to_owned(),
        });
        self
    }

    /// gzip level; [`Compression::none`] suits random content, which does
    /// not compress and would only cost CPU time.
    pub fn compression(mut self, level: Compression) -> Self {
        self.level = level;
        self
    }

    pub fn build(&self) -> Layer {
        self.try_build()
            .expect("writing a tar into memory cannot fail")
    }

    fn try_build(&self) -> io::Result<Layer> {
        // GzEncoder::new writes a header with mtime 0, no file name and
        // OS "unknown": the same bytes on every machine.
        let gz = GzEncoder::new(Vec::new(), self.level);
        let mut tar = tar::Builder::new(HashingWriter {
            inner: gz,
            hasher: Sha256::new(),
        });
        for entry in &self.entries {
            let mut header = tar::Header::new_ustar();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            match entry {
                Entry::Dir { path } => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(0o755);
                    header.set_size(0);
                    tar.append_data(&mut header, path, io::empty())?;
                }
                Entry::File { path, mode, data } => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(*mode);
                    match data {
                        FileData::Bytes(b) => {
                            header.set_size(b.len() as u64);
                            tar.append_data(&mut header, path, &b[..])?;
                        }
                        FileData::Random { size, seed } => {
                            header.set_size(*size);
                            let reader = RandomReader {
                                seed: *seed,
                                offset: 0,
                                remaining: *size,
                            };
                            tar.append_data(&mut header, path, reader)?;
                        }
                    }
                }
                Entry::Symlink { path, target } => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_mode(0o777);
                    header.set_size(0);
                    tar.append_link(&mut header, path, target)?;
                }
            }
        }
        let hashing = tar.into_inner()?;
        let diff_id = format!("sha256:{}", hex::encode(hashing.hasher.finalize()));
        let data = hashing.inner.finish()?;
        Ok(Layer {
            data: Bytes::from(data),
            diff_id,
        })
    }
}

/// Passes bytes through to `inner` while hashing them.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The busybox layer: `bin/busybox` from the host's busybox-static plus the
/// applet symlinks tests use. Built once per process: compressing 2 MB at
/// the default level is the slowest step of building a test image.
pub(crate) fn busybox_layer() -> Layer {
    static LAYER: OnceLock<Layer> = OnceLock::new();
    LAYER
        .get_or_init(|| {
            // The layer must hold the statically linked busybox (it runs in
            // containers without a libc), which busybox-static installs here.
            let path = std::path::Path::new("/bin/busybox");
            if !path.is_file() {
                panic!("/bin/busybox is required for test images: apt-get install busybox-static");
            }
            let binary =
                std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            let mut builder = LayerBuilder::new()
                .dir("bin/")
                .file("bin/busybox", 0o755, binary);
            for applet in BUSYBOX_APPLETS {
                builder = builder.symlink(&format!("bin/{applet}"), "busybox");
            }
            builder.build()
        })
        .clone()
}

/// Applets linked in the busybox layer.
pub const BUSYBOX_APPLETS: &[&str] = &["sh", "echo", "cat", "sleep", "ls", "true", "false"];

/// Deterministic pseudo-random bytes for benchmarks, as from
/// [`fill_random`] at offset 0.
pub fn random_blob(size: usize, seed: u64) -> Bytes {
    let mut data = vec![0u8; size];
    fill_random(seed, 0, &mut data);
    Bytes::from(data)
}

/// Fills `out` with the bytes at `offset..` of the pseudo-random stream for
/// `seed`. Each 8-byte word is a SplitMix64 output of its own index, so the
/// result does not depend on how the stream is cut into reads, and neither a
/// `rand` upgrade nor a platform change can alter test data.
pub fn fill_random(seed: u64, offset: u64, out: &mut [u8]) {
    let mut pos = 0;
    let mut word_index = offset / 8;
    let mut skip = (offset % 8) as usize;
    while pos < out.len() {
        let word =
            splitmix64(seed.wrapping_add(word_index.wrapping_mul(GOLDEN_GAMMA))).to_le_bytes();
        let take = (8 - skip).min(out.len() - pos);
        out[pos..pos + take].copy_from_slice(&word[skip..skip + take]);
        pos += take;
        skip = 0;
        word_index += 1;
    }
}

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 output function (Steele, Lea, Flood 2014).
pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(GOLDEN_GAMMA);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Streams [`fill_random`] content into the tar builder.
struct RandomReader {
    seed: u64,
    offset: u64,
    remaining: u64,
}

impl Read for RandomReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        fill_random(self.seed, self.offset, &mut buf[..n]);
        self.offset += n as u64;
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// `sha256:…` of a layer's uncompressed content, by decompressing it: what
/// tests compare against the config's `diff_ids`.
pub fn gunzip_diff_id(gz: &[u8]) -> io::Result<String> {
    let mut decoder = flate2::read::GzDecoder::new(gz);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = decoder.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

/// The uncompressed tar of a gzip layer.
pub fn gunzip(gz: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(gz).read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::sha256_hex;

    #[test]
    fn random_stream_is_independent_of_read_sizes() {
        let whole = random_blob(1000, 7);
        let mut pieces = vec![0u8; 1000];
        let mut offset = 0;
        for len in [1usize, 3, 8, 13, 100, 875] {
            fill_random(7, offset as u64, &mut pieces[offset..offset + len]);
            offset += len;
        }
        assert_eq!(&whole[..], &pieces[..]);
        assert_ne!(random_blob(64, 7), random_blob(64, 8));
    }

    #[test]
    fn layer_diff_id_matches_decompressed_tar() {
        let layer = LayerBuilder::new()
            .dir("etc/")
            .file("etc/hello", 0o644, &b"hello\n"[..])
            .random_file("etc/blob", 100_000, 1)
            .symlink("etc/link", "hello")
            .build();
        assert_eq!(gunzip_diff_id(&layer.data).expect("gunzip"), layer.diff_id);
        let tar_bytes = gunzip(&layer.data).expect("gunzip");
        assert_eq!(format!("sha256:{}", sha256_hex(&tar_bytes)), layer.diff_id);
        let mut archive = tar::Archive::new(&tar_bytes[..]);
        let names: Vec<String> = archive
            .entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                assert_eq!(e.header().mtime().expect("mtime"), 0);
                assert_eq!(e.header().uid().expect("uid"), 0);
                e.path().expect("path").display().to_string()
            })
            .collect();
        assert_eq!(names, ["etc/", "etc/hello", "etc/blob", "etc/link"]);
    }
}
