//! `cygvm cygwin resolve` and `cygvm cygwin mirror`.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};

use super::{MirrorArgs, ResolveArgs};
use crate::cygwin::{self, MirrorSource, SetupIni};

fn load(args_ini: &std::path::Path, packages: &[String]) -> Result<(SetupIni, cygwin::Closure)> {
    let index = SetupIni::read(args_ini)?;
    let closure = cygwin::resolve(&index, packages)?;
    if let Some(w) = &closure.windows {
        tracing::info!(
            "these packages need Windows NT {} or newer (asked for by {}); older Windows needs an older index",
            w.version,
            w.required_by
        );
    }
    Ok((index, closure))
}

pub fn resolve(args: &ResolveArgs) -> Result<ExitCode> {
    let (index, closure) = load(&args.setup_ini, &args.packages)?;
    match print_closure(&index, &closure, args.json) {
        // `cygvm cygwin resolve … | head` is not a failure.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        other => other
            .map(|()| ExitCode::SUCCESS)
            .context("cannot write to stdout"),
    }
}

fn print_closure(index: &SetupIni, closure: &cygwin::Closure, json: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        let items: Vec<serde_json::Value> = closure
            .packages
            .iter()
            .map(|&i| {
                let p = &index.packages[i];
                let a = closure.install(index, i);
                serde_json::json!({
                    "name": p.name,
                    "version": closure.version(index, i),
                    "test": closure.uses_test(i),
                    "size": a.map(|a| a.size),
                    "path": a.map(|a| &a.path),
                    "hash": a.map(|a| &a.hash),
                    "hash_algorithm": a.map(|a| a.algo.name()),
                })
            })
            .collect();
        serde_json::to_writer_pretty(&mut out, &items)?;
        writeln!(out)?;
    } else {
        for name in closure.names(index) {
            writeln!(out, "{name}")?;
        }
    }
    out.flush()
}

pub fn mirror(args: &MirrorArgs) -> Result<ExitCode> {
    let (index, closure) = load(&args.setup_ini, &args.packages)?;
    let source = MirrorSource::parse(&args.from);
    let cache = match &args.cache {
        Some(dir) => dir.clone(),
        None => cygwin::default_cache_dir()?,
    };
    let mirror = cygwin::build_local_mirror(&index, &closure, &source, &cache, &args.to)
        .with_context(|| {
            format!(
                "cannot build the local mirror in {} from {source}",
                args.to.display()
            )
        })?;
    println!(
        "{} packages, {} files ({} bytes) in {}; {} archives fetched ({} bytes), the rest from {}",
        closure.len(),
        mirror.files.len(),
        mirror.total_bytes(),
        args.to.display(),
        mirror.fetched,
        mirror.fetched_bytes,
        cache.display()
    );
    Ok(ExitCode::SUCCESS)
}
