//! `cygvm media`: from a config to floppy.img, cygwin.iso, the answer file
//! and media.json. Everything is made in a staging directory next to the
//! output; files are moved into place only when all of them exist, and
//! media.json last, so a failure leaves the previous media as they were.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::{Config, GuestOsKind};
use crate::cygwin::closure::{self, Closure};
use crate::cygwin::mirror::{self, MirrorSource};
use crate::cygwin::setup_ini::SetupIni;
use crate::fsutil::{self, write_atomic};
use crate::media::bootstrap;
use crate::media::floppy;
use crate::media::iso::{FileSource, IsoBuilder};
use crate::media::unattend::{self, MediaContext};
use crate::media::wim::WimImage;
use crate::secrets::ImageSecrets;

/// The file at the root of the Cygwin ISO by which the guest finds it.
pub const MARKER_NAME: &str = "CYGVM.TAG";
pub const VOLUME_LABEL: &str = "CYGVM";
pub const FLOPPY_NAME: &str = "floppy.img";
pub const ISO_NAME: &str = "cygwin.iso";
pub const MANIFEST_NAME: &str = "media.json";
/// The directory (beside the media) holding the index the mirror was cut from.
pub const KEPT_INDEX: &str = "cygwin-index";
const MANIFEST_FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize)]
pub struct MediaManifest {
    pub format: u32,
    pub cygvm_version: String,
    pub image: String,
    pub guest_os: String,
    pub windows_version: String,
    pub media_id: String,
    pub answer_file: String,
    pub files: Vec<MediaFile>,
    pub cygwin: CygwinSummary,
}

#[derive(Debug, Clone, Serialize)]
pub struct MediaFile {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CygwinSummary {
    pub index: String,
    pub requested: Vec<String>,
    pub packages: Vec<PackageEntry>,
    pub archive_bytes: u64,
    /// The newest Windows NT version the packages ask for (`_windows`).
    pub needs_windows: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PackageEntry {
    pub name: String,
    pub version: String,
}

/// Where the index of a mirror lives, tried in this order.
pub const INDEX_NAMES: [&str; 3] = ["setup.zst", "setup.xz", "setup.ini"];

/// Reads the mirror's package index for `arch` (x86_64, or x86 for XP/2003).
pub fn load_index(source: &MirrorSource, arch: &str, cache: &Path) -> Result<(SetupIni, String)> {
    load_index_file(source, arch, cache).map(|(index, name, _)| (index, name))
}

/// Like [`load_index`], also returning the local file the index was read from.
pub fn load_index_file(
    source: &MirrorSource,
    arch: &str,
    cache: &Path,
) -> Result<(SetupIni, String, PathBuf)> {
    match source {
        MirrorSource::Dir(dir) => {
            for name in INDEX_NAMES {
                let path = dir.join(arch).join(name);
                if path.is_file() {
                    let index = SetupIni::read(&path).with_context(|| {
                        format!("cannot use the package index {}", path.display())
                    })?;
                    return Ok((index, path.display().to_string(), path));
                }
            }
            bail!(
                "the mirror {} has no {arch}/setup.ini, setup.xz or setup.zst; \
                 set cygwin.mirror to a directory holding {arch}/setup.ini",
                dir.display()
            )
        }
        MirrorSource::Http(base) => {
            let url = format!("{base}{arch}/setup.xz");
            fs::create_dir_all(cache)
                .with_context(|| format!("cannot create the cache {}", cache.display()))?;
            let dest = cache.join(format!("index-{}.xz", short_hash(url.as_bytes())));
            mirror::download_to(&url, &dest)
                .with_context(|| format!("cannot download the package index {url}"))?;
            let index = SetupIni::read(&dest)
                .with_context(|| format!("cannot use the package index from {url}"))?;
            Ok((index, url, dest))
        }
    }
}

fn short_hash(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..8])
}

/// Checks that a Windows guest can run the packages the index offers.
fn check_windows_requirement(config: &Config, closure: &Closure) -> Result<()> {
    if config.guest.os != GuestOsKind::Windows {
        return Ok(());
    }
    let Some(req) = &closure.windows else {
        return Ok(());
    };
    let needed: Vec<u32> = req
        .version
        .split('.')
        .filter_map(|p| p.parse().ok())
        .collect();
    let (major, minor) = config.guest.version.nt_version();
    let have = [major, minor];
    if needed.as_slice() > &have[..] {
        bail!(
            "the Cygwin packages need Windows NT {} or newer (`{}` depends on `_windows >= {}`), \
             but guest.version = \"{}\" is NT {major}.{minor}; use an index from that Windows' \
             era (XP/2003: an old x86 index with `requires:` lines) or a newer guest.version",
            req.version,
            req.required_by,
            req.version,
            config.guest.version
        );
    }
    Ok(())
}

