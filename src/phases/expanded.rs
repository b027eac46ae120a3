//! The expanded form of a generation's memory snapshot on this host: the
//! guest's RAM as a file plus its device state (see
//! [`crate::snapshot::mapped`]). `state.gz` stays the canonical snapshot;
//! the expanded form is made from it by QEMU itself (the state loaded into
//! a guest whose RAM is the new file, then the device state saved with
//! `x-ignore-shared`), once per host and generation, and a revive maps it
//! instead of streaming `state.gz`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::phases::instance::{HostArtifacts, start_vm};
use crate::phases::migration::{load_state, save_devices};
use crate::snapshot::StateSummary;
use crate::snapshot::manifest::RuntimeIdentity;
use crate::snapshot::mapped::{self, Builder, Mapped, MappedError};
use crate::vm::host_tools::free_bytes;
use crate::vm::qemu::{MemoryFileMode, VmSpec};
use crate::vm::supervisor::Supervisor;

/// Room left on the cache's filesystem beyond the guest's touched memory.
const SPACE_MARGIN: u64 = 64 << 20;

/// Where this host keeps expanded guest snapshots.
pub fn cache_dir() -> PathBuf {
    crate::cache::root().join("expanded")
}

/// What a generation's expanded form depends on: its state.gz and the QEMU
/// and devices that load it.
#[derive(Debug, Clone)]
pub struct ExpandedKey {
    pub key: String,
    pub dir: PathBuf,
    pub qemu_version: String,
}

impl ExpandedKey {
    pub fn new(summary: &StateSummary, identity: &RuntimeIdentity, memory_mib: u64) -> Self {
        let key = mapped::key_of(&[
            ("state", &summary.sha256),
            ("qemu", &identity.qemu_version),
            ("machine", &identity.machine),
            ("devices", &identity.device_argv.join("\n")),
            ("memory", &memory_mib.to_string()),
        ]);
        Self {
            dir: cache_dir().join(&key[..16]),
            key,
            qemu_version: identity.qemu_version.clone(),
        }
    }

    /// The expanded form when it is there and sound. A damaged one is
    /// reported and left for [`expand`] to replace.
    pub fn lookup(&self) -> Option<Mapped> {
        match Mapped::open(&self.dir, &self.key, &self.qemu_version) {
            Ok(m) => Some(m),
            Err(MappedError::Missing { .. }) => None,
            Err(e) => {
                tracing::warn!("{e}; making it again from state.gz");
                None
            }
        }
    }
}

/// Whether `image` has a generation (or derived generation) whose
/// state.gz has sha256 `sha`.
fn holds_state(image: &Path, sha: &str) -> bool {
    let has = |g: &crate::image::Generation| {
        crate::snapshot::Manifest::load(&g.manifest())
            .ok()
            .and_then(|m| m.state)
            .is_some_and(|s| s.sha256 == sha)
    };
    crate::image::ImageDir::new(image)
        .generations()
        .unwrap_or_default()
        .iter()
        .any(|g| {
            has(g)
                || crate::derived::DerivedStore::of(g)
                    .list()
                    .iter()
                    .any(|e| has(&e.generation))
        })
}

/// Whether the expanded snapshot at `dir` serves no image any more: none
/// of the images that made or used it still holds its state.gz (they
/// were deleted, or pruned that generation).
pub fn serves_nothing(dir: &Path, meta: &mapped::MappedMeta) -> bool {
    let Some(sha) = &meta.source else {
        return false;
    };
    let users = mapped::users(dir, meta);
    !users.is_empty() && !users.iter().any(|image| holds_state(image, sha))
}

/// Removes this host's expanded forms of `generation`'s snapshot, unless
/// another image holding the same state.gz (a pulled copy, say) uses them:
/// called when `image` prunes the generation or is removed. Runs still
/// going keep their mappings (the files live until the last one ends).
pub fn forget_generation(image: &Path, generation: &crate::image::Generation) {
    let Ok(manifest) = crate::snapshot::Manifest::load(&generation.manifest()) else {
        return;
    };
    let Some(state) = manifest.state else { return };
    let image = std::path::absolute(image).unwrap_or_else(|_| image.to_path_buf());
    for (dir, meta) in mapped::list(&cache_dir()) {
        if meta.source.as_deref() != Some(state.sha256.as_str()) {
            continue;
        }
        let elsewhere = mapped::users(&dir, &meta)
            .iter()
            .any(|other| *other != image && holds_state(other, &state.sha256));
        if elsewhere {
            continue;
        }
        match mapped::discard(&dir) {
            Ok(()) => tracing::info!(
                "removed the expanded snapshot of generation {} ({})",
                generation.number,
                dir.display()
            ),
            Err(e) => tracing::warn!("cannot remove {}: {e}", dir.display()),
        }
    }
}

