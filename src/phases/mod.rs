//! The jobs, reading like the design: install, run (and refresh).

pub mod controller;
pub mod cygport;
pub mod derive;
pub mod expanded;
pub mod install;
pub mod instance;
pub mod migration;
pub mod progress;
pub mod refresh;
pub mod run;

use anyhow::{Context, Result, anyhow};
use serde_json::json;

use crate::vm::qemu::VmSpec;
use crate::vm::supervisor::{RunError, Supervisor, SupervisorOptions, Vm};

/// Exit status after SIGINT/SIGTERM, as shells report it.
pub const INTERRUPTED_EXIT: u8 = 130;

/// An interrupted job: every VM was stopped.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Interrupted(pub String);

/// A multi-threaded runtime for one job.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Runs `job` under a fresh supervisor: every child is stopped and the run
/// dir removed (kept with `keep_failed` on failure) whichever way it ends.
pub async fn supervise<T>(
    id: &str,
    keep_failed: bool,
    job: impl AsyncFnOnce(&mut Supervisor) -> Result<T>,
) -> Result<T> {
    let id = format!("{id}-{}-{}", std::process::id(), unique());
    let sup = Supervisor::start(
        &id,
        SupervisorOptions {
            keep_failed,
            ..Default::default()
        },
    )
    .context("cannot create the run directory")?;
    match sup.run(job).await {
        Ok(v) => Ok(v),
        Err(RunError::Failed { error, kept }) => Err(match kept {
            Some(dir) => error.context(format!("run directory kept in {}", dir.display())),
            None => error,
        }),
        Err(e @ RunError::Interrupted { .. }) => Err(anyhow!(Interrupted(e.to_string()))),
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// What a snapshot must be revived with: this QEMU, this machine type and
/// these devices.
#[derive(Debug, Clone)]
pub struct Identity {
    pub qemu_version: String,
    pub machine: String,
    pub device_argv: Vec<String>,
}

impl Identity {
    pub async fn query(vm: &Vm, spec: &VmSpec) -> Result<Self> {
        let v = vm.qmp.version().qemu;
        let qemu_version = format!("{}.{}.{}", v.major, v.minor, v.micro);
        let machine = vm
            .qmp
            .execute(
                "qom-get",
                Some(json!({"path": "/machine", "property": "type"})),
            )
            .await
            .context("cannot ask QEMU for its machine type")?;
        let machine = machine
            .as_str()
            .unwrap_or_default()
            .trim_end_matches("-machine")
            .to_string();
        Ok(Self {
            qemu_version,
            machine,
            device_argv: spec.device_argv(),
        })
    }
}

/// The manifest of a generation made from `old`'s (by a refresh or a
/// derived generation): this host's identity, the new disk and snapshot,
/// `cygwin_packages` installed; the rest as `old` had it.
pub fn successor_manifest(
    old: crate::snapshot::Manifest,
    identity: Identity,
    disk: &std::path::Path,
    state: crate::snapshot::StateSummary,
    cygwin_packages: Vec<String>,
) -> Result<crate::snapshot::Manifest> {
    Ok(crate::snapshot::Manifest {
        format_version: crate::snapshot::manifest::FORMAT_VERSION,
        cygvm_version: env!("CARGO_PKG_VERSION").to_string(),
        qemu_version: identity.qemu_version,
        machine: identity.machine,
        device_argv: identity.device_argv,
        memory_bytes: old.memory_bytes,
        disk: crate::phases::install::disk_entry(disk, old.disk.virtual_size)?,
        state: Some(state),
        config_fingerprint: old.config_fingerprint,
        cygwin_packages,
        created: crate::snapshot::manifest::rfc3339_utc(std::time::SystemTime::now()),
    })
}
