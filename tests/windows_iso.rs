//! The image list of a Windows ISO, read from WIMs made by wimlib and ISOs
//! made by xorriso (ISO 9660 + Joliet) and genisoimage (UDF bridge), and the
//! edition check through the `cygvm` binary.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use cygvm::media::wim::{WimImage, write_wim};
use cygvm::media::windows_iso::{WindowsIsoError, images_in_iso, images_in_reader, select_image};

/// Whether `tool` runs; if not, the test says why it is skipped.
fn have(tool: &str, package: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() || !o.stdout.is_empty() || !o.stderr.is_empty());
    if !ok {
        eprintln!("skipped: {tool} is not installed (Debian package {package})");
    }
    ok
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn image(index: u32, name: &str, edition: &str) -> WimImage {
    WimImage {
        index,
        name: name.into(),
        edition_id: Some(edition.into()),
        installation_type: Some("Client".into()),
        display_name: None,
    }
}

/// A two-image WIM made by wimlib: "Windows 11 Home" (Core) and
/// "Windows 11 Pro" (Professional).
fn wimlib_wim(dir: &Path, name: &str, solid: bool) -> PathBuf {
    let content = dir.join("content");
    std::fs::create_dir_all(&content).unwrap();
    std::fs::write(content.join("readme.txt"), "hello").unwrap();
    let wim = dir.join(name);
    let mut capture = Command::new("wimcapture");
    capture
        .arg(&content)
        .arg(&wim)
        .arg("Windows 11 Home")
        .args([
            "--image-property",
            "WINDOWS/EDITIONID=Core",
            "--image-property",
            "WINDOWS/INSTALLATIONTYPE=Client",
        ]);
    if solid {
        capture.arg("--solid");
    }
    run(&mut capture);
    run(Command::new("wimappend")
        .arg(&content)
        .arg(&wim)
        .arg("Windows 11 Pro")
        .args([
            "--image-property",
            "WINDOWS/EDITIONID=Professional",
            "--image-property",
            "DISPLAYNAME=Windows 11 Pro",
        ]));
    wim
}

fn expected_wimlib_images() -> Vec<WimImage> {
    vec![
        image(1, "Windows 11 Home", "Core"),
        WimImage {
            index: 2,
            name: "Windows 11 Pro".into(),
            edition_id: Some("Professional".into()),
            installation_type: None,
            display_name: Some("Windows 11 Pro".into()),
        },
    ]
}

/// A tree with `wim` at `rel` (e.g. "sources/install.wim") and a README.
fn tree(dir: &Path, wim: Option<&Path>, rel: &str) -> PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(
        root.join("README.TXT"),
        "This disc contains a UDF file system.",
    )
    .unwrap();
    if let Some(wim) = wim {
        let to = root.join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(wim, to).unwrap();
    }
    root
}

/// Makes an ISO of a directory tree.
type MakeIso = fn(&Path, &Path);

/// ISO 9660 + Joliet, no Rock Ridge (what Windows reads).
fn xorriso_iso(root: &Path, iso: &Path) {
    run(Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-J", "-V", "TEST", "-o"])
        .arg(iso)
        .arg(root));
}

/// UDF bridge (ISO 9660 + Joliet + UDF 1.02), as oscdimg lays out Windows ISOs.
fn udf_iso(root: &Path, iso: &Path) {
    run(Command::new("genisoimage")
        .args(["-quiet", "-udf", "-J", "-V", "TEST", "-o"])
        .arg(iso)
        .arg(root));
}

/// Makes a UDF bridge disc UDF-only: its ISO 9660 volume descriptors are
/// wiped (sectors 16 onwards until the UDF recognition sequence).
fn wipe_iso9660(iso: &Path) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .open(iso)
        .unwrap();
    let mut sector = [0u8; 2048];
    for n in 16..32u64 {
        f.read_exact_at(&mut sector, n * 2048).unwrap();
        if &sector[1..6] == b"CD001" {
            f.write_all_at(&[0u8; 2048], n * 2048).unwrap();
        }
    }
}

#[test]
fn wimlib_wims_read_back() {
    if !have("wimcapture", "wimtools") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, solid) in [("install.wim", false), ("install.esd", true)] {
        let wim = wimlib_wim(dir.path(), name, solid);
        let images = cygvm::media::wim::read_images(&mut File::open(&wim).unwrap()).unwrap();
        assert_eq!(images, expected_wimlib_images(), "{name}");
    }
}

