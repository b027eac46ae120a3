//! The answer-file floppy: a standard 1.44 MB FAT12 image, files at the root.
//!
//! Built in memory with `fatfs` and written atomically. The image is
//! byte-identical for the same input: the volume id, the label and every
//! timestamp are constants, so rebuilding the media never changes its hash.

use std::io::{self, Cursor, Write};
use std::path::{Path, PathBuf};

use fatfs::{FileSystem, FormatVolumeOptions, FsOptions, TimeProvider};
use thiserror::Error;

use crate::fsutil;

/// Sectors of a 3.5" high-density floppy (80 tracks × 2 heads × 18 sectors).
pub const FLOPPY_SECTORS: u32 = 2880;
pub const SECTOR_SIZE: usize = 512;
/// Size of the image file: 1,474,560 bytes.
pub const FLOPPY_BYTES: usize = FLOPPY_SECTORS as usize * SECTOR_SIZE;
/// Bytes available to file contents: 2880 sectors minus the boot sector, two
/// 9-sector FATs and the 14-sector root directory, in 512-byte clusters.
pub const FLOPPY_DATA_BYTES: u64 = (2880 - 1 - 2 * 9 - 14) * 512;
/// Entries of the root directory; a long name takes one more entry per 13
/// characters.
pub const ROOT_ENTRIES: u16 = 224;

/// Volume label written into the boot sector and the root directory.
pub const VOLUME_LABEL: &[u8; 11] = b"CYGVM      ";
/// Fixed volume serial number, so the image depends only on its files.
pub const VOLUME_ID: u32 = 0x4359_4756; // "CYGV"

#[derive(Debug, Error)]
pub enum FloppyError {
    #[error(
        "the floppy payload is {payload} bytes ({clusters} clusters of 512 bytes), but a 1.44 MB floppy holds {capacity} bytes; \
         shrink the answer file or drop files"
    )]
    TooBig {
        payload: u64,
        clusters: u64,
        capacity: u64,
    },
    #[error(
        "the floppy's root directory holds {capacity} entries, but these {files} file names need {needed}; use fewer or shorter names"
    )]
    TooManyEntries {
        files: usize,
        needed: usize,
        capacity: usize,
    },
    #[error("invalid floppy file name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("floppy file names {first:?} and {second:?} collide (FAT names are case-insensitive)")]
    DuplicateName { first: String, second: String },
    #[error("building the FAT image in memory failed while {doing}")]
    Build {
        doing: String,
        #[source]
        source: io::Error,
    },
    #[error("writing the floppy image {path} failed")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Writes a 1.44 MB FAT12 floppy holding `files` at its root to `out`
/// (atomically, mode 0644).
pub fn write_floppy(files: &[(&str, &[u8])], out: &Path) -> Result<(), FloppyError> {
    let image = build_floppy(files)?;
    fsutil::write_atomic(out, &image, 0o644).map_err(|source| FloppyError::Write {
        path: out.to_path_buf(),
        source,
    })
}

/// Builds the floppy image in memory; always [`FLOPPY_BYTES`] long.
pub fn build_floppy(files: &[(&str, &[u8])]) -> Result<Vec<u8>, FloppyError> {
    check_files(files)?;

    let mut image = vec![0u8; FLOPPY_BYTES];
    let options = FormatVolumeOptions::new()
        .bytes_per_sector(SECTOR_SIZE as u16)
        .total_sectors(FLOPPY_SECTORS)
        .bytes_per_cluster(512)
        .fats(2)
        .max_root_dir_entries(ROOT_ENTRIES)
        .media(0xF0)
        .sectors_per_track(18)
        .heads(2)
        .drive_num(0)
        .volume_id(VOLUME_ID)
        .volume_label(*VOLUME_LABEL);
    fatfs::format_volume(Cursor::new(&mut image[..]), options).map_err(|source| {
        FloppyError::Build {
            doing: "formatting".into(),
            source,
        }
    })?;

    {
        let fs = FileSystem::new(
            Cursor::new(&mut image[..]),
            FsOptions::new()
                .time_provider(&FIXED_TIME)
                .update_accessed_date(false),
        )
        .map_err(|source| FloppyError::Build {
            doing: "mounting the fresh image".into(),
            source,
        })?;
        for (name, contents) in files {
            let root = fs.root_dir();
            let build_err = |source| FloppyError::Build {
                doing: format!("writing {name}"),
                source,
            };
            let mut file = root.create_file(name).map_err(build_err)?;
            file.truncate().map_err(build_err)?;
            file.write_all(contents).map_err(build_err)?;
            file.flush().map_err(build_err)?;
        }
        fs.unmount().map_err(|source| FloppyError::Build {
            doing: "unmounting".into(),
            source,
        })?;
    }
    Ok(image)
}

