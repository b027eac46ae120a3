//! The expanded form of a memory snapshot: the VM's RAM as a plain file and
//! its device state as a small QEMU migration stream saved with
//! `x-ignore-shared` (which leaves file-backed RAM out). A VM revives from
//! it by mapping the RAM file copy-on-write and loading only the device
//! state, so reviving costs the same whatever the guest's memory holds, and
//! every VM revived from one file shares its clean pages.
//!
//! ```text
//! <cache>/<name>/           made under .<name>.tmp-PID-N, renamed in whole
//!   ram                     the RAM file, read-only
//!   devices.state           the device state, read-only
//!   meta.json               what it was made for, sizes and sha256s
//! <cache>/<name>.lock       held exclusively while it is built
//! ```
//!
//! An expanded snapshot is never modified in place (a copy-on-write mapping
//! of a file shows later changes to the file), only replaced or removed.
//! What is checked when is in docs/snapshot.md.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil::{sha256_file, sync_dir, write_atomic};
use crate::image::FileLock;

pub const RAM: &str = "ram";
pub const DEVICES: &str = "devices.state";
pub const META: &str = "meta.json";
/// Snapshots unused this long go when a new one is made beside them (an
/// upgraded cygvm, kernel or QEMU makes new ones).
pub const UNUSED_AGE: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);
const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum MappedError {
    #[error("{dir} is not there")]
    Missing { dir: PathBuf },
    #[error("{dir} cannot be used: {why}")]
    Invalid { dir: PathBuf, why: String },
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> MappedError {
    let path = path.to_path_buf();
    move |source| MappedError::Io {
        action,
        path,
        source,
    }
}

/// A file as it was when the snapshot was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    pub size: u64,
    pub sha256: String,
    pub inode: u64,
    pub mtime_ns: i128,
}

impl FileStamp {
    fn of(path: &Path) -> Result<Self, MappedError> {
        let sha256 = sha256_file(path).map_err(io_err("read", path))?;
        let md = fs::metadata(path).map_err(io_err("stat", path))?;
        Ok(Self {
            size: md.len(),
            sha256,
            inode: md.ino(),
            mtime_ns: mtime_ns(&md),
        })
    }
}

fn mtime_ns(md: &fs::Metadata) -> i128 {
    i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec())
}

/// What an expanded snapshot was made for and of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappedMeta {
    pub format: u32,
    /// sha256 of everything the snapshot depends on; a lookup with another
    /// key finds it unusable.
    pub key: String,
    /// For people: what this is a snapshot of.
    pub describes: String,
    /// The sha256 of the state.gz it was expanded from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The image directory that state.gz belongs to: once it is gone, the
    /// snapshot serves nothing and is pruned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<PathBuf>,
    pub qemu_version: String,
    pub memory_bytes: u64,
    pub ram: FileStamp,
    pub devices: FileStamp,
    /// RFC 3339 UTC.
    pub created: String,
}

/// A usable expanded snapshot.
#[derive(Debug, Clone)]
pub struct Mapped {
    pub dir: PathBuf,
    pub meta: MappedMeta,
}

impl Mapped {
    pub fn ram(&self) -> PathBuf {
        self.dir.join(RAM)
    }
    pub fn devices(&self) -> PathBuf {
        self.dir.join(DEVICES)
    }

