//! The set of packages an install needs: what was asked for, plus every
//! package in category Base, closed under each chosen version's
//! dependencies (`depends2:`, or `requires:` in older indexes).
//!
//! Each package is installed at its current version, except one asked for
//! as `name=test`, which is installed at its `[test]` version. A package
//! with only a test version is never chosen silently: asking for it by
//! plain name, or reaching it as a dependency, is an error that says how to
//! ask for it. A stanza with no version at all (an obsolete stub) is an
//! error only when the closure needs it.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use super::setup_ini::{Archive, Dependency, Package, SetupIni, compare_versions};

/// The suffix that asks for a package's `[test]` version.
pub const TEST_SUFFIX: &str = "=test";

/// One entry of a package list (`cygwin.packages`, the `resolve`/`mirror`
/// command line): `name`, or `name=test` for its `[test]` version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageRequest {
    pub name: String,
    pub test: bool,
}

impl FromStr for PackageRequest {
    type Err = ClosureError;
    fn from_str(spec: &str) -> Result<Self, ClosureError> {
        let (name, test) = match spec.split_once('=') {
            None => (spec, false),
            Some((name, "test")) => (name, true),
            Some(_) => {
                return Err(ClosureError::BadRequest {
                    spec: spec.to_string(),
                });
            }
        };
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(ClosureError::BadRequest {
                spec: spec.to_string(),
            });
        }
        Ok(Self {
            name: name.to_string(),
            test,
        })
    }
}

impl fmt::Display for PackageRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if self.test {
            f.write_str(TEST_SUFFIX)?;
        }
        Ok(())
    }
}

/// Cygwin's pseudo-package for the Windows (NT) version a package needs.
const WINDOWS_PSEUDO: &str = "_windows";

#[derive(Debug, Error)]
pub enum ClosureError {
    #[error("package {name:?} is not in {index}{}", suggestion_text(suggestions))]
    UnknownPackage {
        name: String,
        index: String,
        suggestions: Vec<String>,
    },
    #[error(
        "{spec:?} is not a package request: write a package name, or `name=test` for the test version of a package"
    )]
    BadRequest { spec: String },
    #[error(
        "package {name:?} has only a test version ({version}) in {index}; ask for it as `{name}=test` to install that version"
    )]
    TestOnlyRequested {
        name: String,
        version: String,
        index: String,
    },
    #[error(
        "`{name}=test`: package {name:?} has no [test] version in {index}{}",
        current.as_ref().map(|v| format!("; ask for `{name}` to install its current version {v}")).unwrap_or_default()
    )]
    NoTestVersion {
        name: String,
        current: Option<String>,
        index: String,
    },
    #[error("package {name:?} has no version to install ({index}:{line}: {why})")]
    NotInstallableRequested {
        name: String,
        line: usize,
        /// What the stanza has instead, and what it points to.
        why: String,
        index: String,
    },
    #[error(
        "{} depends on {missing:?}, which has only a test version ({version}) in {index} (dependency chain: {}); to install that test version ask for `{missing}=test` as well, or leave out {}",
        chain_owner(chain),
        chain_text(chain, missing),
        chain.first().map(String::as_str).unwrap_or("the requesting package"),
    )]
    DependencyOnlyTest {
        missing: String,
        version: String,
        chain: Vec<String>,
        index: String,
    },
    #[error(
        "{} depends on {missing:?}, which has no version to install ({index}:{line}: {why}) (dependency chain: {}); use an index where it has one or leave out {}",
        chain_owner(chain),
        chain_text(chain, missing),
        chain.first().map(String::as_str).unwrap_or("the requesting package"),
    )]
    DependencyNotInstallable {
        missing: String,
        line: usize,
        why: String,
        chain: Vec<String>,
        index: String,
    },
    #[error(
        "{} depends on {missing:?}, which no package in {index} is or provides (dependency chain: {}); use an index where it exists or leave out {}",
        chain_owner(chain),
        chain_text(chain, missing),
        chain.first().map(String::as_str).unwrap_or("the requesting package"),
    )]
    MissingDependency {
        missing: String,
        /// From the requested (or Base) package down to the one whose
        /// dependency is missing.
        chain: Vec<String>,
        index: String,
    },
}

