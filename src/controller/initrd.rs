//! Initrd assembly: a deterministic newc cpio archive, gzip-compressed, cached
//! by a hash of everything that goes into it.
//!
//! The archive mirrors a merged-/usr layout (`/bin`, `/sbin`, `/lib`, `/lib64`
//! are symlinks into `/usr`), so host binaries and their libraries land at
//! the paths their ELF interpreter and RUNPATHs name. Every entry has mtime 0,
//! uid/gid 0 and an inode number from its position in the sorted list: the
//! same inputs always give the same bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use flate2::{Compression, GzBuilder};
use sha2::{Digest, Sha256};

use crate::fsutil::AtomicFile;
use crate::vm::host_tools::ControllerKernel;

/// Bumped whenever the archive layout or compression changes, so cached
/// images made by an older builder are never reused.
pub const FORMAT_VERSION: u32 = 2;

/// Where `add_kernel_modules` records the order init loads modules in.
pub const MODULES_ORDER: &str = "etc/modules.order";

#[derive(Debug, thiserror::Error)]
pub enum InitrdError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot run {program}")]
    Run {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{program} failed on {path}: {stderr}")]
    Tool {
        program: PathBuf,
        path: PathBuf,
        stderr: String,
    },
    #[error(
        "kernel module {name} is not in {modules_dep} (and not built in); \
         install the kernel's modules package or choose another kernel"
    )]
    UnknownModule { name: String, modules_dep: PathBuf },
    #[error(
        "kernel module {path} is compressed ({ext}); busybox insmod loads only plain .ko files"
    )]
    CompressedModule { path: PathBuf, ext: String },
    #[error("invalid initrd path {0:?}: must be relative to / without `..`")]
    BadPath(String),
    #[error("cannot write the initrd {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    File(Vec<u8>),
    Dir,
    Symlink(String),
    CharDevice { major: u32, minor: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    node: Node,
    /// Permission bits only; the file type comes from `node`.
    perm: u32,
}

const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// Top-level directories that are symlinks into /usr in the archive.
const MERGED_USR: [&str; 4] = ["bin", "sbin", "lib", "lib64"];

/// An initrd being assembled. Paths are given as on the target (`/etc/x` or
/// `etc/x`); adding the same path twice keeps the last.
#[derive(Debug, Clone)]
pub struct InitrdBuilder {
    entries: BTreeMap<String, Entry>,
}

/// A finished initrd in the cache.
#[derive(Debug, Clone)]
pub struct BuiltInitrd {
    pub path: PathBuf,
    /// sha256 (hex) over every input and [`FORMAT_VERSION`].
    pub hash: String,
    /// True when an identical initrd was already cached and nothing was written.
    pub cache_hit: bool,
}

impl Default for InitrdBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl InitrdBuilder {
    /// An archive holding only the merged-/usr skeleton and `/dev/console`
    /// (the kernel opens it for init's stdio before anything mounts devtmpfs).
    pub fn new() -> Self {
        let mut b = Self {
            entries: BTreeMap::new(),
        };
        for top in MERGED_USR {
            b.insert(top.to_string(), Node::Symlink(format!("usr/{top}")), 0o777);
            b.insert(format!("usr/{top}"), Node::Dir, 0o755);
        }
        b.insert("usr".into(), Node::Dir, 0o755);
        b.insert("dev".into(), Node::Dir, 0o755);
        b.insert(
            "dev/console".into(),
            Node::CharDevice { major: 5, minor: 1 },
            0o600,
        );
        b
    }

    /// Adds the bytes of host file `source` (symlinks followed) at `dest`.
    pub fn add_file(
        &mut self,
        dest: &str,
        source: &Path,
        mode: u32,
    ) -> Result<&mut Self, InitrdError> {
        let data = fs::read(source).map_err(|e| InitrdError::Read {
            path: source.to_path_buf(),
            source: e,
        })?;
        self.add_bytes(dest, data, mode)
    }

    pub fn add_bytes(
        &mut self,
        dest: &str,
        data: impl Into<Vec<u8>>,
        mode: u32,
    ) -> Result<&mut Self, InitrdError> {
        let name = normalize(dest)?;
        self.insert(name, Node::File(data.into()), mode & 0o7777);
        Ok(self)
    }

