//! What booting the linux-standin through the firmware costs, in one run:
//! the install (installer CD, Setup's restart, first logon) with SeaBIOS and
//! with OVMF, and a boot of the installed disk to "ready" through each
//! firmware and GRUB, against booting the same kernel and initrd directly
//! (`-kernel`, PVH) on the same disk, the way the stand-in booted before it
//! went through the firmware.
//!
//! Run: `cargo bench --bench standin_boot` (writes the `standin_boot`
//! section of docs/perf.md). Unoptimized builds skip it.

#[path = "support/perfdoc.rs"]
mod perfdoc;

#[path = "support/standin.rs"]
mod standin;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use cygvm::config::Config;
use cygvm::guest::GuestOs;
use cygvm::phases::instance::{self, GuestBoot, GuestDisk, HostArtifacts};
use cygvm::vm::qemu::{DirectBoot, Firmware, VmSpec};

const READY: &str = "cygvm-standin: ready";

fn main() {
    standin::main_of("standin_boot", bench);
}

struct Image {
    firmware: &'static str,
    install: Duration,
    dir: PathBuf,
    config: Config,
}

fn bench() -> Result<()> {
    let ws = tempfile::Builder::new()
        .prefix("cygvm-bench-boot-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
    let cygvm = env!("CARGO_BIN_EXE_cygvm");
    let mirror = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/standin/mirror");
    let mut images = Vec::new();
    for firmware in ["bios", "uefi"] {
        let dir = ws.path().join(firmware);
        std::fs::create_dir_all(&dir)?;
        let config_path = dir.join("cygvm.toml");
        std::fs::write(
            &config_path,
            format!(
                "[image]\nname = \"boot\"\ndir = \"images\"\n\n[guest]\nos = \"linux-standin\"\n\
                 memory = \"512M\"\ncpus = 1\ndisk = \"1G\"\nfirmware = \"{firmware}\"\n\n\
                 [cygwin]\nmirror = \"{}\"\npackages = [\"openssh\"]\n",
                mirror.display()
            ),
        )?;
        let started = Instant::now();
        let out = Command::new(cygvm)
            .current_dir(&dir)
            .args(["install", "--config", "cygvm.toml"])
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "install ({firmware}): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        images.push(Image {
            firmware,
            install: started.elapsed(),
            config: Config::load(&config_path)?,
            dir,
        });
    }

    let art = HostArtifacts::prepare(GuestOs::Standin)?;
    let mut rows = Vec::new();
    for image in &images {
        let through_firmware = boot_to_ready(&art, image, false)?;
        let direct = boot_to_ready(&art, image, true)?;
        rows.push((image, through_firmware, direct));
    }

    let mut doc = format!(
        "## Stand-in boots through the firmware\n\n\
         Command: `cargo bench --bench standin_boot` (release build; TCG on {} cores). \
         The install runs `cygvm install` on the example mirror's openssh closure: the \
         installer CD, Setup's restart and the first logon, then the boot, SSH, provisioning \
         and the snapshot. \"Boot to ready\" starts the installed disk (an overlay) with the \
         image's device set and times QEMU's start to the stand-in's `{READY}` line: \
         through the firmware and GRUB (what every install boot, cold run and refresh does) \
         and, as the baseline, the same kernel and initrd booted directly (`-kernel`, PVH; \
         SeaBIOS), as the stand-in booted before.\n\n\
         | firmware | install s | boot to ready s | direct kernel boot s | added by the firmware path s |\n\
         |---|---:|---:|---:|---:|\n",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    for (image, fw, direct) in &rows {
        doc.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.1} | {:+.1} |\n",
            image.firmware,
            image.install.as_secs_f64(),
            fw.as_secs_f64(),
            direct.as_secs_f64(),
            fw.as_secs_f64() - direct.as_secs_f64(),
        ));
    }
    doc.push_str(
        "\nRevived runs do not boot: they load the memory snapshot, so the firmware path \
         costs them nothing.\n",
    );
    print!("{doc}");
    perfdoc::write_section("standin_boot", &doc);
    Ok(())
}

/// Boots the image's installed disk to the stand-in's ready line.
fn boot_to_ready(art: &HostArtifacts, image: &Image, direct: bool) -> Result<Duration> {
    let run = tempfile::tempdir()?;
    let r = run.path();
    let gen_dir = image.dir.join("images/boot/gen-0001");
    let overlay = r.join("disk.qcow2");
    art.create_disk(&overlay, 0, Some(&gen_dir.join("disk.qcow2")))?;
    let vars = gen_dir.join("OVMF_VARS.fd");
    let uefi_vars = if vars.is_file() {
        let copy = r.join("OVMF_VARS.fd");
        std::fs::copy(&vars, &copy)?;
        Some(copy)
    } else {
        None
    };
    let switch = r.join("switch");
    let mut vde = Proc(
        Command::new("vde_switch")
            .arg("--sock")
            .arg(&switch)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("vde_switch")?,
    );
    let end = Instant::now() + Duration::from_secs(10);
    while !switch.join("ctl").exists() {
        if Instant::now() > end {
            bail!("vde_switch made no socket");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut spec: VmSpec = instance::guest_spec(
        &image.config,
        art,
        r,
        &switch,
        &GuestDisk {
            disk: overlay,
            uefi_vars,
        },
        &GuestBoot::Disk,
    )?;
    if direct {
        let initrd = art.standin_initrd.clone().context("no stand-in initrd")?;
        spec.firmware = Firmware::Bios;
        spec.boot_order.clear();
        spec.direct_boot = Some(DirectBoot {
            kernel: art.kernel.clone(),
            initrd: Some(initrd),
            append: "console=ttyS0 quiet cygvm.phase=disk".into(),
        });
    }
    let serial = r.join("guest.serial.log");
    let started = Instant::now();
    let mut qemu = Proc(
        Command::new(&art.qemu)
            .args(spec.argv())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let deadline = started + Duration::from_secs(300);
    loop {
        let text =
            String::from_utf8_lossy(&std::fs::read(&serial).unwrap_or_default()).into_owned();
        if text.contains(READY) {
            let took = started.elapsed();
            qemu.stop();
            vde.stop();
            return Ok(took);
        }
        if Instant::now() > deadline {
            bail!(
                "{} boot (direct: {direct}) never got ready:\n{text}",
                image.firmware
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Proc(Child);

impl Proc {
    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}
