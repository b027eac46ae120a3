//! Registry credentials from where people already keep them, and the
//! `WWW-Authenticate` challenges that say how to use them.
//!
//! Looked up, first match wins: `$REGISTRY_AUTH_FILE`, then podman's
//! `$XDG_RUNTIME_DIR/containers/auth.json`, then docker's
//! `$DOCKER_CONFIG/config.json` (default `~/.docker/config.json`). In each,
//! as docker reads them: a credential helper named for the host in
//! `credHelpers`, else the one in `credsStore` (both run as
//! `docker-credential-NAME get`, the host on stdin, JSON on stdout), else
//! `auths.<host>.auth`, base64 of `user:password`. Credentials are never
//! printed: their `Debug` shows the user and where they came from only.

use std::path::{Path, PathBuf};

use base64::Engine;

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read registry credentials from {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a credentials file ({reason})")]
    Parse { path: PathBuf, reason: String },
    #[error("{path} names the credential helper {helper}, which cannot run: {reason}")]
    Helper {
        path: PathBuf,
        helper: String,
        reason: String,
    },
}

/// A user and password for one registry.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    password: String,
    /// Where they came from, for messages: a file, or a credential helper
    /// and the file naming it.
    pub source: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// The value of an `Authorization: Basic` header.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.user, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// The files searched, in order (whether they exist or not).
pub fn credential_files() -> Vec<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let mut files = Vec::new();
    if let Some(f) = env("REGISTRY_AUTH_FILE") {
        files.push(f);
    }
    if let Some(run) = env("XDG_RUNTIME_DIR") {
        files.push(run.join("containers/auth.json"));
    }
    if let Some(d) = env("DOCKER_CONFIG") {
        files.push(d.join("config.json"));
    } else if let Some(home) = env("HOME") {
        files.push(home.join(".docker/config.json"));
    }
    files
}

/// The stored credentials for `registry` (`host` or `host:port`), if any.
pub fn lookup(registry: &str) -> Result<Option<Credentials>, CredentialsError> {
    for file in credential_files() {
        let text = match std::fs::read(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(CredentialsError::Read { path: file, source }),
        };
        if let Some(c) = from_file(&file, &text, registry)? {
            return Ok(Some(c));
        }
    }
    Ok(None)
}

/// The names Docker Hub goes by; `docker login` keeps its credentials
/// under `https://index.docker.io/v1/`.
const DOCKER_HUB: [&str; 4] = [
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "registry.hub.docker.com",
];
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

fn is_docker_hub(registry: &str) -> bool {
    DOCKER_HUB.contains(&registry)
}

/// The host that serves `registry`'s API: Docker Hub's is not `docker.io`.
pub fn api_host(registry: &str) -> &str {
    if is_docker_hub(registry) {
        "registry-1.docker.io"
    } else {
        registry
    }
}

/// Whether a key of `auths` or `credHelpers` (`host`, `host:port`, or a
/// URL such as `https://host/v1/`) names `registry`.
fn names_registry(key: &str, registry: &str) -> bool {
    let k = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = k.split('/').next().unwrap_or("");
    host == registry || (is_docker_hub(host) && is_docker_hub(registry))
}

