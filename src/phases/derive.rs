//! `cygvm run --packages`: a run on the image's generation with extra
//! Cygwin packages. The packages are resolved before any VM starts; the
//! first run asking for a package set makes a derived generation (revive
//! the generation, install the packages with Cygwin's setup from a
//! verified mirror on the inputs share, save memory and disk overlay,
//! revive it once), and every run then revives that derived generation as
//! it would the generation itself.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::config::Config;
use crate::cygwin::mirror;
use crate::derived::request::{self, PackageRequest, Plan};
use crate::derived::{self, DerivedStore};
use crate::guest::{GuestOs, UPDATE_NEEDS_REBOOT};
use crate::image::{FileLock, Generation, ImageDir};
use crate::media;
use crate::phases::instance::{HostArtifacts, copy_logs};
use crate::phases::migration::save_state;
use crate::phases::run::{Instance, RunOptions, run_command_with, verify_revives};
use crate::phases::{Identity, runtime, supervise};
use crate::secrets::ImageSecrets;
use crate::snapshot::{Manifest, StateSummary};
use crate::vm::supervisor::Supervisor;

/// Lines of setup's output shown when it fails.
const SETUP_TAIL: usize = 20;

/// Runs `opts.command` on the image's current generation with `request`'s
/// packages installed; returns the command's exit status.
pub fn run(opts: &RunOptions, request: &PackageRequest) -> Result<ExitCode> {
    // The lock is held until the run ends, so a refresh never prunes the
    // generation (nor, with it, the derived one).
    let (image, parent, _in_use) = crate::phases::run::current_generation(opts)?;
    if opts.cold {
        bail!(
            "--packages revives a snapshot with the packages added; it cannot be combined with --cold"
        );
    }
    let config = Config::load_generation(&parent.dir)?;
    let Some(plan) = request::plan(&config, &parent, request)? else {
        tracing::info!(
            "generation {} has every package asked for already",
            parent.number
        );
        return crate::phases::run::run(opts);
    };
    crate::phases::run::create_output(opts)?;
    let art = HostArtifacts::prepare(GuestOs::from_config(&config))?;
    let (derived, _use) = obtain(&image, &parent, &plan, &art, opts.keep_failed)?;
    DerivedStore::of(&parent).touch(&plan.key);
    let status = run_command_with(&image, &derived, opts, &opts.command, &art)?;
    Ok(crate::phases::run::command_exited(status))
}

/// The derived generation of `plan`, made now if there is none, with a
/// lock that keeps it from being pruned while the caller uses it. Runs
/// asking for the same set at once wait for one build.
pub fn obtain(
    image: &ImageDir,
    parent: &Generation,
    plan: &Plan,
    art: &HostArtifacts,
    keep_failed: bool,
) -> Result<(Generation, FileLock)> {
    let store = DerivedStore::of(parent);
    loop {
        let in_use = store.lock_use(&plan.key)?;
        if let Some(g) = store.lookup(&plan.key) {
            return Ok((g, in_use));
        }
        drop(in_use);
        let build = match store.try_lock_build(&plan.key)? {
            Some(lock) => lock,
            None => {
                eprintln!(
                    "cygvm: another run is adding {} to generation {}; waiting for it",
                    names(plan),
                    parent.number
                );
                store.lock_build(&plan.key)?
            }
        };
        if store.lookup(&plan.key).is_none() {
            build_derived(image, parent, plan, &store, &build, art, keep_failed)?;
        }
    }
}