/// A verified local Cygwin mirror of the config's packages.
pub struct PreparedMirror {
    pub source: MirrorSource,
    pub arch: String,
    pub index: SetupIni,
    pub index_name: String,
    /// The local file the index was read from.
    pub index_file: PathBuf,
    pub closure: Closure,
    pub local: mirror::LocalMirror,
    pub requested: Vec<String>,
}

/// The content-addressed cache of verified archives the config's images
/// share: `cygwin.cache`, else `<image dir>/.cache/cygwin`.
pub fn archive_cache(config: &Config) -> PathBuf {
    config
        .cygwin
        .cache
        .as_ref()
        .map(|c| config.resolve_path(c))
        .unwrap_or_else(|| {
            config
                .resolve_path(&config.image.dir)
                .join(".cache")
                .join("cygwin")
        })
}

/// The index's architecture: x86 for XP/2003, else x86_64.
pub fn index_arch(config: &Config) -> &'static str {
    if config.guest.os == GuestOsKind::Windows && config.guest.version.uses_winnt_sif() {
        "x86"
    } else {
        "x86_64"
    }
}

/// Reads the configured mirror's index, resolves the packages and lays out
/// a verified local mirror in `dest` (what setup.exe -L -l takes).
pub fn prepare_mirror(config: &Config, dest: &Path) -> Result<PreparedMirror> {
    let Some(mirror_spec) = config.mirror_source() else {
        bail!(
            "key `cygwin.mirror` is not set: name a Cygwin mirror URL or a local directory holding x86_64/setup.ini"
        );
    };
    let source = MirrorSource::parse(&mirror_spec);
    let cache = archive_cache(config);
    let arch = index_arch(config);
    let (index, index_name, index_file) = load_index_file(&source, arch, &cache)?;
    let requested: Vec<String> = config
        .cygwin
        .packages
        .iter()
        .map(|p| p.as_str().to_string())
        .collect();
    let closure = closure::resolve(&index, &requested).with_context(|| {
        format!("cannot resolve the packages of key `cygwin.packages` in {index_name}")
    })?;
    check_windows_requirement(config, &closure)?;
    let local = mirror::build_local_mirror(&index, &closure, &source, &cache, dest)
        .context("cannot build the local Cygwin mirror")?;
    Ok(PreparedMirror {
        source,
        arch: arch.to_string(),
        index,
        index_name,
        index_file,
        closure,
        local,
        requested,
    })
}