#[test]
fn written_wim_is_read_by_wimlib() {
    if !have("wiminfo", "wimtools") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let wim = dir.path().join("install.wim");
    let images = vec![
        image(1, "Windows 11 Home", "Core"),
        image(2, "Windows 11 Pro", "Professional"),
        WimImage {
            display_name: Some("Windows Server 2022 Standard (Desktop Experience)".into()),
            installation_type: Some("Server".into()),
            ..image(3, "Windows Server 2022 SERVERSTANDARD", "ServerStandard")
        },
    ];
    write_wim(&wim, &images).unwrap();

    let info = run(Command::new("wiminfo").arg(&wim));
    for i in &images {
        assert!(
            info.contains(&format!(
                "Index:                  {}\nName:                   {}\n",
                i.index, i.name
            )),
            "{info}"
        );
        assert!(
            info.contains(&format!(
                "Edition ID:             {}",
                i.edition_id.as_deref().unwrap()
            )),
            "{info}"
        );
    }
    assert!(info.contains("Image Count:    3"), "{info}");
    assert!(
        info.contains("Display Name:           Windows Server 2022 Standard (Desktop Experience)"),
        "{info}"
    );
    // wimverify loads every image's metadata resource and checks its SHA-1.
    run(Command::new("wimverify").arg(&wim));
    // And wimlib's own rewrite of it still lists the same images.
    let copy = dir.path().join("copy.wim");
    run(Command::new("wimexport").arg(&wim).arg("all").arg(&copy));
    let back = cygvm::media::wim::read_images(&mut File::open(&copy).unwrap()).unwrap();
    assert_eq!(
        back.iter().map(|i| &i.name).collect::<Vec<_>>(),
        images.iter().map(|i| &i.name).collect::<Vec<_>>()
    );

    assert_eq!(
        cygvm::media::wim::read_images(&mut File::open(&wim).unwrap()).unwrap(),
        images
    );
}

#[test]
fn isos_of_every_kind_list_their_images() {
    if !have("wimcapture", "wimtools")
        || !have("xorriso", "xorriso")
        || !have("genisoimage", "genisoimage")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let wim = wimlib_wim(dir.path(), "w.wim", false);
    let esd = wimlib_wim(dir.path(), "w.esd", true);
    let cases: [(&str, &Path, &str, MakeIso); 5] = [
        ("joliet", &wim, "sources/install.wim", xorriso_iso),
        ("udf", &wim, "sources/install.wim", udf_iso),
        ("udf-upper", &wim, "SOURCES/INSTALL.WIM", udf_iso),
        ("joliet-upper", &wim, "SOURCES/INSTALL.WIM", xorriso_iso),
        ("udf-esd", &esd, "sources/install.esd", udf_iso),
    ];
    for (name, wim, rel, make) in cases {
        let case = dir.path().join(name);
        let root = tree(&case, Some(wim), rel);
        let iso = case.join("win.iso");
        make(&root, &iso);
        assert_eq!(
            images_in_iso(&iso).unwrap(),
            expected_wimlib_images(),
            "{name}"
        );
    }

    // UDF only: the ISO 9660 descriptors are gone.
    let case = dir.path().join("udf-only");
    let iso = case.join("win.iso");
    udf_iso(&tree(&case, Some(&wim), "sources/install.wim"), &iso);
    wipe_iso9660(&iso);
    let mut sector = [0u8; 2048];
    File::open(&iso)
        .unwrap()
        .read_exact_at(&mut sector, 16 * 2048)
        .unwrap();
    assert_ne!(&sector[1..6], b"CD001");
    assert_eq!(
        images_in_iso(&iso).unwrap(),
        expected_wimlib_images(),
        "udf-only"
    );
}

