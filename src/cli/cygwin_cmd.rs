//! `cygvm cygwin resolve` and `cygvm cygwin mirror`.

use std::process::ExitCode;

use anyhow::{Result, bail};

use super::{MirrorArgs, ResolveArgs};

pub fn resolve(_args: &ResolveArgs) -> Result<ExitCode> {
    bail!("cygwin resolve is not built yet")
}

pub fn mirror(_args: &MirrorArgs) -> Result<ExitCode> {
    bail!("cygwin mirror is not built yet")
}
