//! Memory snapshots through the real stack on the linux-standin guest:
//! install ends with a snapshot, runs revive it, damaged or foreign
//! snapshots are refused before any guest starts, refresh makes verified
//! generations and survives being killed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

#[path = "common/workspace.rs"]
mod workspace;

use workspace::{Workspace, text, vm_lock};

fn shared() -> &'static Workspace {
    static WS: OnceLock<Workspace> = OnceLock::new();
    WS.get_or_init(|| Workspace::installed("snap").removed_at_exit())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
#[ignore = "boots QEMU under TCG; run by .ci/run with --include-ignored"]
fn a_revived_run_has_output_status_files_shares_and_the_right_time() {
    let _vm = vm_lock();
    let ws = shared();
    let generation = ws.generation(1);
    assert!(generation.join("state.gz").is_file());
    let state_before = std::fs::read(generation.join("state.gz")).unwrap();
    let disk_before = std::fs::read(generation.join("disk.qcow2")).unwrap();
    // Let the snapshot's clock fall behind.
    std::thread::sleep(Duration::from_secs(3));

    let input = ws.path().join("in");
    let output = ws.path().join("out");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("data"), "from the host\n").unwrap();
    let out = ws.run(
        &[
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ],
        &[
            "sh",
            "-c",
            "cat /inputs/data; date +%s; echo made > /outputs/made; \
             if touch /inputs/x 2>/dev/null; then echo inputs: writable; fi; cat ~/provisioned; exit 7",
        ],
    );
    let host_after = unix_now();
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "from the host");
    let guest_time: i64 = lines[1].parse().unwrap();
    assert!(
        (host_after - guest_time).abs() <= 2,
        "guest clock {guest_time}, host {host_after}"
    );
    assert_eq!(lines[2], "provisioned");
    assert!(!stdout.contains("inputs: writable"));
    assert_eq!(
        std::fs::read_to_string(output.join("made")).unwrap(),
        "made\n"
    );
    assert_eq!(
        std::fs::read(generation.join("state.gz")).unwrap(),
        state_before
    );
    assert_eq!(
        std::fs::read(generation.join("disk.qcow2")).unwrap(),
        disk_before
    );
    assert_eq!(ws.processes().len(), 0);
    assert_eq!(ws.run_dirs().len(), 0);
}

