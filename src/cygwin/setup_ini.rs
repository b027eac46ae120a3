//! Parser for Cygwin's package index (`setup.ini`, also served as `setup.xz`
//! and `setup.zst`).
//!
//! Only the current version of each package (the unlabelled section right
//! after `@ name`) is interpreted; `[prev]`, `[test]` and other labelled
//! sections are checked for well-formed `install:`/`source:` lines and
//! otherwise skipped. The text of each stanza's current section is kept
//! verbatim so a reduced index can be written for a local mirror.
//!
//! Truncation: a published index always ends with a newline and never ends
//! inside a quoted value, and its compressed forms carry their own end
//! markers. A file that ends mid-line, inside a quote, or whose xz/zstd stream
//! stops early is reported as truncated.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::ops::Range;
use std::path::Path;

use thiserror::Error;

/// Where in the index a problem is: `file:line`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub line: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

#[derive(Debug, Error)]
pub enum ParseError {
    #[error("cannot read package index {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot decompress package index {path}: {source} (the download is probably truncated or corrupt; fetch it again)"
    )]
    Decompress {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{at}: {message}")]
    Syntax { at: Location, message: String },
}

impl ParseError {
    fn syntax(file: &str, line: usize, message: impl Into<String>) -> Self {
        ParseError::Syntax {
            at: Location {
                file: file.to_string(),
                line,
            },
            message: message.into(),
        }
    }
}

/// The digest algorithm an `install:`/`source:` line's hash uses, told apart
/// by its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HashAlgo {
    Md5,
    Sha256,
    Sha512,
}

impl HashAlgo {
    fn from_hex_len(len: usize) -> Option<Self> {
        match len {
            32 => Some(Self::Md5),
            64 => Some(Self::Sha256),
            128 => Some(Self::Sha512),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Md5 => "md5",
            Self::Sha256 => "sha256",
            Self::Sha512 => "sha512",
        }
    }
}

impl fmt::Display for HashAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One `install:` or `source:` line: a path relative to the mirror's top,
/// the size in bytes and the lowercase hex digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    pub path: String,
    pub size: u64,
    pub hash: String,
    pub algo: HashAlgo,
}

/// A version constraint such as `>= 6.3`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    pub op: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    pub name: String,
    pub constraint: Option<Constraint>,
}

/// One package's current version as the index describes it.
#[derive(Debug, Clone)]
pub struct Package {
    pub name: String,
    /// Line of the `@ name` header.
    pub line: usize,
    pub sdesc: Option<String>,
    pub ldesc: Option<String>,
    pub message: Option<String>,
    pub categories: Vec<String>,
    pub version: Option<String>,
    /// Absent for packages that have no archive in their current version
    /// (obsolete or virtual packages); they still contribute dependencies.
    pub install: Option<Archive>,
    pub source: Option<Archive>,
    /// `depends2:` when the current section has one, else `requires:`.
    pub depends: Vec<Dependency>,
    pub provides: Vec<String>,
    pub obsoletes: Vec<Dependency>,
    /// Byte range of the stanza's current section in [`SetupIni::text`].
    pub text_range: Range<usize>,
}

impl Package {
    pub fn in_category(&self, category: &str) -> bool {
        self.categories.iter().any(|c| c == category)
    }
}

/// A parsed package index.
#[derive(Debug, Clone)]
pub struct SetupIni {
    /// Name used in messages (the file path given to the parser).
    pub source_name: String,
    /// Header `key: value` fields in file order (`release`, `arch`,
    /// `setup-timestamp`, `setup-version`, ...).
    pub header: Vec<(String, String)>,
    /// Packages in file order.
    pub packages: Vec<Package>,
    /// The decompressed index text.
    pub text: String,
    /// Byte range of the header (comments and fields before the first `@`).
    pub header_range: Range<usize>,
    by_name: HashMap<String, usize>,
    providers: HashMap<String, Vec<usize>>,
}

impl SetupIni {
    /// Reads `setup.ini`, `setup.xz` or `setup.zst`; the compression is told
    /// by the file's magic bytes, not its name.
    pub fn read(path: &Path) -> Result<Self, ParseError> {
        let name = path.display().to_string();
        let raw = std::fs::read(path).map_err(|source| ParseError::Read {
            path: name.clone(),
            source,
        })?;
        let bytes = decompress(&raw).map_err(|source| ParseError::Decompress {
            path: name.clone(),
            source,
        })?;
        Self::parse_bytes(&name, bytes)
    }

