//! The local store of pulled artifacts, content-addressed by manifest
//! digest:
//!
//! ```text
//! $XDG_CACHE_HOME/cygvm/oci/           (default; --store DIR)
//!   sha256/<hex>/                      a complete image directory, files read-only:
//!     current -> gen-NNNN, gen-NNNN/{manifest.json, disk.qcow2, state.gz, …},
//!     secrets/, artifact.json (the OCI manifest), pulled-from
//!   sha256/.<hex>.partial/             a pull in progress or interrupted;
//!     .done/<layer>                    layers written, verified and synced
//!   sha256/<hex>.lock                  held by the one process pulling <hex>;
//!                                      its mtime is the image's last use
//! ```
//!
//! A directory gets its real name only complete (temp, fsync, rename), so
//! a process that finds `sha256/<hex>` can run from it without a lock. A
//! run holds its generation's lock, so `cygvm store prune` never removes an
//! image a run is using.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

#[derive(Debug, Clone)]
pub struct Store {
    pub root: PathBuf,
}

/// The file in a pulled image naming the reference it was pulled from.
pub const PULLED_FROM: &str = "pulled-from";

/// One image in the store, or an unfinished pull.
#[derive(Debug, Clone)]
pub struct StoreEntry {
    /// `sha256:<hex>`
    pub digest: String,
    pub dir: PathBuf,
    /// What it was pulled from (`REGISTRY/REPO@sha256:…`), if recorded.
    pub pulled_from: Option<String>,
    /// An interrupted (or running) pull, not an image.
    pub partial: bool,
    pub last_used: std::time::SystemTime,
    pub disk_bytes: u64,
}

/// `$XDG_CACHE_HOME/cygvm/oci`, else `~/.cache/cygvm/oci`.
pub fn default_store() -> Result<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    match (env("XDG_CACHE_HOME"), env("HOME")) {
        (Some(c), _) => Ok(c.join("cygvm/oci")),
        (None, Some(h)) => Ok(h.join(".cache/cygvm/oci")),
        (None, None) => {
            bail!("no store directory: neither XDG_CACHE_HOME nor HOME is set; pass --store DIR")
        }
    }
}

impl Store {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn dir(&self) -> PathBuf {
        self.root.join("sha256")
    }

    /// The image directory of the artifact with this manifest digest.
    pub fn image_dir(&self, digest: &str) -> PathBuf {
        self.dir().join(hex_of(digest))
    }

    pub fn partial_dir(&self, digest: &str) -> PathBuf {
        self.dir().join(format!(".{}.partial", hex_of(digest)))
    }

    /// Whether a complete copy is here.
    pub fn has(&self, digest: &str) -> bool {
        self.image_dir(digest).join(crate::image::CURRENT).exists()
    }

    /// Waits for, then holds, the right to pull `digest` on this host.
    pub fn lock(&self, digest: &str) -> Result<PullLock> {
        let dir = self.dir();
        fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the store {}", dir.display()))?;
        let path = self.lock_path(hex_of(digest));
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open the lock {}", path.display()))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            eprintln!(
                "waiting for another process pulling {digest} into {}",
                self.root.display()
            );
            // SAFETY: as above.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        Ok(PullLock { _file: file })
    }
}

impl Store {
    fn lock_path(&self, hex: &str) -> PathBuf {
        self.dir().join(format!("{hex}.lock"))
    }

    /// The images and unfinished pulls in the store, by digest.
    pub fn entries(&self) -> Vec<StoreEntry> {
        let mut out = Vec::new();
        for e in fs::read_dir(self.dir()).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let (hex, partial) = match name.strip_prefix('.') {
                Some(rest) => match rest.strip_suffix(".partial") {
                    Some(hex) => (hex.to_string(), true),
                    None => continue,
                },
                None => (name.clone(), false),
            };
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) || !e.path().is_dir()
            {
                continue;
            }
            let stamp = if partial {
                e.path()
            } else {
                self.lock_path(&hex)
            };
            let last_used = fs::metadata(&stamp)
                .or_else(|_| fs::metadata(e.path()))
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            out.push(StoreEntry {
                digest: format!("sha256:{hex}"),
                pulled_from: fs::read_to_string(e.path().join(PULLED_FROM))
                    .ok()
                    .map(|s| s.trim().to_string()),
                partial,
                last_used,
                disk_bytes: crate::fsutil::allocated_bytes(&e.path()),
                dir: e.path(),
            });
        }
        out.sort_by(|a, b| a.dir.cmp(&b.dir));
        out
    }

    /// Removes an image (or unfinished pull) unless a run or a pull is
    /// using it; returns whether it went. Its expanded snapshots in this
    /// host's cache go with it.
    pub fn remove(&self, entry: &StoreEntry) -> Result<bool> {
        let hex = hex_of(&entry.digest);
        let Some(_pulling) = crate::image::FileLock::try_exclusive(&self.lock_path(hex))? else {
            return Ok(false);
        };
        let mut held = Vec::new();
        if !entry.partial {
            let image = crate::image::ImageDir::new(&entry.dir);
            for g in image.generations()? {
                match g.try_lock_exclusive()? {
                    Some(lock) => held.push((g, lock)),
                    None => return Ok(false),
                }
            }
        }
        for (g, _) in &held {
            crate::derived::forget_generation(&entry.dir, g);
        }
        let aside = self.dir().join(format!(".{hex}.removing"));
        let _ = fs::remove_dir_all(&aside);
        fs::rename(&entry.dir, &aside)
            .with_context(|| format!("cannot remove {}", entry.dir.display()))?;
        fs::remove_dir_all(&aside).with_context(|| format!("cannot remove {}", aside.display()))?;
        let _ = fs::remove_file(self.lock_path(hex));
        crate::fsutil::sync_dir(&self.dir())
            .with_context(|| format!("cannot sync {}", self.dir().display()))?;
        Ok(true)
    }
}

/// Records that the image at `image_dir` was used now, if it is an image
/// in a store (`…/sha256/<hex>`): `cygvm store prune --unused-for` reads it.
pub fn note_use(image_dir: &Path) {
    let (Some(parent), Some(name)) = (image_dir.parent(), image_dir.file_name()) else {
        return;
    };
    if parent.file_name().is_none_or(|n| n != "sha256") {
        return;
    }
    // Only an image pulled here has its lock file beside it.
    let _ = crate::fsutil::mark_used(
        &parent.join(format!("{}.lock", name.to_string_lossy())),
        false,
    );
}

/// Held while a process pulls one artifact.
pub struct PullLock {
    _file: File,
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// Makes the files under `dir` read-only (secrets stay 0600, for the
/// check that refuses exposed keys), fsyncs them and the directories.
pub fn seal(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let meta = fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            seal(&path)?;
        } else if meta.is_file() {
            let f = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
            f.sync_all()
                .with_context(|| format!("cannot sync {}", path.display()))?;
            let secret = dir.file_name().is_some_and(|n| n == crate::image::SECRETS);
            let mode = if secret {
                0o600
            } else {
                meta.permissions().mode() & 0o444
            };
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
        }
    }
    crate::fsutil::sync_dir(dir).with_context(|| format!("cannot sync {}", dir.display()))
}