    /// Reads `dir`'s meta only, for listing.
    pub fn read_meta(dir: &Path) -> Result<MappedMeta, MappedError> {
        let path = dir.join(META);
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(MappedError::Missing {
                    dir: dir.to_path_buf(),
                });
            }
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        serde_json::from_slice(&text).map_err(|e| MappedError::Invalid {
            dir: dir.to_path_buf(),
            why: format!("{META} is not readable: {e}"),
        })
    }

    /// Opens `dir` for a revive, checking it was made for `key` by
    /// `qemu_version`, that the device state's sha256 matches, and that the
    /// RAM file is the very file that was verified when it was made: same
    /// size, inode and modification time, and read-only. The RAM file is
    /// not hashed here (see [`Mapped::verify_full`]).
    pub fn open(dir: &Path, key: &str, qemu_version: &str) -> Result<Self, MappedError> {
        let meta = Self::read_meta(dir)?;
        let bad = |why: String| MappedError::Invalid {
            dir: dir.to_path_buf(),
            why,
        };
        if meta.format != FORMAT {
            return Err(bad(format!(
                "format {} (this cygvm reads {FORMAT})",
                meta.format
            )));
        }
        if meta.key != key {
            return Err(bad("it was made for other inputs".into()));
        }
        if meta.qemu_version != qemu_version {
            return Err(bad(format!(
                "it was made by QEMU {}, this host runs {qemu_version}",
                meta.qemu_version
            )));
        }
        let ram = dir.join(RAM);
        let md = fs::metadata(&ram).map_err(|e| bad(format!("{RAM}: {e}")))?;
        let stamp = &meta.ram;
        if md.len() != stamp.size {
            return Err(bad(format!(
                "{RAM} is {} bytes, {} when it was made",
                md.len(),
                stamp.size
            )));
        }
        if md.ino() != stamp.inode || mtime_ns(&md) != stamp.mtime_ns {
            return Err(bad(format!(
                "{RAM} was replaced or changed since it was made"
            )));
        }
        if md.permissions().mode() & 0o222 != 0 {
            return Err(bad(format!("{RAM} is writable")));
        }
        let devices = dir.join(DEVICES);
        let sha = sha256_file(&devices).map_err(|e| bad(format!("{DEVICES}: {e}")))?;
        if sha != meta.devices.sha256 {
            return Err(bad(format!(
                "{DEVICES} has sha256 {sha}, {} when it was made",
                meta.devices.sha256
            )));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            meta,
        })
    }

    /// Hashes the RAM file too: what `cygvm cache verify` does.
    pub fn verify_full(&self) -> Result<(), MappedError> {
        let ram = self.ram();
        let sha = sha256_file(&ram).map_err(io_err("read", &ram))?;
        if sha != self.meta.ram.sha256 {
            return Err(MappedError::Invalid {
                dir: self.dir.clone(),
                why: format!(
                    "{RAM} has sha256 {sha}, {} when it was made",
                    self.meta.ram.sha256
                ),
            });
        }
        Ok(())
    }

    /// Total bytes the snapshot takes on disk (the RAM file is sparse).
    pub fn disk_usage(dir: &Path) -> u64 {
        [RAM, DEVICES, META]
            .iter()
            .filter_map(|n| fs::metadata(dir.join(n)).ok())
            .map(|md| md.blocks() * 512)
            .sum()
    }
}

/// Removes an expanded snapshot: renamed aside first, so no reader ever
/// sees a half-removed directory under the real name.
pub fn remove(dir: &Path) -> io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let aside = tmp_name(dir, "old");
    fs::rename(dir, &aside)?;
    fs::remove_dir_all(&aside)
}