/// Why a stanza has no version to install, and what it names instead.
fn stub_text(pkg: &Package) -> String {
    let name = &pkg.name;
    let others = &pkg.other_versions;
    let points_to = points_to(pkg);
    let mut text = if others.is_empty() {
        "an obsolete stub, no `version:` in any section".to_string()
    } else {
        format!(
            "neither a current nor a test version, only older ones: {}",
            others.join(", ")
        )
    };
    if !points_to.is_empty() {
        text.push_str(&format!(
            "; it names {} instead: ask for that rather than {name}",
            points_to.join(", ")
        ));
    }
    text
}

fn suggestion_text(suggestions: &[String]) -> String {
    if suggestions.is_empty() {
        "; check the spelling (`cygvm cygwin resolve` takes exact package names)".into()
    } else {
        format!("; did you mean {}?", suggestions.join(", "))
    }
}

fn chain_owner(chain: &[String]) -> &str {
    chain.last().map(String::as_str).unwrap_or("?")
}

fn chain_text(chain: &[String], missing: &str) -> String {
    let mut parts: Vec<&str> = chain.iter().map(String::as_str).collect();
    parts.push(missing);
    parts.join(" -> ")
}

/// The newest Windows version any package in a closure asks for through the
/// `_windows` pseudo-dependency.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WindowsRequirement {
    /// NT version as the index writes it, e.g. `6.3`.
    pub version: String,
    /// The first package (in name order) that asks for it.
    pub required_by: String,
}

/// A resolved closure: package indexes into the [`SetupIni`] it came from,
/// sorted by name.
#[derive(Debug, Clone)]
pub struct Closure {
    pub packages: Vec<usize>,
    /// The packages (sorted indexes) installed at their `[test]` version.
    pub test: Vec<usize>,
    pub windows: Option<WindowsRequirement>,
}

impl Closure {
    /// Whether package `i` is installed at its `[test]` version.
    pub fn uses_test(&self, i: usize) -> bool {
        self.test.binary_search(&i).is_ok()
    }

    /// The version of package `i` this closure installs.
    pub fn version<'a>(&self, index: &'a SetupIni, i: usize) -> Option<&'a str> {
        let p = &index.packages[i];
        match &p.test {
            Some(t) if self.uses_test(i) => Some(&t.version),
            _ => p.version.as_deref(),
        }
    }

    /// The archive of package `i` this closure installs; `None` for a
    /// current version without `install:` (virtual or obsolete packages).
    pub fn install<'a>(&self, index: &'a SetupIni, i: usize) -> Option<&'a Archive> {
        let p = &index.packages[i];
        match &p.test {
            Some(t) if self.uses_test(i) => Some(&t.install),
            _ => p.install.as_ref(),
        }
    }

    /// The dependency list of the version of package `i` this closure installs.
    pub fn depends<'a>(&self, index: &'a SetupIni, i: usize) -> &'a [Dependency] {
        let p = &index.packages[i];
        match &p.test {
            Some(t) if self.uses_test(i) => &t.depends,
            _ => &p.depends,
        }
    }

    /// Names in sorted order.
    pub fn names<'a>(&'a self, index: &'a SetupIni) -> impl Iterator<Item = &'a str> + 'a {
        self.packages
            .iter()
            .map(move |&i| index.packages[i].name.as_str())
    }

    pub fn len(&self) -> usize {
        self.packages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.packages.is_empty()
    }

    pub fn contains(&self, index: &SetupIni, name: &str) -> bool {
        self.packages
            .binary_search_by(|&p| index.packages[p].name.as_str().cmp(name))
            .is_ok()
    }
}