#[test]
fn isos_without_a_valid_wim_are_refused_with_their_name() {
    if !have("xorriso", "xorriso") || !have("genisoimage", "genisoimage") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();

    let case = dir.path().join("none");
    let iso = case.join("xp.iso");
    let root = tree(&case, None, "");
    std::fs::create_dir_all(root.join("I386")).unwrap();
    xorriso_iso(&root, &iso);
    let e = images_in_iso(&iso).unwrap_err();
    assert!(matches!(e, WindowsIsoError::NoInstallImage { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&iso.display().to_string()) && msg.contains("Vista-or-newer"),
        "{msg}"
    );

    let case = dir.path().join("damaged");
    let bad = case.join("bad.wim");
    std::fs::create_dir_all(&case).unwrap();
    let mut header = b"MSWIM\0\0\0".to_vec();
    header.extend_from_slice(&100u32.to_le_bytes());
    header.resize(4096, 0);
    std::fs::write(&bad, &header).unwrap();
    let iso = case.join("win.iso");
    udf_iso(&tree(&case, Some(&bad), "sources/install.wim"), &iso);
    let e = images_in_iso(&iso).unwrap_err();
    assert!(matches!(e, WindowsIsoError::DamagedWim { .. }), "{e}");
    assert!(e.to_string().contains("sources/install.wim"), "{e}");

    let junk = dir.path().join("junk.iso");
    std::fs::write(&junk, vec![0x5au8; 1 << 20]).unwrap();
    let e = images_in_iso(&junk).unwrap_err();
    assert!(matches!(e, WindowsIsoError::NotIso { .. }), "{e}");
    let e = images_in_iso(&dir.path().join("missing.iso")).unwrap_err();
    assert!(matches!(e, WindowsIsoError::Unreadable { .. }), "{e}");
    assert!(e.to_string().contains("missing.iso"), "{e}");
}

#[test]
fn selection_errors_list_the_images() {
    let images = vec![
        image(1, "Windows 11 Home", "Core"),
        image(2, "Windows 11 Pro", "Professional"),
    ];
    let iso = Path::new("/isos/win11.iso");
    assert_eq!(select_image(&images, None, None, iso).unwrap().index, 1);
    assert_eq!(
        select_image(&images, Some("Windows 11 Pro"), None, iso)
            .unwrap()
            .index,
        2
    );
    assert_eq!(
        select_image(&images, None, Some(2), iso).unwrap().name,
        "Windows 11 Pro"
    );
    for e in [
        select_image(&images, Some("Windows 11 pro"), None, iso).unwrap_err(),
        select_image(&images, None, Some(3), iso).unwrap_err(),
    ] {
        let msg = e.to_string();
        assert!(msg.contains("/isos/win11.iso"), "{msg}");
        assert!(
            msg.contains("1: Windows 11 Home (Core)\n  2: Windows 11 Pro (Professional)"),
            "{msg}"
        );
        assert!(
            msg.contains("guest.edition") && msg.contains("guest.index"),
            "{msg}"
        );
    }
}

/// Counts the bytes read through it.
struct Counting<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

impl<R: Seek> Seek for Counting<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.inner.seek(to)
    }
}

/// A UDF image of our own making (ECMA-167 descriptors with valid tag
/// checksums) holding `/sources/install.wim` of `wim_len` bytes in extents of
/// just under 1 GiB, as a sparse file: only the WIM's header and its XML at
/// the very end are written. As UDF 1.02 (file entries and directories in the
/// partition, `short_ad`s) or as UDF 2.50 (extended file entries and
/// directories in a metadata partition whose file is split in two runs,
/// file data by `long_ad`).
mod synthetic_udf {
    use super::*;

    const S: u64 = 2048;
    const PARTITION_START: u64 = 300;
    /// The file's data starts at this block of the physical partition.
    const DATA_BLOCK: u64 = 1000;
    /// The largest extent an allocation descriptor holds, in whole blocks.
    const EXTENT: u64 = (1 << 30) - S;
    /// UDF 2.50: the metadata file's block, and its two runs (first block,
    /// blocks) in the physical partition.
    const METADATA_FILE: u32 = 8;
    const METADATA_RUNS: [(u32, u32); 2] = [(100, 3), (200, 3)];

