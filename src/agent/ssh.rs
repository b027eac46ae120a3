//! SSH to the guest with key authentication and a pinned host key.
//! Runs inside the controller VM (and in tests on the host).

use std::io::{ErrorKind as IoErrorKind, Read};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use base64::Engine;
use ssh2::Session;

use super::protocol::AgentConfig;

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("guest address {0:?} is not host:port")]
    BadAddress(String),
    #[error("pinned host key {0:?} is not an OpenSSH public key line")]
    BadPinnedKey(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("SSH handshake with {addr} failed: {message}")]
    Handshake { addr: SocketAddr, message: String },
    #[error(
        "the guest at {addr} presented host key {got}, not the pinned {expected}; \
         refusing to connect (the image's secrets and the guest do not belong together)"
    )]
    HostKeyMismatch {
        addr: SocketAddr,
        expected: String,
        got: String,
    },
    #[error("the guest refused key authentication for user {user}: {message}")]
    Auth { user: String, message: String },
    #[error("running a command in the guest failed: {0}")]
    Exec(String),
    #[error("SSH to the guest was not ready after {waited:?}; last step {stage}: {last}")]
    Timeout {
        waited: Duration,
        stage: &'static str,
        last: String,
    },
}

impl SshError {
    /// Errors that waiting longer cannot fix.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            SshError::BadAddress(_)
                | SshError::BadPinnedKey(_)
                | SshError::HostKeyMismatch { .. }
                | SshError::Auth { .. }
        )
    }

    pub fn stage(&self) -> &'static str {
        match self {
            SshError::Connect { .. } => "tcp",
            SshError::Handshake { .. } => "handshake",
            SshError::HostKeyMismatch { .. } => "host-key",
            SshError::Auth { .. } => "auth",
            SshError::Exec(_) => "true",
            _ => "setup",
        }
    }
}

/// Which of a command's output streams a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// How a command in the guest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitInfo {
    pub status: Option<i32>,
    pub signal: Option<String>,
}

pub struct GuestSsh {
    session: Session,
    tcp: TcpStream,
}

/// The key blob of an OpenSSH public key line (`type base64 [comment]`).
pub fn key_blob(line: &str) -> Result<Vec<u8>, SshError> {
    let bad = || SshError::BadPinnedKey(line.chars().take(80).collect());
    let b64 = line.split_whitespace().nth(1).ok_or_else(bad)?;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| bad())
}

fn describe_blob(blob: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(blob);
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

fn resolve(addr: &str) -> Result<SocketAddr, SshError> {
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| SshError::BadAddress(addr.to_string()))
}

