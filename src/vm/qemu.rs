//! A typed QEMU command line. Never a shell string: [`VmSpec`] describes the
//! machine and its devices, [`VmSpec::argv`] renders the exact argv to run.
//!
//! Every host path in the argv is tagged with a role (`disk0`, `qmp`,
//! `switch`, …). [`VmSpec::device_argv`] renders the same arguments with each
//! path replaced by `<role>`: the guest's device set without per-run paths.
//! A snapshot manifest records that form, and a revive compares its own
//! against it, because QEMU can only load a migration stream into a machine
//! with the identical device set.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::vm::accel::Accel;

/// The Debian package that ships the OVMF (UEFI) firmware files.
pub const OVMF_PACKAGE: &str = "ovmf";
/// OVMF code for a 4 MiB flash, without Secure Boot keys enrolled.
pub const OVMF_CODE_4M: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// The matching empty variable store; each image keeps its own copy.
pub const OVMF_VARS_4M: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// OVMF code with Secure Boot support (needs `machine smm=on`; not used yet).
pub const OVMF_CODE_4M_SECBOOT: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
/// Variables with Microsoft's Secure Boot keys enrolled.
pub const OVMF_VARS_4M_MS: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";

/// QEMU machine type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    /// Q35 + ICH9: AHCI for IDE-class disks, PCIe.
    Q35,
    /// i440FX + PIIX: legacy IDE, what XP/2003 install on without drivers.
    Pc,
}

impl Machine {
    pub fn qemu_name(self) -> &'static str {
        match self {
            Machine::Q35 => "q35",
            Machine::Pc => "pc",
        }
    }

    /// The IDE-class bus slots in the order disks and CD-ROMs take them:
    /// (bus, unit). AHCI ports take one device each; PIIX channels two.
    fn ide_slots(self) -> &'static [(&'static str, Option<u8>)] {
        match self {
            Machine::Q35 => &[
                ("ide.0", None),
                ("ide.1", None),
                ("ide.2", None),
                ("ide.3", None),
                ("ide.4", None),
                ("ide.5", None),
            ],
            Machine::Pc => &[
                ("ide.0", Some(0)),
                ("ide.0", Some(1)),
                ("ide.1", Some(0)),
                ("ide.1", Some(1)),
            ],
        }
    }
}

/// Boot firmware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS, QEMU's default.
    Bios,
    /// OVMF in two pflash devices: shared read-only code, per-image variables.
    Uefi { code: PathBuf, vars: PathBuf },
}

/// Booting a kernel directly instead of from a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectBoot {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub append: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    Qcow2,
    Raw,
}

impl DiskFormat {
    fn qemu_name(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        }
    }
}

/// How a disk is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskBus {
    VirtioBlk,
    /// `ide-hd`: on AHCI with q35, on PIIX with pc. Windows has drivers for
    /// both out of the box.
    Ide,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub path: PathBuf,
    pub format: DiskFormat,
    pub bus: DiskBus,
    pub read_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NicModel {
    VirtioNet,
    /// Intel e1000 (82540EM): Windows has the driver built in.
    E1000,
    /// Realtek RTL8139: XP and Server 2003 have the driver built in.
    Rtl8139,
}

impl NicModel {
    fn qemu_name(self) -> &'static str {
        match self {
            NicModel::VirtioNet => "virtio-net-pci",
            NicModel::E1000 => "e1000",
            NicModel::Rtl8139 => "rtl8139",
        }
    }
}

/// A NIC plugged into a VDE switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub model: NicModel,
    /// E.g. `52:54:00:12:01:01`.
    pub mac: String,
    /// The switch's socket directory (the `-s` of vde_switch).
    pub switch: PathBuf,
}

/// A device the firmware may boot from, by its place in [`VmSpec::disks`]
/// or [`VmSpec::cdroms`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootDevice {
    Disk(usize),
    Cdrom(usize),
}

/// A virtio-serial port backed by a unix socket QEMU listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialPort {
    /// The port name the guest sees under /dev/virtio-ports/.
    pub name: String,
    pub socket: PathBuf,
}

/// A host directory shared over virtio-9p.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub tag: String,
    pub path: PathBuf,
    pub read_only: bool,
}

