//! `cygvm install`: media → guest-install (the guest installs itself from
//! the media and powers off) → boot from disk next to a fresh controller →
//! SSH → shares → provision → memory snapshot → the generation is published.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::config::{Config, Firmware as ConfigFirmware};
use crate::events;
use crate::guest::{GuestOs, installer_iso};
use crate::image::{ImageDir, PendingGeneration};
use crate::media;
use crate::phases::instance::{
    self, GuestBoot, GuestDisk, HostArtifacts, ShareDirs, copy_logs, log_report, mount_shares,
    run_provision, spawn_controller, start_guest, wait_for_ssh,
};
use crate::phases::migration::save_state;
use crate::phases::progress::PhaseProgress;
use crate::phases::{Identity, runtime, supervise};
use crate::secrets::ImageSecrets;
use crate::snapshot::StateSummary;
use crate::snapshot::manifest::{DiskEntry, Manifest, rfc3339_utc};
use crate::vm::qemu::OVMF_VARS_4M;
use crate::vm::qmp::QmpError;
use crate::vm::supervisor::Supervisor;
use crate::vm::vde::VdeSwitch;

/// Generations an install keeps (the new one only: an install starts over).
const KEEP_GENERATIONS: usize = 2;

#[derive(Debug, Clone)]
pub struct InstallOptions {
    pub keep_failed: bool,
}

/// What the install job hands back to be written into the manifest.
struct Installed {
    identity: Identity,
    state: StateSummary,
}

