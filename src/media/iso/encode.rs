//! Byte layouts of ECMA-119 (ISO 9660), Joliet and Rock Ridge (SUSP/RRIP 1.10)
//! structures.

pub const SECTOR: usize = 2048;

/// Every timestamp in the image: 2000-01-01 00:00:00 UTC. A constant keeps
/// images byte-identical; nothing on the media depends on real times.
const YEAR: u16 = 2000;

/// Text fields of volume descriptors, padded with spaces.
pub enum Text<'a> {
    Ascii(&'a str),
    Ucs2(&'a str),
}

pub fn both16(buf: &mut [u8], v: u16) {
    buf[0..2].copy_from_slice(&v.to_le_bytes());
    buf[2..4].copy_from_slice(&v.to_be_bytes());
}

pub fn both32(buf: &mut [u8], v: u32) {
    buf[0..4].copy_from_slice(&v.to_le_bytes());
    buf[4..8].copy_from_slice(&v.to_be_bytes());
}

fn put_text(buf: &mut [u8], text: Text) {
    match text {
        Text::Ascii(s) => {
            buf.fill(b' ');
            let n = s.len().min(buf.len());
            buf[..n].copy_from_slice(&s.as_bytes()[..n]);
        }
        Text::Ucs2(s) => {
            for pair in buf.chunks_exact_mut(2) {
                pair.copy_from_slice(&[0, b' ']);
            }
            for (pair, u) in buf.chunks_exact_mut(2).zip(s.encode_utf16()) {
                pair.copy_from_slice(&u.to_be_bytes());
            }
        }
    }
}

/// The 7-byte recording date of directory records.
fn record_date() -> [u8; 7] {
    [(YEAR - 1900) as u8, 1, 1, 0, 0, 0, 0]
}

/// The 17-byte date of volume descriptors.
fn volume_date() -> [u8; 17] {
    let mut d = [0u8; 17];
    d[..16].copy_from_slice(format!("{YEAR:04}010100000000").as_bytes());
    d
}

fn unset_volume_date() -> [u8; 17] {
    let mut d = [b'0'; 17];
    d[16] = 0;
    d
}

pub struct VolumeDescriptor<'a> {
    pub joliet: bool,
    pub volume_id: &'a str,
    pub volume_sectors: u32,
    pub path_table_size: u32,
    pub path_table_l: u32,
    pub path_table_m: u32,
    pub root_extent: u32,
    pub root_size: u32,
}

/// A primary (type 1) or Joliet supplementary (type 2) volume descriptor.
pub fn volume_descriptor(vd: &VolumeDescriptor) -> Vec<u8> {
    let mut b = vec![0u8; SECTOR];
    let text = |s| {
        if vd.joliet {
            Text::Ucs2(s)
        } else {
            Text::Ascii(s)
        }
    };
    b[0] = if vd.joliet { 2 } else { 1 };
    b[1..6].copy_from_slice(b"CD001");
    b[6] = 1;
    put_text(&mut b[8..40], text(""));
    put_text(&mut b[40..72], text(vd.volume_id));
    both32(&mut b[80..88], vd.volume_sectors);
    if vd.joliet {
        // UCS-2 level 3
        b[88..91].copy_from_slice(b"%/E");
    }
    both16(&mut b[120..124], 1);
    both16(&mut b[124..128], 1);
    both16(&mut b[128..132], SECTOR as u16);
    both32(&mut b[132..140], vd.path_table_size);
    b[140..144].copy_from_slice(&vd.path_table_l.to_le_bytes());
    b[148..152].copy_from_slice(&vd.path_table_m.to_be_bytes());
    let root = dir_record(&[0], vd.root_extent, vd.root_size, true, &[]);
    b[156..190].copy_from_slice(&root);
    put_text(&mut b[190..318], text(""));
    put_text(&mut b[318..446], text(""));
    put_text(&mut b[446..574], text(""));
    put_text(&mut b[574..702], text("CYGVM"));
    for field in [702..738, 739..775, 776..812] {
        put_text(&mut b[field], text(""));
    }
    b[813..830].copy_from_slice(&volume_date());
    b[830..847].copy_from_slice(&volume_date());
    b[847..864].copy_from_slice(&unset_volume_date());
    b[864..881].copy_from_slice(&unset_volume_date());
    b[881] = 1;
    b
}

pub fn terminator() -> Vec<u8> {
    let mut b = vec![0u8; SECTOR];
    b[0] = 255;
    b[1..6].copy_from_slice(b"CD001");
    b[6] = 1;
    b
}

/// Length of a directory record with an identifier of `ident_len` bytes and
/// `su_len` bytes of system use; always even.
pub fn record_len(ident_len: usize, su_len: usize) -> usize {
    let len = 33 + ident_len + (1 - ident_len % 2) + su_len;
    len + len % 2
}

pub fn dir_record(ident: &[u8], extent: u32, size: u32, is_dir: bool, su: &[u8]) -> Vec<u8> {
    let len = record_len(ident.len(), su.len());
    debug_assert!(len <= 255, "directory record of {len} bytes");
    let mut r = vec![0u8; len];
    r[0] = len as u8;
    both32(&mut r[2..10], extent);
    both32(&mut r[10..18], size);
    r[18..25].copy_from_slice(&record_date());
    r[25] = if is_dir { 0x02 } else { 0 };
    both16(&mut r[28..32], 1);
    r[32] = ident.len() as u8;
    r[33..33 + ident.len()].copy_from_slice(ident);
    let su_start = 33 + ident.len() + (1 - ident.len() % 2);
    r[su_start..su_start + su.len()].copy_from_slice(su);
    r
}

