//! A real OCI registry for tests: Debian's `docker-registry` (distribution
//! v2.8) on 127.0.0.1 at a free port, with its storage in a temporary
//! directory, optionally behind htpasswd (bcrypt) authentication. Stopped
//! when dropped, and killed with the test process if that dies first.

#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

pub struct TestRegistry {
    child: Child,
    dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`
    pub addr: String,
    /// The token service, for a registry with token (bearer) auth.
    pub tokens: Option<TokenService>,
}

/// How the registry authenticates.
enum Auth<'a> {
    Anonymous,
    /// HTTP basic against an htpasswd file.
    Basic(&'a str, &'a str),
    /// Bearer tokens from a token service that wants these credentials.
    Token(&'a str, &'a str),
}

/// Why registry tests cannot run here, if they cannot.
pub fn missing() -> Option<String> {
    (!Path::new(REGISTRY_BIN).exists()).then(|| {
        format!(
            "{REGISTRY_BIN} is missing: apt-get install docker-registry (scripts/install-deps does)"
        )
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl TestRegistry {
    pub fn start() -> Self {
        Self::start_with(Auth::Anonymous)
    }

    /// A registry that wants `user`/`password` (HTTP basic, htpasswd).
    pub fn with_user(user: &str, password: &str) -> Self {
        Self::start_with(Auth::Basic(user, password))
    }

    /// A registry that wants bearer tokens (distribution's `auth: token`)
    /// from a token service of the test's own, which hands them to
    /// `user`/`password` (as Docker Hub, GHCR or Harbor do).
    pub fn with_token_service(user: &str, password: &str) -> Self {
        Self::start_with(Auth::Token(user, password))
    }

    fn start_with(auth: Auth<'_>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
             delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("storage").display()
        );
        let mut tokens = None;
        if let Auth::Token(user, password) = auth {
            let service = TokenService::start(dir.path(), user, password);
            config.push_str(&format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    \
                 rootcertbundle: {}\n",
                service.realm(),
                TokenService::SERVICE,
                TokenService::ISSUER,
                service.cert.display()
            ));
            tokens = Some(service);
        }
        if let Auth::Basic(user, password) = auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .expect("htpasswd (apache2-utils) runs");
            assert!(out.status.success(), "htpasswd failed");
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, &out.stdout).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: cygvm-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let mut cmd = Command::new(REGISTRY_BIN);
        cmd.arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // SAFETY: prctl only, between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("docker-registry starts");
        let registry = Self {
            child,
            dir,
            addr,
            tokens,
        };
        registry.wait_ready();
        registry
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(&self.addr) {
                use std::io::{Read, Write};
                let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
                let mut head = [0u8; 12];
                if s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer on {} within 30 s:\n{}",
                self.addr,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// The file the registry keeps a blob's bytes in.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// A credentials file (as `docker login` writes it) for this registry.
    pub fn auth_file(&self, dir: &Path, user: &str, password: &str) -> PathBuf {
        use base64::Engine;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let path = dir.join(format!("auth-{user}-{}.json", password.len()));
        std::fs::write(
            &path,
            format!(r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#, self.addr),
        )
        .unwrap();
        path
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A token service as distribution's token auth expects one: `GET
/// /token?service=…&scope=…` with HTTP basic credentials answers a JWT
/// (RS256, signed with `openssl`, its certificate in the `x5c` header)
/// granting the scopes asked for. It records the scopes it granted.
pub struct TokenService {
    addr: std::net::SocketAddr,
    pub cert: PathBuf,
    granted: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl TokenService {
    pub const SERVICE: &str = "cygvm-test-registry";
    pub const ISSUER: &str = "cygvm-test-token-service";

    fn start(dir: &Path, user: &str, password: &str) -> Self {
        let key = dir.join("token-key.pem");
        let cert = dir.join("token-cert.pem");
        let made = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=cygvm test token service", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl runs");
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .output()
            .expect("openssl runs");
        assert!(der.status.success());
        use base64::Engine;
        let x5c = base64::engine::general_purpose::STANDARD.encode(&der.stdout);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let granted = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let state = (key, x5c, format!("Basic {basic}"), granted.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = serve_token(stream, &state.0, &state.1, &state.2, &state.3);
            }
        });
        Self {
            addr,
            cert,
            granted,
        }
    }

    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The scopes granted so far, in order.
    pub fn granted(&self) -> Vec<String> {
        self.granted.lock().unwrap().clone()
    }
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Answers one request of the token service.
fn serve_token(
    stream: std::net::TcpStream,
    key: &Path,
    x5c: &str,
    authorization: &str,
    granted: &std::sync::Mutex<Vec<String>>,
) -> std::io::Result<()> {
    use std::io::{BufRead, Write};
    let mut reader = std::io::BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut authorized = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("authorization")
        {
            authorized = value.trim() == authorization;
        }
    }
    let mut out = stream;
    if !authorized {
        return out.write_all(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("");
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let scopes: Vec<String> = query
        .split('&')
        .filter_map(|kv| kv.strip_prefix("scope="))
        .map(percent_decode)
        .collect();
    let access: Vec<serde_json::Value> = scopes
        .iter()
        .filter_map(|scope| {
            let mut parts = scope.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            Some(serde_json::json!({
                "type": kind,
                "name": name,
                "actions": actions.split(',').collect::<Vec<_>>(),
            }))
        })
        .collect();
    granted.lock().unwrap().extend(scopes.iter().cloned());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
    let claims = serde_json::json!({
        "iss": TokenService::ISSUER,
        "sub": "builder",
        "aud": TokenService::SERVICE,
        "exp": now + 300,
        "nbf": now - 10,
        "iat": now,
        "jti": format!("{now}-{}", scopes.len()),
        "access": access,
    });
    let signed = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let mut openssl = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    openssl.stdin.take().unwrap().write_all(signed.as_bytes())?;
    let signature = openssl.wait_with_output()?;
    assert!(signature.status.success(), "openssl dgst -sign failed");
    let body = serde_json::json!({
        "token": format!("{signed}.{}", b64url(&signature.stdout)),
        "expires_in": 300,
    })
    .to_string();
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
