//! The set of packages an install needs: what was asked for, plus every
//! package in category Base, closed under each current version's
//! dependencies (`depends2:`, or `requires:` in older indexes).

use std::collections::{BTreeSet, HashMap, VecDeque};

use thiserror::Error;

use super::setup_ini::{SetupIni, compare_versions};

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
    pub windows: Option<WindowsRequirement>,
}

impl Closure {
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

/// Resolves `requested` plus the Base category against `index`.
pub fn resolve<S: AsRef<str>>(index: &SetupIni, requested: &[S]) -> Result<Closure, ClosureError> {
    let mut resolver = Resolver {
        index,
        parent: HashMap::new(),
        queue: VecDeque::new(),
        warned: BTreeSet::new(),
    };

    for name in requested {
        let name = name.as_ref();
        let Some(i) = resolver.lookup(name) else {
            return Err(ClosureError::UnknownPackage {
                name: name.to_string(),
                index: index.source_name.clone(),
                suggestions: suggestions(index, name),
            });
        };
        resolver.visit(i, None);
    }
    for (i, pkg) in index.packages.iter().enumerate() {
        if pkg.in_category("Base") {
            resolver.visit(i, None);
        }
    }

    let mut windows: Option<WindowsRequirement> = None;
    while let Some(i) = resolver.queue.pop_front() {
        let pkg = &index.packages[i];
        for dep in &pkg.depends {
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
                Some(d) => resolver.visit(d, Some(i)),
                None => {
                    return Err(ClosureError::MissingDependency {
                        missing: dep.name.clone(),
                        chain: resolver.chain(i),
                        index: index.source_name.clone(),
                    });
                }
            }
        }
    }

    let mut packages: Vec<usize> = resolver.parent.into_keys().collect();
    packages.sort_by(|&a, &b| index.packages[a].name.cmp(&index.packages[b].name));
    Ok(Closure { packages, windows })
}

struct Resolver<'a> {
    index: &'a SetupIni,
    /// Every package reached, with the package whose dependency brought it in.
    parent: HashMap<usize, Option<usize>>,
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

    /// A package by its own name, else the provider whose name sorts first.
    fn lookup(&mut self, name: &str) -> Option<usize> {
        if let Some(i) = self.index.index_of(name) {
            return Some(i);
        }
        let providers = self.index.providers(name);
        let chosen = providers.iter().copied().min_by(|&a, &b| {
            self.index.packages[a]
                .name
                .cmp(&self.index.packages[b].name)
        })?;
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
        Some(chosen)
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

    #[test]
    fn packages_without_archives_still_bring_their_dependencies() {
        let ini = index(
            "@ virt\nversion: 1\ndepends2: real\n@ real\nversion: 1\ninstall: r.tar.xz 1 0123456789abcdef0123456789abcdef\n",
        );
        let c = resolve(&ini, &["virt"]).unwrap();
        assert_eq!(names(&ini, &c), ["real", "virt"]);
    }
}
