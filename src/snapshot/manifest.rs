//! `manifest.json`: what a snapshot generation is and what made it, so a
//! revive can refuse a snapshot this host cannot load before QEMU does.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::StateSummary;
use crate::fsutil;

/// Bumped when a field changes meaning or a required one is added.
pub const FORMAT_VERSION: u32 = 1;
pub const FILE_NAME: &str = "manifest.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    /// cygvm version that wrote the snapshot.
    pub cygvm_version: String,
    /// QEMU version as QMP `query-version` reports it, e.g. "10.0.2".
    pub qemu_version: String,
    /// Resolved machine type, e.g. "pc-q35-10.0" (never an alias like "q35").
    pub machine: String,
    /// The guest's device arguments, without per-run paths (overlay, sockets,
    /// logs): a revive must pass the same ones.
    pub device_argv: Vec<String>,
    pub memory_bytes: u64,
    pub disk: DiskEntry,
    /// The memory snapshot; absent for a generation that only boots cold.
    #[serde(default)]
    pub state: Option<StateSummary>,
    /// sha256 of the normalized config the image was made from.
    pub config_fingerprint: String,
    pub cygwin_packages: Vec<String>,
    /// RFC 3339, UTC.
    pub created: String,
}

/// The read-only base disk, `disk.qcow2`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskEntry {
    /// Size of the qcow2 file in bytes.
    pub size: u64,
    /// Size the guest sees, in bytes.
    pub virtual_size: u64,
    pub sha256: String,
}

/// What this host would revive a snapshot with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeIdentity {
    pub qemu_version: String,
    pub machine: String,
    pub device_argv: Vec<String>,
}

const COMPAT_HINT: &str = "a snapshot revives only under the same QEMU, machine type and devices; run `cygvm refresh` to make one for this host, or `cygvm run --cold` to boot from disk";

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "{path} is not a valid snapshot manifest: {reason}; run `cygvm refresh` to make a new snapshot"
    )]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "{path} has format version {found}, this cygvm reads up to {FORMAT_VERSION}; \
         use a newer cygvm, or run `cygvm refresh` to make a snapshot this one understands"
    )]
    NewerFormat { path: PathBuf, found: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompatError {
    #[error("snapshot made by QEMU {snapshot}, this host runs {host}; {COMPAT_HINT}")]
    QemuVersion { snapshot: String, host: String },
    #[error("snapshot made with machine type {snapshot}, this run uses {host}; {COMPAT_HINT}")]
    Machine { snapshot: String, host: String },
    #[error("device set differs: snapshot has {snapshot}, this run has {host}; {COMPAT_HINT}")]
    Devices { snapshot: String, host: String },
}

impl Manifest {
    /// Reads and checks `path`, refusing format versions newer than this
    /// cygvm knows.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |reason: String| ManifestError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        let version = value
            .get("format_version")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| invalid("it has no format_version".into()))?;
        if version > u64::from(FORMAT_VERSION) {
            return Err(ManifestError::NewerFormat {
                path: path.to_path_buf(),
                found: version,
            });
        }
        serde_json::from_value(value).map_err(|e| invalid(e.to_string()))
    }

    /// Writes `path` atomically (temp, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<(), ManifestError> {
        let mut json = serde_json::to_vec_pretty(self).map_err(|e| ManifestError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        json.push(b'\n');
        fsutil::write_atomic(path, &json, 0o644).map_err(|source| ManifestError::Write {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Whether this host can revive the snapshot: same QEMU, machine and
    /// device arguments. Names the first difference.
    pub fn check_compatible(&self, current: &RuntimeIdentity) -> Result<(), CompatError> {
        if self.qemu_version != current.qemu_version {
            return Err(CompatError::QemuVersion {
                snapshot: self.qemu_version.clone(),
                host: current.qemu_version.clone(),
            });
        }
        if self.machine != current.machine {
            return Err(CompatError::Machine {
                snapshot: self.machine.clone(),
                host: current.machine.clone(),
            });
        }
        if let Some((snapshot, host)) = first_difference(&self.device_argv, &current.device_argv) {
            return Err(CompatError::Devices { snapshot, host });
        }
        Ok(())
    }
}

/// The first argument where two argvs part, quoted, or "nothing" past the
/// end of the shorter one.
fn first_difference(snapshot: &[String], host: &[String]) -> Option<(String, String)> {
    let describe = |argv: &[String], i: usize| match argv.get(i) {
        Some(arg) => format!("`{arg}` (argument {})", i + 1),
        None => format!("nothing at argument {}", i + 1),
    };
    let i = (0..snapshot.len().max(host.len())).find(|&i| snapshot.get(i) != host.get(i))?;
    Some((describe(snapshot, i), describe(host, i)))
}

/// sha256 of a config in a canonical form: JSON with object keys sorted
/// and no whitespace, so field order and formatting do not matter.
pub fn config_fingerprint<T: Serialize>(config: &T) -> Result<String, serde_json::Error> {
    let value = serde_json::to_value(config)?;
    let mut canonical = String::new();
    write_canonical(&value, &mut canonical)?;
    Ok(hex::encode(Sha256::digest(canonical.as_bytes())))
}

fn write_canonical(value: &serde_json::Value, out: &mut String) -> Result<(), serde_json::Error> {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(key)?);
                out.push(':');
                write_canonical(&map[key], out)?;
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out)?;
            }
            out.push(']');
        }
        scalar => out.push_str(&serde_json::to_string(scalar)?),
    }
    Ok(())
}

/// `time` as RFC 3339 UTC with whole seconds, e.g. "2025-03-01T12:34:56Z".
pub fn rfc3339_utc(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_known_instants() {
        let at = |s| rfc3339_utc(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_740_832_496), "2025-03-01T12:34:56Z");
        assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59Z");
    }

    #[test]
    fn fingerprint_ignores_key_order() {
        let a = serde_json::json!({"guest": {"memory": "4G", "cpus": 2}, "image": "x"});
        let b = serde_json::json!({"image": "x", "guest": {"cpus": 2, "memory": "4G"}});
        let c = serde_json::json!({"image": "x", "guest": {"cpus": 4, "memory": "4G"}});
        assert_eq!(
            config_fingerprint(&a).unwrap(),
            config_fingerprint(&b).unwrap()
        );
        assert_ne!(
            config_fingerprint(&a).unwrap(),
            config_fingerprint(&c).unwrap()
        );
    }

    #[test]
    fn first_difference_names_the_argument() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let (a, b) = first_difference(
            &s(&["-device", "e1000"]),
            &s(&["-device", "virtio-net-pci"]),
        )
        .unwrap();
        assert_eq!(a, "`e1000` (argument 2)");
        assert_eq!(b, "`virtio-net-pci` (argument 2)");
        let (a, b) = first_difference(&s(&["-m", "4G"]), &s(&["-m", "4G", "-usb"])).unwrap();
        assert_eq!(a, "nothing at argument 3");
        assert_eq!(b, "`-usb` (argument 3)");
        assert!(first_difference(&s(&["x"]), &s(&["x"])).is_none());
    }
}
