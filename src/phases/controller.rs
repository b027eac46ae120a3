//! The controller VM of an instance: revived from a snapshot kept in the
//! host's cache, then handed the run's settings.
//!
//! The controller holds nothing of a run until the host sends the run's
//! settings (`configure`: the shares to mount, the Samba password, how to
//! reach the guest). So it is booted once per host and set of inputs, saved
//! right after its agent first answers (no 9p share mounted, which QEMU
//! could not migrate, and no secret in it), and every run revives that
//! snapshot: its RAM file mapped copy-on-write, only its device state loaded.
//! A snapshot that is missing, damaged or was made for other inputs is
//! rebuilt under a lock, once however many runs start together; if it
//! cannot be built, the run boots the controller instead and says why.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use tokio::time::Instant;

use crate::agent::client::AgentClient;
use crate::agent::protocol::{AgentConfig, RunSettings, ShareMount};
use crate::config::Config;
use crate::controller;
use crate::guest::devices::{controller_cmdline_extra, device_set};
use crate::phases::expanded::lock_then_open;
use crate::phases::instance::{CONTROLLER_MAC, HostArtifacts, ShareDirs, start_vm};
use crate::phases::migration::{load_devices, save_devices};
use crate::secrets::ImageSecrets;
use crate::snapshot::mapped::{self, Builder, Mapped, MappedError};
use crate::vm::qemu::{DirectBoot, MemoryFileMode, Nic, SerialPort, Share, VmSpec};
use crate::vm::rundir::log_tail;
use crate::vm::supervisor::{Supervisor, Vm};
use crate::vm::vde::VdeSwitch;

const CONTROLLER_MEMORY_MIB: u64 = 512;
/// A booting controller is ready in 3-13 s under TCG; leave room for a
/// loaded host.
const CONTROLLER_DEADLINE: Duration = Duration::from_secs(120);
/// A revived one answers at once.
const REVIVED_DEADLINE: Duration = Duration::from_secs(30);
const TAIL: usize = 15;

/// The controller's QEMU spec; `name` sets its socket and log names.
fn controller_spec(
    config: &Config,
    art: &HostArtifacts,
    run_dir: &Path,
    name: &str,
    switch: &Path,
    shares: &ShareDirs,
) -> VmSpec {
    let net = &config.network;
    let mut spec = VmSpec::new(
        name,
        crate::vm::qemu::Machine::Pc,
        art.accel,
        &run_dir.join(format!("{name}.qmp")),
    );
    spec.memory_mib = CONTROLLER_MEMORY_MIB;
    spec.cpus = 1;
    spec.serial_log = Some(run_dir.join(format!("{name}.serial.log")));
    spec.direct_boot = Some(DirectBoot {
        kernel: art.kernel.clone(),
        initrd: Some(art.controller_initrd.clone()),
        append: format!(
            "console=ttyS0 quiet cygvm.addr={}/{} cygvm.guest={} cygvm.user={} {}",
            net.controller,
            net.guest.prefix,
            net.guest.addr,
            config.guest.admin_user.0,
            controller_cmdline_extra(&device_set(config.guest.version))
        )
        .trim_end()
        .to_string(),
    });
    spec.nics.push(Nic {
        model: crate::vm::qemu::NicModel::VirtioNet,
        mac: CONTROLLER_MAC.into(),
        switch: switch.to_path_buf(),
    });
    spec.serial_ports.push(SerialPort {
        name: controller::AGENT_PORT.into(),
        socket: run_dir.join(format!("{name}.agent.sock")),
    });
    spec.shares = vec![
        Share {
            tag: "inputs".into(),
            path: shares.inputs.clone(),
            read_only: true,
        },
        Share {
            tag: "outputs".into(),
            path: shares.outputs.clone(),
            read_only: false,
        },
    ];
    spec
}

/// The controller's serial log and the socket of its agent's port, as
/// its spec names them.
fn agent_paths(spec: &VmSpec) -> (PathBuf, PathBuf) {
    (
        spec.serial_log.clone().unwrap_or_default(),
        spec.serial_ports
            .first()
            .map(|p| p.socket.clone())
            .unwrap_or_default(),
    )
}

