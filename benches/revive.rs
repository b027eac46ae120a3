//! Revive to the first byte of output, whole `cygvm run` (controller
//! included), measured in one run against its baselines:
//!
//! 1. the README's stand-in image: `cygvm run -- echo first`, revived,
//!    against `cygvm run --cold` of the same image;
//! 2. a 2 GiB guest with 1.4 GiB touched: `cygvm run` against the method
//!    cygvm started from (controller booted, guest fed by
//!    `-incoming "exec:gzip -c -d state.gz"`), timed from the start of the
//!    instance to the output;
//! 3. the same guest as its touched memory grows 0.5 → 1.4 → 3 GiB;
//! 4. four runs of one image at once: the host memory their guests use
//!    (PSS, which splits shared pages among the processes sharing them).
//!
//! Run: `cargo bench --bench revive` (writes the `revive` section of
//! docs/perf.md). Unoptimized builds skip it.

#[path = "support/perfdoc.rs"]
mod perfdoc;
#[path = "support/standin.rs"]
mod standin;

use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use cygvm::config::Config;
use cygvm::guest::GuestOs;
use cygvm::image::ImageDir;
use cygvm::phases::controller::spawn_controller_with;
use cygvm::phases::instance::{self, GuestBoot, GuestDisk, HostArtifacts, ShareDirs, start_guest};
use cygvm::phases::migration::wait_migration;
use cygvm::secrets::ImageSecrets;
use cygvm::vm::supervisor::{Supervisor, SupervisorOptions};
use cygvm::vm::vde::VdeSwitch;
use standin::{BenchImage, median, timed};

const RUNS: usize = 5;

fn main() {
    standin::main_of("revive", bench);
}

/// A stand-in image with `memory`, installed, with a cache of its own.
fn installed(name: &str, memory: &str, packages: &str) -> Result<BenchImage> {
    let ws = BenchImage::new(name, memory, packages)?;
    ws.install()?;
    Ok(ws)
}

