//! What a run asks for and what that needs, worked out before any VM
//! starts: the packages of `--packages` and of the project's
//! `cygvm-build.toml`, resolved against the generation's package index
//! (with the Base category and every dependency), minus what the
//! generation has installed.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::config::Config;
use crate::cygwin::closure::{self, Closure};
use crate::cygwin::mirror::MirrorSource;
use crate::cygwin::setup_ini::SetupIni;
use crate::derived::PackageVersion;
use crate::image::Generation;
use crate::snapshot::Manifest;

/// The per-project file next to the sources (in the `--input` directory).
pub const PROJECT_FILE: &str = "cygvm-build.toml";

/// Where a generation keeps a copy of the package index it was installed
/// or refreshed from (`setup.zst`, `setup.xz` or `setup.ini` inside).
pub const KEPT_INDEX_DIR: &str = "cygwin-index";
use crate::media::build::INDEX_NAMES;

/// The packages a run asks for, with where each list came from.
#[derive(Debug, Default, Clone)]
pub struct PackageRequest {
    pub packages: Vec<String>,
    pub origins: Vec<String>,
}

impl PackageRequest {
    /// Adds `names` asked for by `origin` (`--packages`, a file's path);
    /// commas and white space separate names.
    pub fn add<S: AsRef<str>>(&mut self, origin: &str, names: &[S]) {
        let before = self.packages.len();
        for name in names.iter().flat_map(|n| {
            n.as_ref()
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        }) {
            if !self.packages.contains(&name) {
                self.packages.push(name);
            }
        }
        if self.packages.len() > before || names.is_empty() {
            self.origins.push(origin.to_string());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.packages.is_empty()
    }

    fn describe(&self) -> String {
        self.origins.join(" and ")
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectFile {
    #[serde(default)]
    packages: Vec<String>,
}

/// Reads `dir/cygvm-build.toml` if there is one: its `packages` list.
pub fn read_project_file(dir: &Path) -> Result<Option<(PathBuf, Vec<String>)>> {
    let path = dir.join(PROJECT_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let file: ProjectFile = toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: {}",
            path.display(),
            e.to_string().trim_end().replace('\n', "\n  ")
        )
    })?;
    Ok(Some((path, file.packages)))
}

/// What a run with extra packages needs: the packages its generation lacks
/// (with the versions the index offers), and where to get them.
pub struct Plan {
    pub requested: Vec<String>,
    /// What the derived generation adds, sorted by name.
    pub packages: Vec<PackageVersion>,
    pub key: String,
    pub parent_state_sha256: String,
    pub index: SetupIni,
    pub index_name: String,
    /// The closure cut down to the missing packages: what to mirror.
    pub missing: Closure,
    pub source: MirrorSource,
    pub cache: PathBuf,
}

/// Resolves `request` against `parent`'s index. `None` when the generation
/// has every package already. Fails, naming the request's origin and the
/// dependency chain, for unknown names, dependencies nothing provides and
/// test-only packages.
pub fn plan(
    config: &Config,
    parent: &Generation,
    request: &PackageRequest,
) -> Result<Option<Plan>> {
    let manifest = Manifest::load(&parent.manifest())?;
    let Some(state) = &manifest.state else {
        bail!(
            "generation {} ({}) has no memory snapshot to add packages to; run `cygvm refresh`",
            parent.number,
            parent.dir.display()
        );
    };
    let Some(mirror_spec) = config.mirror_source() else {
        bail!(
            "the image's config sets no `cygwin.mirror`, so there is nowhere to get {} from",
            request.packages.join(", ")
        );
    };
    let source = MirrorSource::parse(&mirror_spec);
    let cache = crate::media::build::archive_cache(config);
    let (index, index_name) = generation_index(config, parent, &source, &cache)?;
    let closure = closure::resolve(&index, &request.packages).with_context(|| {
        format!(
            "cannot add the packages of {} ({}) to generation {}",
            request.describe(),
            request.packages.join(", "),
            parent.number
        )
    })?;
    let installed: std::collections::HashSet<&str> = manifest
        .cygwin_packages
        .iter()
        .map(String::as_str)
        .collect();
    let missing_idx: Vec<usize> = closure
        .packages
        .iter()
        .copied()
        .filter(|&i| !installed.contains(index.packages[i].name.as_str()))
        .collect();
    if missing_idx.is_empty() {
        return Ok(None);
    }
    let packages: Vec<PackageVersion> = missing_idx
        .iter()
        .map(|&i| PackageVersion {
            name: index.packages[i].name.clone(),
            version: closure.version(&index, i).unwrap_or_default().to_string(),
        })
        .collect();
    let missing = Closure {
        test: closure
            .test
            .iter()
            .copied()
            .filter(|i| missing_idx.binary_search(i).is_ok())
            .collect(),
        packages: missing_idx,
        windows: closure.windows.clone(),
    };
    let mut requested = request.packages.clone();
    requested.sort();
    Ok(Some(Plan {
        key: super::key(&state.sha256, &packages),
        parent_state_sha256: state.sha256.clone(),
        requested,
        packages,
        index,
        index_name,
        missing,
        source,
        cache,
    }))
}

/// The package index of `parent`: the copy it keeps of the index it was
/// made from, else (generations made before that copy was kept) the
/// configured mirror's index now.
fn generation_index(
    config: &Config,
    parent: &Generation,
    source: &MirrorSource,
    cache: &Path,
) -> Result<(SetupIni, String)> {
    let kept = parent.dir.join(KEPT_INDEX_DIR);
    for name in INDEX_NAMES {
        let path = kept.join(name);
        if path.is_file() {
            let index = SetupIni::read(&path)
                .with_context(|| format!("cannot read the package index {}", path.display()))?;
            return Ok((index, path.display().to_string()));
        }
    }
    tracing::debug!(
        "generation {} keeps no package index; using the configured mirror's",
        parent.number
    );
    crate::media::build::load_index(source, crate::media::build::index_arch(config), cache)
}

/// Keeps a copy of the package index `index_file` in a generation
/// directory, for the runs that add packages to it later.
pub fn keep_index(index_file: &Path, generation_dir: &Path) -> Result<()> {
    let name = index_file
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| INDEX_NAMES.contains(n))
        .unwrap_or("setup.ini");
    let dir = generation_dir.join(KEPT_INDEX_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let bytes = std::fs::read(index_file)
        .with_context(|| format!("cannot read {}", index_file.display()))?;
    for other in INDEX_NAMES {
        if other != name {
            let _ = std::fs::remove_file(dir.join(other));
        }
    }
    crate::fsutil::write_atomic(&dir.join(name), &bytes, 0o644)
        .with_context(|| format!("cannot write {}", dir.join(name).display()))
}

/// Copies the index `from` keeps (a generation, or the media directory)
/// into generation directory `to`; nothing when it keeps none.
pub fn copy_kept_index(from: &Path, to: &Path) -> Result<()> {
    for name in INDEX_NAMES {
        let path = from.join(KEPT_INDEX_DIR).join(name);
        if path.is_file() {
            return keep_index(&path, to);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_comma_or_space_separated_once_each() {
        let mut r = PackageRequest::default();
        r.add("--packages", &["gcc-g++,libfoo-devel", "make"]);
        r.add("in/cygvm-build.toml", &["make", "cmake ninja"]);
        assert_eq!(
            r.packages,
            ["gcc-g++", "libfoo-devel", "make", "cmake", "ninja"]
        );
        assert_eq!(r.describe(), "--packages and in/cygvm-build.toml");
    }

    #[test]
    fn the_project_file_names_its_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_project_file(dir.path()).unwrap().is_none());
        std::fs::write(
            dir.path().join(PROJECT_FILE),
            "packages = [\"make\", \"gcc-core\"]\n",
        )
        .unwrap();
        let (path, names) = read_project_file(dir.path()).unwrap().unwrap();
        assert_eq!(names, ["make", "gcc-core"]);
        assert_eq!(path, dir.path().join(PROJECT_FILE));
        std::fs::write(dir.path().join(PROJECT_FILE), "packges = [\"make\"]\n").unwrap();
        let err = read_project_file(dir.path()).unwrap_err().to_string();
        assert!(err.contains("cygvm-build.toml"), "{err}");
        assert!(err.contains("packges"), "{err}");
    }
}
