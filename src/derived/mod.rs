//! Derived generations: an image generation with extra Cygwin packages
//! installed, saved as a memory snapshot of its own over a disk overlay on
//! the generation's disk. One is made per generation and exact package set
//! (names and versions) the first time a run asks for it; later runs revive
//! it as they revive the generation.
//!
//! ```text
//! images/<name>/gen-0002/derived/
//!   3f9c…/            manifest.json, state.gz, disk.qcow2 (qcow2, backing
//!                     file ../../disk.qcow2), derived.json, config, logs/
//!   3f9c….lock        held exclusively while it is built, shared by runs
//!   3f9c….used        touched by every run that uses it
//!   .3f9c….tmp/       being built (removed if the build fails or is killed)
//!   failed-3f9c…-logs/ the last failed build's logs (setup's output, VMs)
//! ```
//!
//! They live inside their parent generation's directory because they are
//! nothing without it: the overlay's backing file is the parent's disk
//! (named relatively, so the image directory can move), and pruning the
//! parent takes them with it. A published one is never written again; a
//! different package set is a different directory.

pub mod request;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::image::{FileLock, Generation};

pub const DIR: &str = "derived";
pub const META: &str = "derived.json";
const FORMAT: u32 = 1;

/// What a derived generation is: its parent and the packages it adds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DerivedMeta {
    pub format: u32,
    pub key: String,
    pub parent_generation: u32,
    /// sha256 of the parent's state.gz: the snapshot it was made from.
    pub parent_state_sha256: String,
    /// The packages as asked for (before the closure).
    pub requested: Vec<String>,
    /// What it installs on top of its parent, `name version`, sorted.
    pub packages: Vec<PackageVersion>,
    pub created: String,
    /// How long making it took, in seconds.
    pub build_seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct PackageVersion {
    pub name: String,
    pub version: String,
}

/// The identity of a derived generation: its parent's snapshot and the
/// exact packages (with versions) it adds.
pub fn key(parent_state_sha256: &str, packages: &[PackageVersion]) -> String {
    let set: Vec<String> = packages
        .iter()
        .map(|p| format!("{} {}", p.name, p.version))
        .collect();
    let key = crate::snapshot::mapped::key_of(&[
        ("parent-state", parent_state_sha256),
        ("packages", &set.join("\n")),
    ]);
    key[..16].to_string()
}

/// The derived generations of one generation.
#[derive(Debug, Clone)]
pub struct DerivedStore {
    pub parent: Generation,
    pub dir: PathBuf,
}

/// One published derived generation, as listed.
#[derive(Debug, Clone)]
pub struct DerivedEntry {
    pub generation: Generation,
    pub meta: DerivedMeta,
    /// Bytes its own files take (the overlay, state.gz, the rest).
    pub disk_bytes: u64,
    pub last_used: SystemTime,
}

impl DerivedStore {
    pub fn of(parent: &Generation) -> Self {
        Self {
            parent: parent.clone(),
            dir: parent.dir.join(DIR),
        }
    }

    /// The image directory its parent generation belongs to.
    fn image_root(&self) -> &Path {
        self.parent.dir.parent().unwrap_or(Path::new("."))
    }

    fn lock_path(&self, key: &str) -> Result<PathBuf> {
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        Ok(self.dir.join(format!("{key}.lock")))
    }

    /// The published derived generation `key`, if there is one.
    pub fn lookup(&self, key: &str) -> Option<Generation> {
        let dir = self.dir.join(key);
        let number = self.parent.number;
        dir.join(META)
            .is_file()
            .then_some(Generation { number, dir })
    }

    /// Waits for the right to use `key` (shared with other runs; excludes
    /// its removal).
    pub fn lock_use(&self, key: &str) -> Result<FileLock> {
        Ok(FileLock::wait(&self.lock_path(key)?, false)?)
    }

    /// Waits for the right to build `key` (one builder, no users).
    pub fn lock_build(&self, key: &str) -> Result<FileLock> {
        Ok(FileLock::wait(&self.lock_path(key)?, true)?)
    }

    /// The right to build or remove `key`, if no run uses it and nobody
    /// builds it now.
    pub fn try_lock_build(&self, key: &str) -> Result<Option<FileLock>> {
        Ok(FileLock::try_exclusive(&self.lock_path(key)?)?)
    }

    /// Records that a run uses `key` now (for pruning by age).
    pub fn touch(&self, key: &str) {
        let path = self.dir.join(format!("{key}.used"));
        let _ = crate::fsutil::mark_used(&path, true);
    }

