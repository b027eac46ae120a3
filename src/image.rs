//! The image directory: generations, locking, atomic publish.
//!
//! ```text
//! images/<name>/
//!   current -> gen-0002     swapped atomically
//!   gen-0002/               manifest.json, disk.qcow2, state.gz, logs/
//!   secrets/  media/
//! ```
//!
//! A generation is built under a hidden temporary name and renamed into
//! place complete; `current` is replaced by renaming a new symlink over it.
//! Installs and refreshes hold the image's lock exclusively; runs hold a
//! shared lock on the generation they use, so pruning never removes a
//! generation under a running build.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path} is not a cygvm image (no `current` generation); run `cygvm install` first")]
    NoImage { path: PathBuf },
    #[error(
        "image {path} is busy: another install or refresh holds its lock; wait for it to finish"
    )]
    Busy { path: PathBuf },
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} names generation {name:?}, which is not of the form gen-NNNN")]
    BadGeneration { path: PathBuf, name: String },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ImageError {
    let path = path.to_path_buf();
    move |source| ImageError::Io {
        action,
        path,
        source,
    }
}

pub const CURRENT: &str = "current";
pub const DISK: &str = "disk.qcow2";
pub const STATE: &str = "state.gz";
pub const MANIFEST: &str = "manifest.json";
pub const LOGS: &str = "logs";
pub const SECRETS: &str = "secrets";
pub const MEDIA: &str = "media";
const LOCK: &str = ".lock";

/// An image's top directory.
#[derive(Debug, Clone)]
pub struct ImageDir {
    pub root: PathBuf,
}

/// One published generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    pub number: u32,
    pub dir: PathBuf,
}

impl Generation {
    pub fn disk(&self) -> PathBuf {
        self.dir.join(DISK)
    }
    pub fn state(&self) -> PathBuf {
        self.dir.join(STATE)
    }
    pub fn manifest(&self) -> PathBuf {
        self.dir.join(MANIFEST)
    }
    pub fn logs(&self) -> PathBuf {
        self.dir.join(LOGS)
    }
    pub fn has_snapshot(&self) -> bool {
        self.state().is_file()
    }

    /// Holds a shared lock so the generation is not pruned while in use.
    pub fn lock_shared(&self) -> Result<FileLock, ImageError> {
        FileLock::acquire(&self.dir.join(LOCK), libc::LOCK_SH)
    }

    /// The lock removing it takes; `None` while a run holds it.
    pub fn try_lock_exclusive(&self) -> Result<Option<FileLock>, ImageError> {
        FileLock::try_exclusive(&self.dir.join(LOCK))
    }
}

pub fn generation_name(number: u32) -> String {
    format!("gen-{number:04}")
}

pub fn parse_generation(name: &str) -> Option<u32> {
    name.strip_prefix("gen-")
        .filter(|n| n.len() >= 4 && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse().ok())
}

/// An flock held until dropped.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// Waits for the lock on `path` (created if missing): exclusive or shared.
    pub fn wait(path: &Path, exclusive: bool) -> Result<Self, ImageError> {
        let file = Self::open(path)?;
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        loop {
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
                return Ok(Self { _file: file });
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(io("lock", path)(err));
            }
        }
    }

    /// The exclusive lock on `path` if nobody holds it, without waiting.
    pub fn try_exclusive(path: &Path) -> Result<Option<Self>, ImageError> {
        match Self::acquire(path, libc::LOCK_EX) {
            Ok(lock) => Ok(Some(lock)),
            Err(ImageError::Busy { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn open(path: &Path) -> Result<File, ImageError> {
        fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io("open the lock", path))
    }

    fn acquire(path: &Path, op: libc::c_int) -> Result<Self, ImageError> {
        let file = Self::open(path)?;
        // SAFETY: flock on a descriptor we own.
        let r = unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) };
        if r != 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::WouldBlock {
                return Err(ImageError::Busy {
                    path: path.parent().unwrap_or(path).to_path_buf(),
                });
            }
            return Err(io("lock", path)(err));
        }
        Ok(Self { _file: file })
    }
}

