//! Push and pull throughput of `cygvm push` / `cygvm pull` against
//! `skopeo copy` of the same artifact, in one run, each against a fresh
//! local registry (Debian's docker-registry on 127.0.0.1):
//!
//! - push: `cygvm push` of a generation (compresses the disk slices, hashes
//!   the state.gz layers, uploads) vs `skopeo copy dir:… docker://…` of the
//!   artifact's blobs as they are (hash and upload only);
//! - pull: `cygvm pull` into a fresh store (fetch, verify both digests,
//!   decompress, write at offsets, fsync) vs `skopeo copy docker://… dir:…`
//!   (fetch, verify, write).
//!
//! The generation is synthetic: a 1 GiB disk and a 512 MiB migration stream
//! with the page mix of the codec benchmark (half random pages, a quarter
//! zero, a quarter text-like), state.gz written by cygvm's writer.
//!
//! Run: `cargo bench --bench registry` (writes the `registry` section of
//! docs/perf.md). Unoptimized builds skip it.

#[path = "support/perfdoc.rs"]
mod perfdoc;
#[path = "../tests/common/registry.rs"]
mod registry;
#[path = "../tests/common/synthetic.rs"]
mod synthetic;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use cygvm::image::ImageDir;
use cygvm::snapshot::manifest::{DiskEntry, FORMAT_VERSION, rfc3339_utc};
use cygvm::snapshot::{CodecOptions, Manifest, MigrationWriter};

const MIB: usize = 1 << 20;
const DISK_MIB: usize = 1024;
const STATE_MIB: usize = 512;

fn main() {
    if cfg!(debug_assertions) {
        println!(
            "registry: skipped in an unoptimized build (cargo test); run `cargo bench --bench registry`"
        );
        return;
    }
    if let Some(why) = registry::missing() {
        println!("registry: skipped: {why}");
        return;
    }
    if let Err(e) = bench() {
        eprintln!("registry bench failed: {e:#}");
        std::process::exit(1);
    }
}

fn make_image(root: &Path) -> Result<PathBuf> {
    let image = ImageDir::new(root.join("images/bench"));
    let lock = image.lock_exclusive()?;
    let generation = image.begin_generation(&lock)?;
    {
        use std::io::Write;
        let mut disk = std::fs::File::create(generation.disk())?;
        for i in 0..DISK_MIB / 64 {
            disk.write_all(&synthetic::stream(64 * MIB, 100 + i as u64))?;
        }
    }
    let writer = MigrationWriter::create(&generation.state(), CodecOptions::default())?;
    let state = writer
        .save(&synthetic::stream(STATE_MIB * MIB, 7)[..])?
        .commit()?;
    std::fs::write(
        generation.dir.join("config.toml"),
        "[image]\nname = \"bench\"\n\n[guest]\nos = \"linux-standin\"\n",
    )?;
    Manifest {
        format_version: FORMAT_VERSION,
        cygvm_version: env!("CARGO_PKG_VERSION").into(),
        qemu_version: "10.0.2".into(),
        machine: "pc-q35-10.0".into(),
        device_argv: vec![],
        memory_bytes: 1 << 30,
        disk: DiskEntry {
            size: (DISK_MIB * MIB) as u64,
            virtual_size: 1 << 30,
            sha256: cygvm::fsutil::sha256_file(&generation.disk())?,
        },
        state: Some(state),
        config_fingerprint: "00".repeat(32),
        cygwin_packages: vec![],
        created: rfc3339_utc(std::time::SystemTime::now()),
    }
    .save(&generation.manifest())?;
    cygvm::secrets::ImageSecrets::load_or_create(&image.secrets(), None)?;
    generation.publish()?;
    Ok(image.root)
}

fn timed(cmd: &mut Command) -> Result<(Duration, String)> {
    let started = Instant::now();
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    let took = started.elapsed();
    if !out.status.success() {
        bail!("{cmd:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok((
        took,
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    ))
}

