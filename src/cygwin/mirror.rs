//! Fetching a closure's archives into a verified, content-addressed cache and
//! laying out a directory Cygwin's `setup.exe -L -l DIR` installs from.
//!
//! Layout (what setup.exe's local-directory mode looks for; see
//! docs/cygwin.md): `DIR/<arch>/setup.ini` and every archive at its
//! `install:` path relative to `DIR`. The written setup.ini keeps the index
//! header and, for each closure package, the version the closure chose as
//! its only (current) version: a `[test]` version asked for as `name=test`
//! is written as the current section, so `setup -q -L -P name` installs it
//! without `--allow-test-packages`. Other sections are dropped because
//! only the chosen archives are present. No
//! `setup.ini.sig` is written: setup.exe accepts a local directory without
//! one, while the mirror's signature would not match the reduced index.
//!
//! Cache: `<cache>/<algo>/<hex digest>`; a download in progress is
//! `<digest>.part` and is resumed with an HTTP Range request. Nothing is
//! renamed to its digest name before its size and digest match the index.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use sha2::Digest;
use thiserror::Error;

use super::closure::Closure;
use super::setup_ini::{Archive, HashAlgo, SetupIni};
use crate::fsutil::{self, AtomicFile};

#[derive(Debug, Error)]
pub enum MirrorError {
    #[error(
        "package {package}: {path} from {from} has {algo} {actual}, but the index expects {expected}; the file was discarded (the mirror may be mid-update or damaged: run again later or use another mirror)"
    )]
    HashMismatch {
        package: String,
        path: String,
        from: String,
        algo: HashAlgo,
        expected: String,
        actual: String,
    },
    #[error(
        "package {package}: {path} from {from} is {actual} bytes, but the index expects {expected}; the file was discarded (the mirror may be mid-update or damaged: run again later or use another mirror)"
    )]
    SizeMismatch {
        package: String,
        path: String,
        from: String,
        expected: u64,
        actual: u64,
    },
    #[error(
        "package {package}: cannot download {url}: {source} (check the mirror URL and the network; run again to resume)"
    )]
    Http {
        package: String,
        url: String,
        #[source]
        source: Box<ureq::Error>,
    },
    #[error(
        "package {package}: {path} is not in {dir} ({source}); --from must be the top of a Cygwin mirror (the directory that holds {arch}/)"
    )]
    NotInSource {
        package: String,
        path: String,
        dir: String,
        arch: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "package {package}: install path {path:?} is not a plain relative path; refusing to write outside the mirror directory (is the index damaged?)"
    )]
    UnsafePath { package: String, path: String },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "no {name} at {location} ({reason}); download it from https://cygwin.com/{name} and give its path or URL as cygwin.setup_exe"
    )]
    SetupExeNotFound {
        name: String,
        location: String,
        reason: String,
    },
    #[error("no cache directory: neither XDG_CACHE_HOME nor HOME is set; pass --cache DIR")]
    NoCacheDir,
}

fn io_err<'p>(action: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> MirrorError + 'p {
    move |source| MirrorError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Where archives come from: the top of a mirror, by URL or on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MirrorSource {
    /// `http://` or `https://` URL, kept with a trailing slash.
    Http(String),
    Dir(PathBuf),
}

impl MirrorSource {
    /// `http(s)://…` is a URL, `file://…` and anything else a directory.
    pub fn parse(s: &str) -> Self {
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            let mut url = s.to_string();
            if !url.ends_with('/') {
                url.push('/');
            }
            MirrorSource::Http(url)
        } else if let Some(path) = s.strip_prefix("file://") {
            MirrorSource::Dir(PathBuf::from(path))
        } else {
            MirrorSource::Dir(PathBuf::from(s))
        }
    }

    fn describe(&self, rel: &str) -> String {
        match self {
            MirrorSource::Http(base) => format!("{base}{rel}"),
            MirrorSource::Dir(dir) => dir.join(rel).display().to_string(),
        }
    }
}

impl fmt::Display for MirrorSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MirrorSource::Http(url) => f.write_str(url),
            MirrorSource::Dir(dir) => write!(f, "{}", dir.display()),
        }
    }
}