/// Waits for the lock that serializes making the snapshot at `dir`, then
/// opens it: another run may have made it while this one waited. The lock
/// is held until dropped.
pub async fn lock_then_open(
    dir: &Path,
    key: &str,
    qemu_version: &str,
) -> Result<(crate::image::FileLock, Option<Mapped>)> {
    let lock_dir = dir.to_path_buf();
    let lock = tokio::task::spawn_blocking(move || mapped::lock(&lock_dir))
        .await
        .context("the cache lock wait failed")??;
    Ok((lock, Mapped::open(dir, key, qemu_version).ok()))
}

/// A generation's snapshot to expand.
#[derive(Debug, Clone)]
pub struct ExpandSource {
    /// The state.gz to load (verified by whoever made this).
    pub state: PathBuf,
    /// The image it belongs to, as an absolute path: once no image that
    /// used the expanded form holds its state.gz, it is pruned.
    pub image: PathBuf,
    pub summary: StateSummary,
    pub key: ExpandedKey,
    /// For people: which image and generation.
    pub describes: String,
}

/// Makes the expanded form of `source` with a guest QEMU of `spec`'s
/// devices, under the cache lock; another run that made it meanwhile is
/// taken as is. Never leaves a partial one under its name.
pub async fn expand(
    sup: &mut Supervisor,
    art: &HostArtifacts,
    spec: &VmSpec,
    source: &ExpandSource,
) -> Result<Mapped> {
    let ExpandSource {
        state,
        image,
        summary,
        key,
        describes,
    } = source;
    let (_lock, made) = lock_then_open(&key.dir, &key.key, &key.qemu_version).await?;
    if let Some(m) = made {
        mapped::note_use(&m.dir, image);
        return Ok(m);
    }
    let (fs, free) = free_bytes(&key.dir)?;
    let need = summary.stream_len + SPACE_MARGIN;
    if free < need {
        bail!(
            "{} has {} MiB free, and expanding the snapshot needs about {} MiB",
            fs.display(),
            free >> 20,
            need >> 20
        );
    }
    eprintln!(
        "cygvm: expanding the snapshot of {describes} for this host (once; later runs map it)"
    );
    let started = std::time::Instant::now();
    let builder = Builder::new(&key.dir, spec.memory_mib << 20)?;
    let run_dir = sup.run_dir().path().to_path_buf();
    let mut spec = spec.clone();
    spec.name = "guest-expand".into();
    spec.qmp_socket = run_dir.join("guest-expand.qmp");
    spec.serial_log = Some(run_dir.join("guest-expand.serial.log"));
    spec.incoming_defer = true;
    spec.set_memory_file(&builder.ram(), MemoryFileMode::Shared);
    let vm = start_vm(sup, art, &spec, "QEMU to expand the snapshot").await?;
    let result = async {
        load_state(&vm, &run_dir, state, summary, false).await?;
        save_devices(&vm, &builder.devices()).await
    }
    .await;
    let status = sup.stop(vm.child).await;
    result.with_context(|| format!("expanding the snapshot failed (QEMU: {status})"))?;
    let source = mapped::Source {
        sha256: &summary.sha256,
        image,
    };
    let made = builder.commit(&key.key, describes, Some(source), &key.qemu_version)?;
    tracing::info!(
        "expanded the snapshot into {} in {:.1} s",
        made.dir.display(),
        started.elapsed().as_secs_f64()
    );
    for (old, _) in mapped::prune(&cache_dir(), &made.dir, mapped::UNUSED_AGE, serves_nothing) {
        tracing::info!(
            "removed the expanded snapshot {} (unused, or no image holds its state.gz)",
            old.display()
        );
    }
    Ok(made)
}
