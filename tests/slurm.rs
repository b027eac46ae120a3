//! Revive-and-build jobs on a real Slurm: a single-node cluster (munged,
//! slurmctld, slurmd from Debian's munge and slurm-wlm) with two `vmslot`
//! generic resources runs examples/slurm/cygvm-array.sbatch as an array of
//! four `cygvm run`s of the stand-in image, as docs/cluster.md tells an
//! admin to. Every task's output comes back, no more than two VMs run at
//! once, and the task whose build fails is FAILED with its exit code. The
//! image is installed, and the tasks run, with `--json=FILE` progress events,
//! as a pipeline would follow them; it reaches the node as a pinned artifact
//! pushed to a real registry (Debian's docker-registry), which the first
//! task pulls into the node's store.
//!
//! Needs root and the packages (scripts/install-deps). Without them the test
//! skips, except under CI (CI or CYGVM_REQUIRE_FIXTURES set), where it fails.

use std::path::Path;
use std::time::{Duration, Instant};

#[path = "common/registry.rs"]
mod registry;
#[path = "common/slurm_cluster.rs"]
mod slurm_cluster;
#[path = "common/workspace.rs"]
mod workspace;

use registry::TestRegistry;
use slurm_cluster::{Cluster, ClusterSpec};
use workspace::{Workspace, text};

const TASKS: u32 = 4;
const VM_SLOTS: u32 = 2;
/// The build each task runs in the guest: its own output, and task 3 fails.
const BUILD: &str = r#"echo "task $1" > /outputs/out; if [ "$1" = 3 ]; then exit 3; fi"#;

fn required() -> bool {
    let set = |name| std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "false");
    set("CI") || set("CYGVM_REQUIRE_FIXTURES")
}

/// A time as a number in the same order — jobcomp's `2026-11-30T18:28:29`
/// or an event's `2026-11-30T18:28:29.123Z`, each compared with its kind:
/// only the order of starts and ends matters.
fn instant(stamp: &str) -> i64 {
    let digits: String = stamp.chars().filter(char::is_ascii_digit).collect();
    assert!(matches!(digits.len(), 14 | 17), "a time: {stamp}");
    digits.parse().unwrap()
}

/// The most [start, end) spans that overlap at one instant.
fn most_at_once(spans: &[(i64, i64)]) -> usize {
    spans
        .iter()
        .map(|&(at, _)| spans.iter().filter(|&&(s, e)| s <= at && at < e).count())
        .max()
        .unwrap_or(0)
}

/// The events of one `--json=FILE`.
fn events(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read events {}: {e}", path.display()));
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// `kind phase` for phase events, `kind` for the others.
fn summary(events: &[serde_json::Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            let kind = e["event"].as_str().unwrap_or_default();
            match e["phase"].as_str() {
                Some(phase) => {
                    assert_ne!(e["ok"], false, "{e}");
                    format!("{kind} {phase}")
                }
                None => kind.to_string(),
            }
        })
        .collect()
}