impl ImageDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn secrets(&self) -> PathBuf {
        self.root.join(SECRETS)
    }

    pub fn media(&self) -> PathBuf {
        self.root.join(MEDIA)
    }

    /// Exclusive lock for installs and refreshes; fails at once when held.
    pub fn lock_exclusive(&self) -> Result<FileLock, ImageError> {
        fs::create_dir_all(&self.root).map_err(io("create", &self.root))?;
        FileLock::acquire(&self.root.join(LOCK), libc::LOCK_EX)
    }

    /// The generation `current` points to.
    pub fn current(&self) -> Result<Generation, ImageError> {
        let link = self.root.join(CURRENT);
        let target = fs::read_link(&link).map_err(|_| ImageError::NoImage {
            path: self.root.clone(),
        })?;
        let name = target.to_string_lossy().into_owned();
        let number = parse_generation(&name).ok_or_else(|| ImageError::BadGeneration {
            path: link.clone(),
            name: name.clone(),
        })?;
        let dir = self.root.join(&name);
        if !dir.is_dir() {
            return Err(ImageError::NoImage {
                path: self.root.clone(),
            });
        }
        Ok(Generation { number, dir })
    }

    /// Published generations, oldest first.
    pub fn generations(&self) -> Result<Vec<Generation>, ImageError> {
        let mut gens: Vec<Generation> = match fs::read_dir(&self.root) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    parse_generation(&name).map(|number| Generation {
                        number,
                        dir: e.path(),
                    })
                })
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io("read", &self.root)(e)),
        };
        gens.sort_by_key(|g| g.number);
        Ok(gens)
    }

    /// Starts the next generation in a hidden directory. Leftovers of
    /// interrupted attempts are removed first (the caller holds the lock).
    pub fn begin_generation(&self, _lock: &FileLock) -> Result<PendingGeneration, ImageError> {
        fs::create_dir_all(&self.root).map_err(io("create", &self.root))?;
        for entry in fs::read_dir(&self.root)
            .map_err(io("read", &self.root))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".gen-") {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        let next = self.generations()?.last().map_or(1, |g| g.number + 1);
        let dir = self.root.join(format!(".{}.tmp", generation_name(next)));
        fs::create_dir_all(dir.join(LOGS)).map_err(io("create", &dir))?;
        Ok(PendingGeneration {
            image: self.clone(),
            generation: Generation { number: next, dir },
            published: false,
        })
    }

    /// Removes all but the newest `keep` generations, never `current` and
    /// never one a run holds.
    pub fn prune(&self, keep: usize, lock: &FileLock) -> Result<Vec<u32>, ImageError> {
        self.prune_with(keep, lock, |_| {})
    }

    /// Like [`ImageDir::prune`], calling `removing` with each generation
    /// just before it goes (while no run can take it).
    pub fn prune_with(
        &self,
        keep: usize,
        _lock: &FileLock,
        mut removing: impl FnMut(&Generation),
    ) -> Result<Vec<u32>, ImageError> {
        let current = self.current().ok();
        let gens = self.generations()?;
        let mut removed = Vec::new();
        let excess = gens.len().saturating_sub(keep.max(1));
        for g in gens.into_iter().take(excess) {
            if Some(&g) == current.as_ref() {
                continue;
            }
            let Ok(lock) = FileLock::acquire(&g.dir.join(LOCK), libc::LOCK_EX) else {
                continue;
            };
            removing(&g);
            fs::remove_dir_all(&g.dir).map_err(io("remove", &g.dir))?;
            drop(lock);
            removed.push(g.number);
        }
        Ok(removed)
    }
}

/// A run's scratch directory beside the image (`.run-XXXX`), for its
/// overlay. Removed when dropped; its lock tells a later run that a
/// directory still belongs to a live run rather than to a killed one.
#[derive(Debug)]
pub struct RunScratch {
    dir: tempfile::TempDir,
    _lock: FileLock,
}