/// A controller whose agent did not answer, with its console's last lines.
fn not_ready(e: &dyn std::fmt::Display, serial_log: &Path) -> anyhow::Error {
    anyhow!(
        "the controller VM did not get ready: {e}\n--- controller serial log ({}) ---\n{}",
        serial_log.display(),
        log_tail(serial_log, TAIL)
    )
}

/// The run's settings for the controller.
fn run_settings(config: &Config, secrets: &ImageSecrets) -> Result<RunSettings> {
    Ok(RunSettings {
        agent: AgentConfig {
            guest: format!("{}:22", config.network.guest.addr),
            user: config.guest.admin_user.0.clone(),
            client_key: secrets
                .client_key
                .to_openssh(ssh_key::LineEnding::LF)
                .map_err(|e| anyhow!("cannot encode the client key: {e}"))?
                .to_string(),
            host_key: secrets.host_public_key(),
        },
        samba_password: secrets.samba_password.clone(),
        shares: vec![
            ShareMount {
                tag: "inputs".into(),
                read_only: true,
            },
            ShareMount {
                tag: "outputs".into(),
                read_only: false,
            },
        ],
    })
}

/// A controller VM whose agent is not connected yet: the guest can start
/// meanwhile.
pub struct ControllerStarting {
    pub vm: Vm,
    pub serial_log: PathBuf,
    agent_socket: PathBuf,
    settings: RunSettings,
    revived: bool,
}

/// A started controller, configured for the run, with its agent connection.
pub struct Controller {
    pub vm: Vm,
    pub agent: AgentClient,
    pub serial_log: PathBuf,
}

/// Starts the controller VM: revived from the host's cached snapshot
/// (made first if needed), or booted when no snapshot can be had.
pub async fn spawn_controller(
    sup: &mut Supervisor,
    config: &Config,
    art: &HostArtifacts,
    secrets: &ImageSecrets,
    switch: &VdeSwitch,
    shares: &ShareDirs,
) -> Result<ControllerStarting> {
    spawn_controller_with(sup, config, art, secrets, switch, shares, true).await
}

/// Like [`spawn_controller`]; with `revive` false the controller boots
/// (what benchmarks compare against).
pub async fn spawn_controller_with(
    sup: &mut Supervisor,
    config: &Config,
    art: &HostArtifacts,
    secrets: &ImageSecrets,
    switch: &VdeSwitch,
    shares: &ShareDirs,
    revive: bool,
) -> Result<ControllerStarting> {
    let run_dir = sup.run_dir().path().to_path_buf();
    let settings = run_settings(config, secrets)?;
    let snapshot = if revive {
        match cached_snapshot(sup, config, art, switch).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("booting the controller VM instead of reviving it: {e:#}");
                None
            }
        }
    } else {
        None
    };
    let mut spec = controller_spec(config, art, &run_dir, "controller", &switch.dir, shares);
    if let Some(snap) = &snapshot {
        spec.incoming_defer = true;
        spec.set_memory_file(&snap.ram(), MemoryFileMode::Private);
    }
    let vm = start_vm(sup, art, &spec, "the controller VM").await?;
    if let Some(snap) = &snapshot {
        load_devices(&vm, &snap.devices())
            .await
            .context("cannot revive the controller VM")?;
    }
    let (serial_log, agent_socket) = agent_paths(&spec);
    Ok(ControllerStarting {
        vm,
        serial_log,
        agent_socket,
        settings,
        revived: snapshot.is_some(),
    })
}