    pub fn add_dir(&mut self, dest: &str, mode: u32) -> Result<&mut Self, InitrdError> {
        let name = normalize(dest)?;
        self.insert(name, Node::Dir, mode & 0o7777);
        Ok(self)
    }

    pub fn add_symlink(&mut self, dest: &str, target: &str) -> Result<&mut Self, InitrdError> {
        let name = normalize(dest)?;
        self.insert(name, Node::Symlink(target.to_string()), 0o777);
        Ok(self)
    }

    pub fn add_char_device(
        &mut self,
        dest: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<&mut Self, InitrdError> {
        let name = normalize(dest)?;
        self.insert(name, Node::CharDevice { major, minor }, mode & 0o7777);
        Ok(self)
    }

    /// Adds a dynamically linked host program at `dest` with every library
    /// `ldd` lists and the dynamic loader, each at the (merged-/usr) path the
    /// loader will look for it. A static program is added alone.
    pub fn add_host_binary(
        &mut self,
        host_path: &Path,
        dest: &str,
    ) -> Result<&mut Self, InitrdError> {
        self.add_file(dest, host_path, 0o755)?;
        for lib in ldd(host_path)? {
            let dest = library_dest(&lib);
            self.add_file(&dest, &lib, 0o755)?;
        }
        Ok(self)
    }

    /// Like [`InitrdBuilder::add_host_binary`], with the program and its
    /// libraries below `root`: a tree another root (a chroot) can run it from.
    pub fn add_host_binary_under(
        &mut self,
        root: &str,
        host_path: &Path,
        dest: &str,
    ) -> Result<&mut Self, InitrdError> {
        let root = root.trim_end_matches('/');
        self.add_file(
            &format!("{root}/{}", dest.trim_start_matches('/')),
            host_path,
            0o755,
        )?;
        for lib in ldd(host_path)? {
            let dest = library_dest(&lib);
            self.add_file(
                &format!("{root}/{}", dest.trim_start_matches('/')),
                &lib,
                0o755,
            )?;
        }
        Ok(self)
    }

    /// Adds every file under host directory `source` (recursively, symlinks
    /// followed) below `dest`, keeping permission bits.
    pub fn add_tree(&mut self, dest: &str, source: &Path) -> Result<&mut Self, InitrdError> {
        let read_err = |e| InitrdError::Read {
            path: source.to_path_buf(),
            source: e,
        };
        let meta = fs::metadata(source).map_err(read_err)?;
        if meta.is_dir() {
            self.add_dir(dest, meta_perm(&meta))?;
            let mut names: Vec<_> = fs::read_dir(source)
                .map_err(read_err)?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name())
                .collect();
            names.sort();
            for name in names {
                let child = format!("{}/{}", dest.trim_end_matches('/'), name.to_string_lossy());
                self.add_tree(&child, &source.join(&name))?;
            }
        } else {
            self.add_file(dest, source, meta_perm(&meta))?;
        }
        Ok(self)
    }

