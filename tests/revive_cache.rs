//! The host's snapshot caches through the binary: the controller VM's
//! snapshot and the guest's expanded snapshot are made once, used by every
//! run, never used when damaged or made for something else, and never left
//! half-made, whatever happens to the run that makes them.

#[path = "common/workspace.rs"]
mod workspace;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use workspace::{Workspace, text, vm_lock};

/// One installed stand-in image with a cache of its own (the install
/// revives the generation once, which makes both caches).
fn shared() -> &'static Workspace {
    static WS: OnceLock<Workspace> = OnceLock::new();
    WS.get_or_init(|| {
        let ws = Workspace::new("cache", "")
            .with_own_cache()
            .removed_at_exit();
        let out = ws.install();
        assert!(
            out.status.success(),
            "install failed:\n{}",
            text(&out.stderr)
        );
        ws
    })
}

/// The snapshot directories of one kind (`controller` or `expanded`).
fn snapshots(ws: &Workspace, kind: &str) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(ws.cache_dir().join(kind))
        .map(|rd| {
            rd.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// Everything in a cache directory that is neither a snapshot nor its lock:
/// what an interrupted build would leave.
fn leftovers(ws: &Workspace, kind: &str) -> Vec<String> {
    std::fs::read_dir(ws.cache_dir().join(kind))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

fn only(ws: &Workspace, kind: &str) -> PathBuf {
    let dirs = snapshots(ws, kind);
    assert_eq!(dirs.len(), 1, "{kind} snapshots: {dirs:?}");
    dirs.into_iter().next().unwrap()
}

fn writable(path: &Path) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

fn flip_byte(path: &Path, at: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    writable(path);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[b[0] ^ 0x40]).unwrap();
    // Keep the modification time: only the content check can see this.
}

fn truncate(path: &Path, len: u64) {
    writable(path);
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn set_meta(dir: &Path, field: &str, value: &str) {
    let path = dir.join("meta.json");
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    meta[field] = value.into();
    writable(&path);
    std::fs::write(&path, serde_json::to_vec(&meta).unwrap()).unwrap();
}

fn created(dir: &Path) -> String {
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("meta.json")).unwrap()).unwrap();
    format!("{} {}", meta["created"], meta["devices"]["inode"])
}

/// `cygvm run --image IMAGE -- echo WORD`, with cygvm's info lines (a run
/// shows only warnings by default).
fn run_cmd(ws: &Workspace, word: &str) -> Command {
    let mut cmd = ws.cygvm();
    cmd.env("RUST_LOG", "cygvm=info")
        .arg("run")
        .arg("--image")
        .arg(ws.image())
        .args(["--", "echo", word]);
    cmd
}

fn run_ok(ws: &Workspace, word: &str) -> Output {
    let out = run_cmd(ws, word).output().unwrap();
    assert!(out.status.success(), "run failed:\n{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{word}\n"));
    out
}

/// Damages the one snapshot of `kind` with `damage`; the next run must say
/// why it does not use it, make it again and succeed.
fn damaged_is_rebuilt(ws: &Workspace, kind: &str, damage: impl Fn(&Path), says: &str) {
    let dir = only(ws, kind);
    let before = created(&dir);
    damage(&dir);
    let out = run_ok(ws, "after-damage");
    let err = text(&out.stderr);
    assert!(err.contains(says), "{kind}: expected {says:?} in:\n{err}");
    let dir = only(ws, kind);
    assert_ne!(
        created(&dir),
        before,
        "{kind}: the damaged snapshot was kept"
    );
    assert!(leftovers(ws, kind).is_empty(), "{:?}", leftovers(ws, kind));
    // And the remade one is used as is by the run after.
    let again = created(&dir);
    run_ok(ws, "again");
    assert_eq!(created(&only(ws, kind)), again);
}

#[test]
#[ignore = "boots QEMU under TCG; run by .ci/run with --include-ignored"]
fn a_damaged_controller_snapshot_is_never_used() {
    let _vm = vm_lock();
    let ws = shared();
    damaged_is_rebuilt(
        ws,
        "controller",
        |d| truncate(&d.join("ram"), 4096),
        "ram is 4096 bytes",
    );
    damaged_is_rebuilt(
        ws,
        "controller",
        |d| flip_byte(&d.join("devices.state"), 1000),
        "devices.state has sha256",
    );
    damaged_is_rebuilt(
        ws,
        "controller",
        |d| truncate(&d.join("devices.state"), 100),
        "devices.state has sha256",
    );
    damaged_is_rebuilt(
        ws,
        "controller",
        |d| set_meta(d, "qemu_version", "9.2.0"),
        "made by QEMU 9.2.0",
    );
    // Half-written: what a build killed before it renamed its directory
    // into place would look like if it had used the real name.
    damaged_is_rebuilt(
        ws,
        "controller",
        |d| std::fs::remove_file(d.join("meta.json")).unwrap(),
        "making the controller VM's snapshot",
    );
}

