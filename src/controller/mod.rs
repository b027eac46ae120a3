//! The controller VM: its initrd (assembled from `controller-initrd/` plus
//! host programs and kernel modules), and the linux-standin guest's initrd,
//! which is built the same way from the same directory.

pub mod initrd;
pub mod kernel;

use std::path::{Path, PathBuf};

pub use initrd::{BuiltInitrd, InitrdBuilder, InitrdError};

use crate::vm::host_tools::{self, ControllerKernel, HostProgram};

/// The files of `controller-initrd/`, compiled in so an installed cygvm
/// needs no data directory.
pub mod files {
    pub const CONTROLLER_INIT: &str = include_str!("../../controller-initrd/init");
    pub const SMB_CONF_IN: &str = include_str!("../../controller-initrd/smb.conf.in");
    pub const CONTROLLER_MODULES: &str = include_str!("../../controller-initrd/controller.modules");
    pub const STANDIN_INIT: &str = include_str!("../../controller-initrd/standin-init");
    pub const STANDIN_MODULES: &str = include_str!("../../controller-initrd/standin.modules");
    pub const MOUNT_SHARES: &str = include_str!("../../controller-initrd/cygvm-mount-shares");

    /// Stand-ins of the Windows programs bootstrap.sh calls, as (name, script).
    pub const STANDIN_WINDOWS: [(&str, &str); 6] = [
        (
            "net.exe",
            include_str!("../../controller-initrd/standin/windows/net.exe"),
        ),
        (
            "netsh.exe",
            include_str!("../../controller-initrd/standin/windows/netsh.exe"),
        ),
        (
            "getmac.exe",
            include_str!("../../controller-initrd/standin/windows/getmac.exe"),
        ),
        (
            "ipconfig.exe",
            include_str!("../../controller-initrd/standin/windows/ipconfig.exe"),
        ),
        (
            "powercfg.exe",
            include_str!("../../controller-initrd/standin/windows/powercfg.exe"),
        ),
        (
            "shutdown.exe",
            include_str!("../../controller-initrd/standin/windows/shutdown.exe"),
        ),
    ];
    /// The stand-in of Cygwin's setup.
    pub const STANDIN_SETUP: &str = include_str!("../../controller-initrd/standin/cygwin/setup");
    /// Stand-ins of Cygwin programs as (package that ships it, path in the
    /// Cygwin root, script).
    pub const STANDIN_CYGWIN: [(&str, &str, &str); 6] = [
        (
            "cygwin",
            "usr/bin/cygpath",
            include_str!("../../controller-initrd/standin/cygwin/cygpath"),
        ),
        (
            "cygwin",
            "usr/bin/getent",
            include_str!("../../controller-initrd/standin/cygwin/getent"),
        ),
        (
            "cygrunsrv",
            "usr/bin/cygrunsrv",
            include_str!("../../controller-initrd/standin/cygwin/cygrunsrv"),
        ),
        (
            "openssh",
            "usr/bin/ssh-host-config",
            include_str!("../../controller-initrd/standin/cygwin/ssh-host-config"),
        ),
        (
            "openssh",
            "usr/bin/ssh-keygen",
            include_str!("../../controller-initrd/standin/cygwin/ssh-keygen"),
        ),
        (
            "openssh",
            "usr/sbin/sshd",
            include_str!("../../controller-initrd/standin/cygwin/sshd"),
        ),
    ];
}

/// Where the stand-in keeps the programs its setup stand-in installs per
/// Cygwin package (`<dir>/<package>/<path in the Cygwin root>`).
pub const STANDIN_RUNTIME: &str = "/usr/lib/cygvm-standin/runtime";

/// The line the controller prints on its console and virtio-serial port
/// once smbd serves the shares.
pub const READY_LINE: &str = "cygvm-controller: ready";
/// Prefix of the line it prints instead when a step fails.
pub const FAILED_PREFIX: &str = "cygvm-controller: failed: ";
/// Name of the controller's virtio-serial port.
pub const AGENT_PORT: &str = "cygvm.agent";

pub const DROPBEAR: HostProgram = HostProgram {
    name: "dropbear",
    package: "dropbear-bin",
};
pub const DROPBEARKEY: HostProgram = HostProgram {
    name: "dropbearkey",
    package: "dropbear-bin",
};
pub const BASH: HostProgram = HostProgram {
    name: "bash",
    package: "bash",
};
pub const DBCLIENT: HostProgram = HostProgram {
    name: "dbclient",
    package: "dropbear-bin",
};
pub const DROPBEARCONVERT: HostProgram = HostProgram {
    name: "dropbearconvert",
    package: "dropbear-bin",
};

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("{name} not found on this host; install the Debian package {package}")]
    MissingProgram {
        name: &'static str,
        package: &'static str,
    },
    #[error("no kernel for the controller VM: {0}")]
    Kernel(String),
    #[error(transparent)]
    Initrd(#[from] InitrdError),
}

/// Host programs and the kernel an initrd is assembled from.
#[derive(Debug, Clone)]
pub struct HostParts {
    pub kernel: ControllerKernel,
    pub busybox: PathBuf,
    pub smbd: PathBuf,
    pub dropbear: PathBuf,
    pub dropbearconvert: PathBuf,
    pub dbclient: PathBuf,
    pub dropbearkey: PathBuf,
    pub bash: PathBuf,
}