/// A file written under the mirror directory: path relative to it (with `/`)
/// and size in bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MirrorFile {
    pub path: String,
    pub size: u64,
}

/// The laid-out mirror: every file written, setup.ini first, then the
/// archives by path.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LocalMirror {
    pub root: PathBuf,
    /// `<arch>/setup.ini`.
    pub setup_ini: String,
    pub files: Vec<MirrorFile>,
    /// Archives that had to be fetched (the rest came from the cache).
    pub fetched: usize,
    pub fetched_bytes: u64,
}

impl LocalMirror {
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// `$XDG_CACHE_HOME/cygvm/cygwin`, else `~/.cache/cygvm/cygwin`.
pub fn default_cache_dir() -> Result<PathBuf, MirrorError> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(xdg) => PathBuf::from(xdg),
        None => {
            PathBuf::from(std::env::var_os("HOME").ok_or(MirrorError::NoCacheDir)?).join(".cache")
        }
    };
    Ok(base.join("cygvm").join("cygwin"))
}

/// The directory under the mirror top that holds setup.ini: the index's
/// `arch:`, else the first component of its install paths (`x86_64/…`),
/// else `x86` (the oldest indexes named neither).
pub fn mirror_arch(index: &SetupIni) -> String {
    if let Some(arch) = index.arch() {
        return arch.to_string();
    }
    index
        .packages
        .iter()
        .filter_map(|p| p.install.as_ref())
        .find_map(|a| match a.path.split('/').next() {
            Some(first @ ("x86" | "x86_64")) => Some(first.to_string()),
            _ => None,
        })
        .unwrap_or_else(|| "x86".to_string())
}

/// The index reduced to the closure: the header verbatim, then each closure
/// package's chosen version as its current section, in index order (the
/// current section verbatim; a test version as `@ name`, the package's
/// descriptions and category, then the `[test]` lines without the label).
pub fn reduced_setup_ini(index: &SetupIni, closure: &Closure) -> String {
    let mut order = closure.packages.clone();
    order.sort_unstable();
    let mut out = String::with_capacity(index.header_text().len() + order.len() * 1024);
    out.push_str(index.header_text());
    if !out.is_empty() && !out.ends_with("\n\n") {
        out.push('\n');
    }
    for i in order {
        let package = &index.packages[i];
        let text = match index.test_stanza_text(package) {
            Some(test) if closure.uses_test(i) => test.into(),
            _ => index.current_stanza_text(package),
        };
        out.push_str(text.trim_end_matches(['\n', '\r']));
        out.push_str("\n\n");
    }
    out
}

/// Fetches, verifies and lays out the closure's archives under `dest`.
pub fn build_local_mirror(
    index: &SetupIni,
    closure: &Closure,
    source: &MirrorSource,
    cache: &Path,
    dest: &Path,
) -> Result<LocalMirror, MirrorError> {
    let arch = mirror_arch(index);
    let mut wanted: Vec<(&str, &Archive)> = closure
        .packages
        .iter()
        .filter_map(|&i| {
            let name = index.packages[i].name.as_str();
            closure.install(index, i).map(|a| (name, a))
        })
        .collect();
    wanted.sort_by(|a, b| a.1.path.cmp(&b.1.path));
    wanted.dedup_by(|a, b| a.1.path == b.1.path);
    for (package, archive) in &wanted {
        if !is_plain_relative(&archive.path) {
            return Err(MirrorError::UnsafePath {
                package: package.to_string(),
                path: archive.path.clone(),
            });
        }
    }

    let fetcher = Fetcher::new(source, &arch);
    let mut files = Vec::with_capacity(wanted.len() + 1);
    let (mut fetched, mut fetched_bytes) = (0, 0);
    for (n, (package, archive)) in wanted.iter().enumerate() {
        let (cached, was_fetched) = fetcher.ensure_cached(package, archive, cache)?;
        if was_fetched {
            fetched += 1;
            fetched_bytes += archive.size;
        }
        let target = dest.join(&archive.path);
        place(&cached, &target)?;
        tracing::debug!(
            "[{}/{}] {} -> {}",
            n + 1,
            wanted.len(),
            package,
            archive.path
        );
        files.push(MirrorFile {
            path: archive.path.clone(),
            size: archive.size,
        });
    }

    let ini_dir = dest.join(&arch);
    fs::create_dir_all(&ini_dir).map_err(io_err("create directory", &ini_dir))?;
    // setup.exe prefers setup.zst/.xz/.bz2 over setup.ini in the same
    // directory, and rejects an index whose .sig does not match; stale ones
    // from an earlier layout would shadow or fail the reduced index.
    for stale in [
        "setup.zst",
        "setup.xz",
        "setup.bz2",
        "setup.zst.sig",
        "setup.xz.sig",
        "setup.bz2.sig",
        "setup.ini.sig",
    ] {
        let path = ini_dir.join(stale);
        match fs::remove_file(&path) {
            Ok(()) => tracing::info!("removed stale {}", path.display()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &path)(e)),
        }
    }
    let ini_text = reduced_setup_ini(index, closure);
    let ini_path = ini_dir.join("setup.ini");
    fsutil::write_atomic(&ini_path, ini_text.as_bytes(), 0o644)
        .map_err(io_err("write", &ini_path))?;
    let setup_ini = format!("{arch}/setup.ini");
    files.insert(
        0,
        MirrorFile {
            path: setup_ini.clone(),
            size: ini_text.len() as u64,
        },
    );

    Ok(LocalMirror {
        root: dest.to_path_buf(),
        setup_ini,
        files,
        fetched,
        fetched_bytes,
    })
}

