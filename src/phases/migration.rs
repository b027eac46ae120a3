//! Saving a running guest into state.gz and loading it back: QEMU migrates
//! over a unix socket straight into cygvm's parallel gzip writer, and is
//! fed from cygvm's verifying parallel reader. No shell, no `exec:`.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::time::Instant;

use crate::phases::instance::HostArtifacts;
use crate::snapshot::manifest::RuntimeIdentity;
use crate::snapshot::{CodecOptions, MigrationWriter, StateSummary, restore_async};
use crate::vm::qemu::VmSpec;
use crate::vm::supervisor::Vm;

/// QEMU's default migration cap is 128 MiB/s; a save to a local file
/// should go as fast as the writer takes it.
const UNLIMITED_BANDWIDTH: u64 = 1 << 40;
const MIGRATION_DEADLINE: Duration = Duration::from_secs(600);

/// Pauses the guest and saves its whole state into `dest` (written under a
/// temporary name; renamed into place only when QEMU reports success).
pub async fn save_state(vm: &Vm, run_dir: &Path, dest: &Path) -> Result<StateSummary> {
    let sock = run_dir.join("migrate-out.sock");
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock)
        .with_context(|| format!("cannot listen on {}", sock.display()))?;
    vm.qmp
        .migrate_set_parameters(json!({ "max-bandwidth": UNLIMITED_BANDWIDTH }))
        .await
        .context("cannot lift QEMU's migration bandwidth cap")?;
    // A guest revived from an expanded snapshot has `x-ignore-shared` on;
    // state.gz carries all of RAM and must load without it.
    vm.qmp
        .migrate_set_capabilities(&[(IGNORE_SHARED, false)])
        .await
        .context("cannot turn QEMU's x-ignore-shared off")?;
    vm.qmp.stop().await.context("cannot pause the guest")?;
    let writer = MigrationWriter::create(dest, CodecOptions::default())?;
    let receive = tokio::spawn(async move {
        let (stream, _) = listener.accept().await?;
        writer.save_async(stream).await.map_err(anyhow::Error::from)
    });
    vm.qmp
        .migrate(&format!("unix:{}", sock.display()))
        .await
        .context("QEMU refused to start the migration")?;
    let pending = tokio::time::timeout(MIGRATION_DEADLINE, receive)
        .await
        .map_err(|_| anyhow!("the snapshot was not saved within {MIGRATION_DEADLINE:?}"))?
        .context("the snapshot writer stopped")??;
    wait_migration(vm, "saving the snapshot").await?;
    let summary = pending.commit()?;
    Ok(summary)
}