pub fn run(config: &Config, config_path: &Path, opts: &InstallOptions) -> Result<ExitCode> {
    let prepare = events::phase("prepare");
    let os = GuestOs::from_config(config);
    let windows_iso = if os == GuestOs::Windows {
        let iso = config.guest.iso.as_ref().ok_or_else(|| {
            anyhow!("key `guest.iso` is not set: name the Windows installation ISO to install from")
        })?;
        let iso = config.resolve_path(iso);
        if !iso.is_file() {
            bail!("key `guest.iso`: {} does not exist", iso.display());
        }
        Some(iso)
    } else {
        None
    };
    let mut install_image = media::windows_iso::check_windows_iso(config)?;
    let art = HostArtifacts::prepare(os)?;
    let image = ImageDir::new(config.image_dir());
    let lock = image.lock_exclusive()?;

    // The linux-standin's installer ISO stands in for the Windows ISO.
    let windows_iso = match windows_iso {
        Some(iso) => iso,
        None => {
            let iso = image.media().join(STANDIN_INSTALLER_ISO);
            let initrd = art
                .standin_initrd
                .as_deref()
                .ok_or_else(|| anyhow!("the linux-standin initrd was not built"))?;
            let kernel_args: Vec<String> = config
                .guest
                .kernel_args
                .iter()
                .map(|a| a.0.clone())
                .collect();
            installer_iso::build(
                &installer_iso::InstallerParts {
                    kernel: &art.standin_kernel,
                    initrd,
                    version: config.guest.version,
                    kernel_args: &kernel_args,
                },
                &iso,
            )
            .context("cannot make the linux-standin's installer ISO")?;
            install_image = media::windows_iso::check_install_iso(config, &iso)?;
            iso
        }
    };
    prepare.done();
    let media_phase = events::phase("media");
    tracing::info!(
        "[media] writing the install media to {}",
        image.media().display()
    );
    let media_manifest = media::build::build(config, &image.media(), install_image.as_ref())?;
    let secrets = ImageSecrets::load_or_create(
        &image.secrets(),
        config.guest.admin_password.as_ref().map(|p| p.0.as_str()),
    )?;

    let pending = image.begin_generation(&lock)?;
    art.create_disk(&pending.disk(), config.guest.disk.bytes(), None)?;
    let config_text = std::fs::read(config_path)
        .with_context(|| format!("cannot read {}", config_path.display()))?;
    config
        .store_in_generation(config_path, &pending.dir)
        .context("cannot record the config in the new generation")?;
    crate::derived::request::copy_kept_index(&image.media(), &pending.dir)?;
    let uefi_vars = if config.guest.firmware() == ConfigFirmware::Uefi {
        let vars = pending.dir.join("OVMF_VARS.fd");
        std::fs::copy(OVMF_VARS_4M, &vars).with_context(|| {
            format!(
                "cannot copy the UEFI variables template {OVMF_VARS_4M}; install the Debian package ovmf"
            )
        })?;
        Some(vars)
    } else {
        None
    };

    let job = InstallJob {
        config,
        os,
        art: &art,
        secrets: &secrets,
        media_dir: image.media(),
        windows_iso,
        disk: pending.disk(),
        state: pending.state(),
        uefi_vars,
        logs: pending.logs(),
    };
    media_phase.done();
    let outcome = runtime()?.block_on(supervise(
        &format!("install-{}", config.image.name),
        opts.keep_failed,
        async |sup: &mut Supervisor| job.run(sup).await,
    ));
    let installed = match outcome {
        Ok(i) => i,
        Err(e) => return Err(failed(e, &pending, opts.keep_failed)),
    };

    let manifest = Manifest {
        format_version: crate::snapshot::manifest::FORMAT_VERSION,
        cygvm_version: env!("CARGO_PKG_VERSION").to_string(),
        qemu_version: installed.identity.qemu_version,
        machine: installed.identity.machine,
        device_argv: installed.identity.device_argv,
        memory_bytes: config.guest.memory.bytes(),
        disk: disk_entry(&pending.disk(), config.guest.disk.bytes())?,
        state: Some(installed.state),
        config_fingerprint: hex::encode(Sha256::digest(&config_text)),
        cygwin_packages: media_manifest
            .cygwin
            .packages
            .iter()
            .map(|p| p.name.clone())
            .collect(),
        created: rfc3339_utc(std::time::SystemTime::now()),
    };
    manifest.save(&pending.manifest())?;
    let verify = events::phase("verify");
    if let Err(e) = crate::phases::run::verify_revives(&image, &pending, &art, opts.keep_failed) {
        return Err(failed(e, &pending, opts.keep_failed));
    }
    verify.done();
    let publish = events::phase("publish");
    let generation = pending.publish()?;
    image.prune_with(KEEP_GENERATIONS, &lock, |g| {
        crate::derived::forget_generation(&image.root, g)
    })?;
    publish.done();
    println!(
        "installed {} ({}): generation {} in {}",
        config.image.name,
        os.name(),
        generation.number,
        generation.dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Keeps the failed attempt's logs next to the image and says where. With
/// `keep_disk` (`--keep-failed`) its disk and UEFI variables go there too:
/// a Windows guest that never answered SSH keeps its Setup and first-logon
/// logs only on that disk (docs/windows.md says how to read them).
fn failed(e: anyhow::Error, pending: &PendingGeneration, keep_disk: bool) -> anyhow::Error {
    let Some(dir) = pending.keep_logs() else {
        return e.context("install failed");
    };
    let mut kept = Vec::new();
    if keep_disk {
        for src in [pending.disk(), pending.dir.join("OVMF_VARS.fd")] {
            let Some(name) = src.file_name() else {
                continue;
            };
            if src.exists() && std::fs::rename(&src, dir.join(name)).is_ok() {
                kept.push(name.to_string_lossy().into_owned());
            }
        }
    }
    if kept.is_empty() {
        e.context(format!(
            "install failed; the attempt's logs are in {}",
            dir.display()
        ))
    } else {
        e.context(format!(
            "install failed; the attempt's logs and its {} are in {}",
            kept.join(" and "),
            dir.display()
        ))
    }
}

pub fn disk_entry(disk: &Path, virtual_size: u64) -> Result<DiskEntry> {
    Ok(DiskEntry {
        size: std::fs::metadata(disk)?.len(),
        virtual_size,
        sha256: crate::fsutil::sha256_file(disk)?,
    })
}

struct InstallJob<'a> {
    config: &'a Config,
    os: GuestOs,
    art: &'a HostArtifacts,
    secrets: &'a ImageSecrets,
    media_dir: PathBuf,
    windows_iso: PathBuf,
    disk: PathBuf,
    state: PathBuf,
    uefi_vars: Option<PathBuf>,
    logs: PathBuf,
}

impl InstallJob<'_> {
    fn guest_disk(&self) -> GuestDisk {
        GuestDisk {
            disk: self.disk.clone(),
            uefi_vars: self.uefi_vars.clone(),
        }
    }

    async fn run(&self, sup: &mut Supervisor) -> Result<Installed> {
        let result = self.phases(sup).await;
        // Whatever happened, the logs go with the generation (or its
        // failed-attempt directory) before the run dir is removed.
        copy_logs(sup.run_dir().path(), &self.logs, "");
        result
    }

    async fn phases(&self, sup: &mut Supervisor) -> Result<Installed> {
        let (config, os) = (self.config, self.os);
        let run_dir = sup.run_dir().path().to_path_buf();
        let switch = VdeSwitch::start(sup, Instant::now() + Duration::from_secs(15)).await?;

        // guest-install: the guest installs itself from the media and
        // powers off.
        let install_boot = GuestBoot::Install {
            floppy: self.media_dir.join(media::build::FLOPPY_NAME),
            cygwin_iso: self.media_dir.join(media::build::ISO_NAME),
            windows_iso: self.windows_iso.clone(),
        };
        let spec = instance::guest_spec(
            config,
            self.art,
            &run_dir,
            &switch.dir,
            &self.guest_disk(),
            &install_boot,
        )?;
        let timeout = config.install_timeout();
        let phase = events::phase("guest-install");
        let progress =
            PhaseProgress::start("guest-install", run_dir.join("guest.serial.log"), false);
        let guest = start_guest(sup, self.art, &spec).await?;
        match wait_for_power_off(&guest, Instant::now() + timeout).await {
            Ok(resets) => {
                tracing::info!("[guest-install] the guest powered off after {resets} restart(s)")
            }
            Err(InstallWaitError::Timeout { resets }) => bail!(
                "phase guest-install: the guest did not power off within the {} s deadline \
                 (key timeouts.install; it restarted {resets} time(s)); guest logs: {}{}",
                timeout.as_secs(),
                os.log_locations(),
                log_report(&run_dir)
            ),
            Err(e) => bail!(
                "phase guest-install: {e}; guest logs: {}{}",
                os.log_locations(),
                log_report(&run_dir)
            ),
        }
        sup.wait_exit(guest.child, Instant::now() + Duration::from_secs(30))
            .await
            .context("the guest did not exit after powering off")?;
        let serial = std::fs::read_to_string(run_dir.join("guest.serial.log")).unwrap_or_default();
        if let Some(line) = serial.lines().find(|l| l.contains("install failed")) {
            bail!(
                "phase guest-install: {}{}",
                line.trim(),
                log_report(&run_dir)
            );
        }
        tracing::info!(
            "[guest-install] the guest installed and powered off after {:.0} s",
            progress.elapsed().as_secs_f64()
        );
        drop(progress);
        phase.done();
        std::fs::rename(
            run_dir.join("guest.serial.log"),
            run_dir.join("guest-install.serial.log"),
        )
        .ok();
        if let Ok(text) = std::fs::read(run_dir.join("guest-install.serial.log")) {
            let _ = std::fs::write(self.logs.join("guest-install.serial.log"), text);
        }

        // boot: from disk, next to a fresh controller.
        let shares = ShareDirs {
            inputs: run_dir.join("inputs"),
            outputs: run_dir.join("outputs"),
        };
        std::fs::create_dir_all(&shares.inputs)?;
        std::fs::create_dir_all(&shares.outputs)?;
        let phase = events::phase("boot");
        let progress = PhaseProgress::start("boot", run_dir.join("guest.serial.log"), false);
        // The controller and the guest boot side by side.
        let starting =
            spawn_controller(sup, config, self.art, self.secrets, &switch, &shares).await?;
        let spec = instance::guest_spec(
            config,
            self.art,
            &run_dir,
            &switch.dir,
            &self.guest_disk(),
            &GuestBoot::Disk,
        )?;
        let guest = start_guest(sup, self.art, &spec).await?;
        let mut ctrl = starting.connect().await?;
        wait_for_ssh(
            &mut ctrl.agent,
            os,
            "boot",
            config.boot_timeout(),
            &run_dir,
            true,
        )
        .await?;
        drop(progress);
        let identity = Identity::query(&guest, &spec).await?;

        let status = ctrl
            .agent
            .exec_checked(&os.install_status(), None)
            .await
            .context("cannot read the guest's install status")?;
        let status = String::from_utf8_lossy(&status).trim().to_string();
        if status != "ok" {
            bail!(
                "phase boot: the guest reports its install as {status:?}; see {}",
                os.log_locations()
            );
        }
        mount_shares(&mut ctrl.agent, config, os, self.secrets).await?;

        run_provision(&mut ctrl.agent, config, os).await?;
        phase.done();

        // snapshot: the booted guest with its shares mapped, paused and
        // saved; the disk is complete once QEMU has finished the migration.
        ctrl.agent
            .exec_checked(&os.flush_disks(), None)
            .await
            .context("cannot flush the guest's disks before the snapshot")?;
        let phase = events::phase("snapshot");
        let progress = PhaseProgress::start("snapshot", run_dir.join("guest.serial.log"), true);
        let state = save_state(&guest, &run_dir, &self.state).await?;
        tracing::info!(
            "[snapshot] saved {} MiB of guest state into {} MiB in {:.1} s",
            state.stream_len >> 20,
            state.size >> 20,
            progress.elapsed().as_secs_f64()
        );
        drop(progress);
        phase.done();
        let _ = ctrl.agent.shutdown().await;
        Ok(Installed { identity, state })
    }
}

