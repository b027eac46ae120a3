//! Parser for Cygwin's package index (`setup.ini`, also served as `setup.xz`
//! and `setup.zst`).
//!
//! Each stanza's sections are read the way Cygwin's setup reads them (see
//! docs/cygwin.md, "What each stanza shape means"): the unlabelled section
//! (or `[curr]`) is the current version, `[test]`/`[exp]` the test version,
//! and `[prev]` or any other label a version cygvm never installs. A stanza
//! may have no current version at all: only a test version (`byobu` in
//! 2025), or no version anywhere (obsolete stubs with only `requires:`).
//! Those parse; whether they are an error is the closure's decision. The
//! text of each stanza is kept verbatim so a reduced index can be written
//! for a local mirror.
//!
//! Truncation: a published index always ends with a newline and never ends
//! inside a quoted value, and its compressed forms carry their own end
//! markers. A file that ends mid-line, inside a quote, or whose xz/zstd stream
//! stops early is reported as truncated, and so is a last stanza that says
//! nothing installable (no `version:` and no dependency list in any
//! section) or ends on an empty `[label]` section.

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

/// A labelled version of a package that cygvm can install when asked: the
/// `[test]` (or `[exp]`) section of a stanza.
#[derive(Debug, Clone)]
pub struct Version {
    pub version: String,
    pub install: Archive,
    pub source: Option<Archive>,
    /// The section's own `depends2:`/`requires:`, else those of the section
    /// before it (setup keeps the last list it read across sections).
    pub depends: Vec<Dependency>,
    pub provides: Vec<String>,
    pub obsoletes: Vec<Dependency>,
    /// Line of the section's `[label]`.
    pub line: usize,
    /// Byte range of the section's lines after its label in [`SetupIni::text`].
    pub body: Range<usize>,
}

impl Version {
    /// The names this version satisfies besides its own; see
    /// [`Package::provided_names`].
    pub fn provided_names(&self) -> impl Iterator<Item = &str> {
        provided_names(&self.provides, &self.obsoletes)
    }
}

/// `provides:`, or without one, the names in `obsoletes:`: setup's solver
/// lets a package stand in for what it obsoletes (`SolverPool::addPackage`
/// in libsolv.cc), and real indexes rely on it (`pkg-config` obsoletes, and so
/// satisfies, `mingw64-x86_64-pkg-config`).
fn provided_names<'a>(
    provides: &'a [String],
    obsoletes: &'a [Dependency],
) -> impl Iterator<Item = &'a str> {
    let obsoleted = if provides.is_empty() { obsoletes } else { &[] };
    provides
        .iter()
        .map(String::as_str)
        .chain(obsoleted.iter().map(|d| d.name.as_str()))
}

/// One package as the index describes it: its current version in the
/// flat fields (`version` is `None` when the stanza has none), and its test
/// version, if any.
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
    /// The `[test]` version, when the stanza has one with a `version:` and
    /// an `install:` line (setup ignores a section lacking either).
    pub test: Option<Version>,
    /// Versions in `[prev]` and other labels cygvm does not install.
    pub other_versions: Vec<String>,
    /// Byte ranges of the entries of the unlabelled section that describe
    /// the package rather than one version (`sdesc:`, `ldesc:`,
    /// `category:`, `message:`, ...): what a labelled version shares.
    pub shared_entries: Vec<Range<usize>>,
    /// Body of a `[curr]` section when the current version came from one.
    pub current_body: Option<Range<usize>>,
}

impl Package {
    pub fn in_category(&self, category: &str) -> bool {
        self.categories.iter().any(|c| c == category)
    }

    /// Whether the index offers a current version (the one installed
    /// unless a test version is asked for).
    pub fn has_current(&self) -> bool {
        self.version.is_some()
    }