impl ControllerStarting {
    /// Waits for the agent, then sends the run's settings: it mounts the
    /// shares and sets the Samba password.
    pub async fn connect(self) -> Result<Controller> {
        let deadline = if self.revived {
            REVIVED_DEADLINE
        } else {
            CONTROLLER_DEADLINE
        };
        let mut agent = AgentClient::connect(&self.agent_socket, Instant::now() + deadline)
            .await
            .map_err(|e| not_ready(&e, &self.serial_log))?;
        agent
            .configure(&self.settings)
            .await
            .map_err(|e| not_ready(&e, &self.serial_log))?;
        tracing::info!(
            "controller ready ({}, {})",
            agent.agent,
            if self.revived { "revived" } else { "booted" }
        );
        Ok(Controller {
            vm: self.vm,
            agent,
            serial_log: self.serial_log,
        })
    }
}

/// Where this host keeps its controller snapshots.
pub fn cache_dir() -> PathBuf {
    crate::cache::root().join("controller")
}

/// The controller snapshot for this config and host: from the cache when
/// it is there and sound, otherwise built now (under its lock).
async fn cached_snapshot(
    sup: &mut Supervisor,
    config: &Config,
    art: &HostArtifacts,
    switch: &VdeSwitch,
) -> Result<Mapped> {
    let run_dir = sup.run_dir().path().to_path_buf();
    let qemu_version = art.qemu_version()?;
    // The device set and kernel command line with placeholder paths: what
    // the snapshot depends on besides the files it boots.
    let probe = controller_spec(
        config,
        art,
        Path::new("/run"),
        "controller",
        Path::new("/run"),
        &ShareDirs {
            inputs: "/run".into(),
            outputs: "/run".into(),
        },
    );
    let key = mapped::key_of(&[
        ("qemu", &qemu_version),
        ("kernel", &file_identity(&art.kernel)?),
        ("initrd", &file_identity(&art.controller_initrd)?),
        ("memory", &probe.memory_mib.to_string()),
        ("devices", &probe.device_argv().join("\n")),
    ]);
    let dir = cache_dir().join(&key[..16]);
    match Mapped::open(&dir, &key, &qemu_version) {
        Ok(m) => {
            mapped::touch(&dir);
            return Ok(m);
        }
        Err(MappedError::Missing { .. }) => {}
        Err(e) => tracing::warn!("{e}; making it again"),
    }
    let (_lock, made) = lock_then_open(&dir, &key, &qemu_version).await?;
    if let Some(m) = made {
        return Ok(m);
    }
    let started = std::time::Instant::now();
    eprintln!(
        "cygvm: making the controller VM's snapshot for this host (once per cygvm, kernel and QEMU version; later runs revive it)"
    );
    tracing::info!("the controller VM's snapshot goes to {}", dir.display());
    let builder = Builder::new(&dir, CONTROLLER_MEMORY_MIB << 20)?;
    let empty = run_dir.join("controller-snapshot.empty");
    std::fs::create_dir_all(&empty)?;
    let name = "controller-snapshot";
    let mut spec = controller_spec(
        config,
        art,
        &run_dir,
        name,
        &switch.dir,
        &ShareDirs {
            inputs: empty.clone(),
            outputs: empty,
        },
    );
    spec.set_memory_file(&builder.ram(), MemoryFileMode::Shared);
    let vm = start_vm(sup, art, &spec, "the controller VM").await?;
    let (serial, socket) = agent_paths(&spec);
    let agent = AgentClient::connect(&socket, Instant::now() + CONTROLLER_DEADLINE)
        .await
        .map_err(|e| not_ready(&e, &serial))?;
    save_devices(&vm, &builder.devices()).await?;
    drop(agent);
    sup.stop(vm.child).await;
    let made = builder.commit(&key, "controller VM", None, &qemu_version)?;
    tracing::info!(
        "controller snapshot made in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for (old, _) in mapped::prune(&cache_dir(), &made.dir, mapped::UNUSED_AGE, |_, _| false) {
        tracing::info!("removed the unused controller snapshot {}", old.display());
    }
    Ok(made)
}

/// A file's path and size: the kernel and the initrd are named by the hash
/// of their contents in the cache, so this tells one from another.
fn file_identity(path: &Path) -> Result<String> {
    let md = std::fs::metadata(path).with_context(|| format!("cannot stat {}", path.display()))?;
    Ok(format!("{} {}", path.display(), md.len()))
}
