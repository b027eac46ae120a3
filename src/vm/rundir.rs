//! The per-instance run directory: `$XDG_RUNTIME_DIR/cygvm/<id>` (else
//! `<temp>/cygvm-<uid>/<id>`), mode 0700. It holds the sockets, the logs,
//! a `lock` file flocked for the instance's whole life, a `pid` file and a
//! `children` file listing every child process started for it.
//!
//! A run directory whose lock nobody holds belongs to a cygvm that was
//! killed: the next start kills the children it recorded that still run
//! and removes it. One marked `kept` (logs of a failed run, kept on request)
//! is left for the user.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const LOCK: &str = "lock";
const PID: &str = "pid";
const CHILDREN: &str = "children";
const KEPT: &str = "kept";
/// Unix socket paths are limited to 107 bytes; the longest one cygvm makes
/// inside a run dir is shorter than this.
const LONGEST_SOCKET_SUFFIX: usize = 32;
const SUN_PATH_MAX: usize = 107;

#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error("cannot create the run directory {}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{} is not owned by you or is not a private directory; remove it or set XDG_RUNTIME_DIR",
        path.display()
    )]
    NotPrivate { path: PathBuf },
    #[error("run directory {} is in use by another cygvm (its lock is held)", path.display())]
    InUse { path: PathBuf },
    #[error(
        "run directory {} is too long for unix sockets ({len} bytes); set XDG_RUNTIME_DIR or TMPDIR to a shorter path",
        path.display()
    )]
    PathTooLong { path: PathBuf, len: usize },
    #[error("instance id {id:?} must be letters, digits, '-', '_' or '.'")]
    BadId { id: String },
}

/// Where run directories live for this user.
pub fn default_base() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() && dir.is_dir() => dir.join("cygvm"),
        // SAFETY: getuid cannot fail.
        _ => std::env::temp_dir().join(format!("cygvm-{}", unsafe { libc::getuid() })),
    }
}

/// A live run directory. Dropping it releases the lock and leaves the
/// directory; call [`RunDir::remove`] or [`RunDir::keep`] to finish.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    _lock: File,
}