/// One path table record; `big_endian` selects the M table.
pub fn path_record(ident: &[u8], extent: u32, parent: u16, big_endian: bool) -> Vec<u8> {
    let mut r = Vec::with_capacity(9 + ident.len());
    r.push(ident.len() as u8);
    r.push(0);
    if big_endian {
        r.extend_from_slice(&extent.to_be_bytes());
        r.extend_from_slice(&parent.to_be_bytes());
    } else {
        r.extend_from_slice(&extent.to_le_bytes());
        r.extend_from_slice(&parent.to_le_bytes());
    }
    r.extend_from_slice(ident);
    if ident.len() % 2 == 1 {
        r.push(0);
    }
    r
}

pub fn path_record_len(ident_len: usize) -> usize {
    8 + ident_len + ident_len % 2
}

// Rock Ridge. Sizes are fixed so directory layouts can be computed before
// any byte is written.

pub const RR_ID: &str = "RRIP_1991A";
const RR_DESC: &str =
    "THE ROCK RIDGE INTERCHANGE PROTOCOL PROVIDES SUPPORT FOR POSIX FILE SYSTEM SEMANTICS";
const RR_SRC: &str = "PLEASE CONTACT DISC PUBLISHER FOR SPECIFICATION SOURCE.  SEE PUBLISHER IDENTIFIER IN PRIMARY VOLUME DESCRIPTOR FOR CONTACT INFORMATION.";

/// System use of the root's `.` entry: SP, RR, PX, TF, and CE pointing at the ER.
pub const ROOT_DOT_SU: usize = 7 + 5 + 36 + 12 + 28;
/// System use of other `.` and `..` entries: RR, PX, TF.
pub const DOT_SU: usize = 5 + 36 + 12;

/// System use of a named entry: RR, PX, TF, NM.
pub fn named_su_len(name: &str) -> usize {
    DOT_SU + 5 + name.len()
}

/// POSIX attributes of an entry: read-only for everyone.
pub struct Posix {
    pub is_dir: bool,
    pub links: u32,
}

fn px(out: &mut Vec<u8>, p: &Posix) {
    let mode: u32 = if p.is_dir { 0o040555 } else { 0o100444 };
    let start = out.len();
    out.extend_from_slice(&[b'P', b'X', 36, 1]);
    out.resize(start + 36, 0);
    both32(&mut out[start + 4..start + 12], mode);
    both32(&mut out[start + 12..start + 20], p.links);
    // uid and gid stay 0
}

fn rr(out: &mut Vec<u8>, has_name: bool) {
    // RRIP 1.09 flags for old readers: PX, TF and (when present) NM.
    out.extend_from_slice(&[b'R', b'R', 5, 1, if has_name { 0x89 } else { 0x81 }]);
}

fn tf(out: &mut Vec<u8>) {
    out.extend_from_slice(&[b'T', b'F', 12, 1, 0x02]);
    out.extend_from_slice(&record_date());
}

/// System use of `.` and `..` entries (and, with `ce`, of the root's `.`).
pub fn dot_su(p: &Posix, root_ce: Option<u32>) -> Vec<u8> {
    let mut out = Vec::with_capacity(ROOT_DOT_SU);
    if root_ce.is_some() {
        out.extend_from_slice(&[b'S', b'P', 7, 1, 0xBE, 0xEF, 0]);
    }
    rr(&mut out, false);
    px(&mut out, p);
    tf(&mut out);
    if let Some(sector) = root_ce {
        let start = out.len();
        out.extend_from_slice(&[b'C', b'E', 28, 1]);
        out.resize(start + 28, 0);
        both32(&mut out[start + 4..start + 12], sector);
        both32(&mut out[start + 12..start + 20], 0);
        both32(&mut out[start + 20..start + 28], er().len() as u32);
    }
    out
}

pub fn named_su(p: &Posix, name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(named_su_len(name));
    rr(&mut out, true);
    px(&mut out, p);
    tf(&mut out);
    out.extend_from_slice(&[b'N', b'M', (5 + name.len()) as u8, 1, 0]);
    out.extend_from_slice(name.as_bytes());
    out
}

/// The `ER` entry announcing Rock Ridge, kept in a continuation area.
pub fn er() -> Vec<u8> {
    let mut out = vec![
        b'E',
        b'R',
        (8 + RR_ID.len() + RR_DESC.len() + RR_SRC.len()) as u8,
        1,
        RR_ID.len() as u8,
        RR_DESC.len() as u8,
        RR_SRC.len() as u8,
        1,
    ];
    out.extend_from_slice(RR_ID.as_bytes());
    out.extend_from_slice(RR_DESC.as_bytes());
    out.extend_from_slice(RR_SRC.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_the_encoders() {
        let p = Posix {
            is_dir: true,
            links: 2,
        };
        assert_eq!(dot_su(&p, Some(5)).len(), ROOT_DOT_SU);
        assert_eq!(dot_su(&p, None).len(), DOT_SU);
        assert_eq!(named_su(&p, "abc").len(), named_su_len("abc"));
        assert_eq!(er().len(), er()[2] as usize);
        assert_eq!(&volume_date()[..16], b"2000010100000000");
        for n in 1..40 {
            let rec = dir_record(&vec![b'A'; n], 0, 0, false, &[1, 2, 3]);
            assert_eq!(rec.len(), record_len(n, 3));
            assert_eq!(rec.len() % 2, 0);
            assert_eq!(
                path_record(&vec![b'A'; n], 0, 1, true).len(),
                path_record_len(n)
            );
        }
    }
}
