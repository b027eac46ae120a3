//! The linux-standin's install media through the firmware, as Windows'
//! install media behave: the CD's prompt, the answer file's search, the
//! edition check. Each test boots QEMU (TCG) with the device set and boot
//! order cygvm gives a Windows 11 install, on a blank disk.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cygvm::config::WindowsVersion;
use cygvm::controller::{self, HostParts};
use cygvm::guest::devices::device_set;
use cygvm::guest::installer_iso::{self, BOOT_KEY, InstallerParts};
use cygvm::vm::accel::Accel;
use cygvm::vm::qemu::{BootDevice, Disk, DiskFormat, Firmware, OVMF_CODE_4M, OVMF_VARS_4M, VmSpec};

/// The installer ISO and the stand-in initrd, made once per test binary
/// (into the build's own scratch directory, made again each time).
fn installer() -> &'static PathBuf {
    static ISO: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ISO.get_or_init(|| {
        let parts = HostParts::from_host().expect("the stand-in's host parts");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("standin-firmware");
        std::fs::create_dir_all(&dir).unwrap();
        let initrd = controller::standin_initrd(&parts)
            .unwrap()
            .build_cached(&controller::initrd::default_cache_dir())
            .unwrap();
        let iso = dir.join("installer.iso");
        installer_iso::build(
            &InstallerParts {
                kernel: &parts.kernel.image,
                initrd: &initrd.path,
                version: WindowsVersion::Win11,
                kernel_args: &[],
            },
            &iso,
        )
        .expect("the installer ISO");
        iso
    })
}

