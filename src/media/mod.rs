//! Install media: the answer file on a floppy, and the Cygwin ISO.

pub mod bootstrap;
pub mod build;
pub mod floppy;
pub mod iso;
pub mod password;
pub mod product_key;
pub mod unattend;
pub mod wim;
pub mod windows_iso;
pub mod winnt_sif;

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use crate::config::Config;

/// `cygvm media`: writes the media to `out` (default: the image's media/).
pub fn run(
    config: &Config,
    out: Option<&Path>,
    json: bool,
    image: Option<&wim::WimImage>,
) -> Result<ExitCode> {
    let out = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| config.image_dir().join("media"));
    let manifest = build::build(config, &out, image)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&manifest)?);
    } else {
        for f in &manifest.files {
            println!("{:<18} {:>12} bytes  sha256 {}", f.name, f.size, f.sha256);
        }
        println!(
            "{} Cygwin packages ({} bytes of archives); media id {}; written to {}",
            manifest.cygwin.packages.len(),
            manifest.cygwin.archive_bytes,
            manifest.media_id,
            out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
