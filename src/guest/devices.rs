//! The emulated hardware each Windows version gets: devices it has drivers
//! for out of the box, since an unattended install cannot add any.
//!
//! | version | machine | disk | NIC | controller's Samba |
//! |---|---|---|---|---|
//! | XP, 2003 (NT 5.x) | `pc` (i440FX + PIIX) | IDE on PIIX | `rtl8139` | SMB1 (NT1) + NTLMv1 |
//! | 7 … 11, Server 2012 R2 … 2025 | `q35` (ICH9) | `ide-hd` on the ICH9 AHCI controller | `e1000` (82540EM) | SMB 2.1 and newer, NTLMv2 |
//!
//! NT 5.x has no in-box AHCI driver (Microsoft's in-box `msahci` arrived
//! with Vista), so q35's AHCI disk is invisible to XP's text-mode Setup;
//! PIIX IDE is what it knows. Its network drivers cover the Realtek
//! RTL8139 family (`netrtl.inf`) and AMD's PCnet (`netamd.inf`, QEMU's
//! `pcnet`); cygvm takes `rtl8139`, the NIC QEMU users have long paired
//! with XP. Windows 7 and newer carry Microsoft's AHCI driver (`msahci`,
//! `storahci` from 8) and Intel's PRO/1000 driver for the 82540EM that
//! QEMU's `e1000` emulates. Sources are listed in docs/windows.md.

use crate::config::WindowsVersion;
use crate::vm::qemu::{DiskBus, Machine, NicModel};

/// The controller kernel command-line switch that lets XP and 2003 use its
/// Samba: SMB1 (NT1) and NTLMv1, which is all they speak by default.
pub const LEGACY_SMB_SWITCH: &str = "cygvm.legacy_smb=1";

/// Machine, disk bus and NIC for a Windows guest, and whether the
/// controller's Samba must speak SMB1/NTLMv1 to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceSet {
    pub machine: Machine,
    /// `DiskBus::Ide` is `ide-hd` on AHCI with q35 and on PIIX with pc.
    pub disk_bus: DiskBus,
    pub nic: NicModel,
    /// The guest is NT 5.x: Samba must allow SMB1 (NT1) and NTLMv1.
    pub legacy_smb: bool,
}

/// The devices a Windows `version` installs and runs on without drivers.
pub fn device_set(version: WindowsVersion) -> DeviceSet {
    match version {
        WindowsVersion::Xp | WindowsVersion::Server2003 => DeviceSet {
            machine: Machine::Pc,
            disk_bus: DiskBus::Ide,
            nic: NicModel::Rtl8139,
            legacy_smb: true,
        },
        WindowsVersion::Win7
        | WindowsVersion::Win81
        | WindowsVersion::Server2012R2
        | WindowsVersion::Win10
        | WindowsVersion::Win11
        | WindowsVersion::Server2016
        | WindowsVersion::Server2019
        | WindowsVersion::Server2022
        | WindowsVersion::Server2025 => DeviceSet {
            machine: Machine::Q35,
            disk_bus: DiskBus::Ide,
            nic: NicModel::E1000,
            legacy_smb: false,
        },
    }
}