#[test]
#[ignore = "boots QEMU under TCG; run by .ci/run with --include-ignored"]
fn a_damaged_expanded_snapshot_is_never_used() {
    let _vm = vm_lock();
    let ws = shared();
    damaged_is_rebuilt(
        ws,
        "expanded",
        |d| truncate(&d.join("ram"), 1 << 20),
        "ram is 1048576 bytes",
    );
    damaged_is_rebuilt(
        ws,
        "expanded",
        |d| flip_byte(&d.join("devices.state"), 4096),
        "devices.state has sha256",
    );
    damaged_is_rebuilt(
        ws,
        "expanded",
        |d| set_meta(d, "qemu_version", "9.2.0"),
        "made by QEMU 9.2.0",
    );
    // Made for another generation's state.gz (or another device set).
    damaged_is_rebuilt(
        ws,
        "expanded",
        |d| set_meta(d, "key", "0000"),
        "made for other inputs",
    );
    // A RAM file replaced under its name (same size): a copy-on-write
    // mapping of it would show other memory.
    damaged_is_rebuilt(
        ws,
        "expanded",
        |d| {
            let ram = d.join("ram");
            let len = std::fs::metadata(&ram).unwrap().len();
            let copy = d.join("ram.copy");
            std::fs::copy(&ram, &copy).unwrap();
            std::fs::remove_file(&ram).unwrap();
            std::fs::rename(&copy, &ram).unwrap();
            assert_eq!(std::fs::metadata(&ram).unwrap().len(), len);
            std::fs::set_permissions(&ram, std::fs::Permissions::from_mode(0o444)).unwrap();
        },
        "replaced or changed",
    );
}

#[test]
#[ignore = "boots QEMU under TCG; run by .ci/run with --include-ignored"]
fn cache_verify_finds_a_changed_ram_page_and_remove_clears() {
    let _vm = vm_lock();
    let ws = shared();
    run_ok(ws, "warm");
    let cache = |args: &[&str]| ws.cygvm().arg("cache").args(args).output().unwrap();
    let listed = text(&cache(&["list"]).stdout);
    assert!(listed.contains("controller VM"), "{listed}");
    assert!(listed.contains("generation 1"), "{listed}");
    let ok = cache(&["verify"]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));

    // One page changed in place, size and times kept: only a full hash
    // sees it, which `cache verify` does.
    let dir = only(ws, "expanded");
    let ram = dir.join("ram");
    let md = std::fs::metadata(&ram).unwrap();
    flip_byte(&ram, 8192);
    let f = std::fs::File::options().write(true).open(&ram).unwrap();
    f.set_modified(md.modified().unwrap()).unwrap();
    drop(f);
    std::fs::set_permissions(&ram, std::fs::Permissions::from_mode(0o444)).unwrap();
    let bad = cache(&["verify"]);
    assert!(!bad.status.success());
    let report = format!("{}{}", text(&bad.stdout), text(&bad.stderr));
    assert!(
        report.contains("DAMAGED") && report.contains("ram has sha256"),
        "{report}"
    );

    let removed = cache(&["remove", "--all"]);
    assert!(removed.status.success(), "{}", text(&removed.stderr));
    assert!(snapshots(ws, "expanded").is_empty() && snapshots(ws, "controller").is_empty());
    // The next run makes both again.
    let out = run_ok(ws, "remade");
    assert!(text(&out.stderr).contains("making the controller VM's snapshot"));
    assert_eq!(snapshots(ws, "expanded").len(), 1);
}

/// What a deleted image leaves: a copy of the snapshot at `dir` made
/// `orphan`, naming an image directory that is no more.
fn orphan_of(ws: &Workspace, dir: &Path, orphan: &Path) {
    let copied = Command::new("cp")
        .arg("-a")
        .arg(dir)
        .arg(orphan)
        .status()
        .unwrap();
    assert!(copied.success());
    set_meta(
        orphan,
        "image",
        &ws.path().join("images/deleted").to_string_lossy(),
    );
}

