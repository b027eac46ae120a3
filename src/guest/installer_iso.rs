//! The linux-standin's installer ISO: what the Windows ISO is to a Windows
//! install. The firmware boots it from CD (El Torito, BIOS and UEFI) in the
//! boot order cygvm gives Windows, and its boot loader behaves like
//! Microsoft's CD boot sectors:
//!
//! - UEFI (`efisys.bin`): always "Press any key to boot from CD or DVD",
//!   and without a key it hands back to the firmware, which tries the next
//!   boot device (the disk).
//! - BIOS (`bootfix.bin`): the same prompt only when the disk already holds
//!   a system; on a blank disk it boots the installer at once.
//!
//! It carries `sources/install.wim` with the image names of the Windows
//! release being stood in for, the stand-in kernel and initrd, and the boot
//! loader the stand-in's "Setup" installs on the disk (GRUB's BIOS boot
//! sector and core image, and its EFI image at the removable-media path).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail};

use crate::config::WindowsVersion;
use crate::fsutil::AtomicFile;
use crate::media::wim::{WimImage, write_wim};
use crate::vm::host_tools::HostProgram;

pub const GRUB_MKRESCUE: HostProgram = HostProgram {
    name: "grub-mkrescue",
    package: "grub-common",
};
pub const GRUB_MKIMAGE: HostProgram = HostProgram {
    name: "grub-mkimage",
    package: "grub-common",
};
/// GRUB's module directories: (directory, Debian package).
pub const GRUB_PLATFORMS: [(&str, &str); 2] = [
    ("/usr/lib/grub/i386-pc", "grub-pc-bin"),
    ("/usr/lib/grub/x86_64-efi", "grub-efi-amd64-bin"),
];

/// The key cygvm presses at the CD prompt (QMP qcode), and the keys the
/// stand-in's prompt takes: like Microsoft's, any ordinary key boots.
pub const BOOT_KEY: &str = "spc";
const PROMPT_SECONDS: u32 = 5;
/// The file on the disk's boot partition by which the loaders find it.
const BOOT_MARKER: &str = "/cygvm-standin.boot";

/// Everything the installer ISO is made of.
#[derive(Debug, Clone)]
pub struct InstallerParts<'a> {
    /// The kernel as a bootable bzImage (GRUB's `linux` loads it).
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub version: WindowsVersion,
    /// `guest.kernel_args`, for the kernel the disk boots.
    pub kernel_args: &'a [String],
}

/// The editions of Microsoft's consumer ISOs of Windows 10 and 11, in
/// install.wim's order: (name suffix, EditionID).
const CONSUMER_EDITIONS: &[(&str, &str)] = &[
    ("Home", "Core"),
    ("Home N", "CoreN"),
    ("Home Single Language", "CoreSingleLanguage"),
    ("Education", "Education"),
    ("Education N", "EducationN"),
    ("Pro", "Professional"),
    ("Pro N", "ProfessionalN"),
];

