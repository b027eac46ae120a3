//! Progress while a phase waits: the phase, the time spent and the guest's
//! last serial line. A spinner on a terminal, a plain line every 30 s
//! otherwise.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinHandle;

/// Shows progress until dropped.
pub struct PhaseProgress {
    task: JoinHandle<()>,
    bar: Option<ProgressBar>,
    phase: String,
    started: Instant,
}

/// The last non-empty line of a log, cut to fit a status line.
fn last_line(path: &PathBuf) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let tail = &text[text.len().saturating_sub(4096)..];
    String::from_utf8_lossy(tail)
        .lines()
        .rev()
        .map(|l| l.trim())
        .find(|l| !l.is_empty())
        .map(|l| l.chars().filter(|c| !c.is_control()).take(100).collect())
        .unwrap_or_default()
}

impl PhaseProgress {
    pub fn start(phase: &str, serial_log: PathBuf, quiet: bool) -> Self {
        let started = Instant::now();
        let phase = phase.to_string();
        // Events on stderr (`--json`) take the spinner's place.
        let tty = std::io::stderr().is_terminal() && !quiet && !crate::events::on_stderr();
        let bar = tty.then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{prefix}] {elapsed} {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_prefix(phase.clone());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        if !tty && !quiet {
            tracing::info!("[{phase}] started");
        }
        let task = {
            let bar = bar.clone();
            let phase = phase.clone();
            tokio::spawn(async move {
                let mut ticks = 0u64;
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    ticks += 1;
                    let line = last_line(&serial_log);
                    match &bar {
                        Some(bar) => bar.set_message(line),
                        None if !quiet && ticks.is_multiple_of(30) => tracing::info!(
                            "[{phase}] {} s; guest: {line}",
                            started.elapsed().as_secs()
                        ),
                        None => {}
                    }
                }
            })
        };
        Self {
            task,
            bar,
            phase,
            started,
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for PhaseProgress {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        tracing::debug!(
            "[{}] took {:.1} s",
            self.phase,
            self.started.elapsed().as_secs_f64()
        );
    }
}