    /// Parses decompressed index bytes, which must be UTF-8.
    pub fn parse_bytes(source_name: &str, bytes: Vec<u8>) -> Result<Self, ParseError> {
        match String::from_utf8(bytes) {
            Ok(text) => Self::parse(source_name, text),
            Err(e) => {
                let offset = e.utf8_error().valid_up_to();
                let line = e.as_bytes()[..offset]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count()
                    + 1;
                Err(ParseError::syntax(
                    source_name,
                    line,
                    "text is not valid UTF-8 (is this really a setup.ini?)",
                ))
            }
        }
    }

    pub fn parse(source_name: &str, text: String) -> Result<Self, ParseError> {
        Parser::new(source_name, &text).run().map(|parsed| {
            let mut by_name = HashMap::with_capacity(parsed.packages.len());
            let mut providers: HashMap<String, Vec<usize>> = HashMap::new();
            for (i, p) in parsed.packages.iter().enumerate() {
                by_name.insert(p.name.clone(), i);
                for name in &p.provides {
                    providers.entry(name.clone()).or_default().push(i);
                }
            }
            SetupIni {
                source_name: source_name.to_string(),
                header: parsed.header,
                packages: parsed.packages,
                header_range: parsed.header_range,
                text,
                by_name,
                providers,
            }
        })
    }

    pub fn header_field(&self, key: &str) -> Option<&str> {
        self.header
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn arch(&self) -> Option<&str> {
        self.header_field("arch")
    }

    pub fn release(&self) -> Option<&str> {
        self.header_field("release")
    }

    pub fn setup_timestamp(&self) -> Option<u64> {
        self.header_field("setup-timestamp")?.parse().ok()
    }

    pub fn setup_version(&self) -> Option<&str> {
        self.header_field("setup-version")
    }

    pub fn package(&self, name: &str) -> Option<&Package> {
        self.by_name.get(name).map(|&i| &self.packages[i])
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// Packages whose current version `provides:` `name`, in file order.
    pub fn providers(&self, name: &str) -> &[usize] {
        self.providers.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The verbatim text of a package's current section.
    pub fn stanza_text(&self, package: &Package) -> &str {
        &self.text[package.text_range.clone()]
    }

    pub fn header_text(&self) -> &str {
        &self.text[self.header_range.clone()]
    }
}

const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

fn decompress(raw: &[u8]) -> std::io::Result<Vec<u8>> {
    if raw.starts_with(XZ_MAGIC) {
        let mut out = Vec::with_capacity(raw.len() * 6);
        liblzma::read::XzDecoder::new_multi_decoder(raw).read_to_end(&mut out)?;
        Ok(out)
    } else if raw.starts_with(ZSTD_MAGIC) {
        let mut out = Vec::with_capacity(raw.len() * 6);
        zstd::stream::read::Decoder::new(raw)?.read_to_end(&mut out)?;
        Ok(out)
    } else {
        Ok(raw.to_vec())
    }
}

struct Parsed {
    header: Vec<(String, String)>,
    header_range: Range<usize>,
    packages: Vec<Package>,
}

/// Per-stanza state: fields seen in the current section, raw `requires:`
/// and `depends2:` kept apart until the stanza ends.
struct Stanza {
    pkg: Package,
    requires: Option<Vec<Dependency>>,
    depends2: Option<Vec<Dependency>>,
    in_current: bool,
}

struct Parser<'a> {
    file: &'a str,
    text: &'a str,
}

/// A logical `key: value` entry, possibly spanning lines inside a quote.
struct Entry<'a> {
    key: &'a str,
    value: &'a str,
    line: usize,
}

impl<'a> Parser<'a> {
    fn new(file: &'a str, text: &'a str) -> Self {
        Self { file, text }
    }

    fn err(&self, line: usize, message: impl Into<String>) -> ParseError {
        ParseError::syntax(self.file, line, message)
    }

