//! The owner of every child process of one instance (vde_switch, QEMUs) and
//! of its run directory.
//!
//! Each child gets: its own process group, `PR_SET_PDEATHSIG(SIGKILL)` so it
//! dies even if cygvm is killed with SIGKILL, `kill_on_drop`, stdin null
//! (or a pipe the supervisor holds), stdout and stderr written straight to
//! `<run dir>/<name>.log`, and a line in the run dir's `children` record.
//!
//! Stopping a child: QMP `quit` (QEMU) or closing its stdin (vde_switch),
//! wait; SIGTERM to its group, wait; SIGKILL. [`Supervisor::run`] runs a job
//! and tears everything down afterwards — also on SIGINT/SIGTERM, which end
//! the job with [`RunError::Interrupted`]. If the supervisor is dropped
//! without finishing (a panic, an early return), its Drop kills every child.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that spawned the child exits.
//! Spawn from the main thread or a tokio runtime worker (both live as long
//! as cygvm), never from a `spawn_blocking` thread.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::process::{Child, ChildStdin, Command};
use tokio::time::Instant;

use crate::vm::host_tools::HostProgram;
use crate::vm::qemu::VmSpec;
use crate::vm::qmp::{Qmp, QmpError};
use crate::vm::rundir::{RunDir, RunDirError, log_tail};

/// Lines of a child's log quoted in an error.
pub const TAIL_LINES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("{program} is not installed; install the Debian package {package}")]
    NotInstalled {
        program: &'static str,
        package: &'static str,
    },
    #[error("cannot create the log file {}", path.display())]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {}", program.display())]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{name} ({}) exited with {status} before it was ready; last lines of {}:\n{tail}",
        program.display(), log.display()
    )]
    ExitedEarly {
        name: String,
        program: PathBuf,
        status: ExitStatus,
        log: PathBuf,
        tail: String,
    },
    #[error(
        "{name} was not ready within {waited:?}: {what}; last lines of {}:\n{tail}",
        log.display()
    )]
    NotReady {
        name: String,
        what: String,
        waited: Duration,
        log: PathBuf,
        tail: String,
    },
    #[error("{name}: QMP failed; last lines of {}:\n{tail}", log.display())]
    Qmp {
        name: String,
        log: PathBuf,
        tail: String,
        #[source]
        source: Box<QmpError>,
    },
}

/// How a [`Supervisor::run`] ended when it did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum RunError<E> {
    #[error("interrupted by {signal}; every VM was stopped{}", kept_note(kept))]
    Interrupted {
        signal: &'static str,
        kept: Option<PathBuf>,
    },
    #[error("{error}{}", kept_note(kept))]
    Failed { error: E, kept: Option<PathBuf> },
}

fn kept_note(kept: &Option<PathBuf>) -> String {
    kept.as_ref()
        .map(|p| format!(" (logs kept in {})", p.display()))
        .unwrap_or_default()
}

/// Supervisor settings.
#[derive(Debug, Clone)]
pub struct SupervisorOptions {
    /// Parent of run directories; usually [`crate::vm::rundir::default_base`].
    pub base: PathBuf,
    /// Keep the run directory and its logs when the job fails (`--keep-failed`).
    pub keep_failed: bool,
    /// Each step of stopping a child (quit, SIGTERM) waits this long.
    pub stop_grace: Duration,
}

impl Default for SupervisorOptions {
    fn default() -> Self {
        Self {
            base: crate::vm::rundir::default_base(),
            keep_failed: false,
            stop_grace: Duration::from_secs(10),
        }
    }
}

/// A supervised child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChildId(usize);

struct Supervised {
    name: String,
    program: PathBuf,
    pid: u32,
    child: Child,
    log: PathBuf,
    /// Held open for children that exit on EOF (vde_switch).
    stdin: Option<ChildStdin>,
    qmp: Option<Arc<Qmp>>,
    status: Option<ExitStatus>,
}

/// A running QEMU.
pub struct Vm {
    pub child: ChildId,
    pub name: String,
    pub qmp: Arc<Qmp>,
    pub serial_log: Option<PathBuf>,
    /// QEMU's own stdout/stderr.
    pub log: PathBuf,
}

/// Owns one instance's children and run directory.
pub struct Supervisor {
    run_dir: Option<RunDir>,
    children: Vec<Supervised>,
    options: SupervisorOptions,
}

impl Supervisor {
    /// Creates the run directory `<base>/<id>` (after cleaning stale ones).
    pub fn start(id: &str, options: SupervisorOptions) -> Result<Self, RunDirError> {
        let run_dir = RunDir::create(&options.base, id)?;
        Ok(Self {
            run_dir: Some(run_dir),
            children: Vec::new(),
            options,
        })
    }

    pub fn run_dir(&self) -> &RunDir {
        self.run_dir
            .as_ref()
            .expect("the run dir lives as long as the supervisor")
    }

    /// Starts `program` (found on the host, or an error naming its package).
    pub fn spawn(
        &mut self,
        name: &str,
        program: &HostProgram,
        args: Vec<OsString>,
    ) -> Result<ChildId, SpawnError> {
        let path = program.find().ok_or(SpawnError::NotInstalled {
            program: program.name,
            package: program.package,
        })?;
        self.spawn_path(name, &path, args, false)
    }

