//! The local store of pulled artifacts, content-addressed by manifest
//! digest:
//!
//! ```text
//! $XDG_CACHE_HOME/cygvm/oci/           (default; --store DIR)
//!   sha256/<hex>/                      a complete image directory, files read-only:
//!     current -> gen-NNNN, gen-NNNN/{manifest.json, disk.qcow2, state.gz, …},
//!     secrets/, artifact.json (the OCI manifest)
//!   sha256/.<hex>.partial/             a pull in progress or interrupted;
//!     .done/<layer>                    layers written, verified and synced
//!   sha256/<hex>.lock                  held by the one process pulling <hex>
//! ```
//!
//! A directory gets its real name only complete (temp, fsync, rename), so
//! a process that finds `sha256/<hex>` can run from it without a lock.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

#[derive(Debug, Clone)]
pub struct Store {
    pub root: PathBuf,
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
        let path = dir.join(format!("{}.lock", hex_of(digest)));
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
