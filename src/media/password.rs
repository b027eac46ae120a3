//! The password encoding of Windows answer files.
//!
//! Windows System Image Manager hides a password by appending the name of
//! the setting it belongs to, encoding the result as UTF-16LE and then as
//! base64, and marks it `<PlainText>false</PlainText>`. Microsoft's own
//! example for `UserAccounts/AdministratorPassword` is
//! `cAB3AEEAZABtAGkAbgBpAHMAdAByAGEAdABvAHIAUABhAHMAcwB3AG8AcgBkAA==`, which
//! is `"pw" + "AdministratorPassword"`; local accounts and AutoLogon use the
//! suffix `"Password"`. It is an obfuscation, not encryption.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Which setting a password belongs to; decides the suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordSetting {
    /// `UserAccounts/AdministratorPassword`.
    Administrator,
    /// `LocalAccount/Password` and `AutoLogon/Password`.
    Account,
}

impl PasswordSetting {
    pub fn suffix(self) -> &'static str {
        match self {
            Self::Administrator => "AdministratorPassword",
            Self::Account => "Password",
        }
    }
}

/// Encodes `password` the way Windows SIM writes it for `setting`.
pub fn encode(password: &str, setting: PasswordSetting) -> String {
    let text = format!("{password}{}", setting.suffix());
    let utf16: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
    STANDARD.encode(utf16)
}

/// Reverses [`encode`]; `None` when the value is not in that form.
pub fn decode(value: &str, setting: PasswordSetting) -> Option<String> {
    let bytes = STANDARD.decode(value).ok()?;
    if bytes.len() % 2 != 0 {
        return None;
    }
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let text = String::from_utf16(&units).ok()?;
    text.strip_suffix(setting.suffix()).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_microsofts_documented_example() {
        // From the Microsoft-Windows-Shell-Setup UserAccounts |
        // AdministratorPassword | Value reference page.
        assert_eq!(
            encode("pw", PasswordSetting::Administrator),
            "cAB3AEEAZABtAGkAbgBpAHMAdAByAGEAdABvAHIAUABhAHMAcwB3AG8AcgBkAA=="
        );
    }

    #[test]
    fn round_trips_with_non_ascii() {
        for setting in [PasswordSetting::Administrator, PasswordSetting::Account] {
            let v = encode("pä<&\"'ß€", setting);
            assert_eq!(decode(&v, setting).as_deref(), Some("pä<&\"'ß€"));
        }
        let v = encode("x", PasswordSetting::Account);
        assert_eq!(decode(&v, PasswordSetting::Administrator), None);
    }
}
