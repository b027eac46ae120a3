//! `cygvm refresh`: revive the current generation, update it, bring it back
//! to the ready state and save a new generation — a new base disk (the
//! overlay converted into a standalone image; the old one untouched), a new
//! state.gz and manifest — then revive the new generation once and run
//! `true` before `current` is switched to it. Any failure leaves `current`
//! where it was, with the failed attempt's logs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::config::Config;
use crate::events;
use crate::guest::{GuestOs, UPDATE_NEEDS_REBOOT};
use crate::image::{Generation, ImageDir, PendingGeneration};
use crate::media;
use crate::phases::instance::{
    HostArtifacts, copy_logs, mount_shares, run_provision, wait_for_ssh,
};
use crate::phases::migration::save_state;
use crate::phases::run::{Instance, RunOptions, verify_revives};
use crate::phases::{Identity, runtime, supervise};
use crate::secrets::ImageSecrets;
use crate::snapshot::{Manifest, StateSummary};
use crate::vm::supervisor::Supervisor;

#[derive(Debug, Clone)]
pub struct RefreshOptions {
    pub image: PathBuf,
    pub keep_failed: bool,
    /// The update to run instead of the default (Cygwin's setup from the
    /// configured mirror, then the provision commands).
    pub command: Vec<String>,
}

pub fn run(opts: &RefreshOptions) -> Result<ExitCode> {
    let prepare = events::phase("prepare");
    let image = ImageDir::new(&opts.image);
    let lock = image.lock_exclusive()?;
    let current = image.current()?;
    let _in_use = current.lock_shared()?;
    let config = Config::load_generation(&current.dir)?;
    let os = GuestOs::from_config(&config);
    let secrets = ImageSecrets::load_or_create(&image.secrets(), None)?;
    let art = HostArtifacts::prepare(os)?;

    let pending = image.begin_generation(&lock)?;
    prepare.done();
    match refresh(
        &config, os, &art, &secrets, &image, &current, &pending, opts,
    ) {
        Ok(()) => {}
        Err(e) => {
            let e = match pending.keep_logs() {
                Some(dir) => e.context(format!(
                    "refresh failed; `current` still points to generation {}; the attempt's logs are in {}",
                    current.number,
                    dir.display()
                )),
                None => e.context(format!(
                    "refresh failed; `current` still points to generation {}",
                    current.number
                )),
            };
            return Err(e);
        }
    }
    let number = pending.number;
    let publish = events::phase("publish");
    let published = pending.publish()?;
    let removed = image.prune_with(config.image.keep.0, &lock, |g| {
        crate::derived::forget_generation(&image.root, g)
    })?;
    publish.done();
    println!(
        "refreshed {}: generation {number} is current ({}){}",
        config.image.name,
        published.dir.display(),
        if removed.is_empty() {
            String::new()
        } else {
            format!("; removed generation(s) {removed:?}")
        }
    );
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::too_many_arguments)]
fn refresh(
    config: &Config,
    os: GuestOs,
    art: &HostArtifacts,
    secrets: &ImageSecrets,
    image: &ImageDir,
    current: &Generation,
    pending: &PendingGeneration,
    opts: &RefreshOptions,
) -> Result<()> {
    let mirror = events::phase("mirror");
    let config_dir = &current.dir;
    for name in ["config.toml", "config.base"] {
        if config_dir.join(name).exists() {
            std::fs::copy(config_dir.join(name), pending.dir.join(name))?;
        }
    }
    // The default update installs from a freshly verified mirror, which
    // the guest reads from its inputs share.
    let inputs = pending.dir.join("inputs");
    std::fs::create_dir_all(&inputs)?;
    // A custom update keeps the index the current generation has.
    crate::derived::request::copy_kept_index(config_dir, &pending.dir)?;
    let update = if opts.command.is_empty() {
        tracing::info!("[refresh] building the Cygwin mirror for the update");
        let prepared = media::build::prepare_mirror(config, &inputs.join("mirror"))?;
        crate::derived::request::keep_index(&prepared.index_file, &pending.dir)?;
        let installer = media::unattend::installer_name(config.guest.version);
        if let Some(exe) =
            media::build::setup_exe(config, &prepared.source, &prepared.arch, installer, &inputs)?
            && exe != inputs.join(installer)
        {
            std::fs::copy(&exe, inputs.join(installer))?;
        }
        let root = media::unattend::cygwin_root(config);
        os.update_command(installer, &root, &prepared.requested)
    } else {
        os.shell_command(&opts.command)
    };

    let run_opts = RunOptions {
        image: image.root.clone(),
        input: Some(inputs.clone()),
        output: None,
        keep_failed: opts.keep_failed,
        cold: false,
        command: Vec::new(),
    };
    let instance = Instance {
        config,
        os,
        art,
        secrets,
        generation: current,
        opts: &run_opts,
        state_dir: Some(pending.dir.clone()),
    };
    let revive = instance.check_snapshot()?;
    mirror.done();
    let update_phase = events::phase("update");
    let logs = pending.logs();
    let (identity, summary) = runtime()?.block_on(supervise(
        &format!("refresh-{}", config.image.name),
        opts.keep_failed,
        async |sup: &mut Supervisor| {
            let result = update_and_save(
                sup,
                &instance,
                revive.as_ref(),
                &update,
                opts.command.is_empty(),
                &pending.state(),
            )
            .await;
            copy_logs(sup.run_dir().path(), &logs, "refresh-");
            result
        },
    ))?;
    update_phase.done();

    // The overlay becomes a standalone base disk; the old one is untouched.
    let save = events::phase("save");
    let overlay = pending.dir.join("overlay.qcow2");
    art.convert_disk(&overlay, &pending.disk())?;
    std::fs::remove_file(&overlay)?;
    std::fs::remove_dir_all(&inputs)?;
    let old = Manifest::load(&current.manifest())?;
    let packages = old.cygwin_packages.clone();
    let manifest =
        crate::phases::successor_manifest(old, identity, &pending.disk(), summary, packages)?;
    manifest.save(&pending.manifest())?;
    save.done();

    let verify = events::phase("verify");
    verify_revives(image, pending, art, opts.keep_failed)?;
    verify.done();
    Ok(())
}