    /// Adds a static busybox at `/bin/busybox` with a symlink for every
    /// applet it lists.
    pub fn add_busybox(&mut self, busybox: &Path) -> Result<&mut Self, InitrdError> {
        self.add_file("/bin/busybox", busybox, 0o755)?;
        let out = Command::new(busybox)
            .arg("--list-full")
            .output()
            .map_err(|e| InitrdError::Run {
                program: busybox.to_path_buf(),
                source: e,
            })?;
        if !out.status.success() {
            return Err(InitrdError::Tool {
                program: busybox.to_path_buf(),
                path: busybox.to_path_buf(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        for applet in String::from_utf8_lossy(&out.stdout).lines() {
            let applet = applet.trim();
            if applet.is_empty() || applet.ends_with("/busybox") {
                continue;
            }
            let name = normalize(applet)?;
            // Never shadow a real program added earlier (e.g. a host binary).
            if !matches!(
                self.entries.get(&name),
                Some(Entry {
                    node: Node::File(_),
                    ..
                })
            ) {
                self.insert(name, Node::Symlink("/bin/busybox".into()), 0o777);
            }
        }
        Ok(self)
    }

    /// Adds the named modules of `kernel` and all they depend on per its
    /// modules.dep, under `/lib/modules/<release>/`, and writes their load
    /// order (dependencies first, one archive path a line) to
    /// `/etc/modules.order`, appending to any order already recorded.
    /// Names built into the kernel are skipped. Returns the new load order.
    pub fn add_kernel_modules(
        &mut self,
        kernel: &ControllerKernel,
        names: &[&str],
    ) -> Result<Vec<String>, InitrdError> {
        let deps = ModulesDep::read(&kernel.modules)?;
        let order = deps.load_order(names)?;
        let mut lines = match self.entries.get(MODULES_ORDER) {
            Some(Entry {
                node: Node::File(data),
                ..
            }) => String::from_utf8_lossy(data).into_owned(),
            _ => String::new(),
        };
        let mut added = Vec::new();
        for rel in &order {
            if let Some(ext) = [".ko.xz", ".ko.zst", ".ko.gz"]
                .iter()
                .find(|ext| rel.ends_with(*ext))
            {
                return Err(InitrdError::CompressedModule {
                    path: kernel.modules.join(rel),
                    ext: ext.trim_start_matches('.').to_string(),
                });
            }
            let dest = format!("/usr/lib/modules/{}/{rel}", kernel.release);
            self.add_file(&dest, &kernel.modules.join(rel), 0o644)?;
            if !lines.lines().any(|l| l == dest) {
                lines.push_str(&dest);
                lines.push('\n');
            }
            added.push(dest);
        }
        self.add_bytes(MODULES_ORDER, lines, 0o644)?;
        Ok(added)
    }

    /// Archive paths (without leading `/`), sorted.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// sha256 over every entry's name, type, mode and contents, and the
    /// builder's format version.
    pub fn content_hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"cygvm-initrd\0");
        h.update(FORMAT_VERSION.to_le_bytes());
        for (name, entry) in &self.entries {
            h.update((name.len() as u64).to_le_bytes());
            h.update(name.as_bytes());
            h.update(entry.perm.to_le_bytes());
            match &entry.node {
                Node::File(data) => {
                    h.update(b"f");
                    h.update((data.len() as u64).to_le_bytes());
                    h.update(data);
                }
                Node::Dir => h.update(b"d"),
                Node::Symlink(target) => {
                    h.update(b"l");
                    h.update((target.len() as u64).to_le_bytes());
                    h.update(target.as_bytes());
                }
                Node::CharDevice { major, minor } => {
                    h.update(b"c");
                    h.update(major.to_le_bytes());
                    h.update(minor.to_le_bytes());
                }
            }
        }
        hex::encode(h.finalize())
    }

    /// Writes the uncompressed newc archive.
    pub fn write_cpio<W: Write>(&self, mut out: W) -> io::Result<W> {
        let mut written = 0u64;
        for (index, (name, entry)) in self.entries.iter().enumerate() {
            let (kind, data, rdev): (u32, &[u8], (u32, u32)) = match &entry.node {
                Node::File(d) => (S_IFREG, d, (0, 0)),
                Node::Dir => (S_IFDIR, &[], (0, 0)),
                Node::Symlink(t) => (S_IFLNK, t.as_bytes(), (0, 0)),
                Node::CharDevice { major, minor } => (S_IFCHR, &[], (*major, *minor)),
            };
            let nlink = if kind == S_IFDIR { 2 } else { 1 };
            let header = NewcHeader {
                ino: index as u32 + 1,
                mode: kind | entry.perm,
                nlink,
                filesize: data.len() as u32,
                rdev,
            };
            written += header.write(&mut out, name)?;
            out.write_all(data)?;
            written += data.len() as u64;
            written += pad4(&mut out, written)?;
        }
        let trailer = NewcHeader {
            ino: 0,
            mode: 0,
            nlink: 1,
            filesize: 0,
            rdev: (0, 0),
        };
        written += trailer.write(&mut out, "TRAILER!!!")?;
        // Pad to 512 bytes as cpio(1) does; the kernel ignores trailing zeros.
        let rest = (512 - written % 512) % 512;
        out.write_all(&vec![0; rest as usize])?;
        out.flush()?;
        Ok(out)
    }

    /// Writes the gzip-compressed archive (no name, mtime 0 in the gzip header).
    pub fn write_gzip<W: Write>(&self, out: W) -> io::Result<W> {
        let gz = GzBuilder::new()
            .mtime(0)
            .operating_system(3)
            .write(out, Compression::default());
        self.write_cpio(gz)?.finish()
    }

    /// Returns `<cache_dir>/<hash>.img`, writing it (atomically) only when
    /// no initrd with the same inputs is there yet. The cached image is an
    /// uncompressed cpio: under TCG the kernel unpacks gzip slowly (about
    /// 1.3 s of the controller's boot), and the file is read from the page
    /// cache on every run.
    pub fn build_cached(&self, cache_dir: &Path) -> Result<BuiltInitrd, InitrdError> {
        let hash = self.content_hash();
        let path = cache_dir.join(format!("{hash}.img"));
        if path.is_file() {
            // Used now: keeps it out of the next prune.
            let _ = crate::fsutil::mark_used(&path, false);
            return Ok(BuiltInitrd {
                path,
                hash,
                cache_hit: true,
            });
        }
        let write_err = |e| InitrdError::Write {
            path: path.clone(),
            source: e,
        };
        fs::create_dir_all(cache_dir).map_err(write_err)?;
        let file = AtomicFile::create(&path).map_err(write_err)?;
        file.set_mode(0o644).map_err(write_err)?;
        let file = self
            .write_cpio(io::BufWriter::new(file))
            .map_err(write_err)?
            .into_inner()
            .map_err(|e| write_err(e.into_error()))?;
        file.commit().map_err(write_err)?;
        prune_cache(cache_dir, &path);
        Ok(BuiltInitrd {
            path,
            hash,
            cache_hit: false,
        })
    }

    fn insert(&mut self, name: String, node: Node, perm: u32) {
        // Parents first, so extraction never meets a file in a missing directory.
        let mut parent = Path::new(&name).parent();
        let mut missing = Vec::new();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            let key = p.to_string_lossy().into_owned();
            if self.entries.contains_key(&key) {
                break;
            }
            missing.push(key);
            parent = p.parent();
        }
        for dir in missing {
            self.entries.insert(
                dir,
                Entry {
                    node: Node::Dir,
                    perm: 0o755,
                },
            );
        }
        self.entries.insert(name, Entry { node, perm });
    }
}

/// The default cache directory: `$XDG_CACHE_HOME/cygvm/initrd` or
/// `~/.cache/cygvm/initrd`.
/// Cached initrds unused for this long are removed when a new one is
/// written (each cygvm build makes a new controller initrd).
pub const CACHE_UNUSED_FOR: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

fn prune_cache(cache_dir: &Path, keep: &Path) {
    let Ok(entries) = fs::read_dir(cache_dir) else {
        return;
    };
    let now = std::time::SystemTime::now();
    for entry in entries.flatten() {
        let path = entry.path();
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > CACHE_UNUSED_FOR);
        let is_initrd = path.extension().is_some_and(|e| e == "img");
        if is_initrd && stale && path != keep {
            tracing::debug!("removing unused cached initrd {}", path.display());
            let _ = fs::remove_file(&path);
        }
    }
}

