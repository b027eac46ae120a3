//! Real VM infrastructure: vde_switch, QEMU under TCG booting the host's
//! kernel with a tiny busybox initrd, QMP, teardown on drop and on SIGINT,
//! stale run dir cleanup.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use cygvm::vm::accel::Accel;
use cygvm::vm::host_tools::QEMU_SYSTEM;
use cygvm::vm::qemu::{DirectBoot, Machine, Nic, NicModel, VmSpec};
use cygvm::vm::qmp::QmpError;
use cygvm::vm::rundir::is_zombie;
use cygvm::vm::supervisor::{RunError, Supervisor, SupervisorOptions, Vm};
use cygvm::vm::vde::VdeSwitch;
use tokio::time::Instant;

const GUEST_LINE: &str = "CYGVM-TEST-GUEST-UP";

fn secs(n: u64) -> Instant {
    Instant::now() + Duration::from_secs(n)
}

/// A kernel from /boot: the newest vmlinuz-* there.
fn kernel() -> PathBuf {
    let mut k: Vec<PathBuf> = std::fs::read_dir("/boot")
        .expect("/boot")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .collect();
    k.sort();
    k.pop().expect("a kernel in /boot (linux-image-amd64)")
}

/// A newc cpio with busybox and an /init that prints GUEST_LINE, then
/// powers off — or stays up when the kernel command line says `stay`.
fn initrd(dir: &Path) -> PathBuf {
    let busybox = std::fs::read("/usr/bin/busybox")
        .or_else(|_| std::fs::read("/bin/busybox"))
        .expect("busybox-static");
    let init = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox mount -t proc proc /proc\n\
         /bin/busybox echo {GUEST_LINE}\n\
         if /bin/busybox grep -q stay /proc/cmdline; then exec /bin/busybox sleep 100000; fi\n\
         /bin/busybox poweroff -f\n"
    );
    let mut out = Vec::new();
    let mut ino = 1;
    let mut entry = |name: &str, mode: u32, rdev: (u32, u32), data: &[u8]| {
        let header = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0
        );
        ino += 1;
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out.extend_from_slice(data);
        while out.len() % 4 != 0 {
            out.push(0);
        }
    };
    for d in ["bin", "proc", "dev"] {
        entry(d, 0o040755, (0, 0), b"");
    }
    entry("dev/console", 0o020600, (5, 1), b"");
    entry("bin/busybox", 0o100755, (0, 0), &busybox);
    entry("init", 0o100755, (0, 0), init.as_bytes());
    entry("TRAILER!!!", 0, (0, 0), b"");
    let path = dir.join("initrd.cpio");
    std::fs::write(&path, out).unwrap();
    path
}

fn options(base: &Path) -> SupervisorOptions {
    SupervisorOptions {
        base: base.to_path_buf(),
        keep_failed: false,
        stop_grace: Duration::from_secs(5),
    }
}

fn guest_spec(
    sup: &Supervisor,
    name: &str,
    initrd: &Path,
    stay: bool,
    switch: Option<&Path>,
) -> VmSpec {
    let rd = sup.run_dir();
    let mut spec = VmSpec::new(
        name,
        Machine::Q35,
        Accel::Tcg,
        &rd.join(&format!("{name}.qmp")),
    );
    spec.memory_mib = 192;
    spec.direct_boot = Some(DirectBoot {
        kernel: kernel(),
        initrd: Some(initrd.to_path_buf()),
        append: format!(
            "console=ttyS0 quiet panic=-1{}",
            if stay { " stay" } else { "" }
        ),
    });
    spec.serial_log = Some(rd.join(&format!("{name}.serial.log")));
    if let Some(sw) = switch {
        spec.nics.push(Nic {
            model: NicModel::VirtioNet,
            mac: "52:54:00:12:01:01".into(),
            switch: sw.to_path_buf(),
        });
    }
    spec
}

async fn start_guest(sup: &mut Supervisor, spec: &VmSpec) -> Vm {
    let qemu = QEMU_SYSTEM.find().expect("qemu-system-x86_64");
    sup.spawn_qemu(&qemu, spec, secs(30))
        .await
        .expect("qemu starts")
}

/// Gone means no process, or only an unreaped zombie.
fn wait_gone(pids: &[u32]) {
    let until = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let alive: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|&p| Path::new(&format!("/proc/{p}")).exists() && !is_zombie(p))
            .collect();
        if alive.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < until,
            "processes still running: {alive:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
