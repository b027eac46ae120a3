//! The Cygwin ISO: ISO 9660 with a Joliet tree (what Windows and setup.exe
//! read) and Rock Ridge on the primary tree (what Linux tools read).
//!
//! - Joliet names are written up to 103 characters, like `mkisofs
//!   -joliet-long`: real Cygwin archive names exceed Joliet's official 64, and
//!   setup.exe must find every archive under the exact name setup.ini gives.
//!   Longer names are an error, never cut.
//! - Primary identifiers are upper-case d-characters of at most 31 characters
//!   (ISO 9660 level 2), mangled deterministically; the real name is in Rock
//!   Ridge `NM`.
//! - Files of 4 GiB or more are rejected (they would need multi-extent files).
//! - Deterministic: entries are sorted, every timestamp is 2000-01-01 00:00:00
//!   UTC, and nothing is read from the clock or the source files' metadata
//!   except their sizes. Modes are 0444 for files and 0555 for directories.
//! - Streaming: metadata is laid out first, then file contents are copied in
//!   1 MiB chunks, in path order, into a temporary file that is renamed into
//!   place once complete.

mod encode;
mod names;

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::fsutil::AtomicFile;
use encode::{Posix, SECTOR};
pub use names::{MAX_DIR_LEVEL, MAX_NAME_CHARS, MAX_PATH_CHARS};

/// Where a file's contents come from.
#[derive(Debug, Clone)]
pub enum FileSource {
    Bytes(Vec<u8>),
    /// Read (and sized) only when the image is written.
    Path(PathBuf),
}

#[derive(Debug, Error)]
pub enum IsoError {
    #[error("invalid ISO volume label {label:?}: {reason} (use at most 32 of A-Z, 0-9 and _)")]
    BadLabel { label: String, reason: &'static str },
    #[error("cannot put {path:?} on the ISO: {reason}")]
    BadPath { path: String, reason: String },
    #[error("{path:?} is added to the ISO twice")]
    Duplicate { path: String },
    #[error("{path:?} is added to the ISO both as a file and as a directory")]
    FileAndDir { path: String },
    #[error("cannot read {path} for the ISO")]
    Source {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path:?} is {size} bytes; files of 4 GiB or more need multi-extent ISO 9660, which cygvm does not write"
    )]
    FileTooLarge { path: String, size: u64 },
    #[error(
        "{path} changed size while the ISO was written: expected {expected} bytes, got {actual}"
    )]
    SourceChanged {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("the ISO would hold {dirs} directories; ISO 9660 path tables allow 65535")]
    TooManyDirectories { dirs: usize },
    #[error("the ISO would be larger than ISO 9660's 8 TiB")]
    ImageTooLarge,
    #[error("writing the ISO image {path} failed")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What [`IsoBuilder::write_to`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsoSummary {
    pub files: usize,
    /// Directories including the root.
    pub directories: usize,
    /// Sum of the file sizes.
    pub payload_bytes: u64,
    pub image_bytes: u64,
}

/// Collects files under ISO paths, then writes the image in one pass.
#[derive(Debug)]
pub struct IsoBuilder {
    label: String,
    root: DirNode,
}

#[derive(Debug, Default)]
struct DirNode {
    children: BTreeMap<String, Node>,
}

#[derive(Debug)]
enum Node {
    Dir(DirNode),
    File(FileSource),
}

