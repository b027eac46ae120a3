//! File names in the three namespaces of the image: the real name (Rock Ridge
//! `NM`, and the input), the Joliet name (UCS-2, what Windows reads) and the
//! primary ISO 9660 identifier (upper-case d-characters, for old readers).

use std::collections::HashSet;

/// Longest Joliet name, in characters: what `mkisofs -joliet-long` writes and
/// Windows reads. The Joliet specification says 64, which real Cygwin archive
/// names exceed.
pub const MAX_NAME_CHARS: usize = 103;
/// Deepest directory level ISO 9660 allows; the root is level 1.
pub const MAX_DIR_LEVEL: usize = 8;
/// Longest full path (components and separators) in characters, so a path
/// stays usable under a drive letter on Windows.
pub const MAX_PATH_CHARS: usize = 240;
/// Primary identifiers: ISO 9660 level 2 allows 30 characters of name plus
/// extension (31 with the dot).
const MAX_PRIMARY_CHARS: usize = 30;
/// Characters Joliet forbids, plus those Windows cannot open.
const FORBIDDEN: &str = "*/:;?\\\"<>|";

/// Why a name component cannot go into the image.
pub fn check_component(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty path component");
    }
    if name == "." || name == ".." {
        return Err("`.` and `..` are not allowed");
    }
    if !name.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
        return Err("only printable ASCII names are supported");
    }
    if let Some(c) = name.chars().find(|c| FORBIDDEN.contains(*c)) {
        return Err(match c {
            '/' => "empty path component",
            _ => "contains one of * : ; ? \\ \" < > | which Joliet or Windows forbid",
        });
    }
    if name.len() > MAX_NAME_CHARS {
        return Err("name longer than 103 characters, the longest Joliet name Windows reads");
    }
    Ok(())
}

/// Joliet identifier: UCS-2 big-endian, without a `;1` version suffix (as
/// mkisofs writes it; some readers mishandle long names with one).
pub fn joliet_ident(name: &str) -> Vec<u8> {
    name.encode_utf16().flat_map(|u| u.to_be_bytes()).collect()
}

/// Assigns primary identifiers to the entries of one directory.
///
/// `names` must come in a deterministic order (sorted by real name); when two
/// names mangle to the same identifier the later one gets a numeric suffix.
/// Files get `;1`; a file without extension keeps the dot (`NAME.;1`).
pub fn primary_idents(names: &[(&str, bool)]) -> Vec<Vec<u8>> {
    let mut used: HashSet<String> = HashSet::new();
    names
        .iter()
        .map(|&(name, is_dir)| {
            let (base, ext) = mangle(name, is_dir);
            let mut n = 0u32;
            let mut stem = base.clone();
            loop {
                let key = format!("{stem}.{ext}");
                if used.insert(key) {
                    break;
                }
                n += 1;
                let suffix = n.to_string();
                let room = MAX_PRIMARY_CHARS - ext.len() - suffix.len();
                stem = format!("{}{suffix}", &base[..base.len().min(room)]);
            }
            if is_dir {
                stem.into_bytes()
            } else {
                format!("{stem}.{ext};1").into_bytes()
            }
        })
        .collect()
}

/// Upper-case d-characters; a file's last dot separates the extension.
fn mangle(name: &str, is_dir: bool) -> (String, String) {
    let d = |s: &str| -> String {
        s.chars()
            .map(|c| match c.to_ascii_uppercase() {
                c @ ('A'..='Z' | '0'..='9' | '_') => c,
                _ => '_',
            })
            .collect()
    };
    let (base, ext) = match name.rsplit_once('.') {
        Some((b, e)) if !is_dir && !b.is_empty() => (d(b), d(e)),
        _ => (d(name), String::new()),
    };
    let ext: String = ext.chars().take(8).collect();
    let room = if is_dir {
        MAX_PRIMARY_CHARS + 1
    } else {
        MAX_PRIMARY_CHARS - ext.len()
    };
    let base: String = base.chars().take(room.max(1)).collect();
    (base, ext)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[u8]) -> &str {
        std::str::from_utf8(v).unwrap()
    }

    #[test]
    fn primary_names_are_d_characters() {
        let ids = primary_idents(&[
            ("libstdc++6-13.2.0-1.tar.xz", false),
            ("setup.ini", false),
            ("README", false),
            ("x86_64", true),
            ("release.d", true),
        ]);
        assert_eq!(s(&ids[0]), "LIBSTDC__6_13_2_0_1_TAR.XZ;1");
        assert_eq!(s(&ids[1]), "SETUP.INI;1");
        assert_eq!(s(&ids[2]), "README.;1");
        assert_eq!(s(&ids[3]), "X86_64");
        assert_eq!(s(&ids[4]), "RELEASE_D");
    }

    #[test]
    fn colliding_primary_names_get_suffixes() {
        let long = "pidgin-funyahoo-plusplus-debuginfo-0-0.4.20180214git-1.tar.xz";
        let long2 = "pidgin-funyahoo-plusplus-debuginfo-0-0.4.20180214git-2.tar.xz";
        let ids = primary_idents(&[
            ("a+b.txt", false),
            ("a-b.txt", false),
            ("A_B.TXT", false),
            (long, false),
            (long2, false),
        ]);
        assert_eq!(s(&ids[0]), "A_B.TXT;1");
        assert_eq!(s(&ids[1]), "A_B1.TXT;1");
        assert_eq!(s(&ids[2]), "A_B2.TXT;1");
        assert_eq!(s(&ids[3]), "PIDGIN_FUNYAHOO_PLUSPLUS_DEB.XZ;1");
        assert_eq!(s(&ids[4]), "PIDGIN_FUNYAHOO_PLUSPLUS_DE1.XZ;1");
        for id in &ids {
            assert!(id.len() <= 33);
        }
    }

    #[test]
    fn components_are_checked() {
        assert!(check_component("libstdc++6").is_ok());
        assert!(check_component(&"a".repeat(103)).is_ok());
        assert!(check_component(&"a".repeat(104)).is_err());
        assert!(check_component("a:b").is_err());
        assert!(check_component("..").is_err());
        assert!(check_component("caf\u{e9}").is_err());
    }
}