    fn tag(b: &mut [u8], id: u16, location: u32) {
        b[0..2].copy_from_slice(&id.to_le_bytes());
        b[2..4].copy_from_slice(&2u16.to_le_bytes());
        b[12..16].copy_from_slice(&location.to_le_bytes());
        let sum = b[..16]
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 4)
            .fold(0u8, |s, (_, v)| s.wrapping_add(*v));
        b[4] = sum;
    }

    fn put32(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// One allocation descriptor: length, block, and for a `long_ad` the
    /// partition reference.
    type Ad = (u32, u32, Option<u16>);

    /// A (extended) file entry of `file_type` (4 directory, 5 file, 250
    /// metadata file) with its data in `ads`.
    fn file_entry(block: u32, file_type: u8, size: u64, ads: &[Ad], extended: bool) -> Vec<u8> {
        let mut b = vec![0u8; S as usize];
        b[20..22].copy_from_slice(&4u16.to_le_bytes()); // strategy 4
        b[27] = file_type;
        let long = ads.iter().any(|a| a.2.is_some());
        b[34..36].copy_from_slice(&u16::from(long).to_le_bytes());
        b[56..64].copy_from_slice(&size.to_le_bytes());
        let (l_ad, mut at) = if extended { (212, 216) } else { (172, 176) };
        put32(&mut b, l_ad, (ads.len() * if long { 16 } else { 8 }) as u32);
        for &(len, pos, part) in ads {
            put32(&mut b, at, len);
            put32(&mut b, at + 4, pos);
            if long {
                b[at + 8..at + 10].copy_from_slice(&part.unwrap_or(0).to_le_bytes());
                at += 16;
            } else {
                at += 8;
            }
        }
        tag(&mut b, if extended { 266 } else { 261 }, block);
        b
    }

    fn fid(name: &str, is_dir: bool, parent: bool, icb: (u32, u16)) -> Vec<u8> {
        let mut id = Vec::new();
        if !parent {
            id.push(8);
            id.extend_from_slice(name.as_bytes());
        }
        let len = (38 + id.len()).next_multiple_of(4);
        let mut b = vec![0u8; len];
        b[18] = (if is_dir { 2 } else { 0 }) | (if parent { 8 } else { 0 });
        b[19] = id.len() as u8;
        put32(&mut b, 20, S as u32);
        put32(&mut b, 24, icb.0);
        b[28..30].copy_from_slice(&icb.1.to_le_bytes());
        b[38..38 + id.len()].copy_from_slice(&id);
        tag(&mut b, 257, 0);
        b
    }

    fn dir_block(entries: &[Vec<u8>]) -> (Vec<u8>, u64) {
        let data: Vec<u8> = entries.concat();
        let len = data.len() as u64;
        let mut b = data;
        b.resize(S as usize, 0);
        (b, len)
    }

    pub fn write(path: &Path, wim_len: u64, header: &[u8], xml: &[u8], udf250: bool) {
        let f = File::create(path).unwrap();
        let data_sectors = wim_len.div_ceil(S);
        let total = (PARTITION_START + DATA_BLOCK + data_sectors + 300) * S;
        f.set_len(total).unwrap();
        let at = |sector: u64, b: &[u8]| f.write_all_at(b, sector * S).unwrap();

        for (n, id) in [b"BEA01", b"NSR03", b"TEA01"].iter().enumerate() {
            let mut b = vec![0u8; S as usize];
            b[1..6].copy_from_slice(*id);
            b[6] = 1;
            at(16 + n as u64, &b);
        }
        // Anchor at 256 (and at N-1): main sequence at 32, 16 sectors.
        let mut avdp = vec![0u8; S as usize];
        put32(&mut avdp, 16, 16 * S as u32);
        put32(&mut avdp, 20, 32);
        tag(&mut avdp, 2, 256);
        at(256, &avdp);
        let last = total / S - 1;
        let mut end_anchor = avdp.clone();
        tag(&mut end_anchor, 2, last as u32);
        at(last, &end_anchor);
        // Partition descriptor: number 0, starting at PARTITION_START.
        let mut pd = vec![0u8; S as usize];
        put32(&mut pd, 188, PARTITION_START as u32);
        put32(&mut pd, 192, (total / S - PARTITION_START) as u32);
        tag(&mut pd, 5, 32);
        at(32, &pd);
        // Logical volume: block size 2048, a type 1 map of partition 0 and,
        // for UDF 2.50, the metadata partition map on it (reference 1).
        let meta_ref: u16 = if udf250 { 1 } else { 0 };
        let mut lvd = vec![0u8; S as usize];
        put32(&mut lvd, 212, S as u32);
        put32(&mut lvd, 248, S as u32);
        lvd[256..258].copy_from_slice(&meta_ref.to_le_bytes()); // file set at block 0
        lvd[440] = 1;
        lvd[441] = 6;
        lvd[442..444].copy_from_slice(&1u16.to_le_bytes());
        if udf250 {
            let m = &mut lvd[446..446 + 64];
            m[0] = 2;
            m[1] = 64;
            m[5..28].copy_from_slice(b"*UDF Metadata Partition");
            m[36..38].copy_from_slice(&1u16.to_le_bytes());
            put32(m, 40, METADATA_FILE);
            put32(m, 44, u32::MAX);
            put32(m, 48, u32::MAX);
            put32(&mut lvd, 264, 70);
            put32(&mut lvd, 268, 2);
        } else {
            put32(&mut lvd, 264, 6);
            put32(&mut lvd, 268, 1);
        }
        tag(&mut lvd, 6, 33);
        at(33, &lvd);
        let mut td = vec![0u8; S as usize];
        tag(&mut td, 8, 34);
        at(34, &td);

        // Metadata blocks (file system structures): 0 file set, 1 root
        // entry, 2 root directory, 3 sources entry, 4 sources directory,
        // 5 install.wim entry; in the metadata file's runs for UDF 2.50.
        let physical = |block: u64| PARTITION_START + block;
        let meta = |block: u64| {
            if !udf250 {
                return physical(block);
            }
            let mut first = 0;
            for (start, count) in METADATA_RUNS {
                if block < first + u64::from(count) {
                    return physical(u64::from(start) + block - first);
                }
                first += u64::from(count);
            }
            panic!("metadata block {block} is past the metadata file");
        };
        if udf250 {
            let runs: Vec<Ad> = METADATA_RUNS
                .iter()
                .map(|&(start, count)| (count * S as u32, start, None))
                .collect();
            let size = METADATA_RUNS.iter().map(|r| u64::from(r.1) * S).sum();
            at(
                physical(u64::from(METADATA_FILE)),
                &file_entry(METADATA_FILE, 250, size, &runs, true),
            );
        }
        let mut fsd = vec![0u8; S as usize];
        put32(&mut fsd, 400, S as u32);
        put32(&mut fsd, 404, 1);
        fsd[408..410].copy_from_slice(&meta_ref.to_le_bytes());
        tag(&mut fsd, 256, 0);
        at(meta(0), &fsd);
        let (root, root_len) = dir_block(&[
            fid("", true, true, (1, meta_ref)),
            fid("Sources", true, false, (3, meta_ref)),
        ]);
        let dir_ad = |len: u64, block: u32| (len as u32, block, None);
        at(
            meta(1),
            &file_entry(1, 4, root_len, &[dir_ad(root_len, 2)], udf250),
        );
        at(meta(2), &root);
        let (sources, sources_len) = dir_block(&[
            fid("", true, true, (1, meta_ref)),
            fid("boot.wim", false, false, (9, meta_ref)),
            fid("Install.WIM", false, false, (5, meta_ref)),
        ]);
        at(
            meta(3),
            &file_entry(3, 4, sources_len, &[dir_ad(sources_len, 4)], udf250),
        );
        at(meta(4), &sources);
        let mut ads = Vec::new();
        let mut left = wim_len;
        let mut block = DATA_BLOCK;
        while left > 0 {
            let len = left.min(EXTENT);
            // Data lies in the physical partition: a long_ad names it from
            // the metadata partition.
            ads.push((len as u32, block as u32, udf250.then_some(0)));
            block += len.div_ceil(S);
            left -= len;
        }
        at(meta(5), &file_entry(5, 5, wim_len, &ads, udf250));

        // The file's bytes: contiguous blocks from DATA_BLOCK.
        let file_at = physical(DATA_BLOCK) * S;
        f.write_all_at(header, file_at).unwrap();
        f.write_all_at(xml, file_at + wim_len - xml.len() as u64)
            .unwrap();
    }
}

