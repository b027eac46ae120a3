//! `cygvm doctor`: honest checks of the host.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, bail};

pub fn run(_config: Option<&Path>) -> Result<ExitCode> {
    bail!("doctor is not built yet")
}