    /// The names the current version satisfies besides its own: its
    /// `provides:`, or without one, what it `obsoletes:`.
    pub fn provided_names(&self) -> impl Iterator<Item = &str> {
        provided_names(&self.provides, &self.obsoletes)
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
                // Only a current version provides anything by default.
                if !p.has_current() {
                    continue;
                }
                for name in p.provided_names() {
                    let list = providers.entry(name.to_string()).or_default();
                    if list.last() != Some(&i) {
                        list.push(i);
                    }
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

    /// Packages whose current version provides `name` (see
    /// [`Package::provided_names`]), in file order.
    pub fn providers(&self, name: &str) -> &[usize] {
        self.providers.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The verbatim text of a package's current section.
    pub fn stanza_text(&self, package: &Package) -> &str {
        &self.text[package.text_range.clone()]
    }

    /// The stanza as setup should read it with `body` as its only, current
    /// version: `@ name`, the stanza-level entries, then `body` (a labelled
    /// section's lines without the label).
    fn stanza_with_body(&self, package: &Package, body: &Range<usize>) -> String {
        let mut out = format!("@ {}\n", package.name);
        for r in &package.shared_entries {
            out.push_str(&self.text[r.clone()]);
        }
        out.push_str(&self.text[body.clone()]);
        out
    }

    /// The stanza text that makes setup install `package`'s current version:
    /// the current section verbatim, or rebuilt when it came from `[curr]`.
    pub fn current_stanza_text(&self, package: &Package) -> std::borrow::Cow<'_, str> {
        match &package.current_body {
            Some(body) => self.stanza_with_body(package, body).into(),
            None => self.stanza_text(package).into(),
        }
    }

    /// The stanza text that makes setup install `package`'s test version as
    /// if it were current (setup then needs no `--allow-test-packages`, and
    /// `-P name` picks it): `@ name`, the stanza-level entries, then the
    /// `[test]` section's lines without the label.
    pub fn test_stanza_text(&self, package: &Package) -> Option<String> {
        let test = package.test.as_ref()?;
        Some(self.stanza_with_body(package, &test.body))
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

/// What a section holds, by its label as setup's lexer (`inilex.ll`) names
/// them: none or `[curr]` is the current version, `[test]` and `[exp]` the
/// test version, anything else (`[prev]`, ...) a version never installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SectionKind {
    Current,
    Test,
    Other,
}

impl SectionKind {
    fn of_label(label: &str) -> Self {
        match label {
            "curr" => Self::Current,
            "test" | "exp" => Self::Test,
            _ => Self::Other,
        }
    }
}

/// The version-specific fields of the section being read.
#[derive(Default)]
struct SectionFields {
    version: Option<String>,
    install: Option<Archive>,
    source: Option<Archive>,
    requires: Option<Vec<Dependency>>,
    depends2: Option<Vec<Dependency>>,
    provides: Option<Vec<String>>,
    obsoletes: Option<Vec<Dependency>>,
    entries: usize,
}

/// Per-stanza state while its sections are read.
struct Stanza {
    pkg: Package,
    kind: SectionKind,
    /// The open section's `[label]` and its line; `None` for the unlabelled one.
    label: Option<(String, usize)>,
    /// Where the open section's lines (after its label) start.
    body_start: usize,
    fields: SectionFields,
    /// The last dependency list read; a section without one inherits it,
    /// as setup's `IniDBBuilderPackage` keeps it across sections.
    last_depends: Vec<Dependency>,
    any_version: bool,
    any_depends: bool,
}

/// Keys whose value belongs to one version, not to the package (setup's
/// `IniDBBuilderPackage::process()` resets these per version).
fn is_version_key(key: &str) -> bool {
    [
        "version",
        "install",
        "source",
        "depends",
        "depends2",
        "requires",
        "provides",
        "obsoletes",
        "conflicts",
        "build-depends",
    ]
    .iter()
    .any(|k| key.eq_ignore_ascii_case(k))
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
    /// The entry's lines, newline included.
    range: Range<usize>,
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
                    packages.push(self.finish(done, line_start, false)?);
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
                        test: None,
                        other_versions: Vec::new(),
                        shared_entries: Vec::new(),
                        current_body: None,
                    },
                    kind: SectionKind::Current,
                    label: None,
                    body_start: pos,
                    fields: SectionFields::default(),
                    last_depends: Vec::new(),
                    any_version: false,
                    any_depends: false,
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
                let Some(label) = trimmed
                    .trim_end()
                    .strip_prefix('[')
                    .and_then(|l| l.strip_suffix(']'))
                else {
                    return Err(self.err(line_no, format!("bad version section {trimmed:?}")));
                };
                self.close_section(stanza, line_start);
                stanza.kind = SectionKind::of_label(label);
                stanza.label = Some((label.to_string(), line_no));
                stanza.body_start = pos;
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
                range: line_start..pos,
            };

            match current.as_mut() {
                None => header.push((entry.key.to_string(), unquote(entry.value).to_string())),
                Some(stanza) => self.apply(stanza, &entry)?,
            }
        }