    /// A new build directory for `key`; the caller holds its build lock,
    /// so what a killed build left there is removed first.
    pub fn begin(&self, key: &str, _build: &FileLock) -> Result<PendingDerived> {
        let tmp = self.dir.join(format!(".{key}.tmp"));
        if tmp.exists() {
            tracing::info!("removing {} left by a build that was killed", tmp.display());
            fs::remove_dir_all(&tmp).with_context(|| format!("cannot remove {}", tmp.display()))?;
        }
        fs::create_dir_all(tmp.join(crate::image::LOGS))
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        Ok(PendingDerived {
            generation: Generation {
                number: self.parent.number,
                dir: tmp,
            },
            dest: self.dir.join(key),
            published: false,
        })
    }

    /// Moves a failed build's logs to `failed-<key>-logs` beside the
    /// derived generations (replacing an earlier failure's), for the error.
    pub fn keep_failed_logs(&self, pending: &PendingDerived, key: &str) -> Option<PathBuf> {
        let dest = self.dir.join(format!("failed-{key}-logs"));
        let _ = fs::remove_dir_all(&dest);
        fs::rename(pending.logs(), &dest).ok().map(|_| dest)
    }

    /// Published derived generations, most recently used first.
    pub fn list(&self) -> Vec<DerivedEntry> {
        let mut out = Vec::new();
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return out;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !entry.path().is_dir() {
                continue;
            }
            let Some(generation) = self.lookup(&name) else {
                continue;
            };
            let Ok(meta) = read_meta(&generation.dir) else {
                continue;
            };
            let last_used = fs::metadata(self.dir.join(format!("{name}.used")))
                .or_else(|_| fs::metadata(generation.dir.join(META)))
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            out.push(DerivedEntry {
                disk_bytes: crate::fsutil::allocated_bytes(&generation.dir),
                generation,
                meta,
                last_used,
            });
        }
        out.sort_by_key(|e| std::cmp::Reverse(e.last_used));
        out
    }

    /// Removes derived generation `key` unless a run or a build holds it;
    /// returns whether it went. Its expanded snapshots on this host go too.
    pub fn remove(&self, key: &str) -> Result<bool> {
        let Some(generation) = self.lookup(key) else {
            return Ok(false);
        };
        let Some(_lock) = self.try_lock_build(key)? else {
            return Ok(false);
        };
        crate::phases::expanded::forget_generation(self.image_root(), &generation);
        // Unpublish first (the metadata file is what makes it one), so a
        // removal cut short never leaves a half generation behind a name.
        let doomed = self.dir.join(format!(".{key}.removing"));
        fs::rename(&generation.dir, &doomed)
            .with_context(|| format!("cannot remove {}", generation.dir.display()))?;
        fs::remove_dir_all(&doomed)
            .with_context(|| format!("cannot remove {}", doomed.display()))?;
        let _ = fs::remove_file(self.dir.join(format!("{key}.used")));
        Ok(true)
    }
}

/// A derived generation being built. Dropped unpublished, it is removed.
#[derive(Debug)]
pub struct PendingDerived {
    generation: Generation,
    dest: PathBuf,
    published: bool,
}

impl std::ops::Deref for PendingDerived {
    type Target = Generation;
    fn deref(&self) -> &Generation {
        &self.generation
    }
}

impl PendingDerived {
    /// fsyncs every file and renames the directory into place.
    pub fn publish(mut self) -> Result<Generation> {
        crate::image::sync_tree(&self.generation.dir)?;
        fs::rename(&self.generation.dir, &self.dest)
            .with_context(|| format!("cannot publish {}", self.dest.display()))?;
        self.published = true;
        if let Some(parent) = self.dest.parent() {
            crate::fsutil::sync_dir(parent)
                .with_context(|| format!("cannot sync {}", parent.display()))?;
        }
        Ok(Generation {
            number: self.generation.number,
            dir: self.dest.clone(),
        })
    }
}

impl Drop for PendingDerived {
    fn drop(&mut self) {
        if !self.published {
            let _ = fs::remove_dir_all(&self.generation.dir);
        }
    }
}

pub fn read_meta(dir: &Path) -> Result<DerivedMeta> {
    let path = dir.join(META);
    let bytes = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let meta: DerivedMeta = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a derived generation's record", path.display()))?;
    if meta.format > FORMAT {
        bail!(
            "{} was written by a newer cygvm (format {}); use a newer cygvm",
            path.display(),
            meta.format
        );
    }
    Ok(meta)
}

pub fn write_meta(dir: &Path, meta: &DerivedMeta) -> Result<()> {
    let path = dir.join(META);
    crate::fsutil::write_atomic(&path, &serde_json::to_vec_pretty(meta)?, 0o644)
        .with_context(|| format!("cannot write {}", path.display()))
}

