//! Host side of the agent protocol, over the unix socket QEMU gives the
//! controller's virtio-serial port.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader, Lines};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::{Instant, timeout_at};

use super::protocol::{
    ErrorKind, Op, PROTOCOL_VERSION, Reply, ReplyBody, Request, RunSettings, encode_line,
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot reach the controller agent at {path}: {message}")]
    Connect { path: String, message: String },
    #[error("the controller agent did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the connection to the controller agent closed")]
    Closed,
    #[error("talking to the controller agent failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the controller agent sent an unreadable line {line:?}: {message}")]
    Protocol { line: String, message: String },
    #[error("{message}")]
    Remote { kind: ErrorKind, message: String },
    #[error("the controller VM failed to start: {0}")]
    ControllerFailed(String),
}

/// How a guest command ended, as the agent reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteExit {
    pub status: Option<i32>,
    pub signal: Option<String>,
}

impl RemoteExit {
    /// The exit code cygvm itself should end with: the command's status,
    /// or 128 + signal number in the shell's way (unknown signals: 255).
    pub fn exit_code(&self) -> i32 {
        match (&self.status, &self.signal) {
            (Some(s), _) => *s,
            (None, Some(sig)) => 128 + signal_number(sig).unwrap_or(127),
            (None, None) => 255,
        }
    }
}

fn signal_number(name: &str) -> Option<i32> {
    let n = match name.trim_start_matches("SIG") {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "ILL" => 4,
        "ABRT" => 6,
        "FPE" => 8,
        "KILL" => 9,
        "SEGV" => 11,
        "PIPE" => 13,
        "ALRM" => 14,
        "TERM" => 15,
        _ => return None,
    };
    Some(n)
}

fn first_request_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // Below 2^53, so the ids stay exact in any JSON reader.
    ((nanos ^ u64::from(std::process::id()) << 32) & ((1 << 52) - 1)) | 1 << 40
}

pub struct AgentClient {
    lines: Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
    next_id: u64,
    /// The agent's own description from `hello`.
    pub agent: String,
}