fn from_file(
    path: &Path,
    text: &[u8],
    registry: &str,
) -> Result<Option<Credentials>, CredentialsError> {
    let parse = |reason: String| CredentialsError::Parse {
        path: path.to_path_buf(),
        reason,
    };
    let json: serde_json::Value = serde_json::from_slice(text).map_err(|e| parse(e.to_string()))?;
    let helper = json
        .get("credHelpers")
        .and_then(|h| h.as_object())
        .and_then(|h| h.iter().find(|(key, _)| names_registry(key, registry)))
        .and_then(|(_, name)| name.as_str())
        .or_else(|| json.get("credsStore").and_then(|s| s.as_str()))
        .filter(|name| !name.is_empty());
    if let Some(helper) = helper {
        return from_helper(path, helper, registry);
    }
    let Some(auths) = json.get("auths").and_then(|a| a.as_object()) else {
        return Ok(None);
    };
    let entry = auths.iter().find(|(key, _)| names_registry(key, registry));
    let Some((key, entry)) = entry else {
        return Ok(None);
    };
    let Some(auth) = entry.get("auth").and_then(|a| a.as_str()) else {
        return Ok(None);
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .map_err(|_| parse(format!("auths.{key:?}.auth is not base64")))?;
    let decoded =
        String::from_utf8(decoded).map_err(|_| parse(format!("auths.{key:?}.auth is not text")))?;
    let (user, password) = decoded
        .split_once(':')
        .ok_or_else(|| parse(format!("auths.{key:?}.auth is not user:password")))?;
    Ok(Some(Credentials {
        user: user.to_string(),
        password: password.to_string(),
        source: path.display().to_string(),
    }))
}

/// What a credential helper's `get` prints.
#[derive(serde::Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

/// Asks `docker-credential-HELPER get` (named in `path`) for `registry`'s
/// credentials, as docker does: the host on stdin, JSON on stdout, and a
/// failure saying "credentials not found" when it has none.
fn from_helper(
    path: &Path,
    helper: &str,
    registry: &str,
) -> Result<Option<Credentials>, CredentialsError> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let program = format!("docker-credential-{helper}");
    let failed = |reason: String| CredentialsError::Helper {
        path: path.to_path_buf(),
        helper: program.clone(),
        reason,
    };
    if helper.contains('/') {
        return Err(failed("a helper's name cannot hold a '/'".into()));
    }
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("{e} (is it installed and on PATH?)")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading is judged by its answer.
        let server = if is_docker_hub(registry) {
            DOCKER_HUB_KEY
        } else {
            registry
        };
        let _ = stdin.write_all(server.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| failed(e.to_string()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let said = format!("{stdout} {}", String::from_utf8_lossy(&out.stderr));
        if said.to_ascii_lowercase().contains("credentials not found") {
            return Ok(None);
        }
        return Err(failed(format!(
            "`{program} get` ended with {}: {}",
            out.status,
            said.trim()
        )));
    }
    let answer: HelperAnswer = serde_json::from_str(stdout.trim()).map_err(|e| {
        failed(format!(
            "`{program} get` did not answer JSON with Username and Secret: {e}"
        ))
    })?;
    // Older helpers answer an unknown host with empty fields.
    if answer.username.is_empty() && answer.secret.is_empty() {
        return Ok(None);
    }
    if answer.username == "<token>" {
        return Err(failed(format!(
            "it holds an identity token for {registry}, which cygvm cannot use; store a user and password or access token instead"
        )));
    }
    Ok(Some(Credentials {
        user: answer.username,
        password: answer.secret,
        source: format!("{program} (named in {})", path.display()),
    }))
}

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

impl Challenge {
    pub fn parse(header: &str) -> Option<Self> {
        let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
        let param = |name: &str| -> Option<String> {
            // key="value" pairs; values may hold commas (scopes do).
            let mut rest = params;
            while let Some(eq) = rest.find('=') {
                let key = rest[..eq].trim().trim_start_matches(',').trim();
                let after = &rest[eq + 1..];
                let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
                    let end = quoted.find('"')?;
                    (&quoted[..end], &quoted[end + 1..])
                } else {
                    let end = after.find(',').unwrap_or(after.len());
                    (&after[..end], &after[end..])
                };
                if key.eq_ignore_ascii_case(name) {
                    return Some(value.to_string());
                }
                rest = next;
            }
            None
        };
        if scheme.eq_ignore_ascii_case("basic") {
            Some(Self::Basic)
        } else if scheme.eq_ignore_ascii_case("bearer") {
            Some(Self::Bearer {
                realm: param("realm")?,
                service: param("service"),
                scope: param("scope"),
            })
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_entries_match_by_host_and_port() {
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret:with-colon");
        let text = format!(
            r#"{{"auths": {{"https://index.docker.io/v1/": {{"auth": "eDp5"}},
                "127.0.0.1:5000": {{"auth": "{auth}"}}}}}}"#
        );
        let path = Path::new("/x/config.json");
        let c = from_file(path, text.as_bytes(), "127.0.0.1:5000")
            .unwrap()
            .unwrap();
        assert_eq!(c.user, "alice");
        assert_eq!(c.password, "s3cret:with-colon");
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(
            from_file(path, text.as_bytes(), "127.0.0.1:5001")
                .unwrap()
                .is_none()
        );
        // Docker Hub's key, whichever of its names a reference uses.
        for hub in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
            let c = from_file(path, text.as_bytes(), hub).unwrap().unwrap();
            assert_eq!(c.user, "x", "{hub}");
            assert_eq!(api_host(hub), "registry-1.docker.io");
        }
        assert_eq!(api_host("127.0.0.1:5000"), "127.0.0.1:5000");
        let err = from_file(path, br#"{"auths": {"h": {"auth": "!!"}}}"#, "h").unwrap_err();
        assert!(err.to_string().contains("not base64"), "{err}");
    }

    #[test]
    fn a_helper_that_cannot_run_is_named_with_the_file_naming_it() {
        let path = Path::new("/x/config.json");
        let text = br#"{"auths": {"h:1": {}}, "credsStore": "cygvm-no-such-helper"}"#;
        let err = from_file(path, text, "h:1").unwrap_err().to_string();
        assert!(
            err.starts_with(
                "/x/config.json names the credential helper docker-credential-cygvm-no-such-helper, which cannot run"
            ),
            "{err}"
        );
        let text = br#"{"credHelpers": {"h:1": "../../bin/sh"}}"#;
        let err = from_file(path, text, "h:1").unwrap_err().to_string();
        assert!(err.contains("cannot hold a '/'"), "{err}");
        // A helper for another host is not asked.
        let text = br#"{"credHelpers": {"other:1": "cygvm-no-such-helper"}}"#;
        assert!(from_file(path, text, "h:1").unwrap().is_none());
    }

    #[test]
    fn challenges_parse() {
        assert_eq!(
            Challenge::parse(r#"Basic realm="basic-realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
    }
}