/// Validates names and sizes up front, so every failure names its cause
/// instead of surfacing as a bare I/O error from inside `fatfs`.
fn check_files(files: &[(&str, &[u8])]) -> Result<(), FloppyError> {
    let mut seen: Vec<(String, &str)> = Vec::with_capacity(files.len());
    let mut entries = 1; // the volume label
    for (name, _) in files {
        check_name(name)?;
        let folded = name.to_ascii_uppercase();
        if let Some((_, first)) = seen.iter().find(|(f, _)| *f == folded) {
            return Err(FloppyError::DuplicateName {
                first: first.to_string(),
                second: name.to_string(),
            });
        }
        seen.push((folded, name));
        entries += dir_entries_for(name);
    }
    if entries > ROOT_ENTRIES as usize {
        return Err(FloppyError::TooManyEntries {
            files: files.len(),
            needed: entries,
            capacity: ROOT_ENTRIES as usize,
        });
    }

    let payload: u64 = files.iter().map(|(_, c)| c.len() as u64).sum();
    let clusters: u64 = files
        .iter()
        .map(|(_, c)| (c.len() as u64).div_ceil(512))
        .sum();
    if clusters * 512 > FLOPPY_DATA_BYTES {
        return Err(FloppyError::TooBig {
            payload,
            clusters,
            capacity: FLOPPY_DATA_BYTES,
        });
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), FloppyError> {
    let invalid = |reason| FloppyError::InvalidName {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("the name is empty"));
    }
    if name.len() > 255 {
        return Err(invalid("longer than 255 characters"));
    }
    if name.contains(['/', '\\']) {
        return Err(invalid(
            "files go at the root; subdirectories are not supported",
        ));
    }
    if name == "." || name == ".." {
        return Err(invalid("reserved name"));
    }
    if name.starts_with(' ') || name.ends_with(' ') || name.ends_with('.') {
        return Err(invalid(
            "leading or trailing spaces and trailing dots are not allowed",
        ));
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || "$%'-_@~`!(){}. +,;=[]^#&".contains(c);
    if !name.chars().all(ok) {
        return Err(invalid(
            "only ASCII letters, digits, spaces and $%'-_@~`!(){}.+,;=[]^#& are allowed",
        ));
    }
    Ok(())
}

/// Directory entries a name takes: the short entry plus, unless the name is
/// already a plain upper-case 8.3 name, one long-name entry per 13 characters.
fn dir_entries_for(name: &str) -> usize {
    let (base, ext) = match name.rsplit_once('.') {
        Some((b, e)) => (b, e),
        None => (name, ""),
    };
    let plain = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || "$%'-_@~`!(){}^#&".contains(c))
    };
    let short = !base.is_empty() && base.len() <= 8 && ext.len() <= 3 && plain(base) && plain(ext);
    if short {
        1
    } else {
        1 + name.chars().count().div_ceil(13)
    }
}

/// Every timestamp on the floppy: 2000-01-01 00:00:00.
#[derive(Debug)]
struct FixedTime;

static FIXED_TIME: FixedTime = FixedTime;

impl TimeProvider for FixedTime {
    fn get_current_date(&self) -> fatfs::Date {
        fatfs::Date {
            year: 2000,
            month: 1,
            day: 1,
        }
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        fatfs::DateTime {
            date: self.get_current_date(),
            time: fatfs::Time {
                hour: 0,
                min: 0,
                sec: 0,
                millis: 0,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_has_floppy_geometry() {
        let img = build_floppy(&[("a.txt", b"hi")]).unwrap();
        assert_eq!(img.len(), FLOPPY_BYTES);
        assert_eq!(u16::from_le_bytes([img[11], img[12]]), 512);
        assert_eq!(img[13], 1, "sectors per cluster");
        assert_eq!(u16::from_le_bytes([img[17], img[18]]), 224);
        assert_eq!(u16::from_le_bytes([img[19], img[20]]), 2880);
        assert_eq!(img[21], 0xF0, "media");
        assert_eq!(u16::from_le_bytes([img[22], img[23]]), 9, "sectors per FAT");
        assert_eq!(u16::from_le_bytes([img[24], img[25]]), 18);
        assert_eq!(u16::from_le_bytes([img[26], img[27]]), 2);
        assert_eq!(&img[54..62], b"FAT12   ");
        assert_eq!(&img[510..512], &[0x55, 0xAA]);
    }

    #[test]
    fn entry_counts() {
        assert_eq!(dir_entries_for("WINNT.SIF"), 1);
        assert_eq!(dir_entries_for("winnt.sif"), 2);
        assert_eq!(dir_entries_for("autounattend.xml"), 3);
    }
}
