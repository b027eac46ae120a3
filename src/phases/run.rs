//! `cygvm run`: a throwaway overlay over the image's base disk, a fresh
//! switch and controller, the guest revived from the generation's memory
//! snapshot (or booted from the overlay with `--cold`), one command with
//! its output streamed, its exit status returned and its files left in the
//! output directory; then everything torn down. The image never changes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::time::Instant;

use crate::config::Config;
use crate::guest::GuestOs;
use crate::image::{Generation, ImageDir};
use crate::phases::expanded::{ExpandSource, ExpandedKey, expand};
use crate::phases::instance::{
    self, GuestBoot, GuestDisk, HostArtifacts, ShareDirs, mount_shares, set_clock_and_mount_shares,
    spawn_controller, start_guest, wait_for_ssh,
};
use crate::phases::migration::{host_identity, load_devices, load_state};
use crate::phases::{runtime, supervise};
use crate::secrets::ImageSecrets;
use crate::snapshot::Manifest;
use crate::snapshot::mapped::Mapped;
use crate::vm::qemu::{MemoryFileMode, VmSpec};
use crate::vm::supervisor::Supervisor;
use crate::vm::vde::VdeSwitch;

/// After a revive the guest's sshd is already running; it answers at once.
const REVIVED_SSH_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub image: PathBuf,
    pub input: Option<PathBuf>,
    pub output: Option<PathBuf>,
    pub keep_failed: bool,
    /// Boot the disk even when the generation has a snapshot.
    pub cold: bool,
    pub command: Vec<String>,
}

/// A generation's snapshot, checked against this host before anything
/// starts, with its expanded form when this host has a sound one.
pub struct Revive {
    source: ExpandSource,
    expanded: Option<Mapped>,
}

pub fn run(opts: &RunOptions) -> Result<ExitCode> {
    let (image, generation, _in_use) = current_generation(opts)?;
    create_output(opts)?;
    let status = run_command(&image, &generation, opts, &opts.command)?;
    Ok(command_exited(status))
}

/// The image's current generation for a run, with the shared lock that
/// keeps a refresh from pruning it until the run ends, once the run's
/// `--input` is known to be a directory.
pub fn current_generation(
    opts: &RunOptions,
) -> Result<(ImageDir, Generation, crate::image::FileLock)> {
    let image = ImageDir::new(&opts.image);
    let generation = image.current()?;
    let in_use = generation.lock_shared()?;
    if let Some(input) = &opts.input
        && !input.is_dir()
    {
        bail!("--input {} is not a directory", input.display());
    }
    Ok((image, generation, in_use))
}

/// Creates the run's `--output` directory if missing.
pub fn create_output(opts: &RunOptions) -> Result<()> {
    if let Some(output) = &opts.output {
        std::fs::create_dir_all(output)
            .with_context(|| format!("cannot create --output {}", output.display()))?;
    }
    Ok(())
}

/// Reports the guest command's `status` (`--json`) and makes it cygvm's.
pub fn command_exited(status: i32) -> ExitCode {
    crate::events::command_exited(status);
    ExitCode::from(status.clamp(0, 255) as u8)
}

/// Revives a new `generation` once and runs `true` in it: what install and
/// refresh check before they publish one. It also leaves the generation's
/// expanded snapshot in this host's cache, so the first run is fast too.
pub fn verify_revives(
    image: &ImageDir,
    generation: &Generation,
    art: &HostArtifacts,
    keep_failed: bool,
) -> Result<()> {
    tracing::info!("[verify] reviving generation {} once", generation.number);
    let opts = RunOptions {
        image: image.root.clone(),
        input: None,
        output: None,
        keep_failed,
        cold: false,
        command: vec!["true".into()],
    };
    let status = run_command_with(image, generation, &opts, &opts.command, art)
        .context("the new generation does not revive")?;
    if status != 0 {
        bail!("the new generation revives, but `true` ended with {status}");
    }
    Ok(())
}

/// Runs `command` in an instance of `generation`; returns its exit code.
pub fn run_command(
    image: &ImageDir,
    generation: &Generation,
    opts: &RunOptions,
    command: &[String],
) -> Result<i32> {
    let config = Config::load_generation(&generation.dir)?;
    let art = HostArtifacts::prepare(GuestOs::from_config(&config))?;
    run_command_with(image, generation, opts, command, &art)
}

