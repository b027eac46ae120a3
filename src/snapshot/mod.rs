//! The snapshot file format: `state.gz`, the guest's memory as a gzipped
//! QEMU migration stream, and `manifest.json`, which says what made it.
//!
//! `state.gz` is a series of independently compressed gzip members (see
//! [`member`]), so it is written and read on all cores and plain
//! `gzip -dc state.gz` still yields the exact migration stream. The member
//! index in the manifest ([`StateSummary::members`]) is the source of truth;
//! each member also carries its own length in a gzip FEXTRA subfield.

pub mod manifest;
pub mod mapped;
pub mod member;
mod pool;
pub mod reader;
pub mod writer;

use serde::{Deserialize, Serialize};

pub use manifest::{CompatError, Manifest, ManifestError, RuntimeIdentity};
pub use reader::{RestoreError, VerifyError, restore, restore_async, verify};
pub use writer::{MigrationWriter, PendingState, SaveError};

/// What a user is told to do when a saved state cannot be used.
pub const STATE_HINT: &str =
    "run `cygvm refresh` to make a new snapshot, or `cygvm run --cold` to boot from disk";

/// One gzip member of `state.gz`, as recorded in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberEntry {
    /// Byte offset of the member in `state.gz`.
    pub offset: u64,
    /// Length of the whole member (header, deflate data, trailer).
    pub compressed_len: u64,
    /// Bytes of migration stream the member holds.
    pub uncompressed_len: u64,
    /// CRC-32 of those bytes, as in the member's trailer.
    pub crc32: u32,
}

/// What a finished `state.gz` is: recorded in the manifest at save time and
/// checked against the file before any guest is revived from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateSummary {
    /// Size of `state.gz` in bytes.
    pub size: u64,
    /// sha256 of `state.gz`, lowercase hex.
    pub sha256: String,
    /// Length of the migration stream.
    pub stream_len: u64,
    /// sha256 of the migration stream, lowercase hex.
    pub stream_sha256: String,
    pub members: Vec<MemberEntry>,
}

/// How `state.gz` is cut and compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodecOptions {
    /// Bytes of stream per gzip member.
    pub member_size: usize,
    /// libdeflate level, 0–12 (gzip-compatible output at every level).
    pub level: i32,
    /// Compression or decompression threads.
    pub threads: usize,
}

/// Chosen by `cargo bench --bench snapshot_codec`; see docs/perf-snapshot.md.
pub const DEFAULT_MEMBER_SIZE: usize = 4 << 20;
/// Chosen by `cargo bench --bench snapshot_codec`; see docs/perf-snapshot.md.
pub const DEFAULT_LEVEL: i32 = 1;

impl Default for CodecOptions {
    fn default() -> Self {
        Self {
            member_size: DEFAULT_MEMBER_SIZE,
            level: DEFAULT_LEVEL,
            threads: default_threads(),
        }
    }
}

impl CodecOptions {
    /// Members in flight at once: enough to keep every thread busy while the
    /// file is written in order, and no more, so memory stays bounded.
    pub(crate) fn in_flight(&self) -> usize {
        self.threads.max(1) * 2 + 1
    }
}

pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
