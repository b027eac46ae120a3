//! A small QMP client. One reader task reads QEMU's JSON lines, hands each
//! reply to the command that sent its `id`, and keeps events — including
//! ones this code has never heard of — for [`Qmp::wait_event`] and for
//! [`Qmp::subscribe`]rs.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{broadcast, oneshot, watch};
use tokio::time::Instant;

use crate::vm::wait::{Check, WaitError, wait_until};

/// How many unclaimed events are kept for [`Qmp::wait_event`].
const KEPT_EVENTS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error(
        "QEMU's QMP socket {} did not accept a connection within {waited:?}{}",
        socket.display(),
        last_error.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default()
    )]
    ConnectTimeout {
        socket: PathBuf,
        waited: Duration,
        last_error: Option<String>,
    },
    #[error("gave up connecting to QEMU's QMP socket {}: {reason}", socket.display())]
    ConnectAborted { socket: PathBuf, reason: String },
    #[error("cannot talk to QEMU over {}", socket.display())]
    Io {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU on {} sent something that is not QMP: {detail}", socket.display())]
    Protocol { socket: PathBuf, detail: String },
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("QEMU closed its QMP socket {} (it exited or crashed; see its log)", socket.display())]
    Disconnected { socket: PathBuf },
    #[error("no QMP event {event} within {waited:?} on {}", socket.display())]
    EventTimeout {
        event: String,
        waited: Duration,
        socket: PathBuf,
    },
    #[error("unexpected reply to {command}: {detail}")]
    BadReply { command: String, detail: String },
}

/// An asynchronous message from QEMU.
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    pub name: String,
    pub data: Value,
    /// QEMU's timestamp, seconds since the epoch.
    pub timestamp: f64,
}

