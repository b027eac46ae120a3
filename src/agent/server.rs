//! The agent side: reads requests from the virtio-serial port, answers on
//! the same port. One request at a time; `exec` streams while it runs.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::time::Duration;

use base64::Engine;

use super::protocol::{
    AgentConfig, ErrorKind, Op, PROTOCOL_VERSION, Reply, ReplyBody, Request, RunSettings,
    encode_line,
};
use super::ssh::{GuestSsh, OutputStream, SshError};

pub struct Agent<W: Write> {
    out: W,
    /// How to reach the guest: from `configure`, or given at start.
    config: Option<AgentConfig>,
    ssh: Option<GuestSsh>,
    /// What `configure` does to the controller; none in tests.
    setup: Option<Box<Setup>>,
}

/// What `configure` does to the controller besides keeping the settings.
type Setup = dyn FnMut(&RunSettings) -> Result<(), String>;

#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Continue,
    Shutdown,
}

impl<W: Write> Agent<W> {
    pub fn new(out: W, config: Option<AgentConfig>) -> Self {
        Self {
            out,
            config,
            ssh: None,
            setup: None,
        }
    }

    /// Sets what `configure` does besides keeping the guest settings.
    pub fn on_configure(
        mut self,
        setup: impl FnMut(&RunSettings) -> Result<(), String> + 'static,
    ) -> Self {
        self.setup = Some(Box::new(setup));
        self
    }

    fn send(&mut self, id: u64, body: ReplyBody) -> std::io::Result<()> {
        self.out
            .write_all(encode_line(&Reply { id, body }).as_bytes())?;
        self.out.flush()
    }

    fn error(&mut self, id: u64, kind: ErrorKind, message: String) -> std::io::Result<()> {
        self.send(id, ReplyBody::Error { kind, message })
    }

    /// Handles one request line.
    pub fn handle_line(&mut self, line: &str) -> std::io::Result<Next> {
        let request: Request = match serde_json::from_str(line) {
            Ok(r) => r,
            Err(e) => {
                self.error(
                    0,
                    ErrorKind::Protocol,
                    format!("unreadable request {line:?}: {e}"),
                )?;
                return Ok(Next::Continue);
            }
        };
        let id = request.id;
        match request.op {
            Op::Hello { version } if version != PROTOCOL_VERSION => {
                self.error(
                    id,
                    ErrorKind::Protocol,
                    format!("host speaks protocol {version}, agent speaks {PROTOCOL_VERSION}"),
                )?;
            }
            Op::Hello { .. } => {
                let agent = format!("cygvm-agent {}", env!("CARGO_PKG_VERSION"));
                self.send(
                    id,
                    ReplyBody::Hello {
                        version: PROTOCOL_VERSION,
                        agent,
                    },
                )?;
            }
            Op::Configure { settings } => self.configure(id, settings)?,
            Op::WaitSsh {
                timeout_ms,
                skip_probe,
            } => self.wait_ssh(id, Duration::from_millis(timeout_ms), !skip_probe)?,
            Op::Exec { command, stdin } => self.exec(id, &command, stdin.as_deref())?,
            Op::Shutdown => {
                self.send(id, ReplyBody::Done)?;
                return Ok(Next::Shutdown);
            }
        }
        Ok(Next::Continue)
    }

    fn configure(&mut self, id: u64, settings: RunSettings) -> std::io::Result<()> {
        if self.config.is_some() {
            return self.error(
                id,
                ErrorKind::Protocol,
                "this controller is already configured for a run".into(),
            );
        }
        if let Some(setup) = &mut self.setup
            && let Err(e) = setup(&settings)
        {
            return self.error(id, ErrorKind::Other, e);
        }
        self.config = Some(settings.agent);
        self.send(id, ReplyBody::Done)
    }