/// The images a Windows release's install media list in
/// `sources/install.wim`, index 1 first, named as Microsoft names them
/// (`IMAGE/NAME`, `WINDOWS/EDITIONID`, `DISPLAYNAME`): consumer ISOs for
/// the clients, evaluation ISOs for the servers. None for XP and 2003.
pub fn standin_editions(version: WindowsVersion) -> Vec<WimImage> {
    let image = |name: String, edition: &str, display: String| WimImage {
        index: 0,
        name,
        edition_id: Some(edition.to_string()),
        installation_type: None,
        display_name: Some(display),
    };
    let client = |n: &str, eds: &[(&str, &str)]| -> Vec<WimImage> {
        eds.iter()
            .map(|(e, id)| {
                let name = format!("Windows {n} {e}").trim_end().to_string();
                image(name.clone(), id, name)
            })
            .collect()
    };
    let server = |n: &str| -> Vec<WimImage> {
        [
            (
                "SERVERSTANDARDCORE",
                "ServerStandardEval",
                "Standard Evaluation",
            ),
            (
                "SERVERSTANDARD",
                "ServerStandardEval",
                "Standard Evaluation (Desktop Experience)",
            ),
            (
                "SERVERDATACENTERCORE",
                "ServerDatacenterEval",
                "Datacenter Evaluation",
            ),
            (
                "SERVERDATACENTER",
                "ServerDatacenterEval",
                "Datacenter Evaluation (Desktop Experience)",
            ),
        ]
        .iter()
        .map(|(name, id, display)| {
            image(
                format!("Windows Server {n} {name}"),
                id,
                format!("Windows Server {n} {display}"),
            )
        })
        .collect()
    };
    let mut images = match version {
        WindowsVersion::Xp | WindowsVersion::Server2003 => Vec::new(),
        WindowsVersion::Win7 => client(
            "7",
            &[
                ("STARTER", "Starter"),
                ("HOMEBASIC", "HomeBasic"),
                ("HOMEPREMIUM", "HomePremium"),
                ("PROFESSIONAL", "Professional"),
                ("ULTIMATE", "Ultimate"),
            ],
        ),
        WindowsVersion::Win81 => client("8.1", &[("", "Core"), ("Pro", "Professional")]),
        WindowsVersion::Win10 => client("10", CONSUMER_EDITIONS),
        WindowsVersion::Win11 => client("11", CONSUMER_EDITIONS),
        WindowsVersion::Server2012R2 => server("2012 R2"),
        WindowsVersion::Server2016 => server("2016"),
        WindowsVersion::Server2019 => server("2019"),
        WindowsVersion::Server2022 => server("2022"),
        WindowsVersion::Server2025 => server("2025"),
    };
    for (image, index) in images.iter_mut().zip(1..) {
        image.index = index;
    }
    images
}

/// The CD's GRUB menu, standing in for Microsoft's boot sectors (see the
/// module comment).
pub fn cd_grub_cfg() -> String {
    let mut c = String::new();
    let boot = "    linux /cygvm-standin/vmlinuz console=ttyS0 quiet cygvm.phase=setup\n    initrd /cygvm-standin/initrd.img\n    boot\n";
    c.push_str(
        "serial --unit=0 --speed=115200\n\
         terminal_input console serial\n\
         terminal_output console serial\n",
    );
    let _ = write!(
        c,
        "if [ \"$grub_platform\" = efi ]; then\n\
         \x20   set prompt=yes\n\
         elif [ -f (hd0,msdos1){BOOT_MARKER} ]; then\n\
         \x20   set prompt=yes\n\
         else\n\
         \x20   set prompt=no\n\
         fi\n\
         if [ \"$prompt\" = no ]; then\n\
         \x20   echo \"cygvm-standin installer: blank disk, starting Setup\"\n\
         {boot}fi\n\
         echo \"Press any key to boot from CD or DVD......\"\n\
         set timeout_style=hidden\n\
         set timeout={PROMPT_SECONDS}\n\
         set default=fallthrough\n"
    );
    // GRUB boots a hidden entry at once when its hotkey is pressed during
    // the countdown: one entry per ordinary key makes "any key".
    let keys: Vec<String> = std::iter::once(" ".to_string())
        .chain(('a'..='z').map(|k| k.to_string()))
        .chain(('0'..='9').map(|k| k.to_string()))
        .collect();
    for key in keys {
        let _ = write!(
            c,
            "menuentry \"Setup\" --hotkey=\"{key}\" {{\n\
             \x20   echo \"cygvm-standin installer: key pressed, starting Setup\"\n\
             {boot}}}\n"
        );
    }
    // Without a key, the next boot device: the disk. Microsoft's loader
    // hands back to the firmware with an error, and the firmware boots the
    // next device in its order; GRUB's `exit` reports success, which sends
    // OVMF to its setup menu instead, so the stand-in loads the disk's
    // loader itself (BIOS: its boot sector, UEFI: its removable-media
    // loader). A blank disk leaves nothing to boot, as with Windows.
    let _ = write!(
        c,
        "menuentry \"No key: next boot device\" --id fallthrough {{\n\
         \x20   echo \"cygvm-standin installer: no key, booting the next device\"\n\
         \x20   if [ \"$grub_platform\" = efi ]; then\n\
         \x20       if search --no-floppy --file --set=disk {BOOT_MARKER}; then\n\
         \x20           chainloader ($disk)/EFI/BOOT/BOOTX64.EFI\n\
         \x20           boot\n\
         \x20       fi\n\
         \x20       exit\n\
         \x20   fi\n\
         \x20   set root=(hd0)\n\
         \x20   chainloader +1\n\
         \x20   boot\n\
         }}\n"
    );
    c
}