/// Builds the media into `out` and returns their manifest.
/// `image` is the install image the ISO's install.wim lists for the
/// configured edition or index (see `windows_iso::check_windows_iso`), when
/// known: the answer file's product key depends on its edition.
pub fn build(config: &Config, out: &Path, image: Option<&WimImage>) -> Result<MediaManifest> {
    let image_dir = config.image_dir();
    let secrets = ImageSecrets::load_or_create(
        &image_dir.join("secrets"),
        config.guest.admin_password.as_ref().map(|p| p.0.as_str()),
    )
    .context("cannot prepare the image's secrets")?;

    fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".media-staging-")
        .tempdir_in(out)
        .with_context(|| format!("cannot create a staging directory in {}", out.display()))?;
    let stage = staging.path();

    let PreparedMirror {
        source,
        arch,
        index,
        index_name,
        index_file,
        closure,
        local,
        requested,
    } = prepare_mirror(config, &stage.join("mirror"))?;
    // The index the mirror was cut from, for the image's generations
    // (runs that add packages resolve them against it).
    crate::derived::request::keep_index(&index_file, stage)?;
    let arch = arch.as_str();

    let media_id = media_id(config, &secrets, &index, &closure);
    let ctx = MediaContext {
        config,
        admin_password: &secrets.admin_password,
        client_public_key: &secrets.client_public_key(),
        marker_name: MARKER_NAME,
        media_id: &media_id,
        image: image.cloned(),
    };
    let answer = unattend::answer_file(&ctx).context("cannot write the answer file")?;
    // The answer file holds the admin password (encoded, not encrypted).
    write_atomic(&stage.join(answer.name), &answer.bytes, 0o600)
        .with_context(|| format!("cannot write {}", answer.name))?;
    let mut on_floppy: Vec<(&str, &[u8])> = vec![(answer.name, &answer.bytes)];
    on_floppy.extend(answer.companions.iter().map(|(n, b)| (*n, b.as_slice())));
    floppy::write_floppy(&on_floppy, &stage.join(FLOPPY_NAME))
        .context("cannot write the floppy image")?;
    set_private(&stage.join(FLOPPY_NAME))?;

    let mut iso = IsoBuilder::new(VOLUME_LABEL)?;
    iso.add_file(
        MARKER_NAME,
        FileSource::Bytes(format!("{media_id}\r\n").into_bytes()),
    )?;
    let installer = unattend::installer_name(config.guest.version);
    match setup_exe(config, &source, arch, installer, stage)? {
        Some(path) => iso.add_file(installer, FileSource::Path(path))?,
        None => tracing::warn!(
            "no {installer} found beside the mirror; the first logon will fail at its cygwin-setup step"
        ),
    }
    iso.add_tree("mirror", &local.root)?;
    for (path, bytes) in bootstrap::bootstrap_files(&ctx) {
        iso.add_file(&path, FileSource::Bytes(bytes))?;
    }
    iso.add_file(
        "cygvm/authorized_keys",
        FileSource::Bytes(format!("{}\n", secrets.client_public_key()).into_bytes()),
    )?;
    iso.add_file(
        "cygvm/ssh_host_ed25519_key",
        FileSource::Bytes(secrets.host_private_key_openssh()?.into_bytes()),
    )?;
    iso.add_file(
        "cygvm/ssh_host_ed25519_key.pub",
        FileSource::Bytes(format!("{}\n", secrets.host_public_key()).into_bytes()),
    )?;
    iso.write_to(&stage.join(ISO_NAME))
        .context("cannot write the Cygwin ISO")?;
    // The ISO carries the guest's private host key.
    set_private(&stage.join(ISO_NAME))?;

    let mut files = Vec::new();
    for name in [FLOPPY_NAME, ISO_NAME, answer.name] {
        let path = stage.join(name);
        let size = fs::metadata(&path)?.len();
        let sha256 = fsutil::sha256_file(&path)?;
        files.push(MediaFile {
            name: name.to_string(),
            size,
            sha256,
        });
    }
    let manifest = MediaManifest {
        format: MANIFEST_FORMAT,
        cygvm_version: env!("CARGO_PKG_VERSION").to_string(),
        image: config.image.name.to_string(),
        guest_os: match config.guest.os {
            GuestOsKind::Windows => "windows".into(),
            GuestOsKind::LinuxStandin => "linux-standin".into(),
        },
        windows_version: config.guest.version.to_string(),
        media_id,
        answer_file: answer.name.to_string(),
        files,
        cygwin: CygwinSummary {
            index: index_name,
            requested: requested.iter().map(|s| s.to_string()).collect(),
            packages: closure
                .packages
                .iter()
                .map(|&i| PackageEntry {
                    name: index.packages[i].name.clone(),
                    version: closure.version(&index, i).unwrap_or_default().to_string(),
                })
                .collect(),
            archive_bytes: local.total_bytes(),
            needs_windows: closure.windows.as_ref().map(|w| w.version.clone()),
        },
    };

    // Move into place: the media first, the manifest that vouches for them last.
    let kept = out.join(KEPT_INDEX);
    let _ = fs::remove_dir_all(&kept);
    fs::rename(stage.join(KEPT_INDEX), &kept)
        .with_context(|| format!("cannot move the package index into {}", out.display()))?;
    for file in &manifest.files {
        fs::rename(stage.join(&file.name), out.join(&file.name))
            .with_context(|| format!("cannot move {} into {}", file.name, out.display()))?;
    }
    let json = serde_json::to_vec_pretty(&manifest)?;
    write_atomic(&out.join(MANIFEST_NAME), &json, 0o644)
        .with_context(|| format!("cannot write {}", out.join(MANIFEST_NAME).display()))?;
    fsutil::sync_dir(out)?;
    Ok(manifest)
}

fn set_private(path: &Path) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot set the mode of {}", path.display()))
}

/// Finds Cygwin's installer: `cygwin.setup_exe` as a URL, as a path next to
/// the config, or by that name at the top of the mirror. Windows needs it;
/// the stand-in does not.
pub fn setup_exe(
    config: &Config,
    source: &MirrorSource,
    arch: &str,
    installer: &str,
    stage: &Path,
) -> Result<Option<PathBuf>> {
    let spec = &config.cygwin.setup_exe;
    let dest = stage.join(installer);
    if spec.contains("://") {
        mirror::download_to(spec, &dest)
            .with_context(|| format!("cannot download key `cygwin.setup_exe` = {spec}"))?;
        return Ok(Some(dest));
    }
    let local = config.resolve_path(Path::new(spec));
    if local.is_file() {
        return Ok(Some(local));
    }
    match mirror::fetch_setup_exe(source, arch, &dest) {
        Ok(_) => Ok(Some(dest)),
        Err(e) if config.guest.os == GuestOsKind::LinuxStandin => {
            tracing::debug!("{e}");
            Ok(None)
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "key `cygwin.setup_exe` = {spec:?} is neither a file next to the config nor at the top of the mirror; \
             download Cygwin's {installer} and name it there"
        ))),
    }
}

/// A stable identifier of what the media hold, written into the marker.
fn media_id(
    config: &Config,
    secrets: &ImageSecrets,
    index: &SetupIni,
    closure: &Closure,
) -> String {
    let mut h = Sha256::new();
    h.update(config.image.name.as_str());
    h.update(config.guest.version.config_name());
    h.update(secrets.client_public_key());
    h.update(secrets.host_public_key());
    for &i in &closure.packages {
        h.update(&index.packages[i].name);
        if let Some(a) = closure.install(index, i) {
            h.update(&a.hash);
        }
    }
    format!("cygvm-{}", &hex::encode(h.finalize())[..16])
}
