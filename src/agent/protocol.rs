//! Messages between the host and the controller agent: one JSON object per
//! line, each carrying the `id` of the request it belongs to. Versioned by
//! the `hello` exchange; documented in docs/protocol.md.

use serde::{Deserialize, Serialize};

pub const PROTOCOL_VERSION: u32 = 2;

/// The virtio-serial port name the agent listens on.
pub const PORT_NAME: &str = "cygvm.agent";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    #[serde(flatten)]
    pub op: Op,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// First message; the agent answers with `hello` and its version.
    Hello { version: u32 },
    /// The run's settings, sent once after `hello`: the agent mounts the
    /// run's 9p shares, sets the Samba password and keeps what it needs to
    /// reach the guest. Until then the controller holds nothing of the run
    /// (so it can be snapshotted and revived by any run).
    Configure { settings: RunSettings },
    /// Wait until the guest's sshd answers with the pinned host key and
    /// `true` succeeds, within `timeout_ms`.
    /// With `skip_probe`, a connection that authenticated is enough (the
    /// next command shows whether the shell works): one round trip less
    /// for a revived guest.
    WaitSsh {
        timeout_ms: u64,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        skip_probe: bool,
    },
    /// Run a command in the guest; output is streamed back. `stdin`
    /// (base64), when given, is fed to the command, then closed.
    Exec {
        command: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stdin: Option<String>,
    },
    /// Power the controller off.
    Shutdown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub id: u64,
    #[serde(flatten)]
    pub body: ReplyBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ReplyBody {
    Hello {
        version: u32,
        agent: String,
    },
    /// A step of a longer request, for progress display.
    Progress {
        stage: String,
        detail: String,
    },
    /// A chunk of the command's stdout, base64.
    Stdout {
        data: String,
    },
    /// A chunk of the command's stderr, base64.
    Stderr {
        data: String,
    },
    /// The command ended: exit status, or the signal that ended it.
    Exit {
        status: Option<i32>,
        signal: Option<String>,
    },
    /// The request finished without a result of its own.
    Done,
    Error {
        kind: ErrorKind,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The guest presented a host key other than the pinned one.
    HostKeyMismatch,
    /// The deadline passed before SSH was usable.
    Timeout,
    /// Key authentication was refused.
    AuthFailed,
    /// `exec` before a successful `wait_ssh`, or the connection dropped.
    NotConnected,
    /// Version mismatch or a line the agent could not read.
    Protocol,
    Other,
}

/// What the agent needs to reach the guest; part of [`RunSettings`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentConfig {
    /// `address:port` of the guest's sshd.
    pub guest: String,
    pub user: String,
    /// OpenSSH private key the host logs in with.
    pub client_key: String,
    /// The guest's pinned host key, as an OpenSSH public key line.
    pub host_key: String,
}

/// Everything per run the controller learns from the host, over the
/// virtio-serial port (never on a command line or in a file on the host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSettings {
    pub agent: AgentConfig,
    /// The Samba account's password for this image.
    pub samba_password: String,
    /// The 9p shares to mount, by tag, at `/srv/<tag>`.
    pub shares: Vec<ShareMount>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareMount {
    pub tag: String,
    pub read_only: bool,
}

pub fn encode_line<T: Serialize>(msg: &T) -> String {
    // Serializing these types cannot fail: no maps with non-string keys.
    let mut s = serde_json::to_string(msg).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_stable() {
        let r = Request {
            id: 7,
            op: Op::Exec {
                command: "make".into(),
                stdin: None,
            },
        };
        assert_eq!(
            encode_line(&r),
            "{\"id\":7,\"op\":\"exec\",\"command\":\"make\"}\n"
        );
        let back: Request = serde_json::from_str(encode_line(&r).trim()).unwrap();
        assert_eq!(back, r);
        let reply = Reply {
            id: 7,
            body: ReplyBody::Exit {
                status: Some(3),
                signal: None,
            },
        };
        assert_eq!(
            encode_line(&reply),
            "{\"id\":7,\"type\":\"exit\",\"status\":3,\"signal\":null}\n"
        );
        let err: Reply = serde_json::from_str(
            r#"{"id":1,"type":"error","kind":"host_key_mismatch","message":"x"}"#,
        )
        .unwrap();
        assert!(matches!(
            err.body,
            ReplyBody::Error {
                kind: ErrorKind::HostKeyMismatch,
                ..
            }
        ));
    }
}
