//! Finding the host programs and files cygvm runs: QEMU, vde_switch, smbd,
//! busybox and a kernel for the controller VM, each with the Debian package
//! that provides it.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A program cygvm needs, and where it comes from.
#[derive(Debug, Clone, Copy)]
pub struct HostProgram {
    pub name: &'static str,
    pub package: &'static str,
}

pub const QEMU_SYSTEM: HostProgram = HostProgram {
    name: "qemu-system-x86_64",
    package: "qemu-system-x86 (from bookworm-backports on Debian 12)",
};
pub const QEMU_IMG: HostProgram = HostProgram {
    name: "qemu-img",
    package: "qemu-utils (from bookworm-backports on Debian 12)",
};
pub const VDE_SWITCH: HostProgram = HostProgram {
    name: "vde_switch",
    package: "vde2",
};
pub const SMBD: HostProgram = HostProgram {
    name: "smbd",
    package: "samba",
};
pub const BUSYBOX: HostProgram = HostProgram {
    name: "busybox",
    package: "busybox-static",
};

/// Directories searched after $PATH: daemons live in sbin, which an
/// unprivileged user's PATH often lacks.
const EXTRA_DIRS: [&str; 4] = ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin"];

impl HostProgram {
    pub fn find(&self) -> Option<PathBuf> {
        find_program(self.name)
    }

    /// The program's path, or an error naming the Debian package to install.
    pub fn require(&self) -> anyhow::Result<PathBuf> {
        self.find().ok_or_else(|| {
            anyhow::anyhow!(
                "{} is not installed; install the Debian package {} (or run bash scripts/install-deps), then check with `cygvm doctor`",
                self.name,
                self.package
            )
        })
    }
}

pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// First line of `program args...` (stdout, else stderr).
pub fn first_output_line<I, S>(program: &Path, args: I) -> Option<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = Command::new(program).args(args).output().ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
}

/// A dotted version found in a `--version` line, e.g. 10.0.2 from
/// "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2)".
pub fn parse_version(line: &str) -> Option<Vec<u32>> {
    line.split(|c: char| c.is_whitespace() || c == ',')
        .map(|w| w.trim_start_matches(['v', 'V']))
        .find(|w| w.contains('.') && w.starts_with(|c: char| c.is_ascii_digit()))
        .map(|w| {
            w.split(['.', '-', '+', '~'])
                .map_while(|p| p.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .filter(|v| !v.is_empty())
}

/// Whether an ELF file is statically linked (has no PT_INTERP header).
pub fn is_static_elf(path: &Path) -> std::io::Result<bool> {
    let data = std::fs::read(path)?;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not a 64-bit ELF file");
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 || data[5] != 1 {
        return Err(bad());
    }
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(data[32..40].try_into().map_err(|_| bad())?) as usize;
    let phentsize = u16_at(54);
    let phnum = u16_at(56);
    for i in 0..phnum {
        let off = phoff + i * phentsize;
        let Some(header) = data.get(off..off + 4) else {
            return Err(bad());
        };
        const PT_INTERP: u32 = 3;
        if u32::from_le_bytes(header.try_into().map_err(|_| bad())?) == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A kernel for the controller VM, with its modules directory.
#[derive(Debug, Clone)]
pub struct ControllerKernel {
    pub image: PathBuf,
    pub release: String,
    pub modules: PathBuf,
}

pub const KERNEL_PACKAGE: &str = "linux-image-amd64";

/// The newest /boot/vmlinuz-* whose modules directory exists.
pub fn find_kernel(boot: &Path, modules_root: &Path) -> Result<ControllerKernel, String> {
    let entries =
        std::fs::read_dir(boot).map_err(|e| format!("cannot read {}: {e}", boot.display()))?;
    let mut kernels: Vec<(Vec<u32>, String)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let release = name.strip_prefix("vmlinuz-")?.to_string();
            Some((version_key(&release), release))
        })
        .collect();
    if kernels.is_empty() {
        return Err(format!("no vmlinuz-* in {}", boot.display()));
    }
    kernels.sort();
    let (_, release) = kernels.pop().unwrap_or_default();
    let modules = modules_root.join(&release);
    if !modules.join("modules.dep").is_file() {
        return Err(format!(
            "kernel {release} has no modules.dep in {}",
            modules.display()
        ));
    }
    Ok(ControllerKernel {
        image: boot.join(format!("vmlinuz-{release}")),
        release,
        modules,
    })
}

fn version_key(release: &str) -> Vec<u32> {
    release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Free bytes on the filesystem holding `path` (or its nearest existing
/// ancestor, for an image directory not made yet).
pub fn free_bytes(path: &Path) -> std::io::Result<(PathBuf, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let absolute = std::path::absolute(path)?;
    let existing = absolute
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
        .to_path_buf();
    let c = std::ffi::CString::new(existing.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs fills the struct on success; we read it only then.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((existing, st.f_bavail as u64 * st.f_frsize as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_real_version_lines() {
        assert_eq!(
            parse_version("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)"),
            Some(vec![10, 0, 2])
        );
        assert_eq!(
            parse_version("qemu-img version 7.2.15 (Debian 1:7.2+dfsg-7+deb12u13)"),
            Some(vec![7, 2, 15])
        );
        assert_eq!(
            parse_version("Version 4.17.12-Debian"),
            Some(vec![4, 17, 12])
        );
        assert_eq!(parse_version("no digits here"), None);
    }

    #[test]
    fn newest_kernel_with_modules_wins() {
        let dir = tempfile::tempdir().unwrap();
        let boot = dir.path().join("boot");
        let mods = dir.path().join("modules");
        std::fs::create_dir_all(&boot).unwrap();
        for rel in ["6.1.0-9-amd64", "6.1.0-28-amd64", "6.12.0-1-amd64"] {
            std::fs::write(boot.join(format!("vmlinuz-{rel}")), b"k").unwrap();
        }
        for rel in ["6.1.0-9-amd64", "6.1.0-28-amd64"] {
            std::fs::create_dir_all(mods.join(rel)).unwrap();
            std::fs::write(mods.join(rel).join("modules.dep"), b"").unwrap();
        }
        // The newest has no modules: it is reported, not silently skipped.
        let err = find_kernel(&boot, &mods).unwrap_err();
        assert!(err.contains("6.12.0-1-amd64"), "{err}");
        std::fs::remove_file(boot.join("vmlinuz-6.12.0-1-amd64")).unwrap();
        let k = find_kernel(&boot, &mods).unwrap();
        assert_eq!(k.release, "6.1.0-28-amd64");
    }

    #[test]
    fn dynamic_binary_is_not_static() {
        // /bin/sh is dynamically linked on Debian.
        if let Ok(is_static) = is_static_elf(Path::new("/bin/sh")) {
            assert!(!is_static);
        }
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x");
        std::fs::write(&f, b"#!/bin/sh\n").unwrap();
        assert!(is_static_elf(&f).is_err());
    }
}