/// Resolves `requested` (names, or `name=test`; see [`PackageRequest`])
/// plus the Base category against `index`.
pub fn resolve<S: AsRef<str>>(index: &SetupIni, requested: &[S]) -> Result<Closure, ClosureError> {
    let requests = requested
        .iter()
        .map(|s| s.as_ref().parse::<PackageRequest>())
        .collect::<Result<Vec<_>, _>>()?;
    let mut resolver = Resolver {
        index,
        parent: HashMap::new(),
        test: BTreeSet::new(),
        queue: VecDeque::new(),
        warned: BTreeSet::new(),
    };

    // Test versions first, so a dependency on such a package finds it.
    for request in requests.iter().filter(|r| r.test) {
        let Some(i) = index.index_of(&request.name) else {
            return Err(unknown(index, &request.name));
        };
        let p = &index.packages[i];
        if p.test.is_none() {
            return Err(ClosureError::NoTestVersion {
                name: request.name.clone(),
                current: p.version.clone(),
                index: index.source_name.clone(),
            });
        }
        resolver.test.insert(i);
        resolver.visit(i, None);
    }
    for request in requests.iter().filter(|r| !r.test) {
        let i = match resolver.lookup(&request.name) {
            Ok(i) => i,
            Err(Unresolved::Missing) => return Err(unknown(index, &request.name)),
            Err(Unresolved::OnlyTest(p)) => {
                let pkg = &index.packages[p];
                return Err(ClosureError::TestOnlyRequested {
                    name: pkg.name.clone(),
                    version: test_version(pkg),
                    index: index.source_name.clone(),
                });
            }
            Err(Unresolved::NoVersion(p)) => {
                let pkg = &index.packages[p];
                return Err(ClosureError::NotInstallableRequested {
                    name: pkg.name.clone(),
                    line: pkg.line,
                    why: stub_text(pkg),
                    index: index.source_name.clone(),
                });
            }
        };
        resolver.visit(i, None);
    }
    for (i, pkg) in index.packages.iter().enumerate() {
        if pkg.in_category("Base") && pkg.has_current() {
            resolver.visit(i, None);
        }
    }

    let mut windows: Option<WindowsRequirement> = None;
    while let Some(i) = resolver.queue.pop_front() {
        let pkg = &index.packages[i];
        let depends = match &pkg.test {
            Some(t) if resolver.test.contains(&i) => &t.depends,
            _ => &pkg.depends,
        };
        for dep in depends {
            if dep.name == WINDOWS_PSEUDO {
                if let Some(c) = &dep.constraint {
                    let newer = match &windows {
                        None => true,
                        Some(w) => match compare_versions(&c.version, &w.version) {
                            std::cmp::Ordering::Greater => true,
                            std::cmp::Ordering::Equal => pkg.name < w.required_by,
                            std::cmp::Ordering::Less => false,
                        },
                    };
                    if newer {
                        windows = Some(WindowsRequirement {
                            version: c.version.clone(),
                            required_by: pkg.name.clone(),
                        });
                    }
                }
                continue;
            }
            match resolver.lookup(&dep.name) {
                Ok(d) => resolver.visit(d, Some(i)),
                Err(Unresolved::Missing) => {
                    return Err(ClosureError::MissingDependency {
                        missing: dep.name.clone(),
                        chain: resolver.chain(i),
                        index: index.source_name.clone(),
                    });
                }
                Err(Unresolved::OnlyTest(p)) => {
                    return Err(ClosureError::DependencyOnlyTest {
                        missing: index.packages[p].name.clone(),
                        version: test_version(&index.packages[p]),
                        chain: resolver.chain(i),
                        index: index.source_name.clone(),
                    });
                }
                Err(Unresolved::NoVersion(p)) => {
                    let stub = &index.packages[p];
                    return Err(ClosureError::DependencyNotInstallable {
                        missing: stub.name.clone(),
                        line: stub.line,
                        why: stub_text(stub),
                        chain: resolver.chain(i),
                        index: index.source_name.clone(),
                    });
                }
            }
        }
    }

    let mut packages: Vec<usize> = resolver.parent.into_keys().collect();
    packages.sort_by(|&a, &b| index.packages[a].name.cmp(&index.packages[b].name));
    Ok(Closure {
        packages,
        test: resolver.test.into_iter().collect(),
        windows,
    })
}

