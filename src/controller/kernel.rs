//! The uncompressed kernel for direct (PVH) boot.
//!
//! Under TCG, decompressing Debian's xz bzImage is the largest single cost of
//! booting the controller: QEMU loading the plain `vmlinux` ELF through its
//! PVH entry point skips it (measured 8.7 s → 5.3 s to "ready", docs/controller.md).
//! The ELF is extracted once per kernel and cached like the initrds.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::fsutil::write_atomic;
use crate::vm::host_tools::ControllerKernel;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("cannot read the kernel {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no xz, gzip or zstd payload found; is it a bzImage?")]
    NoPayload { path: PathBuf },
    #[error("{path}: the payload is not an ELF vmlinux")]
    NotElf { path: PathBuf },
    #[error("kernel {release} is built without CONFIG_PVH (per {config}); boot the bzImage")]
    NoPvh { release: String, config: PathBuf },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `<cache_dir>/vmlinux-<release>-<hash of the bzImage>`, extracted on first use.
pub fn pvh_kernel(kernel: &ControllerKernel, cache_dir: &Path) -> Result<PathBuf, KernelError> {
    if let Some(config) = kernel
        .image
        .parent()
        .map(|boot| boot.join(format!("config-{}", kernel.release)))
        .filter(|c| c.is_file())
    {
        let text = std::fs::read_to_string(&config).unwrap_or_default();
        if !text.lines().any(|l| l.trim() == "CONFIG_PVH=y") {
            return Err(KernelError::NoPvh {
                release: kernel.release.clone(),
                config,
            });
        }
    }
    let bzimage = std::fs::read(&kernel.image).map_err(|e| KernelError::Read {
        path: kernel.image.clone(),
        source: e,
    })?;
    let hash = {
        use sha2::{Digest, Sha256};
        hex::encode(&Sha256::digest(&bzimage)[..8])
    };
    let path = cache_dir.join(format!("vmlinux-{}-{hash}", kernel.release));
    if path.is_file() {
        return Ok(path);
    }
    let vmlinux = extract_vmlinux(&bzimage).ok_or_else(|| KernelError::NoPayload {
        path: kernel.image.clone(),
    })?;
    if !vmlinux.starts_with(b"\x7fELF") {
        return Err(KernelError::NotElf {
            path: kernel.image.clone(),
        });
    }
    let write_err = |e| KernelError::Write {
        path: path.clone(),
        source: e,
    };
    std::fs::create_dir_all(cache_dir).map_err(write_err)?;
    write_atomic(&path, &vmlinux, 0o644).map_err(write_err)?;
    Ok(path)
}

/// The ELF inside a bzImage: the first compressed payload that decodes to one.
pub fn extract_vmlinux(bzimage: &[u8]) -> Option<Vec<u8>> {
    const XZ: &[u8] = b"\xfd7zXZ\x00";
    const GZIP: &[u8] = b"\x1f\x8b\x08";
    const ZSTD: &[u8] = b"\x28\xb5\x2f\xfd";
    for (magic, decode) in [
        (XZ, decode_xz as fn(&[u8]) -> Option<Vec<u8>>),
        (GZIP, decode_gzip),
        (ZSTD, decode_zstd),
    ] {
        let mut from = 0;
        while let Some(pos) = find(&bzimage[from..], magic) {
            let start = from + pos;
            if let Some(out) = decode(&bzimage[start..]).filter(|o| o.starts_with(b"\x7fELF")) {
                return Some(out);
            }
            from = start + 1;
        }
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// Each decoder stops at the end of its stream; the bzImage has more after it.
fn decode_xz(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    liblzma::read::XzDecoder::new(data)
        .read_to_end(&mut out)
        .ok()?;
    Some(out)
}

fn decode_gzip(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .ok()?;
    Some(out)
}

fn decode_zstd(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut decoder = zstd::stream::read::Decoder::new(data).ok()?.single_frame();
    decoder.read_to_end(&mut out).ok()?;
    Some(out)
}