impl GuestSsh {
    /// One attempt: TCP connect, handshake, host key check, key auth.
    pub fn connect(cfg: &AgentConfig, timeout: Duration) -> Result<Self, SshError> {
        let addr = resolve(&cfg.guest)?;
        let expected = key_blob(&cfg.host_key)?;
        let tcp = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|source| SshError::Connect { addr, source })?;
        let mut session = Session::new().map_err(|e| SshError::Handshake {
            addr,
            message: e.to_string(),
        })?;
        session.set_timeout(timeout.as_millis().min(u32::MAX as u128) as u32);
        session.set_tcp_stream(
            tcp.try_clone()
                .map_err(|source| SshError::Connect { addr, source })?,
        );
        session.handshake().map_err(|e| SshError::Handshake {
            addr,
            message: e.to_string(),
        })?;
        let got = session
            .host_key()
            .map(|(k, _)| k.to_vec())
            .unwrap_or_default();
        if got != expected {
            return Err(SshError::HostKeyMismatch {
                addr,
                expected: describe_blob(&expected),
                got: describe_blob(&got),
            });
        }
        session
            .userauth_pubkey_memory(&cfg.user, None, &cfg.client_key, None)
            .map_err(|e| SshError::Auth {
                user: cfg.user.clone(),
                message: e.message().to_string(),
            })?;
        session.set_timeout(0);
        Ok(Self { session, tcp })
    }

    /// Retries until `true` runs in the guest or the deadline passes.
    /// Host key mismatch and refused authentication end the wait at once.
    pub fn wait_ready(
        cfg: &AgentConfig,
        timeout: Duration,
        progress: impl FnMut(&'static str, &str),
    ) -> Result<Self, SshError> {
        Self::wait_ready_with(cfg, timeout, true, progress)
    }

    /// Like [`GuestSsh::wait_ready`]; without `probe`, an authenticated
    /// connection is enough and `true` is not run.
    pub fn wait_ready_with(
        cfg: &AgentConfig,
        timeout: Duration,
        probe: bool,
        mut progress: impl FnMut(&'static str, &str),
    ) -> Result<Self, SshError> {
        let start = Instant::now();
        let mut last_stage = "";
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            let attempt = GuestSsh::connect(
                cfg,
                left.clamp(Duration::from_millis(200), Duration::from_secs(5)),
            )
            .and_then(|mut ssh| {
                if !probe {
                    return Ok(ssh);
                }
                let exit = ssh.exec("true", |_, _| {})?;
                if exit.status == Some(0) {
                    Ok(ssh)
                } else {
                    Err(SshError::Exec(format!("`true` ended with {exit:?}")))
                }
            });
            match attempt {
                Ok(ssh) => return Ok(ssh),
                Err(e) if e.is_permanent() => return Err(e),
                Err(e) => {
                    let stage = e.stage();
                    if stage != last_stage {
                        progress(stage, &e.to_string());
                        last_stage = stage;
                    }
                    if start.elapsed() >= timeout {
                        return Err(SshError::Timeout {
                            waited: start.elapsed(),
                            stage,
                            last: e.to_string(),
                        });
                    }
                    // A refused connection returns at once; pace the retries.
                    std::thread::sleep(Duration::from_millis(250).min(left));
                }
            }
        }
    }

    /// Runs `command` through the guest's login shell, streaming output.
    pub fn exec(
        &mut self,
        command: &str,
        on_output: impl FnMut(OutputStream, &[u8]),
    ) -> Result<ExitInfo, SshError> {
        self.exec_with_input(command, &[], on_output)
    }

    /// Like [`GuestSsh::exec`], feeding `stdin` to the command first.
    pub fn exec_with_input(
        &mut self,
        command: &str,
        stdin: &[u8],
        mut on_output: impl FnMut(OutputStream, &[u8]),
    ) -> Result<ExitInfo, SshError> {
        use std::io::Write;
        let err = |e: ssh2::Error| SshError::Exec(e.message().to_string());
        self.session.set_blocking(true);
        let mut channel = self.session.channel_session().map_err(err)?;
        channel.exec(command).map_err(err)?;
        if !stdin.is_empty() {
            channel
                .write_all(stdin)
                .map_err(|e| SshError::Exec(format!("cannot send input: {e}")))?;
        }
        channel.send_eof().map_err(err)?;
        self.session.set_blocking(false);
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let mut progressed = false;
            for (stream_id, which) in [(0, OutputStream::Stdout), (1, OutputStream::Stderr)] {
                let read = {
                    let mut stream = channel.stream(stream_id);
                    stream.read(&mut buf)
                };
                match read {
                    Ok(0) => {}
                    Ok(n) => {
                        progressed = true;
                        on_output(which, &buf[..n]);
                    }
                    Err(e) if e.kind() == IoErrorKind::WouldBlock => {}
                    Err(e) => {
                        self.session.set_blocking(true);
                        return Err(SshError::Exec(e.to_string()));
                    }
                }
            }
            if channel.eof() && !progressed {
                break;
            }
            if !progressed {
                self.wait_socket();
            }
        }
        self.session.set_blocking(true);
        channel.wait_close().map_err(err)?;
        let signal = channel.exit_signal().ok().and_then(|s| s.exit_signal);
        let status = if signal.is_some() {
            None
        } else {
            Some(channel.exit_status().map_err(err)?)
        };
        Ok(ExitInfo { status, signal })
    }

    /// Blocks until the socket is readable (or 100 ms pass).
    fn wait_socket(&self) {
        let mut fds = libc::pollfd {
            fd: self.tcp.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe {
            libc::poll(&mut fds, 1, 100);
        }
    }
}
