//! `cygvm cygport`: a cygport build as a maintainer runs it on Windows.
//! The .cygport's directory (with its patches and source archives) is the
//! inputs; its build dependencies (read without running it, see
//! [`crate::cygport`]) and cygport itself are added as a derived
//! generation; `cygport FILE STEPS…` runs in a build directory in the
//! guest; dist/ (packages and .hint files) and log/ come back in the
//! output directory; cygvm exits with cygport's status.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use crate::derived::request::{PackageRequest, read_project_file};
use crate::guest::quote;
use crate::phases::run::RunOptions;

#[derive(Debug, Clone)]
pub struct CygportOptions {
    pub image: PathBuf,
    pub cygport: PathBuf,
    pub output: PathBuf,
    /// Packages to add beyond those the .cygport names (and instead of
    /// them, when it computes them).
    pub packages: Vec<String>,
    /// cygport's steps; `all` when empty.
    pub steps: Vec<String>,
    pub keep_failed: bool,
}

/// The package that provides cygport.
pub const CYGPORT_PACKAGE: &str = "cygport";

pub fn run(opts: &CygportOptions) -> Result<ExitCode> {
    let file = &opts.cygport;
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| n.ends_with(".cygport"))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{} is not a .cygport file (its name must end in .cygport)",
                file.display()
            )
        })?;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut request = PackageRequest::default();
    match crate::cygport::build_dependencies(&text, file) {
        Ok(deps) => {
            eprintln!(
                "cygvm: build dependencies of {name}: {}",
                if deps.is_empty() {
                    "none".to_string()
                } else {
                    deps.join(" ")
                }
            );
            request.add(&file.display().to_string(), &deps);
        }
        Err(e) if !opts.packages.is_empty() => {
            eprintln!("cygvm: {e}; using the packages given with --packages");
        }
        Err(e) => return Err(e.into()),
    }
    if !opts.packages.is_empty() {
        request.add("--packages", &opts.packages);
    }
    if let Some((path, names)) = read_project_file(&dir)? {
        request.add(&path.display().to_string(), &names);
    }
    request.add("cygvm cygport", &[CYGPORT_PACKAGE]);

    let steps = if opts.steps.is_empty() {
        vec!["all".to_string()]
    } else {
        opts.steps.clone()
    };
    for step in &steps {
        if step.starts_with('-') || step.contains(char::is_whitespace) {
            bail!("{step:?} is not a cygport step (prep, compile, install, package, all, …)");
        }
    }
    let run = RunOptions {
        image: opts.image.clone(),
        input: Some(dir),
        output: Some(opts.output.clone()),
        keep_failed: opts.keep_failed,
        cold: false,
        command: vec!["sh".into(), "-c".into(), guest_script(name, &steps)],
    };
    crate::phases::derive::run(&run, &request)
}

/// What runs in the guest: the inputs copied into a build directory (the
/// share is read-only, and cygport writes beside the .cygport), cygport,
/// then its dist/ and log/ copied to the outputs whatever its status.
fn guest_script(cygport_file: &str, steps: &[String]) -> String {
    let steps: Vec<String> = steps.iter().map(|s| quote(s)).collect();
    format!(
        r#"build=/tmp/cygvm-cygport.$$
rm -rf "$build" && mkdir -p "$build" && cp -R /inputs/. "$build/" || {{ echo "cygvm: cannot copy the inputs into $build" >&2; exit 125; }}
cd "$build" && cygport {file} {steps}
status=$?
for work in "$build"/*/; do
    [ -d "${{work}}log" ] || continue
    if [ -d "${{work}}dist" ] && [ -n "$(ls -A "${{work}}dist")" ]; then cp -R "${{work}}dist" /outputs/; fi
    cp -R "${{work}}log" /outputs/
done
rm -rf "$build"
exit $status
"#,
        file = quote(cygport_file),
        steps = steps.join(" "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the guest script on the host with a stand-in of cygport that
    /// lays out a working directory, the way the guest would.
    #[test]
    fn the_guest_script_returns_cygports_status_with_dist_and_logs() {
        let tmp = tempfile::tempdir().unwrap();
        let inputs = tmp.path().join("inputs");
        let outputs = tmp.path().join("outputs");
        let bin = tmp.path().join("bin");
        for d in [&inputs, &outputs, &bin] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(inputs.join("foo-1-1.cygport"), "NAME=foo\n").unwrap();
        let cygport = bin.join("cygport");
        std::fs::write(
            &cygport,
            "#!/bin/sh\n[ -f \"$1\" ] || exit 9\nmkdir -p foo-1-1.x86_64/dist/foo foo-1-1.x86_64/log\n\
             echo pkg > foo-1-1.x86_64/dist/foo/foo-1-1.tar.xz\necho \"$2\" > foo-1-1.x86_64/log/foo-1-1-compile.log\nexit 3\n",
        )
        .unwrap();
        std::fs::set_permissions(
            &cygport,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let script = guest_script("foo-1-1.cygport", &["compile".into()])
            .replace("/inputs", inputs.to_str().unwrap())
            .replace("/outputs", outputs.to_str().unwrap());
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
        let status = std::process::Command::new("sh")
            .args(["-c", &script])
            .env("PATH", path)
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(3));
        assert_eq!(
            std::fs::read_to_string(outputs.join("dist/foo/foo-1-1.tar.xz")).unwrap(),
            "pkg\n"
        );
        assert_eq!(
            std::fs::read_to_string(outputs.join("log/foo-1-1-compile.log")).unwrap(),
            "compile\n"
        );
    }
}