#[test]
#[ignore = "boots QEMU under TCG; run by .ci/run with --include-ignored"]
fn an_expanded_snapshot_whose_image_is_gone_goes_when_the_next_is_made() {
    let _vm = vm_lock();
    let ws = shared();
    run_ok(ws, "warm");
    let dir = only(ws, "expanded");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("meta.json")).unwrap()).unwrap();
    assert_eq!(meta["image"], ws.image().to_string_lossy().as_ref());

    // What a deleted image leaves: its generation's expanded snapshot,
    // naming an image directory that is no more.
    let orphan = dir.with_file_name("0123456789abcdef");
    orphan_of(ws, &dir, &orphan);
    let cache = |args: &[&str]| ws.cygvm().arg("cache").args(args).output().unwrap();
    let listed = text(&cache(&["list"]).stdout);
    let gone: Vec<&str> = listed
        .lines()
        .filter(|l| l.contains("no image holds its state.gz"))
        .collect();
    assert_eq!(gone.len(), 1, "{listed}");

    // A run that has its own expanded snapshot leaves the orphan be; the
    // next one made (here: this image's, removed first) takes it away.
    run_ok(ws, "still-here");
    assert!(orphan.exists());
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let removed = cache(&["remove", &name]);
    assert!(removed.status.success(), "{}", text(&removed.stderr));
    let out = run_ok(ws, "remade");
    let err = text(&out.stderr);
    assert!(err.contains("removed the expanded snapshot"), "{err}");
    assert!(!orphan.exists());
    assert_eq!(snapshots(ws, "expanded"), vec![dir.clone()]);
    assert!(!text(&cache(&["list"]).stdout).contains("no image holds its state.gz"));

    // `cygvm cache prune` takes such a snapshot away at once, and nothing
    // an image still uses.
    orphan_of(ws, &dir, &orphan);
    let controller = snapshots(ws, "controller");
    let pruned = cache(&["prune"]);
    assert!(pruned.status.success(), "{}", text(&pruned.stderr));
    assert!(
        text(&pruned.stdout).starts_with(&format!("removed {}", orphan.display())),
        "{}",
        text(&pruned.stdout)
    );
    assert!(!orphan.exists());
    assert_eq!(snapshots(ws, "expanded"), vec![dir]);
    assert_eq!(snapshots(ws, "controller"), controller);
    assert_eq!(text(&cache(&["prune"]).stdout), "nothing to remove\n");
}

#[test]
#[ignore = "boots QEMU under TCG and mounts a tmpfs (root); run by .ci/run with --include-ignored"]
fn a_full_disk_while_expanding_falls_back_to_state_gz() {
    let _vm = vm_lock();
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a small tmpfs as the full filesystem needs root");
        return;
    }
    let ws = shared();
    for dir in snapshots(ws, "expanded") {
        writable(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
    }
    let expanded = ws.cache_dir().join("expanded");
    std::fs::create_dir_all(&expanded).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(&expanded)
        .status()
        .unwrap();
    assert!(mounted.success());
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(expanded.clone());
    let out = run_ok(ws, "from-state-gz");
    let err = text(&out.stderr);
    assert!(
        err.contains("reviving from state.gz") && err.contains("MiB free"),
        "{err}"
    );
    // Nothing half-made under a real name, nor beside it.
    assert!(snapshots(ws, "expanded").is_empty());
    assert!(
        leftovers(ws, "expanded").is_empty(),
        "{:?}",
        leftovers(ws, "expanded")
    );
}

