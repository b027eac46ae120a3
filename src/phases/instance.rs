//! One instance: the private switch, the controller VM and the guest VM,
//! as install, run and refresh all start them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::time::Instant;

use crate::agent::client::AgentClient;
use crate::config::{Config, Firmware as ConfigFirmware};
use crate::controller::{self, HostParts};
use crate::fsutil::write_atomic;
use crate::guest::GuestOs;
use crate::guest::devices::device_set;
use crate::secrets::ImageSecrets;
use crate::vm::accel::{self, Accel};
use crate::vm::host_tools;
use crate::vm::qemu::{BootDevice, Disk, DiskFormat, Firmware, Nic, OVMF_CODE_4M, VmSpec};
use crate::vm::rundir::log_tail;
use crate::vm::supervisor::{Supervisor, Vm};

pub const GUEST_MAC: &str = "52:54:00:12:01:01";
pub const CONTROLLER_MAC: &str = "52:54:00:12:01:02";
/// How long QEMU may take to start listening on QMP.
const QMP_DEADLINE: Duration = Duration::from_secs(30);
const TAIL: usize = 15;

/// Everything from the host an instance is made of, found and built once
/// per cygvm process.
#[derive(Debug, Clone)]
pub struct HostArtifacts {
    pub qemu: PathBuf,
    pub qemu_img: PathBuf,
    pub accel: Accel,
    /// The uncompressed kernel both Linux VMs boot (PVH boot is faster
    /// under TCG than unpacking the bzImage).
    pub kernel: PathBuf,
    pub controller_initrd: PathBuf,
    pub standin_initrd: Option<PathBuf>,
    /// The bootable kernel image (bzImage) the stand-in's installer ISO
    /// carries: it boots through the firmware like Windows.
    pub standin_kernel: PathBuf,
    qemu_version: std::sync::OnceLock<String>,
}

impl HostArtifacts {
    /// Finds the programs and builds (or takes from the cache) the initrds,
    /// with this cygvm binary as the controller's agent. Fails before
    /// anything starts, naming the missing package.
    pub fn prepare(os: GuestOs) -> Result<Self> {
        let exe = std::env::current_exe().context("cannot find cygvm's own binary")?;
        Self::prepare_with_agent(os, &exe)
    }

    /// Like [`HostArtifacts::prepare`], with `agent` (a cygvm binary) as
    /// the controller's agent: for programs that link the library.
    pub fn prepare_with_agent(os: GuestOs, agent: &Path) -> Result<Self> {
        let qemu = host_tools::QEMU_SYSTEM.require()?;
        let qemu_img = host_tools::QEMU_IMG.require()?;
        host_tools::VDE_SWITCH.require()?;
        let (accel, why) = accel::choose();
        match accel {
            Accel::Kvm => tracing::info!("{why}"),
            Accel::Tcg => tracing::warn!("{why}"),
        }
        let started = std::time::Instant::now();
        let step = |what: &str| {
            tracing::debug!(
                "[artifacts] {what} at {:.2} s",
                started.elapsed().as_secs_f64()
            )
        };
        let parts = HostParts::from_host().context("cannot assemble the controller VM")?;
        let cache = controller::initrd::default_cache_dir();
        let memo = ArtifactsMemo::path(&cache, os, &parts, agent);
        if let Some(built) = memo.as_deref().and_then(ArtifactsMemo::read) {
            step("initrds known from the last run with the same inputs");
            return Ok(Self {
                qemu,
                qemu_img,
                accel,
                kernel: built.kernel,
                controller_initrd: built.controller_initrd,
                standin_initrd: built.standin_initrd,
                standin_kernel: parts.kernel.image.clone(),
                qemu_version: std::sync::OnceLock::new(),
            });
        }
        step("host parts found");
        let kernel = controller::kernel::pvh_kernel(&parts.kernel, &cache)
            .context("cannot prepare the controller kernel")?;
        step("kernel");
        let agent = agent_binary(agent, &cache)?;
        step("agent stripped");
        let builder = controller::controller_initrd(&parts, Some(&agent))?;
        step("controller initrd assembled");
        let controller_initrd = builder
            .build_cached(&cache)
            .context("cannot build the controller initrd")?
            .path;
        step("controller initrd hashed");
        drop(agent);
        let standin_initrd = match os {
            GuestOs::Standin => Some(
                controller::standin_initrd(&parts)?
                    .build_cached(&cache)
                    .context("cannot build the linux-standin initrd")?
                    .path,
            ),
            GuestOs::Windows => None,
        };
        step("stand-in initrd");
        if let Some(memo) = &memo {
            ArtifactsMemo {
                kernel: kernel.clone(),
                controller_initrd: controller_initrd.clone(),
                standin_initrd: standin_initrd.clone(),
            }
            .write(memo);
        }
        let standin_kernel = parts.kernel.image.clone();
        tracing::debug!(
            "host artifacts ready in {:.2} s",
            started.elapsed().as_secs_f64()
        );
        Ok(Self {
            qemu,
            qemu_img,
            accel,
            kernel,
            controller_initrd,
            standin_initrd,
            standin_kernel,
            qemu_version: std::sync::OnceLock::new(),
        })
    }