    /// Starts the program at `path`. With `hold_stdin`, stdin is a pipe the
    /// supervisor keeps open until the child is stopped.
    pub fn spawn_path(
        &mut self,
        name: &str,
        path: &Path,
        args: Vec<OsString>,
        hold_stdin: bool,
    ) -> Result<ChildId, SpawnError> {
        let log = self.run_dir().join(&format!("{name}.log"));
        let log_err = |source| SpawnError::Log {
            path: log.clone(),
            source,
        };
        let out: File = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(log_err)?;
        let err = out.try_clone().map_err(log_err)?;

        let mut cmd = Command::new(path);
        cmd.args(args)
            .stdin(if hold_stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .process_group(0);
        // SAFETY: getpid is async-signal-safe.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the closure calls only async-signal-safe functions
        // (prctl, getppid) and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before the prctl took effect.
                if libc::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| SpawnError::Spawn {
            program: path.to_path_buf(),
            source,
        })?;
        let pid = child.id().unwrap_or(0);
        if let Err(e) = self.run_dir().record_child(pid, name) {
            tracing::warn!("cannot record child {pid} in the run dir: {e}");
        }
        tracing::debug!(name, pid, program = %path.display(), "started");
        let stdin = child.stdin.take();
        self.children.push(Supervised {
            name: name.to_string(),
            program: path.to_path_buf(),
            pid,
            child,
            log,
            stdin,
            qmp: None,
            status: None,
        });
        Ok(ChildId(self.children.len() - 1))
    }

    /// Starts QEMU for `spec` and connects to its QMP socket by `deadline`.
    pub async fn spawn_qemu(
        &mut self,
        qemu: &Path,
        spec: &VmSpec,
        deadline: Instant,
    ) -> Result<Vm, SpawnError> {
        let id = self.spawn_path(&spec.name, qemu, spec.argv(), false)?;
        let qmp = {
            let entry = &mut self.children[id.0];
            let child = &mut entry.child;
            let exited = std::cell::Cell::new(None);
            let r = Qmp::connect_checked(&spec.qmp_socket, deadline, || {
                let st = child.try_wait().ok().flatten()?;
                exited.set(Some(st));
                Some(format!("QEMU exited with {st}"))
            })
            .await;
            match r {
                Ok(q) => Arc::new(q),
                Err(source) => {
                    // QEMU listens on QMP before it loads the kernel and
                    // media, so it may die after accepting: give it a
                    // moment to be seen exiting.
                    if exited.get().is_none()
                        && let Ok(Ok(st)) =
                            tokio::time::timeout(Duration::from_secs(2), child.wait()).await
                    {
                        exited.set(Some(st));
                    }
                    return Err(match exited.get() {
                        Some(status) => {
                            entry.status = Some(status);
                            SpawnError::ExitedEarly {
                                name: entry.name.clone(),
                                program: entry.program.clone(),
                                status,
                                log: entry.log.clone(),
                                tail: log_tail(&entry.log, TAIL_LINES),
                            }
                        }
                        None => SpawnError::Qmp {
                            name: entry.name.clone(),
                            log: entry.log.clone(),
                            tail: log_tail(&entry.log, TAIL_LINES),
                            source: Box::new(source),
                        },
                    });
                }
            }
        };
        let entry = &mut self.children[id.0];
        entry.qmp = Some(qmp.clone());
        Ok(Vm {
            child: id,
            name: spec.name.clone(),
            qmp,
            serial_log: spec.serial_log.clone(),
            log: entry.log.clone(),
        })
    }

    pub fn pid(&self, id: ChildId) -> u32 {
        self.children[id.0].pid
    }

