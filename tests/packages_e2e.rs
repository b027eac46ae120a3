//! Runs with extra Cygwin packages (`cygvm run --packages`,
//! cygvm-build.toml) and `cygvm cygport`, through the `cygvm` binary on
//! the linux-standin guest, whose setup stand-in installs packages from
//! the example mirror and logs each run in /var/log/setup.log.full.

use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

#[path = "common/workspace.rs"]
mod workspace;

use workspace::{Workspace, text, vm_lock};

/// One installed image shared by the tests of this file.
fn shared() -> &'static Workspace {
    static WS: OnceLock<Workspace> = OnceLock::new();
    WS.get_or_init(|| Workspace::installed("pkgs").removed_at_exit())
}

/// How many times setup has run in the guest: the install's run, plus one
/// for each derived generation the guest's state went through.
const SETUP_RUNS: &str = "grep -c 'Starting cygwin install' /var/log/setup.log.full";

fn derived_list(ws: &Workspace) -> String {
    let out = ws
        .cygvm()
        .args(["derived", "list", "--image"])
        .arg(ws.image())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

fn derived_dirs(ws: &Workspace) -> Vec<String> {
    match std::fs::read_dir(ws.generation(1).join("derived")) {
        Ok(entries) => entries
            .flatten()
            // Published ones: what has its record.
            .filter(|e| e.path().join("derived.json").is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The key in "…/derived/failed-KEY-logs" of an error message.
fn derived_key(stderr: &str) -> String {
    let start = stderr.find("failed-").expect(stderr) + "failed-".len();
    stderr[start..].split('-').next().unwrap().to_string()
}

fn expect_ok(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[test]
#[ignore = "boots QEMU under TCG; run by .ci/run with --include-ignored"]
fn packages_are_installed_once_and_revived_with_the_derived_generation_after() {
    let _vm = vm_lock();
    let ws = shared();
    let disk = ws.generation(1).join("disk.qcow2");
    let disk_before = std::fs::read(&disk).unwrap();
    let command = [
        "sh",
        "-c",
        &format!("cygvm-example-tool && {SETUP_RUNS} && cat ~/provisioned"),
    ];

    let started = Instant::now();
    let first = ws.run(&["--packages", "cygvm-example-tool"], &command);
    let first_secs = started.elapsed().as_secs_f64();
    // The tool and the library it depends on; setup ran once more than at
    // the install; the image's own state (provisioning) is there.
    assert_eq!(
        expect_ok(&first),
        "hello from cygvm-example-lib 2.1-1\n2\nprovisioned\n"
    );
    let stderr = text(&first.stderr);
    assert!(
        stderr.contains("adding cygvm-example-lib 2.1-1, cygvm-example-tool 2.1-1 to generation 1"),
        "{stderr}"
    );
    const TOOL_SET: &str = "adds: cygvm-example-lib 2.1-1, cygvm-example-tool 2.1-1\n";
    let list = derived_list(ws);
    assert_eq!(list.matches(TOOL_SET).count(), 1, "{list}");
    let derived = derived_dirs(ws);

    // The same set again, asked for through the project file: the derived
    // generation is revived, setup does not run.
    let input = ws.path().join("project");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(
        input.join("cygvm-build.toml"),
        "packages = [\"cygvm-example-tool\"]\n",
    )
    .unwrap();
    let events = ws.path().join("second.events");
    let json = format!("--json={}", events.display());
    let started = Instant::now();
    let second = ws.run(&["--input", input.to_str().unwrap(), &json], &command);
    let second_secs = started.elapsed().as_secs_f64();
    assert_eq!(
        expect_ok(&second),
        "hello from cygvm-example-lib 2.1-1\n2\nprovisioned\n"
    );
    assert!(
        !text(&second.stderr).contains("adding"),
        "{}",
        text(&second.stderr)
    );
    // Its events end as a plain run's do: the command's status, then the
    // job's.
    let events: Vec<serde_json::Value> = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let tail: Vec<_> = events[events.len() - 2..]
        .iter()
        .map(|e| (e["event"].as_str().unwrap(), e["exit_status"].as_i64()))
        .collect();
    assert_eq!(
        tail,
        [("command_exited", Some(0)), ("finished", Some(0))],
        "{events:?}"
    );
    let list = derived_list(ws);
    assert_eq!(list.matches(TOOL_SET).count(), 1, "{list}");
    assert_eq!(derived_dirs(ws), derived);
    eprintln!("first run {first_secs:.1} s, second {second_secs:.1} s");

    // The image itself never changes: a plain run has no tool, and its
    // disk is as it was.
    let plain = ws.run(
        &[],
        &[
            "sh",
            "-c",
            &format!("command -v cygvm-example-tool || echo absent; {SETUP_RUNS}"),
        ],
    );
    assert_eq!(expect_ok(&plain), "absent\n1\n");
    assert_eq!(std::fs::read(&disk).unwrap(), disk_before);
    assert!(ws.run_dirs().is_empty(), "{:?}", ws.run_dirs());
    assert!(ws.processes().is_empty(), "{:?}", ws.processes());
}

#[test]
#[ignore = "boots QEMU under TCG; run by .ci/run with --include-ignored"]
fn four_parallel_runs_with_a_new_set_build_it_once() {
    let _vm = vm_lock();
    let ws = shared();
    let children: Vec<_> = (0..4)
        .map(|_| {
            ws.cygvm()
                .args(["run", "--packages", "cygvm-example-extra", "--image"])
                .arg(ws.image())
                .args([
                    "--",
                    "sh",
                    "-c",
                    &format!("cat /usr/share/doc/cygvm-example-extra/README && {SETUP_RUNS}"),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for out in &outputs {
        assert_eq!(
            expect_ok(out),
            "An extra package of the stand-in example mirror.\n2\n"
        );
    }
    let builders = outputs
        .iter()
        .filter(|o| text(&o.stderr).contains("cygvm: adding cygvm-example-extra 1.0-1"))
        .count();
    assert_eq!(builders, 1, "the set was built {builders} times");
    let list = derived_list(ws);
    assert_eq!(
        list.matches("adds: cygvm-example-extra 1.0-1\n").count(),
        1,
        "{list}"
    );
    assert!(ws.processes().is_empty(), "{:?}", ws.processes());
}

#[test]
#[ignore = "needs an installed stand-in image; run by .ci/run with --include-ignored"]
fn a_set_that_cannot_be_resolved_fails_before_any_vm_starts() {
    // No VM, but other tests' builds would change the derived generations.
    let _vm = vm_lock();
    let ws = shared();
    let before = derived_dirs(ws);
    for (packages, expected) in [
        (
            "cygvm-example-tol",
            "package \"cygvm-example-tol\" is not in",
        ),
        ("cygvm-example-testonly", "has only a test version (0.9-1)"),
        (
            "make,cygvm-example-broken",
            "dependency chain: cygvm-example-broken -> cygvm-example-missing",
        ),
    ] {
        let started = Instant::now();
        let out = ws.run(&["--packages", packages], &["true"]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{packages}: {stderr}");
        assert!(stderr.contains(expected), "{packages}: {stderr}");
        assert!(
            stderr.contains("cannot add the packages of --packages"),
            "{packages}: {stderr}"
        );
        assert!(
            started.elapsed().as_secs() < 10,
            "{packages}: took {:?}",
            started.elapsed()
        );
        assert!(
            ws.run_dirs().is_empty(),
            "{packages}: a run directory was made"
        );
    }
    // A bad project file is named.
    let input = ws.path().join("bad-project");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("cygvm-build.toml"), "packages = \"make\"\n").unwrap();
    let out = ws.run(&["--input", input.to_str().unwrap()], &["true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("bad-project/cygvm-build.toml"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(derived_dirs(ws), before);
}

#[test]
#[ignore = "boots QEMU under TCG; run by .ci/run with --include-ignored"]
fn a_failed_setup_leaves_no_derived_generation_and_shows_its_log() {
    let _vm = vm_lock();
    let ws = shared();
    let before = derived_dirs(ws);
    let out = ws.run(&["--packages", "cygvm-example-damaged"], &["true"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "cannot add cygvm-example-damaged 1.0-1 to generation 1; no derived generation was made"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("Cygwin's setup ended with 1"), "{stderr}");
    assert!(
        stderr.contains("setup: cygvm-example-damaged: cannot unpack"),
        "{stderr}"
    );
    assert_eq!(derived_dirs(ws), before);
    let failed_logs = ws
        .generation(1)
        .join("derived")
        .join(format!("failed-{}-logs", derived_key(&stderr)));
    let setup_log = std::fs::read_to_string(failed_logs.join("setup.log")).unwrap();
    assert!(setup_log.contains("cannot unpack"), "{setup_log}");
    let leftovers: Vec<_> = std::fs::read_dir(ws.generation(1).join("derived"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(ws.processes().is_empty(), "{:?}", ws.processes());
}

/// The fixture's directory copied into the workspace, with the source
/// archive its SRC_URI names made from `src/`.
fn cygport_fixture(ws: &Workspace, name: &str) -> std::path::PathBuf {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cygport");
    let dir = ws.path().join(format!("cygport-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(&from).unwrap().flatten() {
        if entry.path().is_file() {
            std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
    }
    let status = std::process::Command::new("tar")
        .args(["-czf"])
        .arg(dir.join("cygvm-hello-1.0.tar.gz"))
        .arg("-C")
        .arg(from.join("src"))
        .arg("cygvm-hello-1.0")
        .status()
        .unwrap();
    assert!(status.success());
    dir
}

fn cygport(ws: &Workspace, file: &Path, output: &Path, steps: &[&str]) -> Output {
    ws.cygvm()
        .args(["cygport", "--image"])
        .arg(ws.image())
        .arg(file)
        .arg("--output")
        .arg(output)
        .args(steps)
        .output()
        .unwrap()
}

#[test]
#[ignore = "boots QEMU under TCG; run by .ci/run with --include-ignored"]
fn cygport_builds_a_package_and_returns_dist_hints_and_logs() {
    let _vm = vm_lock();
    let ws = shared();
    let dir = cygport_fixture(ws, "ok");
    let out_dir = ws.path().join("cygport-out");
    let out = cygport(ws, &dir.join("cygvm-hello-1.0-1.cygport"), &out_dir, &[]);
    let stdout = expect_ok(&out);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("build dependencies of") && stderr.contains("cygvm-example-tool"),
        "{stderr}"
    );
    assert!(stdout.contains(">>> compile"), "{stdout}");
    let dist = out_dir.join("dist/cygvm-hello");
    let mut names: Vec<String> = std::fs::read_dir(&dist)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "cygvm-hello-1.0-1-src.hint",
            "cygvm-hello-1.0-1-src.tar.bz2",
            "cygvm-hello-1.0-1.hint",
            "cygvm-hello-1.0-1.tar.bz2",
        ]
    );
    let hint = std::fs::read_to_string(dist.join("cygvm-hello-1.0-1-src.hint")).unwrap();
    assert!(
        hint.contains("build-depends: cygvm-example-tool cygvm-example-lib"),
        "{hint}"
    );
    // The package holds what the build made with its build dependency
    // (the tool's output) and the patch applied.
    let listing = std::process::Command::new("tar")
        .args(["-xjOf"])
        .arg(dist.join("cygvm-hello-1.0-1.tar.bz2"))
        .arg("./usr/bin/cygvm-hello")
        .output()
        .unwrap();
    let script = text(&listing.stdout);
    assert!(
        script.contains("hello from cygvm-example-lib 2.1-1"),
        "{script}"
    );
    assert!(script.contains("patched"), "{script}");
    let compile_log =
        std::fs::read_to_string(out_dir.join("log/cygvm-hello-1.0-1-compile.log")).unwrap();
    assert!(
        compile_log.contains("compiling cygvm-hello"),
        "{compile_log}"
    );
}

#[test]
#[ignore = "boots QEMU under TCG; run by .ci/run with --include-ignored"]
fn a_failing_cygport_build_returns_its_status_and_logs() {
    let _vm = vm_lock();
    let ws = shared();
    let dir = cygport_fixture(ws, "fail");
    let out_dir = ws.path().join("cygport-fail-out");
    let out = cygport(ws, &dir.join("cygvm-broken-1.0-1.cygport"), &out_dir, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("*** ERROR: compile failed"), "{stderr}");
    let log = std::fs::read_to_string(out_dir.join("log/cygvm-broken-1.0-1-compile.log")).unwrap();
    assert!(log.contains("this build fails on purpose"), "{log}");
    assert!(
        !out_dir.join("dist").exists(),
        "a failed build made packages"
    );

    // Given steps run instead of `all`: prep alone succeeds.
    let out = cygport(
        ws,
        &dir.join("cygvm-broken-1.0-1.cygport"),
        &ws.path().join("cygport-prep-out"),
        &["prep"],
    );
    expect_ok(&out);
}