fn is_plain_relative(path: &str) -> bool {
    !path.is_empty()
        && !path.contains('\\')
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// Puts `cached` at `target` atomically: a hard link under a temporary
/// name renamed into place, or a copy when linking is not possible.
fn place(cached: &Path, target: &Path) -> Result<(), MirrorError> {
    let parent = target.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(io_err("create directory", parent))?;
    if same_file(cached, target) {
        return Ok(());
    }
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = parent.join(format!(".{name}.{}.link", std::process::id()));
    let _ = fs::remove_file(&temp);
    match fs::hard_link(cached, &temp) {
        Ok(()) => {
            if let Err(e) = fs::rename(&temp, target) {
                let _ = fs::remove_file(&temp);
                return Err(io_err("rename into", target)(e));
            }
            fsutil::sync_dir(parent).map_err(io_err("sync directory", parent))
        }
        Err(e) => {
            tracing::debug!("hard link {} failed ({e}); copying", cached.display());
            let mut out = AtomicFile::create(target).map_err(io_err("create", target))?;
            out.set_mode(0o644).map_err(io_err("set mode of", target))?;
            let mut input = File::open(cached).map_err(io_err("open", cached))?;
            io::copy(&mut input, out.file()).map_err(io_err("copy into", target))?;
            out.commit().map_err(io_err("write", target))
        }
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

struct Fetcher<'a> {
    source: &'a MirrorSource,
    arch: &'a str,
    agent: ureq::Agent,
    tty: bool,
}

impl<'a> Fetcher<'a> {
    fn new(source: &'a MirrorSource, arch: &'a str) -> Self {
        Self {
            source,
            arch,
            agent: http_agent(),
            tty: io::stderr().is_terminal(),
        }
    }

    /// The verified cache file for `archive`, and whether it had to be fetched.
    fn ensure_cached(
        &self,
        package: &str,
        archive: &Archive,
        cache: &Path,
    ) -> Result<(PathBuf, bool), MirrorError> {
        let dir = cache.join(archive.algo.name());
        fs::create_dir_all(&dir).map_err(io_err("create cache directory", &dir))?;
        let cached = dir.join(&archive.hash);
        if cached.exists() {
            let from = cached.display().to_string();
            match verify(package, archive, &cached, &from) {
                Ok(()) => return Ok((cached, false)),
                Err(e) => {
                    tracing::warn!("cached copy is damaged, fetching again: {e}");
                    fs::remove_file(&cached).map_err(io_err("remove", &cached))?;
                }
            }
        }

        let part = dir.join(format!("{}.part", archive.hash));
        let from = self.source.describe(&archive.path);
        let resumed = match self.source {
            MirrorSource::Dir(top) => {
                self.copy_from_dir(package, archive, top, &part)?;
                false
            }
            MirrorSource::Http(_) => self.download(package, archive, &from, &part, true)?,
        };
        let mut checked = verify(package, archive, &part, &from);
        if checked.is_err() && resumed {
            // The kept part may have come from an older file; try once whole.
            tracing::warn!(
                "resumed download of {} failed verification; downloading it whole",
                archive.path
            );
            let _ = fs::remove_file(&part);
            self.download(package, archive, &from, &part, false)?;
            checked = verify(package, archive, &part, &from);
        }
        if let Err(e) = checked {
            let _ = fs::remove_file(&part);
            return Err(e);
        }
        File::open(&part)
            .and_then(|f| f.sync_all())
            .map_err(io_err("sync", &part))?;
        fs::rename(&part, &cached).map_err(io_err("rename into", &cached))?;
        fsutil::sync_dir(&dir).map_err(io_err("sync directory", &dir))?;
        Ok((cached, true))
    }

    fn copy_from_dir(
        &self,
        package: &str,
        archive: &Archive,
        top: &Path,
        part: &Path,
    ) -> Result<(), MirrorError> {
        let src = top.join(&archive.path);
        let mut input = File::open(&src).map_err(|source| MirrorError::NotInSource {
            package: package.to_string(),
            path: archive.path.clone(),
            dir: top.display().to_string(),
            arch: self.arch.to_string(),
            source,
        })?;
        tracing::info!(
            "copying {} ({} bytes) from {}",
            archive.path,
            archive.size,
            src.display()
        );
        let mut out = File::create(part).map_err(io_err("create", part))?;
        io::copy(&mut input, &mut out).map_err(io_err("copy into", part))?;
        Ok(())
    }

    /// Downloads into `part`, continuing from its current length when
    /// `resume`; returns whether earlier bytes were kept.
    fn download(
        &self,
        package: &str,
        archive: &Archive,
        url: &str,
        part: &Path,
        resume: bool,
    ) -> Result<bool, MirrorError> {
        let mut have = if resume {
            fs::metadata(part).map(|m| m.len()).unwrap_or(0)
        } else {
            0
        };
        if have > archive.size {
            have = 0;
        }
        if have == archive.size && have > 0 {
            return Ok(true);
        }
        let http_err = |source: ureq::Error| MirrorError::Http {
            package: package.to_string(),
            url: url.to_string(),
            source: Box::new(source),
        };

        let mut request = self.agent.get(url).header("Accept-Encoding", "identity");
        if have > 0 {
            request = request.header("Range", format!("bytes={have}-"));
        }
        let response = match request.call() {
            Err(ureq::Error::StatusCode(416)) if have > 0 => {
                // The server cannot continue from there; start over.
                let _ = fs::remove_file(part);
                return self.download(package, archive, url, part, false);
            }
            other => other.map_err(http_err)?,
        };
        let continues = have > 0
            && response.status() == 206
            && response
                .headers()
                .get("content-range")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim().starts_with(&format!("bytes {have}-")));
        if !continues {
            have = 0;
        }

        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(!continues)
            .open(part)
            .map_err(io_err("open", part))?;
        file.seek(SeekFrom::Start(have))
            .map_err(io_err("seek in", part))?;
        file.set_len(have).map_err(io_err("truncate", part))?;

        let bar = self.progress_bar(package, archive, have, url);
        let mut body = response.into_body().into_reader();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = file.flush();
                    return Err(MirrorError::Io {
                        action: "download (run again to resume)",
                        path: PathBuf::from(url),
                        source: e,
                    });
                }
            };
            file.write_all(&buf[..n]).map_err(io_err("write", part))?;
            if let Some(bar) = &bar {
                bar.inc(n as u64);
            }
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        file.flush().map_err(io_err("write", part))?;
        Ok(continues)
    }

    fn progress_bar(
        &self,
        package: &str,
        archive: &Archive,
        have: u64,
        url: &str,
    ) -> Option<indicatif::ProgressBar> {
        if !self.tty {
            if have > 0 {
                tracing::info!(
                    "downloading {url} ({} bytes), resuming at byte {have}",
                    archive.size
                );
            } else {
                tracing::info!("downloading {url} ({} bytes)", archive.size);
            }
            return None;
        }
        let bar = indicatif::ProgressBar::new(archive.size);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg:30!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(package.to_string());
        bar.set_position(have);
        Some(bar)
    }
}

fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_recv_body(Some(Duration::from_secs(60)))
        .build()
        .new_agent()
}

/// Checks size, then digest; the error names package, expected and actual.
fn verify(package: &str, archive: &Archive, path: &Path, from: &str) -> Result<(), MirrorError> {
    let size = fs::metadata(path).map_err(io_err("read", path))?.len();
    if size != archive.size {
        return Err(MirrorError::SizeMismatch {
            package: package.to_string(),
            path: archive.path.clone(),
            from: from.to_string(),
            expected: archive.size,
            actual: size,
        });
    }
    let actual = digest_file(archive.algo, path).map_err(io_err("read", path))?;
    if actual != archive.hash {
        return Err(MirrorError::HashMismatch {
            package: package.to_string(),
            path: archive.path.clone(),
            from: from.to_string(),
            algo: archive.algo,
            expected: archive.hash.clone(),
            actual,
        });
    }
    Ok(())
}

/// Lowercase hex digest of a file.
pub fn digest_file(algo: HashAlgo, path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    match algo {
        HashAlgo::Md5 => digest_reader::<md5::Md5>(&mut file),
        HashAlgo::Sha256 => digest_reader::<sha2::Sha256>(&mut file),
        HashAlgo::Sha512 => digest_reader::<sha2::Sha512>(&mut file),
    }
}