#[ignore = "needs qemu-system-x86_64 and vde_switch; run by .ci/run (cargo test -- --ignored)"]
async fn guest_boots_prints_and_powers_off() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("run");
    let initrd = initrd(tmp.path());
    let mut sup = Supervisor::start("boot-test", options(&base)).unwrap();
    let run_dir = sup.run_dir().path().to_path_buf();
    let switch = VdeSwitch::start(&mut sup, secs(10)).await.unwrap();
    assert!(switch.dir.join("ctl").exists());

    let spec = guest_spec(&sup, "guest", &initrd, false, Some(&switch.dir));
    let vm = start_guest(&mut sup, &spec).await;
    assert_eq!(vm.qmp.version().qemu.major, 10);
    let status = vm.qmp.query_status().await.unwrap();
    assert!(status.running, "{status:?}");
    assert_eq!(status.status, "running");

    // An unknown command is a typed error with QEMU's class and text.
    match vm.qmp.execute("no-such-command", None).await {
        Err(QmpError::Command { class, desc, .. }) => {
            assert_eq!(class, "CommandNotFound");
            assert!(desc.contains("no-such-command"), "{desc}");
        }
        other => panic!("expected a command error, got {other:?}"),
    }

    let ev = vm.qmp.wait_event("SHUTDOWN", secs(120)).await.unwrap();
    assert_eq!(ev.data["guest"], true, "{ev:?}");
    let st = sup.wait_exit(vm.child, secs(10)).await.unwrap();
    assert!(st.success(), "qemu exited with {st}");
    let serial = std::fs::read_to_string(vm.serial_log.as_ref().unwrap()).unwrap();
    assert!(serial.contains(GUEST_LINE), "serial log:\n{serial}");

    let pids = sup.pids();
    assert!(sup.finish(true).await.is_none());
    wait_gone(&pids);
    assert!(!run_dir.exists(), "run dir left behind");
}

#[tokio::test]
#[ignore = "needs qemu-system-x86_64 and vde_switch; run by .ci/run (cargo test -- --ignored)"]
async fn dropping_the_supervisor_mid_boot_kills_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("run");
    let initrd = initrd(tmp.path());
    let mut sup = Supervisor::start("drop-test", options(&base)).unwrap();
    let run_dir = sup.run_dir().path().to_path_buf();
    let switch = VdeSwitch::start(&mut sup, secs(10)).await.unwrap();
    let spec = guest_spec(&sup, "guest", &initrd, true, Some(&switch.dir));
    let _vm = start_guest(&mut sup, &spec).await;
    let pids = sup.pids();
    assert_eq!(pids.len(), 2);
    drop(sup);
    wait_gone(&pids);
    assert!(!run_dir.exists(), "run dir left behind");
}

#[tokio::test]
#[ignore = "needs qemu-system-x86_64 and vde_switch; run by .ci/run (cargo test -- --ignored)"]
async fn early_qemu_failure_names_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sup = Supervisor::start("fail-test", options(&tmp.path().join("run"))).unwrap();
    let mut spec = guest_spec(&sup, "guest", Path::new("/nonexistent/initrd"), false, None);
    spec.memory_mib = 128;
    let qemu = QEMU_SYSTEM.find().expect("qemu-system-x86_64");
    let err = match sup.spawn_qemu(&qemu, &spec, secs(30)).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("qemu started without its initrd"),
    };
    assert!(err.contains("exited with"), "{err}");
    assert!(err.contains("guest.log"), "{err}");
    assert!(err.contains("/nonexistent/initrd"), "{err}");
    sup.finish(false).await;
}

/// The child half of the SIGINT test: runs when CYGVM_SIGINT_CHILD names a
/// base directory. Starts a switch and a guest inside `Supervisor::run`,
/// prints the pids and waits to be interrupted.
#[tokio::test]
#[ignore = "needs qemu-system-x86_64 and vde_switch; run by .ci/run (cargo test -- --ignored)"]
async fn sigint_child_half() {
    let Some(base) = std::env::var_os("CYGVM_SIGINT_CHILD") else {
        return;
    };
    let base = PathBuf::from(base);
    let initrd = initrd(&base);
    let sup = Supervisor::start("sigint-test", options(&base.join("run"))).unwrap();
    let r: Result<(), RunError<String>> = sup
        .run(async |sup: &mut Supervisor| {
            let switch = VdeSwitch::start(sup, secs(10))
                .await
                .map_err(|e| e.to_string())?;
            let spec = guest_spec(sup, "guest", &initrd, true, Some(&switch.dir));
            start_guest(sup, &spec).await;
            let pids: Vec<String> = sup.pids().iter().map(u32::to_string).collect();
            println!(
                "READY {} {}",
                sup.run_dir().path().display(),
                pids.join(" ")
            );
            std::future::pending::<()>().await;
            Ok(())
        })
        .await;
    match r {
        Err(e @ RunError::Interrupted { .. }) => println!("RESULT {e}"),
        other => println!("RESULT unexpected {other:?}"),
    }
}