fn cygvm(home: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cygvm"));
    cmd.env("HOME", home)
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("DOCKER_CONFIG");
    cmd
}

fn skopeo(args: &[&str]) -> Command {
    let mut cmd = Command::new("skopeo");
    cmd.args([
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
    ])
    .args(args);
    cmd
}

fn mib_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / MIB as f64 / took.as_secs_f64()
}

fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let m = e?.metadata()?;
        if m.is_file() {
            total += m.len();
        }
    }
    Ok(total)
}

fn bench() -> Result<()> {
    if Command::new("skopeo").arg("--version").output().is_err() {
        bail!("skopeo is missing: apt-get install skopeo (scripts/install-deps does)");
    }
    let ws = tempfile::Builder::new()
        .prefix("cygvm-bench-registry-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
    let dir = ws.path();
    let image = make_image(dir)?;
    let image_bytes = (DISK_MIB + STATE_MIB) as u64 * MIB as u64;

    // cygvm push into a fresh registry.
    let reg_a = registry::TestRegistry::start();
    let target = format!("{}/bench", reg_a.addr);
    let (push_cygvm, pinned) = timed(
        cygvm(dir)
            .args(["push", "--plain-http", "--image"])
            .arg(&image)
            .arg(&target),
    )?;
    let digest = pinned
        .split_once('@')
        .map(|(_, d)| d.to_string())
        .context("no digest")?;

    // skopeo pulls the same artifact into a directory...
    let skopeo_dir = dir.join("skopeo-dir");
    let (pull_skopeo, _) = timed(&mut skopeo(&[
        &format!("docker://{target}@{digest}"),
        &format!("dir:{}", skopeo_dir.display()),
    ]))?;
    let blob_bytes = dir_bytes(&skopeo_dir)?;

    // ...and pushes it to another fresh registry.
    let reg_b = registry::TestRegistry::start();
    let (push_skopeo, _) = timed(&mut skopeo(&[
        &format!("dir:{}", skopeo_dir.display()),
        &format!("docker://{}/bench", reg_b.addr),
    ]))?;

    // cygvm pull into a fresh store.
    let (pull_cygvm, _) =
        timed(cygvm(&dir.join("second-host")).args(["pull", "--plain-http", &pinned]))?;

    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let row = |what: &str, tool: &str, took: Duration| {
        format!(
            "| {what} | {tool} | {:.1} | {:.0} | {:.0} |",
            took.as_secs_f64(),
            mib_s(blob_bytes, took),
            mib_s(image_bytes, took)
        )
    };
    let body = format!(
        "## Registry push and pull, against skopeo\n\n\
         Command: `cargo bench --bench registry` (release build; 2 cores; registry and \
         client on one host over loopback).\n\n\
         A synthetic generation: {DISK_MIB} MiB disk + {STATE_MIB} MiB migration stream \
         ({:.2} GiB of files; state.gz by cygvm's writer), {:.2} GiB of blobs in the registry \
         after zstd. Both tools move the same artifact; MiB/s are per blob byte and per \
         image byte.\n\n\
         | step | tool | s | blob MiB/s | image MiB/s |\n|---|---|---|---|---|\n{}\n{}\n{}\n{}\n\n\
         cygvm push includes compressing the disk slices (zstd level 3 on all cores); \
         skopeo pushes blobs that are already compressed. cygvm pull includes decompressing \
         each slice into place, checking both digests and fsyncing; skopeo writes the blobs \
         as they are.",
        gib(image_bytes),
        gib(blob_bytes),
        row("push", "cygvm push", push_cygvm),
        row("push", "skopeo copy dir: → docker://", push_skopeo),
        row("pull", "cygvm pull", pull_cygvm),
        row("pull", "skopeo copy docker:// → dir:", pull_skopeo),
    );
    println!("{body}");
    perfdoc::write_section("registry", &body);
    Ok(())
}