fn tmp_name(dir: &Path, what: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    dir.with_file_name(format!(
        ".{name}.{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// The expanded snapshots under `dir` with their meta (unreadable ones
/// are left out).
pub fn list(dir: &Path) -> Vec<(PathBuf, MappedMeta)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .filter_map(|p| Mapped::read_meta(&p).ok().map(|m| (p, m)))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// `<name>.EXT` beside the snapshot directory `dir`.
fn beside(dir: &Path, ext: &str) -> PathBuf {
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    dir.with_file_name(format!("{name}.{ext}"))
}

fn lock_path(dir: &Path) -> PathBuf {
    beside(dir, "lock")
}

/// Records that `dir` was used now (its lock file's mtime), for
/// [`prune`].
pub fn touch(dir: &Path) {
    let _ = crate::fsutil::mark_used(&lock_path(dir), true);
}

fn users_path(dir: &Path) -> PathBuf {
    beside(dir, "users")
}

/// Records that a run of `image` uses the snapshot at `dir` now: [`touch`]
/// for [`prune`], and `image` in `<name>.users` beside it (one path a
/// line), as a snapshot serves every image holding the state.gz it was
/// made from, not only the one that made it.
pub fn note_use(dir: &Path, image: &Path) {
    touch(dir);
    let line = image.to_string_lossy();
    let path = users_path(dir);
    if fs::read_to_string(&path).is_ok_and(|s| s.lines().any(|l| l == line)) {
        return;
    }
    // One short O_APPEND write: runs adding themselves at once never mix lines.
    let _ = File::options()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
}

/// The images the snapshot at `dir` serves: the one that made it and
/// those that used it since.
pub fn users(dir: &Path, meta: &MappedMeta) -> Vec<PathBuf> {
    let mut users: Vec<PathBuf> = meta.image.iter().cloned().collect();
    for line in fs::read_to_string(users_path(dir))
        .unwrap_or_default()
        .lines()
    {
        let p = PathBuf::from(line);
        if !line.is_empty() && !users.contains(&p) {
            users.push(p);
        }
    }
    users
}

/// Removes a snapshot and what is kept beside it about its use.
pub fn discard(dir: &Path) -> io::Result<()> {
    remove(dir)?;
    let _ = fs::remove_file(users_path(dir));
    Ok(())
}

/// Removes the snapshots under `parent`, other than `keep`, that nobody is
/// making now and that either `serve_nothing` (their images were deleted)
/// or were last used (made or [`touch`]ed) longer than `unused_for` ago
/// (what a cygvm or QEMU upgrade leaves behind). Returns each removed one
/// with the bytes it took on disk.
pub fn prune(
    parent: &Path,
    keep: &Path,
    unused_for: std::time::Duration,
    serve_nothing: impl Fn(&Path, &MappedMeta) -> bool,
) -> Vec<(PathBuf, u64)> {
    let mut removed = Vec::new();
    for (dir, meta) in list(parent) {
        if dir == keep {
            continue;
        }
        let lock = lock_path(&dir);
        let unused = fs::metadata(&lock)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > unused_for);
        if !unused && !serve_nothing(&dir, &meta) {
            continue;
        }
        let bytes = Mapped::disk_usage(&dir);
        if let Ok(Some(_held)) = FileLock::try_exclusive(&lock)
            && discard(&dir).is_ok()
        {
            let _ = fs::remove_file(&lock);
            removed.push((dir, bytes));
        }
    }
    removed
}

/// The lock that serializes building `dir`.
pub fn lock(dir: &Path) -> Result<FileLock, MappedError> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(io_err("create", parent))?;
    let path = lock_path(dir);
    FileLock::wait(&path, true).map_err(|e| MappedError::Io {
        action: "lock",
        path,
        source: io::Error::other(e.to_string()),
    })
}

/// The state.gz an expanded snapshot is made from, and its image.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub sha256: &'a str,
    pub image: &'a Path,
}

/// An expanded snapshot being made: a hidden directory beside its real
/// name, removed if dropped before [`Builder::commit`].
#[derive(Debug)]
pub struct Builder {
    dest: PathBuf,
    tmp: PathBuf,
    memory_bytes: u64,
    committed: bool,
}

impl Builder {
    /// Starts `dest` with a sparse RAM file of `memory_bytes`. Call with
    /// [`lock`] held: leftovers of builds that were killed are removed.
    pub fn new(dest: &Path, memory_bytes: u64) -> Result<Self, MappedError> {
        let parent = dest.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(parent).map_err(io_err("create", parent))?;
        let name = dest.file_name().unwrap_or_default().to_string_lossy();
        let prefix = format!(".{name}.");
        if let Ok(entries) = fs::read_dir(parent) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        let tmp = tmp_name(dest, "tmp");
        fs::create_dir(&tmp).map_err(io_err("create", &tmp))?;
        let builder = Self {
            dest: dest.to_path_buf(),
            tmp,
            memory_bytes,
            committed: false,
        };
        let ram = builder.ram();
        let file = File::create(&ram).map_err(io_err("create", &ram))?;
        file.set_len(memory_bytes).map_err(io_err("size", &ram))?;
        Ok(builder)
    }