/// Guest RAM kept in a file (`memory-backend-file`) instead of anonymous
/// memory. The backend takes the id `pc.ram`, the RAM block name QEMU
/// gives `-m` memory, so a stream saved from either kind loads into the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryFile {
    pub path: PathBuf,
    pub mode: MemoryFileMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryFileMode {
    /// The guest's writes go to the file (`share=on`): a VM whose memory
    /// is being saved.
    Shared,
    /// The file is opened read-only and mapped copy-on-write
    /// (`share=off,readonly=on,rom=off`): pages load on first touch, the
    /// guest's writes stay private, and the file never changes.
    Private,
}

/// The machine and its devices. Build one with [`VmSpec::new`] and set the
/// public fields; devices appear in the argv in a fixed order, so the same
/// spec always renders the same argv.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    pub name: String,
    pub machine: Machine,
    pub accel: Accel,
    pub memory_mib: u64,
    pub cpus: u32,
    pub firmware: Firmware,
    pub direct_boot: Option<DirectBoot>,
    /// Disks in order; IDE-class ones take bus slots before CD-ROMs.
    pub disks: Vec<Disk>,
    /// A raw 1.44 MB image on drive A:, read-only.
    pub floppy: Option<PathBuf>,
    /// ISO images on `ide-cd`, read-only.
    pub cdroms: Vec<PathBuf>,
    pub nics: Vec<Nic>,
    pub serial_ports: Vec<SerialPort>,
    pub shares: Vec<Share>,
    /// The devices the firmware boots from, in order (`bootindex`). When set,
    /// the firmware boots nothing else (`-boot strict=on`): never the
    /// floppy or a CD that is not listed.
    pub boot_order: Vec<BootDevice>,
    /// A VGA adapter (Windows Setup wants one); otherwise the guest has none.
    pub vga: bool,
    /// The QMP socket QEMU listens on.
    pub qmp_socket: PathBuf,
    /// Where the guest's first serial port is written.
    pub serial_log: Option<PathBuf>,
    /// Exit instead of rebooting, so a guest's reboot ends the run visibly.
    pub no_reboot: bool,
    /// Start paused, waiting for `migrate-incoming` (a revive).
    pub incoming_defer: bool,
    /// RAM in a file rather than anonymous memory. A per-run option: the
    /// migration stream is the same either way.
    pub memory_file: Option<MemoryFile>,
}

impl VmSpec {
    /// A machine with no devices, BIOS firmware and no reboots.
    pub fn new(name: &str, machine: Machine, accel: Accel, qmp_socket: &Path) -> Self {
        Self {
            name: name.to_string(),
            machine,
            accel,
            memory_mib: 256,
            cpus: 1,
            firmware: Firmware::Bios,
            direct_boot: None,
            disks: Vec::new(),
            floppy: None,
            cdroms: Vec::new(),
            nics: Vec::new(),
            serial_ports: Vec::new(),
            shares: Vec::new(),
            boot_order: Vec::new(),
            vga: false,
            qmp_socket: qmp_socket.to_path_buf(),
            serial_log: None,
            no_reboot: true,
            incoming_defer: false,
            memory_file: None,
        }
    }

    /// Keeps the VM's RAM in `path` (see [`MemoryFile`]).
    pub fn set_memory_file(&mut self, path: &Path, mode: MemoryFileMode) {
        self.memory_file = Some(MemoryFile {
            path: path.to_path_buf(),
            mode,
        });
    }

    /// The argv after the program name, with real paths.
    pub fn argv(&self) -> Vec<OsString> {
        self.args(true)
            .iter()
            .map(|a| a.render(Render::Real))
            .collect()
    }

    /// The whole command: `qemu` then [`VmSpec::argv`].
    pub fn command_line(&self, qemu: &Path) -> Vec<OsString> {
        std::iter::once(qemu.as_os_str().to_os_string())
            .chain(self.argv())
            .collect()
    }

    /// The guest's machine and devices with every host path replaced by a
    /// `<role>` placeholder and the per-run options (`-name`, `-incoming`)
    /// left out. Two specs with equal device argv can load each other's
    /// migration streams.
    pub fn device_argv(&self) -> Vec<String> {
        self.args(false)
            .iter()
            .map(|a| a.render(Render::Placeholder).to_string_lossy().into_owned())
            .collect()
    }

