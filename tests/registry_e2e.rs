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
    let ws = Workspace::installed("oci");
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
}
