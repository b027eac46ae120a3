//! The parser and closure on real Cygwin indexes (shared fixtures).

use std::path::PathBuf;

use cygvm::cygwin::{HashAlgo, SetupIni, resolve};

/// Looks for `shared/fixtures/cygwin` beside the clone (CI) or beside the
/// directory holding the clone (worktrees). Set CYGVM_REQUIRE_FIXTURES=1 to
/// make a missing fixture fail instead of skip.
fn fixture(name: &str) -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        root.join("../shared/fixtures/cygwin").join(name),
        root.join("../../shared/fixtures/cygwin").join(name),
    ];
    if let Some(found) = candidates.iter().find(|p| p.exists()) {
        return Some(found.clone());
    }
    let message = format!(
        "fixture {name} is absent (looked in {}); clone `shared/` beside the repository",
        candidates[0].display()
    );
    assert!(
        std::env::var_os("CYGVM_REQUIRE_FIXTURES").is_none(),
        "{message}"
    );
    eprintln!("skipping: {message}");
    None
}

#[test]
fn full_2016_index_parses_and_resolves_openssh() {
    let Some(path) = fixture("setup-x86_64-20160908.xz") else {
        return;
    };
    let ini = SetupIni::read(&path).unwrap();
    assert_eq!(ini.packages.len(), 8688);
    assert_eq!(ini.arch(), Some("x86_64"));
    assert_eq!(ini.release(), Some("cygwin"));
    assert_eq!(ini.setup_timestamp(), Some(1473313356));
    assert_eq!(ini.setup_version(), Some("2.874"));

    let a2ps = ini.package("a2ps").unwrap();
    assert_eq!(a2ps.version.as_deref(), Some("4.14-3"));
    let inst = a2ps.install.as_ref().unwrap();
    assert_eq!(inst.path, "x86_64/release/a2ps/a2ps-4.14-3.tar.xz");
    assert_eq!(inst.size, 950292);
    assert_eq!(inst.algo, HashAlgo::Sha512);
    assert!(a2ps.depends.iter().any(|d| d.name == "ghostscript"));

    let closure = resolve(&ini, &["openssh"]).unwrap();
    let names: Vec<&str> = closure.names(&ini).collect();
    for expected in [
        "openssh",
        "cygwin",
        "bash",
        "coreutils",
        "base-cygwin",
        "libopenssl100",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted);
    // Every Base package is in, and nothing needs a _windows version in 2016.
    for p in ini.packages.iter().filter(|p| p.in_category("Base")) {
        assert!(closure.contains(&ini, &p.name), "{}", p.name);
    }
    assert_eq!(closure.windows, None);
    eprintln!("2016 closure of openssh: {} packages", closure.len());
}

#[test]
fn excerpt_2025_closure_is_exactly_the_excerpt() {
    let Some(path) = fixture("setup-x86_64-20250802-excerpt.ini") else {
        return;
    };
    let ini = SetupIni::read(&path).unwrap();
    assert_eq!(ini.packages.len(), 108);
    assert_eq!(ini.setup_version(), Some("2.934"));

    let closure = resolve(&ini, &["openssh", "gcc-core", "make"]).unwrap();
    let names: Vec<&str> = closure.names(&ini).collect();
    // The fixture README's claim: the excerpt is exactly this closure.
    let mut all: Vec<&str> = ini.packages.iter().map(|p| p.name.as_str()).collect();
    all.sort_unstable();
    assert_eq!(names, all);
    assert!(names.contains(&"_autorebase") && names.contains(&"libssl3"));
    let w = closure
        .windows
        .as_ref()
        .expect("2025 packages need _windows");
    assert_eq!(w.version, "6.3");
}