impl AgentClient {
    /// Connects to the socket and exchanges `hello` by `deadline`. The agent
    /// may still be booting: the hello is repeated until it answers.
    pub async fn connect(path: &Path, deadline: Instant) -> Result<Self, AgentError> {
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(AgentError::Connect {
                        path: path.display().to_string(),
                        message: e.to_string(),
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let (read, writer) = stream.into_split();
        let mut client = Self {
            lines: BufReader::new(read).lines(),
            writer,
            // A revived agent may still answer requests the connection that
            // made its snapshot sent: ids start where those cannot be.
            next_id: first_request_id(),
            agent: String::new(),
        };
        let started = Instant::now();
        loop {
            let id = client
                .send(Op::Hello {
                    version: PROTOCOL_VERSION,
                })
                .await?;
            let retry_at = (Instant::now() + Duration::from_secs(1)).min(deadline);
            match timeout_at(retry_at, client.reply_for(id)).await {
                Ok(reply) => match reply?.body {
                    ReplyBody::Hello { agent, .. } => {
                        client.agent = agent;
                        return Ok(client);
                    }
                    ReplyBody::Error { kind, message } => {
                        return Err(AgentError::Remote { kind, message });
                    }
                    other => {
                        return Err(AgentError::Protocol {
                            line: format!("{other:?}"),
                            message: "expected a hello reply".into(),
                        });
                    }
                },
                Err(_) if Instant::now() >= deadline => {
                    return Err(AgentError::Timeout(started.elapsed()));
                }
                Err(_) => continue,
            }
        }
    }

    async fn send(&mut self, op: Op) -> Result<u64, AgentError> {
        let id = self.next_id;
        self.next_id += 1;
        let line = encode_line(&Request { id, op });
        self.writer.write_all(line.as_bytes()).await?;
        self.writer.flush().await?;
        Ok(id)
    }

    /// The next reply belonging to `id`; replies to older requests (a
    /// repeated hello) are skipped.
    async fn reply_for(&mut self, id: u64) -> Result<Reply, AgentError> {
        loop {
            let line = self.lines.next_line().await?.ok_or(AgentError::Closed)?;
            // The controller's init writes its status lines to the same
            // port before the agent starts.
            if let Some(status) = line.strip_prefix("cygvm-controller: ") {
                if let Some(step) = status.strip_prefix("failed: ") {
                    return Err(AgentError::ControllerFailed(step.to_string()));
                }
                tracing::debug!("controller: {status}");
                continue;
            }
            let reply: Reply = serde_json::from_str(&line).map_err(|e| AgentError::Protocol {
                line: line.clone(),
                message: e.to_string(),
            })?;
            if reply.id == id || reply.id == 0 {
                return Ok(reply);
            }
        }
    }

    /// Sends the run's settings; the agent answers when the shares are
    /// mounted and the password set.
    pub async fn configure(&mut self, settings: &RunSettings) -> Result<(), AgentError> {
        let id = self
            .send(Op::Configure {
                settings: settings.clone(),
            })
            .await?;
        let guard = Instant::now() + Duration::from_secs(60);
        loop {
            let reply = timeout_at(guard, self.reply_for(id))
                .await
                .map_err(|_| AgentError::Timeout(Duration::from_secs(60)))??;
            match reply.body {
                ReplyBody::Done => return Ok(()),
                ReplyBody::Error { kind, message } => {
                    return Err(AgentError::Remote { kind, message });
                }
                _ => {}
            }
        }
    }

    /// Waits until the guest's sshd is usable; `progress` sees each step.
    pub async fn wait_ssh(
        &mut self,
        timeout: Duration,
        progress: impl FnMut(&str, &str),
    ) -> Result<(), AgentError> {
        self.wait_ssh_with(timeout, true, progress).await
    }

    /// Like [`AgentClient::wait_ssh`]; without `probe` the agent does not
    /// run `true` once logged in.
    pub async fn wait_ssh_with(
        &mut self,
        timeout: Duration,
        probe: bool,
        mut progress: impl FnMut(&str, &str),
    ) -> Result<(), AgentError> {
        let id = self
            .send(Op::WaitSsh {
                timeout_ms: timeout.as_millis() as u64,
                skip_probe: !probe,
            })
            .await?;
        // The agent enforces the timeout; this bound only guards against
        // an agent that stopped answering.
        let guard = Instant::now() + timeout + Duration::from_secs(30);
        loop {
            let reply = timeout_at(guard, self.reply_for(id))
                .await
                .map_err(|_| AgentError::Timeout(timeout))??;
            match reply.body {
                ReplyBody::Progress { stage, detail } => progress(&stage, &detail),
                ReplyBody::Done => return Ok(()),
                ReplyBody::Error { kind, message } => {
                    return Err(AgentError::Remote { kind, message });
                }
                _ => {}
            }
        }
    }

    /// Runs `command` in the guest, copying its output to `stdout` and
    /// `stderr` as it arrives.
    pub async fn exec<O, E>(
        &mut self,
        command: &str,
        stdout: &mut O,
        stderr: &mut E,
    ) -> Result<RemoteExit, AgentError>
    where
        O: AsyncWrite + Unpin,
        E: AsyncWrite + Unpin,
    {
        self.exec_with_input(command, None, stdout, stderr).await
    }

    /// Like [`AgentClient::exec`], feeding `stdin` to the command.
    pub async fn exec_with_input<O, E>(
        &mut self,
        command: &str,
        stdin: Option<&[u8]>,
        stdout: &mut O,
        stderr: &mut E,
    ) -> Result<RemoteExit, AgentError>
    where
        O: AsyncWrite + Unpin,
        E: AsyncWrite + Unpin,
    {
        let b64 = base64::engine::general_purpose::STANDARD;
        let id = self
            .send(Op::Exec {
                command: command.to_string(),
                stdin: stdin.map(|s| b64.encode(s)),
            })
            .await?;
        let decode = |data: &str| {
            b64.decode(data).map_err(|e| AgentError::Protocol {
                line: data.chars().take(80).collect(),
                message: e.to_string(),
            })
        };
        loop {
            match self.reply_for(id).await?.body {
                ReplyBody::Stdout { data } => {
                    stdout.write_all(&decode(&data)?).await?;
                    stdout.flush().await?;
                }
                ReplyBody::Stderr { data } => {
                    stderr.write_all(&decode(&data)?).await?;
                    stderr.flush().await?;
                }
                ReplyBody::Exit { status, signal } => return Ok(RemoteExit { status, signal }),
                ReplyBody::Error { kind, message } => {
                    return Err(AgentError::Remote { kind, message });
                }
                _ => {}
            }
        }
    }

    /// Runs `command` and returns its stdout; a non-zero exit is an error
    /// carrying stderr.
    pub async fn exec_checked(
        &mut self,
        command: &str,
        stdin: Option<&[u8]>,
    ) -> Result<Vec<u8>, AgentError> {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let exit = self
            .exec_with_input(command, stdin, &mut out, &mut err)
            .await?;
        if exit.status == Some(0) {
            Ok(out)
        } else {
            Err(AgentError::Remote {
                kind: ErrorKind::Other,
                message: format!(
                    "`{command}` in the guest ended with {}: {}",
                    exit.exit_code(),
                    String::from_utf8_lossy(&err).trim()
                ),
            })
        }
    }

    /// Asks the agent to power the controller off.
    pub async fn shutdown(&mut self) -> Result<(), AgentError> {
        let id = self.send(Op::Shutdown).await?;
        let _ = timeout_at(Instant::now() + Duration::from_secs(5), self.reply_for(id)).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell() {
        let e = |status, signal: Option<&str>| RemoteExit {
            status,
            signal: signal.map(String::from),
        };
        assert_eq!(e(Some(3), None).exit_code(), 3);
        assert_eq!(e(None, Some("KILL")).exit_code(), 137);
        assert_eq!(e(None, Some("SIGTERM")).exit_code(), 143);
        assert_eq!(e(None, None).exit_code(), 255);
    }
}