/// Like [`run_command`], with the host's artifacts already prepared.
pub fn run_command_with(
    image: &ImageDir,
    generation: &Generation,
    opts: &RunOptions,
    command: &[String],
    art: &HostArtifacts,
) -> Result<i32> {
    let prepare = crate::events::phase("prepare");
    crate::registry::store::note_use(&image.root);
    let config = Config::load_generation(&generation.dir)?;
    let os = GuestOs::from_config(&config);
    let secrets = ImageSecrets::load_or_create(&image.secrets(), None)?;
    // The overlay takes every write the guest makes: it lives on the image's
    // disk, not in the run dir (often a small tmpfs under XDG_RUNTIME_DIR),
    // and goes when the run ends.
    let scratch = image.run_scratch()?;
    let job = Instance {
        config: &config,
        os,
        art,
        secrets: &secrets,
        generation,
        opts,
        state_dir: Some(scratch.path().to_path_buf()),
    };
    let revive = job.check_snapshot()?;
    prepare.done();
    runtime()?.block_on(supervise(
        &format!("run-{}", config.image.name),
        opts.keep_failed,
        async |sup: &mut Supervisor| job.run(sup, revive.as_ref(), command).await,
    ))
}

/// One instance of a generation: overlay, switch, controller, guest.
pub struct Instance<'a> {
    pub config: &'a Config,
    pub os: GuestOs,
    pub art: &'a HostArtifacts,
    pub secrets: &'a ImageSecrets,
    pub generation: &'a Generation,
    pub opts: &'a RunOptions,
    /// Where the overlay and UEFI variables go; the run dir when `None`.
    pub state_dir: Option<PathBuf>,
}

/// A started instance, ready for commands.
pub struct Running {
    pub guest: crate::vm::supervisor::Vm,
    pub ctrl: crate::phases::instance::Controller,
    pub spec: crate::vm::qemu::VmSpec,
    pub disk: GuestDisk,
}