fn names(plan: &Plan) -> String {
    plan.packages
        .iter()
        .map(|p| format!("{} {}", p.name, p.version))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Makes and publishes the derived generation of `plan`; the caller holds
/// its build lock.
fn build_derived(
    image: &ImageDir,
    parent: &Generation,
    plan: &Plan,
    store: &DerivedStore,
    lock: &FileLock,
    art: &HostArtifacts,
    keep_failed: bool,
) -> Result<Generation> {
    let started = Instant::now();
    eprintln!(
        "cygvm: adding {} to generation {} (once for this package set; later runs revive it)",
        names(plan),
        parent.number
    );
    tracing::info!("[packages] resolved in {}", plan.index_name);
    let config = Config::load_generation(&parent.dir)?;
    let os = GuestOs::from_config(&config);
    let pending = store.begin(&plan.key, lock)?;
    for name in ["config.toml", "config.base"] {
        if parent.dir.join(name).exists() {
            std::fs::copy(parent.dir.join(name), pending.dir.join(name))
                .with_context(|| format!("cannot copy {name} into {}", pending.dir.display()))?;
        }
    }

    // What setup reads from the inputs share: a verified mirror of the
    // missing packages, and the installer beside it.
    let inputs = pending.dir.join("inputs");
    let local = mirror::build_local_mirror(
        &plan.index,
        &plan.missing,
        &plan.source,
        &plan.cache,
        &inputs.join("mirror"),
    )
    .with_context(|| format!("cannot mirror the packages from {}", plan.index_name))?;
    tracing::info!(
        "[packages] mirrored {} archives ({} bytes, {} fetched)",
        local.files.len().saturating_sub(1),
        local.total_bytes(),
        local.fetched
    );
    let installer = media::unattend::installer_name(config.guest.version);
    put_installer(&config, os, plan, installer, &inputs)?;
    let package_names: Vec<String> = plan.packages.iter().map(|p| p.name.clone()).collect();
    let command = os.install_packages_command(
        installer,
        &media::unattend::cygwin_root(&config),
        &package_names,
    );

    let secrets = ImageSecrets::load_or_create(&image.secrets(), None)?;
    let run_opts = RunOptions {
        image: image.root.clone(),
        input: Some(inputs.clone()),
        output: None,
        keep_failed,
        cold: false,
        command: Vec::new(),
    };
    let instance = Instance {
        config: &config,
        os,
        art,
        secrets: &secrets,
        generation: parent,
        opts: &run_opts,
        state_dir: Some(pending.dir.clone()),
    };
    let revive = instance.check_snapshot()?;
    let logs = pending.logs();
    let (identity, summary) = runtime()?
        .block_on(supervise(
            &format!("derive-{}", config.image.name),
            keep_failed,
            async |sup: &mut Supervisor| {
                let result = install_and_save(
                    sup,
                    &instance,
                    revive.as_ref(),
                    &command,
                    &logs,
                    &pending.state(),
                )
                .await;
                copy_logs(sup.run_dir().path(), &logs, "derive-");
                result
            },
        ))
        .map_err(|e| {
            let logs = store.keep_failed_logs(&pending, &plan.key);
            e.context(format!(
                "cannot add {} to generation {}; no derived generation was made{}",
                names(plan),
                parent.number,
                logs.map(|d| format!(" (setup's output and the VMs' logs are in {})", d.display()))
                    .unwrap_or_default()
            ))
        })?;

    // The overlay becomes the derived generation's disk, naming its
    // backing file relative to itself.
    let overlay = pending.dir.join("overlay.qcow2");
    art.rebase_disk(&overlay, Path::new("../../disk.qcow2"))?;
    std::fs::rename(&overlay, pending.disk())
        .with_context(|| format!("cannot rename {}", overlay.display()))?;
    std::fs::remove_dir_all(&inputs)
        .with_context(|| format!("cannot remove {}", inputs.display()))?;
    let old = Manifest::load(&parent.manifest())?;
    let mut cygwin_packages = old.cygwin_packages.clone();
    cygwin_packages.extend(package_names);
    cygwin_packages.sort();
    cygwin_packages.dedup();
    let manifest = crate::phases::successor_manifest(
        old,
        identity,
        &pending.disk(),
        summary,
        cygwin_packages,
    )?;
    manifest.save(&pending.manifest())?;
    verify_revives(image, &pending, art, keep_failed)?;
    derived::write_meta(
        &pending.dir,
        &derived::new_meta(
            &plan.key,
            parent,
            &plan.parent_state_sha256,
            &plan.requested,
            &plan.packages,
            started.elapsed(),
        ),
    )?;
    let published = pending.publish()?;
    eprintln!(
        "cygvm: derived generation {} made in {:.1} s ({})",
        plan.key,
        started.elapsed().as_secs_f64(),
        published.dir.display()
    );
    Ok(published)
}

/// Puts Cygwin's installer into the inputs: the configured one for
/// Windows; for the stand-in, its setup stand-in.
fn put_installer(
    config: &Config,
    os: GuestOs,
    plan: &Plan,
    installer: &str,
    inputs: &Path,
) -> Result<()> {
    let dest = inputs.join(installer);
    match os {
        GuestOs::Standin => {
            crate::fsutil::write_atomic(
                &dest,
                crate::controller::files::STANDIN_SETUP.as_bytes(),
                0o755,
            )
            .with_context(|| format!("cannot write {}", dest.display()))?;
        }
        GuestOs::Windows => {
            let arch = media::build::index_arch(config);
            let Some(exe) = media::build::setup_exe(config, &plan.source, arch, installer, inputs)?
            else {
                bail!("no {installer} to install packages with; set `cygwin.setup_exe`");
            };
            if exe != dest {
                std::fs::copy(&exe, &dest).with_context(|| {
                    format!("cannot copy {} to {}", exe.display(), dest.display())
                })?;
            }
        }
    }
    Ok(())
}

/// Revives the parent, runs setup, and saves the guest.
async fn install_and_save(
    sup: &mut Supervisor,
    instance: &Instance<'_>,
    revive: Option<&crate::phases::run::Revive>,
    command: &str,
    logs: &Path,
    state: &Path,
) -> Result<(Identity, StateSummary)> {
    let run_dir = sup.run_dir().path().to_path_buf();
    let mut running = instance.start(sup, revive).await?;
    tracing::info!("[packages] {command}");
    let mut out = Vec::new();
    let mut err = Vec::new();
    let exit = running
        .ctrl
        .agent
        .exec(command, &mut out, &mut err)
        .await
        .context("the connection to the guest broke while setup ran")?;
    out.extend_from_slice(&err);
    let log = logs.join("setup.log");
    let _ = std::fs::write(&log, &out);
    match exit.exit_code() {
        0 => {}
        code => {
            let text = String::from_utf8_lossy(&out);
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(SETUP_TAIL)..].join("\n    ");
            let why = if code == UPDATE_NEEDS_REBOOT {
                " (setup asks for a reboot: add these packages to the image's `cygwin.packages` and run `cygvm refresh` instead)"
            } else {
                ""
            };
            bail!("Cygwin's setup ended with {code}{why}; the end of its output:\n    {tail}");
        }
    }
    running
        .ctrl
        .agent
        .exec_checked(&instance.os.flush_disks(), None)
        .await
        .context("cannot flush the guest's disks before the snapshot")?;
    let identity = Identity::query(&running.guest, &running.spec).await?;
    let summary = save_state(&running.guest, &run_dir, state).await?;
    Ok((identity, summary))
}