    /// Where the VM being saved keeps its RAM (`share=on`).
    pub fn ram(&self) -> PathBuf {
        self.tmp.join(RAM)
    }
    /// Where QEMU writes the device state.
    pub fn devices(&self) -> PathBuf {
        self.tmp.join(DEVICES)
    }

    /// Seals the files (fsync, hash, read-only), writes the meta and
    /// renames the directory into place, replacing an older one.
    pub fn commit(
        mut self,
        key: &str,
        describes: &str,
        source: Option<Source<'_>>,
        qemu_version: &str,
    ) -> Result<Mapped, MappedError> {
        for path in [self.ram(), self.devices()] {
            let file = File::open(&path).map_err(io_err("open", &path))?;
            file.sync_all().map_err(io_err("sync", &path))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o444))
                .map_err(io_err("make read-only", &path))?;
        }
        let meta = MappedMeta {
            format: FORMAT,
            key: key.to_string(),
            describes: describes.to_string(),
            source: source.map(|s| s.sha256.to_string()),
            image: source.map(|s| s.image.to_path_buf()),
            qemu_version: qemu_version.to_string(),
            memory_bytes: self.memory_bytes,
            ram: FileStamp::of(&self.ram())?,
            devices: FileStamp::of(&self.devices())?,
            created: crate::snapshot::manifest::rfc3339_utc(std::time::SystemTime::now()),
        };
        let meta_path = self.tmp.join(META);
        write_atomic(
            &meta_path,
            &serde_json::to_vec_pretty(&meta).unwrap_or_default(),
            0o444,
        )
        .map_err(io_err("write", &meta_path))?;
        sync_dir(&self.tmp).map_err(io_err("sync", &self.tmp))?;
        remove(&self.dest).map_err(io_err("replace", &self.dest))?;
        fs::rename(&self.tmp, &self.dest).map_err(io_err("publish", &self.dest))?;
        let parent = self.dest.parent().unwrap_or(Path::new("."));
        sync_dir(parent).map_err(io_err("sync", parent))?;
        self.committed = true;
        Ok(Mapped {
            dir: self.dest.clone(),
            meta,
        })
    }
}

impl Drop for Builder {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

/// sha256 (hex) of key material, given as labelled parts.
pub fn key_of(parts: &[(&str, &str)]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (label, value) in parts {
        h.update(label.as_bytes());
        h.update([0]);
        h.update(value.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn made(dir: &Path) -> Mapped {
        made_from(dir, None)
    }

    fn made_from(dir: &Path, source: Option<Source<'_>>) -> Mapped {
        let _lock = lock(dir).unwrap();
        let b = Builder::new(dir, 1 << 20).unwrap();
        std::fs::write(b.ram(), vec![7u8; 1 << 20]).unwrap();
        std::fs::write(b.devices(), b"devices").unwrap();
        b.commit("k", "test", source, "10.0.2").unwrap()
    }

    #[test]
    fn a_made_snapshot_opens_and_verifies() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("snap");
        let m = made(&dir);
        let back = Mapped::open(&dir, "k", "10.0.2").unwrap();
        assert_eq!(back.meta, m.meta);
        back.verify_full().unwrap();
        // Nothing but the directory and its lock is left beside it.
        let mut names: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["snap", "snap.lock"]);
    }

    #[test]
    fn other_key_other_qemu_and_damage_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("snap");
        made(&dir);
        let err = |r: Result<Mapped, MappedError>| r.unwrap_err().to_string();
        assert!(err(Mapped::open(&dir, "other", "10.0.2")).contains("other inputs"));
        assert!(err(Mapped::open(&dir, "k", "9.2.0")).contains("made by QEMU 10.0.2"));

        let devices = dir.join(DEVICES);
        std::fs::set_permissions(&devices, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&devices, b"devicez").unwrap();
        assert!(err(Mapped::open(&dir, "k", "10.0.2")).contains("devices.state has sha256"));
    }

