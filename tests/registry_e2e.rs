//! An installed stand-in image through a real registry: pushed, pulled
//! into a fresh store as on a second host, revived and run from there by
//! `cygvm run --image REGISTRY/REPO@sha256:…`; then refreshed and pushed
//! again, reporting how much of the new generation the registry already had.

use std::path::Path;
use std::process::Output;

#[path = "common/registry.rs"]
mod registry;
#[path = "common/workspace.rs"]
mod workspace;

use registry::TestRegistry;
use workspace::{Workspace, text, vm_lock};

fn push(ws: &Workspace, target: &str) -> Output {
    push_sliced(ws, target, "512")
}

fn push_sliced(ws: &Workspace, target: &str, slice_mib: &str) -> Output {
    ws.cygvm()
        .args(["push", "--plain-http", "--slice-size", slice_mib, "--image"])
        .arg(ws.image())
        .arg(target)
        .output()
        .unwrap()
}

/// `(total, skipped)` bytes from push's summary line.
fn push_summary(stderr: &str) -> String {
    stderr
        .lines()
        .find(|l| l.starts_with("pushed ") && l.contains("already in the registry"))
        .unwrap_or_else(|| panic!("no summary:\n{stderr}"))
        .to_string()
}

fn run_from(ws: &Workspace, store: &Path, image: &str, command: &[&str]) -> Output {
    ws.cygvm()
        .args(["run", "--plain-http", "--store"])
        .arg(store)
        .args(["--image", image, "--"])
        .args(command)
        .output()
        .unwrap()
}

