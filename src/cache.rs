//! The host's caches: what cygvm keeps per host to start VMs fast, all of
//! it made again from the images and the host's packages when missing.
//!
//! ```text
//! $XDG_CACHE_HOME/cygvm/      (~/.cache/cygvm)
//!   initrd/                   controller and stand-in initrds, kernels
//!   controller/<key>/         controller VM snapshots (expanded form)
//!   expanded/<key>/           guest snapshots in expanded form, one per
//!                             generation revived on this host
//! ```

use std::path::PathBuf;

/// `$XDG_CACHE_HOME/cygvm`, else `~/.cache/cygvm`.
pub fn root() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("cygvm")
}
