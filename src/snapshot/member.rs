//! One gzip member (RFC 1952) of `state.gz`.
//!
//! ```text
//! 1f 8b 08 04 | mtime 0 (4) | xfl | os 3 | xlen 8 (2) | 'C' 'V' | 4 (2) | member length (4)
//! deflate data ...
//! crc32 (4) | isize (4)                               all little-endian
//! ```
//!
//! The `CV` subfield holds the length of the whole member, like BGZF's `BC`,
//! so a reader can step from member to member without the index.

use libdeflater::{CompressionLvl, Compressor, DecompressionError, Decompressor};

pub const HEADER_LEN: usize = 20;
pub const TRAILER_LEN: usize = 8;
const FLG_FEXTRA: u8 = 0x04;
const OS_UNIX: u8 = 3;
const XLEN: u16 = 8;
const SUBFIELD_ID: [u8; 2] = *b"CV";

/// The fields of a member's header and trailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberFrame {
    pub member_len: u32,
    pub crc32: u32,
    pub isize: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("not a gzip member header (bytes {found:02x?})")]
    BadHeader { found: Vec<u8> },
    #[error("member header is shorter than {HEADER_LEN} bytes")]
    Short,
}

pub fn compressor(level: i32) -> Compressor {
    let level = CompressionLvl::new(level.clamp(0, 12)).unwrap_or_default();
    Compressor::new(level)
}

fn xfl(level: i32) -> u8 {
    match level {
        ..=1 => 4,
        9.. => 2,
        _ => 0,
    }
}

/// Bytes of a member compressed first to tell whether the rest is worth it.
const PROBE: usize = 64 << 10;
/// A probe that shrinks by less than this (in percent of its size) marks
/// the member incompressible: guest RAM holding random or already
/// compressed data.
const WORTH_IT_PERCENT: usize = 97;
/// The largest stored deflate block.
const STORED_BLOCK: usize = 65_535;

/// Whether deflating `data` would gain next to nothing.
fn incompressible(compressor: &mut Compressor, data: &[u8]) -> bool {
    if data.len() <= PROBE * 2 {
        return false;
    }
    let sample = &data[..PROBE];
    let mut probe = vec![0u8; compressor.deflate_compress_bound(PROBE)];
    match compressor.deflate_compress(sample, &mut probe) {
        Ok(n) => n * 100 > PROBE * WORTH_IT_PERCENT,
        Err(_) => false,
    }
}

/// `data` as stored (uncompressed) deflate blocks: RFC 1951 BTYPE 00,
/// as fast as a copy.
fn deflate_stored(data: &[u8], out: &mut Vec<u8>) {
    let mut chunks = data.chunks(STORED_BLOCK).peekable();
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        out.push(u8::from(last));
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
}

/// Compresses `data` into one complete gzip member. Members that would not
/// shrink are stored instead: the same gzip, at the speed of a copy.
pub fn encode(compressor: &mut Compressor, level: i32, data: &[u8]) -> Vec<u8> {
    if incompressible(compressor, data) {
        let blocks = data.len().div_ceil(STORED_BLOCK);
        let mut out = Vec::with_capacity(HEADER_LEN + data.len() + 5 * blocks + TRAILER_LEN);
        out.resize(HEADER_LEN, 0);
        deflate_stored(data, &mut out);
        let deflated = out.len() - HEADER_LEN;
        out.resize(HEADER_LEN + deflated + TRAILER_LEN, 0);
        return finish_member(out, deflated, level, data);
    }
    let bound = compressor.deflate_compress_bound(data.len());
    let mut out = vec![0u8; HEADER_LEN + bound + TRAILER_LEN];
    let deflated = compressor
        .deflate_compress(data, &mut out[HEADER_LEN..HEADER_LEN + bound])
        .expect("libdeflate's own bound is always enough");
    finish_member(out, deflated, level, data)
}

/// Fills in the header and trailer around `deflated` bytes of deflate data.
fn finish_member(mut out: Vec<u8>, deflated: usize, level: i32, data: &[u8]) -> Vec<u8> {
    let member_len = HEADER_LEN + deflated + TRAILER_LEN;
    out.truncate(member_len);
    out[..10].copy_from_slice(&[0x1f, 0x8b, 8, FLG_FEXTRA, 0, 0, 0, 0, xfl(level), OS_UNIX]);
    out[10..12].copy_from_slice(&XLEN.to_le_bytes());
    out[12..14].copy_from_slice(&SUBFIELD_ID);
    out[14..16].copy_from_slice(&4u16.to_le_bytes());
    // Members hold a few MiB; the writer refuses member sizes near 4 GiB.
    out[16..20].copy_from_slice(&(member_len as u32).to_le_bytes());
    let tail = HEADER_LEN + deflated;
    out[tail..tail + 4].copy_from_slice(&libdeflater::crc32(data).to_le_bytes());
    out[tail + 4..].copy_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// Parses the header cygvm writes and returns the member length it records.
pub fn parse_header(header: &[u8]) -> Result<u32, FrameError> {
    if header.len() < HEADER_LEN {
        return Err(FrameError::Short);
    }
    let fixed_ok = header[0] == 0x1f
        && header[1] == 0x8b
        && header[2] == 8
        && header[3] == FLG_FEXTRA
        && header[10..12] == XLEN.to_le_bytes()
        && header[12..14] == SUBFIELD_ID
        && header[14..16] == 4u16.to_le_bytes();
    if !fixed_ok {
        return Err(FrameError::BadHeader {
            found: header[..HEADER_LEN].to_vec(),
        });
    }
    Ok(u32::from_le_bytes(header[16..20].try_into().unwrap()))
}

/// Header and trailer fields of a whole member.
pub fn parse_frame(member: &[u8]) -> Result<MemberFrame, FrameError> {
    let member_len = parse_header(member)?;
    if member.len() < HEADER_LEN + TRAILER_LEN {
        return Err(FrameError::Short);
    }
    let t = member.len() - TRAILER_LEN;
    Ok(MemberFrame {
        member_len,
        crc32: u32::from_le_bytes(member[t..t + 4].try_into().unwrap()),
        isize: u32::from_le_bytes(member[t + 4..t + 8].try_into().unwrap()),
    })
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("header says the member is {recorded} bytes long, but it is {actual}")]
    Length { recorded: u32, actual: usize },
    #[error("deflate data is corrupt")]
    Corrupt,
    #[error("holds {actual} bytes of stream, expected {expected}")]
    Size { expected: u64, actual: u64 },
    #[error("CRC-32 of the data is {actual:08x}, expected {expected:08x}")]
    Crc { expected: u32, actual: u32 },
}