    fn wait_ssh(&mut self, id: u64, timeout: Duration, probe: bool) -> std::io::Result<()> {
        self.ssh = None;
        let Some(config) = self.config.clone() else {
            return self.error(
                id,
                ErrorKind::NotConnected,
                "the controller has no run settings: configure first".into(),
            );
        };
        let mut stages = Vec::new();
        let result = GuestSsh::wait_ready_with(&config, timeout, probe, |stage, detail| {
            stages.push((stage, detail.to_string()));
        });
        for (stage, detail) in stages {
            self.send(
                id,
                ReplyBody::Progress {
                    stage: stage.into(),
                    detail,
                },
            )?;
        }
        match result {
            Ok(ssh) => {
                self.ssh = Some(ssh);
                self.send(id, ReplyBody::Done)
            }
            Err(e) => {
                let kind = match &e {
                    SshError::HostKeyMismatch { .. } => ErrorKind::HostKeyMismatch,
                    SshError::Auth { .. } => ErrorKind::AuthFailed,
                    SshError::Timeout { .. } => ErrorKind::Timeout,
                    _ => ErrorKind::Other,
                };
                self.error(id, kind, e.to_string())
            }
        }
    }

    fn exec(&mut self, id: u64, command: &str, stdin: Option<&str>) -> std::io::Result<()> {
        let Some(mut ssh) = self.ssh.take() else {
            return self.error(
                id,
                ErrorKind::NotConnected,
                "no SSH connection to the guest: wait_ssh first".into(),
            );
        };
        let b64 = base64::engine::general_purpose::STANDARD;
        let input = match stdin.map(|s| b64.decode(s)).transpose() {
            Ok(input) => input.unwrap_or_default(),
            Err(e) => {
                self.ssh = Some(ssh);
                return self.error(id, ErrorKind::Protocol, format!("stdin is not base64: {e}"));
            }
        };
        let mut io_error = None;
        let out = &mut self.out;
        let result = ssh.exec_with_input(command, &input, |stream, data| {
            if io_error.is_some() {
                return;
            }
            let data = b64.encode(data);
            let body = match stream {
                OutputStream::Stdout => ReplyBody::Stdout { data },
                OutputStream::Stderr => ReplyBody::Stderr { data },
            };
            let line = encode_line(&Reply { id, body });
            if let Err(e) = out.write_all(line.as_bytes()).and_then(|_| out.flush()) {
                io_error = Some(e);
            }
        });
        if let Some(e) = io_error {
            return Err(e);
        }
        match result {
            Ok(exit) => {
                self.ssh = Some(ssh);
                self.send(
                    id,
                    ReplyBody::Exit {
                        status: exit.status,
                        signal: exit.signal,
                    },
                )
            }
            Err(e) => self.error(id, ErrorKind::NotConnected, e.to_string()),
        }
    }
}

/// The agent's main loop on a port (a virtio-serial device, or any
/// read/write stream in tests). Returns when asked to shut down.
pub fn serve<R: Read, W: Write>(input: R, mut agent: Agent<W>) -> std::io::Result<()> {
    let mut reader = BufReader::new(input);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            // The host side is not connected (virtio-serial reads 0 then);
            // wait for it to come back rather than spin.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        if agent.handle_line(trimmed)? == Next::Shutdown {
            return Ok(());
        }
    }
}

/// Entry point of `cygvm agent`: open the port and serve. With `config`
/// (a JSON [`AgentConfig`]) the agent starts configured; without, it waits
/// for the host's `configure`, which mounts the run's shares and sets the
/// Samba password in this VM.
pub fn run(port: &Path, config: Option<&Path>) -> anyhow::Result<()> {
    use anyhow::Context;
    let cfg = match config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read agent config {}", path.display()))?;
            Some(
                serde_json::from_str::<AgentConfig>(&text)
                    .with_context(|| format!("agent config {} is not valid", path.display()))?,
            )
        }
        None => None,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(port)
        .with_context(|| format!("cannot open agent port {}", port.display()))?;
    let writer = file.try_clone()?;
    let agent = Agent::new(writer, cfg).on_configure(controller_setup);
    serve(file, agent)?;
    Ok(())
}

