//! `cygvm run`: a throwaway overlay over the image's base disk, a fresh
//! switch and controller, the guest booted from the overlay, one command
//! with its output streamed, its exit status returned, its files left in
//! the output directory; then everything torn down. The image never changes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::time::Instant;

use crate::config::Config;
use crate::guest::GuestOs;
use crate::image::ImageDir;
use crate::phases::instance::{
    self, GuestBoot, GuestDisk, HostArtifacts, ShareDirs, mount_shares, spawn_controller,
    start_guest, wait_for_ssh,
};
use crate::phases::{runtime, supervise};
use crate::secrets::ImageSecrets;
use crate::vm::supervisor::Supervisor;
use crate::vm::vde::VdeSwitch;

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub image: PathBuf,
    pub input: Option<PathBuf>,
    pub output: Option<PathBuf>,
    pub keep_failed: bool,
    pub command: Vec<String>,
}

pub fn run(opts: &RunOptions) -> Result<ExitCode> {
    let image = ImageDir::new(&opts.image);
    let generation = image.current()?;
    // Held until the run ends, so a refresh never prunes this generation.
    let _in_use = generation.lock_shared()?;
    let config_path = generation.dir.join("config.toml");
    let config = Config::load(&config_path)?;
    let os = GuestOs::from_config(&config);
    let secrets = ImageSecrets::load_or_create(&image.secrets(), None)?;
    if let Some(input) = &opts.input
        && !input.is_dir()
    {
        bail!("--input {} is not a directory", input.display());
    }
    if let Some(output) = &opts.output {
        std::fs::create_dir_all(output)
            .with_context(|| format!("cannot create --output {}", output.display()))?;
    }
    let art = HostArtifacts::prepare(os)?;
    let job = ColdRun {
        config: &config,
        os,
        art: &art,
        secrets: &secrets,
        base_disk: generation.disk(),
        uefi_vars: Some(generation.dir.join("OVMF_VARS.fd")).filter(|p| p.exists()),
        opts,
    };
    let status = runtime()?.block_on(supervise(
        &format!("run-{}", config.image.name),
        opts.keep_failed,
        async |sup: &mut Supervisor| job.run(sup).await,
    ))?;
    Ok(ExitCode::from(status.clamp(0, 255) as u8))
}

struct ColdRun<'a> {
    config: &'a Config,
    os: GuestOs,
    art: &'a HostArtifacts,
    secrets: &'a ImageSecrets,
    base_disk: PathBuf,
    uefi_vars: Option<PathBuf>,
    opts: &'a RunOptions,
}

impl ColdRun<'_> {
    async fn run(&self, sup: &mut Supervisor) -> Result<i32> {
        let (config, os) = (self.config, self.os);
        let run_dir = sup.run_dir().path().to_path_buf();
        let overlay = run_dir.join("overlay.qcow2");
        self.art.create_disk(&overlay, 0, Some(&self.base_disk))?;
        // The guest may write its UEFI variables; the image's copy stays as is.
        let vars = match &self.uefi_vars {
            Some(v) => {
                let copy = run_dir.join("OVMF_VARS.fd");
                std::fs::copy(v, &copy)?;
                Some(copy)
            }
            None => None,
        };
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
        // The controller and the guest boot side by side.
        let starting =
            spawn_controller(sup, config, self.art, self.secrets, &switch, &shares).await?;
        let spec = instance::guest_spec(
            config,
            os,
            self.art,
            &run_dir,
            &switch.dir,
            &GuestDisk {
                disk: overlay.clone(),
                uefi_vars: vars.clone(),
            },
            &GuestBoot::Disk,
        )?;
        let _guest = start_guest(sup, self.art, &spec).await?;
        let mut ctrl = starting.connect().await?;
        wait_for_ssh(&mut ctrl.agent, os, "boot", config.boot_timeout(), &run_dir).await?;
        mount_shares(&mut ctrl.agent, config, os, self.secrets).await?;

        let command = os.shell_command(&self.opts.command);
        tracing::debug!("running in the guest: {command}");
        let exit = ctrl
            .agent
            .exec(&command, &mut tokio::io::stdout(), &mut tokio::io::stderr())
            .await
            .context("the command's connection to the guest broke")?;
        Ok(exit.exit_code())
    }
}