/// Runs the update in the revived guest, brings it back to the ready
/// state and saves it.
async fn update_and_save(
    sup: &mut Supervisor,
    instance: &Instance<'_>,
    revive: Option<&crate::phases::run::Revive>,
    update: &str,
    default_update: bool,
    state: &Path,
) -> Result<(Identity, StateSummary)> {
    let (config, os) = (instance.config, instance.os);
    let run_dir = sup.run_dir().path().to_path_buf();
    let mut running = instance.start(sup, revive).await?;
    tracing::info!("[update] {update}");
    let exit = running
        .ctrl
        .agent
        .exec(
            update,
            &mut events::command_stderr(),
            &mut events::command_stderr(),
        )
        .await?;
    match exit.exit_code() {
        0 => {}
        UPDATE_NEEDS_REBOOT if default_update => {
            tracing::info!("[update] Cygwin asks for a reboot to finish; rebooting the guest");
            let _ = running
                .ctrl
                .agent
                .exec(&os.reboot(), &mut tokio::io::sink(), &mut tokio::io::sink())
                .await;
            tokio::time::sleep(Duration::from_secs(5)).await;
            wait_for_ssh(
                &mut running.ctrl.agent,
                os,
                "reboot",
                config.boot_timeout(),
                &run_dir,
                true,
            )
            .await?;
            mount_shares(&mut running.ctrl.agent, config, os, instance.secrets).await?;
        }
        code => bail!("phase update: `{update}` ended with {code}"),
    }
    if default_update {
        run_provision(&mut running.ctrl.agent, config, os).await?;
    }
    running
        .ctrl
        .agent
        .exec_checked(&os.flush_disks(), None)
        .await
        .context("cannot flush the guest's disks before the snapshot")?;
    let identity = Identity::query(&running.guest, &running.spec).await?;
    let summary = save_state(&running.guest, &run_dir, state).await?;
    Ok((identity, summary))
}
