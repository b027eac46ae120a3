//! The whole pipeline through the real components — QEMU (TCG), vde_switch,
//! the controller VM with smbd and the agent, SSH with a pinned host key —
//! on the linux-standin guest, driven through the `cygvm` binary as a user
//! would. Each test runs cygvm with its own XDG_RUNTIME_DIR, so its run
//! directories (and the processes recorded in them) can be checked.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

#[path = "common/workspace.rs"]
mod workspace;

use workspace::{Workspace, text, vm_lock};

/// One installed image shared by the tests that only run commands in it.
fn shared() -> &'static Workspace {
    static WS: OnceLock<Workspace> = OnceLock::new();
    WS.get_or_init(|| Workspace::installed("e2e").removed_at_exit())
}

#[test]
#[ignore = "boots QEMU under TCG; run by .ci/run with --include-ignored"]
fn install_then_run_returns_status_output_and_files() {
    let _vm = vm_lock();
    let ws = shared();
    let generation = ws.image().join("gen-0001");
    assert!(generation.join("disk.qcow2").is_file());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(generation.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["qemu_version"]
            .as_str()
            .unwrap()
            .split('.')
            .count(),
        3
    );
    // Windows 11's device set and firmware: q35 (AHCI, e1000) and OVMF.
    assert!(
        manifest["machine"].as_str().unwrap().starts_with("pc-q35"),
        "{manifest}"
    );
    let argv = manifest["device_argv"].to_string();
    assert!(argv.contains("if=pflash"), "{argv}");
    assert!(argv.contains("e1000,"), "{argv}");
    assert!(argv.contains("ide-hd,drive=disk0"), "{argv}");
    let disk_before = std::fs::read(generation.join("disk.qcow2")).unwrap();

    let input = ws.path().join("in-dir");
    let output = ws.path().join("out-dir");
    std::fs::create_dir(&input).unwrap();
    std::fs::write(input.join("in"), "hello from the host\n").unwrap();
    let out = ws.run(
        &[
            "--cold",
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ],
        &[
            "sh",
            "-c",
            "echo hi > /outputs/x; cat /inputs/in; echo to-stderr >&2; cat ~/provisioned; pwd; exit 3",
        ],
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "stderr:\n{}", text(&out.stderr));
    assert_eq!(stdout, "hello from the host\nprovisioned\n/outputs\n");
    assert!(text(&out.stderr).contains("to-stderr"));
    assert_eq!(std::fs::read_to_string(output.join("x")).unwrap(), "hi\n");
    assert_eq!(
        std::fs::read(generation.join("disk.qcow2")).unwrap(),
        disk_before,
        "a run changed the image's disk"
    );
    assert!(
        ws.run_dirs().is_empty(),
        "run dirs left: {:?}",
        ws.run_dirs()
    );
    assert!(ws.processes().is_empty(), "{:?}", ws.processes());
}

