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

use std::path::Path;

use anyhow::{Result, bail};

use crate::snapshot::mapped::{self, Mapped, MappedMeta};

/// The kinds of snapshot the cache holds, by subdirectory.
const KINDS: [(&str, &str); 2] = [("controller", "controller"), ("expanded", "guest")];

/// One cached snapshot.
#[derive(Debug)]
pub struct Entry {
    pub kind: &'static str,
    pub dir: PathBuf,
    pub meta: MappedMeta,
    pub disk_bytes: u64,
}

/// Every snapshot in the cache under `root`.
pub fn entries(root: &Path) -> Vec<Entry> {
    KINDS
        .iter()
        .flat_map(|(sub, kind)| {
            mapped::list(&root.join(sub))
                .into_iter()
                .map(|(dir, meta)| Entry {
                    kind,
                    disk_bytes: Mapped::disk_usage(&dir),
                    dir,
                    meta,
                })
        })
        .collect()
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// `cygvm cache list`: what the caches hold, how big, for what.
pub fn list(root: &Path) -> String {
    let entries = entries(root);
    let mut out = format!("{}\n", root.display());
    if entries.is_empty() {
        out.push_str("  no snapshots\n");
    }
    for e in &entries {
        let name = e.dir.file_name().unwrap_or_default().to_string_lossy();
        out.push_str(&format!(
            "  {:<10} {name}  {:>10} on disk ({} of RAM)  made {}  QEMU {}\n             {}\n",
            e.kind,
            mib(e.disk_bytes),
            mib(e.meta.memory_bytes),
            e.meta.created,
            e.meta.qemu_version,
            e.meta.describes,
        ));
        if e.kind == "guest" && crate::phases::expanded::serves_nothing(&e.dir, &e.meta) {
            out.push_str(
                "             no image holds its state.gz any more: the next snapshot made here removes it\n",
            );
        }
    }
    let initrd = root.join("initrd");
    let initrd_bytes: u64 = std::fs::read_dir(&initrd)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    out.push_str(&format!(
        "  initrds and kernels: {} in {}\n",
        mib(initrd_bytes),
        initrd.display()
    ));
    out
}

/// `cygvm cache verify`: every snapshot checked in full, its RAM file
/// hashed too. Damaged ones are named; a run would make them again.
pub fn verify(root: &Path) -> Result<String> {
    let mut out = String::new();
    let mut bad = 0;
    for e in entries(root) {
        let checked = Mapped::open(&e.dir, &e.meta.key, &e.meta.qemu_version)
            .and_then(|m| m.verify_full().map(|()| m));
        match checked {
            Ok(_) => out.push_str(&format!("ok       {}\n", e.dir.display())),
            Err(err) => {
                bad += 1;
                out.push_str(&format!("DAMAGED  {err}\n"));
            }
        }
    }
    if bad > 0 {
        print!("{out}");
        bail!(
            "{bad} cached snapshot(s) are damaged; `cygvm cache remove` deletes them (runs make them again)"
        );
    }
    Ok(out)
}

/// `cygvm cache remove`: the named snapshots (directory names or paths),
/// or all with `all`. A run using one keeps its mapping; the next run
/// makes it again.
pub fn remove(root: &Path, names: &[String], all: bool) -> Result<String> {
    if names.is_empty() && !all {
        bail!("name the snapshots to remove (see `cygvm cache list`), or give --all");
    }
    let entries = entries(root);
    let mut out = String::new();
    for name in names {
        if !entries.iter().any(|e| {
            e.dir
                .file_name()
                .is_some_and(|n| n.to_string_lossy() == name.as_str())
                || e.dir == Path::new(name)
        }) {
            bail!(
                "no cached snapshot named {name} in {} (see `cygvm cache list`)",
                root.display()
            );
        }
    }
    for e in entries {
        let named = names.iter().any(|n| {
            e.dir
                .file_name()
                .is_some_and(|f| f.to_string_lossy() == n.as_str())
                || e.dir == Path::new(n)
        });
        if all || named {
            mapped::discard(&e.dir)?;
            out.push_str(&format!(
                "removed {} ({})\n",
                e.dir.display(),
                mib(e.disk_bytes)
            ));
        }
    }
    Ok(out)
}

/// `cygvm cache prune`: the expanded snapshots that serve no image, and
/// with `unused_for` the snapshots of either kind unused that long. One a
/// run is making is left alone; one a run has mapped keeps its pages until
/// the run ends.
pub fn prune(root: &Path, unused_for: Option<std::time::Duration>) -> String {
    let never = std::time::Duration::MAX;
    let mut out = String::new();
    for (sub, kind) in KINDS {
        let serve_nothing = |dir: &Path, meta: &MappedMeta| {
            kind == "guest" && crate::phases::expanded::serves_nothing(dir, meta)
        };
        for (dir, bytes) in mapped::prune(
            &root.join(sub),
            Path::new(""),
            unused_for.unwrap_or(never),
            serve_nothing,
        ) {
            out.push_str(&format!("removed {} ({})\n", dir.display(), mib(bytes)));
        }
    }
    if out.is_empty() {
        out.push_str("nothing to remove\n");
    }
    out
}
