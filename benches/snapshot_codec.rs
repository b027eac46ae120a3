//! state.gz codec against plain gzip, in one run on the same data.
//!
//! cargo bench --bench snapshot_codec
//!
//! Data: a synthetic migration stream (half random pages, half zero and
//! text-like pages), 1.4 GiB by default, like a guest with 1.4 GiB touched.
//! Set CYGVM_BENCH_MIB for a smaller run. Writes the `snapshot_codec` section of docs/perf.md.

#[path = "support/perfdoc.rs"]
mod perfdoc;
#[path = "../tests/common/synthetic.rs"]
mod synthetic;

use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cygvm::snapshot::{
    CodecOptions, MigrationWriter, StateSummary, default_threads, reader, verify,
};

const MIB: usize = 1 << 20;

/// Interpretation kept with the table; written with every run.
const NOTES: &str = "
## Reading the numbers

- Chosen: libdeflate level 1, 4 MiB members (`DEFAULT_LEVEL`, `DEFAULT_MEMBER_SIZE`).
  Levels 2–6 save at most 2 % of size for 10–30 % more time. 1, 4 and 16 MiB members
  run within noise of each other; 4 MiB keeps memory in flight small (at most
  2 × threads + 1 members) and still gives enough members to keep every core busy.
- Save is CPU-bound at roughly 150 MiB/s per core here and scales with cores. On this
  shared 2-core machine two runs of the same command took 5.0 s and 8.1 s for the
  writer, i.e. 3.3–5.6× faster than `gzip -c` at 1.02× its size.