/// Decompresses one member holding `expected_len` bytes and checks its
/// length fields and CRC-32 against its trailer.
pub fn decode(
    decompressor: &mut Decompressor,
    member: &[u8],
    expected_len: u64,
) -> Result<Vec<u8>, DecodeError> {
    let frame = parse_frame(member)?;
    if frame.member_len as usize != member.len() {
        return Err(DecodeError::Length {
            recorded: frame.member_len,
            actual: member.len(),
        });
    }
    if u64::from(frame.isize) != expected_len & 0xffff_ffff {
        return Err(DecodeError::Size {
            expected: expected_len,
            actual: u64::from(frame.isize),
        });
    }
    // One spare byte tells "exactly right" from "would have gone on".
    let mut out = vec![0u8; expected_len as usize + 1];
    let deflate = &member[HEADER_LEN..member.len() - TRAILER_LEN];
    let n = match decompressor.deflate_decompress(deflate, &mut out) {
        Ok(n) => n,
        Err(DecompressionError::BadData) => return Err(DecodeError::Corrupt),
        Err(DecompressionError::InsufficientSpace) => {
            return Err(DecodeError::Size {
                expected: expected_len,
                actual: out.len() as u64,
            });
        }
    };
    if n as u64 != expected_len {
        return Err(DecodeError::Size {
            expected: expected_len,
            actual: n as u64,
        });
    }
    out.truncate(n);
    let crc = libdeflater::crc32(&out);
    if crc != frame.crc32 {
        return Err(DecodeError::Crc {
            expected: frame.crc32,
            actual: crc,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_round_trips_and_records_its_length() {
        let data: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let member = encode(&mut compressor(1), 1, &data);
        let frame = parse_frame(&member).unwrap();
        assert_eq!(frame.member_len as usize, member.len());
        assert_eq!(frame.isize as usize, data.len());
        assert_eq!(frame.crc32, libdeflater::crc32(&data));
        let back = decode(&mut Decompressor::new(), &member, data.len() as u64).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn incompressible_members_are_stored_and_still_gzip() {
        // xorshift noise: deflate cannot shrink it.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let data: Vec<u8> = (0..(1 << 20) + 12_345)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let member = encode(&mut compressor(1), 1, &data);
        let blocks = data.len().div_ceil(STORED_BLOCK);
        assert_eq!(
            member.len(),
            HEADER_LEN + data.len() + 5 * blocks + TRAILER_LEN
        );
        let back = decode(&mut Decompressor::new(), &member, data.len() as u64).unwrap();
        assert_eq!(back, data);
        // An independent decoder agrees.
        let mut gunzip = std::process::Command::new("gzip")
            .arg("-dc")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = gunzip.stdin.take().unwrap();
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            stdin.write_all(&member).unwrap();
        });
        let out = gunzip.wait_with_output().unwrap();
        writer.join().unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, data);
        // Compressible data is still compressed.
        let text = b"guest memory full of text ".repeat(40_000);
        assert!(encode(&mut compressor(1), 1, &text).len() < text.len() / 10);
    }

    #[test]
    fn empty_member_is_valid() {
        let member = encode(&mut compressor(6), 6, b"");
        assert_eq!(decode(&mut Decompressor::new(), &member, 0).unwrap(), b"");
    }

    #[test]
    fn corrupt_member_is_refused() {
        let data = vec![7u8; 50_000];
        let mut member = encode(&mut compressor(1), 1, &data);
        let mid = member.len() / 2;
        member[mid] ^= 0x40;
        assert!(decode(&mut Decompressor::new(), &member, data.len() as u64).is_err());
        let mut member = encode(&mut compressor(1), 1, &data);
        let crc_at = member.len() - 8;
        member[crc_at] ^= 1;
        assert!(matches!(
            decode(&mut Decompressor::new(), &member, data.len() as u64),
            Err(DecodeError::Crc { .. })
        ));
    }
}