pub fn new_meta(
    key: &str,
    parent: &Generation,
    parent_state_sha256: &str,
    requested: &[String],
    packages: &[PackageVersion],
    build: Duration,
) -> DerivedMeta {
    DerivedMeta {
        format: FORMAT,
        key: key.to_string(),
        parent_generation: parent.number,
        parent_state_sha256: parent_state_sha256.to_string(),
        requested: requested.to_vec(),
        packages: packages.to_vec(),
        created: crate::snapshot::manifest::rfc3339_utc(SystemTime::now()),
        build_seconds: build.as_secs_f64(),
    }
}

/// Removes `generation`'s expanded snapshots and those of its derived
/// generations from this host's cache: what pruning a generation calls.
pub fn forget_generation(image: &Path, generation: &Generation) {
    for entry in DerivedStore::of(generation).list() {
        crate::phases::expanded::forget_generation(image, &entry.generation);
    }
    crate::phases::expanded::forget_generation(image, generation);
}

use crate::prune::PrunePolicy;

/// Applies `policy` to every generation's derived generations; returns
/// the removed ones (parent number, key, bytes).
pub fn prune(generations: &[Generation], policy: &PrunePolicy) -> Result<Vec<(u32, String, u64)>> {
    let all = generations
        .iter()
        .flat_map(|g| {
            let store = DerivedStore::of(g);
            store
                .list()
                .into_iter()
                .map(move |e| crate::prune::Candidate {
                    last_used: e.last_used,
                    disk_bytes: e.disk_bytes,
                    item: (store.clone(), e.meta.key),
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let removed = crate::prune::prune(all, policy, |(store, key)| {
        let gone = store.remove(key)?;
        if !gone {
            tracing::info!(
                "derived generation {key} of generation {} is in use; kept",
                store.parent.number
            );
        }
        Ok(gone)
    })?;
    Ok(removed
        .into_iter()
        .map(|c| (c.item.0.parent.number, c.item.1, c.disk_bytes))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pv(name: &str, version: &str) -> PackageVersion {
        PackageVersion {
            name: name.into(),
            version: version.into(),
        }
    }

    #[test]
    fn the_key_is_the_parent_snapshot_and_the_exact_versions() {
        let a = key("aa", &[pv("gcc-core", "13.1-1"), pv("make", "4.4-1")]);
        assert_eq!(a.len(), 16);
        assert_eq!(
            a,
            key("aa", &[pv("gcc-core", "13.1-1"), pv("make", "4.4-1")])
        );
        assert_ne!(
            a,
            key("ab", &[pv("gcc-core", "13.1-1"), pv("make", "4.4-1")])
        );
        assert_ne!(
            a,
            key("aa", &[pv("gcc-core", "13.2-1"), pv("make", "4.4-1")])
        );
        assert_ne!(a, key("aa", &[pv("gcc-core", "13.1-1")]));
    }

    fn published(store: &DerivedStore, key: &str, bytes: usize) -> Generation {
        let lock = store.lock_build(key).unwrap();
        let pending = store.begin(key, &lock).unwrap();
        fs::write(pending.dir.join("state.gz"), vec![1u8; bytes]).unwrap();
        write_meta(
            &pending.dir,
            &new_meta(
                key,
                &store.parent,
                "s",
                &[],
                &[pv("a", "1")],
                Duration::ZERO,
            ),
        )
        .unwrap();
        pending.publish().unwrap()
    }

    #[test]
    fn a_build_that_is_not_published_leaves_nothing_and_a_held_one_is_not_pruned() {
        let tmp = tempfile::tempdir().unwrap();
        let parent = Generation {
            number: 3,
            dir: tmp.path().join("gen-0003"),
        };
        fs::create_dir_all(&parent.dir).unwrap();
        let store = DerivedStore::of(&parent);
        {
            let lock = store.lock_build("k0").unwrap();
            let pending = store.begin("k0", &lock).unwrap();
            fs::write(pending.dir.join("state.gz"), b"half").unwrap();
        }
        assert!(store.lookup("k0").is_none());
        assert!(!store.dir.join(".k0.tmp").exists());

        let g1 = published(&store, "k1", 100_000);
        let _g2 = published(&store, "k2", 100_000);
        assert_eq!(store.lookup("k1").unwrap(), g1);
        assert_eq!(store.list().len(), 2);
        let held = store.lock_use("k1").unwrap();
        let removed = prune(
            std::slice::from_ref(&parent),
            &PrunePolicy {
                older_than: Some(Duration::ZERO),
                max_bytes: None,
            },
        )
        .unwrap();
        assert_eq!(
            removed.iter().map(|r| r.1.as_str()).collect::<Vec<_>>(),
            ["k2"],
            "k1 is in use"
        );
        drop(held);
        let removed = prune(
            std::slice::from_ref(&parent),
            &PrunePolicy {
                older_than: None,
                max_bytes: Some(0),
            },
        )
        .unwrap();
        assert_eq!(removed.len(), 1);
        assert!(store.list().is_empty());
        assert!(!g1.dir.exists());
    }
}