impl IsoBuilder {
    /// `volume_label` goes into the primary and the Joliet descriptor (Joliet
    /// holds only its first 16 characters).
    pub fn new(volume_label: &str) -> Result<Self, IsoError> {
        let bad = |reason| IsoError::BadLabel {
            label: volume_label.to_string(),
            reason,
        };
        if volume_label.is_empty() {
            return Err(bad("empty"));
        }
        if volume_label.len() > 32 {
            return Err(bad("longer than 32 characters"));
        }
        if !volume_label
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(bad("not an ISO 9660 d-character string"));
        }
        Ok(Self {
            label: volume_label.to_string(),
            root: DirNode::default(),
        })
    }

    /// Adds a file at `iso_path` (`/`-separated); missing directories are
    /// implied.
    pub fn add_file(&mut self, iso_path: &str, source: FileSource) -> Result<(), IsoError> {
        let comps = split_path(iso_path, false)?;
        let (name, parents) = comps.split_last().expect("split_path returns a name");
        let dir = self.dir_mut(parents)?;
        match dir.children.entry(name.clone()) {
            Entry::Vacant(v) => {
                v.insert(Node::File(source));
                Ok(())
            }
            Entry::Occupied(o) => Err(match o.get() {
                Node::File(_) => IsoError::Duplicate {
                    path: comps.join("/"),
                },
                Node::Dir(_) => IsoError::FileAndDir {
                    path: comps.join("/"),
                },
            }),
        }
    }

    /// Adds a directory, empty unless files are added below it.
    pub fn add_dir(&mut self, iso_dir: &str) -> Result<(), IsoError> {
        let comps = split_path(iso_dir, true)?;
        self.dir_mut(&comps).map(|_| ())
    }

    /// Adds every file and directory below `host_dir` under `iso_dir`
    /// (`""` for the root). Symbolic links are followed.
    pub fn add_tree(&mut self, iso_dir: &str, host_dir: &Path) -> Result<(), IsoError> {
        self.add_dir(iso_dir)?;
        let read_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| IsoError::Source { path, source }
        };
        let mut entries = fs::read_dir(host_dir)
            .and_then(|rd| rd.collect::<io::Result<Vec<_>>>())
            .map_err(read_err(host_dir))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let host = entry.path();
            let Ok(name) = entry.file_name().into_string() else {
                return Err(IsoError::BadPath {
                    path: host.display().to_string(),
                    reason: "the name is not UTF-8".into(),
                });
            };
            let iso = match iso_dir.trim_matches('/') {
                "" => name,
                dir => format!("{dir}/{name}"),
            };
            let meta = fs::metadata(&host).map_err(read_err(&host))?;
            if meta.is_dir() {
                self.add_tree(&iso, &host)?;
            } else if meta.is_file() {
                self.add_file(&iso, FileSource::Path(host))?;
            } else {
                return Err(IsoError::BadPath {
                    path: host.display().to_string(),
                    reason: "not a regular file or directory".into(),
                });
            }
        }
        Ok(())
    }

    /// Writes the image to `out` atomically (temp file, fsync, rename), mode 0644.
    pub fn write_to(&self, out: &Path) -> Result<IsoSummary, IsoError> {
        let plan = Plan::new(self)?;
        let write_err = |source| IsoError::Write {
            path: out.to_path_buf(),
            source,
        };
        let mut atomic = AtomicFile::create(out).map_err(write_err)?;
        atomic.set_mode(0o644).map_err(write_err)?;
        {
            let mut sink = Sink {
                w: BufWriter::with_capacity(COPY_CHUNK, atomic.file()),
                pos: 0,
                out,
                chunk: vec![0u8; COPY_CHUNK],
            };
            plan.write(&mut sink)?;
            sink.w.flush().map_err(write_err)?;
        }
        atomic.commit().map_err(write_err)?;
        Ok(plan.summary())
    }

    fn dir_mut(&mut self, comps: &[String]) -> Result<&mut DirNode, IsoError> {
        let mut dir = &mut self.root;
        for (i, comp) in comps.iter().enumerate() {
            let node = dir
                .children
                .entry(comp.clone())
                .or_insert_with(|| Node::Dir(DirNode::default()));
            dir = match node {
                Node::Dir(d) => d,
                Node::File(_) => {
                    return Err(IsoError::FileAndDir {
                        path: comps[..=i].join("/"),
                    });
                }
            };
        }
        Ok(dir)
    }
}

const COPY_CHUNK: usize = 1 << 20;