fn digest_reader<D: Digest>(reader: &mut impl Read) -> io::Result<String> {
    let mut hasher = D::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Where Cygwin's installer is: a file in a local mirror or a URL that
/// answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetupExe {
    Local(PathBuf),
    Remote(String),
}

/// `setup-x86_64.exe` or `setup-x86.exe`.
pub fn setup_exe_name(arch: &str) -> String {
    format!("setup-{arch}.exe")
}

/// Finds `setup-<arch>.exe` at the top of a mirror (directory or URL).
pub fn locate_setup_exe(source: &MirrorSource, arch: &str) -> Result<SetupExe, MirrorError> {
    let name = setup_exe_name(arch);
    let location = source.describe(&name);
    let not_found = |reason: String| MirrorError::SetupExeNotFound {
        name: name.clone(),
        location: location.clone(),
        reason,
    };
    match source {
        MirrorSource::Dir(dir) => {
            let path = dir.join(&name);
            match fs::metadata(&path) {
                Ok(m) if m.is_file() => Ok(SetupExe::Local(path)),
                Ok(_) => Err(not_found("not a regular file".into())),
                Err(e) => Err(not_found(e.to_string())),
            }
        }
        MirrorSource::Http(_) => match http_agent().head(&location).call() {
            Ok(_) => Ok(SetupExe::Remote(location.clone())),
            Err(e) => Err(not_found(e.to_string())),
        },
    }
}

/// GETs `url` into `out`; `what` names the file in errors.
fn http_copy(url: &str, what: &str, out: &mut File, dest: &Path) -> Result<u64, MirrorError> {
    let response = http_agent()
        .get(url)
        .call()
        .map_err(|source| MirrorError::Http {
            package: what.to_string(),
            url: url.to_string(),
            source: Box::new(source),
        })?;
    let mut body = response.into_body().into_reader();
    io::copy(&mut body, out).map_err(io_err("download into", dest))
}

/// Downloads `url` whole to `dest`, atomically; returns its size.
pub fn download_to(url: &str, dest: &Path) -> Result<u64, MirrorError> {
    let what = url.rsplit('/').next().unwrap_or(url).to_string();
    let mut out = AtomicFile::create(dest).map_err(io_err("create", dest))?;
    out.set_mode(0o644).map_err(io_err("set mode of", dest))?;
    let size = http_copy(url, &what, out.file(), dest)?;
    out.commit().map_err(io_err("write", dest))?;
    Ok(size)
}