    /// Every child's pid, in start order.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.pid).collect()
    }

    pub fn log_path(&self, id: ChildId) -> &Path {
        &self.children[id.0].log
    }

    /// The last lines of a child's log.
    pub fn log_tail(&self, id: ChildId, lines: usize) -> String {
        log_tail(&self.children[id.0].log, lines)
    }

    /// The exit status if the child has exited.
    pub fn exit_status(&mut self, id: ChildId) -> Option<ExitStatus> {
        let c = &mut self.children[id.0];
        if c.status.is_none() {
            c.status = c.child.try_wait().ok().flatten();
        }
        c.status
    }

    /// Waits for a child to exit by itself until `deadline`.
    pub async fn wait_exit(
        &mut self,
        id: ChildId,
        deadline: Instant,
    ) -> Result<ExitStatus, SpawnError> {
        let start = Instant::now();
        let c = &mut self.children[id.0];
        if let Some(st) = c.status {
            return Ok(st);
        }
        match tokio::time::timeout_at(deadline, c.child.wait()).await {
            Ok(Ok(st)) => {
                c.status = Some(st);
                Ok(st)
            }
            Ok(Err(e)) => Err(SpawnError::Spawn {
                program: c.program.clone(),
                source: e,
            }),
            Err(_) => Err(SpawnError::NotReady {
                name: c.name.clone(),
                what: "it did not exit".into(),
                waited: start.elapsed(),
                log: c.log.clone(),
                tail: log_tail(&c.log, TAIL_LINES),
            }),
        }
    }

    /// Stops one child: QMP quit or stdin EOF, then SIGTERM, then SIGKILL,
    /// each step waiting up to the stop grace period.
    pub async fn stop(&mut self, id: ChildId) -> ExitStatus {
        let grace = self.options.stop_grace;
        let run_dir = self.run_dir.as_ref();
        let c = &mut self.children[id.0];
        if let Some(st) = c.status {
            return st;
        }
        if let Some(qmp) = c.qmp.take()
            && !qmp.is_closed()
        {
            let _ = tokio::time::timeout(grace, qmp.quit()).await;
        }
        drop(c.stdin.take());
        let status = match tokio::time::timeout(grace, c.child.wait()).await {
            Ok(Ok(st)) => st,
            _ => {
                signal_group(c.pid, libc::SIGTERM);
                match tokio::time::timeout(grace, c.child.wait()).await {
                    Ok(Ok(st)) => st,
                    _ => {
                        tracing::warn!(name = %c.name, pid = c.pid, "did not stop; killing it");
                        signal_group(c.pid, libc::SIGKILL);
                        let _ = c.child.start_kill();
                        c.child.wait().await.unwrap_or_else(|_| killed_status())
                    }
                }
            }
        };
        // Grandchildren (if any) go with the group.
        signal_group(c.pid, libc::SIGKILL);
        c.status = Some(status);
        if let Some(rd) = run_dir {
            let _ = rd.forget_child(c.pid);
        }
        tracing::debug!(name = %c.name, %status, "stopped");
        status
    }

    /// Stops every child, the last started first.
    pub async fn shutdown(&mut self) {
        for i in (0..self.children.len()).rev() {
            self.stop(ChildId(i)).await;
        }
    }

    /// Stops everything and removes the run directory — or keeps it when
    /// the run failed and `keep_failed` is set. Returns the kept path.
    pub async fn finish(mut self, succeeded: bool) -> Option<PathBuf> {
        self.shutdown().await;
        self.close(succeeded)
    }

    fn close(&mut self, succeeded: bool) -> Option<PathBuf> {
        let rd = self.run_dir.take()?;
        if !succeeded && self.options.keep_failed {
            return Some(rd.keep());
        }
        let path = rd.path().to_path_buf();
        if let Err(e) = rd.remove() {
            tracing::warn!("cannot remove run directory {}: {e}", path.display());
        }
        None
    }

    /// Runs `job`, then stops every child and finishes the run directory.
    /// SIGINT or SIGTERM while the job runs drops the job, stops everything
    /// and returns [`RunError::Interrupted`].
    pub async fn run<T, E>(
        mut self,
        job: impl AsyncFnOnce(&mut Supervisor) -> Result<T, E>,
    ) -> Result<T, RunError<E>> {
        use tokio::signal::unix::{SignalKind, signal};
        let (mut int, mut term) = match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(i), Ok(t)) => (Some(i), Some(t)),
            _ => {
                tracing::warn!("cannot install signal handlers; Ctrl-C will not stop VMs cleanly");
                (None, None)
            }
        };
        let recv = async |s: &mut Option<tokio::signal::unix::Signal>| match s {
            Some(s) => s.recv().await,
            None => std::future::pending().await,
        };
        let outcome = tokio::select! {
            r = job(&mut self) => Ok(r),
            _ = recv(&mut int) => Err("SIGINT"),
            _ = recv(&mut term) => Err("SIGTERM"),
        };
        match outcome {
            Ok(Ok(v)) => {
                self.finish(true).await;
                Ok(v)
            }
            Ok(Err(error)) => {
                let kept = self.finish(false).await;
                Err(RunError::Failed { error, kept })
            }
            Err(signal) => {
                tracing::info!("{signal} received; stopping every VM");
                let kept = self.finish(false).await;
                Err(RunError::Interrupted { signal, kept })
            }
        }
    }
}

impl Drop for Supervisor {
    /// Not finished: a panic or an early return. Kill everything now.
    fn drop(&mut self) {
        if self.run_dir.is_none() {
            return;
        }
        for c in &mut self.children {
            if c.status.is_none() {
                signal_group(c.pid, libc::SIGKILL);
                let _ = c.child.start_kill();
            }
        }
        // Reap them so nothing holds the run dir's sockets when it goes.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        for c in &mut self.children {
            while c.status.is_none() && std::time::Instant::now() < deadline {
                match c.child.try_wait() {
                    Ok(Some(st)) => c.status = Some(st),
                    Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                    Err(_) => break,
                }
            }
        }
        self.close(false);
    }
}

fn signal_group(pid: u32, sig: libc::c_int) {
    if pid == 0 {
        return;
    }
    // SAFETY: kill(2) on the child's own process group (it leads it).
    unsafe {
        libc::kill(-(pid as i32), sig);
    }
}

fn killed_status() -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    ExitStatus::from_raw(libc::SIGKILL)
}