/// Wall time from starting `cygvm run` to the first byte of its output.
fn time_to_output(ws: &BenchImage, extra: &[&str]) -> Result<Duration> {
    let started = Instant::now();
    let mut child = ws
        .run_cmd(extra, &["echo", "first"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut first = [0u8];
    child
        .stdout
        .take()
        .context("no stdout")?
        .read_exact(&mut first)
        .context("no output")?;
    let took = started.elapsed();
    let out = child.wait_with_output()?;
    if !out.status.success() || first != *b"f" {
        bail!("run failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(took)
}

fn refresh(ws: &BenchImage, command: &str) -> Result<()> {
    let mut cmd = ws.cygvm();
    cmd.arg("refresh")
        .arg("--image")
        .arg(ws.image())
        .args(["--", "sh", "-c", command]);
    timed(&mut cmd).map(|_| ())
}

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

/// Fills `mib` MiB more of the guest's memory (half random, half text) in a
/// tmpfs that lives on in its snapshot.
fn fill(mib: u32) -> String {
    let half = mib / 2;
    format!(
        "set -e; mkdir -p /mnt/fill; grep -q ' /mnt/fill ' /proc/mounts || \
         mount -t tmpfs -o size=3600m tmpfs /mnt/fill; n=$(ls /mnt/fill | wc -l); \
         dd if=/dev/urandom of=/mnt/fill/random$n bs=1M count={half} 2>/dev/null; \
         yes 'cygvm revive benchmark: compressible guest memory, line after line' | head -c 1048576 > /tmp/one; \
         i=0; while [ $i -lt {half} ]; do cat /tmp/one; i=$((i+1)); done > /mnt/fill/text$n; sync"
    )
}

fn bench() -> Result<()> {
    let mut doc = String::from(
        "Command: `cargo bench --bench revive` (release build; QEMU under TCG on this \
         2-core machine; every image and cache made fresh by the bench). Times are wall \
         time from starting the command to the first byte of the command's output, \
         medians of the runs given.\n\n",
    );

    // 1. The README's stand-in image.
    let readme = installed(
        "standin",
        "512M",
        "\"openssh\", \"make\", \"cygvm-example-package-with-a-long-name-debuginfo\"",
    )?;
    let revived = median(
        (0..RUNS)
            .map(|_| time_to_output(&readme, &[]))
            .collect::<Result<_>>()?,
    );
    let cold = median(
        (0..3)
            .map(|_| time_to_output(&readme, &["--cold"]))
            .collect::<Result<_>>()?,
    );
    doc.push_str(&format!(
        "### The README's stand-in image (512 MiB guest)\n\n\
         | `cygvm run … -- echo first` | seconds to the output | vs `--cold` |\n|---|---:|---:|\n\
         | revived (median of {RUNS}) | {} | {:.1}× |\n\
         | `--cold` (median of 3) | {} | 1.0× |\n\n",
        secs(revived),
        cold.as_secs_f64() / revived.as_secs_f64(),
        secs(cold),
    ));
    drop(readme);

    // 2 and 3. A 4 GiB guest whose touched memory grows.
    let big = installed("big", "4G", "\"openssh\"")?;
    let mut rows = Vec::new();
    let mut at_1400 = None;
    let mut filled = 0;
    for target in [512u32, 1434, 3072] {
        refresh(&big, &fill(target - filled))?;
        filled = target;
        let touched = touched_mib(&big)?;
        let times: Vec<Duration> = (0..RUNS)
            .map(|_| time_to_output(&big, &[]))
            .collect::<Result<_>>()?;
        let t = median(times);
        rows.push((target, touched, t));
        if target == 1434 {
            let seed = median(
                (0..3)
                    .map(|_| seed_revive(&big.image(), &big.dir.join("cache")))
                    .collect::<Result<_>>()?,
            );
            let pss = parallel_pss(&big, 4)?;
            at_1400 = Some((t, seed, touched, pss));
        }
    }
    let (t, seed, touched, (pss, each)) = at_1400.context("no 1.4 GiB step")?;
    doc.push_str(&format!(
        "### 4 GiB guest with 1.4 GiB touched, whole run including the controller\n\n\
         | method | seconds to the output | speed-up |\n|---|---:|---:|\n\
         | cygvm: controller and guest revived from their expanded snapshots (median of {RUNS}) | {} | {:.1}× |\n\
         | the seed's: controller booted, guest fed by `-incoming \"exec:gzip -c -d state.gz\"` (median of 3) | {} | 1.0× |\n\n\
         The guest's stream holds {touched} MiB (`state.stream_len`); the seed's time runs from \
         starting the switch to the output, cygvm's from starting the `cygvm` process.\n\n",
        secs(t),
        seed.as_secs_f64() / t.as_secs_f64(),
        secs(seed),
    ));
    doc.push_str(
        "### Revive time as the guest's touched memory grows (4 GiB guest)\n\n\
         | filled | migration stream MiB | `cygvm run -- echo first`, seconds (median of 5) | vs 0.5 GiB |\n\
         |---:|---:|---:|---:|\n",
    );
    let base = rows[0].2.as_secs_f64();
    for (target, touched, t) in &rows {
        doc.push_str(&format!(
            "| {:.1} GiB | {touched} | {} | {:.2} |\n",
            *target as f64 / 1024.0,
            secs(*t),
            t.as_secs_f64() / base
        ));
    }
    doc.push_str(&format!(
        "\n### Four runs of one image at once (1.4 GiB touched)\n\n\
         Four `cygvm run -- sh -c 'cat /mnt/fill/* | wc -c; …'` at once (each reads all \
         the filled memory, then waits); PSS of the four guest QEMU processes summed from \
         `/proc/PID/smaps_rollup` while all four run. PSS splits a page shared by n \
         processes n ways, so shared clean pages of the RAM file count once in the sum.\n\n\
         | figure | MiB |\n|---|---:|\n\
         | guest memory in the snapshot (stream) | {touched} |\n\
         | four guests, PSS summed | {pss} |\n\
         | per guest ({}) | |\n\
         | four guests with private memory would be about | {} |\n",
        each.iter()
            .map(|m| m.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        4 * touched,
    ));
    print!("{doc}");
    perfdoc::write_section("revive", &doc);
    Ok(())
}

/// The current generation's migration stream length, MiB.
fn touched_mib(ws: &BenchImage) -> Result<u64> {
    let generation = ImageDir::new(ws.image()).current()?;
    let manifest = cygvm::snapshot::Manifest::load(&generation.manifest())?;
    Ok(manifest.state.context("no state")?.stream_len >> 20)
}

/// Starts `n` runs that read the filled memory and then wait; sums the
/// guests' PSS while all run.
fn parallel_pss(ws: &BenchImage, n: usize) -> Result<(u64, Vec<u64>)> {
    // Each run reads all the filled memory, says so, and waits until the
    // host has measured (a file in its input directory).
    let release = ws.dir.join("pss-release");
    std::fs::create_dir_all(&release)?;
    let release_arg = release.to_string_lossy().into_owned();
    let children: Vec<_> = (0..n)
        .map(|i| {
            ws.run_cmd(
                &["--input", &release_arg],
                &[
                    "sh",
                    "-c",
                    // Through a pipe into wc: cat to /dev/null may splice
                    // without reading a byte.
                    &format!(
                        "cat /mnt/fill/* | wc -c >/dev/null; echo read{i}; \
                         while [ ! -e /inputs/measured ]; do sleep 1; done"
                    ),
                ],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
        })
        .collect::<std::io::Result<_>>()?;
    // Wait until every run printed (read all its memory).
    let mut children = children;
    for c in &mut children {
        let mut buf = [0u8; 5];
        c.stdout.as_mut().context("stdout")?.read_exact(&mut buf)?;
    }
    let mut each = Vec::new();
    for pid in guest_pids(&ws.dir) {
        let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        let kib: u64 = text
            .lines()
            .find(|l| l.starts_with("Pss:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        each.push(kib >> 10);
    }
    std::fs::write(release.join("measured"), b"")?;
    for c in children {
        c.wait_with_output()?;
    }
    if each.len() != n {
        bail!("found {} guest QEMUs, expected {n}", each.len());
    }
    Ok((each.iter().sum(), each))
}

/// Guest QEMU processes whose command line mentions `dir`.
fn guest_pids(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains("qemu-system")
                && cmd.contains("guest,process=cygvm-guest")
                && cmd.contains(&needle)
        })
        .collect()
}

/// The seed's revive, end to end: switch, controller booted (as it was
/// then), guest fed `state.gz` by `exec:gzip -c -d`, SSH, shares, output.
fn seed_revive(image: &Path, cache: &Path) -> Result<Duration> {
    // SAFETY: single-threaded here, before the runtime starts.
    unsafe { std::env::set_var("XDG_CACHE_HOME", cache) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let image_dir = ImageDir::new(image);
        let generation = image_dir.current()?;
        let config = Config::load_generation(&generation.dir)?;
        let os = GuestOs::from_config(&config);
        let secrets = ImageSecrets::load_or_create(&image_dir.secrets(), None)?;
        let art = HostArtifacts::prepare_with_agent(os, Path::new(env!("CARGO_BIN_EXE_cygvm")))?;
        let sup = Supervisor::start(
            &format!("bench-seed-{}", std::process::id()),
            SupervisorOptions::default(),
        )?;
        sup.run(async |sup: &mut Supervisor| -> Result<Duration> {
            let started = Instant::now();
            let run_dir = sup.run_dir().path().to_path_buf();
            let overlay = run_dir.join("overlay.qcow2");
            art.create_disk(&overlay, 0, Some(&generation.disk()))?;
            let vars = generation.dir.join("OVMF_VARS.fd");
            let uefi_vars = if vars.exists() {
                let copy = run_dir.join("OVMF_VARS.fd");
                std::fs::copy(&vars, &copy)?;
                Some(copy)
            } else {
                None
            };
            let shares = ShareDirs {
                inputs: run_dir.join("inputs"),
                outputs: run_dir.join("outputs"),
            };
            std::fs::create_dir_all(&shares.inputs)?;
            std::fs::create_dir_all(&shares.outputs)?;
            let switch =
                VdeSwitch::start(sup, tokio::time::Instant::now() + Duration::from_secs(15))
                    .await?;
            let starting =
                spawn_controller_with(sup, &config, &art, &secrets, &switch, &shares, false)
                    .await?;
            let mut spec = instance::guest_spec(
                &config,
                &art,
                &run_dir,
                &switch.dir,
                &GuestDisk {
                    disk: overlay,
                    uefi_vars,
                },
                &GuestBoot::Disk,
            )?;
            spec.incoming_defer = true;
            let vm = start_guest(sup, &art, &spec).await?;
            vm.qmp
                .migrate_incoming(&format!("exec:gzip -c -d {}", generation.state().display()))
                .await?;
            wait_migration(&vm, "reviving").await?;
            vm.qmp.cont().await?;
            let mut ctrl = starting.connect().await?;
            ctrl.agent
                .wait_ssh(Duration::from_secs(120), |_, _| {})
                .await?;
            instance::set_clock_and_mount_shares(&mut ctrl.agent, &config, os, &secrets).await?;
            let out = ctrl
                .agent
                .exec_checked(&os.shell_command(&["echo".into(), "first".into()]), None)
                .await?;
            let took = started.elapsed();
            if out != b"first\n" {
                bail!("unexpected output {:?}", String::from_utf8_lossy(&out));
            }
            Ok(took)
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
    })
}
