//! Machine-readable progress for schedulers and CI: with `--json`, a job
//! (`run`, `install`, `refresh`, …) writes one JSON object per line — that
//! it started, each phase's start and end with timings, and its result — so
//! a scheduler can follow it without parsing log text. docs/events.md has
//! the schema.
//!
//! Events go to stderr, because `run` streams the guest command's stdout on
//! stdout; or to a file (`--json=FILE`). On stderr they share the stream
//! with the command's stderr and cygvm's warnings, so every event starts on
//! a line of its own even after a command's unfinished line: the command's
//! stderr goes through [`command_stderr`], which remembers where its last
//! line ended.
//!
//! One process runs one job, so the event stream is process-wide: [`enable`]
//! once, then [`phase`] and [`emit`] from anywhere; both do nothing when
//! `--json` was not given.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

/// Where events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stderr,
    File(PathBuf),
}

#[derive(Debug, thiserror::Error)]
#[error("cannot write progress events to {path}")]
pub struct EventsError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

struct Stream {
    job: &'static str,
    started: Instant,
    out: Mutex<Box<dyn Write + Send>>,
    on_stderr: bool,
    /// The exit status of the guest command, once it ended (`run`).
    command_exit: Mutex<Option<i32>>,
}

static STREAM: OnceLock<Stream> = OnceLock::new();
/// Whether stderr is at the start of a line (false after a command's stderr
/// ended without a newline).
static STDERR_AT_LINE_START: AtomicBool = AtomicBool::new(true);

/// Turns events on for this process's `job` and writes `started`. A second
/// call is ignored.
pub fn enable(job: &'static str, target: &Target) -> Result<(), EventsError> {
    let (out, on_stderr): (Box<dyn Write + Send>, bool) = match target {
        Target::Stderr => (Box::new(std::io::stderr()), true),
        Target::File(path) => (
            Box::new(File::create(path).map_err(|source| EventsError {
                path: path.clone(),
                source,
            })?),
            false,
        ),
    };
    let stream = Stream {
        job,
        started: Instant::now(),
        out: Mutex::new(out),
        on_stderr,
        command_exit: Mutex::new(None),
    };
    if STREAM.set(stream).is_ok() {
        emit(
            "started",
            json!({
                "cygvm_version": env!("CARGO_PKG_VERSION"),
                "pid": std::process::id(),
            }),
        );
    }
    Ok(())
}

/// Whether `--json` is on.
pub fn enabled() -> bool {
    STREAM.get().is_some()
}

/// Whether events go to stderr (so spinners and info logs stay off it).
pub fn on_stderr() -> bool {
    STREAM.get().is_some_and(|s| s.on_stderr)
}

/// One event as written: the common fields first, then the event's own.
#[derive(serde::Serialize)]
struct Line<'a> {
    event: &'a str,
    command: &'a str,
    time: String,
    elapsed_ms: u64,
    #[serde(flatten)]
    fields: Map<String, Value>,
}

/// Writes one event: `kind`, the job, the time, and `fields` (an object).
/// Write errors are ignored: progress never fails a job.
pub fn emit(kind: &str, fields: Value) {
    let Some(stream) = STREAM.get() else {
        return;
    };
    let event = Line {
        event: kind,
        command: stream.job,
        time: rfc3339_millis(SystemTime::now()),
        elapsed_ms: stream.started.elapsed().as_millis() as u64,
        fields: match fields {
            Value::Object(fields) => fields,
            _ => Map::new(),
        },
    };
    let Ok(mut line) = serde_json::to_string(&event) else {
        return;
    };
    line.push('\n');
    let mut out = stream.out.lock().unwrap_or_else(|e| e.into_inner());
    if stream.on_stderr && !STDERR_AT_LINE_START.swap(true, Ordering::SeqCst) {
        line.insert(0, '\n');
    }
    let _ = out.write_all(line.as_bytes()).and_then(|_| out.flush());
}

/// A phase in progress: `phase_started` now, `phase_finished` when it is
/// [`Phase::done`] (`ok: true`) or dropped on the way out of an error
/// (`ok: false`).
#[must_use = "a phase ends when it is done or dropped"]
pub struct Phase {
    name: String,
    started: Instant,
    finished: bool,
}