/// Where the linux-standin's installer ISO is written, in the media directory.
pub const STANDIN_INSTALLER_ISO: &str = "standin-installer.iso";
/// How long after the install's first start cygvm keeps pressing a key for
/// the CD's "Press any key to boot from CD or DVD" prompt.
pub const BOOT_KEY_WINDOW: Duration = Duration::from_secs(60);
const BOOT_KEY_INTERVAL: Duration = Duration::from_secs(1);
/// More restarts than Setup ever makes (three, each counted twice under
/// SeaBIOS, which resets the machine again itself on a warm restart): the
/// guest is in a boot loop.
const MAX_INSTALL_RESETS: u32 = 20;

#[derive(Debug, thiserror::Error)]
pub enum InstallWaitError {
    #[error("the guest did not power off in time")]
    Timeout { resets: u32 },
    #[error(
        "the guest stopped with reason {reason:?} instead of powering off (after {resets} restart(s))"
    )]
    Stopped { reason: String, resets: u32 },
    #[error(
        "the guest restarted {0} times without powering off: a boot loop (Setup restarts two or three times)"
    )]
    BootLoop(u32),
    #[error("QEMU exited without the guest powering off (after {resets} restart(s))")]
    Exited { resets: u32 },
    #[error("QMP: {0}")]
    Qmp(#[from] QmpError),
}