    #[test]
    fn a_truncated_or_rewritten_ram_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("snap");
        made(&dir);
        let ram = dir.join(RAM);
        std::fs::set_permissions(&ram, std::fs::Permissions::from_mode(0o644)).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&ram).unwrap();
        f.set_len(4096).unwrap();
        let e = Mapped::open(&dir, "k", "10.0.2").unwrap_err().to_string();
        assert!(e.contains("ram is 4096 bytes"), "{e}");
    }

    #[test]
    fn unused_snapshots_are_pruned_and_used_ones_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let (old, used, run, new) = (
            tmp.path().join("old"),
            tmp.path().join("used"),
            tmp.path().join("run"),
            tmp.path().join("new"),
        );
        for d in [&old, &used, &run, &new] {
            made(d);
        }
        let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(30 * 86400);
        for d in [&old, &used, &run] {
            File::options()
                .write(true)
                .open(lock_path(d))
                .unwrap()
                .set_modified(long_ago)
                .unwrap();
        }
        touch(&used);
        // A run that revives from a snapshot counts as a use too.
        note_use(&run, Path::new("/images/a"));
        let removed = prune(
            tmp.path(),
            &new,
            std::time::Duration::from_secs(7 * 86400),
            |_, _| false,
        );
        let removed: Vec<_> = removed.into_iter().map(|(d, _)| d).collect();
        assert_eq!(removed, vec![old.clone()]);
        assert!(!old.exists() && used.exists() && run.exists() && new.exists());
    }

    #[test]
    fn a_snapshot_that_serves_nothing_is_pruned_at_once_with_its_records() {
        let tmp = tempfile::tempdir().unwrap();
        let (maker, user) = (tmp.path().join("maker"), tmp.path().join("user"));
        let snaps = tmp.path().join("snaps");
        let source = |image| {
            Some(Source {
                sha256: "abc",
                image,
            })
        };
        let orphan = made_from(&snaps.join("orphan"), source(&maker)).dir;
        let shared = made_from(&snaps.join("shared"), source(&maker)).dir;
        let new = made(&snaps.join("new")).dir;
        note_use(&shared, &user);
        note_use(&shared, &user);
        let (_, meta) = list(&snaps)
            .into_iter()
            .find(|(d, _)| *d == shared)
            .unwrap();
        assert_eq!(users(&shared, &meta), vec![maker.clone(), user.clone()]);
        // Neither image exists: only a snapshot one of whose users does
        // is kept.
        std::fs::create_dir(&user).unwrap();
        let removed = prune(
            &snaps,
            &new,
            std::time::Duration::from_secs(7 * 86400),
            |d, m| users(d, m).iter().all(|u| !u.exists()),
        );
        let removed: Vec<_> = removed.into_iter().map(|(d, _)| d).collect();
        assert_eq!(removed, vec![orphan.clone()]);
        assert!(!orphan.exists() && shared.exists() && new.exists());
        assert!(!snaps.join("orphan.lock").exists());
        discard(&shared).unwrap();
        assert!(!snaps.join("shared.users").exists() && !shared.exists());
    }

    #[test]
    fn a_dropped_builder_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("snap");
        let b = Builder::new(&dir, 4096).unwrap();
        drop(b);
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
        assert!(matches!(
            Mapped::open(&dir, "k", "10.0.2"),
            Err(MappedError::Missing { .. })
        ));
    }
}
