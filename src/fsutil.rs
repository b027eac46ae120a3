//! Files a user keeps are never half-written: temp name in the same
//! directory, fsync, rename, fsync of the directory.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

/// A file being written under a temporary name next to its final path.
/// Dropping it without [`AtomicFile::commit`] removes the temporary file.
pub struct AtomicFile {
    temp: NamedTempFile,
    dest: PathBuf,
}

impl AtomicFile {
    pub fn create(dest: &Path) -> io::Result<Self> {
        let dir = parent_dir(dest);
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .tempfile_in(dir)?;
        Ok(Self {
            temp,
            dest: dest.to_path_buf(),
        })
    }

    /// The temporary file's path, for a program that writes it.
    pub fn path(&self) -> &Path {
        self.temp.path()
    }

    pub fn file(&mut self) -> &mut File {
        self.temp.as_file_mut()
    }

    /// Sets the permission bits the final file will have.
    pub fn set_mode(&self, mode: u32) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(self.temp.path(), fs::Permissions::from_mode(mode))
    }

    /// Flushes, fsyncs and renames into place, then fsyncs the directory.
    pub fn commit(mut self) -> io::Result<()> {
        self.temp.as_file_mut().flush()?;
        self.temp.as_file().sync_all()?;
        self.temp.persist(&self.dest).map_err(|e| e.error)?;
        sync_dir(parent_dir(&self.dest))
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.temp.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.temp.flush()
    }
}

/// Writes `bytes` to `dest` atomically with the given mode.
pub fn write_atomic(dest: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut file = AtomicFile::create(dest)?;
    file.set_mode(mode)?;
    file.write_all(bytes)?;
    file.commit()
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// Sets `path`'s mtime to now, creating it empty first when `create`: how
/// cygvm records a last use for the prunes that read it.
pub fn mark_used(path: &Path, create: bool) -> io::Result<()> {
    File::options()
        .create(create)
        .append(true)
        .open(path)?
        .set_modified(std::time::SystemTime::now())
}

/// Bytes the files under `dir` take on disk (allocated blocks: the
/// overlay and RAM files are sparse).
pub fn allocated_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(md) = entry.metadata() else { continue };
        if md.is_dir() {
            total += allocated_bytes(&entry.path());
        } else {
            total += md.blocks() * 512;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_atomic_file_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bin");
        {
            let mut f = AtomicFile::create(&dest).unwrap();
            f.write_all(b"partial").unwrap();
        }
        assert!(!dest.exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn committed_file_has_contents_and_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("secret");
        write_atomic(&dest, b"hello", 0o600).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"hello");
        let mode = fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