/// What the controller's kernel command line needs for this guest: the
/// legacy Samba switch for NT 5.x, nothing otherwise. Appended with a
/// leading space when not empty.
pub fn controller_cmdline_extra(set: &DeviceSet) -> &'static str {
    if set.legacy_smb {
        LEGACY_SMB_SWITCH
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;

    use super::*;
    use crate::vm::accel::Accel;
    use crate::vm::qemu::{Nic, VmSpec};

    #[test]
    fn nt5_gets_pc_ide_rtl8139_and_legacy_smb() {
        for v in [WindowsVersion::Xp, WindowsVersion::Server2003] {
            let set = device_set(v);
            assert_eq!(
                set,
                DeviceSet {
                    machine: Machine::Pc,
                    disk_bus: DiskBus::Ide,
                    nic: NicModel::Rtl8139,
                    legacy_smb: true,
                },
                "{v}"
            );
            assert_eq!(controller_cmdline_extra(&set), "cygvm.legacy_smb=1");
        }
    }

    #[test]
    fn windows_7_and_newer_get_q35_ahci_e1000() {
        for v in WindowsVersion::ALL
            .into_iter()
            .filter(|v| !v.uses_winnt_sif())
        {
            let set = device_set(v);
            assert_eq!(set.machine, Machine::Q35, "{v}");
            assert_eq!(set.disk_bus, DiskBus::Ide, "{v}");
            assert_eq!(set.nic, NicModel::E1000, "{v}");
            assert!(!set.legacy_smb, "{v}");
            assert_eq!(controller_cmdline_extra(&set), "");
        }
    }

    #[test]
    fn the_xp_nic_reaches_qemu_as_rtl8139() {
        let set = device_set(WindowsVersion::Xp);
        let mut spec = VmSpec::new("xp", set.machine, Accel::Tcg, Path::new("/r/q"));
        spec.nics.push(Nic {
            model: set.nic,
            mac: "52:54:00:12:01:01".into(),
            switch: "/r/switch".into(),
        });
        let argv: Vec<String> = spec
            .argv()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(argv.iter().any(|a| a.starts_with("rtl8139,")), "{argv:?}");
        assert!(argv.iter().any(|a| a == "type=pc,accel=tcg"), "{argv:?}");
    }

    /// Renders the controller's smb.conf the way its init does, with or
    /// without the legacy switch, and reads the effective settings back
    /// with Samba's testparm.
    fn rendered(cmdline: &str) -> (String, String) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let init = std::fs::read_to_string(root.join("controller-initrd/init")).unwrap();
        let start = init
            .find("render_smb_conf() {")
            .expect("render_smb_conf in controller-initrd/init");
        let end = start + init[start..].find("\n}\n").unwrap() + 3;
        let parse = init
            .find("parse_cmdline() {")
            .expect("parse_cmdline in controller-initrd/init");
        let parse_end = parse + init[parse..].find("\n}\n").unwrap() + 3;
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("smb.conf");
        let script = format!(
            "set -e\nSMB_USER=cygvm\nLEGACY_SMB=0\n{}\n{}\nparse_cmdline '{cmdline}'\nrender_smb_conf '{}' '{}'\n",
            &init[parse..parse_end],
            &init[start..end],
            root.join("controller-initrd/smb.conf.in").display(),
            conf.display()
        );
        let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&conf).unwrap();
        assert!(!text.contains('@'), "every placeholder replaced: {text}");
        let value = |name: &str| -> String {
            match Command::new("testparm")
                .args(["-s", "--parameter-name", name])
                .arg(&conf)
                .output()
            {
                Ok(out) if out.status.success() => {
                    String::from_utf8_lossy(&out.stdout).trim().to_string()
                }
                // Without Samba's tools, read the line itself.
                _ => text
                    .lines()
                    .find_map(|l| l.trim().strip_prefix(&format!("{name} = ")))
                    .unwrap_or_default()
                    .to_string(),
            }
        };
        (value("server min protocol"), value("ntlm auth"))
    }

    #[test]
    fn the_controller_speaks_smb1_and_ntlmv1_only_when_told() {
        let (protocol, ntlm) = rendered("console=ttyS0 cygvm.user=cygvm");
        assert!(protocol.starts_with("SMB2"), "{protocol}");
        assert_eq!(ntlm, "ntlmv2-only");
        let set = device_set(WindowsVersion::Xp);
        let (protocol, ntlm) = rendered(&format!(
            "console=ttyS0 cygvm.user=cygvm {}",
            controller_cmdline_extra(&set)
        ));
        assert_eq!(protocol, "NT1");
        assert_eq!(ntlm, "ntlmv1-permitted");
    }
}
