//! The image list of a Windows Imaging (WIM) file: read from its XML
//! metadata, and written into a small WIM of our own.
//!
//! Layout from Microsoft's "Windows Imaging File Format (WIM)" specification
//! (WIMGAPI documentation, the `WIM_HEADER` / `RESHDR_DISK_SHORT` structures):
//!
//! - a 208-byte header at offset 0: magic `MSWIM\0\0\0`, header size,
//!   version, flags, chunk size, GUID, part number and count, image count,
//!   then `RESHDR_DISK_SHORT` entries for the offset (blob) table at 48, the
//!   XML data at 72 and the boot metadata at 96, the boot index at 120 and
//!   the integrity table at 124;
//! - a `RESHDR_DISK_SHORT` is 24 bytes: a 56-bit stored size with an 8-bit
//!   flags byte on top, the 64-bit offset in the file, the 64-bit original
//!   size;
//! - the XML data is stored uncompressed, UTF-16LE with a byte-order mark,
//!   also in ESD files (version 0xe00, solid LZMS resources): only the header
//!   and the XML are read, never the file resources.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use quick_xml::escape::escape;
use quick_xml::events::Event;
use sha1::{Digest as _, Sha1};
use thiserror::Error;

pub const MAGIC: &[u8; 8] = b"MSWIM\0\0\0";
pub const HEADER_SIZE: usize = 208;
/// Version of WIMs with non-solid resources (what DISM and ImageX write).
const VERSION_DEFAULT: u32 = 0x10d00;
/// Resource flag: a metadata resource (one per image, a directory tree).
const RESHDR_FLAG_METADATA: u8 = 0x02;
/// Resource flag: stored compressed.
const RESHDR_FLAG_COMPRESSED: u8 = 0x04;
/// Real install.wim XML is at most a few hundred KiB; a larger size means a
/// damaged header, not something to allocate.
const MAX_XML_BYTES: u64 = 32 << 20;

/// One image of a WIM, as its XML metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WimImage {
    /// `/IMAGE/@INDEX`, 1-based: what `/IMAGE/INDEX` in an answer file names.
    pub index: u32,
    /// `/IMAGE/NAME`: what `/IMAGE/NAME` in an answer file names.
    pub name: String,
    /// `/IMAGE/WINDOWS/EDITIONID`, e.g. `Professional`, `ServerStandard`.
    pub edition_id: Option<String>,
    /// `/IMAGE/WINDOWS/INSTALLATIONTYPE`, e.g. `Client`, `Server`, `Server Core`.
    pub installation_type: Option<String>,
    /// `/IMAGE/DISPLAYNAME`.
    pub display_name: Option<String>,
}

#[derive(Debug, Error)]
pub enum WimError {
    #[error("cannot read the WIM: {0}")]
    Io(#[from] io::Error),
    #[error("not a WIM: it does not start with MSWIM")]
    BadMagic,
    #[error("damaged WIM header: {0}")]
    BadHeader(String),
    #[error("damaged WIM XML metadata: {0}")]
    BadXml(String),
}

/// A resource header (`RESHDR_DISK_SHORT`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ResourceHeader {
    stored_size: u64,
    flags: u8,
    offset: u64,
    original_size: u64,
}

impl ResourceHeader {
    fn parse(b: &[u8]) -> Self {
        let size_and_flags = le64(&b[0..8]);
        Self {
            stored_size: size_and_flags & ((1 << 56) - 1),
            flags: (size_and_flags >> 56) as u8,
            offset: le64(&b[8..16]),
            original_size: le64(&b[16..24]),
        }
    }

    fn encode(&self) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[0..8].copy_from_slice(&(self.stored_size | (u64::from(self.flags) << 56)).to_le_bytes());
        b[8..16].copy_from_slice(&self.offset.to_le_bytes());
        b[16..24].copy_from_slice(&self.original_size.to_le_bytes());
        b
    }
}

fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))
}

