//! The Windows installation ISO, checked before anything is installed from
//! it: the images its `sources/install.wim` (or `install.esd`) offers, and
//! whether the configured `guest.edition` / `guest.index` is one of them.
//!
//! Windows 10/11 ISOs are UDF (their ISO 9660 tree may hold only a README);
//! older ones are ISO 9660 + Joliet, and install.wim may exceed 4 GiB. Both
//! file systems are read here (see `udf.rs`, `iso9660.rs`), only as far as
//! finding the file, and of the file only the WIM header and XML data
//! (`media::wim`). See docs/windows.md, "Checking the edition before install".

mod disc;
mod iso9660;
mod udf;

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use thiserror::Error;

use crate::config::{Config, GuestOsKind};
use crate::media::unattend::{ImageSelector, image_selector};
use crate::media::wim::{self, WimError};
pub use crate::media::wim::{WimImage, write_wim};
use disc::{FileReader, Node};

/// Where Windows Setup (Vista and newer) takes the images from.
const INSTALL_IMAGES: [&str; 2] = ["install.wim", "install.esd"];

#[derive(Debug, Error)]
pub enum WindowsIsoError {
    #[error("cannot read the Windows ISO {}: {source} (check `guest.iso`)", iso.display())]
    Unreadable { iso: PathBuf, source: io::Error },
    #[error(
        "{} is neither ISO 9660 nor UDF: `guest.iso` must name a Windows installation ISO \
         (not a disk image or an archive)",
        iso.display()
    )]
    NotIso { iso: PathBuf },
    #[error("{}: damaged file system ({detail}); download the ISO again", iso.display())]
    DamagedFileSystem { iso: PathBuf, detail: String },
    #[error(
        "{} has no sources/install.wim or sources/install.esd: is this a Windows \
         Vista-or-newer installation ISO? (for XP or Server 2003 media set `guest.version`)",
        iso.display()
    )]
    NoInstallImage { iso: PathBuf },
    #[error("{}: {file} is damaged ({source}); download the ISO again", iso.display())]
    DamagedWim {
        iso: PathBuf,
        file: String,
        source: WimError,
    },
    #[error(
        "{} has no image named {edition:?} (`guest.edition`); its images are:\n{list}\
         set `guest.edition` to one of these names, or `guest.index` to its number",
        iso.display()
    )]
    EditionNotFound {
        iso: PathBuf,
        edition: String,
        list: String,
    },
    #[error(
        "{} has no image {index} (`guest.index`); its images are:\n{list}\
         set `guest.index` to one of these numbers, or `guest.edition` to its name",
        iso.display()
    )]
    IndexOutOfRange {
        iso: PathBuf,
        index: u32,
        list: String,
    },
    #[error(
        "{} has no I386 or AMD64 folder: it does not look like Windows XP or Server 2003 \
         installation media (`guest.version` = {version:?}); check `guest.iso` and `guest.version`",
        iso.display()
    )]
    NotWinntMedia { iso: PathBuf, version: String },
}

/// Errors of the file-system readers, given the ISO's name by the caller.
#[derive(Debug)]
enum FsError {
    Io(io::Error),
    Damaged(String),
}

impl From<io::Error> for FsError {
    fn from(e: io::Error) -> Self {
        FsError::Io(e)
    }
}

impl FsError {
    fn on(self, iso: &Path) -> WindowsIsoError {
        match self {
            FsError::Io(source) if source.kind() == io::ErrorKind::UnexpectedEof => {
                WindowsIsoError::DamagedFileSystem {
                    iso: iso.to_path_buf(),
                    detail: "a structure lies past the end of the file; is the download complete?"
                        .into(),
                }
            }
            FsError::Io(source) => WindowsIsoError::Unreadable {
                iso: iso.to_path_buf(),
                source,
            },
            FsError::Damaged(detail) => WindowsIsoError::DamagedFileSystem {
                iso: iso.to_path_buf(),
                detail,
            },
        }
    }
}

/// The file systems of a disc, UDF first: on a UDF bridge disc the ISO 9660
/// side of a Windows ISO may hold only a README.
struct Disc {
    udf: Option<udf::Volume>,
    iso9660: Option<iso9660::Volume>,
}

impl Disc {
    fn open<R: Read + Seek>(r: &mut R, iso: &Path) -> Result<Self, WindowsIsoError> {
        let len = r
            .seek(SeekFrom::End(0))
            .map_err(|e| FsError::Io(e).on(iso))?;
        let udf = udf::Volume::open(r, len).map_err(|e| e.on(iso))?;
        let iso9660 = iso9660::Volume::open(r).map_err(|e| e.on(iso))?;
        if udf.is_none() && iso9660.is_none() {
            return Err(WindowsIsoError::NotIso {
                iso: iso.to_path_buf(),
            });
        }
        Ok(Self { udf, iso9660 })
    }

    fn lookup<R: Read + Seek>(
        &self,
        r: &mut R,
        path: &[&str],
        iso: &Path,
    ) -> Result<Option<Node>, WindowsIsoError> {
        if let Some(v) = &self.udf
            && let Some(n) = v.lookup(r, path).map_err(|e| e.on(iso))?
        {
            return Ok(Some(n));
        }
        if let Some(v) = &self.iso9660
            && let Some(n) = v.lookup(r, path).map_err(|e| e.on(iso))?
        {
            return Ok(Some(n));
        }
        Ok(None)
    }
}

fn open_iso(iso: &Path) -> Result<File, WindowsIsoError> {
    File::open(iso).map_err(|source| WindowsIsoError::Unreadable {
        iso: iso.to_path_buf(),
        source,
    })
}