#[test]
#[ignore = "boots QEMU under TCG; run by .ci/run with --include-ignored"]
fn inputs_are_read_only_the_network_is_private_and_samba_wants_a_password() {
    let _vm = vm_lock();
    let ws = shared();
    let input = ws.path().join("ro-in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("keep"), "unchanged").unwrap();
    // The right password, to show SMB1 is refused for what it is.
    std::fs::copy(ws.image().join("secrets/samba_password"), input.join("pw")).unwrap();
    let script = r#"
        if echo x > /inputs/keep 2>/dev/null; then echo inputs-write: allowed; else echo inputs-write: refused; fi
        if touch /inputs/new 2>/dev/null; then echo inputs-create: allowed; else echo inputs-create: refused; fi
        echo "routes: $(ip route | tr '\n' ';')"
        echo "links: $(ip -o link | awk -F': ' '{print $2}' | tr '\n' ' ')"
        if ping -c 1 -W 2 192.168.0.2 >/dev/null 2>&1; then echo controller: reachable; fi
        mkdir -p /mnt/anon
        if mount -t cifs -o vers=3.0,sec=none //192.168.0.2/inputs /mnt/anon 2>/dev/null; then
            echo anonymous-smb: allowed; umount /mnt/anon
        else
            echo anonymous-smb: refused
        fi
        if mount -t cifs -o vers=3.0,username=cygvm,password=wrong //192.168.0.2/inputs /mnt/anon 2>/dev/null; then
            echo wrong-password: allowed; umount /mnt/anon
        else
            echo wrong-password: refused
        fi
        echo "listeners: $(netstat -ltn | awk '/LISTEN/ {print $4}' | sort | tr '\n' ' ')"
        if mount -t cifs -o vers=1.0,username=cygvm,password="$(cat /inputs/pw)" //192.168.0.2/inputs /mnt/anon 2>/dev/null; then
            echo smb1: allowed; umount /mnt/anon
        else
            echo smb1: refused
        fi
    "#;
    let out = ws.run(
        &["--cold", "--input", input.to_str().unwrap()],
        &["sh", "-c", script],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("inputs-write: refused"), "{stdout}");
    assert!(stdout.contains("inputs-create: refused"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(input.join("keep")).unwrap(),
        "unchanged"
    );
    assert!(!input.join("new").exists());
    // Only the private subnet, no default route, one NIC: nothing beyond the switch.
    let routes = stdout.lines().find(|l| l.starts_with("routes:")).unwrap();
    assert!(!routes.contains("default"), "{routes}");
    assert!(routes.contains("192.168.0.0/24"), "{routes}");
    let links = stdout.lines().find(|l| l.starts_with("links:")).unwrap();
    assert_eq!(
        links.split_whitespace().count(),
        3,
        "lo, eth0 only: {links}"
    );
    assert!(stdout.contains("controller: reachable"), "{stdout}");
    assert!(stdout.contains("anonymous-smb: refused"), "{stdout}");
    assert!(stdout.contains("wrong-password: refused"), "{stdout}");
    // Windows 11 speaks SMB2+ and NTLMv2: the controller offers nothing older.
    assert!(stdout.contains("smb1: refused"), "{stdout}");
    // sshd on port 22 is the guest's only listener.
    let listeners = stdout
        .lines()
        .find(|l| l.starts_with("listeners:"))
        .unwrap();
    assert_eq!(listeners.trim_end(), "listeners: 0.0.0.0:22 :::22");
}

#[test]
#[ignore = "boots QEMU under TCG; run by .ci/run with --include-ignored"]
fn two_cold_runs_of_one_image_at_once() {
    let _vm = vm_lock();
    let ws = shared();
    let spawn = |n: u32| {
        let out_dir = ws.path().join(format!("par-{n}"));
        ws.cygvm()
            .args(["run", "--cold", "--image"])
            .arg(ws.image())
            .arg("--output")
            .arg(&out_dir)
            .args(["--", "sh", "-c"])
            .arg(format!(
                "echo run-{n} > /outputs/who; echo run-{n}; exit {n}"
            ))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(1), spawn(2));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_eq!(a.status.code(), Some(1), "{}", text(&a.stderr));
    assert_eq!(b.status.code(), Some(2), "{}", text(&b.stderr));
    assert_eq!(text(&a.stdout), "run-1\n");
    assert_eq!(text(&b.stdout), "run-2\n");
    for n in [1, 2] {
        let who = std::fs::read_to_string(ws.path().join(format!("par-{n}/who"))).unwrap();
        assert_eq!(who, format!("run-{n}\n"));
    }
    assert!(ws.run_dirs().is_empty(), "{:?}", ws.run_dirs());
}

#[test]
#[ignore = "boots QEMU under TCG; run by .ci/run with --include-ignored"]
fn a_guest_with_another_host_key_is_refused() {
    let _vm = vm_lock();
    let ws = Workspace::new("e2e", "");
    let out = ws.install();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The host's pinned key no longer matches what the guest presents.
    let key = ws.image().join("secrets/ssh_host_ed25519_key");
    std::fs::remove_file(&key).unwrap();
    cygvm::secrets::ImageSecrets::load_or_create(&ws.image().join("secrets"), None).unwrap();
    let out = ws.run(&["--cold"], &["true"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("not the pinned"), "{stderr}");
    assert!(ws.processes().is_empty(), "{:?}", ws.processes());
}

#[test]
#[ignore = "boots QEMU under TCG; run by .ci/run with --include-ignored"]
fn a_guest_whose_sshd_never_starts_fails_the_install_in_time() {
    let _vm = vm_lock();
    let ws = Workspace::new(
        "e2e",
        "kernel_args = [\"cygvm.sshd=off\"]\n[timeouts]\nboot = \"25s\"\n",
    );
    let started = Instant::now();
    let out = ws.install();
    let took = started.elapsed();
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("phase boot"), "{stderr}");
    assert!(stderr.contains("25 s deadline"), "{stderr}");
    assert!(
        stderr.contains("sshd not started"),
        "serial tail missing:\n{stderr}"
    );
    assert!(stderr.contains("logs are in"), "{stderr}");
    // The deadline counts from the boot phase; media, the guest's own
    // install and the controller come before it.
    assert!(took < Duration::from_secs(25 + 120), "took {took:?}");
    assert!(
        !ws.image().join("current").exists(),
        "a failed install was published"
    );
    assert!(ws.processes().is_empty(), "{:?}", ws.processes());
    assert!(ws.run_dirs().is_empty(), "{:?}", ws.run_dirs());
}

/// Starts `cygvm` and sends it SIGINT once `ready` says so.
fn interrupt(
    ws: &Workspace,
    mut cmd: Command,
    ready: impl Fn(&Workspace, &Path) -> bool,
) -> Output {
    let log = ws.path().join(format!("stdout-{}", std::process::id()));
    let child = cmd
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    while !ready(ws, &log) {
        assert!(Instant::now() < deadline, "never got ready to interrupt");
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let out = child.wait_with_output().unwrap();
    let stdout = std::fs::read(&log).unwrap_or_default();
    Output { stdout, ..out }
}

#[test]
#[ignore = "boots QEMU under TCG; run by .ci/run with --include-ignored"]
fn ctrl_c_during_boot_and_during_a_command_leaves_nothing() {
    let _vm = vm_lock();
    let ws = shared();
    // During boot: as soon as the guest's QEMU is up.
    let mut cmd = ws.cygvm();
    cmd.args(["run", "--cold", "--image"])
        .arg(ws.image())
        .args(["--", "true"]);
    let out = interrupt(ws, cmd, |ws, _| {
        ws.run_dirs()
            .iter()
            .any(|d| ws.runtime.join("cygvm").join(d).join("guest.qmp").exists())
    });
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("interrupted by SIGINT"),
        "{}",
        text(&out.stderr)
    );
    assert!(ws.processes().is_empty(), "{:?}", ws.processes());
    assert!(ws.run_dirs().is_empty(), "{:?}", ws.run_dirs());

    // During a command: once it has printed its first line.
    let mut cmd = ws.cygvm();
    cmd.args(["run", "--cold", "--image"])
        .arg(ws.image())
        .args(["--", "sh", "-c", "echo started; sleep 600"]);
    let out = interrupt(ws, cmd, |_, log| {
        std::fs::read_to_string(log).is_ok_and(|s| s.contains("started"))
    });
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    assert!(ws.processes().is_empty(), "{:?}", ws.processes());
    assert!(ws.run_dirs().is_empty(), "{:?}", ws.run_dirs());
}

/// A BIOS install goes through SeaBIOS: the installer CD boots Setup at
/// once on the blank disk, Setup restarts the machine, the CD's prompt
/// passes without a key and the disk boots; only the power-off at the end
/// of the first logon counts as installed. The image then revives and
/// runs, and boots cold.
#[test]
#[ignore = "boots QEMU under TCG; run by .ci/run with --include-ignored"]
fn a_bios_install_restarts_once_then_revives_and_boots_cold() {
    let _vm = vm_lock();
    let ws = Workspace::new("bios", "firmware = \"bios\"\n");
    let out = ws.install();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Setup restarted the guest and the install went on; only the power-off
    // ended it. (SeaBIOS resets the machine once more itself on a warm
    // restart, so QEMU counts one or two resets for the one restart.)
    assert!(stderr.contains("the guest restarted (1)"), "{stderr}");
    assert!(
        stderr.contains("powered off after 1 restart(s)")
            || stderr.contains("powered off after 2 restart(s)"),
        "{stderr}"
    );
    let serial = std::fs::read_to_string(ws.generation(1).join("logs/guest-install.serial.log"))
        .unwrap_or_default();
    assert!(serial.contains("blank disk, starting Setup"), "{serial}");
    assert!(
        serial.contains("no key, booting the next device"),
        "{serial}"
    );
    assert!(serial.contains("first logon finished: ok"), "{serial}");
    let manifest = std::fs::read_to_string(ws.generation(1).join("manifest.json")).unwrap();
    assert!(!manifest.contains("pflash"), "{manifest}");

    let revived = ws.run(&[], &["sh", "-c", "cat ~/provisioned; exit 4"]);
    assert_eq!(revived.status.code(), Some(4), "{}", text(&revived.stderr));
    assert_eq!(text(&revived.stdout), "provisioned\n");
    let cold = ws.run(
        &["--cold"],
        &["sh", "-c", "cat /cygdrive/c/cygvm/status.txt"],
    );
    assert!(cold.status.success(), "{}", text(&cold.stderr));
    assert_eq!(text(&cold.stdout).trim(), "ok");
}

/// `guest.version = "xp"`: the stand-in gets what XP gets: the `pc`
/// machine with PIIX IDE, an RTL8139 NIC, BIOS, winnt.sif on the floppy
/// (whose GuiRunOnce calls a script on the floppy), and a controller whose
/// Samba speaks SMB1 with NTLMv1 to it.
#[test]
#[ignore = "boots QEMU under TCG; run by .ci/run with --include-ignored"]
fn an_xp_install_gets_xp_devices_winnt_sif_and_smb1() {
    let _vm = vm_lock();
    let ws = Workspace::new(
        "xp",
        "version = \"xp\"\nproduct_key = \"AAAAA-BBBBB-CCCCC-DDDDD-EEEEE\"\n",
    );
    let out = ws.install();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let serial = std::fs::read_to_string(ws.generation(1).join("logs/guest-install.serial.log"))
        .unwrap_or_default();
    assert!(
        serial.contains("answer file: /mnt/floppy/winnt.sif"),
        "{serial}"
    );
    let manifest = std::fs::read_to_string(ws.generation(1).join("manifest.json")).unwrap();
    assert!(manifest.contains("pc-i440fx"), "{manifest}");
    assert!(manifest.contains("rtl8139,"), "{manifest}");
    let input = ws.path().join("xp-in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::copy(ws.image().join("secrets/samba_password"), input.join("pw")).unwrap();
    let script = r#"
        echo "nic: $(basename "$(readlink /sys/class/net/eth0/device/driver)")"
        for d in ahci ata_piix; do ls /sys/bus/pci/drivers/$d 2>/dev/null | grep -q 0000 && echo "disk controller: $d"; done
        mkdir -p /mnt/x
        if mount -t cifs -o vers=1.0,username=cygvm,password="$(cat /inputs/pw)" //192.168.0.2/inputs /mnt/x; then
            echo smb1: allowed; umount /mnt/x
        else
            echo smb1: refused
        fi
    "#;
    let run = ws.run(&["--input", input.to_str().unwrap()], &["sh", "-c", script]);
    let stdout = text(&run.stdout);
    assert!(run.status.success(), "{stdout}\n{}", text(&run.stderr));
    assert!(stdout.contains("nic: 8139cp"), "{stdout}");
    assert!(stdout.contains("disk controller: ata_piix"), "{stdout}");
    assert!(!stdout.contains("disk controller: ahci"), "{stdout}");
    assert!(stdout.contains("smb1: allowed"), "{stdout}");
}

/// `--json` events on stderr: the command's stdout stays its own, its
/// stderr (even an unfinished last line) and the events share stderr with
/// every event on a line of its own, and the events name the phases in
/// order and end with the command's exit status.
#[test]
#[ignore = "boots QEMU under TCG; run by .ci/run with --include-ignored"]
fn a_run_with_json_reports_its_phases_and_exit_status() {
    let _vm = vm_lock();
    let ws = shared();
    let out = ws.run(
        &["--json"],
        &["sh", "-c", "echo to-stdout; printf unfinished >&2; exit 3"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "to-stdout\n");
    let stderr = text(&out.stderr);
    let (events, other): (Vec<&str>, Vec<&str>) = stderr.lines().partition(|l| l.starts_with('{'));
    // cygvm's warnings (TCG instead of KVM, on some hosts) stay text lines.
    let other: Vec<&str> = other.into_iter().filter(|l| !l.contains("WARN")).collect();
    assert_eq!(other, ["unfinished"], "{stderr}");
    let events: Vec<serde_json::Value> = events
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let seen: Vec<String> = events
        .iter()
        .map(|e| {
            assert_eq!(e["command"], "run", "{e}");
            assert!(e["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{e}");
            assert!(e["elapsed_ms"].is_u64(), "{e}");
            match e["phase"].as_str() {
                Some(phase) => {
                    if e["event"] == "phase_finished" {
                        assert_eq!(e["ok"], true, "{e}");
                        assert!(e["duration_ms"].is_u64(), "{e}");
                    }
                    format!("{} {phase}", e["event"].as_str().unwrap())
                }
                None => e["event"].as_str().unwrap().to_string(),
            }
        })
        .collect();
    assert_eq!(
        seen,
        [
            "started",
            "phase_started prepare",
            "phase_finished prepare",
            "phase_started revive",
            "phase_finished revive",
            "phase_started command",
            "phase_finished command",
            "command_exited",
            "finished",
        ],
        "{stderr}"
    );
    let finished = events.last().unwrap();
    assert_eq!(finished["exit_status"], 3, "{finished}");
    assert!(finished.get("error").is_none(), "{finished}");
    assert_eq!(events[events.len() - 2]["exit_status"], 3);
}