/// The embedded configuration of the disk's boot loaders: find the boot
/// partition by its marker and read its grub.cfg.
fn disk_early_cfg() -> String {
    format!(
        "search --no-floppy --file --set=root {BOOT_MARKER}\n\
         set prefix=($root)/boot/grub\n\
         configfile ($root)/boot/grub/grub.cfg\n"
    )
}

const DISK_LOADER_MODULES: &[&str] = &[
    "part_msdos",
    "fat",
    "search",
    "search_fs_file",
    "configfile",
    "normal",
    "linux",
    "echo",
    "serial",
    "terminal",
    "test",
    "sleep",
    "halt",
    "reboot",
];

/// GRUB's image tools, found with both platforms' modules present.
pub struct GrubTools {
    pub mkrescue: PathBuf,
    pub mkimage: PathBuf,
}

/// GRUB's tools, or the Debian packages missing for them: the installer
/// ISO and the disk's boot loaders are made with both platforms' images.
pub fn grub_tools() -> Result<GrubTools, Vec<&'static str>> {
    let mut missing: Vec<&'static str> = Vec::new();
    let mut find = |program: HostProgram| {
        let found = program.find();
        if found.is_none() && !missing.contains(&program.package) {
            missing.push(program.package);
        }
        found
    };
    let (mkrescue, mkimage) = (find(GRUB_MKRESCUE), find(GRUB_MKIMAGE));
    for (dir, package) in GRUB_PLATFORMS {
        if !Path::new(dir).is_dir() {
            missing.push(package);
        }
    }
    match (mkrescue, mkimage) {
        (Some(mkrescue), Some(mkimage)) if missing.is_empty() => {
            Ok(GrubTools { mkrescue, mkimage })
        }
        _ => Err(missing),
    }
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Writes the installer ISO to `out` (temp, fsync, rename).
pub fn build(parts: &InstallerParts, out: &Path) -> Result<()> {
    let grub = grub_tools().map_err(|missing| {
        anyhow!(
            "GRUB is incomplete: install the Debian package(s) {} (or run bash scripts/install-deps); \
             the linux-standin's installer ISO and boot loaders are made with it",
            missing.join(" ")
        )
    })?;
    let parent = out.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let work = tempfile::Builder::new()
        .prefix(".installer-iso-")
        .tempdir_in(parent)?;
    let tree = work.path().join("tree");
    let own = tree.join("cygvm-standin");
    std::fs::create_dir_all(tree.join("boot/grub"))?;
    std::fs::create_dir_all(tree.join("sources"))?;
    std::fs::create_dir_all(&own)?;
    std::fs::write(tree.join("boot/grub/grub.cfg"), cd_grub_cfg())?;
    std::fs::write(
        own.join("installer"),
        "cygvm linux-standin installer (stands in for a Windows installation ISO)\n",
    )?;
    std::fs::copy(parts.kernel, own.join("vmlinuz"))
        .with_context(|| format!("cannot read the kernel {}", parts.kernel.display()))?;
    std::fs::copy(parts.initrd, own.join("initrd.img"))
        .with_context(|| format!("cannot read the initrd {}", parts.initrd.display()))?;
    std::fs::write(own.join("kernel-args"), parts.kernel_args.join(" "))?;
    std::fs::copy(
        Path::new(GRUB_PLATFORMS[0].0).join("boot.img"),
        own.join("boot.img"),
    )?;
    let early = work.path().join("early.cfg");
    std::fs::write(&early, disk_early_cfg())?;
    // The disk's loaders: BIOS core image (with the BIOS disk driver) and
    // EFI application, both with the embedded configuration.
    for (format, extra, name) in [
        ("i386-pc", Some("biosdisk"), "core.img"),
        ("x86_64-efi", None, "bootx64.efi"),
    ] {
        let mut cmd = Command::new(&grub.mkimage);
        cmd.args(["-O", format, "-p", "/boot/grub", "-c"])
            .arg(&early)
            .arg("-o")
            .arg(own.join(name))
            .args(extra)
            .args(DISK_LOADER_MODULES);
        run(&mut cmd, &format!("grub-mkimage ({format} boot loader)"))?;
    }
    if parts.version.uses_winnt_sif() {
        // XP/2003 media: text-mode Setup's I386 folder, no install.wim.
        std::fs::create_dir_all(tree.join("I386"))?;
        std::fs::write(
            tree.join("I386/TXTSETUP.SIF"),
            "[SetupData]\r\nProductType = 0\r\n; cygvm linux-standin installer\r\n",
        )?;
    } else {
        let images = standin_editions(parts.version);
        write_wim(&tree.join("sources/install.wim"), &images)?;
    }
    // grub-mkrescue writes the image under the temporary name it is then
    // synced and renamed from.
    let iso = AtomicFile::create(out)?;
    let mut rescue = Command::new(&grub.mkrescue);
    rescue
        .arg("-o")
        .arg(iso.path())
        .arg(&tree)
        .args(["--", "-volid", "CYGVM_STANDIN"]);
    run(
        &mut rescue,
        "grub-mkrescue (needs xorriso and mtools besides GRUB)",
    )?;
    iso.set_mode(0o644)?;
    iso.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cd_prompt_takes_any_ordinary_key_and_falls_through_without_one() {
        let cfg = cd_grub_cfg();
        assert!(cfg.contains("Press any key to boot from CD or DVD"));
        assert!(
            cfg.contains("--hotkey=\" \""),
            "cygvm's key {BOOT_KEY} must boot"
        );
        assert!(cfg.contains("--hotkey=\"a\""));
        assert!(cfg.contains("set default=fallthrough"));
        assert!(
            cfg.contains("chainloader ($disk)/EFI/BOOT/BOOTX64.EFI"),
            "UEFI: the disk's loader"
        );
        assert!(
            cfg.contains("chainloader +1"),
            "BIOS: the disk's boot sector"
        );
    }

    #[test]
    fn editions_are_named_and_numbered_like_the_real_media() {
        let names =
            |v| -> Vec<String> { standin_editions(v).into_iter().map(|i| i.name).collect() };
        let win11 = standin_editions(WindowsVersion::Win11);
        assert_eq!(
            (win11[0].index, win11[0].name.as_str()),
            (1, "Windows 11 Home")
        );
        let pro = win11.iter().find(|i| i.name == "Windows 11 Pro").unwrap();
        assert_eq!(pro.edition_id.as_deref(), Some("Professional"));
        assert_eq!(names(WindowsVersion::Win81)[0], "Windows 8.1");
        assert_eq!(
            names(WindowsVersion::Server2022)[1],
            "Windows Server 2022 SERVERSTANDARD"
        );
        assert!(names(WindowsVersion::Xp).is_empty());
        // The default edition of every WIM-era version is on its stand-in ISO.
        for v in WindowsVersion::ALL
            .into_iter()
            .filter(|v| !v.uses_winnt_sif())
        {
            let text = format!(
                "[image]\nname = \"x\"\n[guest]\nos = \"linux-standin\"\nversion = \"{}\"\n",
                v.config_name()
            );
            let config =
                crate::config::Config::parse(&text, std::path::Path::new("cygvm.toml")).unwrap();
            match crate::media::unattend::image_selector(&config) {
                crate::media::unattend::ImageSelector::Name(n) => {
                    assert!(names(v).contains(&n), "{v:?}: {n} not in {:?}", names(v))
                }
                crate::media::unattend::ImageSelector::Index(i) => {
                    assert!(i as usize <= names(v).len())
                }
            }
        }
    }
}