/// Reads the images listed in a WIM's XML metadata: the header, then the
/// XML resource, nothing else.
pub fn read_images<R: Read + Seek>(wim: &mut R) -> Result<Vec<WimImage>, WimError> {
    let mut header = [0u8; HEADER_SIZE];
    wim.seek(SeekFrom::Start(0))?;
    read_exact_or(wim, &mut header, || {
        WimError::BadHeader("the file is shorter than the 208-byte header".into())
    })?;
    if &header[0..8] != MAGIC {
        return Err(WimError::BadMagic);
    }
    let header_size = le32(&header[8..12]);
    if header_size as usize != HEADER_SIZE {
        return Err(WimError::BadHeader(format!(
            "header size {header_size}, expected {HEADER_SIZE}"
        )));
    }
    let image_count = le32(&header[44..48]);
    let xml = ResourceHeader::parse(&header[72..96]);
    if xml.flags & RESHDR_FLAG_COMPRESSED != 0 {
        return Err(WimError::BadHeader(
            "the XML data is marked compressed (it never is)".into(),
        ));
    }
    if xml.stored_size < 2 || xml.stored_size > MAX_XML_BYTES || xml.offset < HEADER_SIZE as u64 {
        return Err(WimError::BadHeader(format!(
            "implausible XML data location: {} bytes at offset {}",
            xml.stored_size, xml.offset
        )));
    }
    wim.seek(SeekFrom::Start(xml.offset))?;
    let mut raw = vec![0u8; xml.stored_size as usize];
    read_exact_or(wim, &mut raw, || {
        WimError::BadHeader(format!(
            "the XML data ({} bytes at offset {}) lies past the end of the file",
            xml.stored_size, xml.offset
        ))
    })?;
    let images = parse_xml(&decode_utf16le(&raw)?)?;
    if images.len() != image_count as usize {
        return Err(WimError::BadXml(format!(
            "the header counts {image_count} images, the XML describes {}",
            images.len()
        )));
    }
    Ok(images)
}

fn read_exact_or<R: Read>(
    r: &mut R,
    buf: &mut [u8],
    short: impl FnOnce() -> WimError,
) -> Result<(), WimError> {
    match r.read_exact(buf) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(short()),
        Err(e) => Err(e.into()),
    }
}

fn decode_utf16le(raw: &[u8]) -> Result<String, WimError> {
    if !raw.len().is_multiple_of(2) {
        return Err(WimError::BadXml(
            "odd length: not UTF-16LE text".to_string(),
        ));
    }
    let units = raw
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]));
    let text: String = char::decode_utf16(units)
        .collect::<Result<_, _>>()
        .map_err(|e| WimError::BadXml(format!("not UTF-16LE text: {e}")))?;
    Ok(text.strip_prefix('\u{feff}').unwrap_or(&text).to_string())
}