    fn run(self) -> Result<Parsed, ParseError> {
        let text = self.text;
        if !text.is_empty() && !text.ends_with('\n') {
            return Err(self.err(
                text.lines().count(),
                "file ends in the middle of a line: the index is truncated (download it again)",
            ));
        }

        let mut header = Vec::new();
        let mut header_end = None;
        let mut packages: Vec<Package> = Vec::new();
        let mut current: Option<Stanza> = None;

        let mut pos = 0usize;
        let mut line_no = 0usize;
        while pos < text.len() {
            let line_start = pos;
            let (line, next) = next_line(text, pos);
            pos = next;
            line_no += 1;

            let trimmed = line.trim_end_matches('\r');
            if trimmed.trim().is_empty() || trimmed.starts_with('#') {
                continue;
            }
            if let Some(name) = trimmed
                .strip_prefix("@ ")
                .or_else(|| trimmed.strip_prefix('@'))
            {
                let name = name.trim();
                if name.is_empty() || name.contains(char::is_whitespace) {
                    return Err(self.err(line_no, format!("bad package header {trimmed:?}")));
                }
                if header_end.is_none() {
                    header_end = Some(line_start);
                }
                if let Some(done) = current.take() {
                    packages.push(self.finish(done, line_start)?);
                }
                current = Some(Stanza {
                    pkg: Package {
                        name: name.to_string(),
                        line: line_no,
                        sdesc: None,
                        ldesc: None,
                        message: None,
                        categories: Vec::new(),
                        version: None,
                        install: None,
                        source: None,
                        depends: Vec::new(),
                        provides: Vec::new(),
                        obsoletes: Vec::new(),
                        text_range: line_start..line_start,
                    },
                    requires: None,
                    depends2: None,
                    in_current: true,
                });
                continue;
            }
            if trimmed.starts_with('[') {
                let Some(stanza) = current.as_mut() else {
                    return Err(self.err(
                        line_no,
                        format!("version section {trimmed:?} before any `@ package` line"),
                    ));
                };
                if !trimmed.trim_end().ends_with(']') {
                    return Err(self.err(line_no, format!("bad version section {trimmed:?}")));
                }
                if stanza.in_current {
                    stanza.in_current = false;
                    stanza.pkg.text_range.end = line_start;
                }
                continue;
            }

            let entry_line = line_no;
            let Some(colon) = trimmed.find(':') else {
                return Err(self.err(
                    line_no,
                    format!("expected `key: value`, `@ package` or `[section]`, found {trimmed:?}"),
                ));
            };
            let key = &trimmed[..colon];
            if key.is_empty()
                || !key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(self.err(
                    line_no,
                    format!("expected `key: value`, `@ package` or `[section]`, found {trimmed:?}"),
                ));
            }
            // The value starts after the colon; a quote opened in it may run
            // over following lines until the closing quote.
            let value_start = line_start + colon + 1;
            let mut quotes = line.bytes().skip(colon + 1).filter(|&b| b == b'"').count();
            let mut value_end = line_start + trimmed.len();
            while quotes % 2 == 1 {
                if pos >= text.len() {
                    return Err(self.err(
                        entry_line,
                        format!(
                            "quoted `{key}:` value starting here is never closed: the index is truncated or damaged"
                        ),
                    ));
                }
                let cont_start = pos;
                let (cont, next) = next_line(text, pos);
                pos = next;
                line_no += 1;
                // A runaway quote would swallow the next stanza; stop there
                // and name where the quote began.
                if cont.starts_with("@ ") && looks_like_stanza_start(text, next) {
                    return Err(self.err(
                        entry_line,
                        format!(
                            "quoted `{key}:` value starting here is not closed before the next package at line {line_no}"
                        ),
                    ));
                }
                quotes += cont.bytes().filter(|&b| b == b'"').count();
                value_end = cont_start + cont.trim_end_matches('\r').len();
            }
            let entry = Entry {
                key,
                value: text[value_start..value_end].trim(),
                line: entry_line,
            };

            match current.as_mut() {
                None => header.push((entry.key.to_string(), unquote(entry.value).to_string())),
                Some(stanza) => self.apply(stanza, &entry)?,
            }
        }

        if let Some(done) = current.take() {
            packages.push(self.finish(done, text.len())?);
        }
        let header_end = header_end.unwrap_or(text.len());
        Ok(Parsed {
            header,
            header_range: 0..header_end,
            packages,
        })
    }

