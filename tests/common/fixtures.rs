//! The real Cygwin indexes in `shared/fixtures/cygwin`, for the tests that
//! read them.

use std::path::PathBuf;

/// Looks for `shared/fixtures/cygwin` beside the clone (CI) or beside the
/// directory holding the clone (worktrees). Set CYGVM_REQUIRE_FIXTURES=1 to
/// make a missing fixture fail instead of skip.
pub fn fixture(name: &str) -> Option<PathBuf> {
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
