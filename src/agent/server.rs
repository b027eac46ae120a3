//! The agent side: reads requests from the virtio-serial port, answers on
//! the same port. One request at a time; `exec` streams while it runs.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::time::Duration;

use base64::Engine;

use super::protocol::{
    AgentConfig, ErrorKind, Op, PROTOCOL_VERSION, Reply, ReplyBody, Request, encode_line,
};
use super::ssh::{GuestSsh, OutputStream, SshError};

pub struct Agent<W: Write> {
    out: W,
    config: AgentConfig,
    ssh: Option<GuestSsh>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Continue,
    Shutdown,
}

impl<W: Write> Agent<W> {
    pub fn new(out: W, config: AgentConfig) -> Self {
        Self {
            out,
            config,
            ssh: None,
        }
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
            Op::WaitSsh { timeout_ms } => self.wait_ssh(id, Duration::from_millis(timeout_ms))?,
            Op::Exec { command, stdin } => self.exec(id, &command, stdin.as_deref())?,
            Op::Shutdown => {
                self.send(id, ReplyBody::Done)?;
                return Ok(Next::Shutdown);
            }
        }
        Ok(Next::Continue)
    }

    fn wait_ssh(&mut self, id: u64, timeout: Duration) -> std::io::Result<()> {
        self.ssh = None;
        let mut stages = Vec::new();
        let result = GuestSsh::wait_ready(&self.config, timeout, |stage, detail| {
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
pub fn serve<R: Read, W: Write>(input: R, output: W, config: AgentConfig) -> std::io::Result<()> {
    let mut agent = Agent::new(output, config);
    let mut reader = BufReader::new(input);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            // The host side is not connected (virtio-serial reads 0 then);
            // wait for it to come back rather than spin.
            std::thread::sleep(Duration::from_millis(100));
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

/// Entry point of `cygvm agent`: open the port, read the config, serve.
pub fn run(port: &Path, config: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    let text = std::fs::read_to_string(config)
        .with_context(|| format!("cannot read agent config {}", config.display()))?;
    let cfg: AgentConfig = serde_json::from_str(&text)
        .with_context(|| format!("agent config {} is not valid", config.display()))?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(port)
        .with_context(|| format!("cannot open agent port {}", port.display()))?;
    let writer = file.try_clone()?;
    serve(file, writer, cfg)?;
    Ok(())
}