    fn apply(&self, stanza: &mut Stanza, e: &Entry<'_>) -> Result<(), ParseError> {
        let is_archive = e.key == "install" || e.key == "source";
        if !stanza.in_current {
            // Only the current version counts, but a malformed archive line
            // anywhere means the index is damaged.
            if is_archive {
                self.archive(e)?;
            }
            return Ok(());
        }
        let pkg = &mut stanza.pkg;
        match e.key {
            "sdesc" => pkg.sdesc = Some(unquote(e.value).to_string()),
            "ldesc" => pkg.ldesc = Some(unquote(e.value).to_string()),
            "message" => pkg.message = Some(e.value.to_string()),
            "category" => pkg.categories = e.value.split_whitespace().map(str::to_string).collect(),
            "version" => pkg.version = Some(e.value.to_string()),
            "install" => pkg.install = Some(self.archive(e)?),
            "source" => pkg.source = Some(self.archive(e)?),
            "requires" => {
                stanza.requires = Some(
                    e.value
                        .split_whitespace()
                        .map(|name| Dependency {
                            name: name.to_string(),
                            constraint: None,
                        })
                        .collect(),
                )
            }
            "depends2" => stanza.depends2 = Some(self.dependency_list(e)?),
            "obsoletes" => pkg.obsoletes = self.dependency_list(e)?,
            "provides" => {
                pkg.provides = self
                    .dependency_list(e)?
                    .into_iter()
                    .map(|d| d.name)
                    .collect()
            }
            _ => {}
        }
        Ok(())
    }

    fn finish(&self, mut stanza: Stanza, end: usize) -> Result<Package, ParseError> {
        if stanza.in_current {
            stanza.pkg.text_range.end = end;
        }
        let mut pkg = stanza.pkg;
        if pkg.version.is_none() {
            let hint = if end == self.text.len() {
                " (the index may be truncated: it is the last package in the file)"
            } else {
                ""
            };
            return Err(self.err(
                pkg.line,
                format!(
                    "package {} has no `version:` line in its current section{hint}",
                    pkg.name
                ),
            ));
        }
        pkg.depends = stanza.depends2.or(stanza.requires).unwrap_or_default();
        Ok(pkg)
    }

    fn archive(&self, e: &Entry<'_>) -> Result<Archive, ParseError> {
        let mut parts = e.value.split_whitespace();
        let (Some(path), Some(size), Some(hash), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(self.err(
                e.line,
                format!("`{}:` needs `path size hash`, found {:?}", e.key, e.value),
            ));
        };
        let size: u64 = size.parse().map_err(|_| {
            self.err(
                e.line,
                format!("`{}:` size {size:?} is not a number of bytes", e.key),
            )
        })?;
        let algo = HashAlgo::from_hex_len(hash.len())
            .filter(|_| hash.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| {
                self.err(
                    e.line,
                    format!(
                        "`{}:` hash {hash:?} is not a 32, 64 or 128 digit hex md5/sha256/sha512",
                        e.key
                    ),
                )
            })?;
        Ok(Archive {
            path: path.to_string(),
            size,
            hash: hash.to_ascii_lowercase(),
            algo,
        })
    }

    /// `name, name (>= 1.0), name(=2)` as `depends2:`, `provides:` and
    /// `obsoletes:` write them.
    fn dependency_list(&self, e: &Entry<'_>) -> Result<Vec<Dependency>, ParseError> {
        let mut out = Vec::new();
        for item in e.value.split(',') {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let name_end = item
                .find(|c: char| c.is_whitespace() || c == '(')
                .unwrap_or(item.len());
            let name = &item[..name_end];
            let rest = item[name_end..].trim();
            let constraint = if rest.is_empty() {
                None
            } else {
                let inner = rest
                    .strip_prefix('(')
                    .and_then(|r| r.strip_suffix(')'))
                    .ok_or_else(|| {
                        self.err(
                            e.line,
                            format!(
                                "`{}:` entry {item:?} has a malformed version constraint",
                                e.key
                            ),
                        )
                    })?
                    .trim();
                let op_end = inner
                    .find(|c: char| !matches!(c, '<' | '>' | '='))
                    .unwrap_or(inner.len());
                let (op, version) = (&inner[..op_end], inner[op_end..].trim());
                if op.is_empty() || version.is_empty() {
                    return Err(self.err(
                        e.line,
                        format!(
                            "`{}:` entry {item:?} has a malformed version constraint",
                            e.key
                        ),
                    ));
                }
                Some(Constraint {
                    op: op.to_string(),
                    version: version.to_string(),
                })
            };
            if name.is_empty() {
                return Err(self.err(
                    e.line,
                    format!("`{}:` entry {item:?} has no package name", e.key),
                ));
            }
            out.push(Dependency {
                name: name.to_string(),
                constraint,
            });
        }
        Ok(out)
    }
}