#[test]
#[ignore = "boots QEMU under TCG; run by .ci/run with --include-ignored"]
fn a_pushed_image_runs_from_the_registry_on_a_fresh_store_and_a_refresh_shares_blobs() {
    if let Some(why) = registry::missing() {
        eprintln!("skipped: {why}");
        return;
    }
    let _vm = vm_lock();
    let reg = TestRegistry::start();
    // A cache of its own: the end of the test reads its expanded snapshots.
    let ws = Workspace::new("oci", "").with_own_cache();
    let out = ws.install();
    assert!(
        out.status.success(),
        "install failed:\n{}",
        text(&out.stderr)
    );
    let target = format!("{}/cygvm/standin", reg.addr);

    let out = push(&ws, &target);
    assert!(out.status.success(), "push failed:\n{}", text(&out.stderr));
    let pinned = text(&out.stdout).trim().to_string();
    assert!(pinned.starts_with(&format!("{target}@sha256:")), "{pinned}");
    eprintln!("first push: {}", push_summary(&text(&out.stderr)));
    // The same in 1 MiB slices, to see what finer slices would share.
    let fine = format!("{}/cygvm/standin-1mib", reg.addr);
    let out = push_sliced(&ws, &fine, "1");
    assert!(out.status.success(), "push failed:\n{}", text(&out.stderr));

    // A second host: nothing but the registry.
    let store = ws.path().join("second-host-store");
    let out = run_from(
        &ws,
        &store,
        &pinned,
        &[
            "sh",
            "-c",
            "cat ~/provisioned; echo hi from the registry; exit 5",
        ],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "stderr:\n{stderr}");
    assert_eq!(text(&out.stdout), "provisioned\nhi from the registry\n");
    assert!(stderr.contains(&format!("pulled {pinned}")), "{stderr}");
    // Again, by tag: from the store, nothing fetched.
    let out = run_from(&ws, &store, &format!("{target}:gen-0001"), &["true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("pulled"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        ws.run_dirs().is_empty(),
        "run dirs left: {:?}",
        ws.run_dirs()
    );
    assert!(ws.processes().is_empty(), "{:?}", ws.processes());

    // Packages added to the pulled image resolve in the index it was made
    // from, which came with it.
    let out = ws
        .cygvm()
        .env("RUST_LOG", "cygvm=info")
        .args(["run", "--plain-http", "--store"])
        .arg(&store)
        .args(["--packages", "cygvm-example-tool", "--image", &pinned, "--"])
        .arg("cygvm-example-tool")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(text(&out.stdout), "hello from cygvm-example-lib 2.1-1\n");
    let pulled = store
        .join("sha256")
        .join(pinned.rsplit_once("@sha256:").unwrap().1);
    let resolved = stderr
        .lines()
        .find(|l| l.contains("[packages] resolved in"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        resolved.contains(&*pulled.to_string_lossy())
            && resolved.ends_with("cygwin-index/setup.ini"),
        "{resolved}"
    );

    // A refreshed generation: what does the registry already have?
    let out = ws.refresh(&["sh", "-c", "echo generation-two > ~/marker"]);
    assert!(
        out.status.success(),
        "refresh failed:\n{}",
        text(&out.stderr)
    );
    let out = push(&ws, &target);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "push failed:\n{stderr}");
    let summary = push_summary(&stderr);
    eprintln!("refresh push: {summary}");
    assert!(summary.contains("tags gen-0002, latest"), "{summary}");
    // The secrets and the config are the same blobs at least.
    assert!(!summary.contains(": 0 B (0 layers)"), "{summary}");
    let second = text(&out.stdout).trim().to_string();
    let out = push_sliced(&ws, &fine, "1");
    assert!(out.status.success(), "push failed:\n{}", text(&out.stderr));
    eprintln!(
        "refresh push, 1 MiB slices: {}",
        push_summary(&text(&out.stderr))
    );
    let out = run_from(
        &ws,
        &store,
        &format!("{target}:latest"),
        &["sh", "-c", "cat ~/marker"],
    );
    assert_eq!(
        text(&out.stdout),
        "generation-two\n",
        "stderr:\n{}",
        text(&out.stderr)
    );
    assert!(text(&out.stderr).contains(&format!("pulled {second}")));

    // The store holds both generations and says where they came from.
    let store_cmd = |args: &[&str]| {
        ws.cygvm()
            .arg("store")
            .args(args)
            .arg("--store")
            .arg(&store)
            .output()
            .unwrap()
    };
    let listed = text(&store_cmd(&["list"]).stdout);
    assert!(
        listed.contains(&pinned) && listed.contains(&second),
        "{listed}"
    );
    // Neither used for a month; then the first one runs again.
    let hex = |r: &str| r.rsplit_once("@sha256:").unwrap().1.to_string();
    let month_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(30 * 86400);
    for r in [&pinned, &second] {
        let stamp = store.join("sha256").join(format!("{}.lock", hex(r)));
        std::fs::File::options()
            .append(true)
            .open(&stamp)
            .unwrap()
            .set_modified(month_ago)
            .unwrap();
    }
    let out = run_from(&ws, &store, &pinned, &["true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The expanded snapshot of each generation serves the image it was
    // made for and the store's copy alike (the same state.gz).
    let state_sha = |r: &str| {
        let manifest = store
            .join("sha256")
            .join(hex(r))
            .join("current/manifest.json");
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(manifest).unwrap()).unwrap();
        m["state"]["sha256"].as_str().unwrap().to_string()
    };
    let (first_sha, second_sha) = (state_sha(&pinned), state_sha(&second));
    let expanded_of = |sha: &str| {
        std::fs::read_dir(ws.cache_dir().join("expanded"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|d| {
                std::fs::read(d.join("meta.json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .is_some_and(|m| m["source"] == sha)
            })
    };
    let shared = expanded_of(&second_sha).expect("generation 2's expanded snapshot");
    let users = std::fs::read_to_string(shared.with_file_name(format!(
        "{}.users",
        shared.file_name().unwrap().to_string_lossy()
    )))
    .unwrap();
    assert!(
        users.contains(&*store.join("sha256").join(hex(&second)).to_string_lossy()),
        "{users}"
    );

    // A prune of what was not used for two weeks takes the second only.
    // Its expanded snapshot stays: the image it was pushed from holds it.
    let out = store_cmd(&["prune", "--unused-for", "14"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!("removed {second}")),
        "{}",
        text(&out.stdout)
    );
    assert!(!store.join("sha256").join(hex(&second)).exists());
    assert!(store.join("sha256").join(hex(&pinned)).exists());
    assert_eq!(expanded_of(&second_sha), Some(shared.clone()));
    let listed = text(&store_cmd(&["list"]).stdout);
    assert!(
        listed.contains(&pinned) && !listed.contains(&second),
        "{listed}"
    );
    // With that image deleted too, generation 2's expanded snapshot serves
    // nothing, and the cache says so; generation 1's still serves the store.
    std::fs::remove_dir_all(ws.image()).unwrap();
    let out = ws.cygvm().args(["cache", "list"]).output().unwrap();
    let listed = text(&out.stdout);
    let serving_nothing: Vec<&str> = listed
        .lines()
        .filter(|l| l.contains("no image holds its state.gz"))
        .collect();
    assert_eq!(serving_nothing.len(), 1, "{listed}");
    let first = expanded_of(&first_sha).expect("generation 1's expanded snapshot");
    let shared_line = listed
        .lines()
        .position(|l| l.contains(&*shared.file_name().unwrap().to_string_lossy()))
        .unwrap();
    assert!(
        listed
            .lines()
            .nth(shared_line + 2)
            .unwrap()
            .contains("no image holds"),
        "{listed}"
    );
    assert!(listed.contains(&*first.file_name().unwrap().to_string_lossy()));
}
