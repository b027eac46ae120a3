//! A single-node Slurm cluster of real daemons for a test: munged,
//! slurmctld and slurmd (Debian's munge and slurm-wlm), started by hand
//! without systemd, each with its socket, key, state, spool and logs in one
//! temporary directory and its ports on free loopback ports. The commands
//! (sbatch, squeue, scontrol) find it through SLURM_CONF.
//!
//! Dropping the cluster cancels its jobs, stops the daemons (SIGTERM, then
//! SIGKILL) and kills whatever still carries its SLURM_CONF in its
//! environment — job steps, their cygvm and their VMs — so nothing outlives
//! the test, whichever way it ends.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The programs the cluster needs, by the package that ships them.
const PROGRAMS: &[(&str, &str)] = &[
    ("munged", "munge"),
    ("mungekey", "munge"),
    ("munge", "munge"),
    ("slurmctld", "slurmctld"),
    ("slurmd", "slurmd"),
    ("sbatch", "slurm-client"),
    ("squeue", "slurm-client"),
    ("scontrol", "slurm-client"),
    ("scancel", "slurm-client"),
];

/// How the cluster is laid out.
pub struct ClusterSpec {
    /// Count of the `vmslot` generic resource on the node.
    pub vm_slots: u32,
    /// CPUs the node declares (more than the host has, so that the VM
    /// slots, not the CPUs, limit how many jobs run at once).
    pub cpus: u32,
}

pub struct Cluster {
    dir: tempfile::TempDir,
    pub conf: PathBuf,
    pub node: String,
    /// Completion records (jobcomp/filetxt), one line per finished job.
    pub jobcomp: PathBuf,
    daemons: Vec<Daemon>,
}

struct Daemon {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

/// Why no cluster could be started on this host.
pub enum Unavailable {
    Missing(String),
    NotRoot,
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unavailable::Missing(what) => write!(
                f,
                "{what} not found; install the Debian packages munge and slurm-wlm (scripts/install-deps)"
            ),
            Unavailable::NotRoot => write!(f, "slurmd must run as root to start jobs"),
        }
    }
}

/// `name` on PATH or in the sbin directories, where Debian puts daemons.
pub fn program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Whether this host can run a cluster: the programs are there and we are
/// root.
pub fn check_host() -> Result<(), Unavailable> {
    let missing: Vec<String> = PROGRAMS
        .iter()
        .filter(|(name, _)| program(name).is_none())
        .map(|(name, package)| format!("{name} ({package})"))
        .collect();
    if !missing.is_empty() {
        return Err(Unavailable::Missing(missing.join(", ")));
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Unavailable::NotRoot);
    }
    Ok(())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// The short host name, which slurmd is started as.
fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("the host name");
    name.trim()
        .split('.')
        .next()
        .unwrap_or("localhost")
        .to_string()
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn mkdir(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

impl Cluster {
    /// Starts munged, slurmctld and slurmd and waits for the node to be idle.
    pub fn start(spec: &ClusterSpec) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("cygvm-slurm-")
            .tempdir()
            .unwrap();
        let root = dir.path().to_path_buf();
        // munged insists that every directory above its socket be
        // searchable by all, and that its key be readable by it alone.
        mkdir(&root, 0o755);
        let (key_dir, socket_dir) = (root.join("munge-key"), root.join("munge"));
        mkdir(&key_dir, 0o700);
        mkdir(&socket_dir, 0o755);
        for d in ["etc", "state", "spool", "log"] {
            mkdir(&root.join(d), 0o755);
        }
        let node = hostname();
        let conf = root.join("etc/slurm.conf");
        let mut cluster = Cluster {
            conf: conf.clone(),
            jobcomp: root.join("log/jobcomp.txt"),
            node: node.clone(),
            daemons: Vec::new(),
            dir,
        };

        let key = key_dir.join("munge.key");
        let out = Command::new(program("mungekey").unwrap())
            .arg("--create")
            .arg(format!("--keyfile={}", key.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "mungekey: {out:?}");
        let socket = socket_dir.join("munge.socket");
        let mut munged = Command::new(program("munged").unwrap());
        munged
            .arg("--foreground")
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--key-file={}", key.display()))
            .arg(format!(
                "--pid-file={}",
                socket_dir.join("munged.pid").display()
            ))
            .arg(format!(
                "--log-file={}",
                root.join("log/munged.log").display()
            ))
            .arg(format!(
                "--seed-file={}",
                key_dir.join("munged.seed").display()
            ));
        cluster.spawn("munged", munged, root.join("log/munged.out"));
        cluster.wait_until("munged answers", Duration::from_secs(20), |_| {
            let Ok(cred) = Command::new(program("munge").unwrap())
                .arg(format!("--socket={}", socket.display()))
                .arg("--no-input")
                .output()
            else {
                return false;
            };
            cred.status.success() && !cred.stdout.is_empty()
        });

        let slurm_conf = format!(
            "# A single-node cluster for cygvm's tests.\n\
             ClusterName=cygvm-test\n\
             SlurmctldHost={node}(127.0.0.1)\n\
             SlurmctldPort={ctld_port}\n\
             SlurmdPort={slurmd_port}\n\
             SlurmUser=root\n\
             AuthType=auth/munge\n\
             AuthInfo=socket={socket}\n\
             CredType=cred/munge\n\
             StateSaveLocation={root}/state\n\
             SlurmdSpoolDir={root}/spool\n\
             SlurmctldPidFile={root}/slurmctld.pid\n\
             SlurmdPidFile={root}/slurmd.pid\n\
             SlurmctldLogFile={root}/log/slurmctld.log\n\
             SlurmdLogFile={root}/log/slurmd.log\n\
             MailProg=/bin/true\n\
             MpiDefault=none\n\
             # No systemd and no cgroups here: processes tracked by parentage.\n\
             ProctrackType=proctrack/linuxproc\n\
             TaskPlugin=task/none\n\
             JobAcctGatherType=jobacct_gather/none\n\
             SelectType=select/cons_tres\n\
             SelectTypeParameters=CR_Core\n\
             # The node's declared CPUs are taken as given, not probed.\n\
             SlurmdParameters=config_overrides\n\
             ReturnToService=2\n\
             GresTypes=vmslot\n\
             # Completion records (sacct needs slurmdbd).\n\
             JobCompType=jobcomp/filetxt\n\
             JobCompLoc={jobcomp}\n\
             NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} Gres=vmslot:{slots} State=UNKNOWN\n\
             PartitionName=builds Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n",
            ctld_port = free_port(),
            slurmd_port = free_port(),
            socket = socket.display(),
            root = root.display(),
            jobcomp = cluster.jobcomp.display(),
            cpus = spec.cpus,
            slots = spec.vm_slots,
        );
        std::fs::write(&conf, slurm_conf).unwrap();
        std::fs::write(
            root.join("etc/gres.conf"),
            format!("NodeName={node} Name=vmslot Count={}\n", spec.vm_slots),
        )
        .unwrap();

        let mut ctld = Command::new(program("slurmctld").unwrap());
        ctld.arg("-D");
        cluster.spawn("slurmctld", ctld, root.join("log/slurmctld.out"));
        let mut slurmd = Command::new(program("slurmd").unwrap());
        slurmd.args(["-D", "-N", &node]);
        cluster.spawn("slurmd", slurmd, root.join("log/slurmd.out"));
        cluster.wait_until("the node is idle", Duration::from_secs(60), |c| {
            let out = c.command("sinfo").args(["-h", "-o", "%T"]).output();
            out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "idle")
        });
        cluster
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A Slurm client command pointed at this cluster.
    pub fn command(&self, name: &str) -> Command {
        let mut cmd = Command::new(program(name).unwrap_or_else(|| PathBuf::from(name)));
        cmd.env("SLURM_CONF", &self.conf);
        cmd
    }

    fn spawn(&mut self, name: &'static str, mut cmd: Command, log: PathBuf) {
        use std::os::unix::process::CommandExt;
        let out = std::fs::File::create(&log).unwrap();
        let child = cmd
            .env("SLURM_CONF", &self.conf)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        self.daemons.push(Daemon { name, child, log });
    }

    /// Polls `ready` until it holds; on timeout, or when a daemon exits,
    /// panics with the daemons' logs.
    fn wait_until(&mut self, what: &str, timeout: Duration, ready: impl Fn(&Cluster) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if ready(self) {
                return;
            }
            let exited = self
                .daemons
                .iter_mut()
                .find_map(|d| Some((d.name, d.child.try_wait().ok()??)));
            if let Some((name, status)) = exited {
                panic!(
                    "{name} exited ({status}) while waiting until {what}:\n{}",
                    self.logs()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "not ready within {} s: {what}\n{}",
                    timeout.as_secs(),
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The last lines of every daemon's log, for a failure message.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for name in ["munged.log", "slurmctld.log", "slurmd.log"] {
            let _ = write!(
                text,
                "--- {name} ---\n{}\n",
                tail(&self.path().join("log").join(name), 30)
            );
        }
        for d in &self.daemons {
            let _ = write!(text, "--- {} output ---\n{}\n", d.name, tail(&d.log, 10));
        }
        text
    }

    /// `sbatch --wait`: submits and waits for every job (of the array) to
    /// end; returns sbatch's exit status and output. Panics with the logs
    /// after `timeout`.
    pub fn sbatch_wait(&self, mut cmd: Command, timeout: Duration) -> Output {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sbatch");
        let deadline = Instant::now() + timeout;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let queue = self.command("squeue").output().map(|o| o.stdout);
                panic!(
                    "jobs not done within {} s; queue:\n{}\n{}",
                    timeout.as_secs(),
                    String::from_utf8_lossy(&queue.unwrap_or_default()),
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        child.wait_with_output().unwrap()
    }

    /// Completion records of the jobs of `array_job`, as field maps, once
    /// all `count` are written.
    pub fn completions(&self, array_job: &str, count: usize) -> Vec<JobRecord> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&self.jobcomp).unwrap_or_default();
            let records: Vec<JobRecord> = text
                .lines()
                .map(JobRecord::parse)
                .filter(|r| r.get("ArrayJobId") == Some(array_job))
                .collect();
            if records.len() >= count {
                return records;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {count} completion records of job {array_job} in {}:\n{text}",
                records.len(),
                self.jobcomp.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Processes that carry this cluster's SLURM_CONF: the daemons, job
    /// steps, and everything the jobs started.
    pub fn processes(&self) -> Vec<u32> {
        let needle = format!("SLURM_CONF={}", self.conf.display());
        let me = std::process::id();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if pid == me {
                continue;
            }
            let Ok(env) = std::fs::read(entry.path().join("environ")) else {
                continue;
            };
            if env.split(|b| *b == 0).any(|v| v == needle.as_bytes()) {
                found.push(pid);
            }
        }
        found
    }
}

/// One line of jobcomp/filetxt: `Key=Value` fields separated by spaces.
pub struct JobRecord(Vec<(String, String)>);

impl JobRecord {
    fn parse(line: &str) -> Self {
        Self(
            line.split_whitespace()
                .filter_map(|f| f.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Jobs first, so that cygvm gets SIGTERM and stops its VMs itself.
        let _ = self.command("scancel").args(["--user", "root"]).output();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let queue = self.command("squeue").args(["-h"]).output();
            if queue.is_ok_and(|o| o.status.success() && o.stdout.is_empty()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        for d in self.daemons.iter_mut().rev() {
            let pid = d.child.id() as i32;
            // SAFETY: plain kill(2) of a process group this cluster started.
            unsafe { libc::kill(-pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while d.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            // SAFETY: as above.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            let _ = d.child.wait();
        }
        // Whatever is left (a job step slurmd did not reap, a VM) goes too.
        for pid in self.processes() {
            // SAFETY: plain kill(2) of a process started for this cluster.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}