pub fn default_cache_dir() -> PathBuf {
    crate::cache::root().join("initrd")
}

struct NewcHeader {
    ino: u32,
    mode: u32,
    nlink: u32,
    filesize: u32,
    rdev: (u32, u32),
}

impl NewcHeader {
    /// Writes header, name and the name's padding; returns bytes written.
    fn write<W: Write>(&self, out: &mut W, name: &str) -> io::Result<u64> {
        let namesize = name.len() as u32 + 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            self.mode,
            0, // uid
            0, // gid
            self.nlink,
            0, // mtime
            self.filesize,
            0, // devmajor
            0, // devminor
            self.rdev.0,
            self.rdev.1,
            namesize,
            0, // check
        );
        out.write_all(header.as_bytes())?;
        out.write_all(name.as_bytes())?;
        out.write_all(&[0])?;
        let len = header.len() as u64 + namesize as u64;
        Ok(len + pad4(out, len)?)
    }
}

fn pad4<W: Write>(out: &mut W, written: u64) -> io::Result<u64> {
    let pad = (4 - written % 4) % 4;
    out.write_all(&[0u8; 3][..pad as usize])?;
    Ok(pad)
}

fn meta_perm(meta: &fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o7777
}

/// `/etc/x`, `etc/x`, `./etc/x` → `etc/x`; `/bin/sh` → `usr/bin/sh`.
fn normalize(dest: &str) -> Result<String, InitrdError> {
    let parts: Vec<&str> = dest
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.is_empty() || parts.contains(&"..") {
        return Err(InitrdError::BadPath(dest.to_string()));
    }
    let mut name = parts.join("/");
    if parts.len() > 1 && MERGED_USR.contains(&parts[0]) {
        name = format!("usr/{name}");
    }
    Ok(name)
}

