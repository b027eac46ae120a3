//! A stand-in for a guest's migration stream: 4 KiB pages, half of them
//! random (already-compressed or encrypted data), the other half zero pages
//! and text-like pages that deflate well. Deterministic for a seed.

pub const PAGE: usize = 4096;

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

const WORDS: &[&[u8]] = &[
    b"mov ",
    b"rax",
    b", ",
    b"[rbp-0x18]",
    b"call ",
    b"ntdll!RtlAllocateHeap",
    b"\n",
    b"C:\\Windows\\System32\\",
    b"kernel32.dll",
    b"cygwin1.dll",
    b"\x00\x00\x00\x00",
    b"\xff\xff\xff\xff",
    b"HKEY_LOCAL_MACHINE\\SOFTWARE\\",
    b"/usr/bin/bash",
    b" -l",
    b"\x48\x89\x5c\x24\x08",
    b"\x48\x83\xec\x20",
    b"PATH=",
    b"0123456789abcdef",
];

/// `len` bytes of synthetic stream for `seed`.
pub fn stream(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut out = vec![0u8; len];
    for page in out.chunks_mut(PAGE) {
        match rng.next() % 4 {
            0 | 1 => {
                for word in page.chunks_mut(8) {
                    let v = rng.next().to_le_bytes();
                    word.copy_from_slice(&v[..word.len()]);
                }
            }
            2 => {} // zero page
            _ => {
                let mut at = 0;
                while at < page.len() {
                    let r = rng.next();
                    let w = WORDS[(r % WORDS.len() as u64) as usize];
                    let n = w.len().min(page.len() - at);
                    page[at..at + n].copy_from_slice(&w[..n]);
                    at += n;
                    if r >> 60 == 0 && at + 2 <= page.len() {
                        page[at..at + 2].copy_from_slice(&(r as u16).to_le_bytes());
                        at += 2;
                    }
                }
            }
        }
    }
    out
}
