//! `cygvm doctor`: one honest line per check, the Debian package for each
//! missing piece, non-zero exit when something required is missing.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;

use crate::config::Config;
use crate::vm::accel::{self, Accel};
use crate::vm::host_tools::{self, HostProgram};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warn,
    Missing,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Missing => "MISSING",
        })
    }
}

#[derive(Debug, Clone)]
pub struct Check {
    pub status: Status,
    pub what: String,
    pub detail: String,
}

impl Check {
    fn new(status: Status, what: &str, detail: impl Into<String>) -> Self {
        Self {
            status,
            what: what.to_string(),
            detail: detail.into(),
        }
    }
}

/// QEMU 9 brought mapped-ram and the faster local-file migration paths
/// cygvm's snapshots can use.
const QEMU_FAST_SNAPSHOT_MAJOR: u32 = 9;
/// Free space below which an image (40G sparse disk plus snapshots) is at risk.
const LOW_DISK: u64 = 30 << 30;

pub fn run(config_path: Option<&Path>) -> Result<ExitCode> {
    let image_dir = match config_path {
        Some(p) => Config::load(p)?.image_dir(),
        None => PathBuf::from("images"),
    };
    let checks = run_checks(&image_dir);
    for c in &checks {
        println!("{:<8} {:<22} {}", c.status.to_string(), c.what, c.detail);
    }
    let missing = checks
        .iter()
        .filter(|c| c.status == Status::Missing)
        .count();
    if missing > 0 {
        println!(
            "\n{missing} required piece(s) missing: install the packages named above \
             (on Debian/Ubuntu: bash scripts/install-deps)"
        );
        Ok(ExitCode::FAILURE)
    } else {
        Ok(ExitCode::SUCCESS)
    }
}

pub fn run_checks(image_dir: &Path) -> Vec<Check> {
    vec![
        check_qemu(),
        check_versioned(host_tools::QEMU_IMG, &["--version"]),
        check_vde(),
        check_versioned(host_tools::SMBD, &["--version"]),
        check_busybox(),
        check_kernel(Path::new("/boot"), Path::new("/lib/modules")),
        check_ovmf(Path::new(crate::vm::qemu::OVMF_CODE_4M)),
        check_grub(),
        check_accel(),
        check_disk(image_dir),
    ]
}

fn missing(program: HostProgram) -> Check {
    Check::new(
        Status::Missing,
        program.name,
        format!("not found; install package {}", program.package),
    )
}

fn check_versioned(program: HostProgram, args: &[&str]) -> Check {
    let Some(path) = program.find() else {
        return missing(program);
    };
    let version = host_tools::first_output_line(&path, args)
        .and_then(|l| host_tools::parse_version(&l))
        .map(|v| join_version(&v))
        .unwrap_or_else(|| "unknown version".into());
    Check::new(
        Status::Ok,
        program.name,
        format!("{version} ({})", path.display()),
    )
}

fn join_version(v: &[u32]) -> String {
    v.iter().map(u32::to_string).collect::<Vec<_>>().join(".")
}

fn check_qemu() -> Check {
    let program = host_tools::QEMU_SYSTEM;
    let Some(path) = program.find() else {
        return missing(program);
    };
    let Some(version) = host_tools::first_output_line(&path, ["--version"])
        .and_then(|l| host_tools::parse_version(&l))
    else {
        return Check::new(
            Status::Missing,
            program.name,
            format!(
                "{} does not report a version; reinstall {}",
                path.display(),
                program.package
            ),
        );
    };
    let shown = join_version(&version);
    if version[0] >= QEMU_FAST_SNAPSHOT_MAJOR {
        Check::new(
            Status::Ok,
            program.name,
            format!("{shown} ({})", path.display()),
        )
    } else {
        Check::new(
            Status::Warn,
            program.name,
            format!(
                "{shown} ({}): snapshots work, but the fast local-file migration paths \
                 (mapped-ram, multifd) need QEMU >= {QEMU_FAST_SNAPSHOT_MAJOR}; install {}",
                path.display(),
                program.package
            ),
        )
    }
}

fn check_vde() -> Check {
    let program = host_tools::VDE_SWITCH;
    match program.find() {
        Some(path) => Check::new(Status::Ok, program.name, path.display().to_string()),
        None => missing(program),
    }
}