/// Starts phase `name`.
pub fn phase(name: &str) -> Phase {
    emit("phase_started", json!({ "phase": name }));
    Phase {
        name: name.to_string(),
        started: Instant::now(),
        finished: false,
    }
}

impl Phase {
    /// The phase succeeded.
    pub fn done(mut self) {
        self.finish(true);
    }

    fn finish(&mut self, ok: bool) {
        if self.finished {
            return;
        }
        self.finished = true;
        emit(
            "phase_finished",
            json!({
                "phase": self.name,
                "ok": ok,
                "duration_ms": self.started.elapsed().as_millis() as u64,
            }),
        );
    }
}

impl Drop for Phase {
    fn drop(&mut self) {
        self.finish(false);
    }
}

/// The guest command ended with `status`; the job's `finished` event
/// reports it as the exit status.
pub fn command_exited(status: i32) {
    let Some(stream) = STREAM.get() else {
        return;
    };
    *stream
        .command_exit
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Some(status);
    emit("command_exited", json!({ "exit_status": status }));
}

/// How a job ended, for [`finished`].
pub enum Outcome<'a> {
    /// It did its work; for `run`, the command's status is reported.
    Succeeded,
    /// cygvm itself failed (or was interrupted), with this exit status.
    Failed {
        exit_status: u8,
        error: &'a anyhow::Error,
    },
}

/// The last event: the exit status cygvm ends with and, when cygvm itself
/// failed, its error with its causes.
pub fn finished(outcome: Outcome) {
    let Some(stream) = STREAM.get() else {
        return;
    };
    let duration_ms = stream.started.elapsed().as_millis() as u64;
    let fields = match outcome {
        Outcome::Succeeded => {
            let command = *stream
                .command_exit
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            json!({
                "exit_status": command.map_or(0, |s| s.clamp(0, 255)),
                "duration_ms": duration_ms,
            })
        }
        Outcome::Failed { exit_status, error } => json!({
            "exit_status": exit_status,
            "duration_ms": duration_ms,
            "error": error.to_string(),
            "causes": error.chain().skip(1).map(|c| c.to_string()).collect::<Vec<_>>(),
        }),
    };
    emit("finished", fields);
}

/// The guest command's stderr: tokio's stderr, noting whether the last
/// byte written ended a line.
pub fn command_stderr() -> CommandStderr {
    CommandStderr(tokio::io::stderr())
}

pub struct CommandStderr(tokio::io::Stderr);

impl tokio::io::AsyncWrite for CommandStderr {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.0).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll
            && n > 0
        {
            STDERR_AT_LINE_START.store(buf[n - 1] == b'\n', Ordering::SeqCst);
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// `2026-11-30T18:28:29.123Z`.
fn rfc3339_millis(time: SystemTime) -> String {
    let millis = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_millis())
        .unwrap_or(0);
    let seconds = crate::snapshot::manifest::rfc3339_utc(time);
    format!("{}.{millis:03}Z", seconds.trim_end_matches('Z'))
}

/// Parses `--json`'s optional value: none (or `-`) is stderr, else a file.
pub fn target(value: Option<&Path>) -> Target {
    match value {
        None => Target::Stderr,
        Some(p) if p == Path::new("-") => Target::Stderr,
        Some(p) => Target::File(p.to_path_buf()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_carry_milliseconds_in_utc() {
        let t = UNIX_EPOCH + std::time::Duration::from_millis(1_796_063_309_123);
        assert_eq!(rfc3339_millis(t), "2026-11-30T18:28:29.123Z");
    }

    #[test]
    fn no_json_flag_means_stderr_and_a_value_means_a_file() {
        assert_eq!(target(None), Target::Stderr);
        assert_eq!(target(Some(Path::new("-"))), Target::Stderr);
        assert_eq!(
            target(Some(Path::new("ev.jsonl"))),
            Target::File(PathBuf::from("ev.jsonl"))
        );
    }
}
