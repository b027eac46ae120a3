//! The OCI distribution API calls cygvm makes (distribution-spec 1.1):
//! blob HEAD, GET and chunked upload, manifest GET and PUT; authentication
//! by the registry's challenge (anonymous, basic, bearer token).
//!
//! Blocking (ureq, already cygvm's HTTP client), shareable between the
//! threads that move blobs.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;
use std::time::Duration;

use ureq::http::{self, Response};

use super::auth::{self, Challenge, Credentials};
use super::reference::Reference;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot reach registry {registry} ({url}){hint}")]
    Unreachable {
        registry: String,
        url: String,
        hint: &'static str,
        #[source]
        source: Box<ureq::Error>,
    },
    #[error(
        "registry {registry} wants credentials and none are stored for it (looked in {files}); \
         log in with `docker login {registry}` or `podman login {registry}`, or set REGISTRY_AUTH_FILE"
    )]
    NeedsCredentials { registry: String, files: String },
    #[error(
        "registry {registry} refused the credentials of user {user:?} from {file}; check the password stored there"
    )]
    BadCredentials {
        registry: String,
        user: String,
        file: String,
    },
    #[error("registry {registry} denies access to {repository} (HTTP {status}){detail}")]
    Denied {
        registry: String,
        repository: String,
        status: u16,
        detail: String,
    },
    #[error("{reference}: no such tag or digest in the registry{detail}")]
    ManifestUnknown { reference: String, detail: String },
    #[error("{method} {url}: HTTP {status}{detail}")]
    Status {
        method: String,
        url: String,
        status: u16,
        detail: String,
    },
    #[error("registry {registry}: {what}")]
    Protocol { registry: String, what: String },
    #[error(transparent)]
    Credentials(#[from] auth::CredentialsError),
    #[error("cannot read {what}")]
    Read {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// Uploads larger than this go up in PATCH requests of this size.
pub const UPLOAD_CHUNK: u64 = 64 << 20;

/// What a request sends. Re-sendable, for the retry after a challenge.
pub enum Payload<'a> {
    Empty,
    Bytes(&'a [u8]),
    /// `len` bytes of `file` from `offset`; `progress` is told of each
    /// piece sent.
    File {
        file: &'a File,
        offset: u64,
        len: u64,
        progress: &'a (dyn Fn(u64) + Sync),
    },
}

impl Payload<'_> {
    fn len(&self) -> u64 {
        match self {
            Payload::Empty => 0,
            Payload::Bytes(b) => b.len() as u64,
            Payload::File { len, .. } => *len,
        }
    }
}

struct FileRegion<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
    progress: &'a (dyn Fn(u64) + Sync),
}

impl Read for FileRegion<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = (self.end - self.pos).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file being uploaded became shorter",
            ));
        }
        self.pos += n as u64;
        (self.progress)(n as u64);
        Ok(n)
    }
}

/// One repository in one registry.
pub struct RegistryClient {
    agent: ureq::Agent,
    base: String,
    pub registry: String,
    pub repository: String,
    push: bool,
    credentials: Option<Credentials>,
    authorization: Mutex<Option<String>>,
}