/// Where a library goes: its directory as the host resolves it (so
/// `/lib/x86_64-linux-gnu/libc.so.6` and `/usr/lib/...` are one file),
/// under the name the loader asks for.
fn library_dest(lib: &Path) -> String {
    let name = lib.file_name().unwrap_or_default();
    let dir = lib
        .parent()
        .and_then(|p| fs::canonicalize(p).ok())
        .unwrap_or_else(|| lib.parent().unwrap_or(Path::new("/")).to_path_buf());
    dir.join(name).to_string_lossy().into_owned()
}

/// Libraries and the loader `ldd` lists for `program`; empty for a static one.
pub fn ldd(program: &Path) -> Result<Vec<PathBuf>, InitrdError> {
    let ldd = PathBuf::from("ldd");
    let out = Command::new(&ldd)
        .arg(program)
        .output()
        .map_err(|e| InitrdError::Run {
            program: ldd.clone(),
            source: e,
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // ldd exits 1 with "not a dynamic executable" for static programs.
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stdout.contains("statically linked") || stderr.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        return Err(InitrdError::Tool {
            program: ldd,
            path: program.to_path_buf(),
            stderr: stderr.into_owned(),
        });
    }
    Ok(parse_ldd(&stdout))
}

fn parse_ldd(text: &str) -> Vec<PathBuf> {
    let mut libs = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim();
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.insert(PathBuf::from(p));
        }
    }
    libs.into_iter().collect()
}

/// A kernel's modules.dep: module path → the paths it needs.
#[derive(Debug)]
pub struct ModulesDep {
    path: PathBuf,
    deps: BTreeMap<String, Vec<String>>,
    by_name: BTreeMap<String, String>,
    builtin: BTreeSet<String>,
}