impl RunScratch {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A scratch directory without its lock file yet is left alone this long:
/// its run may be just starting.
const SCRATCH_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);
/// A run creates its lock file a moment before it takes the lock, so a free
/// lock in a directory younger than this may be a run starting, not one
/// that was killed.
const SCRATCH_START_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

impl ImageDir {
    /// A new scratch directory for a run, after removing those of runs
    /// that were killed.
    pub fn run_scratch(&self) -> Result<RunScratch, ImageError> {
        self.clean_stale_scratch();
        let dir = tempfile::Builder::new()
            .prefix(".run-")
            .tempdir_in(&self.root)
            .map_err(io("create a scratch directory in", &self.root))?;
        let lock = FileLock::acquire(&dir.path().join(LOCK), libc::LOCK_EX)?;
        Ok(RunScratch { dir, _lock: lock })
    }

    fn clean_stale_scratch(&self) {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            if !entry.file_name().to_string_lossy().starts_with(".run-") {
                continue;
            }
            let dir = entry.path();
            let lock = dir.join(LOCK);
            let age = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok());
            let stale = if lock.exists() {
                // Not held: the run that made it is gone.
                age.is_some_and(|age| age > SCRATCH_START_GRACE)
                    && FileLock::acquire(&lock, libc::LOCK_EX).is_ok()
            } else {
                age.is_some_and(|age| age > SCRATCH_GRACE)
            };
            if stale {
                tracing::info!("removing {} left by a run that was killed", dir.display());
                let _ = fs::remove_dir_all(&dir);
            }
        }
    }
}

/// A generation being built. Dropped unpublished, it is removed.
#[derive(Debug)]
pub struct PendingGeneration {
    image: ImageDir,
    /// Its number and (temporary) directory; the file paths come from here.
    generation: Generation,
    published: bool,
}

impl std::ops::Deref for PendingGeneration {
    type Target = Generation;
    fn deref(&self) -> &Generation {
        &self.generation
    }
}

impl PendingGeneration {
    /// fsyncs every file, renames the directory to `gen-NNNN` and points
    /// `current` at it.
    pub fn publish(mut self) -> Result<Generation, ImageError> {
        sync_tree(&self.dir)?;
        let name = generation_name(self.number);
        let final_dir = self.image.root.join(&name);
        fs::rename(&self.generation.dir, &final_dir).map_err(io("publish", &final_dir))?;
        self.published = true;
        crate::fsutil::sync_dir(&self.image.root).map_err(io("sync", &self.image.root))?;
        let tmp_link = self.image.root.join(format!(".{CURRENT}.tmp"));
        let _ = fs::remove_file(&tmp_link);
        std::os::unix::fs::symlink(&name, &tmp_link).map_err(io("create", &tmp_link))?;
        let link = self.image.root.join(CURRENT);
        fs::rename(&tmp_link, &link).map_err(io("switch", &link))?;
        crate::fsutil::sync_dir(&self.image.root).map_err(io("sync", &self.image.root))?;
        Ok(Generation {
            number: self.number,
            dir: final_dir,
        })
    }

    /// Keeps a failed attempt's logs next to the image, for the error message.
    pub fn keep_logs(&self) -> Option<PathBuf> {
        let dest = self
            .image
            .root
            .join(format!("failed-{}-logs", generation_name(self.number)));
        let _ = fs::remove_dir_all(&dest);
        fs::rename(self.logs(), &dest).ok().map(|_| dest)
    }
}

impl Drop for PendingGeneration {
    fn drop(&mut self) {
        if !self.published {
            let _ = fs::remove_dir_all(&self.generation.dir);
        }
    }
}

