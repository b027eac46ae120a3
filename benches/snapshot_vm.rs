//! Save and revive of a real stand-in guest, in one run, for each method:
//!
//! - (a) the original system's `migrate "exec:gzip -c > state.gz"` at QEMU's
//!   default bandwidth cap, revived with `-incoming "exec:gzip -c -d state.gz"`;
//! - (b) the same with the bandwidth cap lifted;
//! - (c) cygvm: migration over a unix socket into the parallel gzip-member
//!   writer, revived through the verifying parallel reader;
//! - (d) QEMU's mapped-ram capability into a local `file:` (QEMU >= 9),
//!   uncompressed, to say whether it should become an option.
//!
//! The guest has 2 GiB of RAM with about 1.4 GiB touched (half random, half
//! compressible). Revive time runs from starting the guest's QEMU to the
//! first command's output, with the controller already up (it is the same
//! for every method). Also measured: the stand-in install, a cold run and a
//! revived run through the CLI, to their first output.
//!
//! Run: `cargo bench --bench snapshot_vm` (writes the `snapshot_vm` and
//! `standin` sections of docs/perf.md). Unoptimized builds skip it.

#[path = "support/perfdoc.rs"]
mod perfdoc;
#[path = "support/standin.rs"]
mod standin;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

use cygvm::config::Config;
use cygvm::guest::GuestOs;
use cygvm::image::ImageDir;
use cygvm::phases::instance::{
    self, GuestBoot, GuestDisk, HostArtifacts, ShareDirs, spawn_controller, start_guest,
};
use cygvm::phases::migration::{load_state, save_state, wait_migration};
use cygvm::phases::run::{Instance, RunOptions};
use cygvm::secrets::ImageSecrets;
use cygvm::snapshot::StateSummary;
use cygvm::vm::supervisor::{Supervisor, SupervisorOptions};
use cygvm::vm::vde::VdeSwitch;
use standin::{BenchImage, timed};

const FILL: &str = "set -e; mkdir -p /mnt/fill; mount -t tmpfs -o size=1600m tmpfs /mnt/fill; \
    dd if=/dev/urandom of=/mnt/fill/random bs=1M count=700 2>/dev/null; \
    yes 'cygvm snapshot benchmark: compressible guest memory, line after line' | head -c 1048576 > /tmp/one; \
    i=0; while [ $i -lt 700 ]; do cat /tmp/one; i=$((i+1)); done > /mnt/fill/text; \
    sync; free -m | sed -n 2p";

fn main() {
    standin::main_of("snapshot_vm", bench);
}

struct Method {
    name: &'static str,
    file: &'static str,
    save: Duration,
    size: u64,
    revive: Duration,
}

fn bench() -> Result<()> {
    let ws = BenchImage::new("bench", "2G", "\"openssh\"")?;
    let dir = ws.dir.as_path();

    // The stand-in through the CLI: install, cold run, revived run.
    let install = ws.install()?;
    let image = ws.image();
    let run = |cold: bool| {
        let extra: &[&str] = if cold { &["--cold"] } else { &[] };
        timed(&mut ws.run_cmd(extra, &["echo", "first"]))
    };
    let (cold, _) = run(true)?;
    let (revived, _) = run(false)?;
    let (revived2, _) = run(false)?;

    // The methods, on one guest with 1.4 GiB touched.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let store = dir.join("store");
    std::fs::create_dir_all(&store)?;
    let methods = rt.block_on(compare(&image, &store))?;

    let mut doc = String::new();
    doc.push_str(&format!(
        "## Stand-in install, cold run, revived run\n\n\
         Command: `cargo bench --bench snapshot_vm` (release build; TCG on {} cores). \
         Wall time of the CLI until the command's output (`echo first`), controller and \
         guest included; the cold run is the baseline.\n\n\
         | job | seconds | vs cold run |\n|---|---:|---:|\n\
         | `cygvm install` (stand-in, media to snapshot) | {:.1} | |\n\
         | `cygvm run --cold -- echo first` | {:.1} | 1.00 |\n\
         | `cygvm run -- echo first` (revive) | {:.1} | {:.2} |\n\
         | `cygvm run -- echo first` (revive, again) | {:.1} | {:.2} |\n\n",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        install.as_secs_f64(),
        cold.as_secs_f64(),
        revived.as_secs_f64(),
        cold.as_secs_f64() / revived.as_secs_f64(),
        revived2.as_secs_f64(),
        cold.as_secs_f64() / revived2.as_secs_f64(),
    ));
    let a = &methods[0];
    doc.push_str(
        "## Snapshot save and revive, by method\n\n\
         Command: `cargo bench --bench snapshot_vm`. One stand-in guest, 2 GiB RAM, \
         1.4 GiB touched in a tmpfs (700 MiB from /dev/urandom, 700 MiB of repeated text), \
         paused and saved by each method in turn; each state revived into a fresh guest \
         QEMU (overlay over the saved disk) next to an already running controller, timed \
         to the output of `echo first` over SSH. Ratios are against (a).\n\n\
         | method | save s | state MiB | revive s | save speed-up | size ratio | revive speed-up |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for m in &methods {
        doc.push_str(&format!(
            "| {} | {:.1} | {:.0} | {:.1} | {:.1}× | {:.2} | {:.1}× |\n",
            m.name,
            m.save.as_secs_f64(),
            m.size as f64 / (1 << 20) as f64,
            m.revive.as_secs_f64(),
            a.save.as_secs_f64() / m.save.as_secs_f64(),
            m.size as f64 / a.size as f64,
            a.revive.as_secs_f64() / m.revive.as_secs_f64(),
        ));
    }
    doc.push_str(&format!(
        "\nFiles: {}. Goals from the issue: save ≥ 10× faster than (a), size ≤ 1.15× of (a), \
         revive ≥ 5× faster than (a) and under 2 s.\n",
        methods
            .iter()
            .map(|m| m.file)
            .collect::<Vec<_>>()
            .join(", ")
    ));
    print!("{doc}");
    perfdoc::write_section("snapshot_vm", &doc);
    Ok(())
}