fn clear_cache(ws: &Workspace) {
    let out = ws
        .cygvm()
        .args(["cache", "remove", "--all"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

fn spawn_run(ws: &Workspace, word: &str) -> std::process::Child {
    run_cmd(ws, word)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
#[ignore = "boots QEMU under TCG; run by .ci/run with --include-ignored"]
fn four_runs_at_once_make_the_caches_once() {
    let _vm = vm_lock();
    let ws = shared();
    clear_cache(ws);
    let runs: Vec<_> = (0..4).map(|i| spawn_run(ws, &format!("run{i}"))).collect();
    let mut made_controller = 0;
    let mut expanded = 0;
    for (i, child) in runs.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        let err = text(&out.stderr);
        assert!(out.status.success(), "run {i} failed:\n{err}");
        assert_eq!(text(&out.stdout), format!("run{i}\n"));
        made_controller += err.matches("making the controller VM's snapshot").count();
        expanded += err.matches("expanded the snapshot into").count();
    }
    assert_eq!(
        made_controller, 1,
        "the controller snapshot was made {made_controller} times"
    );
    assert_eq!(
        expanded, 1,
        "the guest snapshot was expanded {expanded} times"
    );
    assert_eq!(snapshots(ws, "controller").len(), 1);
    assert_eq!(snapshots(ws, "expanded").len(), 1);
}

/// Waits for `ready`, then SIGKILLs cygvm (the process, not its group:
/// what the OOM killer or `kill -9` does).
fn kill_9_when(ws: &Workspace, word: &str, ready: impl Fn() -> bool) {
    let child = spawn_run(ws, word);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ready() {
        assert!(Instant::now() < deadline, "never got to the point to kill");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGKILL);
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    // Its children follow it (PDEATHSIG); give them a moment.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ws.processes().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        ws.processes().is_empty(),
        "left running: {:?}",
        ws.processes()
    );
}

#[test]
#[ignore = "boots QEMU under TCG; run by .ci/run with --include-ignored"]
fn kill_9_while_making_a_cache_or_reviving_leaves_nothing_used() {
    let _vm = vm_lock();
    let ws = shared();
    clear_cache(ws);
    // Killed while the controller's snapshot is being made.
    kill_9_when(ws, "killed", || {
        leftovers(ws, "controller")
            .iter()
            .any(|n| n.contains(".tmp-"))
    });
    assert!(snapshots(ws, "controller").is_empty());
    // Killed while the guest's snapshot is being expanded (the controller's
    // is made first, in the same run).
    kill_9_when(ws, "killed", || {
        leftovers(ws, "expanded")
            .iter()
            .any(|n| n.contains(".tmp-"))
    });
    assert!(snapshots(ws, "expanded").is_empty());
    // Killed during a revive from both caches, just after the guest's QEMU
    // started.
    run_ok(ws, "made");
    let runs = ws.runtime.join("cygvm");
    kill_9_when(ws, "killed", || {
        std::fs::read_dir(&runs)
            .into_iter()
            .flatten()
            .flatten()
            .any(|d| d.path().join("guest.qmp").exists())
    });
    // The next run cleans what was left and uses only whole caches.
    let out = run_ok(ws, "after");
    assert!(
        leftovers(ws, "controller").is_empty(),
        "{:?}",
        leftovers(ws, "controller")
    );
    assert!(
        leftovers(ws, "expanded").is_empty(),
        "{:?}",
        leftovers(ws, "expanded")
    );
    assert!(
        !text(&out.stderr).contains("cannot be used"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
#[ignore = "boots QEMU under TCG; run by .ci/run with --include-ignored"]
fn a_refresh_during_runs_leaves_them_be_and_prunes_the_old_expanded_snapshot() {
    let _vm = vm_lock();
    let ws = Workspace::new("prune", "").with_own_cache();
    let config = ws.path().join("cygvm.toml");
    let text_config = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text_config.replace("dir = \"images\"\n", "dir = \"images\"\nkeep = 1\n"),
    )
    .unwrap();
    let out = ws.install();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let gen1 = only(&ws, "expanded");

    // A run of generation 1 that outlasts the refresh: it waits for a file
    // the test puts in its output directory.
    let outputs = ws.path().join("long-outputs");
    std::fs::create_dir_all(&outputs).unwrap();
    let long = ws
        .cygvm()
        .arg("run")
        .arg("--image")
        .arg(ws.image())
        .arg("--output")
        .arg(&outputs)
        .args([
            "--",
            "sh",
            "-c",
            "while [ ! -e /outputs/go ]; do sleep 1; done; echo still-here",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // If the test fails before the run ends, the run must not wait forever.
    struct Release(PathBuf);
    impl Drop for Release {
        fn drop(&mut self) {
            let _ = std::fs::write(self.0.join("go"), b"");
        }
    }
    let release = Release(outputs.clone());
    let refreshed = ws.refresh(&["sh", "-c", "echo refreshed > ~/refreshed"]);
    assert!(refreshed.status.success(), "{}", text(&refreshed.stderr));
    // Generation 1 is held by the run: neither it nor its expanded form goes.
    assert!(ws.generation(1).exists());
    assert!(gen1.exists());
    assert_eq!(snapshots(&ws, "expanded").len(), 2);
    // Let the run finish: unaffected.
    drop(release);
    let out = long.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("still-here"));

    // The next refresh prunes generation 1 (keep = 1; generation 2, which
    // it revives, it holds until it ends), and its expanded form with it.
    let again = ws.refresh(&["true"]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(!ws.generation(1).exists());
    assert!(!gen1.exists(), "generation 1's expanded snapshot stayed");
    assert!(ws.generation(2).exists() && ws.generation(3).exists());
    assert_eq!(snapshots(&ws, "expanded").len(), 2);
}
