//! The agent's SSH side against a real dropbear on loopback: pinned host
//! key, key authentication, streamed output and exit status, and the agent
//! protocol over a pipe. dropbear has no option for the authorized_keys
//! path, so it runs in a private mount namespace where a temporary
//! directory is bound over the user's ~/.ssh (needs root, as CI has).

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cygvm::agent::protocol::{AgentConfig, Reply, ReplyBody};
use cygvm::agent::ssh::{GuestSsh, OutputStream, SshError};
use cygvm::secrets::ImageSecrets;

struct Dropbear {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Dropbear {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts dropbear with a host key converted from `secrets` and the
/// client's public key authorized.
fn dropbear(secrets: &ImageSecrets) -> Dropbear {
    let dir = tempfile::tempdir().unwrap();
    let openssh_key = dir.path().join("host_openssh");
    cygvm::fsutil::write_atomic(
        &openssh_key,
        secrets.host_private_key_openssh().unwrap().as_bytes(),
        0o600,
    )
    .unwrap();
    let host_key = dir.path().join("host_dropbear");
    let conv = Command::new("dropbearconvert")
        .args(["openssh", "dropbear"])
        .arg(&openssh_key)
        .arg(&host_key)
        .output()
        .expect("dropbearconvert (package dropbear-bin)");
    assert!(
        conv.status.success(),
        "{}",
        String::from_utf8_lossy(&conv.stderr)
    );
    let ssh_dir = dir.path().join("ssh");
    std::fs::create_dir(&ssh_dir).unwrap();
    let ak = ssh_dir.join("authorized_keys");
    std::fs::write(&ak, format!("{}\n", secrets.client_public_key())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&ak, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&ssh_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let home = std::env::var("HOME").unwrap_or("/root".into());
    let home_ssh = Path::new(&home).join(".ssh");
    std::fs::create_dir_all(&home_ssh).unwrap();
    let port = free_port();
    let child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(r#"mount --bind "$1" "$2" && exec /usr/sbin/dropbear -F -E -s -p "127.0.0.1:$3" -r "$4" -P "$5""#)
        .arg("sh")
        .arg(&ssh_dir)
        .arg(&home_ssh)
        .arg(port.to_string())
        .arg(&host_key)
        .arg(dir.path().join("pid"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("unshare and dropbear (packages util-linux, dropbear-bin)");
    Dropbear {
        child,
        port,
        _dir: dir,
    }
}

fn config(secrets: &ImageSecrets, port: u16) -> AgentConfig {
    AgentConfig {
        guest: format!("127.0.0.1:{port}"),
        user: whoami(),
        client_key: secrets
            .client_key
            .to_openssh(ssh_key::LineEnding::LF)
            .unwrap()
            .to_string(),
        host_key: secrets.host_public_key(),
    }
}

fn whoami() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: binding over ~/.ssh in a mount namespace needs root");
            return;
        }
    };
}

#[test]
fn exec_streams_output_and_returns_the_exit_status() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let secrets = ImageSecrets::load_or_create(&tmp.path().join("s"), None).unwrap();
    let server = dropbear(&secrets);
    let cfg = config(&secrets, server.port);
    let mut stages = Vec::new();
    let mut ssh = GuestSsh::wait_ready(&cfg, Duration::from_secs(20), |s, _| stages.push(s))
        .expect("ssh ready");
    let mut out = Vec::new();
    let mut err = Vec::new();
    let exit = ssh
        .exec(
            "echo out; echo err >&2; exit 3",
            |stream, data| match stream {
                OutputStream::Stdout => out.extend_from_slice(data),
                OutputStream::Stderr => err.extend_from_slice(data),
            },
        )
        .unwrap();
    assert_eq!(exit.status, Some(3));
    assert_eq!(out, b"out\n");
    assert_eq!(err, b"err\n");
    // The session is reused for a second command.
    let exit = ssh.exec("kill -9 $$", |_, _| {}).unwrap();
    assert_eq!(exit.status, None);
    assert_eq!(exit.signal.as_deref(), Some("KILL"));
}

#[test]
fn a_different_host_key_is_refused_at_once() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let secrets = ImageSecrets::load_or_create(&tmp.path().join("s"), None).unwrap();
    let other = ImageSecrets::load_or_create(&tmp.path().join("other"), None).unwrap();
    let server = dropbear(&secrets);
    let mut cfg = config(&secrets, server.port);
    cfg.host_key = other.host_public_key();
    let start = Instant::now();
    let err = match GuestSsh::wait_ready(&cfg, Duration::from_secs(20), |_, _| {}) {
        Err(e) => e,
        Ok(_) => panic!("connected despite a different host key"),
    };
    assert!(matches!(err, SshError::HostKeyMismatch { .. }), "{err}");
    assert!(err.to_string().contains("not the pinned"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(15), "kept retrying");
}

#[test]
fn an_unauthorized_client_key_is_refused() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let secrets = ImageSecrets::load_or_create(&tmp.path().join("s"), None).unwrap();
    let other = ImageSecrets::load_or_create(&tmp.path().join("other"), None).unwrap();
    let server = dropbear(&secrets);
    let mut cfg = config(&secrets, server.port);
    cfg.client_key = config(&other, server.port).client_key;
    let err = match GuestSsh::wait_ready(&cfg, Duration::from_secs(20), |_, _| {}) {
        Err(e) => e,
        Ok(_) => panic!("logged in with an unauthorized key"),
    };
    assert!(matches!(err, SshError::Auth { .. }), "{err}");
}

#[test]
fn nothing_listening_times_out_with_the_last_step() {
    let tmp = tempfile::tempdir().unwrap();
    let secrets = ImageSecrets::load_or_create(&tmp.path().join("s"), None).unwrap();
    let cfg = config(&secrets, free_port());
    let err = match GuestSsh::wait_ready(&cfg, Duration::from_secs(1), |_, _| {}) {
        Err(e) => e,
        Ok(_) => panic!("connected to nothing"),
    };
    let text = err.to_string();
    assert!(text.contains("not ready after"), "{text}");
    assert!(text.contains("tcp"), "{text}");
}

#[test]
fn agent_protocol_over_a_pipe() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let secrets = ImageSecrets::load_or_create(&tmp.path().join("s"), None).unwrap();
    let server = dropbear(&secrets);
    let cfg = config(&secrets, server.port);
    let input = concat!(
        "{\"id\":1,\"op\":\"hello\",\"version\":2}\n",
        "{\"id\":2,\"op\":\"exec\",\"command\":\"true\"}\n",
        "{\"id\":3,\"op\":\"wait_ssh\",\"timeout_ms\":20000}\n",
        "{\"id\":4,\"op\":\"exec\",\"command\":\"printf hi; exit 7\"}\n",
        "{\"id\":5,\"op\":\"shutdown\"}\n",
    );
    let mut output = Vec::new();
    cygvm::agent::server::serve(
        input.as_bytes(),
        cygvm::agent::server::Agent::new(&mut output, Some(cfg)),
    )
    .unwrap();
    let replies: Vec<Reply> = String::from_utf8(output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(matches!(
        replies[0].body,
        ReplyBody::Hello { version: 2, .. }
    ));
    assert!(
        matches!(&replies[1].body, ReplyBody::Error { message, .. } if message.contains("wait_ssh first"))
    );
    let for_id = |id| replies.iter().filter(move |r| r.id == id);
    assert!(for_id(3).any(|r| r.body == ReplyBody::Done));
    assert!(for_id(4).any(|r| r.body
        == ReplyBody::Stdout {
            data: "aGk=".into()
        }));
    assert!(for_id(4).any(|r| r.body
        == ReplyBody::Exit {
            status: Some(7),
            signal: None
        }));
    assert!(for_id(5).any(|r| r.body == ReplyBody::Done));
    let _ = std::io::stdout().flush();
}

#[tokio::test]
async fn host_client_and_agent_over_a_unix_socket() {
    require_root!();
    use cygvm::agent::client::AgentClient;
    let tmp = tempfile::tempdir().unwrap();
    let secrets = ImageSecrets::load_or_create(&tmp.path().join("s"), None).unwrap();
    let server = dropbear(&secrets);
    let cfg = config(&secrets, server.port);
    let sock = tmp.path().join("agent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let agent = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let writer = stream.try_clone().unwrap();
        cygvm::agent::server::serve(stream, cygvm::agent::server::Agent::new(writer, Some(cfg)))
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut client = AgentClient::connect(&sock, deadline).await.unwrap();
    assert!(client.agent.starts_with("cygvm-agent "), "{}", client.agent);
    client
        .wait_ssh(Duration::from_secs(20), |_, _| {})
        .await
        .unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let exit = client
        .exec("echo hello; echo oops >&2; exit 5", &mut out, &mut err)
        .await
        .unwrap();
    assert_eq!(exit.exit_code(), 5);
    assert_eq!(out, b"hello\n");
    assert_eq!(err, b"oops\n");
    let failed = client
        .exec_checked("echo bad >&2; false", None)
        .await
        .unwrap_err();
    assert!(failed.to_string().contains("ended with 1: bad"), "{failed}");
    let echoed = client
        .exec_checked("cat", Some(b"fed on stdin"))
        .await
        .unwrap();
    assert_eq!(echoed, b"fed on stdin");
    client.shutdown().await.unwrap();
    agent.join().unwrap().unwrap();
}