/// fsyncs every file under `dir`, then the directories.
pub fn sync_tree(dir: &Path) -> Result<(), ImageError> {
    for entry in fs::read_dir(dir).map_err(io("read", dir))?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else if path.is_file() {
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(io("sync", &path))?;
        }
    }
    crate::fsutil::sync_dir(dir).map_err(io("sync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_swaps_current_and_prune_keeps_the_newest() {
        let tmp = tempfile::tempdir().unwrap();
        let image = ImageDir::new(tmp.path().join("img"));
        assert!(matches!(image.current(), Err(ImageError::NoImage { .. })));
        let lock = image.lock_exclusive().unwrap();
        for n in 1..=3 {
            let g = image.begin_generation(&lock).unwrap();
            assert_eq!(g.number, n);
            fs::write(g.disk(), format!("disk {n}")).unwrap();
            let published = g.publish().unwrap();
            assert_eq!(image.current().unwrap(), published);
        }
        let held = image.generations().unwrap()[1].lock_shared().unwrap();
        let removed = image.prune(1, &lock).unwrap();
        assert_eq!(removed, vec![1], "generation 2 is in use, 3 is current");
        drop(held);
        assert_eq!(image.prune(1, &lock).unwrap(), vec![2]);
        assert_eq!(
            fs::read_to_string(image.current().unwrap().disk()).unwrap(),
            "disk 3"
        );
    }

    #[test]
    fn an_abandoned_generation_leaves_current_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let image = ImageDir::new(tmp.path().join("img"));
        let lock = image.lock_exclusive().unwrap();
        image.begin_generation(&lock).unwrap().publish().unwrap();
        {
            let g = image.begin_generation(&lock).unwrap();
            fs::write(g.disk(), "half").unwrap();
        }
        assert_eq!(image.current().unwrap().number, 1);
        let names: Vec<_> = fs::read_dir(&image.root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.contains(".tmp")), "{names:?}");
    }

    #[test]
    fn a_killed_run_scratch_is_removed_and_a_live_one_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let image = ImageDir::new(tmp.path().join("img"));
        fs::create_dir_all(&image.root).unwrap();
        let live = image.run_scratch().unwrap();
        // What a SIGKILLed run leaves: the directory and an unheld lock file.
        let dead = image.root.join(".run-dead");
        fs::create_dir(&dead).unwrap();
        fs::write(dead.join(LOCK), b"").unwrap();
        fs::write(dead.join("overlay.qcow2"), b"big").unwrap();
        let killed_at = std::time::SystemTime::now() - SCRATCH_START_GRACE * 2;
        File::open(&dead).unwrap().set_modified(killed_at).unwrap();
        let next = image.run_scratch().unwrap();
        assert!(!dead.exists(), "the killed run's scratch stays");
        assert!(live.path().exists() && next.path().exists());
        let live_path = live.path().to_path_buf();
        drop(live);
        assert!(!live_path.exists(), "a finished run's scratch stays");
    }

    /// Runs that start at the same moment (the tasks of a Slurm array) each
    /// keep their scratch: none takes another's for a killed run's.
    #[test]
    fn runs_starting_at_once_keep_their_scratch() {
        let tmp = tempfile::tempdir().unwrap();
        let image = ImageDir::new(tmp.path().join("img"));
        fs::create_dir_all(&image.root).unwrap();
        let failures = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..100 {
                        let result =
                            image
                                .run_scratch()
                                .map_err(|e| e.to_string())
                                .and_then(|scratch| {
                                    fs::write(scratch.path().join("overlay.qcow2"), b"x")
                                        .map_err(|e| format!("{}: {e}", scratch.path().display()))
                                });
                        if let Err(e) = result {
                            failures.lock().unwrap().push(e);
                        }
                    }
                });
            }
        });
        let failures = failures.into_inner().unwrap();
        assert!(
            failures.is_empty(),
            "{} runs lost their scratch: {failures:?}",
            failures.len()
        );
    }

    #[test]
    fn a_second_writer_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let image = ImageDir::new(tmp.path().join("img"));
        let _lock = image.lock_exclusive().unwrap();
        let err = image.lock_exclusive().unwrap_err();
        assert!(err.to_string().contains("busy"), "{err}");
    }
}