/// Polls `query-migrate` until QEMU reports the migration completed;
/// `what` names the step in errors.
pub async fn wait_migration(vm: &Vm, what: &str) -> Result<()> {
    let deadline = Instant::now() + MIGRATION_DEADLINE;
    loop {
        let info = vm.qmp.query_migrate().await?;
        match info.status.as_deref() {
            Some("completed") => return Ok(()),
            Some(s @ ("failed" | "cancelled")) => bail!(
                "{what}: QEMU reports the migration {s}{}",
                info.error_desc
                    .as_deref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            ),
            _ if Instant::now() >= deadline => {
                bail!("{what}: QEMU did not finish the migration within {MIGRATION_DEADLINE:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Feeds a verified state.gz into a guest started with `-incoming defer`,
/// then resumes it if `resume`.
pub async fn load_state(
    vm: &Vm,
    run_dir: &Path,
    state: &Path,
    summary: &StateSummary,
    resume: bool,
) -> Result<()> {
    let sock = run_dir.join("migrate-in.sock");
    vm.qmp
        .migrate_incoming(&format!("unix:{}", sock.display()))
        .await
        .context("QEMU refused to take the snapshot")?;
    let mut stream = UnixStream::connect(&sock).await.with_context(|| {
        format!(
            "cannot connect to QEMU's incoming socket {}",
            sock.display()
        )
    })?;
    restore_async(state, summary, &mut stream, &CodecOptions::default())
        .await
        .context("cannot feed the snapshot to QEMU")?;
    stream.shutdown().await.ok();
    wait_migration(vm, "loading the snapshot").await?;
    if resume {
        vm.qmp
            .cont()
            .await
            .context("cannot resume the revived guest")?;
    }
    Ok(())
}

/// Pauses the VM and saves its device state into `dest` with
/// `x-ignore-shared`: RAM in a file (`share=on`) stays out of the stream,
/// so this takes milliseconds whatever the memory holds.
pub async fn save_devices(vm: &Vm, dest: &Path) -> Result<()> {
    let uri = file_uri(dest)?;
    vm.qmp.stop().await.context("cannot pause the VM")?;
    vm.qmp
        .migrate_set_capabilities(&[(IGNORE_SHARED, true)])
        .await
        .context("QEMU cannot leave file-backed RAM out of the migration")?;
    vm.qmp
        .migrate(&uri)
        .await
        .context("QEMU refused to save the device state")?;
    wait_migration(vm, "saving the device state").await
}

/// Loads a device state saved by [`save_devices`] into a VM started with
/// `-incoming defer` over the same RAM file, then resumes it.
pub async fn load_devices(vm: &Vm, devices: &Path) -> Result<()> {
    let uri = file_uri(devices)?;
    vm.qmp
        .migrate_set_capabilities(&[(IGNORE_SHARED, true)])
        .await
        .context("QEMU cannot leave file-backed RAM out of the migration")?;
    vm.qmp
        .migrate_incoming(&uri)
        .await
        .context("QEMU refused the device state")?;
    wait_migration(vm, "loading the device state").await?;
    vm.qmp
        .cont()
        .await
        .context("cannot resume the revived VM")?;
    Ok(())
}

const IGNORE_SHARED: &str = "x-ignore-shared";

/// `file:PATH` for QEMU, which reads `,` in it as an option separator.
fn file_uri(path: &Path) -> Result<String> {
    let abs = std::path::absolute(path)?;
    let text = abs.to_str().filter(|t| !t.contains(',')).ok_or_else(|| {
        anyhow!(
            "{} cannot be given to QEMU (a comma or non-UTF-8 in the path)",
            abs.display()
        )
    })?;
    Ok(format!("file:{text}"))
}

/// What this host would revive with, found without starting anything.
pub fn host_identity(art: &HostArtifacts, spec: &VmSpec) -> Result<RuntimeIdentity> {
    let qemu_version = art.qemu_version()?;
    let machine = resolve_machine(&art.qemu, spec.machine.qemu_name())?;
    Ok(RuntimeIdentity {
        qemu_version,
        machine,
        device_argv: spec.device_argv(),
    })
}

/// `pc` → `pc-i440fx-10.0`: the versioned machine type an alias stands for.
fn resolve_machine(qemu: &Path, alias: &str) -> Result<String> {
    let out = std::process::Command::new(qemu)
        .args(["-machine", "help"])
        .output()
        .with_context(|| format!("cannot run {}", qemu.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(machine_from_help(&text, alias).unwrap_or_else(|| alias.to_string()))
}

fn machine_from_help(text: &str, alias: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some(alias))
            .then(|| line.split("(alias of ").nth(1))
            .flatten()
            .map(|rest| rest.trim_end_matches(')').trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_aliases_resolve_from_qemu_help() {
        let help = "Supported machines are:\n\
                    microvm              microvm (i386)\n\
                    pc                   Standard PC (i440FX + PIIX, 1996) (alias of pc-i440fx-10.0)\n\
                    pc-i440fx-10.0       Standard PC (i440FX + PIIX, 1996) (default)\n\
                    q35                  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-10.0)\n";
        assert_eq!(
            machine_from_help(help, "pc").as_deref(),
            Some("pc-i440fx-10.0")
        );
        assert_eq!(
            machine_from_help(help, "q35").as_deref(),
            Some("pc-q35-10.0")
        );
        assert_eq!(machine_from_help(help, "microvm"), None);
    }
}