struct Guest {
    child: Child,
    serial: PathBuf,
    qmp: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Guest {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        // SAFETY: our own child's process group.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Starts a Windows-11-shaped guest: installer CD first, then the blank
/// disk; the floppy (when given) and nothing else.
fn boot(firmware: &str, floppy: Option<&Path>) -> Guest {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let devices = device_set(WindowsVersion::Win11);
    let mut spec = VmSpec::new("guest", devices.machine, Accel::Tcg, &d.join("qmp"));
    spec.memory_mib = 512;
    spec.vga = true;
    spec.no_reboot = false;
    spec.serial_log = Some(d.join("serial.log"));
    let disk = d.join("disk.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg("1G")
        .output()
        .unwrap();
    assert!(out.status.success());
    spec.disks.push(Disk {
        path: disk,
        format: DiskFormat::Qcow2,
        bus: devices.disk_bus,
        read_only: false,
    });
    spec.cdroms.push(installer().clone());
    spec.floppy = floppy.map(Path::to_path_buf);
    spec.boot_order = vec![BootDevice::Cdrom(0), BootDevice::Disk(0)];
    if firmware == "uefi" {
        let vars = d.join("vars.fd");
        std::fs::copy(OVMF_VARS_4M, &vars).unwrap();
        spec.firmware = Firmware::Uefi {
            code: OVMF_CODE_4M.into(),
            vars,
        };
    }
    let child = Command::new("qemu-system-x86_64")
        .args(spec.argv())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("qemu-system-x86_64");
    Guest {
        child,
        serial: d.join("serial.log"),
        qmp: d.join("qmp"),
        _dir: dir,
    }
}

impl Guest {
    fn serial(&self) -> String {
        let raw = std::fs::read(&self.serial).unwrap_or_default();
        String::from_utf8_lossy(&raw).into_owned()
    }

    /// Waits until the serial log holds `line`, pressing `key` once a
    /// second meanwhile when given; false at the deadline.
    fn wait_for(&mut self, line: &str, key: Option<&str>, deadline: Duration) -> bool {
        let mut qmp = key.map(|_| Qmp::connect(&self.qmp));
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            if self.serial().contains(line) {
                return true;
            }
            if let (Some(q), Some(k)) = (qmp.as_mut(), key) {
                q.send_key(k);
            }
            if self.child.try_wait().unwrap().is_some() {
                return self.serial().contains(line);
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        false
    }

    /// Waits for QEMU to exit (the guest powered off).
    fn powered_off(&mut self, deadline: Duration) -> bool {
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            if self.child.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }
}

struct Qmp(BufReader<UnixStream>);

impl Qmp {
    fn connect(path: &Path) -> Qmp {
        let end = Instant::now() + Duration::from_secs(30);
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(_) if Instant::now() < end => std::thread::sleep(Duration::from_millis(100)),
                Err(e) => panic!("QMP {}: {e}", path.display()),
            }
        };
        let mut q = Qmp(BufReader::new(stream));
        q.line();
        q.send(r#"{"execute":"qmp_capabilities"}"#);
        q
    }
    fn line(&mut self) -> String {
        let mut l = String::new();
        let _ = self.0.read_line(&mut l);
        l
    }
    fn send(&mut self, json: &str) {
        let _ = writeln!(self.0.get_mut(), "{json}");
        // The reply (events may come first; they are not needed here).
        loop {
            let l = self.line();
            if l.is_empty() || l.contains("\"return\"") || l.contains("\"error\"") {
                break;
            }
        }
    }
    fn send_key(&mut self, qcode: &str) {
        self.send(&format!(
            r#"{{"execute":"send-key","arguments":{{"keys":[{{"type":"qcode","data":"{qcode}"}}]}}}}"#
        ));
    }
}

/// A 1.44 MB floppy holding `files` at its root.
fn floppy(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
    let img = dir.join("floppy.img");
    let ok = Command::new("mformat")
        .args(["-C", "-f", "1440", "-v", "ANSWERS", "-i"])
        .arg(&img)
        .arg("::")
        .status()
        .unwrap();
    assert!(ok.success(), "mformat (mtools)");
    for (name, text) in files {
        let src = dir.join(name);
        std::fs::write(&src, text).unwrap();
        let ok = Command::new("mcopy")
            .arg("-i")
            .arg(&img)
            .arg(&src)
            .arg("::")
            .status()
            .unwrap();
        assert!(ok.success());
    }
    img
}

const SETUP_STARTED: &str = "cygvm-standin: Windows Setup stand-in started";

/// Like Microsoft's efisys.bin, the UEFI CD loader waits for a key and
/// otherwise boots the next device: with a blank disk, Setup never starts.
/// This is what every UEFI install did before cygvm pressed a key.
#[test]
#[ignore = "boots QEMU under TCG; run by .ci/run with --include-ignored"]
fn uefi_installer_without_a_key_never_starts_setup() {
    let mut g = boot("uefi", None);
    assert!(
        g.wait_for(
            "no key, booting the next device",
            None,
            Duration::from_secs(120)
        ),
        "{}",
        g.serial()
    );
    std::thread::sleep(Duration::from_secs(5));
    let serial = g.serial();
    assert!(
        serial.contains("Press any key to boot from CD or DVD"),
        "{serial}"
    );
    assert!(!serial.contains(SETUP_STARTED), "{serial}");
}

/// With cygvm's key press, UEFI Setup starts; it looks for its answer
/// file on the floppy and the CDs, and without one it stops with a clear
/// message (and the stand-in powers off).
#[test]
#[ignore = "boots QEMU under TCG; run by .ci/run with --include-ignored"]
fn uefi_installer_with_a_key_starts_setup_which_wants_an_answer_file() {
    let mut g = boot("uefi", None);
    assert!(
        g.wait_for(SETUP_STARTED, Some(BOOT_KEY), Duration::from_secs(120)),
        "{}",
        g.serial()
    );
    assert!(g.serial().contains("key pressed, starting Setup"));
    assert!(g.powered_off(Duration::from_secs(60)), "{}", g.serial());
    let serial = g.serial();
    assert!(
        serial.contains("install failed: no answer file: neither autounattend.xml nor winnt.sif"),
        "{serial}"
    );
}

/// Like bootfix.bin, the BIOS CD loader boots Setup at once on a blank
/// disk; Setup refuses an answer file naming an edition install.wim does
/// not have, listing the ones it has.
#[test]
#[ignore = "boots QEMU under TCG; run by .ci/run with --include-ignored"]
fn bios_setup_refuses_an_edition_the_installer_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let answer = "<?xml version=\"1.0\"?>\n<unattend><settings pass=\"windowsPE\"><component>\
        <ImageInstall><OSImage><InstallFrom><MetaData><Key>/IMAGE/NAME</Key>\
        <Value>Windows 11 Enterprise</Value></MetaData></InstallFrom></OSImage></ImageInstall>\
        </component></settings></unattend>\n";
    let fd = floppy(dir.path(), &[("autounattend.xml", answer)]);
    let mut g = boot("bios", Some(&fd));
    assert!(g.powered_off(Duration::from_secs(180)), "{}", g.serial());
    let serial = g.serial();
    assert!(serial.contains("blank disk, starting Setup"), "{serial}");
    assert!(!serial.contains("Press any key"), "{serial}");
    assert!(
        serial.contains("answer file: /mnt/floppy/autounattend.xml"),
        "{serial}"
    );
    assert!(
        serial.contains(
            "install failed: the answer file selects /IMAGE/NAME Windows 11 Enterprise, \
             which install.wim does not have; it has: 1: Windows 11 Home"
        ),
        "{serial}"
    );
    assert!(serial.contains("6: Windows 11 Pro"), "{serial}");
}
