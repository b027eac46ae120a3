//! The private network: one `vde_switch` per instance, its socket directory
//! in the run dir, no uplink and no tap. VMs plug in with
//! `-netdev vde,sock=<dir>`; nothing leaves the switch.
//!
//! vde_switch reads management commands from stdin and exits at EOF (there
//! is no option to turn that off in vde2 2.3), so the supervisor keeps a
//! pipe to its stdin open; closing it is the switch's clean shutdown, and if
//! cygvm dies the pipe closes too.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use crate::vm::host_tools::VDE_SWITCH;
use crate::vm::rundir::log_tail;
use crate::vm::supervisor::{ChildId, SpawnError, Supervisor, TAIL_LINES};
use crate::vm::wait::{Check, WaitError, wait_until};

/// A running switch.
#[derive(Debug, Clone)]
pub struct VdeSwitch {
    pub child: ChildId,
    /// The socket directory (`-s`), what QEMU's `sock=` takes.
    pub dir: PathBuf,
    /// The management socket (`-M`), for `vdeterm`/`unixterm` when debugging.
    pub mgmt: PathBuf,
}

impl VdeSwitch {
    /// Starts `vde_switch` in the supervisor's run dir and waits until its
    /// control socket exists.
    pub async fn start(sup: &mut Supervisor, deadline: Instant) -> Result<Self, SpawnError> {
        let program = VDE_SWITCH.find().ok_or(SpawnError::NotInstalled {
            program: VDE_SWITCH.name,
            package: VDE_SWITCH.package,
        })?;
        let dir = sup.run_dir().join("switch");
        let mgmt = sup.run_dir().join("switch.mgmt");
        let args = vec![
            "--sock".into(),
            dir.clone().into_os_string(),
            "--mgmt".into(),
            mgmt.clone().into_os_string(),
            "--dirmode".into(),
            "0700".into(),
        ];
        let child = sup.spawn_path("vde_switch", &program, args, true)?;
        let ctl = dir.join("ctl");
        let log = sup.log_path(child).to_path_buf();
        let start = Instant::now();
        let ready = wait_until(
            deadline,
            Duration::from_millis(10),
            || {
                let exited = sup.exit_status(child);
                let up = ctl.exists();
                async move {
                    match (up, exited) {
                        (true, _) => Check::Ready(()),
                        (false, Some(st)) => Check::Failed(st),
                        (false, None) => Check::NotYet,
                    }
                }
            },
            |_| {},
        )
        .await;
        match ready {
            Ok(()) => Ok(Self { child, dir, mgmt }),
            Err(WaitError::Failed(status)) => Err(SpawnError::ExitedEarly {
                name: "vde_switch".into(),
                program,
                status,
                tail: log_tail(&log, TAIL_LINES),
                log,
            }),
            Err(WaitError::TimedOut { .. }) => Err(SpawnError::NotReady {
                name: "vde_switch".into(),
                what: format!("{} did not appear", ctl.display()),
                waited: start.elapsed(),
                tail: log_tail(&log, TAIL_LINES),
                log,
            }),
        }
    }

    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }
}