/// Splits and checks an ISO path; a directory path may be empty (the root).
fn split_path(path: &str, is_dir: bool) -> Result<Vec<String>, IsoError> {
    let bad = |reason: String| IsoError::BadPath {
        path: path.to_string(),
        reason,
    };
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty() {
        return if is_dir {
            Ok(Vec::new())
        } else {
            Err(bad("empty path".into()))
        };
    }
    let comps: Vec<String> = trimmed.split('/').map(str::to_string).collect();
    for comp in &comps {
        names::check_component(comp).map_err(|r| bad(format!("{r}: {comp:?}")))?;
    }
    // The root is level 1; a file lives at its parent's level.
    let level = if is_dir { comps.len() + 1 } else { comps.len() };
    if level > MAX_DIR_LEVEL {
        return Err(bad(format!(
            "nested {level} directory levels deep; ISO 9660 allows {MAX_DIR_LEVEL}"
        )));
    }
    if trimmed.len() > MAX_PATH_CHARS {
        return Err(bad(format!(
            "the path is {} characters; at most {MAX_PATH_CHARS} are allowed",
            trimmed.len()
        )));
    }
    Ok(comps)
}

// ---------------------------------------------------------------------------
// Layout: the flattened tree, one view per namespace, and sector addresses.

struct FlatDir<'a> {
    name: &'a str,
    parent: usize,
    subdirs: usize,
    /// Children in real-name order.
    children: Vec<Child>,
}

struct FlatFile<'a> {
    name: &'a str,
    source: &'a FileSource,
    size: u64,
    extent: u32,
}

#[derive(Clone, Copy)]
enum Child {
    Dir(usize),
    File(usize),
}

/// One directory hierarchy (primary with Rock Ridge, or Joliet) over the
/// same directories and file extents.
struct Tree {
    rock_ridge: bool,
    /// Identifier of each directory (by flat index) in its parent.
    dir_ident: Vec<Vec<u8>>,
    file_ident: Vec<Vec<u8>>,
    /// Children of each directory sorted by identifier.
    entries: Vec<Vec<Child>>,
    /// Path table order: breadth first, siblings by identifier.
    order: Vec<usize>,
    number: Vec<u16>,
    sectors: Vec<u32>,
    extent: Vec<u32>,
    path_table_size: u32,
    path_table_l: u32,
    path_table_m: u32,
}

struct Plan<'a> {
    label: &'a str,
    dirs: Vec<FlatDir<'a>>,
    files: Vec<FlatFile<'a>>,
    primary: Tree,
    joliet: Tree,
    er_sector: u32,
    total_sectors: u32,
}

impl<'a> Plan<'a> {
    fn new(builder: &'a IsoBuilder) -> Result<Self, IsoError> {
        let mut dirs = vec![FlatDir {
            name: "",
            parent: 0,
            subdirs: 0,
            children: Vec::new(),
        }];
        let mut files = Vec::new();
        flatten(&builder.root, 0, "", &mut dirs, &mut files)?;
        if dirs.len() > u16::MAX as usize {
            return Err(IsoError::TooManyDirectories { dirs: dirs.len() });
        }

        let mut primary = Tree::new(&dirs, &files, true);
        let mut joliet = Tree::new(&dirs, &files, false);

        let mut next: u64 = 16 + 3; // system area, PVD, SVD, terminator
        for tree in [&mut primary, &mut joliet] {
            let pt = sectors_for(tree.path_table_size as u64);
            tree.path_table_l = next as u32;
            tree.path_table_m = (next + pt) as u32;
            next += 2 * pt;
        }
        primary.place_dirs(&mut next);
        let er_sector = next as u32;
        next += 1;
        joliet.place_dirs(&mut next);
        for file in &mut files {
            if file.size > 0 {
                file.extent = u32::try_from(next).map_err(|_| IsoError::ImageTooLarge)?;
                next += sectors_for(file.size);
            }
        }
        let total_sectors = u32::try_from(next).map_err(|_| IsoError::ImageTooLarge)?;
        Ok(Plan {
            label: &builder.label,
            dirs,
            files,
            primary,
            joliet,
            er_sector,
            total_sectors,
        })
    }

