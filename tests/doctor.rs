//! `cygvm doctor` through the binary, on a host prepared by
//! scripts/install-deps (as CI is).

use std::process::Command;

#[test]
fn doctor_reports_every_check_and_passes_on_a_prepared_host() {
    let out = Command::new(env!("CARGO_BIN_EXE_cygvm"))
        .arg("doctor")
        .output()
        .expect("run cygvm doctor");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for what in [
        "qemu-system-x86_64",
        "qemu-img",
        "vde_switch",
        "smbd",
        "busybox (static)",
        "controller kernel",
        "UEFI firmware (OVMF)",
        "accelerator",
        "disk space",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no line for {what} in:\n{stdout}"));
        assert!(
            line.starts_with("OK ") || line.starts_with("WARN "),
            "{what} is not usable (run scripts/install-deps):\n{line}"
        );
    }
    let accel = stdout.lines().find(|l| l.contains("accelerator")).unwrap();
    assert!(
        accel.contains("KVM runs guests") || accel.contains("using TCG"),
        "{accel}"
    );
    assert!(out.status.success(), "doctor failed:\n{stdout}");
}

#[test]
fn doctor_with_a_broken_config_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[image]\nname = \"x\"\nbogus = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cygvm"))
        .args(["doctor", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.toml:3:1"), "{stderr}");
    assert!(stderr.contains("bogus"), "{stderr}");
}
