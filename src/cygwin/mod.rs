//! Cygwin package indexes (setup.ini), dependency closures and local mirrors.
//!
//! - [`setup_ini`] parses an index as mirrors publish it.
//! - [`closure`] computes what an install needs: the requested packages
//!   (`name`, or `name=test` for a test version) plus the Base category,
//!   closed under dependencies.
//! - [`mirror`] fetches and verifies those archives into a content-addressed
//!   cache and lays out a directory `setup.exe -L -l DIR` installs from.

pub mod closure;
pub mod mirror;
pub mod setup_ini;

pub use closure::{Closure, ClosureError, PackageRequest, WindowsRequirement, resolve};
pub use mirror::{
    LocalMirror, MirrorError, MirrorFile, MirrorSource, SetupExe, build_local_mirror,
    default_cache_dir, fetch_setup_exe, locate_setup_exe, mirror_arch, reduced_setup_ini,
    setup_exe_name,
};
pub use setup_ini::{Archive, Dependency, HashAlgo, Package, ParseError, SetupIni, Version};