/// The line starting at `pos` (without its newline) and where the next begins.
fn next_line(text: &str, pos: usize) -> (&str, usize) {
    match text[pos..].find('\n') {
        Some(i) => (&text[pos..pos + i], pos + i + 1),
        None => (&text[pos..], text.len()),
    }
}

/// Whether the line at `pos` is a `key:` line, as the line after a real
/// `@ name` header is.
fn looks_like_stanza_start(text: &str, pos: usize) -> bool {
    if pos >= text.len() {
        return false;
    }
    let (line, _) = next_line(text, pos);
    [
        "sdesc:",
        "ldesc:",
        "category:",
        "version:",
        "requires:",
        "depends2:",
    ]
    .iter()
    .any(|k| line.starts_with(k))
}

fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
}

/// Compares Cygwin version strings the way package tools do: runs of digits
/// numerically, other runs as text, separators ignored.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let mut a = a.as_bytes();
    let mut b = b.as_bytes();
    loop {
        while let [c, rest @ ..] = a
            && !c.is_ascii_alphanumeric()
        {
            a = rest;
        }
        while let [c, rest @ ..] = b
            && !c.is_ascii_alphanumeric()
        {
            b = rest;
        }
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let numeric = x.is_ascii_digit();
                if numeric != y.is_ascii_digit() {
                    // Numbers sort after letters, as rpm does.
                    return if numeric {
                        Ordering::Greater
                    } else {
                        Ordering::Less
                    };
                }
                let run = |s: &[u8]| {
                    s.iter()
                        .position(|c| {
                            if numeric {
                                !c.is_ascii_digit()
                            } else {
                                !c.is_ascii_alphabetic()
                            }
                        })
                        .unwrap_or(s.len())
                };
                let (ra, rb) = (run(a), run(b));
                let (sa, sb) = (&a[..ra], &b[..rb]);
                let ord = if numeric {
                    let sa = trim_zeros(sa);
                    let sb = trim_zeros(sb);
                    sa.len().cmp(&sb.len()).then_with(|| sa.cmp(sb))
                } else {
                    sa.cmp(sb)
                };
                if ord != Ordering::Equal {
                    return ord;
                }
                a = &a[ra..];
                b = &b[rb..];
            }
        }
    }
}

fn trim_zeros(s: &[u8]) -> &[u8] {
    let first = s.iter().position(|&c| c != b'0').unwrap_or(s.len());
    &s[first..]
}

#[cfg(test)]
mod tests {
    use super::*;

    const H512: &str = "94adf3376e7fcaf937594be718f54a99f2a2b66367eb2bb294b6fd4a933a9515954a9e9f309ed74cc62fbb353adb053d8500bbaf42994e4355f7180664afa62c";

    fn parse(text: &str) -> Result<SetupIni, ParseError> {
        SetupIni::parse("test.ini", text.to_string())
    }

    #[test]
    fn quoted_values_keep_lines_that_look_like_keys_and_sections() {
        let text = format!(
            "release: cygwin\narch: x86_64\nsetup-timestamp: 1473313356\n\n@ foo\nsdesc: \"Foo\"\nldesc: \"First line\n[prev]\n# not a comment\nhttp: //example.org\nNote: still text\n\tTabbed — ünïcödé\"\ncategory: Base Devel\nversion: 1.0-1\ninstall: x86_64/release/foo/foo-1.0-1.tar.xz 12 {H512}\ndepends2: bar, _windows ( >= 6.3 ), baz(>=3.5.0), qux (=2.20)\n[prev]\nversion: 0.9-1\ninstall: x86_64/release/foo/foo-0.9-1.tar.xz 10 {H512}\ndepends2: old\n"
        );
        let ini = parse(&text).unwrap();
        assert_eq!(ini.arch(), Some("x86_64"));
        assert_eq!(ini.setup_timestamp(), Some(1473313356));
        let foo = ini.package("foo").unwrap();
        assert_eq!(
            foo.ldesc.as_deref(),
            Some(
                "First line\n[prev]\n# not a comment\nhttp: //example.org\nNote: still text\n\tTabbed — ünïcödé"
            )
        );
        assert_eq!(foo.version.as_deref(), Some("1.0-1"));
        assert_eq!(foo.categories, ["Base", "Devel"]);
        let deps: Vec<_> = foo
            .depends
            .iter()
            .map(|d| {
                (
                    d.name.as_str(),
                    d.constraint
                        .as_ref()
                        .map(|c| format!("{} {}", c.op, c.version)),
                )
            })
            .collect();
        assert_eq!(
            deps,
            [
                ("bar", None),
                ("_windows", Some(">= 6.3".into())),
                ("baz", Some(">= 3.5.0".into())),
                ("qux", Some("= 2.20".into())),
            ]
        );
        let install = foo.install.as_ref().unwrap();
        assert_eq!(install.size, 12);
        assert_eq!(install.algo, HashAlgo::Sha512);
        assert!(ini.stanza_text(foo).starts_with("@ foo\n"));
        assert!(ini.stanza_text(foo).ends_with("qux (=2.20)\n"));
        assert!(ini.header_text().ends_with("1473313356\n\n"));
    }