    /// `10.0.2`: the version `qemu --version` reports, asked once.
    pub fn qemu_version(&self) -> Result<String> {
        if let Some(v) = self.qemu_version.get() {
            return Ok(v.clone());
        }
        let line = host_tools::first_output_line(&self.qemu, ["--version"])
            .ok_or_else(|| anyhow!("{} reports no version", self.qemu.display()))?;
        let version = host_tools::parse_version(&line)
            .ok_or_else(|| anyhow!("cannot read a version from {line:?}"))?;
        let text = version
            .iter()
            .chain(std::iter::repeat(&0))
            .take(3)
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(".");
        Ok(self.qemu_version.get_or_init(|| text).clone())
    }

    /// `qemu-img create`: a new disk, or an overlay over `backing`.
    pub fn create_disk(&self, path: &Path, size: u64, backing: Option<&Path>) -> Result<()> {
        let mut args: Vec<std::ffi::OsString> =
            vec!["create".into(), "-q".into(), "-f".into(), "qcow2".into()];
        if let Some(b) = backing {
            args.extend([
                "-F".into(),
                "qcow2".into(),
                "-b".into(),
                std::path::absolute(b)?.into(),
            ]);
        }
        args.push(path.into());
        if backing.is_none() {
            args.push(size.to_string().into());
        }
        self.qemu_img(&args, "write", path)
    }

    /// `qemu-img convert`: a disk and its backing chain into one standalone image.
    pub fn convert_disk(&self, source: &Path, dest: &Path) -> Result<()> {
        let args: Vec<std::ffi::OsString> = vec![
            "convert".into(),
            "-q".into(),
            "-O".into(),
            "qcow2".into(),
            source.into(),
            dest.into(),
        ];
        self.qemu_img(&args, "write", dest)
    }

    /// `qemu-img rebase -u`: names `backing` (relative to the overlay) as
    /// the overlay's backing file without touching its data.
    pub fn rebase_disk(&self, overlay: &Path, backing: &Path) -> Result<()> {
        let args: Vec<std::ffi::OsString> = vec![
            "rebase".into(),
            "-u".into(),
            "-F".into(),
            "qcow2".into(),
            "-b".into(),
            backing.into(),
            overlay.into(),
        ];
        self.qemu_img(&args, "rebase", overlay)
    }