impl RunDir {
    /// Creates `<base>/<id>`, first cleaning up stale run directories under
    /// `base`.
    pub fn create(base: &Path, id: &str) -> Result<Self, RunDirError> {
        if id.is_empty()
            || id.starts_with('.')
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(RunDirError::BadId { id: id.to_string() });
        }
        let create_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RunDirError::Create { path, source }
        };
        let path = base.join(id);
        let len = path.as_os_str().len() + LONGEST_SOCKET_SUFFIX;
        if len > SUN_PATH_MAX {
            return Err(RunDirError::PathTooLong { path, len });
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(base)
            .map_err(create_err(base))?;
        let meta = fs::symlink_metadata(base).map_err(create_err(base))?;
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
            return Err(RunDirError::NotPrivate {
                path: base.to_path_buf(),
            });
        }
        for stale in clean_stale(base) {
            tracing::info!("removed stale run directory {}", stale.display());
        }
        if path.exists() {
            return Err(RunDirError::InUse { path });
        }

        // Built under a hidden name and renamed, so no one ever sees the
        // directory without its lock held.
        let staging = base.join(format!(".{id}.new-{}", std::process::id()));
        let _ = fs::remove_dir_all(&staging);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&staging)
            .map_err(create_err(&staging))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(staging.join(LOCK))
            .map_err(create_err(&staging))?;
        if !try_lock(&lock) {
            return Err(RunDirError::InUse { path: staging });
        }
        fs::write(staging.join(PID), format!("{}\n", std::process::id()))
            .map_err(create_err(&staging))?;
        fs::write(staging.join(CHILDREN), "").map_err(create_err(&staging))?;
        fs::rename(&staging, &path).map_err(|source| {
            let _ = fs::remove_dir_all(&staging);
            if source.kind() == io::ErrorKind::DirectoryNotEmpty
                || source.raw_os_error() == Some(libc::EEXIST)
            {
                RunDirError::InUse { path: path.clone() }
            } else {
                RunDirError::Create {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        Ok(Self { path, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A file or socket path inside the run directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Notes a child process so a later start can kill it if this cygvm is
    /// killed before it could.
    pub fn record_child(&self, pid: u32, name: &str) -> io::Result<()> {
        let start = process_start_time(pid).unwrap_or(0);
        let mut f = OpenOptions::new()
            .append(true)
            .open(self.path.join(CHILDREN))?;
        writeln!(f, "{pid} {start} {name}")
    }

    /// Drops a child that has exited from the record.
    pub fn forget_child(&self, pid: u32) -> io::Result<()> {
        let file = self.path.join(CHILDREN);
        let text = fs::read_to_string(&file)?;
        let kept: String = text
            .lines()
            .filter(|l| l.split(' ').next() != Some(&pid.to_string()))
            .map(|l| format!("{l}\n"))
            .collect();
        fs::write(&file, kept)
    }

    /// Removes the directory and everything in it.
    pub fn remove(self) -> io::Result<()> {
        fs::remove_dir_all(&self.path)
    }

    /// Leaves the directory (with its logs) for the user and returns its
    /// path; later starts do not clean it up.
    pub fn keep(self) -> PathBuf {
        let _ = fs::write(self.path.join(KEPT), "");
        self.path.clone()
    }
}

fn try_lock(f: &File) -> bool {
    // SAFETY: flock on an fd we own.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Cleans up every stale run directory under `base` and returns their paths.
pub fn clean_stale(base: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(base) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let dir = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(60));
        let staging = entry.file_name().to_string_lossy().starts_with('.');
        // A young staging dir belongs to a cygvm starting now, which creates
        // its lock file a moment before it takes the lock.
        if staging && !old {
            continue;
        }
        let lock = match File::open(dir.join(LOCK)) {
            Ok(f) => f,
            // Not ours, or a staging dir of a process that died before
            // locking.
            Err(_) => {
                if staging {
                    let _ = fs::remove_dir_all(&dir);
                    removed.push(dir);
                }
                continue;
            }
        };
        if !try_lock(&lock) {
            continue; // alive
        }
        kill_recorded_children(&dir);
        if dir.join(KEPT).exists() {
            continue;
        }
        if fs::remove_dir_all(&dir).is_ok() {
            removed.push(dir);
        }
    }
    removed
}

/// Kills the recorded children of a dead instance that still run (same pid
/// *and* same start time, so a reused pid is never hit), and waits briefly
/// for them to go.
fn kill_recorded_children(dir: &Path) {
    let Ok(text) = fs::read_to_string(dir.join(CHILDREN)) else {
        return;
    };
    let mut killed = Vec::new();
    for line in text.lines() {
        let mut f = line.split(' ');
        let (Some(Ok(pid)), Some(Ok(start))) = (
            f.next().map(str::parse::<u32>),
            f.next().map(str::parse::<u64>),
        ) else {
            continue;
        };
        if process_start_time(pid) == Some(start) {
            tracing::info!("killing leftover child {pid} of {}", dir.display());
            // SAFETY: plain kill(2); children lead their own process group.
            unsafe {
                libc::kill(-(pid as i32), libc::SIGKILL);
                libc::kill(pid as i32, libc::SIGKILL);
            }
            killed.push((pid, start));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while killed.iter().any(|&(p, s)| process_alive(p, s)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn process_alive(pid: u32, start: u64) -> bool {
    process_start_time(pid) == Some(start) && !is_zombie(pid)
}

/// Whether `pid` is a zombie (exited, not yet reaped).
pub fn is_zombie(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().map(String::as_str) == Some("Z"))
}

/// Field 22 of /proc/<pid>/stat: start time in clock ticks since boot.
pub fn process_start_time(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// /proc/<pid>/stat fields after the command name (field 3 onwards).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_string).collect())
}

/// The last `n` lines of a log file (at most its last 64 KiB), for error
/// messages. Empty when the file is missing.
pub fn log_tail(path: &Path, n: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;

    #[test]
    fn created_private_locked_and_removed() {
        let base = tempfile::tempdir().unwrap();
        let base = base.path().join("cygvm");
        let rd = RunDir::create(&base, "img-1").unwrap();
        let mode = fs::metadata(rd.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(
            fs::read_to_string(rd.join("pid")).unwrap().trim(),
            std::process::id().to_string()
        );
        // Locked: a second instance with the same id is refused and a
        // stale scan leaves it alone.
        assert!(matches!(
            RunDir::create(&base, "img-1"),
            Err(RunDirError::InUse { .. })
        ));
        assert!(clean_stale(&base).is_empty());
        let path = rd.path().to_path_buf();
        rd.remove().unwrap();
        assert!(!path.exists());
    }

    /// cygvms starting at the same moment under one XDG_RUNTIME_DIR each
    /// get their run directory: none cleans up another's while it starts.
    #[test]
    fn instances_starting_at_once_keep_their_run_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("cygvm");
        let failures = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for thread in 0..8 {
                let (base, failures) = (&base, &failures);
                s.spawn(move || {
                    for n in 0..100 {
                        let result = RunDir::create(base, &format!("run-{thread}-{n}"))
                            .map_err(|e| e.to_string())
                            .and_then(|dir| dir.remove().map_err(|e| e.to_string()));
                        if let Err(e) = result {
                            failures.lock().unwrap().push(e);
                        }
                    }
                });
            }
        });
        let failures = failures.into_inner().unwrap();
        assert!(
            failures.is_empty(),
            "{} starts failed: {failures:?}",
            failures.len()
        );
    }

    #[test]
    fn stale_dir_is_cleaned_and_its_children_killed() {
        let base = tempfile::tempdir().unwrap();
        let base = base.path().join("cygvm");
        let rd = RunDir::create(&base, "dead").unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("1000")
            .process_group(0)
            .spawn()
            .unwrap();
        rd.record_child(child.id(), "sleep").unwrap();
        let path = rd.path().to_path_buf();
        drop(rd); // as if cygvm had been killed: lock released, dir left

        let _next = RunDir::create(&base, "next").unwrap();
        assert!(!path.exists(), "stale run dir was not removed");
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn kept_dir_survives_a_later_start() {
        let base = tempfile::tempdir().unwrap();
        let base = base.path().join("cygvm");
        let kept = RunDir::create(&base, "failed").unwrap().keep();
        let _next = RunDir::create(&base, "next").unwrap();
        assert!(kept.join("kept").exists());
    }

    #[test]
    fn tail_of_a_log() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("log");
        fs::write(&f, "a\nb\nc\nd\n").unwrap();
        assert_eq!(log_tail(&f, 2), "c\nd");
        assert_eq!(log_tail(&f, 10), "a\nb\nc\nd");
        assert_eq!(log_tail(&dir.path().join("missing"), 3), "");
    }

    #[test]
    fn long_base_is_refused_with_advice() {
        let long = PathBuf::from(format!("/tmp/{}", "x".repeat(90)));
        let err = RunDir::create(&long, "id").unwrap_err();
        assert!(err.to_string().contains("XDG_RUNTIME_DIR"), "{err}");
    }
}