impl ModulesDep {
    pub fn read(modules_dir: &Path) -> Result<Self, InitrdError> {
        let path = modules_dir.join("modules.dep");
        let text = fs::read_to_string(&path).map_err(|e| InitrdError::Read {
            path: path.clone(),
            source: e,
        })?;
        let builtin = fs::read_to_string(modules_dir.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .map(module_name)
            .collect();
        Ok(Self::parse(path, &text, builtin))
    }

    fn parse(path: PathBuf, text: &str, builtin: BTreeSet<String>) -> Self {
        let mut deps = BTreeMap::new();
        let mut by_name = BTreeMap::new();
        for line in text.lines() {
            let Some((module, needs)) = line.split_once(':') else {
                continue;
            };
            let module = module.trim().to_string();
            by_name.insert(module_name(&module), module.clone());
            deps.insert(
                module,
                needs.split_whitespace().map(str::to_string).collect(),
            );
        }
        Self {
            path,
            deps,
            by_name,
            builtin,
        }
    }

    /// Module paths (relative to the modules directory) for `names` and
    /// everything they need, each after all it depends on. Deterministic:
    /// depth-first in the order given.
    pub fn load_order(&self, names: &[&str]) -> Result<Vec<String>, InitrdError> {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for name in names {
            let key = module_name(name);
            let Some(module) = self.by_name.get(&key) else {
                if self.builtin.contains(&key) {
                    continue;
                }
                return Err(InitrdError::UnknownModule {
                    name: name.to_string(),
                    modules_dep: self.path.clone(),
                });
            };
            self.visit(module, &mut seen, &mut order);
        }
        Ok(order)
    }

    fn visit(&self, module: &str, seen: &mut BTreeSet<String>, order: &mut Vec<String>) {
        if !seen.insert(module.to_string()) {
            return;
        }
        // modules.dep lists the full closure, so each dependency's own line
        // decides where it goes relative to the others.
        for dep in self.deps.get(module).into_iter().flatten() {
            self.visit(dep, seen, order);
        }
        order.push(module.to_string());
    }
}

/// `kernel/fs/9p/9p.ko.xz` → `9p`; dashes and underscores are one in module names.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_initrd_prunes_long_unused_ones_and_a_hit_refreshes_its_own() {
        let cache = tempfile::tempdir().unwrap();
        let old = cache.path().join("0ld.img");
        let recent = cache.path().join("recent.img");
        let kernel = cache.path().join("vmlinux-6.1.0-old");
        let long_ago = std::time::SystemTime::now() - CACHE_UNUSED_FOR * 2;
        for f in [&old, &recent, &kernel] {
            fs::write(f, b"x").unwrap();
        }
        for f in [&old, &kernel] {
            fs::File::options()
                .append(true)
                .open(f)
                .unwrap()
                .set_modified(long_ago)
                .unwrap();
        }
        let mut b = InitrdBuilder::new();
        b.add_bytes("/init", "#!/bin/sh\n", 0o755).unwrap();
        let built = b.build_cached(cache.path()).unwrap();
        assert!(!built.cache_hit);
        assert!(!old.exists(), "an initrd unused for weeks stays");
        assert!(recent.exists() && kernel.exists());
        // A hit marks the image used.
        fs::File::options()
            .append(true)
            .open(&built.path)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        assert!(b.build_cached(cache.path()).unwrap().cache_hit);
        let age = fs::metadata(&built.path).unwrap().modified().unwrap();
        assert!(std::time::SystemTime::now().duration_since(age).unwrap() < CACHE_UNUSED_FOR);
    }

    #[test]
    fn paths_are_normalized_into_merged_usr() {
        assert_eq!(normalize("/bin/sh").unwrap(), "usr/bin/sh");
        assert_eq!(normalize("./etc//passwd").unwrap(), "etc/passwd");
        assert_eq!(normalize("/lib").unwrap(), "lib");
        assert!(normalize("/").is_err());
        assert!(normalize("/etc/../x").is_err());
    }

    #[test]
    fn ldd_output_is_parsed() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n\
                    \tlibmissing.so => not found\n";
        assert_eq!(
            parse_ldd(text),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libz.so.1"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn dependencies_load_first() {
        let text = "kernel/a.ko: kernel/b.ko kernel/c.ko\n\
                    kernel/b.ko: kernel/c.ko\n\
                    kernel/c.ko:\n\
                    kernel/d-x.ko:\n";
        let deps = ModulesDep::parse(
            PathBuf::from("modules.dep"),
            text,
            ["builtin_one".to_string()].into(),
        );
        assert_eq!(
            deps.load_order(&["a", "d_x", "builtin-one", "c"]).unwrap(),
            vec!["kernel/c.ko", "kernel/b.ko", "kernel/a.ko", "kernel/d-x.ko"]
        );
        assert!(matches!(
            deps.load_order(&["nope"]),
            Err(InitrdError::UnknownModule { .. })
        ));
    }

    #[test]
    fn header_fields_are_newc() {
        let mut b = InitrdBuilder::new();
        b.add_bytes("/init", b"#!/bin/sh\n".to_vec(), 0o755)
            .unwrap();
        let bytes = b.write_cpio(Vec::new()).unwrap();
        assert_eq!(&bytes[..6], b"070701");
        assert_eq!(bytes.len() % 512, 0);
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("TRAILER!!!"));
    }
}