/// A 5 GiB install.wim (its XML at the end, past 4 GiB, across five UDF
/// extents) in sparse UDF 1.02 and 2.50 images: the images come back, and only the
/// file-system structures, the WIM header and the XML are read.
#[test]
fn large_wim_in_udf_is_read_by_header_and_xml_only() {
    let dir = tempfile::tempdir().unwrap();
    let images = vec![
        image(1, "Windows 11 Home", "Core"),
        image(2, "Windows 11 Pro", "Professional"),
    ];
    // A real WIM, taken apart: its header, with the XML moved to the end of
    // a 5 GiB file.
    let small = dir.path().join("small.wim");
    write_wim(&small, &images).unwrap();
    let bytes = std::fs::read(&small).unwrap();
    let xml_at = u64::from_le_bytes(bytes[80..88].try_into().unwrap());
    let xml = bytes[xml_at as usize..].to_vec();
    let wim_len: u64 = 5 << 30;
    let mut header = bytes[..208].to_vec();
    header[80..88].copy_from_slice(&(wim_len - xml.len() as u64).to_le_bytes());

    for (name, udf250) in [("udf102.iso", false), ("udf250.iso", true)] {
        let iso = dir.path().join(name);
        synthetic_udf::write(&iso, wim_len, &header, &xml, udf250);
        assert!(std::fs::metadata(&iso).unwrap().len() > wim_len);

        let mut disc = Counting {
            inner: File::open(&iso).unwrap(),
            read: 0,
        };
        let found = images_in_reader(&mut disc, &iso).unwrap();
        assert_eq!(found, images, "{name}");
        let wim_bytes = 208 + xml.len() as u64;
        eprintln!(
            "{name}: read {} bytes of a {} byte ISO (WIM header + XML: {wim_bytes} bytes)",
            disc.read,
            std::fs::metadata(&iso).unwrap().len()
        );
        // Descriptors and directories are a few 2 KiB sectors.
        assert!(
            disc.read < wim_bytes + 32 * 2048,
            "{name}: read {} bytes",
            disc.read
        );
        std::fs::remove_file(&iso).unwrap();
    }
}

