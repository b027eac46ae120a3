//! What the benchmarks that drive a stand-in image through the CLI share:
//! a throwaway directory (under the build's scratch space) with a stand-in
//! `cygvm.toml` and a cache of its own, timed commands, medians, sizes.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// A benchmark's `main`: skipped in an unoptimized build (`cargo test`
/// builds and runs benches), exit status 1 when it fails.
pub fn main_of(name: &str, bench: fn() -> Result<()>) {
    if cfg!(debug_assertions) {
        println!(
            "{name}: skipped in an unoptimized build (cargo test); run `cargo bench --bench {name}`"
        );
        return;
    }
    if let Err(e) = bench() {
        eprintln!("{name} failed: {e:#}");
        std::process::exit(1);
    }
}

/// A stand-in image's directory: its `cygvm.toml`, `images/NAME` once
/// installed, and `cache/` (the XDG cache of every command run here, so
/// the snapshots a benchmark makes are its own and can be measured).
pub struct BenchImage {
    _tmp: tempfile::TempDir,
    pub dir: PathBuf,
    name: String,
}

impl BenchImage {
    /// A stand-in `cygvm.toml` with `memory` and the Cygwin `packages`
    /// (TOML array items); nothing installed yet.
    pub fn new(name: &str, memory: &str, packages: &str) -> Result<Self> {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("cygvm-bench-{name}-"))
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
        let dir = tmp.path().to_path_buf();
        let mirror = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/standin/mirror");
        std::fs::write(
            dir.join("cygvm.toml"),
            format!(
                "[image]\nname = \"{name}\"\ndir = \"images\"\nkeep = 1\n\n[guest]\nos = \"linux-standin\"\n\
                 memory = \"{memory}\"\ncpus = 1\ndisk = \"1G\"\n\n[cygwin]\nmirror = \"{}\"\n\
                 packages = [{packages}]\n\n[provision]\ncommands = [\"echo provisioned > ~/provisioned\"]\n",
                mirror.display()
            ),
        )?;
        Ok(Self {
            _tmp: tmp,
            dir,
            name: name.to_string(),
        })
    }

    /// `cygvm install`; its wall time.
    pub fn install(&self) -> Result<Duration> {
        Ok(timed(self.cygvm().args(["install", "--config", "cygvm.toml"]))?.0)
    }

    pub fn image(&self) -> PathBuf {
        self.dir.join("images").join(&self.name)
    }

    /// `$XDG_CACHE_HOME/cygvm` of the commands run here.
    pub fn cache(&self) -> PathBuf {
        self.dir.join("cache/cygvm")
    }

    pub fn cygvm(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cygvm"));
        cmd.current_dir(&self.dir)
            .env("XDG_CACHE_HOME", self.dir.join("cache"))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        cmd
    }

    /// `cygvm run [extra] --image IMAGE -- command`.
    pub fn run_cmd(&self, extra: &[&str], command: &[&str]) -> Command {
        let mut cmd = self.cygvm();
        cmd.arg("run")
            .args(extra)
            .arg("--image")
            .arg(self.image())
            .arg("--")
            .args(command);
        cmd
    }
}

/// Runs a command to its end; its wall time and stdout. An error with its
/// stderr when it fails.
pub fn timed(cmd: &mut Command) -> Result<(Duration, String)> {
    let started = Instant::now();
    let out = cmd.stdin(Stdio::null()).output()?;
    let took = started.elapsed();
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok((took, String::from_utf8_lossy(&out.stdout).into_owned()))
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Bytes allocated for a file, or for everything under a directory (RAM
/// files and overlays are sparse).
pub fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => cygvm::fsutil::allocated_bytes(path),
        Ok(md) => md.blocks() * 512,
        Err(_) => 0,
    }
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}