    #[test]
    fn requires_is_used_when_there_is_no_depends2() {
        let ini = parse(
            "@ a\nversion: 1\nrequires: b c\n@ b\nversion: 1\nrequires: x\ndepends2: c\n@ c\nversion: 1\n",
        )
        .unwrap();
        let names = |p: &str| -> Vec<String> {
            ini.package(p)
                .unwrap()
                .depends
                .iter()
                .map(|d| d.name.clone())
                .collect()
        };
        assert_eq!(names("a"), ["b", "c"]);
        assert_eq!(names("b"), ["c"]);
        assert!(names("c").is_empty());
    }

    #[test]
    fn bad_install_lines_name_the_line() {
        for (line, expect) in [
            (
                "install: a/b.tar.xz 12 abc",
                "not a 32, 64 or 128 digit hex",
            ),
            (
                "install: a/b.tar.xz twelve 0123456789abcdef0123456789abcdef",
                "not a number",
            ),
            ("install: a/b.tar.xz 12", "needs `path size hash`"),
            (
                "install: a/b.tar.xz 12 0123456789abcdef0123456789abcdeg",
                "not a 32, 64 or 128 digit hex",
            ),
        ] {
            let text = format!("@ a\nversion: 1\n{line}\n");
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.starts_with("test.ini:3: "), "{err}");
            assert!(err.contains(expect), "{err}");
        }
        let md5 = parse("@ a\nversion: 1\ninstall: a.tar.bz2 5 0123456789ABCDEF0123456789abcdef\n")
            .unwrap();
        let inst = md5.package("a").unwrap().install.clone().unwrap();
        assert_eq!(inst.algo, HashAlgo::Md5);
        assert_eq!(inst.hash, "0123456789abcdef0123456789abcdef");
    }

    #[test]
    fn unterminated_quote_names_its_start_line() {
        let err = parse("@ a\nsdesc: \"ok\"\nldesc: \"never closed\nmore\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("test.ini:3: "), "{err}");
        assert!(err.contains("never closed"), "{err}");

        let err = parse("@ a\nldesc: \"runaway\nversion: 1\n\n@ b\nsdesc: \"B\"\nversion: 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("test.ini:2: "), "{err}");
        assert!(err.contains("next package at line 5"), "{err}");
    }

    #[test]
    fn truncated_files_are_reported() {
        let err = parse("@ a\nversion: 1\n@ b\nsdesc: \"B\"\nvers")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("test.ini:5: file ends in the middle of a line"),
            "{err}"
        );

        let err = parse("@ a\nversion: 1\n@ b\nsdesc: \"B\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("test.ini:3: package b has no `version:`"),
            "{err}"
        );
        assert!(err.contains("truncated"), "{err}");
    }

    #[test]
    fn message_values_with_a_package_prefix_are_read() {
        let ini = parse("@ a\nmessage: a \"Line one\nline: two\"\nversion: 1\n").unwrap();
        assert_eq!(
            ini.package("a").unwrap().message.as_deref(),
            Some("a \"Line one\nline: two\"")
        );
    }

    #[test]
    fn versions_compare_like_cygwin() {
        use std::cmp::Ordering::*;
        assert_eq!(compare_versions("6.3", "6.10"), Less);
        assert_eq!(compare_versions("10.0", "6.3"), Greater);
        assert_eq!(compare_versions("6.3", "6.3"), Equal);
        assert_eq!(compare_versions("1.0-1", "1.0-2"), Less);
        assert_eq!(compare_versions("1.0a", "1.0"), Greater);
    }
}
