//! The answer-file floppy, read back by independent tools: mtools (`mdir`,
//! `mtype`) and dosfstools (`fsck.fat -n`).

use std::path::Path;
use std::process::{Command, Output};

use cygvm::media::floppy::{FLOPPY_BYTES, FloppyError, write_floppy};

/// Runs an external tool; a missing tool fails the test with the package to install.
fn run(tool: &str, package: &str, args: &[&str]) -> Output {
    match Command::new(tool).args(args).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!(
                "`{tool}` is not installed; install the Debian package `{package}` (scripts/install-deps)"
            )
        }
        Err(e) => panic!("running {tool}: {e}"),
    }
}

fn run_ok(tool: &str, package: &str, args: &[&str]) -> String {
    let out = run(tool, package, args);
    assert!(
        out.status.success(),
        "{tool} {args:?} failed with {}:\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mtype(img: &Path, name: &str) -> Vec<u8> {
    let out = run(
        "mtype",
        "mtools",
        &["-i", img.to_str().unwrap(), &format!("::{name}")],
    );
    assert!(
        out.status.success(),
        "mtype {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

const UNATTEND: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<unattend xmlns="urn:schemas-microsoft-com:unattend">
  <settings pass="windowsPE">
    <component name="Microsoft-Windows-Setup" processorArchitecture="amd64">
      <UserData><AcceptEula>true</AcceptEula></UserData>
    </component>
  </settings>
</unattend>
"#;

#[test]
fn floppy_reads_back_with_mtools_and_passes_fsck() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("floppy.img");
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    write_floppy(
        &[
            ("autounattend.xml", UNATTEND.as_bytes()),
            ("winnt.sif", b"[Data]\r\nAutoPartition=1\r\n"),
            ("SETUP.CMD", b"@echo off\r\n"),
            ("payload-with-a-rather-long-name.bin", &big),
        ],
        &img,
    )
    .unwrap();

    assert_eq!(std::fs::metadata(&img).unwrap().len(), FLOPPY_BYTES as u64);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&img).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
    }

    let listing = run_ok("mdir", "mtools", &["-i", img.to_str().unwrap(), "::"]);
    assert!(
        listing.contains("CYGVM"),
        "volume label missing:\n{listing}"
    );
    for name in [
        "autounattend.xml",
        "winnt.sif",
        "SETUP",
        "payload-with-a-rather-long-name.bin",
    ] {
        assert!(
            listing.contains(name),
            "{name} missing from mdir:\n{listing}"
        );
    }

    assert_eq!(mtype(&img, "autounattend.xml"), UNATTEND.as_bytes());
    assert_eq!(mtype(&img, "winnt.sif"), b"[Data]\r\nAutoPartition=1\r\n");
    assert_eq!(mtype(&img, "payload-with-a-rather-long-name.bin"), big);

    let fsck = run_ok("fsck.fat", "dosfstools", &["-n", img.to_str().unwrap()]);
    assert!(!fsck.contains("differences between boot sector"), "{fsck}");
}

#[test]
fn floppy_is_byte_identical_across_builds() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.img");
    let b = dir.path().join("b.img");
    let files: &[(&str, &[u8])] = &[("autounattend.xml", UNATTEND.as_bytes()), ("x", b"1")];
    write_floppy(files, &a).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    write_floppy(files, &b).unwrap();
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
}

#[test]
fn empty_floppy_and_empty_file_are_valid() {
    let dir = tempfile::tempdir().unwrap();
    let none = dir.path().join("none.img");
    write_floppy(&[], &none).unwrap();
    run_ok("fsck.fat", "dosfstools", &["-n", none.to_str().unwrap()]);

    let empty = dir.path().join("empty.img");
    write_floppy(&[("empty.txt", b"")], &empty).unwrap();
    run_ok("fsck.fat", "dosfstools", &["-n", empty.to_str().unwrap()]);
    assert_eq!(mtype(&empty, "empty.txt"), b"");
}

#[test]
fn too_big_payload_names_sizes_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("floppy.img");
    let big = vec![0x5au8; 1_000_000];
    let err = write_floppy(&[("a.bin", &big), ("b.bin", &big)], &img).unwrap_err();
    assert!(matches!(err, FloppyError::TooBig { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("2000000 bytes"), "{msg}");
    assert!(msg.contains("1457664 bytes"), "{msg}");
    assert!(!img.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn largest_payload_that_fits_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("full.img");
    let full = vec![0xa5u8; 1_457_664];
    write_floppy(&[("FULL.BIN", &full)], &img).unwrap();
    run_ok("fsck.fat", "dosfstools", &["-n", img.to_str().unwrap()]);
    assert_eq!(mtype(&img, "FULL.BIN"), full);
}

#[test]
fn colliding_and_invalid_names_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("floppy.img");

    let err = write_floppy(&[("winnt.sif", b"a"), ("WINNT.SIF", b"b")], &img).unwrap_err();
    assert!(matches!(err, FloppyError::DuplicateName { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("winnt.sif") && msg.contains("WINNT.SIF"),
        "{msg}"
    );

    for bad in ["dir/file.txt", "what?.txt", "", "trailing.", "a\"b"] {
        let err = write_floppy(&[(bad, b"x")], &img).unwrap_err();
        assert!(
            matches!(err, FloppyError::InvalidName { .. }),
            "{bad}: {err:?}"
        );
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }

    let names: Vec<String> = (0..80)
        .map(|i| format!("a-long-file-name-number-{i:03}.txt"))
        .collect();
    let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
    let err = write_floppy(&files, &img).unwrap_err();
    assert!(matches!(err, FloppyError::TooManyEntries { .. }), "{err:?}");
    assert!(err.to_string().contains("224"), "{err}");

    assert!(!img.exists());
}