        if let Some(done) = current.take() {
            packages.push(self.finish(done, text.len(), true)?);
        }
        let header_end = header_end.unwrap_or(text.len());
        Ok(Parsed {
            header,
            header_range: 0..header_end,
            packages,
        })
    }

    fn apply(&self, stanza: &mut Stanza, e: &Entry<'_>) -> Result<(), ParseError> {
        stanza.fields.entries += 1;
        let unlabelled = stanza.label.is_none();
        let f = &mut stanza.fields;
        match e.key {
            "version" => f.version = Some(e.value.to_string()),
            // A malformed archive line anywhere means the index is damaged.
            "install" => f.install = Some(self.archive(e)?),
            "source" => f.source = Some(self.archive(e)?),
            "requires" => {
                f.requires = Some(
                    e.value
                        .split_whitespace()
                        .map(|name| Dependency {
                            name: name.to_string(),
                            constraint: None,
                        })
                        .collect(),
                )
            }
            "depends2" => f.depends2 = Some(self.dependency_list(e)?),
            "obsoletes" => f.obsoletes = Some(self.dependency_list(e)?),
            "provides" => {
                f.provides = Some(
                    self.dependency_list(e)?
                        .into_iter()
                        .map(|d| d.name)
                        .collect(),
                )
            }
            _ if !unlabelled => {}
            key => {
                // Descriptions and categories belong to the package; only
                // the unlabelled section's are read, as before any label.
                let pkg = &mut stanza.pkg;
                match key {
                    "sdesc" => pkg.sdesc = Some(unquote(e.value).to_string()),
                    "ldesc" => pkg.ldesc = Some(unquote(e.value).to_string()),
                    "message" => pkg.message = Some(e.value.to_string()),
                    "category" => {
                        pkg.categories = e.value.split_whitespace().map(str::to_string).collect()
                    }
                    _ => {}
                }
                if !is_version_key(key) {
                    pkg.shared_entries.push(e.range.clone());
                }
            }
        }
        Ok(())
    }

    /// Files the open section's fields as the version its label says.
    fn close_section(&self, stanza: &mut Stanza, end: usize) {
        let f = std::mem::take(&mut stanza.fields);
        let own = f.depends2.or(f.requires);
        stanza.any_depends |= own.is_some();
        stanza.any_version |= f.version.is_some();
        if let Some(own) = own {
            stanza.last_depends = own;
        }
        let depends = stanza.last_depends.clone();
        let pkg = &mut stanza.pkg;
        if stanza.label.is_none() {
            pkg.text_range.end = end;
        }
        // Several sections of one kind: the highest version wins, a tie goes
        // to the later one (setup's `packagemeta::add_version`).
        let supersedes = |new: &Option<String>, old: Option<&str>| match (new, old) {
            (Some(new), Some(old)) => compare_versions(new, old).is_ge(),
            (_, None) => true,
            (None, Some(_)) => false,
        };
        match stanza.kind {
            SectionKind::Current if supersedes(&f.version, pkg.version.as_deref()) => {
                pkg.other_versions.extend(pkg.version.take());
                pkg.version = f.version;
                pkg.install = f.install;
                pkg.source = f.source;
                pkg.depends = depends;
                pkg.provides = f.provides.unwrap_or_default();
                pkg.obsoletes = f.obsoletes.unwrap_or_default();
                pkg.current_body = stanza.label.as_ref().map(|_| stanza.body_start..end);
            }
            SectionKind::Test
                if f.install.is_some()
                    && supersedes(&f.version, pkg.test.as_ref().map(|t| t.version.as_str())) =>
            {
                if let (Some(version), Some(install)) = (f.version, f.install) {
                    pkg.other_versions
                        .extend(pkg.test.take().map(|t| t.version));
                    pkg.test = Some(Version {
                        version,
                        install,
                        source: f.source,
                        depends,
                        provides: f.provides.unwrap_or_default(),
                        obsoletes: f.obsoletes.unwrap_or_default(),
                        line: stanza.label.as_ref().map_or(pkg.line, |l| l.1),
                        body: stanza.body_start..end,
                    });
                }
            }
            _ => pkg.other_versions.extend(f.version),
        }
    }

    fn finish(&self, mut stanza: Stanza, end: usize, last: bool) -> Result<Package, ParseError> {
        let empty_label = match &stanza.label {
            Some((label, line)) if stanza.fields.entries == 0 => Some((label.clone(), *line)),
            _ => None,
        };
        self.close_section(&mut stanza, end);
        let pkg = stanza.pkg;
        // Mid-file, a stanza without any version is a stub the closure
        // rejects only if it needs it; at the end of the file the same shape
        // is what a cut at a line boundary leaves.
        if last {
            if let Some((label, line)) = empty_label {
                return Err(self.err(
                    line,
                    format!(
                        "section [{label}] of package {} is empty and ends the file: the index is truncated (download it again)",
                        pkg.name
                    ),
                ));
            }
            if !stanza.any_version && !stanza.any_depends {
                return Err(self.err(
                    pkg.line,
                    format!(
                        "package {} has no `version:` and no dependency list in any section and ends the file: the index is truncated (download it again)",
                        pkg.name
                    ),
                ));
            }
        }
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

        // A cut at a line boundary inside the last stanza.
        let err = parse("@ a\nversion: 1\n@ b\nsdesc: \"B\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("test.ini:3: package b has no `version:`"),
            "{err}"
        );
        assert!(err.contains("truncated"), "{err}");
        let err = parse("@ a\nversion: 1\n@ b\n").unwrap_err().to_string();
        assert!(err.starts_with("test.ini:3: package b"), "{err}");
        assert!(err.contains("truncated"), "{err}");
        let err = parse("@ a\nversion: 1\n[prev]\n").unwrap_err().to_string();
        assert!(
            err.starts_with("test.ini:3: section [prev] of package a is empty"),
            "{err}"
        );
        assert!(err.contains("truncated"), "{err}");

        // The same shapes mid-file are stubs, and a stub that names its
        // replacement may end the file.
        let ini = parse("@ a\nsdesc: \"A\"\n\n@ b\n[prev]\n@ c\nversion: 1\n").unwrap();
        assert_eq!(ini.packages.len(), 3);
        let ini = parse("@ a\nversion: 1\n@ stub\nrequires: a\n").unwrap();
        assert_eq!(ini.package("stub").unwrap().version, None);
    }

    #[test]
    fn stanzas_without_a_current_version_parse() {
        let ini = parse(&format!(
            "@ byobu\nsdesc: \"Byobu\"\ncategory: Utils\n[test]\nversion: 6.13-1\ninstall: noarch/byobu-6.13-1.tar.xz 7 {H512}\ndepends2: tmux\n[test]\nversion: 6.12-1\ninstall: noarch/byobu-6.12-1.tar.xz 6 {H512}\n\n@ curl-devel\nsdesc: \"Obsolete\"\ncategory: _obsolete\nrequires: libcurl-devel\n\n@ oldonly\n[prev]\nversion: 1-1\ninstall: o/oldonly-1-1.tar.xz 1 {H512}\nrequires: x\n\n@ tmux\nversion: 3.5-1\ninstall: t/tmux-3.5-1.tar.xz 5 {H512}\n"
        ))
        .unwrap();
        assert_eq!(ini.packages.len(), 4);
        let byobu = ini.package("byobu").unwrap();
        assert_eq!(byobu.version, None);
        assert!(!byobu.has_current());
        assert_eq!(byobu.categories, ["Utils"]);
        let test = byobu.test.as_ref().unwrap();
        // The highest of several [test] versions, wherever it stands.
        assert_eq!(test.version, "6.13-1");
        assert_eq!(test.install.path, "noarch/byobu-6.13-1.tar.xz");
        assert_eq!(test.depends[0].name, "tmux");
        assert_eq!(test.line, 4);
        assert_eq!(byobu.other_versions, ["6.12-1"]);

        let stub = ini.package("curl-devel").unwrap();
        assert_eq!((stub.version.as_ref(), stub.test.is_some()), (None, false));
        assert_eq!(stub.depends[0].name, "libcurl-devel");
        let old = ini.package("oldonly").unwrap();
        assert_eq!(
            (old.version.as_ref(), &old.other_versions[..]),
            (None, &["1-1".to_string()][..])
        );
        // Only current versions provide and are found as providers.
        assert!(ini.providers("libcurl-devel").is_empty());
    }

    #[test]
    fn labels_mean_what_they_mean_to_setup() {
        let ini = parse(&format!(
            "@ a\nsdesc: \"A\"\nversion: 2\ninstall: a-2.tar.xz 2 {H512}\nrequires: b c\n[prev]\nversion: 1\ninstall: a-1.tar.xz 1 {H512}\n[exp]\nversion: 3\ninstall: a-3.tar.xz 3 {H512}\n\n@ b\n[curr]\nversion: 1\ninstall: b-1.tar.xz 1 {H512}\n[test]\nversion: 2\n\n@ c\nversion: 1\n"
        ))
        .unwrap();
        let a = ini.package("a").unwrap();
        assert_eq!(a.version.as_deref(), Some("2"));
        // [exp] is a test version; it inherits the dependencies read before
        // it when it names none (the 2016 index's [test] sections do).
        let t = a.test.as_ref().unwrap();
        assert_eq!(t.version, "3");
        let deps: Vec<&str> = t.depends.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(deps, ["b", "c"]);
        assert_eq!(a.other_versions, ["1"]);
        let b = ini.package("b").unwrap();
        assert_eq!(b.version.as_deref(), Some("1"));
        assert_eq!(b.install.as_ref().unwrap().path, "b-1.tar.xz");
        // A test section without `install:` offers nothing (setup drops it).
        assert!(b.test.is_none());
        assert_eq!(
            ini.current_stanza_text(b),
            format!("@ b\nversion: 1\ninstall: b-1.tar.xz 1 {H512}\n")
        );
    }

    #[test]
    fn a_test_version_is_rewritten_as_the_current_one() {
        let ini = parse(&format!(
            "@ a\nsdesc: \"A\"\nldesc: \"Long\n[test]\nstill text\"\nversion: 1\ninstall: a-1.tar.xz 1 {H512}\ndepends2: old\ncategory: Devel\nmessage: a \"Note\"\n[prev]\nversion: 0\n[test]\nversion: 2\ninstall: a-2.tar.xz 2 {H512}\ndepends2: new\n"
        ))
        .unwrap();
        let a = ini.package("a").unwrap();
        let text = ini.test_stanza_text(a).unwrap();
        assert_eq!(
            text,
            format!(
                "@ a\nsdesc: \"A\"\nldesc: \"Long\n[test]\nstill text\"\ncategory: Devel\nmessage: a \"Note\"\nversion: 2\ninstall: a-2.tar.xz 2 {H512}\ndepends2: new\n"
            )
        );
        let again = parse(&text).unwrap();
        let a2 = again.package("a").unwrap();
        assert_eq!(a2.version.as_deref(), Some("2"));
        assert!(a2.test.is_none());
        assert_eq!(a2.depends[0].name, "new");
        assert_eq!(a2.categories, ["Devel"]);
        assert_eq!(a2.ldesc.as_deref(), Some("Long\n[test]\nstill text"));
        assert!(ini.test_stanza_text(ini.package("a").unwrap()).is_some());
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