    fn args(&self, with_run_options: bool) -> Vec<Arg> {
        let mut a = Args::default();
        a.flag("-nodefaults");
        a.flag("-no-user-config");
        a.opt("-display", "none");
        if with_run_options {
            a.opt(
                "-name",
                &format!("{},process=cygvm-{}", self.name, self.name),
            );
        }
        let memory_file = self.memory_file.as_ref().filter(|_| with_run_options);
        a.opt(
            "-machine",
            &format!(
                "type={},accel={}{}",
                self.machine.qemu_name(),
                self.accel.qemu_name(),
                if memory_file.is_some() {
                    ",memory-backend=pc.ram"
                } else {
                    ""
                }
            ),
        );
        a.opt(
            "-cpu",
            match self.accel {
                Accel::Kvm => "host",
                Accel::Tcg => "max",
            },
        );
        a.opt("-m", &format!("{}M", self.memory_mib));
        if let Some(file) = memory_file {
            a.push(
                "-object",
                Arg::new(&format!(
                    "memory-backend-file,id=pc.ram,size={}M,",
                    self.memory_mib
                ))
                .lit(match file.mode {
                    MemoryFileMode::Shared => "share=on,mem-path=",
                    MemoryFileMode::Private => "share=off,readonly=on,rom=off,mem-path=",
                })
                .path("memory", &file.path),
            );
        }
        a.opt("-smp", &self.cpus.to_string());

        if let Firmware::Uefi { code, vars } = &self.firmware {
            a.push(
                "-drive",
                Arg::new("if=pflash,format=raw,unit=0,readonly=on,file=").path("ovmf-code", code),
            );
            a.push(
                "-drive",
                Arg::new("if=pflash,format=raw,unit=1,file=").path("ovmf-vars", vars),
            );
        }

        if let Some(boot) = &self.direct_boot {
            a.push("-kernel", Arg::new("").raw_path("kernel", &boot.kernel));
            if let Some(initrd) = &boot.initrd {
                a.push("-initrd", Arg::new("").raw_path("initrd", initrd));
            }
            a.opt("-append", &boot.append);
        }

        if !self.boot_order.is_empty() {
            a.opt("-boot", "strict=on");
        }
        let boot_index = |dev: BootDevice| -> String {
            match self.boot_order.iter().position(|d| *d == dev) {
                Some(i) => format!(",bootindex={i}"),
                None => String::new(),
            }
        };

        let mut ide_slots = self.machine.ide_slots().iter();
        let mut next_ide = |what: &str| -> String {
            // More IDE devices than slots is a spec bug, not a user input:
            // QEMU reports the missing bus by name.
            match ide_slots.next() {
                Some((bus, Some(unit))) => format!(",bus={bus},unit={unit}"),
                Some((bus, None)) => format!(",bus={bus}"),
                None => format!(",bus=no-free-ide-slot-for-{what}"),
            }
        };

        for (i, disk) in self.disks.iter().enumerate() {
            let node = format!("disk{i}");
            let ro = if disk.read_only { ",read-only=on" } else { "" };
            a.push(
                "-blockdev",
                Arg::new(&format!("driver=file,node-name={node}-file,filename="))
                    .path(&node, &disk.path)
                    .lit(ro),
            );
            a.opt(
                "-blockdev",
                &format!(
                    "driver={},node-name={node},file={node}-file{ro}",
                    disk.format.qemu_name()
                ),
            );
            let boot = boot_index(BootDevice::Disk(i));
            let device = match disk.bus {
                DiskBus::VirtioBlk => format!("virtio-blk-pci,drive={node},id={node}-dev{boot}"),
                DiskBus::Ide => {
                    format!("ide-hd,drive={node},id={node}-dev{}{boot}", next_ide(&node))
                }
            };
            a.opt("-device", &device);
        }

        for (i, iso) in self.cdroms.iter().enumerate() {
            let node = format!("cdrom{i}");
            a.push(
                "-blockdev",
                Arg::new(&format!("driver=file,node-name={node}-file,filename="))
                    .path(&node, iso)
                    .lit(",read-only=on"),
            );
            a.opt(
                "-blockdev",
                &format!("driver=raw,node-name={node},file={node}-file,read-only=on"),
            );
            a.opt(
                "-device",
                &format!(
                    "ide-cd,drive={node},id={node}-dev{}{}",
                    next_ide(&node),
                    boot_index(BootDevice::Cdrom(i))
                ),
            );
        }

        if let Some(floppy) = &self.floppy {
            a.push(
                "-blockdev",
                Arg::new("driver=file,node-name=floppy0-file,filename=")
                    .path("floppy0", floppy)
                    .lit(",read-only=on"),
            );
            a.opt(
                "-blockdev",
                "driver=raw,node-name=floppy0,file=floppy0-file,read-only=on",
            );
            // pc has a floppy controller built in; q35 needs one on its ISA bus.
            match self.machine {
                Machine::Pc => a.opt("-device", "floppy,drive=floppy0,id=floppy0-dev"),
                Machine::Q35 => {
                    a.opt("-device", "isa-fdc,id=fdc0");
                    a.opt("-device", "floppy,bus=fdc0.0,drive=floppy0,id=floppy0-dev");
                }
            }
        }

        for (i, nic) in self.nics.iter().enumerate() {
            let id = format!("net{i}");
            a.push(
                "-netdev",
                Arg::new(&format!("vde,id={id},sock=")).path("switch", &nic.switch),
            );
            a.opt(
                "-device",
                &format!(
                    "{},netdev={id},mac={},id={id}-dev",
                    nic.model.qemu_name(),
                    nic.mac
                ),
            );
        }

        if !self.serial_ports.is_empty() {
            a.opt("-device", "virtio-serial-pci,id=vserial0");
            for (i, port) in self.serial_ports.iter().enumerate() {
                let id = format!("vport{i}");
                a.push(
                    "-chardev",
                    Arg::new(&format!("socket,id={id},path="))
                        .path(&id, &port.socket)
                        .lit(",server=on,wait=off"),
                );
                a.opt(
                    "-device",
                    &format!(
                        "virtserialport,bus=vserial0.0,chardev={id},name={},id={id}-dev",
                        port.name
                    ),
                );
            }
        }

        for share in &self.shares {
            let id = format!("fs-{}", share.tag);
            a.push(
                "-fsdev",
                Arg::new(&format!("local,id={id},path="))
                    .path(&format!("share-{}", share.tag), &share.path)
                    .lit(&format!(
                        ",security_model=none,readonly={}",
                        on_off(share.read_only)
                    )),
            );
            a.opt(
                "-device",
                &format!(
                    "virtio-9p-pci,fsdev={id},mount_tag={},id={id}-dev",
                    share.tag
                ),
            );
        }

        if self.vga {
            a.opt("-device", "VGA,id=vga0");
        }

        a.push(
            "-chardev",
            Arg::new("socket,id=qmp,path=")
                .path("qmp", &self.qmp_socket)
                .lit(",server=on,wait=off"),
        );
        a.opt("-mon", "chardev=qmp,mode=control");

        if let Some(log) = &self.serial_log {
            a.push(
                "-chardev",
                Arg::new("file,id=serial0,path=").path("serial-log", log),
            );
            a.opt("-serial", "chardev:serial0");
        }

        if self.no_reboot {
            a.flag("-no-reboot");
        }
        if with_run_options && self.incoming_defer {
            a.opt("-incoming", "defer");
        }
        a.0
    }
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

#[derive(Clone, Copy)]
enum Render {
    Real,
    Placeholder,
}

#[derive(Debug, Clone)]
enum Part {
    Lit(String),
    /// A path inside a `key=value,...` option: commas are doubled.
    OptPath {
        role: String,
        path: PathBuf,
    },
    /// A path that is a whole argument (`-kernel PATH`): taken as is.
    RawPath {
        role: String,
        path: PathBuf,
    },
}

/// One argv element, made of literal text and tagged host paths.
#[derive(Debug, Clone)]
struct Arg(Vec<Part>);

impl Arg {
    fn new(s: &str) -> Self {
        Arg(vec![Part::Lit(s.to_string())])
    }
    fn lit(mut self, s: &str) -> Self {
        if !s.is_empty() {
            self.0.push(Part::Lit(s.to_string()));
        }
        self
    }
    fn path(mut self, role: &str, path: &Path) -> Self {
        self.0.push(Part::OptPath {
            role: role.to_string(),
            path: path.to_path_buf(),
        });
        self
    }
    fn raw_path(mut self, role: &str, path: &Path) -> Self {
        self.0.push(Part::RawPath {
            role: role.to_string(),
            path: path.to_path_buf(),
        });
        self
    }