/// A Windows 11 config naming `iso`, with `guest` lines added, in a fresh
/// directory; its image directory is `<dir>/images/w`.
fn windows_config(dir: &Path, iso: &Path, guest: &str) -> PathBuf {
    let mirror = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/standin/mirror");
    let config = dir.join("cygvm.toml");
    std::fs::write(
        &config,
        format!(
            "[image]\nname = \"w\"\ndir = \"images\"\n\n[guest]\nos = \"windows\"\nversion = \"11\"\n\
             iso = \"{}\"\n{guest}\n[cygwin]\nmirror = \"{}\"\npackages = [\"openssh\"]\n",
            iso.display(),
            mirror.display()
        ),
    )
    .unwrap();
    config
}

fn cygvm_media(config: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cygvm"))
        .args(["media", "--config"])
        .arg(config)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn cygvm_media_refuses_an_edition_the_iso_lacks_and_writes_nothing() {
    if !have("wimcapture", "wimtools") || !have("genisoimage", "genisoimage") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let wim = wimlib_wim(dir.path(), "w.wim", false);
    let iso = dir.path().join("Win11.iso");
    udf_iso(&tree(dir.path(), Some(&wim), "sources/install.wim"), &iso);
    let images_dir = dir.path().join("images");

    for (guest, what) in [
        (
            "edition = \"Windows 11 Education\"",
            "no image named \"Windows 11 Education\"",
        ),
        ("index = 7", "no image 7"),
        // Neither set: the answer file asks for "Windows 11 Pro" by name.
        ("", ""),
    ] {
        let config = windows_config(dir.path(), &iso, guest);
        let out = cygvm_media(&config, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        if guest.is_empty() {
            assert!(out.status.success(), "{err}");
            assert!(
                err.contains("installing image 2: Windows 11 Pro (Professional)"),
                "{err}"
            );
            std::fs::remove_dir_all(&images_dir).unwrap();
            continue;
        }
        assert!(!out.status.success(), "{guest}: {err}");
        assert!(err.contains(what), "{err}");
        assert!(err.contains(&iso.display().to_string()), "{err}");
        assert!(err.contains("1: Windows 11 Home (Core)"), "{err}");
        assert!(err.contains("2: Windows 11 Pro (Professional)"), "{err}");
        assert!(!images_dir.exists(), "{guest}: something was written");
    }

    let config = windows_config(dir.path(), &iso, "");
    let out = cygvm_media(&config, &["--list-editions"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "  1: Windows 11 Home (Core)\n  2: Windows 11 Pro (Professional)\n"
    );
    assert!(!images_dir.exists());
}

#[test]
fn xp_media_are_checked_for_their_i386_folder() {
    if !have("xorriso", "xorriso") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (with_i386, name) in [(true, "xp.iso"), (false, "other.iso")] {
        let case = dir.path().join(name);
        let root = tree(&case, None, "");
        if with_i386 {
            std::fs::create_dir_all(root.join("I386")).unwrap();
            std::fs::write(root.join("I386/WINNT.EXE"), "MZ").unwrap();
        }
        let iso = case.join(name);
        xorriso_iso(&root, &iso);
        let config = windows_config(&case, &iso, "");
        let text = std::fs::read_to_string(&config)
            .unwrap()
            .replace("\"11\"", "\"xp\"");
        std::fs::write(&config, text).unwrap();
        let config = cygvm::config::Config::load(&config).unwrap();
        let checked = cygvm::media::windows_iso::check_windows_iso(&config);
        if with_i386 {
            assert!(checked.unwrap().is_none());
        } else {
            let e = format!("{:#}", checked.unwrap_err());
            assert!(
                e.contains("no I386 or AMD64 folder") && e.contains(name),
                "{e}"
            );
        }
    }
}