impl RegistryClient {
    /// A client for `reference`'s repository; `push` asks for write access
    /// when a token is needed. HTTPS unless `plain_http`.
    pub fn new(reference: &Reference, plain_http: bool, push: bool) -> Result<Self, RegistryError> {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(300)))
            .user_agent(concat!("cygvm/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        let scheme = if plain_http { "http" } else { "https" };
        Ok(Self {
            agent,
            base: format!("{scheme}://{}", auth::api_host(&reference.registry)),
            registry: reference.registry.clone(),
            repository: reference.repository.clone(),
            push,
            credentials: auth::lookup(&reference.registry)?,
            authorization: Mutex::new(None),
        })
    }

    fn url(&self, tail: &str) -> String {
        format!("{}/v2/{}/{tail}", self.base, self.repository)
    }

    fn absolute(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_string()
        } else {
            format!("{}{location}", self.base)
        }
    }

    /// Sends a request, answering one authentication challenge.
    fn request(
        &self,
        method: http::Method,
        url: &str,
        headers: &[(&str, String)],
        payload: &Payload,
    ) -> Result<Response<ureq::Body>, RegistryError> {
        let mut challenged = false;
        loop {
            let mut builder = http::Request::builder().method(method.clone()).uri(url);
            for (k, v) in headers {
                builder = builder.header(*k, v);
            }
            if let Some(auth) = self
                .authorization
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
            {
                builder = builder.header("Authorization", auth);
            }
            let has_body = !matches!(payload, Payload::Empty)
                || method == http::Method::PUT
                || method == http::Method::POST;
            if has_body {
                builder = builder.header("Content-Length", payload.len().to_string());
            }
            let sent = match payload {
                Payload::Empty => {
                    let req = builder.body(()).map_err(|e| self.protocol(e.to_string()))?;
                    self.agent.run(req)
                }
                Payload::Bytes(b) => {
                    let req = builder.body(*b).map_err(|e| self.protocol(e.to_string()))?;
                    self.agent.run(req)
                }
                Payload::File {
                    file,
                    offset,
                    len,
                    progress,
                } => {
                    let mut region = FileRegion {
                        file,
                        pos: *offset,
                        end: offset + len,
                        progress: *progress,
                    };
                    let body = ureq::SendBody::from_reader(&mut region);
                    let req = builder
                        .body(body)
                        .map_err(|e| self.protocol(e.to_string()))?;
                    self.agent.run(req)
                }
            };
            let response = sent.map_err(|source| RegistryError::Unreachable {
                registry: self.registry.clone(),
                url: url.to_string(),
                hint: if self.base.starts_with("https") {
                    "; if it serves plain HTTP (a local test registry), pass --plain-http"
                } else {
                    ""
                },
                source: Box::new(source),
            })?;
            if response.status() != 401 {
                return Ok(response);
            }
            if challenged {
                return Err(self.refused());
            }
            challenged = true;
            let header = response
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            self.authenticate(&header)?;
        }
    }

    fn refused(&self) -> RegistryError {
        match &self.credentials {
            Some(c) => RegistryError::BadCredentials {
                registry: self.registry.clone(),
                user: c.user.clone(),
                file: c.source.clone(),
            },
            None => RegistryError::NeedsCredentials {
                registry: self.registry.clone(),
                files: auth::credential_files()
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            },
        }
    }

    fn authenticate(&self, header: &str) -> Result<(), RegistryError> {
        let value = match Challenge::parse(header) {
            Some(Challenge::Basic) => match &self.credentials {
                Some(c) => c.basic_header(),
                None => return Err(self.refused()),
            },
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => format!("Bearer {}", self.token(&realm, service, scope)?),
            None => {
                return Err(self.protocol(format!(
                    "answered 401 with an authentication scheme cygvm does not know: {header:?}"
                )));
            }
        };
        *self.authorization.lock().unwrap_or_else(|e| e.into_inner()) = Some(value);
        Ok(())
    }

    /// A bearer token from the registry's token service.
    fn token(
        &self,
        realm: &str,
        service: Option<String>,
        scope: Option<String>,
    ) -> Result<String, RegistryError> {
        let actions = if self.push { "pull,push" } else { "pull" };
        let scope = scope.unwrap_or_else(|| format!("repository:{}:{actions}", self.repository));
        let mut req = self.agent.get(realm).query("scope", &scope);
        if let Some(s) = &service {
            req = req.query("service", s);
        }
        if let Some(c) = &self.credentials {
            req = req.header("Authorization", c.basic_header());
        }
        let mut response = req.call().map_err(|source| RegistryError::Unreachable {
            registry: self.registry.clone(),
            url: realm.to_string(),
            hint: " (its token service)",
            source: Box::new(source),
        })?;
        if response.status() == 401 || response.status() == 403 {
            return Err(self.refused());
        }
        if !response.status().is_success() {
            return Err(self.protocol(format!(
                "its token service {realm} answered HTTP {}",
                response.status().as_u16()
            )));
        }
        let text = response
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_string()
            .map_err(|e| self.protocol(format!("reading from its token service {realm}: {e}")))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| self.protocol(format!("its token service {realm} sent no JSON: {e}")))?;
        json.get("token")
            .or_else(|| json.get("access_token"))
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .ok_or_else(|| self.protocol(format!("its token service {realm} sent no token")))
    }

    fn protocol(&self, what: String) -> RegistryError {
        RegistryError::Protocol {
            registry: self.registry.clone(),
            what,
        }
    }

    fn unexpected(
        &self,
        method: &str,
        url: &str,
        mut response: Response<ureq::Body>,
    ) -> RegistryError {
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(64 << 10)
            .read_to_string()
            .unwrap_or_default();
        let detail = error_detail(&body);
        if status == 403 {
            return RegistryError::Denied {
                registry: self.registry.clone(),
                repository: self.repository.clone(),
                status,
                detail,
            };
        }
        RegistryError::Status {
            method: method.to_string(),
            url: url.to_string(),
            status,
            detail,
        }
    }

    /// Whether the repository has the blob.
    pub fn has_blob(&self, digest: &str) -> Result<bool, RegistryError> {
        let url = self.url(&format!("blobs/{digest}"));
        let response = self.request(http::Method::HEAD, &url, &[], &Payload::Empty)?;
        match response.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(self.unexpected("HEAD", &url, response)),
        }
    }

    /// Uploads a blob whose digest is known: one PUT when small, else
    /// PATCH requests of [`UPLOAD_CHUNK`] bytes, then the closing PUT.
    pub fn upload_blob(&self, digest: &str, payload: &Payload) -> Result<(), RegistryError> {
        let start = self.url("blobs/uploads/");
        let response = self.request(http::Method::POST, &start, &[], &Payload::Empty)?;
        if response.status() != 202 {
            return Err(self.unexpected("POST", &start, response));
        }
        let mut location = self.location(&response)?;
        let total = payload.len();
        let closing = if total <= UPLOAD_CHUNK {
            payload
        } else {
            let Payload::File {
                file,
                offset,
                progress,
                ..
            } = payload
            else {
                return Err(self.protocol("large uploads come from files".into()));
            };
            let mut sent = 0;
            while sent < total {
                let len = UPLOAD_CHUNK.min(total - sent);
                let chunk = Payload::File {
                    file,
                    offset: offset + sent,
                    len,
                    progress: *progress,
                };
                let headers = [
                    ("Content-Type", "application/octet-stream".to_string()),
                    ("Content-Range", format!("{sent}-{}", sent + len - 1)),
                ];
                let response = self.request(http::Method::PATCH, &location, &headers, &chunk)?;
                if response.status() != 202 {
                    return Err(self.unexpected("PATCH", &location, response));
                }
                location = self.location(&response)?;
                sent += len;
            }
            &Payload::Empty
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{sep}digest={digest}");
        let headers = [("Content-Type", "application/octet-stream".to_string())];
        let response = self.request(http::Method::PUT, &url, &headers, closing)?;
        if response.status() != 201 {
            return Err(self.unexpected("PUT", &url, response));
        }
        Ok(())
    }

    fn location(&self, response: &Response<ureq::Body>) -> Result<String, RegistryError> {
        response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(|l| self.absolute(l))
            .ok_or_else(|| self.protocol("an upload response had no Location".into()))
    }

    /// Stores a manifest under `tag_or_digest`; returns the registry's digest for it.
    pub fn put_manifest(&self, tag_or_digest: &str, body: &[u8]) -> Result<(), RegistryError> {
        let url = self.url(&format!("manifests/{tag_or_digest}"));
        let headers = [("Content-Type", MANIFEST_MEDIA_TYPE.to_string())];
        let response = self.request(http::Method::PUT, &url, &headers, &Payload::Bytes(body))?;
        if response.status() != 201 {
            return Err(self.unexpected("PUT", &url, response));
        }
        Ok(())
    }

    /// The manifest bytes for `reference` (its tag or digest).
    pub fn get_manifest(&self, reference: &Reference) -> Result<Vec<u8>, RegistryError> {
        let url = self.url(&format!("manifests/{}", reference.selector_str()));
        let headers = [("Accept", MANIFEST_MEDIA_TYPE.to_string())];
        let mut response = self.request(http::Method::GET, &url, &headers, &Payload::Empty)?;
        match response.status().as_u16() {
            200 => response
                .body_mut()
                .with_config()
                .limit(4 << 20)
                .read_to_vec()
                .map_err(|e| self.protocol(format!("reading the manifest of {reference}: {e}"))),
            404 => {
                let body = response.body_mut().read_to_string().unwrap_or_default();
                Err(RegistryError::ManifestUnknown {
                    reference: reference.to_string(),
                    detail: error_detail(&body),
                })
            }
            _ => Err(self.unexpected("GET", &url, response)),
        }
    }

    /// A reader of the blob's bytes.
    pub fn get_blob(&self, digest: &str) -> Result<impl Read + use<>, RegistryError> {
        let url = self.url(&format!("blobs/{digest}"));
        let response = self.request(http::Method::GET, &url, &[], &Payload::Empty)?;
        if response.status() != 200 {
            return Err(self.unexpected("GET", &url, response));
        }
        Ok(response.into_body().into_reader())
    }
}

/// The messages of a registry's JSON error body, if it has one.
fn error_detail(body: &str) -> String {
    let Ok(json) = serde_json::from_str::<serde_json::Value>(body) else {
        return String::new();
    };
    let messages: Vec<String> = json
        .get("errors")
        .and_then(|e| e.as_array())
        .map(|errors| {
            errors
                .iter()
                .map(|e| {
                    let code = e.get("code").and_then(|c| c.as_str()).unwrap_or("");
                    let msg = e.get("message").and_then(|m| m.as_str()).unwrap_or("");
                    format!("{code}: {msg}")
                })
                .collect()
        })
        .unwrap_or_default();
    if messages.is_empty() {
        String::new()
    } else {
        format!(" ({})", messages.join("; "))
    }
}