impl HostParts {
    /// The newest kernel under /boot and the programs found on this host.
    pub fn from_host() -> Result<Self, ControllerError> {
        let kernel = host_tools::find_kernel(Path::new("/boot"), Path::new("/lib/modules"))
            .map_err(ControllerError::Kernel)?;
        Self::with_kernel(kernel)
    }

    pub fn with_kernel(kernel: ControllerKernel) -> Result<Self, ControllerError> {
        let find = |p: HostProgram| {
            p.find().ok_or(ControllerError::MissingProgram {
                name: p.name,
                package: p.package,
            })
        };
        Ok(Self {
            kernel,
            busybox: find(host_tools::BUSYBOX)?,
            smbd: find(host_tools::SMBD)?,
            dropbear: find(DROPBEAR)?,
            dropbearconvert: find(DROPBEARCONVERT)?,
            dbclient: find(DBCLIENT)?,
            dropbearkey: find(DROPBEARKEY)?,
            bash: find(BASH)?,
        })
    }
}

/// The controller VM's initrd: busybox and smbd with their
/// libraries, virtio/9p modules, init and the smb.conf template. `agent`, when
/// given, becomes `/bin/cygvm-agent`, which init execs once ready.
pub fn controller_initrd(
    parts: &HostParts,
    agent: Option<&Path>,
) -> Result<InitrdBuilder, ControllerError> {
    let mut b = base(parts)?;
    b.add_kernel_modules(&parts.kernel, &module_names(files::CONTROLLER_MODULES))?;
    b.add_bytes("/init", files::CONTROLLER_INIT, 0o755)?;
    b.add_host_binary(&parts.smbd, "/usr/sbin/smbd")?;
    b.add_bytes("/etc/samba/smb.conf.in", files::SMB_CONF_IN, 0o644)?;
    b.add_dir("/var/lib/samba/private", 0o700)?;
    b.add_dir("/var/cache/samba", 0o755)?;
    b.add_dir("/srv", 0o755)?;
    if let Some(agent) = agent {
        b.add_host_binary(agent, "/bin/cygvm-agent")?;
    }
    Ok(b)
}

/// The linux-standin guest's initrd: busybox, dropbear, dropbearconvert, dbclient,
/// the disk/media/network/cifs modules, its init and the share helper.
pub fn standin_initrd(parts: &HostParts) -> Result<InitrdBuilder, ControllerError> {
    let mut b = base(parts)?;
    b.add_kernel_modules(&parts.kernel, &module_names(files::STANDIN_MODULES))?;
    b.add_bytes("/init", files::STANDIN_INIT, 0o755)?;
    b.add_bytes("/etc/shells", "/bin/sh\n", 0o644)?;
    b.add_bytes("/etc/shadow", "root:*:1:0:99999:7:::\n", 0o600)?;
    for (name, script) in files::STANDIN_WINDOWS {
        b.add_bytes(
            &format!("/usr/lib/cygvm-standin/windows/{name}"),
            script,
            0o755,
        )?;
    }
    b.add_bytes(
        "/usr/lib/cygvm-standin/cygwin/setup",
        files::STANDIN_SETUP,
        0o755,
    )?;
    // What the setup stand-in installs with each package: the stand-in
    // programs, and real Linux programs (with their libraries) in the
    // places Cygwin keeps them.
    let runtime = |package: &str| format!("{STANDIN_RUNTIME}/{package}");
    for (package, path, script) in files::STANDIN_CYGWIN {
        b.add_bytes(&format!("{}/{path}", runtime(package)), script, 0o755)?;
    }
    b.add_file(
        &format!("{}/usr/bin/busybox", runtime("cygwin")),
        &parts.busybox,
        0o755,
    )?;
    b.add_bytes(
        &format!("{}/usr/bin/cygvm-mount-shares", runtime("cygwin")),
        files::MOUNT_SHARES,
        0o755,
    )?;
    b.add_bytes(
        &format!("{}/etc/shells", runtime("bash")),
        "/bin/sh\n/bin/bash\n",
        0o644,
    )?;
    b.add_host_binary_under(&runtime("bash"), &parts.bash, "/usr/bin/bash")?;
    b.add_host_binary_under(&runtime("openssh"), &parts.dropbear, "/usr/sbin/dropbear")?;
    b.add_host_binary_under(
        &runtime("openssh"),
        &parts.dropbearconvert,
        "/usr/bin/dropbearconvert",
    )?;
    b.add_host_binary_under(
        &runtime("openssh"),
        &parts.dropbearkey,
        "/usr/bin/dropbearkey",
    )?;
    Ok(b)
}

/// What both VMs share: busybox and a minimal /etc.
fn base(parts: &HostParts) -> Result<InitrdBuilder, ControllerError> {
    let mut b = InitrdBuilder::new();
    b.add_busybox(&parts.busybox)?;
    for dir in ["proc", "sys", "run", "tmp", "mnt", "var/log", "root"] {
        b.add_dir(dir, 0o755)?;
    }
    b.add_dir("tmp", 0o1777)?;
    b.add_bytes(
        "/etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        0o644,
    )?;
    b.add_bytes("/etc/group", "root:x:0:\nnogroup:x:65534:\n", 0o644)?;
    b.add_bytes(
        "/etc/nsswitch.conf",
        "passwd: files\ngroup: files\nshadow: files\nhosts: files\n",
        0o644,
    )?;
    b.add_bytes("/etc/hosts", "127.0.0.1 localhost\n", 0o644)?;
    Ok(b)
}

/// Module names from a `*.modules` list: one a line, `#` comments.
pub fn module_names(list: &str) -> Vec<&str> {
    list.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .collect()
}