fn file_size(path: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    // mapped-ram files are sparse: count the blocks really written.
    Ok(meta.len().min(meta.blocks() * 512))
}

async fn compare(image: &Path, store: &Path) -> Result<Vec<Method>> {
    let image_dir = ImageDir::new(image);
    let generation = image_dir.current()?;
    let config = Config::load_generation(&generation.dir)?;
    let os = GuestOs::from_config(&config);
    let secrets = ImageSecrets::load_or_create(&image_dir.secrets(), None)?;
    // This benchmark's own binary is no agent: give the controller cygvm's.
    let art = HostArtifacts::prepare_with_agent(os, Path::new(env!("CARGO_BIN_EXE_cygvm")))?;
    let opts = RunOptions {
        image: image.to_path_buf(),
        input: None,
        output: None,
        keep_failed: false,
        cold: false,
        command: Vec::new(),
    };
    let instance = Instance {
        config: &config,
        os,
        art: &art,
        secrets: &secrets,
        generation: &generation,
        opts: &opts,
        state_dir: Some(store.to_path_buf()),
    };
    let revive = instance.check_snapshot()?;

    // Save the same paused guest four ways.
    let sup = Supervisor::start(
        &format!("bench-save-{}", std::process::id()),
        SupervisorOptions::default(),
    )?;
    let (mut saves, summary) = sup
        .run(
            async |sup: &mut Supervisor| -> Result<(Vec<(Duration, u64)>, StateSummary)> {
                let mut running = instance.start(sup, revive.as_ref()).await?;
                let filled = running.ctrl.agent.exec_checked(FILL, None).await?;
                eprintln!(
                    "guest memory after filling: {}",
                    String::from_utf8_lossy(&filled).trim()
                );
                running.ctrl.agent.exec_checked("sync", None).await?;
                let vm = &running.guest;
                vm.qmp.stop().await?;
                let mut out = Vec::new();
                // After a completed migration QEMU leaves the disks inactive;
                // a cont/stop pair takes the guest back to the same paused state.
                let again = async || -> Result<()> {
                    vm.qmp.cont().await?;
                    vm.qmp.stop().await?;
                    Ok(())
                };
                for (file, lift) in [("a.gz", false), ("b.gz", true)] {
                    if lift {
                        again().await?;
                        vm.qmp
                            .migrate_set_parameters(json!({"max-bandwidth": 1u64 << 40}))
                            .await?;
                    }
                    let path = store.join(file);
                    let started = Instant::now();
                    vm.qmp
                        .migrate(&format!("exec:gzip -c > {}", path.display()))
                        .await?;
                    wait_migration(vm, "saving").await?;
                    out.push((started.elapsed(), file_size(&path)?));
                }
                again().await?;
                let started = Instant::now();
                let summary = save_state(vm, sup.run_dir().path(), &store.join("c.gz")).await?;
                out.push((started.elapsed(), summary.size));
                again().await?;
                vm.qmp
                    .migrate_set_capabilities(&[("mapped-ram", true)])
                    .await
                    .context("mapped-ram (QEMU >= 9)")?;
                let path = store.join("d.raw");
                let started = Instant::now();
                vm.qmp.migrate(&format!("file:{}", path.display())).await?;
                wait_migration(vm, "saving").await?;
                out.push((started.elapsed(), file_size(&path)?));
                Ok((out, summary))
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    // Revive each into a fresh guest.
    let names = [
        ("(a) exec:gzip, default 128 MiB/s cap", "a.gz"),
        ("(b) exec:gzip, cap lifted", "b.gz"),
        ("(c) cygvm: unix socket + parallel gzip members", "c.gz"),
        ("(d) mapped-ram to a local file (uncompressed)", "d.raw"),
    ];
    let mut methods = Vec::new();
    for (i, (name, file)) in names.iter().enumerate() {
        let revive_time = revive_once(&instance, store, file, &summary).await?;
        let (save, size) = saves[i];
        methods.push(Method {
            name,
            file,
            save,
            size,
            revive: revive_time,
        });
    }
    saves.clear();
    Ok(methods)
}

/// Starts a controller (untimed), then times guest start → load → cont →
/// SSH → `echo first`.
async fn revive_once(
    instance: &Instance<'_>,
    store: &Path,
    file: &str,
    summary: &StateSummary,
) -> Result<Duration> {
    let sup = Supervisor::start(
        &format!("bench-revive-{}-{file}", std::process::id()),
        SupervisorOptions::default(),
    )?;
    let store = store.to_path_buf();
    let file = file.to_string();
    sup.run(async |sup: &mut Supervisor| -> Result<Duration> {
        let run_dir = sup.run_dir().path().to_path_buf();
        let overlay = run_dir.join("overlay.qcow2");
        instance
            .art
            .create_disk(&overlay, 0, Some(&store.join("overlay.qcow2")))?;
        let shares = ShareDirs {
            inputs: run_dir.join("inputs"),
            outputs: run_dir.join("outputs"),
        };
        std::fs::create_dir_all(&shares.inputs)?;
        std::fs::create_dir_all(&shares.outputs)?;
        let switch =
            VdeSwitch::start(sup, tokio::time::Instant::now() + Duration::from_secs(15)).await?;
        let starting = spawn_controller(
            sup,
            instance.config,
            instance.art,
            instance.secrets,
            &switch,
            &shares,
        )
        .await?;
        let mut ctrl = starting.connect().await?;
        // A UEFI image's guest gets its own copy of the variables.
        let vars = instance.generation.dir.join("OVMF_VARS.fd");
        let uefi_vars = if vars.exists() {
            let copy = run_dir.join("OVMF_VARS.fd");
            std::fs::copy(&vars, &copy)?;
            Some(copy)
        } else {
            None
        };
        let mut spec = instance::guest_spec(
            instance.config,
            instance.art,
            &run_dir,
            &switch.dir,
            &GuestDisk {
                disk: overlay.clone(),
                uefi_vars,
            },
            &GuestBoot::Disk,
        )?;
        spec.incoming_defer = true;
        let path: PathBuf = store.join(&file);
        let started = Instant::now();
        let vm = start_guest(sup, instance.art, &spec).await?;
        match file.as_str() {
            "c.gz" => load_state(&vm, &run_dir, &path, summary, true).await?,
            "d.raw" => {
                vm.qmp
                    .migrate_set_capabilities(&[("mapped-ram", true)])
                    .await?;
                vm.qmp
                    .migrate_incoming(&format!("file:{}", path.display()))
                    .await?;
                wait_migration(&vm, "reviving").await?;
                vm.qmp.cont().await?;
            }
            _ => {
                vm.qmp
                    .migrate_incoming(&format!("exec:gzip -c -d {}", path.display()))
                    .await?;
                wait_migration(&vm, "reviving").await?;
                vm.qmp.cont().await?;
            }
        }
        ctrl.agent
            .wait_ssh(Duration::from_secs(120), |_, _| {})
            .await?;
        let out = ctrl.agent.exec_checked("echo first", None).await?;
        let took = started.elapsed();
        if out != b"first\n" {
            bail!("unexpected output {:?}", String::from_utf8_lossy(&out));
        }
        Ok(took)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))
}