fn unknown(index: &SetupIni, name: &str) -> ClosureError {
    ClosureError::UnknownPackage {
        name: name.to_string(),
        index: index.source_name.clone(),
        suggestions: suggestions(index, name),
    }
}

fn test_version(pkg: &Package) -> String {
    pkg.test
        .as_ref()
        .map(|t| t.version.clone())
        .unwrap_or_default()
}

/// What an obsolete stub's `requires:`/`depends2:` names (its replacement).
fn points_to(pkg: &Package) -> Vec<String> {
    pkg.depends
        .iter()
        .filter(|d| d.name != WINDOWS_PSEUDO)
        .map(|d| d.name.clone())
        .collect()
}

/// Why a name did not resolve to a package version the closure may use.
enum Unresolved {
    /// No package is or provides it.
    Missing,
    /// Only this package's test version is or provides it.
    OnlyTest(usize),
    /// This package has that name but no version to install.
    NoVersion(usize),
}

struct Resolver<'a> {
    index: &'a SetupIni,
    /// Every package reached, with the package whose dependency brought it in.
    parent: HashMap<usize, Option<usize>>,
    /// Packages asked for at their test version.
    test: BTreeSet<usize>,
    queue: VecDeque<usize>,
    warned: BTreeSet<String>,
}

impl Resolver<'_> {
    fn visit(&mut self, i: usize, from: Option<usize>) {
        if let std::collections::hash_map::Entry::Vacant(e) = self.parent.entry(i) {
            e.insert(from);
            self.queue.push_back(i);
        }
    }

    /// A package by its own name when it has a current version (or was asked
    /// for at its test version), else the current provider whose name sorts
    /// first.
    fn lookup(&mut self, name: &str) -> Result<usize, Unresolved> {
        let own = self.index.index_of(name);
        if let Some(i) = own
            && (self.index.packages[i].has_current() || self.test.contains(&i))
        {
            return Ok(i);
        }
        let providers = self.index.providers(name);
        let chosen = providers.iter().copied().min_by(|&a, &b| {
            self.index.packages[a]
                .name
                .cmp(&self.index.packages[b].name)
        });
        let Some(chosen) = chosen else {
            // Nothing current: say what there is instead.
            if let Some(i) = own {
                return Err(if self.index.packages[i].test.is_some() {
                    Unresolved::OnlyTest(i)
                } else {
                    Unresolved::NoVersion(i)
                });
            }
            if let Some(i) = self.test.iter().copied().find(|&i| {
                self.index.packages[i]
                    .test
                    .as_ref()
                    .is_some_and(|t| t.provided_names().any(|p| p == name))
            }) {
                return Ok(i);
            }
            return Err(self
                .index
                .packages
                .iter()
                .position(|p| {
                    p.test
                        .as_ref()
                        .is_some_and(|t| t.provided_names().any(|n| n == name))
                })
                .map_or(Unresolved::Missing, Unresolved::OnlyTest));
        };
        if providers.len() > 1 && self.warned.insert(name.to_string()) {
            let mut names: Vec<&str> = providers
                .iter()
                .map(|&p| self.index.packages[p].name.as_str())
                .collect();
            names.sort_unstable();
            tracing::warn!(
                "{name} is provided by {}; using {} (name it explicitly to choose another)",
                names.join(", "),
                names[0]
            );
        }
        Ok(chosen)
    }

    fn chain(&self, mut i: usize) -> Vec<String> {
        let mut chain = vec![self.index.packages[i].name.clone()];
        while let Some(Some(p)) = self.parent.get(&i) {
            i = *p;
            chain.push(self.index.packages[i].name.clone());
        }
        chain.reverse();
        chain
    }
}