/// Starts the child half in a subprocess; returns it with its run dir and
/// child pids, and the rest of its output.
fn start_child_half(
    base: &Path,
) -> (
    std::process::Child,
    PathBuf,
    Vec<u32>,
    impl Iterator<Item = String>,
) {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sigint_child_half",
            "--include-ignored",
            "--nocapture",
        ])
        .env("CYGVM_SIGINT_CHILD", base)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok);
    let ready = lines
        .find(|l| l.starts_with("READY "))
        .expect("the child test reports READY");
    let mut words = ready.split(' ').skip(1);
    let run_dir = PathBuf::from(words.next().unwrap());
    let pids: Vec<u32> = words.map(|w| w.parse().unwrap()).collect();
    assert_eq!(pids.len(), 2, "{ready}");
    assert!(run_dir.exists());
    (child, run_dir, pids, lines)
}

#[test]
#[ignore = "needs qemu-system-x86_64 and vde_switch; run by .ci/run (cargo test -- --ignored)"]
fn sigint_stops_every_vm_and_removes_the_run_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut child, run_dir, pids, mut lines) = start_child_half(tmp.path());
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let result = lines
        .find(|l| l.starts_with("RESULT "))
        .expect("the child test reports its result");
    assert_eq!(result, "RESULT interrupted by SIGINT; every VM was stopped");
    assert!(child.wait().unwrap().success());
    wait_gone(&pids);
    assert!(!run_dir.exists(), "run dir left behind");
}

#[test]
#[ignore = "needs qemu-system-x86_64 and vde_switch; run by .ci/run (cargo test -- --ignored)"]
fn sigkilled_cygvm_leaves_no_process_and_next_start_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut child, run_dir, pids, _) = start_child_half(tmp.path());
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    // PR_SET_PDEATHSIG took QEMU and the switch with it.
    wait_gone(&pids);
    assert!(run_dir.exists(), "nobody removed it yet");
    let next = Supervisor::start("next", options(&tmp.path().join("run"))).unwrap();
    assert!(!run_dir.exists(), "stale run dir still there");
    drop(next);
}

#[tokio::test]
#[ignore = "needs qemu-system-x86_64 and vde_switch; run by .ci/run (cargo test -- --ignored)"]
async fn windows_like_device_set_is_accepted_by_qemu() {
    use cygvm::vm::qemu::{Disk, DiskBus, DiskFormat};
    let tmp = tempfile::tempdir().unwrap();
    let mut sup = Supervisor::start("devices", options(&tmp.path().join("run"))).unwrap();
    let switch = VdeSwitch::start(&mut sup, secs(10)).await.unwrap();
    let media = tmp.path();
    let disk = media.join("disk,with comma.qcow2");
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg("64M")
        .status()
        .unwrap();
    assert!(made.success());
    for (name, size) in [
        ("floppy.img", 1_474_560),
        ("a.iso", 2048 * 16),
        ("b.iso", 2048 * 16),
    ] {
        std::fs::write(media.join(name), vec![0u8; size]).unwrap();
    }
    for machine in [Machine::Q35, Machine::Pc] {
        let name = format!("guest-{}", machine.qemu_name());
        let rd = sup.run_dir();
        let mut spec = VmSpec::new(&name, machine, Accel::Tcg, &rd.join(&format!("{name}.qmp")));
        spec.memory_mib = 128;
        spec.disks.push(Disk {
            path: disk.clone(),
            format: DiskFormat::Qcow2,
            bus: DiskBus::Ide,
            read_only: true,
        });
        spec.floppy = Some(media.join("floppy.img"));
        spec.cdroms = vec![media.join("a.iso"), media.join("b.iso")];
        spec.nics.push(Nic {
            model: NicModel::E1000,
            mac: "52:54:00:12:01:01".into(),
            switch: switch.dir.clone(),
        });
        spec.vga = true;
        spec.serial_log = Some(rd.join(&format!("{name}.serial.log")));
        spec.incoming_defer = true;
        let vm = start_guest(&mut sup, &spec).await;
        let st = vm.qmp.query_status().await.unwrap();
        assert_eq!(st.status, "inmigrate", "{machine:?}");
        let blocks = vm.qmp.execute("query-block", None).await.unwrap();
        let text = blocks.to_string();
        for node in ["disk0", "cdrom0", "cdrom1", "floppy0"] {
            assert!(
                text.contains(&format!("\"node-name\":\"{node}\"")),
                "{node} missing: {text}"
            );
        }
        sup.stop(vm.child).await;
    }
    sup.finish(true).await;
}