    fn summary(&self) -> IsoSummary {
        IsoSummary {
            files: self.files.len(),
            directories: self.dirs.len(),
            payload_bytes: self.files.iter().map(|f| f.size).sum(),
            image_bytes: self.total_sectors as u64 * SECTOR as u64,
        }
    }

    fn write(&self, sink: &mut Sink) -> Result<(), IsoError> {
        sink.put(&[0u8; 16 * SECTOR])?;
        for tree in [&self.primary, &self.joliet] {
            let root = 0;
            sink.put(&encode::volume_descriptor(&encode::VolumeDescriptor {
                joliet: !tree.rock_ridge,
                volume_id: self.label,
                volume_sectors: self.total_sectors,
                path_table_size: tree.path_table_size,
                path_table_l: tree.path_table_l,
                path_table_m: tree.path_table_m,
                root_extent: tree.extent[root],
                root_size: tree.sectors[root] * SECTOR as u32,
            }))?;
        }
        sink.put(&encode::terminator())?;
        for tree in [&self.primary, &self.joliet] {
            for big_endian in [false, true] {
                debug_assert_eq!(
                    sink.pos,
                    if big_endian {
                        tree.path_table_m
                    } else {
                        tree.path_table_l
                    } as u64
                        * SECTOR as u64
                );
                let mut table = Vec::with_capacity(tree.path_table_size as usize);
                for &d in &tree.order {
                    let parent = tree.number[self.dirs[d].parent];
                    table.extend(encode::path_record(
                        &tree.dir_ident[d],
                        tree.extent[d],
                        parent,
                        big_endian,
                    ));
                }
                sink.put(&table)?;
                sink.pad()?;
            }
        }
        self.write_dirs(&self.primary, sink)?;
        debug_assert_eq!(sink.pos, self.er_sector as u64 * SECTOR as u64);
        sink.put(&encode::er())?;
        sink.pad()?;
        self.write_dirs(&self.joliet, sink)?;
        for file in &self.files {
            debug_assert!(file.size == 0 || sink.pos == file.extent as u64 * SECTOR as u64);
            sink.copy_file(file)?;
        }
        debug_assert_eq!(sink.pos, self.total_sectors as u64 * SECTOR as u64);
        Ok(())
    }

    fn write_dirs(&self, tree: &Tree, sink: &mut Sink) -> Result<(), IsoError> {
        for &d in &tree.order {
            debug_assert_eq!(sink.pos, tree.extent[d] as u64 * SECTOR as u64);
            let mut extent = Vec::with_capacity(tree.sectors[d] as usize * SECTOR);
            for record in self.records(tree, d) {
                let used = extent.len() % SECTOR;
                if used + record.len() > SECTOR {
                    extent.resize(extent.len() + SECTOR - used, 0);
                }
                extent.extend_from_slice(&record);
            }
            extent.resize(tree.sectors[d] as usize * SECTOR, 0);
            sink.put(&extent)?;
        }
        Ok(())
    }