/// The greeting's version block.
#[derive(Debug, Clone, Deserialize)]
pub struct QemuVersion {
    pub qemu: VersionTriple,
    pub package: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub struct VersionTriple {
    pub major: u32,
    pub minor: u32,
    pub micro: u32,
}

/// `query-status`.
#[derive(Debug, Clone, Deserialize)]
pub struct StatusInfo {
    pub running: bool,
    /// `running`, `paused`, `inmigrate`, `postmigrate`, `shutdown`, …
    pub status: String,
}

/// `query-migrate`: the fields cygvm looks at; the rest stays in `raw`.
#[derive(Debug, Clone, Deserialize)]
pub struct MigrationInfo {
    /// `none`, `setup`, `active`, `completed`, `failed`, `cancelled`, …
    #[serde(default)]
    pub status: Option<String>,
    #[serde(rename = "error-desc", default)]
    pub error_desc: Option<String>,
    #[serde(rename = "total-time", default)]
    pub total_time_ms: Option<u64>,
    #[serde(flatten)]
    pub raw: serde_json::Map<String, Value>,
}

type Pending = HashMap<u64, oneshot::Sender<Result<Value, QmpError>>>;

struct Shared {
    socket: PathBuf,
    pending: Mutex<Pending>,
    events: Mutex<VecDeque<QmpEvent>>,
    /// Bumped on every event and on disconnect, to wake waiters.
    changed: watch::Sender<u64>,
    live: broadcast::Sender<QmpEvent>,
    closed: std::sync::atomic::AtomicBool,
}

/// A connection to one QEMU's QMP socket, past capabilities negotiation.
pub struct Qmp {
    shared: Arc<Shared>,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    next_id: AtomicU64,
    version: QemuVersion,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Qmp {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Qmp {
    /// Connects to `socket`, waiting for QEMU to create it and listen, until
    /// `deadline`. Polls every 20 ms.
    pub async fn connect(socket: &Path, deadline: Instant) -> Result<Self, QmpError> {
        Self::connect_checked(socket, deadline, || None::<String>).await
    }

    /// Like [`Qmp::connect`], but gives up early when `gone` returns a
    /// reason (e.g. "qemu exited with status 1").
    pub async fn connect_checked(
        socket: &Path,
        deadline: Instant,
        mut gone: impl FnMut() -> Option<String>,
    ) -> Result<Self, QmpError> {
        let last_error = Arc::new(Mutex::new(None));
        let stream = wait_until(
            deadline,
            Duration::from_millis(20),
            || {
                let reason = gone();
                let attempt = UnixStream::connect(socket);
                let last = last_error.clone();
                async move {
                    if let Some(reason) = reason {
                        return Check::Failed(reason);
                    }
                    match attempt.await {
                        Ok(s) => Check::Ready(s),
                        Err(e) => {
                            *lock(&last) = Some(e.to_string());
                            Check::NotYet
                        }
                    }
                }
            },
            |_| {},
        )
        .await
        .map_err(|e| match e {
            WaitError::TimedOut { waited } => QmpError::ConnectTimeout {
                socket: socket.to_path_buf(),
                waited,
                last_error: lock(&last_error).clone(),
            },
            WaitError::Failed(reason) => QmpError::ConnectAborted {
                socket: socket.to_path_buf(),
                reason,
            },
        })?;
        Self::handshake(stream, socket).await
    }

    async fn handshake(stream: UnixStream, socket: &Path) -> Result<Self, QmpError> {
        let io_err = |source| QmpError::Io {
            socket: socket.to_path_buf(),
            source,
        };
        let (read, write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let greeting =
            lines
                .next_line()
                .await
                .map_err(io_err)?
                .ok_or_else(|| QmpError::Disconnected {
                    socket: socket.to_path_buf(),
                })?;
        let greeting: Value = serde_json::from_str(&greeting).map_err(|e| QmpError::Protocol {
            socket: socket.to_path_buf(),
            detail: format!("greeting {greeting:?}: {e}"),
        })?;
        let version: QemuVersion = greeting
            .pointer("/QMP/version")
            .cloned()
            .and_then(|v| serde_json::from_value(v).ok())
            .ok_or_else(|| QmpError::Protocol {
                socket: socket.to_path_buf(),
                detail: format!("greeting without a version: {greeting}"),
            })?;

        let (changed, _) = watch::channel(0);
        let (live, _) = broadcast::channel(256);
        let shared = Arc::new(Shared {
            socket: socket.to_path_buf(),
            pending: Mutex::new(HashMap::new()),
            events: Mutex::new(VecDeque::new()),
            changed,
            live,
            closed: Default::default(),
        });
        let reader = tokio::spawn(read_loop(lines, shared.clone()));
        let qmp = Qmp {
            shared,
            writer: tokio::sync::Mutex::new(write),
            next_id: AtomicU64::new(1),
            version,
            reader,
        };
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    pub fn socket(&self) -> &Path {
        &self.shared.socket
    }

    /// QEMU's version from the greeting.
    pub fn version(&self) -> &QemuVersion {
        &self.version
    }

    /// Runs any QMP command and returns its `return` value.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(self.disconnected());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let (tx, rx) = oneshot::channel();
        lock(&self.shared.pending).insert(id, tx);
        let mut line = msg.to_string();
        line.push('\n');
        let written = {
            let mut w = self.writer.lock().await;
            w.write_all(line.as_bytes()).await
        };
        if let Err(source) = written {
            lock(&self.shared.pending).remove(&id);
            return Err(match source.kind() {
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => {
                    self.disconnected()
                }
                _ => QmpError::Io {
                    socket: self.shared.socket.clone(),
                    source,
                },
            });
        }
        match rx.await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(QmpError::Command { class, desc, .. })) => Err(QmpError::Command {
                command: command.to_string(),
                class,
                desc,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(self.disconnected()),
        }
    }

    /// Runs a typed command.
    pub async fn run<C: QmpCommand>(&self, cmd: &C) -> Result<C::Reply, QmpError> {
        let value = self.execute(C::NAME, cmd.arguments()).await?;
        serde_json::from_value(value.clone()).map_err(|e| QmpError::BadReply {
            command: C::NAME.to_string(),
            detail: format!("{e}: {value}"),
        })
    }

    pub async fn query_status(&self) -> Result<StatusInfo, QmpError> {
        self.run(&QueryStatus).await
    }
    pub async fn stop(&self) -> Result<(), QmpError> {
        self.execute("stop", None).await.map(drop)
    }
    pub async fn cont(&self) -> Result<(), QmpError> {
        self.execute("cont", None).await.map(drop)
    }
    /// Asks the guest to power off (ACPI button).
    pub async fn system_powerdown(&self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).await.map(drop)
    }
    /// Presses and releases one key (a QAPI `QKeyCode`, e.g. `spc`).
    pub async fn send_key(&self, qcode: &str) -> Result<(), QmpError> {
        self.execute(
            "send-key",
            Some(json!({ "keys": [{ "type": "qcode", "data": qcode }] })),
        )
        .await
        .map(drop)
    }
    /// Ends QEMU now. QEMU may close the socket before its reply arrives;
    /// that counts as success.
    pub async fn quit(&self) -> Result<(), QmpError> {
        match self.execute("quit", None).await {
            Ok(_) | Err(QmpError::Disconnected { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
    /// `migrate-set-capabilities`: e.g. `[("multifd", false)]`.
    pub async fn migrate_set_capabilities(&self, caps: &[(&str, bool)]) -> Result<(), QmpError> {
        let list: Vec<Value> = caps
            .iter()
            .map(|(name, on)| json!({ "capability": name, "state": on }))
            .collect();
        self.execute(
            "migrate-set-capabilities",
            Some(json!({ "capabilities": list })),
        )
        .await
        .map(drop)
    }
    /// `migrate-set-parameters`, e.g. `json!({"max-bandwidth": u64::MAX >> 1})`.
    pub async fn migrate_set_parameters(&self, params: Value) -> Result<(), QmpError> {
        self.execute("migrate-set-parameters", Some(params))
            .await
            .map(drop)
    }
    /// Starts an outgoing migration to `uri` (`unix:/path`, `fd:name`, …).
    pub async fn migrate(&self, uri: &str) -> Result<(), QmpError> {
        self.execute("migrate", Some(json!({ "uri": uri })))
            .await
            .map(drop)
    }
    /// Starts loading a migration stream into a `-incoming defer` QEMU.
    pub async fn migrate_incoming(&self, uri: &str) -> Result<(), QmpError> {
        self.execute("migrate-incoming", Some(json!({ "uri": uri })))
            .await
            .map(drop)
    }
    pub async fn query_migrate(&self) -> Result<MigrationInfo, QmpError> {
        self.run(&QueryMigrate).await
    }

    /// Returns the oldest event named `name` that no earlier `wait_event`
    /// returned, waiting for one until `deadline`. Events are kept from the
    /// moment of connection, so one that arrived before this call is not
    /// missed.
    pub async fn wait_event(&self, name: &str, deadline: Instant) -> Result<QmpEvent, QmpError> {
        self.wait_any_event(&[name], deadline).await
    }

    /// Like [`Qmp::wait_event`], for the oldest event with any of `names`.
    pub async fn wait_any_event(
        &self,
        names: &[&str],
        deadline: Instant,
    ) -> Result<QmpEvent, QmpError> {
        let name = names.join("|");
        let start = Instant::now();
        let mut changed = self.shared.changed.subscribe();
        loop {
            changed.borrow_and_update();
            {
                let mut events = lock(&self.shared.events);
                if let Some(pos) = events.iter().position(|e| names.contains(&e.name.as_str())) {
                    return Ok(events.remove(pos).expect("position is in range"));
                }
            }
            if self.shared.closed.load(Ordering::SeqCst) {
                return Err(self.disconnected());
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(self.disconnected()),
                Err(_) => {
                    return Err(QmpError::EventTimeout {
                        event: name.to_string(),
                        waited: start.elapsed(),
                        socket: self.shared.socket.clone(),
                    });
                }
            }
        }
    }

    /// Every event from now on, as it arrives (for progress display).
    pub fn subscribe(&self) -> broadcast::Receiver<QmpEvent> {
        self.shared.live.subscribe()
    }

    /// Whether QEMU has closed the connection.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    fn disconnected(&self) -> QmpError {
        QmpError::Disconnected {
            socket: self.shared.socket.clone(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks leaves the data consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn read_loop(
    mut lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    shared: Arc<Shared>,
) {
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) | Err(_) => break,
        };
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            tracing::warn!(socket = %shared.socket.display(), "ignoring non-JSON QMP line {line:?}");
            continue;
        };
        if let Some(name) = msg.get("event").and_then(Value::as_str) {
            let ts = msg.get("timestamp");
            let seconds = ts.and_then(|t| t["seconds"].as_f64()).unwrap_or(0.0);
            let micros = ts.and_then(|t| t["microseconds"].as_f64()).unwrap_or(0.0);
            let event = QmpEvent {
                name: name.to_string(),
                data: msg.get("data").cloned().unwrap_or(Value::Null),
                timestamp: seconds + micros / 1e6,
            };
            tracing::debug!(event = %event.name, data = %event.data, "QMP event");
            {
                let mut events = lock(&shared.events);
                if events.len() == KEPT_EVENTS {
                    events.pop_front();
                }
                events.push_back(event.clone());
            }
            let _ = shared.live.send(event);
            shared.changed.send_modify(|n| *n += 1);
            continue;
        }
        let Some(id) = msg.get("id").and_then(Value::as_u64) else {
            tracing::warn!(socket = %shared.socket.display(), "ignoring QMP message without id: {line}");
            continue;
        };
        let Some(tx) = lock(&shared.pending).remove(&id) else {
            continue;
        };
        let result = if let Some(ret) = msg.get("return") {
            Ok(ret.clone())
        } else if let Some(err) = msg.get("error") {
            Err(QmpError::Command {
                command: String::new(),
                class: err["class"].as_str().unwrap_or("GenericError").to_string(),
                desc: err["desc"]
                    .as_str()
                    .unwrap_or("(no description)")
                    .to_string(),
            })
        } else {
            Err(QmpError::Protocol {
                socket: shared.socket.clone(),
                detail: format!("reply with neither return nor error: {line}"),
            })
        };
        let _ = tx.send(result);
    }
    shared.closed.store(true, Ordering::SeqCst);
    // Dropping the senders wakes every command still waiting.
    lock(&shared.pending).clear();
    shared.changed.send_modify(|n| *n += 1);
}

/// A QMP command with a typed reply.
pub trait QmpCommand {
    const NAME: &'static str;
    type Reply: DeserializeOwned;
    fn arguments(&self) -> Option<Value> {
        None
    }
}

pub struct QueryStatus;
impl QmpCommand for QueryStatus {
    const NAME: &'static str = "query-status";
    type Reply = StatusInfo;
}

pub struct QueryMigrate;
impl QmpCommand for QueryMigrate {
    const NAME: &'static str = "query-migrate";
    type Reply = MigrationInfo;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;
    use tokio::net::UnixListener;

    /// A fake QEMU: greets, answers capabilities, then runs `script` on
    /// each further command line it reads.
    async fn fake_qemu(
        listener: UnixListener,
        script: impl Fn(&Value) -> Vec<String> + Send + 'static,
    ) {
        let (stream, _) = listener.accept().await.unwrap();
        let (r, mut w) = stream.into_split();
        let mut lines = BufReader::new(r).lines();
        w.write_all(
            b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 2, \"minor\": 0, \"major\": 10}, \"package\": \"test\"}, \"capabilities\": [\"oob\"]}}\n",
        )
        .await
        .unwrap();
        while let Ok(Some(line)) = lines.next_line().await {
            let cmd: Value = serde_json::from_str(&line).unwrap();
            let out = if cmd["execute"] == "qmp_capabilities" {
                vec![json!({"return": {}, "id": cmd["id"]}).to_string()]
            } else {
                script(&cmd)
            };
            for l in out {
                if l == "CLOSE" {
                    return;
                }
                w.write_all(format!("{l}\n").as_bytes()).await.unwrap();
            }
        }
    }

    #[tokio::test]
    async fn replies_errors_and_unknown_events() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp");
        let sock2 = sock.clone();
        // The listener appears late: connect must wait for it.
        let server = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let l = UnixListener::bind(&sock2).unwrap();
            fake_qemu(l, |cmd| {
                let id = cmd["id"].clone();
                match cmd["execute"].as_str().unwrap() {
                    "query-status" => vec![
                        // An event nobody knows, before the reply: harmless.
                        r#"{"event": "SOMETHING_NEW_IN_QEMU_12", "data": {"x": 1}, "timestamp": {"seconds": 1, "microseconds": 5}}"#.into(),
                        json!({"return": {"running": true, "singlestep": false, "status": "running"}, "id": id}).to_string(),
                    ],
                    "system_powerdown" => vec![
                        json!({"return": {}, "id": id}).to_string(),
                        r#"{"event": "POWERDOWN", "timestamp": {"seconds": 2, "microseconds": 0}}"#.into(),
                        r#"{"event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}, "timestamp": {"seconds": 3, "microseconds": 0}}"#.into(),
                    ],
                    "quit" => vec!["CLOSE".into()],
                    other => vec![json!({"error": {"class": "CommandNotFound", "desc": format!("The command {other} has not been found")}, "id": id}).to_string()],
                }
            })
            .await
        });
        let qmp = Qmp::connect(&sock, Instant::now() + Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(qmp.version().qemu.major, 10);
        let st = qmp.query_status().await.unwrap();
        assert!(st.running);
        assert_eq!(st.status, "running");

        let err = qmp.execute("no-such-command", None).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "QMP command no-such-command failed: CommandNotFound: The command no-such-command has not been found"
        );

        qmp.system_powerdown().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        // Both events arrived already; neither is lost, order is kept per name.
        let sd = qmp.wait_event("SHUTDOWN", deadline).await.unwrap();
        assert_eq!(sd.data["reason"], "guest-shutdown");
        qmp.wait_event("POWERDOWN", deadline).await.unwrap();
        let unknown = qmp
            .wait_event("SOMETHING_NEW_IN_QEMU_12", deadline)
            .await
            .unwrap();
        assert_eq!(unknown.timestamp, 1.000005);

        let short = Instant::now() + Duration::from_millis(50);
        assert!(matches!(
            qmp.wait_event("SHUTDOWN", short).await,
            Err(QmpError::EventTimeout { .. })
        ));

        qmp.quit().await.unwrap();
        server.await.unwrap();
        assert!(matches!(
            qmp.wait_event("RESUME", Instant::now() + Duration::from_secs(5))
                .await,
            Err(QmpError::Disconnected { .. })
        ));
        assert!(matches!(
            qmp.cont().await,
            Err(QmpError::Disconnected { .. })
        ));
    }

    #[tokio::test]
    async fn connect_gives_up_at_the_deadline_naming_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("never");
        let err = match Qmp::connect(&sock, Instant::now() + Duration::from_millis(100)).await {
            Err(e) => e,
            Ok(_) => panic!("connected to nothing"),
        };
        let msg = err.to_string();
        assert!(msg.contains(&sock.display().to_string()), "{msg}");
        assert!(msg.contains("No such file"), "{msg}");
    }
}