fn check_busybox() -> Check {
    let program = host_tools::BUSYBOX;
    let Some(path) = program.find() else {
        return missing(program);
    };
    match host_tools::is_static_elf(&path) {
        Ok(true) => Check::new(Status::Ok, "busybox (static)", path.display().to_string()),
        Ok(false) => Check::new(
            Status::Missing,
            "busybox (static)",
            format!(
                "{} is dynamically linked; install package {}",
                path.display(),
                program.package
            ),
        ),
        Err(e) => Check::new(
            Status::Missing,
            "busybox (static)",
            format!(
                "cannot read {}: {e}; install package {}",
                path.display(),
                program.package
            ),
        ),
    }
}

fn check_kernel(boot: &Path, modules: &Path) -> Check {
    match host_tools::find_kernel(boot, modules) {
        Ok(k) => Check::new(
            Status::Ok,
            "controller kernel",
            format!("{} (modules in {})", k.image.display(), k.modules.display()),
        ),
        Err(why) => Check::new(
            Status::Missing,
            "controller kernel",
            format!("{why}; install package {}", host_tools::KERNEL_PACKAGE),
        ),
    }
}

/// GRUB's image tools and both platforms' modules: the linux-standin's
/// installer ISO and disk boot loader are made with them.
fn check_grub() -> Check {
    match crate::guest::installer_iso::grub_tools() {
        Ok(_) => Check::new(Status::Ok, "GRUB (stand-in boot)", "BIOS and UEFI images"),
        Err(missing) => Check::new(
            Status::Warn,
            "GRUB (stand-in boot)",
            format!(
                "the linux-standin guest boots through GRUB: install package(s) {}",
                missing.join(" ")
            ),
        ),
    }
}

/// UEFI firmware: needed for guests with firmware = "uefi" (the default
/// from Windows 8.1 on, and for the linux-standin standing in for them).
fn check_ovmf(code: &Path) -> Check {
    if code.is_file() {
        Check::new(
            Status::Ok,
            "UEFI firmware (OVMF)",
            code.display().to_string(),
        )
    } else {
        Check::new(
            Status::Warn,
            "UEFI firmware (OVMF)",
            format!(
                "{} not found; UEFI guests need it: install package {}",
                code.display(),
                crate::vm::qemu::OVMF_PACKAGE
            ),
        )
    }
}

fn check_accel() -> Check {
    match accel::choose() {
        (Accel::Kvm, why) => Check::new(Status::Ok, "accelerator", why),
        (Accel::Tcg, why) => Check::new(
            Status::Warn,
            "accelerator",
            format!("{why}; Windows under TCG is very slow (install: many hours)"),
        ),
    }
}

fn check_disk(image_dir: &Path) -> Check {
    match host_tools::free_bytes(image_dir) {
        Ok((on, free)) => {
            let gib = free as f64 / (1u64 << 30) as f64;
            let detail = format!("{gib:.1} GiB free at {}", on.display());
            if free >= LOW_DISK {
                Check::new(Status::Ok, "disk space", detail)
            } else {
                Check::new(
                    Status::Warn,
                    "disk space",
                    format!("{detail}; a Windows image wants 30 GiB or more"),
                )
            }
        }
        Err(e) => Check::new(
            Status::Warn,
            "disk space",
            format!("cannot measure free space for {}: {e}", image_dir.display()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_kernel_names_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let c = check_kernel(dir.path(), dir.path());
        assert_eq!(c.status, Status::Missing);
        assert!(
            c.detail.contains("install package linux-image-amd64"),
            "{}",
            c.detail
        );
    }

    #[test]
    fn missing_ovmf_is_a_warning_naming_the_package() {
        let c = check_ovmf(Path::new("/nonexistent/OVMF_CODE_4M.fd"));
        assert_eq!(c.status, Status::Warn);
        assert!(c.detail.contains("install package ovmf"), "{}", c.detail);
    }

    #[test]
    fn missing_program_names_the_package() {
        let c = missing(host_tools::VDE_SWITCH);
        assert_eq!(c.status, Status::Missing);
        assert_eq!(c.detail, "not found; install package vde2");
    }
}