/// Parses `<WIM><IMAGE INDEX="n"><NAME>…` into images sorted by index.
pub fn parse_xml(xml: &str) -> Result<Vec<WimImage>, WimError> {
    let bad = |e: &dyn std::fmt::Display| WimError::BadXml(e.to_string());
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut path: Vec<String> = Vec::new();
    let mut images: Vec<WimImage> = Vec::new();
    let mut text = String::new();
    let mut saw_root = false;
    loop {
        match reader.read_event().map_err(|e| bad(&e))? {
            Event::Start(e) => {
                let name = e.name().as_ref().to_string();
                if path.is_empty() {
                    if name != "WIM" {
                        return Err(WimError::BadXml(format!(
                            "the root element is <{name}>, not <WIM>"
                        )));
                    }
                    saw_root = true;
                }
                if path.len() == 1 && name == "IMAGE" {
                    let mut index = None;
                    for a in e.attributes() {
                        let a = a.map_err(|e| bad(&e))?;
                        if a.key.as_ref() == "INDEX" {
                            let v = a
                                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                                .map_err(|e| bad(&e))?;
                            index = Some(v.trim().parse::<u32>().map_err(|_| {
                                WimError::BadXml(format!("image INDEX {v:?} is not a number"))
                            })?);
                        }
                    }
                    let index = index.unwrap_or(images.len() as u32 + 1);
                    images.push(WimImage {
                        index,
                        name: String::new(),
                        edition_id: None,
                        installation_type: None,
                        display_name: None,
                    });
                }
                path.push(name);
                text.clear();
            }
            Event::Text(t) => text.push_str(&t.xml10_content()),
            Event::GeneralRef(r) => {
                let name = r.xml10_content();
                match quick_xml::escape::resolve_predefined_entity(&name) {
                    Some(s) => text.push_str(s),
                    None => match r.resolve_char_ref().map_err(|e| bad(&e))? {
                        Some(c) => text.push(c),
                        None => {
                            return Err(WimError::BadXml(format!("unknown entity &{name};")));
                        }
                    },
                }
            }
            Event::CData(t) => text.push_str(&t.xml10_content()),
            Event::End(_) => {
                let p: Vec<&str> = path.iter().map(String::as_str).collect();
                if let (Some(image), ["WIM", "IMAGE", rest @ ..]) = (images.last_mut(), &p[..]) {
                    let value = text.trim().to_string();
                    match rest {
                        ["NAME"] => image.name = value,
                        ["DISPLAYNAME"] => image.display_name = Some(value),
                        ["WINDOWS", "EDITIONID"] => image.edition_id = Some(value),
                        ["WINDOWS", "INSTALLATIONTYPE"] => image.installation_type = Some(value),
                        _ => {}
                    }
                }
                path.pop();
                text.clear();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !saw_root {
        return Err(WimError::BadXml("no <WIM> element".into()));
    }
    images.sort_by_key(|i| i.index);
    for (n, image) in images.iter().enumerate() {
        if image.index != n as u32 + 1 {
            return Err(WimError::BadXml(format!(
                "image indexes are not 1..{}: found INDEX=\"{}\"",
                images.len(),
                image.index
            )));
        }
    }
    Ok(images)
}

/// The XML metadata of `images`, as text (without the byte-order mark).
fn xml_text(images: &[WimImage], total_bytes: u64) -> String {
    let mut x = format!("<WIM><TOTALBYTES>{total_bytes}</TOTALBYTES>");
    for image in images {
        x.push_str(&format!(
            "<IMAGE INDEX=\"{}\"><DIRCOUNT>0</DIRCOUNT><FILECOUNT>0</FILECOUNT>\
             <TOTALBYTES>0</TOTALBYTES><HARDLINKBYTES>0</HARDLINKBYTES>",
            image.index
        ));
        if image.edition_id.is_some() || image.installation_type.is_some() {
            x.push_str("<WINDOWS>");
            if let Some(e) = &image.edition_id {
                x.push_str(&format!("<EDITIONID>{}</EDITIONID>", escape(e.as_str())));
            }
            if let Some(t) = &image.installation_type {
                x.push_str(&format!(
                    "<INSTALLATIONTYPE>{}</INSTALLATIONTYPE>",
                    escape(t.as_str())
                ));
            }
            x.push_str("</WINDOWS>");
        }
        x.push_str(&format!("<NAME>{}</NAME>", escape(image.name.as_str())));
        if let Some(d) = &image.display_name {
            x.push_str(&format!(
                "<DISPLAYNAME>{}</DISPLAYNAME>",
                escape(d.as_str())
            ));
        }
        x.push_str("</IMAGE>");
    }
    x.push_str("</WIM>");
    x
}

/// An image's metadata resource: empty security data and an empty root
/// directory. The root's entry (102 bytes, padded to 104) is followed by the
/// end-of-siblings mark, and its children list is an end mark of its own.
fn empty_metadata_resource() -> Vec<u8> {
    const FILE_ATTRIBUTE_DIRECTORY: u32 = 0x10;
    let mut m = Vec::with_capacity(128);
    // Security data: total length 8, no descriptors.
    m.extend_from_slice(&8u32.to_le_bytes());
    m.extend_from_slice(&0u32.to_le_bytes());
    let root_at = m.len();
    let children_at = (root_at + 104 + 8) as u64;
    m.extend_from_slice(&104u64.to_le_bytes()); // entry length
    m.extend_from_slice(&FILE_ATTRIBUTE_DIRECTORY.to_le_bytes());
    m.extend_from_slice(&u32::MAX.to_le_bytes()); // no security descriptor
    m.extend_from_slice(&children_at.to_le_bytes()); // subdirectory offset
    m.resize(m.len() + 16 + 24 + 20 + 4 + 8, 0); // unused, times, hash, 0x54, link id
    m.extend_from_slice(&[0u8; 6]); // no streams, no short name, no name
    m.resize(root_at + 104, 0);
    m.extend_from_slice(&[0u8; 8]); // end of the root's siblings
    m.extend_from_slice(&[0u8; 8]); // end of the root's (empty) children
    m
}

/// Encodes a WIM holding `images`: one empty metadata resource per image,
/// the offset table listing them, and the XML data.
pub fn encode_wim(images: &[WimImage]) -> Vec<u8> {
    let metadata = empty_metadata_resource();
    let hash: [u8; 20] = Sha1::digest(&metadata).into();
    let mut body = Vec::new();
    let mut table = Vec::new();
    for _ in images {
        let reshdr = ResourceHeader {
            stored_size: metadata.len() as u64,
            flags: RESHDR_FLAG_METADATA,
            offset: (HEADER_SIZE + body.len()) as u64,
            original_size: metadata.len() as u64,
        };
        body.extend_from_slice(&metadata);
        // Offset table entry: resource header, part number, reference count, SHA-1.
        table.extend_from_slice(&reshdr.encode());
        table.extend_from_slice(&1u16.to_le_bytes());
        table.extend_from_slice(&1u32.to_le_bytes());
        table.extend_from_slice(&hash);
    }
    let table_at = (HEADER_SIZE + body.len()) as u64;
    let xml_at = table_at + table.len() as u64;
    let mut xml = vec![0xff, 0xfe];
    for unit in xml_text(images, xml_at).encode_utf16() {
        xml.extend_from_slice(&unit.to_le_bytes());
    }

    let mut h = vec![0u8; HEADER_SIZE];
    h[0..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
    h[12..16].copy_from_slice(&VERSION_DEFAULT.to_le_bytes());
    // Flags 0 and chunk size 0: nothing is compressed.
    // A GUID derived from the content keeps the file reproducible.
    let guid = Sha1::digest(&xml);
    h[24..40].copy_from_slice(&guid[..16]);
    h[40..42].copy_from_slice(&1u16.to_le_bytes()); // part 1
    h[42..44].copy_from_slice(&1u16.to_le_bytes()); // of 1
    h[44..48].copy_from_slice(&(images.len() as u32).to_le_bytes());
    let table_hdr = ResourceHeader {
        stored_size: table.len() as u64,
        flags: 0,
        offset: table_at,
        original_size: table.len() as u64,
    };
    h[48..72].copy_from_slice(&table_hdr.encode());
    let xml_hdr = ResourceHeader {
        stored_size: xml.len() as u64,
        flags: 0,
        offset: xml_at,
        original_size: xml.len() as u64,
    };
    h[72..96].copy_from_slice(&xml_hdr.encode());
    // No bootable image (boot metadata and index zero), no integrity table.

    let mut wim = h;
    wim.extend_from_slice(&body);
    wim.extend_from_slice(&table);
    wim.extend_from_slice(&xml);
    wim
}

/// Writes a small, valid WIM listing `images` (indexes are taken from the
/// slice order, 1-based, so they must be 1..n in order), e.g. for a
/// stand-in installer that checks the answer file's image the way Windows
/// Setup does. Written to a temporary name, synced, then renamed.
pub fn write_wim(path: &Path, images: &[WimImage]) -> io::Result<()> {
    for (n, image) in images.iter().enumerate() {
        if image.index != n as u32 + 1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "cannot write {}: image {:?} has index {}, expected {} (indexes run 1..n in order)",
                    path.display(),
                    image.name,
                    image.index,
                    n + 1
                ),
            ));
        }
    }
    crate::fsutil::write_atomic(path, &encode_wim(images), 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(index: u32, name: &str, edition: &str) -> WimImage {
        WimImage {
            index,
            name: name.into(),
            edition_id: Some(edition.into()),
            installation_type: Some("Client".into()),
            display_name: Some(format!("{name} & more")),
        }
    }

    #[test]
    fn encoded_wim_reads_back() {
        let images = vec![
            image(1, "Windows 11 Home", "Core"),
            image(2, "Windows 11 Pro <N>", "Professional"),
        ];
        let wim = encode_wim(&images);
        assert_eq!(&wim[..8], MAGIC);
        let back = read_images(&mut io::Cursor::new(wim)).unwrap();
        assert_eq!(back, images);
    }

    #[test]
    fn metadata_resource_layout() {
        let m = empty_metadata_resource();
        assert_eq!(m.len(), 128);
        assert_eq!(le64(&m[8..16]), 104);
        assert_eq!(le64(&m[24..32]), 120);
        assert!(m[112..128].iter().all(|&b| b == 0));
    }

    #[test]
    fn xml_parse_handles_real_shapes() {
        let xml = "<WIM><TOTALBYTES>5</TOTALBYTES>\
            <IMAGE INDEX=\"2\"><NAME>B</NAME><WINDOWS><EDITIONID>ServerStandard</EDITIONID>\
            <INSTALLATIONTYPE>Server Core</INSTALLATIONTYPE></WINDOWS></IMAGE>\
            <IMAGE INDEX=\"1\"><NAME>A &amp; &#65;</NAME><DISPLAYNAME>Disp</DISPLAYNAME></IMAGE></WIM>";
        let images = parse_xml(xml).unwrap();
        assert_eq!(images[0].name, "A & A");
        assert_eq!(images[0].display_name.as_deref(), Some("Disp"));
        assert_eq!(images[1].edition_id.as_deref(), Some("ServerStandard"));
        assert_eq!(images[1].installation_type.as_deref(), Some("Server Core"));
    }

    #[test]
    fn damaged_headers_are_refused() {
        let mut wim = encode_wim(&[image(1, "A", "Core")]);
        wim[0] = b'X';
        assert!(matches!(
            read_images(&mut io::Cursor::new(&wim)),
            Err(WimError::BadMagic)
        ));
        wim[0] = b'M';
        wim[72..80].copy_from_slice(&(u64::MAX >> 8).to_le_bytes());
        assert!(matches!(
            read_images(&mut io::Cursor::new(&wim)),
            Err(WimError::BadHeader(_))
        ));
        assert!(matches!(
            read_images(&mut io::Cursor::new(&wim[..100])),
            Err(WimError::BadHeader(_))
        ));
    }

    #[test]
    fn broken_xml_is_refused() {
        assert!(parse_xml("<WIM><IMAGE INDEX=\"x\"></IMAGE></WIM>").is_err());
        assert!(parse_xml("<NOTWIM/>").is_err());
        assert!(parse_xml("<WIM><IMAGE INDEX=\"3\"></IMAGE></WIM>").is_err());
    }
}
