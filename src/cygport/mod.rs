//! Reading a .cygport's build dependencies without running it.
//!
//! A .cygport is a bash script; cygvm never sources it on the host. It
//! reads the assignments of `BUILD_REQUIRES` and `DEPEND` (cygport's older
//! name for them) in the forms .cygport files use — `VAR="a b"`,
//! `VAR='a b'`, `VAR=a`, values quoted over several lines, `VAR+=" c"`,
//! `export VAR=…` — and refuses, naming the line, anything whose value the
//! script would compute: command substitution (`$(…)`, backticks),
//! variable expansion (`$VAR`, `${VAR}`), arrays, or an assignment inside a
//! function or a conditional. Then the user names the packages with
//! `--packages`.

use std::path::Path;

/// The variables whose values are build dependencies.
pub const DEPENDENCY_VARS: [&str; 2] = ["BUILD_REQUIRES", "DEPEND"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CygportError {
    #[error(
        "{file}:{line}: {var} is computed when cygport runs ({why}: `{text}`); cygvm reads build dependencies without running the file, so name them with --packages"
    )]
    Dynamic {
        file: String,
        line: usize,
        var: String,
        why: String,
        text: String,
    },
    #[error("{file}:{line}: the quoted value of {var} is never closed")]
    Unterminated {
        file: String,
        line: usize,
        var: String,
    },
    #[error("{file}:{line}: {var} names {name:?}, which is not a Cygwin package name")]
    BadName {
        file: String,
        line: usize,
        var: String,
        name: String,
    },
}

/// The build dependencies a .cygport declares, in order, each once.
pub fn build_dependencies(text: &str, file: &Path) -> Result<Vec<String>, CygportError> {
    let file = file.display().to_string();
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<(String, String)> = Vec::new();
    // Nesting of functions and conditionals, from the lines seen so far.
    let mut depth = 0usize;
    let mut n = 0;
    while n < lines.len() {
        let line = lines[n];
        let start = n + 1;
        n += 1;
        let code = strip_comment(line).trim();
        if code.is_empty() {
            continue;
        }
        let assignment = parse_assignment(code);
        let Some((var, append, rest)) = assignment else {
            depth = track_depth(depth, code);
            // A dependency variable used other than by plain assignment.
            for var in DEPENDENCY_VARS {
                if mentions_assignment(code, var) {
                    return Err(dynamic(
                        &file,
                        start,
                        var,
                        "assigned in a way cygvm does not read",
                        code,
                    ));
                }
            }
            continue;
        };
        if !DEPENDENCY_VARS.contains(&var) {
            depth = track_depth(depth, code);
            continue;
        }
        if depth > 0 {
            return Err(dynamic(
                &file,
                start,
                var,
                "assigned inside a function or a conditional",
                code,
            ));
        }
        // The value, continued over lines while a quote is open.
        let mut value = rest.to_string();
        while open_quote(&value).is_some() {
            if n >= lines.len() {
                return Err(CygportError::Unterminated {
                    file,
                    line: start,
                    var: var.to_string(),
                });
            }
            value.push('\n');
            value.push_str(lines[n]);
            n += 1;
        }
        let words = words(&value).map_err(|why| dynamic(&file, start, var, why, code))?;
        if !append {
            // `VAR=…` replaces what earlier lines set for this variable;
            // the names of the other variable stay.
            out.retain(|(v, _)| v != var);
        }
        for word in words {
            if !is_package_name(&word) {
                return Err(CygportError::BadName {
                    file,
                    line: start,
                    var: var.to_string(),
                    name: word,
                });
            }
            out.push((var.to_string(), word));
        }
    }
    let mut names: Vec<String> = Vec::new();
    for (_, name) in out {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

fn dynamic(file: &str, line: usize, var: &str, why: &str, text: &str) -> CygportError {
    CygportError::Dynamic {
        file: file.to_string(),
        line,
        var: var.to_string(),
        why: why.to_string(),
        text: text.lines().next().unwrap_or_default().to_string(),
    }
}

/// `[export ]NAME=rest` or `NAME+=rest` at the start of a command.
fn parse_assignment(code: &str) -> Option<(&str, bool, &str)> {
    let code = code
        .strip_prefix("export ")
        .map(str::trim_start)
        .unwrap_or(code);
    let end = code
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(code.len());
    let (name, rest) = code.split_at(end);
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    if let Some(v) = rest.strip_prefix("+=") {
        Some((name, true, v))
    } else {
        rest.strip_prefix('=').map(|v| (name, false, v))
    }
}

/// Whether `code` assigns `var` by some other means (`read`, `declare`,
/// `local`, an array element, `let`, …) or sets it after another command.
fn mentions_assignment(code: &str, var: &str) -> bool {
    code.match_indices(var).any(|(i, _)| {
        let before = code[..i].chars().next_back();
        let after = &code[i + var.len()..];
        let word_start =
            before.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_' || c == '$' || c == '{'));
        word_start
            && (after.starts_with('=')
                || after.starts_with("+=")
                || after.starts_with('[')
                || after.is_empty()
                || after.starts_with(' ')
                    && (code.starts_with("read")
                        || code.starts_with("declare")
                        || code.starts_with("local")
                        || code.starts_with("typeset")))
    })
}

/// A comment starts at `#` at the start of a word, outside quotes.
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q && !(q == '"' && prev == '\\') => quote = None,
            (None, '#') if prev.is_whitespace() => return &line[..i],
            _ => {}
        }
        prev = c;
    }
    line
}