/// Installs the stand-in image as a CI pipeline would, following it by its
/// `--json=FILE` events: every install phase in order, and success.
fn install_following_events() -> Workspace {
    let ws = Workspace::new("slurm", "");
    let events_file = ws.path().join("install.events.jsonl");
    let out = ws
        .cygvm()
        .args(["install", "--config", "cygvm.toml"])
        .arg(format!("--json={}", events_file.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "install failed:\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let events = events(&events_file);
    let mut expected = vec!["started".to_string()];
    for phase in ["prepare", "media", "guest-install", "boot", "snapshot"] {
        expected.push(format!("phase_started {phase}"));
        expected.push(format!("phase_finished {phase}"));
    }
    // The new generation is revived once before it is published.
    expected.push("phase_started verify".into());
    for phase in ["prepare", "revive", "command"] {
        expected.push(format!("phase_started {phase}"));
        expected.push(format!("phase_finished {phase}"));
    }
    expected.push("phase_finished verify".into());
    expected.push("phase_started publish".into());
    expected.push("phase_finished publish".into());
    expected.push("finished".into());
    assert_eq!(summary(&events), expected);
    assert_eq!(events.last().unwrap()["exit_status"], 0);
    ws
}

#[test]
#[ignore = "starts Slurm's daemons and boots QEMU under TCG; run by .ci/run with --include-ignored"]
fn an_array_of_builds_runs_two_at_a_time_and_reports_each_status() {
    let unavailable = slurm_cluster::check_host()
        .err()
        .map(|why| why.to_string())
        .or_else(registry::missing);
    if let Some(why) = unavailable {
        assert!(
            !required(),
            "cannot start a Slurm cluster and a registry: {why}"
        );
        eprintln!("skipping: cannot start a Slurm cluster and a registry: {why}");
        return;
    }
    let cluster = Cluster::start(&ClusterSpec {
        vm_slots: VM_SLOTS,
        cpus: 8,
    });
    let started = Instant::now();
    let ws = install_following_events();
    let installed = started.elapsed();
    // The image reaches the node as a pinned artifact in a registry.
    let registry = TestRegistry::start();
    let pushed = ws
        .cygvm()
        .args(["push", "--plain-http", "--image"])
        .arg(ws.image())
        .arg(format!("{}/cygvm/standin", registry.addr))
        .output()
        .unwrap();
    assert!(pushed.status.success(), "push: {}", text(&pushed.stderr));
    let pinned = text(&pushed.stdout).trim().to_string();
    assert!(pinned.contains("@sha256:"), "{pinned}");
    let store = ws.path().join("store");
    let outputs = ws.path().join("outputs");
    let scratch = ws.path().join("tmp");
    std::fs::create_dir_all(&scratch).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/slurm/cygvm-array.sbatch");

    let mut sbatch = cluster.command("sbatch");
    sbatch
        .args(["--wait", "--parsable", &format!("--array=0-{}", TASKS - 1)])
        .arg(&script)
        .current_dir(ws.path())
        .env("CYGVM", env!("CARGO_BIN_EXE_cygvm"))
        .env("CYGVM_IMAGE", &pinned)
        .env(
            "CYGVM_RUN_ARGS",
            format!("--plain-http --store {}", store.display()),
        )
        .env("CYGVM_BUILD", BUILD)
        .env("CYGVM_OUTPUT_ROOT", &outputs)
        .env("CYGVM_JSON", "1")
        .env("TMPDIR", &scratch)
        .env_remove("RUST_LOG");
    let started = Instant::now();
    let submitted = cluster.sbatch_wait(sbatch, Duration::from_secs(900));
    eprintln!(
        "image installed in {:.0} s; {TASKS} tasks on {VM_SLOTS} slots done in {:.0} s",
        installed.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    let job = text(&submitted.stdout).trim().to_string();
    let logs = || {
        let mut all = String::new();
        for task in 0..TASKS {
            let log = ws.path().join(format!("cygvm-{job}_{task}.log"));
            all += &format!(
                "--- task {task}: {} ---\n{}\n",
                log.display(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        all + &cluster.logs()
    };
    // sbatch --wait ends with the highest exit code of the array's tasks.
    assert_eq!(
        submitted.status.code(),
        Some(3),
        "sbatch: {}\n{}",
        text(&submitted.stderr),
        logs()
    );

    for task in 0..TASKS {
        let out = outputs.join(task.to_string()).join("out");
        assert_eq!(
            std::fs::read_to_string(&out).unwrap_or_default(),
            format!("task {task}\n"),
            "{}\n{}",
            out.display(),
            logs()
        );
    }

    let records = cluster.completions(&job, TASKS as usize);
    for task in 0..TASKS {
        let record = records
            .iter()
            .find(|r| r.get("ArrayTaskId") == Some(&task.to_string()))
            .unwrap_or_else(|| panic!("no completion record of task {task}"));
        let expected = if task == 3 {
            ("FAILED", "3:0")
        } else {
            ("COMPLETED", "0:0")
        };
        assert_eq!(
            (
                record.get("JobState").unwrap(),
                record.get("ExitCode").unwrap()
            ),
            expected,
            "task {task}\n{}",
            logs()
        );
    }
    // scontrol, as an admin without slurmdbd would ask.
    let shown = cluster
        .command("scontrol")
        .args(["show", "job", &format!("{job}_3")])
        .output()
        .unwrap();
    let shown = text(&shown.stdout);
    assert!(
        shown.contains("JobState=FAILED") && shown.contains("ExitCode=3:0"),
        "{shown}"
    );

    // Two slots: the four tasks ran two at a time, never more — as Slurm
    // recorded the jobs (whole seconds), and as each task's cygvm saw its
    // own run from start to finish (milliseconds).
    let jobs: Vec<(i64, i64)> = records
        .iter()
        .map(|r| {
            let time = |key| instant(r.get(key).unwrap());
            (time("StartTime"), time("EndTime"))
        })
        .collect();
    assert_eq!(most_at_once(&jobs), VM_SLOTS as usize, "{}", logs());
    let mut runs = Vec::new();
    let mut fetched = 0;
    for task in 0..TASKS {
        let events = events(&outputs.join(format!("{task}.events.jsonl")));
        let seen = summary(&events);
        assert_eq!(
            seen.iter()
                .filter(|s| s.starts_with("phase_finished"))
                .collect::<Vec<_>>(),
            [
                "phase_finished pull",
                "phase_finished prepare",
                "phase_finished revive",
                "phase_finished command"
            ],
            "task {task}"
        );
        let pulled = events.iter().find(|e| e["event"] == "pulled").unwrap();
        assert_eq!(pulled["reference"], pinned.as_str(), "{pulled}");
        fetched += usize::from(pulled["fetched"] == true);
        let finished = events.last().unwrap();
        assert_eq!(finished["event"], "finished");
        assert_eq!(finished["exit_status"], if task == 3 { 3 } else { 0 });
        assert!(finished.get("error").is_none(), "{finished}");
        let time = |e: &serde_json::Value| instant(e["time"].as_str().unwrap());
        runs.push((time(&events[0]), time(finished)));
    }
    assert_eq!(most_at_once(&runs), VM_SLOTS as usize, "{runs:?}");
    // One node, one store: the artifact came over once, even with two
    // tasks starting together.
    assert_eq!(fetched, 1, "tasks that fetched the artifact");

    // Every task cleaned up after itself: no VM, no scratch.
    assert!(ws.processes().is_empty(), "{:?}", ws.processes());
    let left: Vec<_> = std::fs::read_dir(&scratch).unwrap().flatten().collect();
    assert!(left.is_empty(), "scratch left behind: {left:?}");
    // Job steps end shortly after Slurm records their jobs as done.
    let jobs_left = || -> Vec<String> {
        cluster
            .processes()
            .into_iter()
            .map(|pid| {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                format!("{pid} {}", comm.trim())
            })
            .filter(|p| {
                let daemon = p.rsplit(' ').next().unwrap_or_default();
                !matches!(daemon, "munged" | "slurmctld" | "slurmscriptd" | "slurmd")
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !jobs_left().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(jobs_left().is_empty(), "{:?}", jobs_left());
}