impl Instance<'_> {
    /// The expanded form to revive from: this host's, or made now from
    /// state.gz. `None` (reviving from state.gz) when it cannot be made,
    /// with the reason logged.
    async fn expanded(
        &self,
        sup: &mut Supervisor,
        spec: &VmSpec,
        revive: &Revive,
    ) -> Option<Mapped> {
        if let Some(m) = &revive.expanded {
            return Some(m.clone());
        }
        match expand(sup, self.art, spec, &revive.source).await {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!("reviving from state.gz: cannot expand the snapshot: {e:#}");
                None
            }
        }
    }

    fn guest_disk(&self, run_dir: &std::path::Path) -> GuestDisk {
        let dir = self.state_dir.as_deref().unwrap_or(run_dir);
        GuestDisk {
            disk: dir.join("overlay.qcow2"),
            uefi_vars: Some(dir.join("OVMF_VARS.fd"))
                .filter(|_| self.generation.dir.join("OVMF_VARS.fd").exists()),
        }
    }

    /// Whether to revive, refusing a snapshot this host cannot load before
    /// any guest starts.
    pub fn check_snapshot(&self) -> Result<Option<Revive>> {
        if self.opts.cold {
            return Ok(None);
        }
        if !self.generation.has_snapshot() {
            tracing::warn!(
                "generation {} has no memory snapshot; booting it cold",
                self.generation.number
            );
            return Ok(None);
        }
        let manifest = Manifest::load(&self.generation.manifest())?;
        let Some(summary) = manifest.state.clone() else {
            bail!(
                "{} has a state.gz its manifest does not describe; run `cygvm refresh`, or `cygvm run --cold`",
                self.generation.dir.display()
            );
        };
        // The spec a revive would use, with placeholder paths: only the
        // device set matters here.
        let probe = std::path::Path::new("/run");
        let spec = self.guest_spec(probe, probe, true)?;
        let identity = host_identity(self.art, &spec)?;
        manifest
            .check_compatible(&identity)
            .with_context(|| format!("cannot revive {}", self.generation.dir.display()))?;
        let key = ExpandedKey::new(&summary, &identity, spec.memory_mib);
        let expanded = key.lookup();
        let image =
            std::path::absolute(&self.opts.image).unwrap_or_else(|_| self.opts.image.clone());
        if let Some(m) = &expanded {
            crate::snapshot::mapped::note_use(&m.dir, &image);
        }
        // The expanded form was checked against this state.gz when it was
        // made; state.gz itself is read in full only without one. Its size
        // is checked always: a cut file is seen at once.
        let state_size = std::fs::metadata(self.generation.state())
            .map(|m| m.len())
            .ok();
        if expanded.is_none() || state_size != Some(summary.size) {
            crate::snapshot::verify(&self.generation.state(), &summary)
                .with_context(|| format!("cannot revive {}", self.generation.dir.display()))?;
        }
        Ok(Some(Revive {
            source: ExpandSource {
                state: self.generation.state(),
                image,
                summary,
                key,
                describes: format!(
                    "{} generation {}",
                    self.generation
                        .dir
                        .parent()
                        .unwrap_or(&self.generation.dir)
                        .display(),
                    self.generation.number
                ),
            },
            expanded,
        }))
    }

    fn guest_spec(
        &self,
        run_dir: &std::path::Path,
        switch: &std::path::Path,
        incoming: bool,
    ) -> Result<crate::vm::qemu::VmSpec> {
        let mut spec = instance::guest_spec(
            self.config,
            self.art,
            run_dir,
            switch,
            &self.guest_disk(run_dir),
            &GuestBoot::Disk,
        )?;
        spec.incoming_defer = incoming;
        Ok(spec)
    }

    async fn run(
        &self,
        sup: &mut Supervisor,
        revive: Option<&Revive>,
        command: &[String],
    ) -> Result<i32> {
        let start = crate::events::phase(if revive.is_some() { "revive" } else { "boot" });
        let mut running = self.start(sup, revive).await?;
        start.done();
        let command = self.os.shell_command(command);
        tracing::debug!("running in the guest: {command}");
        let phase = crate::events::phase("command");
        let exit = running
            .ctrl
            .agent
            .exec(
                &command,
                &mut tokio::io::stdout(),
                &mut crate::events::command_stderr(),
            )
            .await
            .context("the command's connection to the guest broke")?;
        phase.done();
        Ok(exit.exit_code())
    }

    /// Starts the instance: the guest revived (or booted), SSH answering,
    /// the clock set, the shares mapped.
    pub async fn start(&self, sup: &mut Supervisor, revive: Option<&Revive>) -> Result<Running> {
        let (config, os) = (self.config, self.os);
        let t0 = std::time::Instant::now();
        let step =
            |what: &str| tracing::debug!("[start] {what} at {:.2} s", t0.elapsed().as_secs_f64());
        let run_dir = sup.run_dir().path().to_path_buf();
        let disk = self.guest_disk(&run_dir);
        self.art
            .create_disk(&disk.disk, 0, Some(&self.generation.disk()))?;
        step("overlay made");
        // The guest may write its UEFI variables; the image's copy stays as is.
        if let Some(vars) = &disk.uefi_vars {
            std::fs::copy(self.generation.dir.join("OVMF_VARS.fd"), vars)?;
        }
        let shares = ShareDirs {
            inputs: self
                .opts
                .input
                .clone()
                .unwrap_or_else(|| run_dir.join("inputs")),
            outputs: self
                .opts
                .output
                .clone()
                .unwrap_or_else(|| run_dir.join("outputs")),
        };
        std::fs::create_dir_all(&shares.inputs)?;
        std::fs::create_dir_all(&shares.outputs)?;

        let switch = VdeSwitch::start(sup, Instant::now() + Duration::from_secs(15)).await?;
        step("switch up");
        // The controller's agent answers while the guest is revived or booted.
        let starting =
            spawn_controller(sup, config, self.art, self.secrets, &switch, &shares).await?;
        step("controller QEMU up and revived (or booting)");
        let mut spec = self.guest_spec(&run_dir, &switch.dir, revive.is_some())?;
        let expanded = match revive {
            Some(r) => self.expanded(sup, &spec, r).await,
            None => None,
        };
        if let Some(m) = &expanded {
            spec.set_memory_file(&m.ram(), MemoryFileMode::Private);
        }
        let guest = start_guest(sup, self.art, &spec).await?;
        step("guest QEMU up");
        match (revive, &expanded) {
            (_, Some(m)) => {
                load_devices(&guest, &m.devices())
                    .await
                    .context("cannot revive the guest from its expanded snapshot")?;
                step("expanded snapshot mapped, guest resumed");
            }
            (Some(revive), None) => {
                load_state(
                    &guest,
                    &run_dir,
                    &revive.source.state,
                    &revive.source.summary,
                    true,
                )
                .await?;
                step("state.gz loaded, guest resumed");
            }
            (None, None) => {}
        }
        let mut ctrl = starting.connect().await?;
        step("controller agent answered");
        let ssh_timeout = if revive.is_some() {
            REVIVED_SSH_TIMEOUT
        } else {
            config.boot_timeout()
        };
        // A revived guest's shell is checked by the next command.
        wait_for_ssh(
            &mut ctrl.agent,
            os,
            "boot",
            ssh_timeout,
            &run_dir,
            revive.is_none(),
        )
        .await?;
        step("SSH ready");
        if revive.is_some() {
            set_clock_and_mount_shares(&mut ctrl.agent, config, os, self.secrets).await?;
            step("clock set, shares mapped");
        } else {
            mount_shares(&mut ctrl.agent, config, os, self.secrets).await?;
            step("shares mapped");
        }
        Ok(Running {
            guest,
            ctrl,
            spec,
            disk,
        })
    }
}