/// The quote still open at the end of `value`, if any.
fn open_quote(value: &str) -> Option<char> {
    let mut quote = None;
    let mut escaped = false;
    for c in value.chars() {
        if escaped {
            escaped = false;
            continue;
        }
        match (quote, c) {
            (Some('\''), '\'') => quote = None,
            (Some('\''), _) => {}
            (_, '\\') => escaped = true,
            (None, '\'' | '"') => quote = Some(c),
            (Some('"'), '"') => quote = None,
            _ => {}
        }
    }
    quote
}

/// The words of a shell value; what would need the shell to evaluate is
/// refused with the reason.
fn words(value: &str) -> Result<Vec<String>, &'static str> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some('\''), '\'') => quote = None,
            (Some('\''), c) => word.push(c),
            (_, '`') => return Err("command substitution"),
            (_, '$') => {
                return Err(if chars.peek() == Some(&'(') {
                    "command substitution"
                } else {
                    "variable expansion"
                });
            }
            (Some('"'), '"') => quote = None,
            (_, '\\') => {
                if let Some(next) = chars.next()
                    && next != '\n'
                {
                    word.push(next);
                    in_word = true;
                }
            }
            (Some(_), c) if c.is_whitespace() => {
                // Inside quotes white space separates package names too
                // (cygport splits the value).
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '(') => return Err("an array"),
            (None, ';' | '&' | '|') => break,
            (None, c) if c.is_whitespace() => {
                // An unquoted space ends the assignment (what follows is a
                // command run with it in its environment).
                if in_word || !word.is_empty() {
                    break;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    Ok(words)
}

/// Opening and closing of functions and conditionals, roughly: enough to
/// tell an assignment at the top of the file from one cygport runs only
/// sometimes.
fn track_depth(depth: usize, code: &str) -> usize {
    let first = code.split_whitespace().next().unwrap_or("");
    let opens = matches!(first, "if" | "case" | "while" | "until" | "for" | "select")
        || code.ends_with('{')
        || code.contains("() {")
        || code.ends_with("()");
    let closes = matches!(first, "fi" | "esac" | "done" | "}")
        || code.ends_with("; fi")
        || code.ends_with("; done")
        || code.ends_with("}") && !code.ends_with("${}");
    match (opens, closes) {
        (true, true) => depth,
        (true, false) => depth + 1,
        (false, true) => depth.saturating_sub(1),
        (false, false) => depth,
    }
}

fn is_package_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deps(text: &str) -> Result<Vec<String>, CygportError> {
        build_dependencies(text, Path::new("foo.cygport"))
    }

    #[test]
    fn the_common_forms_are_read() {
        let text = r#"
# comment BUILD_REQUIRES="not this"
NAME="foo"
VERSION=1.2
BUILD_REQUIRES="libfoo-devel gcc-g++"   # trailing comment
DEPEND='cmake'
DEPEND+=" ninja"
BUILD_REQUIRES+="
	libbar-devel
	libbaz-devel \
	zlib-devel
"
export BUILD_REQUIRES+=" perl"
src_compile() {
	cygmake
}
"#;
        assert_eq!(
            deps(text).unwrap(),
            [
                "libfoo-devel",
                "gcc-g++",
                "cmake",
                "ninja",
                "libbar-devel",
                "libbaz-devel",
                "zlib-devel",
                "perl"
            ]
        );
    }

    #[test]
    fn an_unquoted_value_and_a_reassignment() {
        assert_eq!(
            deps("BUILD_REQUIRES=make\nBUILD_REQUIRES=\"gcc-core\"\n").unwrap(),
            ["gcc-core"]
        );
        assert_eq!(deps("NAME=foo\n").unwrap(), Vec::<String>::new());
        assert_eq!(deps("BUILD_REQUIRES=\"\"\n").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn computed_values_are_refused_with_the_line() {
        for (text, why) in [
            (
                "NAME=x\nBUILD_REQUIRES=\"$(cat deps.txt)\"\n",
                "command substitution",
            ),
            ("BUILD_REQUIRES=`cat deps.txt`\n", "command substitution"),
            (
                "PY=python39\nBUILD_REQUIRES=\"${PY}-devel\"\n",
                "variable expansion",
            ),
            ("DEPEND=\"gcc-core $EXTRA\"\n", "variable expansion"),
            ("BUILD_REQUIRES=(a b)\n", "an array"),
            (
                "if [ -n \"$X\" ]; then\n  BUILD_REQUIRES=\"a\"\nfi\n",
                "inside a function or a conditional",
            ),
            ("read BUILD_REQUIRES < deps\n", "assigned in a way"),
        ] {
            let err = deps(text).unwrap_err().to_string();
            assert!(err.contains(why), "{text:?}: {err}");
            assert!(err.contains("--packages"), "{err}");
            let line = text
                .lines()
                .position(|l| l.contains("BUILD_REQUIRES") || l.contains("DEPEND"))
                .unwrap()
                + 1;
            assert!(
                err.starts_with(&format!("foo.cygport:{line}:")),
                "{text:?}: {err}"
            );
        }
    }

    #[test]
    fn other_variables_may_be_dynamic() {
        let text = "VERSION=$(date +%Y)\nSRC_URI=\"https://x/${NAME}-${VERSION}.tar.gz\"\nBUILD_REQUIRES=\"make\"\n";
        assert_eq!(deps(text).unwrap(), ["make"]);
    }

    #[test]
    fn an_unclosed_quote_and_a_bad_name_are_errors() {
        let err = deps("NAME=x\nBUILD_REQUIRES=\"make\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "foo.cygport:2: the quoted value of BUILD_REQUIRES is never closed"
        );
        let err = deps("DEPEND=\"perl(Foo)\"\n").unwrap_err().to_string();
        assert!(err.contains("\"perl(Foo)\""), "{err}");
    }

    #[test]
    fn the_test_fixtures_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cygport");
        let read = |name: &str| {
            let path = dir.join(name);
            build_dependencies(&std::fs::read_to_string(&path).unwrap(), &path).unwrap()
        };
        assert_eq!(
            read("cygvm-hello-1.0-1.cygport"),
            ["cygvm-example-tool", "cygvm-example-lib"]
        );
        assert_eq!(read("cygvm-broken-1.0-1.cygport"), ["cygvm-example-lib"]);
    }
}