/// Waits through the install boot: Windows Setup restarts the machine
/// (after copying files, after specialize; XP after text mode) with every
/// medium still attached, and only the guest powering itself off
/// (`SHUTDOWN` with reason `guest-shutdown`) means installed. Restarts are
/// counted and logged. During the first boot only, a key goes in once a
/// second for [`BOOT_KEY_WINDOW`]: Microsoft's UEFI CD boot image waits for
/// one and otherwise hands back to the firmware, while after Setup's first
/// restart a key would start Setup again from the CD. Returns the number of
/// restarts.
pub async fn wait_for_power_off(
    guest: &crate::vm::supervisor::Vm,
    deadline: Instant,
) -> Result<u32, InstallWaitError> {
    let started = Instant::now();
    let mut resets = 0u32;
    let mut next_key = started;
    loop {
        let pressing = resets == 0 && started.elapsed() < BOOT_KEY_WINDOW;
        let event = tokio::select! {
            ev = guest.qmp.wait_any_event(&["RESET", "SHUTDOWN"], deadline) => ev,
            _ = tokio::time::sleep_until(next_key), if pressing => {
                next_key += BOOT_KEY_INTERVAL;
                if let Err(e) = guest.qmp.send_key(crate::guest::installer_iso::BOOT_KEY).await {
                    tracing::debug!("key press at the CD prompt: {e}");
                }
                continue;
            }
        };
        match event {
            Ok(ev) if ev.name == "RESET" => {
                resets += 1;
                tracing::info!(
                    "[guest-install] the guest restarted ({resets}) after {:.0} s; the media stay attached",
                    started.elapsed().as_secs_f64()
                );
                if resets > MAX_INSTALL_RESETS {
                    return Err(InstallWaitError::BootLoop(resets));
                }
            }
            Ok(ev) => {
                let reason = ev.data["reason"].as_str().unwrap_or("unknown").to_string();
                if reason == "guest-shutdown" {
                    return Ok(resets);
                }
                return Err(InstallWaitError::Stopped { reason, resets });
            }
            Err(QmpError::EventTimeout { .. }) => return Err(InstallWaitError::Timeout { resets }),
            Err(QmpError::Disconnected { .. }) => return Err(InstallWaitError::Exited { resets }),
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_install_keeps_its_disk_only_when_asked() {
        for keep in [false, true] {
            let tmp = tempfile::tempdir().unwrap();
            let image = ImageDir::new(tmp.path().join("img"));
            let lock = image.lock_exclusive().unwrap();
            let pending = image.begin_generation(&lock).unwrap();
            std::fs::create_dir_all(pending.logs()).unwrap();
            std::fs::write(pending.logs().join("guest.serial.log"), "x").unwrap();
            std::fs::write(pending.disk(), "disk").unwrap();
            std::fs::write(pending.dir.join("OVMF_VARS.fd"), "vars").unwrap();
            let err = failed(anyhow!("boom"), &pending, keep);
            drop(pending);
            let kept = tmp.path().join("img/failed-gen-0001-logs");
            assert!(kept.join("guest.serial.log").is_file());
            assert_eq!(kept.join("disk.qcow2").is_file(), keep, "{err:#}");
            assert_eq!(kept.join("OVMF_VARS.fd").is_file(), keep);
            assert_eq!(format!("{err:#}").contains("disk.qcow2"), keep, "{err:#}");
        }
    }
}
