//! Install media: the answer file on a floppy, and the Cygwin ISO.

pub mod floppy;
pub mod iso;

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::config::Config;

pub fn run(_config: &Config, _out: Option<&Path>, _json: bool) -> Result<ExitCode> {
    bail!("media is not built yet")
}