    /// The directory records of directory `d`, in order.
    fn records(&self, tree: &'a Tree, d: usize) -> impl Iterator<Item = Vec<u8>> + '_ {
        let dir_size = move |d: usize| tree.sectors[d] * SECTOR as u32;
        let posix = |d: usize| Posix {
            is_dir: true,
            links: 2 + self.dirs[d].subdirs as u32,
        };
        let rr = tree.rock_ridge;
        let parent = self.dirs[d].parent;
        let dot_su = if rr {
            encode::dot_su(&posix(d), (d == 0).then_some(self.er_sector))
        } else {
            Vec::new()
        };
        let dotdot_su = if rr {
            encode::dot_su(&posix(parent), None)
        } else {
            Vec::new()
        };
        let dots = [
            encode::dir_record(&[0], tree.extent[d], dir_size(d), true, &dot_su),
            encode::dir_record(
                &[1],
                tree.extent[parent],
                dir_size(parent),
                true,
                &dotdot_su,
            ),
        ];
        let children = tree.entries[d].iter().map(move |&child| match child {
            Child::Dir(c) => {
                let su = if rr {
                    encode::named_su(&posix(c), self.dirs[c].name)
                } else {
                    Vec::new()
                };
                encode::dir_record(&tree.dir_ident[c], tree.extent[c], dir_size(c), true, &su)
            }
            Child::File(f) => {
                let file = &self.files[f];
                let su = if rr {
                    let p = Posix {
                        is_dir: false,
                        links: 1,
                    };
                    encode::named_su(&p, file.name)
                } else {
                    Vec::new()
                };
                encode::dir_record(
                    &tree.file_ident[f],
                    file.extent,
                    file.size as u32,
                    false,
                    &su,
                )
            }
        });
        dots.into_iter().chain(children)
    }
}

fn flatten<'a>(
    node: &'a DirNode,
    id: usize,
    prefix: &str,
    dirs: &mut Vec<FlatDir<'a>>,
    files: &mut Vec<FlatFile<'a>>,
) -> Result<(), IsoError> {
    for (name, child) in &node.children {
        let iso_path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        match child {
            Node::Dir(sub) => {
                let sub_id = dirs.len();
                dirs.push(FlatDir {
                    name,
                    parent: id,
                    subdirs: 0,
                    children: Vec::new(),
                });
                dirs[id].subdirs += 1;
                dirs[id].children.push(Child::Dir(sub_id));
                flatten(sub, sub_id, &iso_path, dirs, files)?;
            }
            Node::File(source) => {
                let size = match source {
                    FileSource::Bytes(b) => b.len() as u64,
                    FileSource::Path(p) => {
                        let meta = fs::metadata(p).map_err(|source| IsoError::Source {
                            path: p.clone(),
                            source,
                        })?;
                        if !meta.is_file() {
                            return Err(IsoError::Source {
                                path: p.clone(),
                                source: io::Error::other("not a regular file"),
                            });
                        }
                        meta.len()
                    }
                };
                if size > u32::MAX as u64 {
                    return Err(IsoError::FileTooLarge {
                        path: iso_path,
                        size,
                    });
                }
                dirs[id].children.push(Child::File(files.len()));
                files.push(FlatFile {
                    name,
                    source,
                    size,
                    extent: 0,
                });
            }
        }
    }
    Ok(())
}

