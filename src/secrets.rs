//! Per-image secrets: the SSH client key the host logs in with, the guest's
//! SSH host key (generated here so the host pins it from the first
//! connection), the Windows admin password and the Samba password.
//! Kept in `images/<name>/secrets/` (0700), every file 0600, made once and
//! reused, so media rebuilt for the same image keep the same keys.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand_core::{OsRng, RngCore};
use ssh_key::{Algorithm, LineEnding, PrivateKey};

use crate::fsutil::write_atomic;

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("cannot create the secrets directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read secret {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write secret {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not a valid OpenSSH private key ({reason}); remove it to generate a new one"
    )]
    BadKey { path: PathBuf, reason: String },
    #[error("{path} is readable by others (mode {mode:o}); run: chmod 600 {path}")]
    Exposed { path: PathBuf, mode: u32 },
    #[error("cannot generate a key: {0}")]
    Generate(String),
}

pub const CLIENT_KEY: &str = "client_ed25519";
pub const HOST_KEY: &str = "ssh_host_ed25519_key";
pub const ADMIN_PASSWORD: &str = "admin_password";
pub const SAMBA_PASSWORD: &str = "samba_password";

#[derive(Clone)]
pub struct ImageSecrets {
    pub dir: PathBuf,
    pub client_key: PrivateKey,
    pub host_key: PrivateKey,
    pub admin_password: String,
    pub samba_password: String,
}

impl std::fmt::Debug for ImageSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageSecrets")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl ImageSecrets {
    /// Loads the secrets in `dir`, generating any that do not exist yet.
    /// `admin_password` from the config, when given, replaces the stored one.
    pub fn load_or_create(dir: &Path, admin_password: Option<&str>) -> Result<Self, SecretsError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| SecretsError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        // An existing directory keeps its mode from before; tighten it.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|source| {
            SecretsError::CreateDir {
                path: dir.to_path_buf(),
                source,
            }
        })?;
        let client_key = key(&dir.join(CLIENT_KEY))?;
        let host_key = key(&dir.join(HOST_KEY))?;
        let admin_password = match admin_password {
            Some(p) => {
                store(&dir.join(ADMIN_PASSWORD), p.as_bytes())?;
                p.to_string()
            }
            None => password(&dir.join(ADMIN_PASSWORD))?,
        };
        let samba_password = password(&dir.join(SAMBA_PASSWORD))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            client_key,
            host_key,
            admin_password,
            samba_password,
        })
    }

    pub fn client_public_key(&self) -> String {
        public_line(&self.client_key, "cygvm-client")
    }

    pub fn host_public_key(&self) -> String {
        public_line(&self.host_key, "cygvm-guest")
    }

    /// The guest host key in OpenSSH private key format, for the media.
    pub fn host_private_key_openssh(&self) -> Result<String, SecretsError> {
        self.host_key
            .to_openssh(LineEnding::LF)
            .map(|z| z.to_string())
            .map_err(|e| SecretsError::Generate(e.to_string()))
    }
}

fn public_line(key: &PrivateKey, comment: &str) -> String {
    let mut public = key.public_key().clone();
    public.set_comment(comment);
    public.to_openssh().unwrap_or_default()
}

fn read_private(path: &Path) -> Result<Option<Vec<u8>>, SecretsError> {
    match fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SecretsError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(SecretsError::Exposed {
                    path: path.to_path_buf(),
                    mode,
                });
            }
        }
    }
    fs::read(path)
        .map(Some)
        .map_err(|source| SecretsError::Read {
            path: path.to_path_buf(),
            source,
        })
}

fn store(path: &Path, bytes: &[u8]) -> Result<(), SecretsError> {
    write_atomic(path, bytes, 0o600).map_err(|source| SecretsError::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn key(path: &Path) -> Result<PrivateKey, SecretsError> {
    if let Some(bytes) = read_private(path)? {
        return PrivateKey::from_openssh(&bytes).map_err(|e| SecretsError::BadKey {
            path: path.to_path_buf(),
            reason: e.to_string(),
        });
    }
    let key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519)
        .map_err(|e| SecretsError::Generate(e.to_string()))?;
    let text = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| SecretsError::Generate(e.to_string()))?;
    store(path, text.as_bytes())?;
    Ok(key)
}

