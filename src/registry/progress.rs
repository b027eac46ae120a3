//! Progress of blob transfers: a bar per blob on a terminal, a line per
//! blob otherwise (on stderr; stdout carries the result).

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

pub struct TransferProgress {
    multi: Option<MultiProgress>,
    lines: bool,
}

impl TransferProgress {
    /// `lines`: print a line per blob when stderr is not a terminal.
    pub fn new(lines: bool) -> Self {
        Self {
            multi: std::io::stderr().is_terminal().then(MultiProgress::new),
            lines,
        }
    }

    pub fn blob(&self, label: String, total: u64) -> BlobProgress {
        let bar = self.multi.as_ref().map(|m| {
            let bar = m.add(ProgressBar::new(total));
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:40!} {bar:30} {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} {wide_msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_prefix(label.clone());
            bar
        });
        BlobProgress {
            bar,
            label,
            started: Instant::now(),
            lines: self.lines && self.multi.is_none(),
        }
    }
}

pub struct BlobProgress {
    bar: Option<ProgressBar>,
    label: String,
    started: Instant,
    lines: bool,
}

impl BlobProgress {
    pub fn set_message(&self, msg: &str) {
        if let Some(b) = &self.bar {
            b.set_message(msg.to_string());
        }
    }

    /// Starts over with a new total, e.g. from compressing to sending.
    pub fn restart(&self, total: u64, msg: &str) {
        if let Some(b) = &self.bar {
            b.set_length(total);
            b.set_position(0);
            b.set_message(msg.to_string());
        }
    }

    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// Ends the blob with `what` happened to it, e.g. "pushed 210 MiB".
    pub fn finish(&self, what: &str) {
        let secs = self.started.elapsed().as_secs_f64();
        match &self.bar {
            Some(b) => b.finish_with_message(format!("{what} in {secs:.1} s")),
            None if self.lines => eprintln!("{} {what} in {secs:.1} s", self.label),
            None => {}
        }
    }
}

/// Bytes as people read them: `1.5 GiB`, `210.0 MiB`, `512 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}