/// Where the controller's smbd reads its one account (`passdb backend =
/// smbpasswd:…` in smb.conf.in); the file is read at every logon.
const SMBPASSWD_FILE: &str = "/run/samba/smbpasswd";

/// `configure` inside the controller VM: the shares, then the password.
fn controller_setup(settings: &RunSettings) -> Result<(), String> {
    for share in &settings.shares {
        let target = format!("/srv/{}", share.tag);
        std::fs::create_dir_all(&target).map_err(|e| format!("cannot create {target}: {e}"))?;
        let mut opts = String::from("trans=virtio,version=9p2000.L,msize=512000");
        if share.read_only {
            opts.push_str(",ro");
        }
        let out = std::process::Command::new("mount")
            .args(["-t", "9p", "-o", &opts, &share.tag, &target])
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cannot mount the {} share: {}",
                share.tag,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    let user = &settings.agent.user;
    let uid = unix_uid(user).ok_or_else(|| format!("the controller has no account {user}"))?;
    let line = smbpasswd_line(user, uid, &settings.samba_password);
    crate::fsutil::write_atomic(Path::new(SMBPASSWD_FILE), line.as_bytes(), 0o600)
        .map_err(|e| format!("cannot write {SMBPASSWD_FILE}: {e}"))
}

fn unix_uid(user: &str) -> Option<u32> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next() == Some(user))
            .then(|| f.nth(1).and_then(|uid| uid.parse().ok()))
            .flatten()
    })
}

/// One line of Samba's smbpasswd file: the NT hash (MD4 of the UTF-16LE
/// password), no LM hash, a normal enabled account.
pub fn smbpasswd_line(user: &str, uid: u32, password: &str) -> String {
    use md4::{Digest, Md4};
    let utf16: Vec<u8> = password.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let nt = hex::encode_upper(Md4::digest(&utf16));
    let lct = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!(
        "{user}:{uid}:{}:{nt}:[U          ]:LCT-{lct:08X}:\n",
        "X".repeat(32)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smbpasswd_lines_carry_the_nt_hash() {
        // The NT hash of "password", as Samba and Windows compute it.
        let line = smbpasswd_line("cygvm", 1000, "password");
        assert!(
            line.starts_with(
                "cygvm:1000:XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX:8846F7EAEE8FB117AD06BDD830B7586C:[U          ]:LCT-"
            ),
            "{line}"
        );
        assert!(line.ends_with(":\n"));
    }

    #[test]
    fn configure_comes_once_and_before_ssh() {
        let mut out = Vec::new();
        let mut agent = Agent::new(&mut out, None).on_configure(|s| {
            if s.samba_password.is_empty() {
                Err("empty password".into())
            } else {
                Ok(())
            }
        });
        agent
            .handle_line(r#"{"id":1,"op":"wait_ssh","timeout_ms":10}"#)
            .unwrap();
        let settings = |pw: &str| {
            format!(
                r#"{{"id":2,"op":"configure","settings":{{"agent":{{"guest":"192.168.0.1:22","user":"u","client_key":"k","host_key":"h"}},"samba_password":"{pw}","shares":[]}}}}"#
            )
        };
        agent.handle_line(&settings("")).unwrap();
        agent.handle_line(&settings("pw")).unwrap();
        agent.handle_line(&settings("pw")).unwrap();
        drop(agent);
        let replies: Vec<Reply> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(matches!(
            replies[0].body,
            ReplyBody::Error {
                kind: ErrorKind::NotConnected,
                ..
            }
        ));
        assert!(
            matches!(&replies[1].body, ReplyBody::Error { message, .. } if message == "empty password")
        );
        assert_eq!(replies[2].body, ReplyBody::Done);
        assert!(matches!(
            replies[3].body,
            ReplyBody::Error {
                kind: ErrorKind::Protocol,
                ..
            }
        ));
    }
}