/// Up to three package names close to `name`: a typo or two away, or
/// sharing most of their spelling.
fn suggestions(index: &SetupIni, name: &str) -> Vec<String> {
    let lower = name.to_lowercase();
    let max_edits = (lower.chars().count() / 4).max(1);
    let mut scored: Vec<(usize, f64, &str)> = index
        .packages
        .iter()
        .filter_map(|p| {
            let candidate = p.name.to_lowercase();
            let edits = strsim::levenshtein(&lower, &candidate);
            let similarity = strsim::jaro_winkler(&lower, &candidate);
            (edits <= max_edits || similarity >= 0.85).then_some((
                edits,
                similarity,
                p.name.as_str(),
            ))
        })
        .collect();
    scored.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| b.1.total_cmp(&a.1))
            .then_with(|| a.2.cmp(b.2))
    });
    scored
        .into_iter()
        .take(3)
        .map(|(_, _, n)| n.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(text: &str) -> SetupIni {
        SetupIni::parse("t.ini", text.to_string()).unwrap()
    }

    fn names(ini: &SetupIni, c: &Closure) -> Vec<String> {
        c.names(ini).map(str::to_string).collect()
    }

    #[test]
    fn closure_adds_base_and_follows_depends_through_cycles() {
        let ini = index(
            "@ a\nversion: 1\ndepends2: b\n@ b\nversion: 1\ndepends2: a, c\n@ c\nversion: 1\n@ base\ncategory: Base\nversion: 1\ndepends2: d\n@ d\nversion: 1\n@ other\nversion: 1\n",
        );
        let c = resolve(&ini, &["a"]).unwrap();
        assert_eq!(names(&ini, &c), ["a", "b", "base", "c", "d"]);
        assert!(c.contains(&ini, "base"));
        assert!(!c.contains(&ini, "other"));
    }

    #[test]
    fn only_the_current_version_counts() {
        let ini = index(
            "@ a\nversion: 2\ndepends2: b\n[prev]\nversion: 1\ndepends2: gone\n@ b\nversion: 1\n",
        );
        assert_eq!(names(&ini, &resolve(&ini, &["a"]).unwrap()), ["a", "b"]);
    }

    #[test]
    fn missing_dependency_names_the_chain() {
        let ini = index(
            "@ openssh\nversion: 1\ndepends2: libfoo\n@ libfoo\nversion: 1\ndepends2: libmissing\n@ unrelated\nversion: 1\ndepends2: alsomissing\n",
        );
        let err = resolve(&ini, &["openssh"]).unwrap_err().to_string();
        assert!(err.contains("openssh -> libfoo -> libmissing"), "{err}");
        assert!(err.starts_with("libfoo depends on \"libmissing\""), "{err}");
        // Unreached packages with missing dependencies do not matter.
        assert!(resolve(&ini, &["libfoo"]).is_err());
        let ini2 = index("@ a\nversion: 1\n@ b\nversion: 1\ndepends2: missing\n");
        assert!(resolve(&ini2, &["a"]).is_ok());
    }

    #[test]
    fn provides_picks_the_first_name_in_sort_order() {
        let ini = index(
            "@ app\nversion: 1\ndepends2: editor\n@ vim\nversion: 1\nprovides: editor\n@ emacs\nversion: 1\nprovides: editor\n",
        );
        let c = resolve(&ini, &["app"]).unwrap();
        assert_eq!(names(&ini, &c), ["app", "emacs"]);
        // A real package of that name wins over providers.
        let ini = index(
            "@ app\nversion: 1\ndepends2: vim\n@ vim\nversion: 1\n@ neovim\nversion: 1\nprovides: vim\n",
        );
        assert_eq!(
            names(&ini, &resolve(&ini, &["app"]).unwrap()),
            ["app", "vim"]
        );
    }

    #[test]
    fn what_a_package_obsoletes_it_provides_unless_it_says_otherwise() {
        let ini = index(
            "@ app\nversion: 1\ndepends2: mingw64-x86_64-pkg-config, openssl-devel\n@ pkg-config\nversion: 2\nobsoletes: mingw64-i686-pkg-config, mingw64-x86_64-pkg-config\n@ libssl-devel\nversion: 3\nobsoletes: openssl-devel\nprovides: libssl-headers\n",
        );
        let err = resolve(&ini, &["app"]).unwrap_err().to_string();
        assert!(
            err.starts_with("app depends on \"openssl-devel\", which no package"),
            "{err}"
        );
        assert_eq!(ini.providers("mingw64-x86_64-pkg-config"), [1]);
        assert_eq!(ini.providers("libssl-headers"), [2]);
        let ini = index(
            "@ app\nversion: 1\ndepends2: mingw64-x86_64-pkg-config\n@ pkg-config\nversion: 2\nobsoletes: mingw64-i686-pkg-config, mingw64-x86_64-pkg-config\n",
        );
        let c = resolve(&ini, &["app"]).unwrap();
        assert_eq!(names(&ini, &c), ["app", "pkg-config"]);
    }

    #[test]
    fn windows_pseudo_dependency_is_reported_not_resolved() {
        let ini = index(
            "@ a\nversion: 1\ndepends2: b, _windows (>= 6.1)\n@ b\nversion: 1\ndepends2: _windows ( >= 6.3 )\n@ c\nversion: 1\ndepends2: _windows (>=10.0)\n",
        );
        let c = resolve(&ini, &["a"]).unwrap();
        assert_eq!(names(&ini, &c), ["a", "b"]);
        assert_eq!(
            c.windows,
            Some(WindowsRequirement {
                version: "6.3".into(),
                required_by: "b".into()
            })
        );
    }

    #[test]
    fn unknown_request_suggests_close_names() {
        let ini = index("@ openssh\nversion: 1\n@ openssl\nversion: 1\n@ zip\nversion: 1\n");
        let err = resolve(&ini, &["opensh"]).unwrap_err().to_string();
        assert!(
            err.starts_with("package \"opensh\" is not in t.ini; did you mean openssh"),
            "{err}"
        );
        assert!(!err.contains("zip"), "{err}");
    }

    const H: &str = "0123456789abcdef0123456789abcdef";

    /// A current package `tmux`, a test-only `byobu` needing it, a test-only
    /// library, `cmake` with both versions, an obsolete stub and a Base package.
    fn shapes() -> SetupIni {
        index(&format!(
            "@ base-files\ncategory: Base\nversion: 1\ninstall: b.tar.xz 1 {H}\n\
             @ byobu\ncategory: Utils\n[test]\nversion: 6.13-1\ninstall: byobu.tar.xz 2 {H}\ndepends2: tmux, _windows (>= 10.0)\n\
             @ cmake\nversion: 3.1\ninstall: cmake-3.1.tar.xz 3 {H}\ndepends2: tmux\n[test]\nversion: 4.0\ninstall: cmake-4.0.tar.xz 4 {H}\ndepends2: libnew\n\
             @ libnew\n[test]\nversion: 1\ninstall: libnew.tar.xz 5 {H}\n\
             @ tmux\nversion: 3.5\ninstall: tmux.tar.xz 6 {H}\n\
             @ curl-devel\ncategory: _obsolete\nrequires: libcurl-devel\n\
             @ app\nversion: 1\ndepends2: lib\n@ lib\nversion: 1\ndepends2: curl-devel\n\
             @ uses-cmake\nversion: 1\ndepends2: cmake\n\
             @ uses-libnew\nversion: 1\ndepends2: libnew\n\
             @ oldonly\n[prev]\nversion: 1-1\ninstall: o.tar.xz 7 {H}\n\
             @ uses-old\nversion: 1\ndepends2: oldonly\n"
        ))
    }

    #[test]
    fn a_test_only_package_needs_name_equals_test() {
        let ini = shapes();
        let err = resolve(&ini, &["byobu"]).unwrap_err().to_string();
        assert_eq!(
            err,
            "package \"byobu\" has only a test version (6.13-1) in t.ini; ask for it as `byobu=test` to install that version"
        );
        let c = resolve(&ini, &["byobu=test"]).unwrap();
        assert_eq!(names(&ini, &c), ["base-files", "byobu", "tmux"]);
        let byobu = ini.index_of("byobu").unwrap();
        assert!(c.uses_test(byobu));
        assert_eq!(c.version(&ini, byobu), Some("6.13-1"));
        assert_eq!(c.install(&ini, byobu).unwrap().path, "byobu.tar.xz");
        // The test version's own dependencies count.
        assert_eq!(c.windows.as_ref().unwrap().version, "10.0");
    }

    #[test]
    fn test_versions_are_used_only_where_asked_for() {
        let ini = shapes();
        let cmake = ini.index_of("cmake").unwrap();
        let c = resolve(&ini, &["uses-cmake"]).unwrap();
        assert_eq!(
            names(&ini, &c),
            ["base-files", "cmake", "tmux", "uses-cmake"]
        );
        assert!(!c.uses_test(cmake));
        assert_eq!(c.version(&ini, cmake), Some("3.1"));

        // Asked for, the test version and its dependencies are used, also
        // for the packages that depend on it.
        let c = resolve(&ini, &["uses-cmake", "cmake=test", "libnew=test"]).unwrap();
        assert_eq!(
            names(&ini, &c),
            ["base-files", "cmake", "libnew", "uses-cmake"]
        );
        assert_eq!(c.install(&ini, cmake).unwrap().path, "cmake-4.0.tar.xz");
        assert_eq!(c.test.len(), 2);
    }

    #[test]
    fn a_dependency_only_a_test_version_satisfies_names_the_chain() {
        let ini = shapes();
        let err = resolve(&ini, &["cmake=test"]).unwrap_err().to_string();
        assert_eq!(
            err,
            "cmake depends on \"libnew\", which has only a test version (1) in t.ini (dependency chain: cmake -> libnew); to install that test version ask for `libnew=test` as well, or leave out cmake"
        );
        let err = resolve(&ini, &["uses-libnew"]).unwrap_err().to_string();
        assert!(
            err.contains("(dependency chain: uses-libnew -> libnew)"),
            "{err}"
        );
        assert!(resolve(&ini, &["uses-libnew", "libnew=test"]).is_ok());
    }

    #[test]
    fn a_stub_without_version_is_an_error_only_when_needed() {
        let ini = shapes();
        // Unreached, it does not matter.
        assert!(resolve(&ini, &["tmux"]).is_ok());
        let err = resolve(&ini, &["app"]).unwrap_err().to_string();
        assert_eq!(
            err,
            "lib depends on \"curl-devel\", which has no version to install (t.ini:26: an obsolete stub, no `version:` in any section; it names libcurl-devel instead: ask for that rather than curl-devel) (dependency chain: app -> lib -> curl-devel); use an index where it has one or leave out app"
        );
        let err = resolve(&ini, &["curl-devel"]).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "package \"curl-devel\" has no version to install (t.ini:26: an obsolete stub"
            ),
            "{err}"
        );
        let err = resolve(&ini, &["uses-old"]).unwrap_err().to_string();
        assert!(
            err.contains("\"oldonly\", which has no version to install (t.ini:41: neither a current nor a test version, only older ones: 1-1) (dependency chain: uses-old -> oldonly)"),
            "{err}"
        );
    }

    #[test]
    fn requests_are_names_or_name_equals_test() {
        let ini = shapes();
        let err = resolve(&ini, &["tmux=test"]).unwrap_err().to_string();
        assert_eq!(
            err,
            "`tmux=test`: package \"tmux\" has no [test] version in t.ini; ask for `tmux` to install its current version 3.5"
        );
        for bad in ["tmux=3.5", "=test", "tmux="] {
            let err = resolve(&ini, &[bad]).unwrap_err().to_string();
            assert!(err.contains("is not a package request"), "{bad}: {err}");
        }
        let err = resolve(&ini, &["nosuch=test"]).unwrap_err().to_string();
        assert!(
            err.starts_with("package \"nosuch\" is not in t.ini"),
            "{err}"
        );
        let r: PackageRequest = "byobu=test".parse().unwrap();
        assert_eq!(
            (r.name.as_str(), r.test, r.to_string()),
            ("byobu", true, "byobu=test".into())
        );
    }

    #[test]
    fn packages_without_archives_still_bring_their_dependencies() {
        let ini = index(
            "@ virt\nversion: 1\ndepends2: real\n@ real\nversion: 1\ninstall: r.tar.xz 1 0123456789abcdef0123456789abcdef\n",
        );
        let c = resolve(&ini, &["virt"]).unwrap();
        assert_eq!(names(&ini, &c), ["real", "virt"]);
    }
}