- The end-to-end goal (save ≥ 10× faster than `migrate \"exec:gzip -c > state.gz\"`,
  which took 30 s for this much memory, partly from QEMU's 128 MiB/s cap) needs a
  save of ≤ 3 s: about 4 cores at these rates. On 2 cores expect ~5–6×.
- Revive: `verify` reads and hashes the file once (~1.5 GiB/s); the reader
  decompresses at 0.7–1.4 GiB/s on 2 cores, 4–8× faster than `gzip -dc`.
";

struct Counter(u64);
impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Runs `gzip args`, feeding `input` (from memory or a file) and counting
/// its output; returns (seconds, output bytes).
fn gzip(args: &[&str], input: Option<&[u8]>, file: Option<&Path>) -> (Duration, u64) {
    let mut cmd = Command::new("gzip");
    cmd.args(args).stdout(Stdio::piped());
    if let Some(f) = file {
        cmd.arg(f);
    }
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let start = Instant::now();
    let mut child = cmd.spawn().expect("gzip must be installed");
    let mut stdout = child.stdout.take().unwrap();
    let out = std::thread::scope(|s| {
        if let Some(data) = input {
            let mut stdin = child.stdin.take().unwrap();
            s.spawn(move || stdin.write_all(data).unwrap());
        }
        let mut counter = Counter(0);
        io::copy(&mut stdout, &mut counter).unwrap();
        counter.0
    });
    assert!(child.wait().unwrap().success(), "gzip {args:?} failed");
    (start.elapsed(), out)
}

/// Returns (time to compress and write, time to fsync and rename, summary).
fn save_timed(dir: &Path, data: &[u8], opts: CodecOptions) -> (Duration, Duration, StateSummary) {
    let path = dir.join("state.gz");
    let start = Instant::now();
    let pending = MigrationWriter::create(&path, opts)
        .unwrap()
        .save(data)
        .unwrap();
    let written = start.elapsed();
    let summary = pending.commit().unwrap();
    (written, start.elapsed() - written, summary)
}

fn save(dir: &Path, data: &[u8], opts: CodecOptions) -> (Duration, StateSummary) {
    let (w, c, s) = save_timed(dir, data, opts);
    (w + c, s)
}

fn mibs(bytes: usize, t: Duration) -> f64 {
    bytes as f64 / MIB as f64 / t.as_secs_f64()
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` does not run this.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let mib: usize = std::env::var("CYGVM_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1434);
    let threads = default_threads();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    eprintln!("generating {mib} MiB of synthetic stream");
    let data = synthetic::stream(mib * MIB, 42);
    let len = data.len();
    let mut doc = String::new();
    let mut say = |line: String| {
        println!("{line}");
        doc.push_str(&line);
        doc.push('\n');
    };

    // Level and member size, on a slice so the sweep stays short.
    let sample = &data[..len.min(256 * MIB)];
    let (g_t, g_size) = gzip(&["-c"], Some(sample), None);
    say(format!(
        "### Sweep on the first {} MiB ({threads} threads)\n",
        sample.len() / MIB
    ));
    say("| codec | member | time s | MiB/s | size vs gzip -6 |".into());
    say("|---|---|---|---|---|".into());
    say(format!(
        "| gzip -6 (1 thread) | - | {:.2} | {:.0} | 1.000 |",
        g_t.as_secs_f64(),
        mibs(sample.len(), g_t)
    ));
    let sweep = [(1, 4), (2, 4), (4, 4), (6, 4), (1, 1), (1, 16)];
    for (level, member) in sweep {
        let opts = CodecOptions {
            member_size: member * MIB,
            level,
            threads,
        };
        let (t, s) = save(dir.path(), sample, opts);
        say(format!(
            "| libdeflate {level} | {member} MiB | {:.2} | {:.0} | {:.3} |",
            t.as_secs_f64(),
            mibs(sample.len(), t),
            s.size as f64 / g_size as f64
        ));
    }

    // The whole stream at the chosen settings.
    let opts = CodecOptions::default();
    eprintln!("gzip -c on {mib} MiB (single-threaded, the old way)");
    let (gz_t, gz_size) = gzip(&["-c"], Some(&data), None);
    eprintln!("cygvm writer");
    let (w_t, c_t, summary) = save_timed(dir.path(), &data, opts);
    let path = dir.path().join("state.gz");
    let start = Instant::now();
    verify(&path, &summary).unwrap();
    let v_t = start.elapsed();
    let start = Instant::now();
    let mut sink = Counter(0);
    reader::restore_with(&path, &summary, &mut sink, &opts).unwrap();
    let r_t = start.elapsed();
    assert_eq!(sink.0, len as u64);
    let (gd_t, gd_len) = gzip(&["-dc"], None, Some(&path));
    assert_eq!(gd_len, len as u64);

    say(format!(
        "\n### Whole stream: {mib} MiB, level {}, {} MiB members, {threads} threads\n",
        opts.level,
        opts.member_size / MIB
    ));
    say("| step | time s | MiB/s | size MiB | vs gzip |".into());
    say("|---|---|---|---|---|".into());
    say(format!(
        "| save: `gzip -c` (default level, 1 thread) | {:.2} | {:.0} | {:.1} | 1.00× time, 1.000× size |",
        gz_t.as_secs_f64(),
        mibs(len, gz_t),
        gz_size as f64 / MIB as f64
    ));
    say(format!(
        "| save: cygvm writer (to page cache) | {:.2} | {:.0} | {:.1} | {:.2}× faster, {:.3}× size |",
        w_t.as_secs_f64(),
        mibs(len, w_t),
        summary.size as f64 / MIB as f64,
        gz_t.as_secs_f64() / w_t.as_secs_f64(),
        summary.size as f64 / gz_size as f64
    ));
    say(format!(
        "| save: cygvm writer + fsync and rename | {:.2} | {:.0} | | {:.2}× faster |",
        (w_t + c_t).as_secs_f64(),
        mibs(len, w_t + c_t),
        gz_t.as_secs_f64() / (w_t + c_t).as_secs_f64()
    ));
    say(format!(
        "| revive: `gzip -dc state.gz` | {:.2} | {:.0} | | 1.00× |",
        gd_t.as_secs_f64(),
        mibs(len, gd_t)
    ));
    say(format!(
        "| revive: cygvm verify (size, headers, sha256) | {:.2} | {:.0} | | |",
        v_t.as_secs_f64(),
        mibs(summary.size as usize, v_t)
    ));
    say(format!(
        "| revive: cygvm reader (CRC per member) | {:.2} | {:.0} | | {:.2}× faster |",
        r_t.as_secs_f64(),
        mibs(len, r_t),
        gd_t.as_secs_f64() / r_t.as_secs_f64()
    ));
    say(format!(
        "| revive: verify + reader | {:.2} | | | {:.2}× faster |",
        (v_t + r_t).as_secs_f64(),
        gd_t.as_secs_f64() / (v_t + r_t).as_secs_f64()
    ));

    let mut text = String::new();
    let _ = write!(
        text,
        "## state.gz codec performance\n\n\
         Produced by `cargo bench --bench snapshot_codec` (CYGVM_BENCH_MIB={mib}); \
         this section is rewritten by each run. Data: synthetic migration stream, half \
         random 4 KiB pages, half zero and text-like pages. gzip runs from memory \
         through pipes; the cygvm writer writes a real file (page cache) and fsyncs it.\n\n\
         Machine: {threads} cores, shared with other builds, so times vary between runs.\n\n{doc}{NOTES}"
    );
    perfdoc::write_section("snapshot_codec", &text);
}