impl Tree {
    fn new(dirs: &[FlatDir], files: &[FlatFile], rock_ridge: bool) -> Tree {
        let mut dir_ident = vec![vec![0u8]; dirs.len()];
        let mut file_ident = vec![Vec::new(); files.len()];
        let mut entries = Vec::with_capacity(dirs.len());
        for dir in dirs {
            let named: Vec<(&str, bool)> = dir
                .children
                .iter()
                .map(|c| match *c {
                    Child::Dir(d) => (dirs[d].name, true),
                    Child::File(f) => (files[f].name, false),
                })
                .collect();
            let idents = if rock_ridge {
                names::primary_idents(&named)
            } else {
                named.iter().map(|&(n, _)| names::joliet_ident(n)).collect()
            };
            for (child, ident) in dir.children.iter().zip(idents) {
                match *child {
                    Child::Dir(d) => dir_ident[d] = ident,
                    Child::File(f) => file_ident[f] = ident,
                }
            }
            let mut sorted = dir.children.clone();
            sorted.sort_by(|a, b| {
                let key = |c: &Child| match *c {
                    Child::Dir(d) => &dir_ident[d],
                    Child::File(f) => &file_ident[f],
                };
                key(a).cmp(key(b))
            });
            entries.push(sorted);
        }

        let mut order = vec![0];
        let mut i = 0;
        while i < order.len() {
            let d = order[i];
            order.extend(entries[d].iter().filter_map(|c| match *c {
                Child::Dir(sub) => Some(sub),
                Child::File(_) => None,
            }));
            i += 1;
        }
        let mut number = vec![0u16; dirs.len()];
        for (n, &d) in order.iter().enumerate() {
            number[d] = (n + 1) as u16;
        }

        let su_named = |name: &str| {
            if rock_ridge {
                encode::named_su_len(name)
            } else {
                0
            }
        };
        let sectors = (0..dirs.len())
            .map(|d| {
                let (dot, dotdot) = match (rock_ridge, d) {
                    (false, _) => (0, 0),
                    (true, 0) => (encode::ROOT_DOT_SU, encode::DOT_SU),
                    (true, _) => (encode::DOT_SU, encode::DOT_SU),
                };
                let lens = [encode::record_len(1, dot), encode::record_len(1, dotdot)]
                    .into_iter()
                    .chain(entries[d].iter().map(|c| match *c {
                        Child::Dir(s) => {
                            encode::record_len(dir_ident[s].len(), su_named(dirs[s].name))
                        }
                        Child::File(f) => {
                            encode::record_len(file_ident[f].len(), su_named(files[f].name))
                        }
                    }));
                packed_sectors(lens)
            })
            .collect();
        let path_table_size = order
            .iter()
            .map(|&d| encode::path_record_len(dir_ident[d].len()) as u32)
            .sum();
        Tree {
            rock_ridge,
            dir_ident,
            file_ident,
            entries,
            order,
            number,
            sectors,
            extent: vec![0; dirs.len()],
            path_table_size,
            path_table_l: 0,
            path_table_m: 0,
        }
    }

    fn place_dirs(&mut self, next: &mut u64) {
        for &d in &self.order {
            self.extent[d] = *next as u32;
            *next += self.sectors[d] as u64;
        }
    }
}

/// Sectors taken by directory records that may not straddle a sector.
fn packed_sectors(lens: impl Iterator<Item = usize>) -> u32 {
    let mut sectors = 1;
    let mut used = 0;
    for len in lens {
        if used + len > SECTOR {
            sectors += 1;
            used = 0;
        }
        used += len;
    }
    sectors
}

fn sectors_for(bytes: u64) -> u64 {
    bytes.div_ceil(SECTOR as u64)
}

/// The output stream: buffered, position-tracked, errors naming the image.
struct Sink<'a> {
    w: BufWriter<&'a mut File>,
    pos: u64,
    out: &'a Path,
    chunk: Vec<u8>,
}

impl Sink<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), IsoError> {
        self.w.write_all(bytes).map_err(|source| IsoError::Write {
            path: self.out.to_path_buf(),
            source,
        })?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Zero-fills to the next sector boundary.
    fn pad(&mut self) -> Result<(), IsoError> {
        let rem = (self.pos % SECTOR as u64) as usize;
        if rem != 0 {
            self.put(&[0u8; SECTOR][..SECTOR - rem])?;
        }
        Ok(())
    }

    fn copy_file(&mut self, file: &FlatFile) -> Result<(), IsoError> {
        match file.source {
            FileSource::Bytes(bytes) => self.put(bytes)?,
            FileSource::Path(path) => {
                let read_err = |source| IsoError::Source {
                    path: path.clone(),
                    source,
                };
                let mut src = File::open(path).map_err(read_err)?;
                let mut left = file.size;
                let mut chunk = std::mem::take(&mut self.chunk);
                while left > 0 {
                    let want = left.min(chunk.len() as u64) as usize;
                    let n = match src.read(&mut chunk[..want]) {
                        Ok(0) => {
                            return Err(IsoError::SourceChanged {
                                path: path.clone(),
                                expected: file.size,
                                actual: file.size - left,
                            });
                        }
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(read_err(e)),
                    };
                    self.put(&chunk[..n])?;
                    left -= n as u64;
                }
                self.chunk = chunk;
            }
        }
        self.pad()
    }
}