/// Copies or downloads `setup-<arch>.exe` from the mirror top to `dest`
/// (atomically) and returns its size. The file must be a Windows executable.
pub fn fetch_setup_exe(source: &MirrorSource, arch: &str, dest: &Path) -> Result<u64, MirrorError> {
    let name = setup_exe_name(arch);
    let location = source.describe(&name);
    let mut out = AtomicFile::create(dest).map_err(io_err("create", dest))?;
    out.set_mode(0o644).map_err(io_err("set mode of", dest))?;
    let copied = match locate_setup_exe(source, arch)? {
        SetupExe::Local(path) => {
            let mut input = File::open(&path).map_err(io_err("open", &path))?;
            io::copy(&mut input, out.file()).map_err(io_err("copy into", dest))?
        }
        SetupExe::Remote(url) => http_copy(&url, &name, out.file(), dest)?,
    };
    let mut magic = [0u8; 2];
    let file = out.file();
    file.seek(SeekFrom::Start(0))
        .map_err(io_err("read", dest))?;
    if copied < 2 || file.read_exact(&mut magic).is_err() || &magic != b"MZ" {
        return Err(MirrorError::SetupExeNotFound {
            name,
            location,
            reason: "the file there is not a Windows executable".into(),
        });
    }
    out.commit().map_err(io_err("write", dest))?;
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_told_apart() {
        assert_eq!(
            MirrorSource::parse("https://m.example/cygwin"),
            MirrorSource::Http("https://m.example/cygwin/".into())
        );
        assert_eq!(
            MirrorSource::parse("file:///srv/cygwin"),
            MirrorSource::Dir("/srv/cygwin".into())
        );
        assert_eq!(
            MirrorSource::parse("mirror"),
            MirrorSource::Dir("mirror".into())
        );
    }

    #[test]
    fn only_plain_relative_paths_are_written() {
        assert!(is_plain_relative("x86_64/release/a/a-1.tar.xz"));
        for bad in ["/etc/passwd", "../x", "a/../../x", "", "a\\b", "./a"] {
            assert!(!is_plain_relative(bad), "{bad}");
        }
    }

    #[test]
    fn reduced_index_offers_a_chosen_test_version_as_current() {
        let h = "0123456789abcdef0123456789abcdef";
        let ini = SetupIni::parse(
            "t",
            format!(
                "arch: x86_64\n\n@ byobu\nsdesc: \"Byobu\"\ncategory: Utils\n[test]\nversion: 6.13-1\ninstall: noarch/byobu-6.13-1.tar.xz 2 {h}\ndepends2: tmux\n\n@ tmux\nsdesc: \"Tmux\"\nversion: 3.5\ninstall: x86_64/tmux-3.5.tar.xz 6 {h}\n[test]\nversion: 3.6\ninstall: x86_64/tmux-3.6.tar.xz 7 {h}\n"
            ),
        )
        .unwrap();
        let closure = crate::cygwin::resolve(&ini, &["byobu=test"]).unwrap();
        let text = reduced_setup_ini(&ini, &closure);
        assert_eq!(
            text,
            format!(
                "arch: x86_64\n\n@ byobu\nsdesc: \"Byobu\"\ncategory: Utils\nversion: 6.13-1\ninstall: noarch/byobu-6.13-1.tar.xz 2 {h}\ndepends2: tmux\n\n@ tmux\nsdesc: \"Tmux\"\nversion: 3.5\ninstall: x86_64/tmux-3.5.tar.xz 6 {h}\n\n"
            )
        );
        // What setup reads from it: byobu's test version as the current one.
        let again = SetupIni::parse("again", text).unwrap();
        let byobu = again.package("byobu").unwrap();
        assert_eq!(byobu.version.as_deref(), Some("6.13-1"));
        assert!(byobu.test.is_none());
        let closure = crate::cygwin::resolve(&again, &["byobu"]).unwrap();
        assert_eq!(closure.len(), 2);
    }

    #[test]
    fn arch_falls_back_to_install_paths() {
        let ini = SetupIni::parse(
            "t",
            "@ a\nversion: 1\ninstall: x86/release/a/a-1.tar.bz2 1 0123456789abcdef0123456789abcdef\n"
                .into(),
        )
        .unwrap();
        assert_eq!(mirror_arch(&ini), "x86");
    }
}