#[test]
#[ignore = "boots QEMU under TCG; run by .ci/run with --include-ignored"]
fn two_revived_runs_at_once() {
    let _vm = vm_lock();
    let ws = shared();
    let spawn = |n: u32| {
        ws.cygvm()
            .args(["run", "--image"])
            .arg(ws.image())
            .args(["--", "sh", "-c"])
            .arg(format!("echo revived-{n}; exit {n}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(3), spawn(4));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_eq!(a.status.code(), Some(3), "{}", text(&a.stderr));
    assert_eq!(b.status.code(), Some(4), "{}", text(&b.stderr));
    assert_eq!(text(&a.stdout), "revived-3\n");
    assert_eq!(text(&b.stdout), "revived-4\n");
}

#[test]
#[ignore = "boots QEMU under TCG; run by .ci/run with --include-ignored"]
fn state_gz_is_plain_gzip_of_the_stream_cygvm_decodes() {
    let _vm = vm_lock();
    let ws = shared();
    let state = ws.generation(1).join("state.gz");
    let t = Command::new("gzip").arg("-t").arg(&state).status().unwrap();
    assert!(t.success(), "gzip -t rejects state.gz");
    let gunzip = Command::new("gzip")
        .arg("-dc")
        .arg(&state)
        .output()
        .unwrap();
    assert!(gunzip.status.success());
    let manifest =
        cygvm::snapshot::Manifest::load(&ws.generation(1).join("manifest.json")).unwrap();
    let summary = manifest.state.unwrap();
    let mut decoded = Vec::new();
    cygvm::snapshot::restore(&state, &summary, &mut decoded).unwrap();
    assert_eq!(decoded.len() as u64, summary.stream_len);
    assert!(
        decoded == gunzip.stdout,
        "gzip -dc and cygvm decode differently"
    );
    // QEMU's migration stream starts with its magic "QEVM".
    assert_eq!(&decoded[..4], b"QEVM");
}

/// A copy of the shared image whose snapshot or manifest a test may damage.
fn damaged_copy(ws: &Workspace, name: &str) -> PathBuf {
    let copy = ws.path().join(name);
    let status = Command::new("cp")
        .arg("-a")
        .arg(ws.image())
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    copy
}

/// `cygvm run --image IMAGE -- true`, with a cache of its own: without
/// an expanded form of the generation on this host, state.gz itself is
/// what a revive reads (docs/snapshot.md).
fn run_image(ws: &Workspace, image: &Path) -> (Output, Duration) {
    let started = Instant::now();
    let cache = image.with_extension("cache");
    let out = ws
        .cygvm()
        .env("XDG_CACHE_HOME", &cache)
        .args(["run", "--image"])
        .arg(image)
        .args(["--", "true"])
        .output()
        .unwrap();
    (out, started.elapsed())
}

#[test]
#[ignore = "boots QEMU under TCG; run by .ci/run with --include-ignored"]
fn damaged_or_foreign_snapshots_are_refused_before_any_guest_starts() {
    let _vm = vm_lock();
    let ws = shared();

    // A flipped byte in the middle.
    let flipped = damaged_copy(ws, "flipped");
    let state = flipped.join("gen-0001/state.gz");
    let mut bytes = std::fs::read(&state).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&state, &bytes).unwrap();
    let (out, _) = run_image(ws, &flipped);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("cannot revive"), "{err}");
    assert!(
        err.contains("member"),
        "should name the damaged member: {err}"
    );
    assert!(err.contains("--cold"), "should say what to do: {err}");
    assert_eq!(ws.run_dirs().len(), 0, "a guest was started");
    // With this host's expanded form of the generation at hand, a run does
    // not read state.gz, and the flipped byte goes unseen until something
    // reads it (a later expansion, a push).
    let out = ws
        .cygvm()
        .args(["run", "--image"])
        .arg(&flipped)
        .args(["--", "true"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Truncated: seen even with the expanded form at hand (its size is
    // checked on every revive).
    let truncated = damaged_copy(ws, "truncated");
    let state = truncated.join("gen-0001/state.gz");
    let len = std::fs::metadata(&state).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&state)
        .unwrap()
        .set_len(len - 1000)
        .unwrap();
    for out in [
        run_image(ws, &truncated).0,
        ws.cygvm()
            .args(["run", "--image"])
            .arg(&truncated)
            .args(["--", "true"])
            .output()
            .unwrap(),
    ] {
        let err = text(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains("truncated"), "{err}");
        assert_eq!(ws.run_dirs().len(), 0);
    }

    // Another QEMU version, then another device set.
    let foreign = damaged_copy(ws, "foreign");
    let manifest_path = foreign.join("gen-0001/manifest.json");
    let original = std::fs::read_to_string(&manifest_path).unwrap();
    let mut manifest: serde_json::Value = serde_json::from_str(&original).unwrap();
    manifest["qemu_version"] = "9.2.0".into();
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    let (out, _) = run_image(ws, &foreign);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("snapshot made by QEMU 9.2.0"), "{err}");
    assert!(err.contains("cygvm refresh"), "{err}");

    let mut manifest: serde_json::Value = serde_json::from_str(&original).unwrap();
    let argv = manifest["device_argv"].as_array_mut().unwrap();
    let pos = argv.iter().position(|a| a == "-m").unwrap();
    argv[pos + 1] = "4096".into();
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    let (out, _) = run_image(ws, &foreign);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("device set differs"), "{err}");
    assert_eq!(ws.run_dirs().len(), 0);

    // The same damaged image still runs cold.
    let out = ws
        .cygvm()
        .args(["run", "--cold", "--image"])
        .arg(&flipped)
        .args(["--", "sh", "-c", "cat ~/provisioned"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "provisioned\n");
}

#[test]
#[ignore = "boots QEMU under TCG; run by .ci/run with --include-ignored"]
fn refresh_makes_a_verified_generation_and_keeps_the_old_one_intact() {
    let _vm = vm_lock();
    let ws = Workspace::installed("snap");
    let gen1 = ws.generation(1);
    let disk1 = std::fs::read(gen1.join("disk.qcow2")).unwrap();
    let state1 = std::fs::read(gen1.join("state.gz")).unwrap();

    let out = ws.refresh(&["sh", "-c", "echo generation-two > ~/marker"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("generation 2 is current"));
    assert_eq!(
        std::fs::read_link(ws.image().join("current")).unwrap(),
        PathBuf::from("gen-0002")
    );
    let out = ws.run(&[], &["sh", "-c", "cat ~/marker; cat ~/provisioned"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "generation-two\nprovisioned\n");
    assert_eq!(std::fs::read(gen1.join("disk.qcow2")).unwrap(), disk1);
    assert_eq!(std::fs::read(gen1.join("state.gz")).unwrap(), state1);

    // The default refresh installs from the configured mirror.
    let out = ws.refresh(&[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = ws.run(
        &[],
        &["sh", "-c", "grep -c '^@ ' ~/cygwin/setup.ini; cat ~/marker"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let packages: usize = stdout.lines().next().unwrap().parse().unwrap();
    assert!(packages >= 4, "{stdout}");
    assert!(stdout.contains("generation-two"), "{stdout}");
    // keep = 2: generation 1 is gone, 2 and 3 remain.
    assert!(!gen1.exists());
    assert!(ws.generation(2).exists() && ws.generation(3).exists());

    // A failing update leaves current where it was.
    let out = ws.refresh(&["sh", "-c", "exit 9"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("ended with 9"), "{err}");
    assert!(err.contains("still points to generation 3"), "{err}");
    assert_eq!(
        std::fs::read_link(ws.image().join("current")).unwrap(),
        PathBuf::from("gen-0003")
    );
    assert_eq!(ws.processes().len(), 0);
}

#[test]
#[ignore = "boots QEMU under TCG; run by .ci/run with --include-ignored"]
fn kill_9_during_the_refresh_save_leaves_a_working_current() {
    let _vm = vm_lock();
    let ws = Workspace::installed("snap");
    let mut child = ws
        .cygvm()
        .args(["refresh", "--image"])
        .arg(ws.image())
        .args(["--", "sh", "-c", "echo never-published > ~/marker"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The writer's temporary state file appears once the save has begun.
    let pending = ws.image().join(".gen-0002.tmp");
    let deadline = Instant::now() + Duration::from_secs(240);
    let saving = loop {
        let found = std::fs::read_dir(&pending).ok().is_some_and(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(".state.gz"))
        });
        if found {
            break true;
        }
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(saving, "the refresh never started saving");
    // PDEATHSIG takes the VMs down with cygvm.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ws.processes().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(ws.processes().len(), 0, "VMs outlived a killed cygvm");
    assert_eq!(
        std::fs::read_link(ws.image().join("current")).unwrap(),
        PathBuf::from("gen-0001")
    );
    let out = ws.run(
        &[],
        &[
            "sh",
            "-c",
            "cat ~/provisioned; cat ~/marker 2>/dev/null; true",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "provisioned\n");
    // The next refresh clears the leftovers and succeeds.
    let out = ws.refresh(&["true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!pending.exists());
}
