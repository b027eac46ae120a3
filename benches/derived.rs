//! Runs with extra packages against plain revives, in one run, through the
//! CLI on a stand-in image:
//!
//! - plain revive: `cygvm run -- echo first` (the baseline);
//! - first run with a new package set: `cygvm run --packages … -- echo
//!   first`, which makes the derived generation (revive, setup, save,
//!   revive once to verify) and then runs;
//! - second and later runs with the same set, which revive the derived
//!   generation;
//! - what a derived generation costs: its files in the image directory
//!   (overlay, state.gz, the rest) and its expanded snapshot in this host's
//!   cache (the RAM file the guest maps copy-on-write).
//!
//! Run: `cargo bench --bench derived` (writes the `derived` section of
//! docs/perf.md). Unoptimized builds skip it.

#[path = "support/perfdoc.rs"]
mod perfdoc;
#[path = "support/standin.rs"]
mod standin;

use std::time::Duration;

use anyhow::Result;
use standin::{BenchImage, allocated, median, mib, timed};

const ROUNDS: usize = 5;

fn main() {
    standin::main_of("derived", bench);
}

fn bench() -> Result<()> {
    // The expanded snapshots go to the image's own cache, so their size
    // can be read.
    let ws = BenchImage::new("bench", "512M", "\"openssh\"")?;
    let cache = ws.cache();
    ws.install()?;
    let image = ws.image();
    let run = |packages: Option<&str>| {
        let extra = packages.map_or(Vec::new(), |p| vec!["--packages", p]);
        timed(&mut ws.run_cmd(&extra, &["echo", "first"]))
    };
    let expanded = cache.join("expanded");
    let expanded_before = allocated(&expanded);

    // Warm the plain revive's expanded snapshot and the host's caches.
    run(None)?;
    let mut plain = Vec::new();
    let mut again = Vec::new();
    let (first, _) = run(Some("cygvm-example-tool"))?;
    for _ in 0..ROUNDS {
        plain.push(run(None)?.0);
        again.push(run(Some("cygvm-example-tool"))?.0);
    }
    let plain = median(plain);
    let again = median(again);

    let derived_root = image.join("gen-0001/derived");
    let derived_dir = std::fs::read_dir(&derived_root)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir() && !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .ok_or_else(|| anyhow::anyhow!("no derived generation in {}", derived_root.display()))?;
    let overlay = allocated(&derived_dir.join("disk.qcow2"));
    let state = allocated(&derived_dir.join("state.gz"));
    let total = allocated(&derived_dir);
    let parent_state = allocated(&image.join("gen-0001/state.gz"));
    let parent_disk = allocated(&image.join("gen-0001/disk.qcow2"));
    let expanded_derived = allocated(&expanded) - expanded_before;
    let entries = std::fs::read_dir(&expanded)?
        .flatten()
        .filter(|e| e.path().is_dir())
        .count();

    let ratio = |d: Duration| d.as_secs_f64() / plain.as_secs_f64();
    let doc = format!(
        "## Runs with extra packages (derived generations)\n\n\
         Command: `cargo bench --bench derived` (release build; TCG on {cores} cores; stand-in with 512 MiB of RAM). \
         Wall time of `cygvm run … -- echo first` through the CLI, controller and guest included. \
         The set is `--packages cygvm-example-tool` (two packages from the example mirror). \
         Repeated runs are the median of {ROUNDS}, plain and derived runs interleaved; the plain revive is the baseline.\n\n\
         | run | seconds | vs plain revive |\n|---|---:|---:|\n\
         | plain revive (`cygvm run -- echo first`) | {:.2} | 1.00 |\n\
         | first run with a new package set (makes the derived generation, then runs) | {:.2} | {:.2} |\n\
         | later runs with the same set (revive the derived generation) | {:.2} | {:.2} |\n\n\
         What one derived generation costs (allocated bytes):\n\n\
         | what | MiB | for comparison |\n|---|---:|---|\n\
         | disk overlay (`disk.qcow2`, backed by the parent's) | {:.1} | parent's disk {:.1} |\n\
         | memory snapshot (`state.gz`) | {:.1} | parent's {:.1} |\n\
         | the derived directory in all | {:.1} | |\n\
         | expanded snapshot in this host's cache (RAM file + device state) | {:.1} | guest RAM 512 |\n\n\
         ({entries} expanded guest snapshots in the cache: the parent's and the derived one's.) \
         A revived guest maps its RAM file copy-on-write, so a running derived generation \
         takes no more host memory than a plain revive; the page cache shares the RAM file \
         among runs of the same set.\n",
        plain.as_secs_f64(),
        first.as_secs_f64(),
        ratio(first),
        again.as_secs_f64(),
        ratio(again),
        mib(overlay),
        mib(parent_disk),
        mib(state),
        mib(parent_state),
        mib(total),
        mib(expanded_derived),
        cores = std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    println!("{doc}");
    perfdoc::write_section("derived", &doc);
    Ok(())
}