    /// Runs qemu-img; its failure says it could not `verb` `target`.
    fn qemu_img(&self, args: &[std::ffi::OsString], verb: &str, target: &Path) -> Result<()> {
        let out = std::process::Command::new(&self.qemu_img)
            .args(args)
            .output()
            .with_context(|| format!("cannot run {}", self.qemu_img.display()))?;
        if !out.status.success() {
            bail!(
                "qemu-img could not {verb} {}: {}",
                target.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

/// The initrds and kernel a run with the same inputs built last: building
/// them means reading and hashing ~100 MiB, which a run need not repeat
/// when no input changed. The inputs are known by path, size, inode and
/// modification time: this cygvm binary (which carries the init scripts),
/// the kernel and its modules.dep, every host program the initrds take,
/// and the package database and dynamic linker cache (which change when
/// any library does).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ArtifactsMemo {
    kernel: PathBuf,
    controller_initrd: PathBuf,
    standin_initrd: Option<PathBuf>,
}

impl ArtifactsMemo {
    fn path(cache: &Path, os: GuestOs, parts: &HostParts, agent: &Path) -> Option<PathBuf> {
        use std::os::unix::fs::MetadataExt;
        let inputs = [
            agent,
            &parts.kernel.image,
            &parts.kernel.modules.join("modules.dep"),
            &parts.busybox,
            &parts.smbd,
            &parts.dropbear,
            &parts.dropbearconvert,
            &parts.dbclient,
            &parts.dropbearkey,
            &parts.bash,
            Path::new("/var/lib/dpkg/status"),
            Path::new("/etc/ld.so.cache"),
        ];
        let mut parts_text = vec![format!("{os:?}")];
        for path in inputs {
            let md = std::fs::metadata(path).ok()?;
            parts_text.push(format!(
                "{} {} {} {}.{}",
                path.display(),
                md.len(),
                md.ino(),
                md.mtime(),
                md.mtime_nsec()
            ));
        }
        let refs: Vec<(&str, &str)> = parts_text.iter().map(|t| ("input", t.as_str())).collect();
        let key = crate::snapshot::mapped::key_of(&refs);
        Some(cache.join(format!("artifacts-{}.json", &key[..16])))
    }

    fn read(path: &Path) -> Option<Self> {
        let memo: Self = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        let all_there = [&memo.kernel, &memo.controller_initrd]
            .into_iter()
            .chain(memo.standin_initrd.as_ref())
            .all(|p| p.is_file());
        all_there.then_some(memo)
    }

    fn write(&self, path: &Path) {
        if let Ok(bytes) = serde_json::to_vec(self) {
            let _ = write_atomic(path, &bytes, 0o644);
        }
    }
}

/// cygvm's own binary for the controller, without debug info (an
/// unoptimized build is ~100 MiB with it, more than the initrd's tmpfs
/// holds). A temporary file, so concurrent runs do not share it.
fn agent_binary(exe: &Path, cache: &Path) -> Result<tempfile::TempPath> {
    std::fs::create_dir_all(cache)?;
    let tmp = tempfile::Builder::new()
        .prefix(".agent-")
        .tempfile_in(cache)?
        .into_temp_path();
    let stripped = std::process::Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&*tmp)
        .arg(exe)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !stripped {
        tracing::warn!(
            "strip (package binutils) failed; the controller gets cygvm with its debug info"
        );
        std::fs::copy(exe, &tmp)?;
    }
    Ok(tmp)
}

pub use crate::phases::controller::{Controller, ControllerStarting, spawn_controller};

/// Host directories the controller serves to the guest.
#[derive(Debug, Clone)]
pub struct ShareDirs {
    pub inputs: PathBuf,
    pub outputs: PathBuf,
}

/// The guest's writable state: its disk (base or overlay) and, for UEFI,
/// its own copy of the firmware variables.
#[derive(Debug, Clone)]
pub struct GuestDisk {
    pub disk: PathBuf,
    pub uefi_vars: Option<PathBuf>,
}

/// How the guest boots.
#[derive(Debug, Clone)]
pub enum GuestBoot {
    /// From the install media: the Windows ISO (for the linux-standin, its
    /// installer ISO), the answer floppy and the Cygwin ISO.
    Install {
        floppy: PathBuf,
        cygwin_iso: PathBuf,
        windows_iso: PathBuf,
    },
    /// From its disk.
    Disk,
}

/// The guest's QEMU spec. The device set depends only on the config and
/// the boot mode, so a revive can rebuild it identically. Windows and the
/// linux-standin get the same devices and boot the same way: through the
/// firmware, the installer CD first during the install (the floppy and the
/// Cygwin ISO never), the disk alone afterwards.
pub fn guest_spec(
    config: &Config,
    art: &HostArtifacts,
    run_dir: &Path,
    switch: &Path,
    disk: &GuestDisk,
    boot: &GuestBoot,
) -> Result<VmSpec> {
    // The devices the configured Windows version has drivers for; the
    // linux-standin gets the same ones.
    let devices = device_set(config.guest.version);
    let mut spec = VmSpec::new(
        "guest",
        devices.machine,
        art.accel,
        &run_dir.join("guest.qmp"),
    );
    spec.memory_mib = config.guest.memory.mib();
    spec.cpus = config.guest.cpus.0;
    spec.serial_log = Some(run_dir.join("guest.serial.log"));
    // Setup reboots several times; only a power-off ends the install.
    spec.no_reboot = false;
    spec.vga = true;
    spec.disks.push(Disk {
        path: disk.disk.clone(),
        format: DiskFormat::Qcow2,
        bus: devices.disk_bus,
        read_only: false,
    });
    spec.nics.push(Nic {
        model: devices.nic,
        mac: GUEST_MAC.into(),
        switch: switch.to_path_buf(),
    });
    match boot {
        GuestBoot::Install {
            floppy,
            cygwin_iso,
            windows_iso,
        } => {
            spec.floppy = Some(floppy.clone());
            spec.cdroms.push(windows_iso.clone());
            spec.cdroms.push(cygwin_iso.clone());
            spec.boot_order = vec![BootDevice::Cdrom(0), BootDevice::Disk(0)];
        }
        GuestBoot::Disk => spec.boot_order = vec![BootDevice::Disk(0)],
    }
    if config.guest.firmware() == ConfigFirmware::Uefi {
        let vars = disk
            .uefi_vars
            .clone()
            .ok_or_else(|| anyhow!("a UEFI guest needs its own OVMF variables file"))?;
        spec.firmware = Firmware::Uefi {
            code: PathBuf::from(OVMF_CODE_4M),
            vars,
        };
    }
    Ok(spec)
}

/// Starts the guest VM.
pub async fn start_guest(sup: &mut Supervisor, art: &HostArtifacts, spec: &VmSpec) -> Result<Vm> {
    start_vm(sup, art, spec, "the guest VM").await
}

/// Starts QEMU for `spec` and connects to its QMP; `what` names the VM in
/// the error.
pub async fn start_vm(
    sup: &mut Supervisor,
    art: &HostArtifacts,
    spec: &VmSpec,
    what: &str,
) -> Result<Vm> {
    sup.spawn_qemu(&art.qemu, spec, Instant::now() + QMP_DEADLINE)
        .await
        .with_context(|| format!("cannot start {what}"))
}

/// The last lines of the serial logs, for an error message.
pub fn log_report(run_dir: &Path) -> String {
    let mut out = String::new();
    for (what, name) in [
        ("guest serial log", "guest.serial.log"),
        ("controller serial log", "controller.serial.log"),
    ] {
        let path = run_dir.join(name);
        if path.exists() {
            out.push_str(&format!(
                "\n--- {what} ({}) ---\n{}",
                path.display(),
                log_tail(&path, TAIL).trim_end()
            ));
        }
    }
    out
}

/// Waits for SSH through the agent; on failure the error names the phase,
/// the deadline and the logs. Without `probe`, logging in is enough (the
/// caller's next command is checked).
pub async fn wait_for_ssh(
    agent: &mut AgentClient,
    os: GuestOs,
    phase: &str,
    timeout: Duration,
    run_dir: &Path,
    probe: bool,
) -> Result<()> {
    let started = std::time::Instant::now();
    let result = agent
        .wait_ssh_with(timeout, probe, |stage, detail| {
            tracing::info!("[{phase}] waiting for SSH ({stage}): {detail}");
        })
        .await;
    match result {
        Ok(()) => {
            tracing::info!(
                "[{phase}] SSH ready after {:.1} s",
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Err(e) => Err(anyhow!(
            "phase {phase}: the guest did not answer SSH within the {} s deadline: {e}\n\
             (guest logs: {}){}",
            timeout.as_secs(),
            os.log_locations(),
            log_report(run_dir)
        )),
    }
}

/// Maps the shares in the guest and checks them.
pub async fn mount_shares(
    agent: &mut AgentClient,
    config: &Config,
    os: GuestOs,
    secrets: &ImageSecrets,
) -> Result<()> {
    map_shares(agent, config, os, secrets, None).await
}

/// Mapping the shares takes seconds; a guest that does not finish within
/// this has hung (a stuck mount), and the run fails instead of waiting.
const SHARE_DEADLINE: Duration = Duration::from_secs(120);

/// Maps the shares in one guest command, after `first` (another command)
/// when given, within [`SHARE_DEADLINE`].
async fn map_shares(
    agent: &mut AgentClient,
    config: &Config,
    os: GuestOs,
    secrets: &ImageSecrets,
    first: Option<String>,
) -> Result<()> {
    let cmd = os.mount_shares(
        config.network.controller,
        &config.guest.admin_user.0,
        &secrets.samba_password,
    );
    let (command, what) = match first {
        Some(first) => (
            format!("{first} && {}", cmd.command),
            "set the revived guest's clock and map its shares",
        ),
        None => (cmd.command, "map the shares in the guest"),
    };
    let exec = agent.exec_checked(&command, cmd.stdin.as_deref().map(str::as_bytes));
    match tokio::time::timeout(SHARE_DEADLINE, exec).await {
        Ok(result) => result.map(drop).with_context(|| format!("cannot {what}")),
        Err(_) => bail!(
            "cannot {what}: no answer within {} s (the guest's serial log may say why)",
            SHARE_DEADLINE.as_secs()
        ),
    }
}

/// For a revived guest, whose clock stopped when it was saved and whose
/// mappings point at the controller that saved it: sets the clock to now
/// and maps the shares again, in one command.
pub async fn set_clock_and_mount_shares(
    agent: &mut AgentClient,
    config: &Config,
    os: GuestOs,
    secrets: &ImageSecrets,
) -> Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    map_shares(agent, config, os, secrets, Some(os.set_clock(now))).await
}

/// Runs the config's provision commands in the guest's shell, in order;
/// their output goes to cygvm's stderr.
pub async fn run_provision(agent: &mut AgentClient, config: &Config, os: GuestOs) -> Result<()> {
    let commands = &config.provision.commands;
    for (n, command) in commands.iter().enumerate() {
        tracing::info!("[provision] {}/{}: {command}", n + 1, commands.len());
        let argv = ["sh".to_string(), "-c".to_string(), command.clone()];
        let exit = agent
            .exec(
                &os.shell_command(&argv),
                &mut tokio::io::stderr(),
                &mut tokio::io::stderr(),
            )
            .await?;
        if exit.exit_code() != 0 {
            bail!(
                "phase provision: command {} of key provision.commands ({command:?}) ended with {}",
                n + 1,
                exit.exit_code()
            );
        }
    }
    Ok(())
}

/// Copies the run's logs into `dest`, names prefixed with `prefix`, before
/// the run directory goes away.
pub fn copy_logs(run_dir: &Path, dest: &Path, prefix: &str) {
    for name in [
        "guest.serial.log",
        "controller.serial.log",
        "guest.log",
        "controller.log",
    ] {
        let src = run_dir.join(name);
        if src.exists() {
            let _ = std::fs::copy(&src, dest.join(format!("{prefix}{name}")));
        }
    }
}