/// The images of the ISO's `sources/install.wim` or `sources/install.esd`
/// (found case-insensitively, through UDF or ISO 9660/Joliet).
pub fn images_in_iso(iso: &Path) -> Result<Vec<WimImage>, WindowsIsoError> {
    images_in_reader(&mut open_iso(iso)?, iso)
}

/// [`images_in_iso`] on an open disc image; `iso` names it in errors.
/// Reads the file-system structures on the way to the WIM, then the WIM's
/// header and XML data: a few KiB whatever the WIM's size.
pub fn images_in_reader<R: Read + Seek>(
    disc: &mut R,
    iso: &Path,
) -> Result<Vec<WimImage>, WindowsIsoError> {
    let volumes = Disc::open(disc, iso)?;
    for name in INSTALL_IMAGES {
        let Some(node) = volumes.lookup(disc, &["sources", name], iso)? else {
            continue;
        };
        if node.is_dir {
            continue;
        }
        return wim::read_images(&mut FileReader::new(disc, &node)).map_err(
            |source| match source {
                WimError::Io(e) if e.kind() != io::ErrorKind::UnexpectedEof => {
                    WindowsIsoError::Unreadable {
                        iso: iso.to_path_buf(),
                        source: e,
                    }
                }
                source => WindowsIsoError::DamagedWim {
                    iso: iso.to_path_buf(),
                    file: format!("sources/{name}"),
                    source,
                },
            },
        );
    }
    Err(WindowsIsoError::NoInstallImage {
        iso: iso.to_path_buf(),
    })
}

/// `index: name (EditionID)` lines, one per image.
fn image_list(images: &[WimImage]) -> String {
    let mut list = String::new();
    for i in images {
        let _ = write!(list, "  {}: {}", i.index, i.name);
        if let Some(e) = &i.edition_id {
            let _ = write!(list, " ({e})");
        }
        list.push('\n');
    }
    list
}

/// The image `edition` (`/IMAGE/NAME`) or `index` (`/IMAGE/INDEX`) selects;
/// with neither, image 1. Names must match exactly, as in the answer file.
pub fn select_image<'a>(
    images: &'a [WimImage],
    edition: Option<&str>,
    index: Option<u32>,
    iso: &Path,
) -> Result<&'a WimImage, WindowsIsoError> {
    if let Some(edition) = edition {
        return images.iter().find(|i| i.name == edition).ok_or_else(|| {
            WindowsIsoError::EditionNotFound {
                iso: iso.to_path_buf(),
                edition: edition.to_string(),
                list: image_list(images),
            }
        });
    }
    let index = index.unwrap_or(1);
    images
        .iter()
        .find(|i| i.index == index)
        .ok_or_else(|| WindowsIsoError::IndexOutOfRange {
            iso: iso.to_path_buf(),
            index,
            list: image_list(images),
        })
}

/// XP and Server 2003 media have no install.wim; their files are in I386
/// (and AMD64 on x64 media).
fn check_winnt_media(iso: &Path, version: &str) -> Result<(), WindowsIsoError> {
    let mut r = open_iso(iso)?;
    let volumes = Disc::open(&mut r, iso)?;
    for dir in ["I386", "AMD64"] {
        if let Some(n) = volumes.lookup(&mut r, &[dir], iso)?
            && n.is_dir
        {
            return Ok(());
        }
    }
    Err(WindowsIsoError::NotWinntMedia {
        iso: iso.to_path_buf(),
        version: version.to_string(),
    })
}

/// For a Windows guest, reads `guest.iso` and returns the image the answer
/// file will ask Setup for (`None` for XP/2003, whose media are only checked
/// to look like theirs). Fails, before anything is written, when the ISO
/// lacks that image.
pub fn check_windows_iso(config: &Config) -> Result<Option<WimImage>> {
    if config.guest.os != GuestOsKind::Windows {
        return Ok(None);
    }
    let Some(iso) = &config.guest.iso else {
        return Ok(None);
    };
    check_install_iso(config, &config.resolve_path(iso))
}

/// Checks that the installation ISO `iso` (Windows', or the linux-standin's
/// installer) holds the image the answer file will ask for; returns it.
pub fn check_install_iso(config: &Config, iso: &Path) -> Result<Option<WimImage>> {
    let iso = iso.to_path_buf();
    let version = config.guest.version;
    if version.uses_winnt_sif() {
        check_winnt_media(&iso, version.config_name())?;
        return Ok(None);
    }
    let images = images_in_iso(&iso)?;
    let selector = image_selector(config);
    let chosen = match &selector {
        ImageSelector::Name(name) => {
            let found = select_image(&images, Some(name), None, &iso);
            if config.guest.edition.is_none() {
                found.with_context(|| {
                    format!(
                        "neither `guest.edition` nor `guest.index` is set, so the answer file \
                         asks for {name:?}, the usual name for `guest.version` = \"{version}\""
                    )
                })?
            } else {
                found?
            }
        }
        ImageSelector::Index(index) => select_image(&images, None, Some(*index), &iso)?,
    };
    tracing::info!(
        "{}: installing image {}: {}{}",
        iso.display(),
        chosen.index,
        chosen.name,
        chosen
            .edition_id
            .as_deref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default()
    );
    Ok(Some(chosen.clone()))
}

/// `cygvm media --list-editions`: the images of the configured ISO.
pub fn list_images(config: &Config) -> Result<String> {
    let iso = config.guest.iso.as_ref().context(
        "key `guest.iso` is not set: name the Windows installation ISO whose images to list",
    )?;
    let iso = config.resolve_path(iso);
    let images = images_in_iso(&iso)?;
    Ok(image_list(&images))
}