fn password(path: &Path) -> Result<String, SecretsError> {
    if let Some(bytes) = read_private(path)? {
        return Ok(String::from_utf8_lossy(&bytes).trim().to_string());
    }
    let p = generate_password(20);
    store(path, p.as_bytes())?;
    Ok(p)
}

/// A random password that meets Windows' complexity rules (upper, lower,
/// digit) and needs no quoting in cmd, XML, winnt.sif or smb.conf.
pub fn generate_password(len: usize) -> String {
    const UPPER: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ";
    const LOWER: &[u8] = b"abcdefghijkmnopqrstuvwxyz";
    const DIGIT: &[u8] = b"23456789";
    let all: Vec<u8> = [UPPER, LOWER, DIGIT].concat();
    let pick = |set: &[u8]| set[(OsRng.next_u32() as usize) % set.len()] as char;
    let mut chars: Vec<char> = vec![pick(UPPER), pick(LOWER), pick(DIGIT)];
    while chars.len() < len.max(3) {
        chars.push(pick(&all));
    }
    // Fisher-Yates so the class order is not fixed.
    for i in (1..chars.len()).rev() {
        let j = (OsRng.next_u32() as usize) % (i + 1);
        chars.swap(i, j);
    }
    chars.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_made_once_with_private_modes() {
        let dir = tempfile::tempdir().unwrap();
        let secrets_dir = dir.path().join("secrets");
        let a = ImageSecrets::load_or_create(&secrets_dir, None).unwrap();
        let b = ImageSecrets::load_or_create(&secrets_dir, None).unwrap();
        assert_eq!(a.client_public_key(), b.client_public_key());
        assert_eq!(a.host_public_key(), b.host_public_key());
        assert_eq!(a.admin_password, b.admin_password);
        assert_ne!(a.admin_password, a.samba_password);
        assert!(a.client_public_key().starts_with("ssh-ed25519 "));
        let dir_mode = fs::metadata(&secrets_dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        for name in [CLIENT_KEY, HOST_KEY, ADMIN_PASSWORD, SAMBA_PASSWORD] {
            let mode = fs::metadata(secrets_dir.join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{name}");
        }
    }

    #[test]
    fn configured_password_wins() {
        let dir = tempfile::tempdir().unwrap();
        let s = ImageSecrets::load_or_create(dir.path(), Some("Given-Pass1")).unwrap();
        assert_eq!(s.admin_password, "Given-Pass1");
        let stored = fs::read_to_string(dir.path().join(ADMIN_PASSWORD)).unwrap();
        assert_eq!(stored, "Given-Pass1");
    }

    #[test]
    fn exposed_secret_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        ImageSecrets::load_or_create(dir.path(), None).unwrap();
        let key = dir.path().join(CLIENT_KEY);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let err = ImageSecrets::load_or_create(dir.path(), None).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn corrupt_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        write_atomic(&dir.path().join(HOST_KEY), b"garbage", 0o600).unwrap();
        let err = ImageSecrets::load_or_create(dir.path(), None).unwrap_err();
        assert!(err.to_string().contains(HOST_KEY), "{err}");
        assert!(err.to_string().contains("remove it"), "{err}");
    }

    #[test]
    fn generated_passwords_meet_complexity() {
        for _ in 0..50 {
            let p = generate_password(20);
            assert_eq!(p.len(), 20);
            assert!(p.chars().any(|c| c.is_ascii_uppercase()));
            assert!(p.chars().any(|c| c.is_ascii_lowercase()));
            assert!(p.chars().any(|c| c.is_ascii_digit()));
        }
    }
}