    fn render(&self, how: Render) -> OsString {
        let mut out = Vec::new();
        for part in &self.0 {
            match (part, how) {
                (Part::Lit(s), _) => out.extend_from_slice(s.as_bytes()),
                (Part::OptPath { role, .. } | Part::RawPath { role, .. }, Render::Placeholder) => {
                    out.extend_from_slice(format!("<{role}>").as_bytes())
                }
                (Part::OptPath { path, .. }, Render::Real) => {
                    for &b in path.as_os_str().as_bytes() {
                        out.push(b);
                        if b == b',' {
                            out.push(b',');
                        }
                    }
                }
                (Part::RawPath { path, .. }, Render::Real) => {
                    out.extend_from_slice(path.as_os_str().as_bytes())
                }
            }
        }
        OsStr::from_bytes(&out).to_os_string()
    }
}

#[derive(Default)]
struct Args(Vec<Arg>);

impl Args {
    fn flag(&mut self, f: &str) {
        self.0.push(Arg::new(f));
    }
    fn opt(&mut self, f: &str, v: &str) {
        self.0.push(Arg::new(f));
        self.0.push(Arg::new(v));
    }
    fn push(&mut self, f: &str, v: Arg) {
        self.0.push(Arg::new(f));
        self.0.push(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: Vec<OsString>) -> Vec<String> {
        v.into_iter()
            .map(|s| s.into_string().expect("utf-8"))
            .collect()
    }

    /// The controller: direct kernel boot, virtio NIC, agent port, 9p shares.
    fn controller() -> VmSpec {
        let run = Path::new("/run/user/1000/cygvm/img-42");
        let mut spec = VmSpec::new(
            "controller",
            Machine::Q35,
            Accel::Tcg,
            &run.join("controller.qmp"),
        );
        spec.memory_mib = 256;
        spec.direct_boot = Some(DirectBoot {
            kernel: "/boot/vmlinuz-6.1.0-56-amd64".into(),
            initrd: Some("/home/u/.cache/cygvm/controller-abc.img".into()),
            append: "console=ttyS0 quiet".into(),
        });
        spec.nics.push(Nic {
            model: NicModel::VirtioNet,
            mac: "52:54:00:12:01:02".into(),
            switch: run.join("switch"),
        });
        spec.serial_ports.push(SerialPort {
            name: "cygvm.agent".into(),
            socket: run.join("agent.sock"),
        });
        spec.shares.push(Share {
            tag: "inputs".into(),
            path: "/home/u/pkg".into(),
            read_only: true,
        });
        spec.shares.push(Share {
            tag: "outputs".into(),
            path: run.join("out"),
            read_only: false,
        });
        spec.serial_log = Some(run.join("controller.serial.log"));
        spec
    }

    /// A Windows install: UEFI, AHCI disk, floppy, two ISOs, e1000, VGA.
    fn windows() -> VmSpec {
        let run = Path::new("/tmp/cygvm-1000/img-7");
        let img = Path::new("/srv/images/win11/gen-0001");
        let mut spec = VmSpec::new("guest", Machine::Q35, Accel::Kvm, &run.join("guest.qmp"));
        spec.memory_mib = 4096;
        spec.cpus = 2;
        spec.firmware = Firmware::Uefi {
            code: OVMF_CODE_4M.into(),
            vars: img.join("OVMF_VARS.fd"),
        };
        spec.disks.push(Disk {
            path: run.join("disk,overlay.qcow2"),
            format: DiskFormat::Qcow2,
            bus: DiskBus::Ide,
            read_only: false,
        });
        spec.floppy = Some(img.join("media/floppy.img"));
        spec.cdroms.push("/isos/Win11_24H2.iso".into());
        spec.cdroms.push(img.join("media/cygwin.iso"));
        spec.nics.push(Nic {
            model: NicModel::E1000,
            mac: "52:54:00:12:01:01".into(),
            switch: run.join("switch"),
        });
        spec.vga = true;
        spec.serial_log = Some(run.join("guest.serial.log"));
        spec.incoming_defer = true;
        spec
    }

    #[test]
    fn controller_argv() {
        let argv = strings(controller().command_line(Path::new("/usr/bin/qemu-system-x86_64")));
        let r = "/run/user/1000/cygvm/img-42";
        let expected = [
            "/usr/bin/qemu-system-x86_64",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-name",
            "controller,process=cygvm-controller",
            "-machine",
            "type=q35,accel=tcg",
            "-cpu",
            "max",
            "-m",
            "256M",
            "-smp",
            "1",
            "-kernel",
            "/boot/vmlinuz-6.1.0-56-amd64",
            "-initrd",
            "/home/u/.cache/cygvm/controller-abc.img",
            "-append",
            "console=ttyS0 quiet",
            "-netdev",
            &format!("vde,id=net0,sock={r}/switch"),
            "-device",
            "virtio-net-pci,netdev=net0,mac=52:54:00:12:01:02,id=net0-dev",
            "-device",
            "virtio-serial-pci,id=vserial0",
            "-chardev",
            &format!("socket,id=vport0,path={r}/agent.sock,server=on,wait=off"),
            "-device",
            "virtserialport,bus=vserial0.0,chardev=vport0,name=cygvm.agent,id=vport0-dev",
            "-fsdev",
            "local,id=fs-inputs,path=/home/u/pkg,security_model=none,readonly=on",
            "-device",
            "virtio-9p-pci,fsdev=fs-inputs,mount_tag=inputs,id=fs-inputs-dev",
            "-fsdev",
            &format!("local,id=fs-outputs,path={r}/out,security_model=none,readonly=off"),
            "-device",
            "virtio-9p-pci,fsdev=fs-outputs,mount_tag=outputs,id=fs-outputs-dev",
            "-chardev",
            &format!("socket,id=qmp,path={r}/controller.qmp,server=on,wait=off"),
            "-mon",
            "chardev=qmp,mode=control",
            "-chardev",
            &format!("file,id=serial0,path={r}/controller.serial.log"),
            "-serial",
            "chardev:serial0",
            "-no-reboot",
        ];
        assert_eq!(argv, expected);
    }

    #[test]
    fn windows_argv() {
        let argv = strings(windows().argv());
        let r = "/tmp/cygvm-1000/img-7";
        let g = "/srv/images/win11/gen-0001";
        let expected = [
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-name",
            "guest,process=cygvm-guest",
            "-machine",
            "type=q35,accel=kvm",
            "-cpu",
            "host",
            "-m",
            "4096M",
            "-smp",
            "2",
            "-drive",
            "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
            "-drive",
            &format!("if=pflash,format=raw,unit=1,file={g}/OVMF_VARS.fd"),
            // The comma in the overlay's name is doubled, as QEMU's option syntax wants.
            "-blockdev",
            &format!("driver=file,node-name=disk0-file,filename={r}/disk,,overlay.qcow2"),
            "-blockdev",
            "driver=qcow2,node-name=disk0,file=disk0-file",
            "-device",
            "ide-hd,drive=disk0,id=disk0-dev,bus=ide.0",
            "-blockdev",
            "driver=file,node-name=cdrom0-file,filename=/isos/Win11_24H2.iso,read-only=on",
            "-blockdev",
            "driver=raw,node-name=cdrom0,file=cdrom0-file,read-only=on",
            "-device",
            "ide-cd,drive=cdrom0,id=cdrom0-dev,bus=ide.1",
            "-blockdev",
            &format!(
                "driver=file,node-name=cdrom1-file,filename={g}/media/cygwin.iso,read-only=on"
            ),
            "-blockdev",
            "driver=raw,node-name=cdrom1,file=cdrom1-file,read-only=on",
            "-device",
            "ide-cd,drive=cdrom1,id=cdrom1-dev,bus=ide.2",
            "-blockdev",
            &format!(
                "driver=file,node-name=floppy0-file,filename={g}/media/floppy.img,read-only=on"
            ),
            "-blockdev",
            "driver=raw,node-name=floppy0,file=floppy0-file,read-only=on",
            "-device",
            "isa-fdc,id=fdc0",
            "-device",
            "floppy,bus=fdc0.0,drive=floppy0,id=floppy0-dev",
            "-netdev",
            &format!("vde,id=net0,sock={r}/switch"),
            "-device",
            "e1000,netdev=net0,mac=52:54:00:12:01:01,id=net0-dev",
            "-device",
            "VGA,id=vga0",
            "-chardev",
            &format!("socket,id=qmp,path={r}/guest.qmp,server=on,wait=off"),
            "-mon",
            "chardev=qmp,mode=control",
            "-chardev",
            &format!("file,id=serial0,path={r}/guest.serial.log"),
            "-serial",
            "chardev:serial0",
            "-no-reboot",
            "-incoming",
            "defer",
        ];
        assert_eq!(argv, expected);
    }

    #[test]
    fn device_argv_has_no_paths_and_ignores_run_options() {
        let a = windows();
        let dev = a.device_argv();
        assert!(dev.iter().all(|s| !s.contains('/')), "{dev:?}");
        assert!(dev.contains(&"driver=file,node-name=disk0-file,filename=<disk0>".to_string()));
        assert!(dev.contains(&"if=pflash,format=raw,unit=1,file=<ovmf-vars>".to_string()));
        assert!(!dev.iter().any(|s| s == "-incoming" || s == "-name"));

        // Another run of the same image: other run dir, other overlay, not a revive.
        let mut b = windows();
        b.name = "guest-2".into();
        b.qmp_socket = "/elsewhere/q.sock".into();
        b.disks[0].path = "/elsewhere/overlay.qcow2".into();
        b.nics[0].switch = "/elsewhere/switch".into();
        b.serial_log = Some("/elsewhere/serial.log".into());
        b.incoming_defer = false;
        assert_eq!(dev, b.device_argv());

        // A different device set is visible.
        let mut c = windows();
        c.nics[0].model = NicModel::VirtioNet;
        assert_ne!(dev, c.device_argv());
        let mut d = windows();
        d.memory_mib = 2048;
        assert_ne!(dev, d.device_argv());
    }

    #[test]
    fn pc_machine_uses_piix_ide_and_builtin_floppy() {
        let mut spec = VmSpec::new("xp", Machine::Pc, Accel::Tcg, Path::new("/r/q"));
        for i in 0..2 {
            spec.disks.push(Disk {
                path: format!("/d{i}.qcow2").into(),
                format: DiskFormat::Qcow2,
                bus: DiskBus::Ide,
                read_only: false,
            });
        }
        spec.cdroms.push("/x.iso".into());
        spec.floppy = Some("/f.img".into());
        let argv = strings(spec.argv());
        for want in [
            "ide-hd,drive=disk0,id=disk0-dev,bus=ide.0,unit=0",
            "ide-hd,drive=disk1,id=disk1-dev,bus=ide.0,unit=1",
            "ide-cd,drive=cdrom0,id=cdrom0-dev,bus=ide.1,unit=0",
            "floppy,drive=floppy0,id=floppy0-dev",
        ] {
            assert!(argv.iter().any(|a| a == want), "missing {want} in {argv:?}");
        }
        assert!(!argv.iter().any(|a| a.contains("isa-fdc")));
    }

    #[test]
    fn boot_order_names_the_windows_cd_then_the_disk_and_nothing_else() {
        let mut spec = windows();
        spec.boot_order = vec![BootDevice::Cdrom(0), BootDevice::Disk(0)];
        let argv = strings(spec.argv());
        let at = |needle: &str| {
            argv.iter()
                .find(|a| a.contains(needle))
                .unwrap_or_else(|| panic!("no {needle} in {argv:?}"))
                .clone()
        };
        assert!(
            at("ide-cd,drive=cdrom0").ends_with(",bootindex=0"),
            "{argv:?}"
        );
        assert!(
            at("ide-hd,drive=disk0").ends_with(",bootindex=1"),
            "{argv:?}"
        );
        // The Cygwin ISO and the answer floppy are never booted.
        assert!(!at("ide-cd,drive=cdrom1").contains("bootindex"));
        assert!(!at("floppy,").contains("bootindex"));
        let boot = argv.iter().position(|a| a == "-boot").expect("-boot");
        assert_eq!(argv[boot + 1], "strict=on");
        // Without a boot order, the firmware's own order applies.
        assert!(!strings(windows().argv()).iter().any(|a| a == "-boot"));
    }
}
