//! `cygvm.toml`: the shape of an image. Every key is documented in
//! `docs/config.md`. Values are checked while they are read, so an error
//! names the file, the line and the key.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, de};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub image: ImageConfig,
    #[serde(default)]
    pub guest: GuestConfig,
    #[serde(default)]
    pub cygwin: CygwinConfig,
    #[serde(default)]
    pub network: NetworkConfig,
    #[serde(default)]
    pub provision: ProvisionConfig,
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    /// Directory of the config file; relative paths in it are taken from here.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    pub name: ImageName,
    #[serde(default = "default_image_dir")]
    pub dir: PathBuf,
    /// Generations kept after a refresh (the current one included).
    #[serde(default = "default_keep")]
    pub keep: Keep,
}

fn default_keep() -> Keep {
    Keep(2)
}

/// How many generations to keep: 1 to 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keep(pub usize);

impl<'de> Deserialize<'de> for Keep {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        if (1..=100).contains(&n) {
            Ok(Keep(n as usize))
        } else {
            Err(de::Error::custom(format!(
                "keep = {n} must be between 1 and 100"
            )))
        }
    }
}

fn default_image_dir() -> PathBuf {
    PathBuf::from("images")
}

/// An image name: used as a directory name, so letters, digits, `-`, `_`, `.`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageName(String);

impl ImageName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ImageName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && !s.starts_with('.')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(format!(
                "image name {s:?} must be 1-64 characters of letters, digits, '-', '_' or '.', not starting with '.'"
            ))
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestConfig {
    #[serde(default)]
    pub os: GuestOsKind,
    #[serde(default)]
    pub version: WindowsVersion,
    /// The Windows installation ISO (required for `os = "windows"` installs).
    pub iso: Option<PathBuf>,
    /// `/IMAGE/NAME` in install.wim; mutually exclusive with `index`.
    pub edition: Option<String>,
    /// `/IMAGE/INDEX` in install.wim.
    pub index: Option<u32>,
    pub product_key: Option<ProductKey>,
    /// Defaults to UEFI for Windows 8.1/2012 R2 and newer, BIOS before.
    pub firmware: Option<Firmware>,
    #[serde(default = "default_memory")]
    pub memory: ByteSize,
    #[serde(default = "default_cpus")]
    pub cpus: Cpus,
    #[serde(default = "default_disk")]
    pub disk: ByteSize,
    #[serde(default = "default_locale")]
    pub locale: Locale,
    /// Windows time zone ID, e.g. "UTC" or "W. Europe Standard Time".
    #[serde(default = "default_timezone")]
    pub timezone: NonEmpty,
    #[serde(default = "default_computer_name")]
    pub computer_name: ComputerName,
    #[serde(default = "default_admin_user")]
    pub admin_user: UserName,
    /// Generated per image and kept in the image's secrets when absent.
    pub admin_password: Option<NonEmpty>,
    /// Extra kernel command-line arguments for the linux-standin guest.
    #[serde(default)]
    pub kernel_args: Vec<KernelArg>,
}

impl Default for GuestConfig {
    fn default() -> Self {
        Self {
            os: GuestOsKind::default(),
            version: WindowsVersion::default(),
            iso: None,
            edition: None,
            index: None,
            product_key: None,
            firmware: None,
            memory: default_memory(),
            cpus: default_cpus(),
            disk: default_disk(),
            locale: default_locale(),
            timezone: default_timezone(),
            computer_name: default_computer_name(),
            admin_user: default_admin_user(),
            admin_password: None,
            kernel_args: Vec::new(),
        }
    }
}

impl GuestConfig {
    /// The firmware in effect: the configured one or the version's default.
    pub fn firmware(&self) -> Firmware {
        self.firmware
            .unwrap_or_else(|| self.version.default_firmware())
    }
}

fn default_memory() -> ByteSize {
    ByteSize(4 << 30)
}
fn default_cpus() -> Cpus {
    Cpus(2)
}
fn default_disk() -> ByteSize {
    ByteSize(40 << 30)
}
fn default_locale() -> Locale {
    Locale("en-US".into())
}
fn default_timezone() -> NonEmpty {
    NonEmpty("UTC".into())
}
fn default_computer_name() -> ComputerName {
    ComputerName("CYGVM".into())
}
fn default_admin_user() -> UserName {
    UserName("cygvm".into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuestOsKind {
    #[default]
    Windows,
    LinuxStandin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    Uefi,
    Bios,
}

/// The Windows releases cygvm writes answer files for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum WindowsVersion {
    Xp,
    Server2003,
    Win7,
    Win81,
    Server2012R2,
    Win10,
    #[default]
    Win11,
    Server2016,
    Server2019,
    Server2022,
    Server2025,
}

impl WindowsVersion {
    pub const ALL: [WindowsVersion; 11] = [
        Self::Xp,
        Self::Server2003,
        Self::Win7,
        Self::Win81,
        Self::Server2012R2,
        Self::Win10,
        Self::Win11,
        Self::Server2016,
        Self::Server2019,
        Self::Server2022,
        Self::Server2025,
    ];

    /// The spelling used in cygvm.toml.
    pub fn config_name(self) -> &'static str {
        match self {
            Self::Xp => "xp",
            Self::Server2003 => "2003",
            Self::Win7 => "7",
            Self::Win81 => "8.1",
            Self::Server2012R2 => "server2012r2",
            Self::Win10 => "10",
            Self::Win11 => "11",
            Self::Server2016 => "server2016",
            Self::Server2019 => "server2019",
            Self::Server2022 => "server2022",
            Self::Server2025 => "server2025",
        }
    }

    /// XP and Server 2003 install from winnt.sif; everything newer from
    /// autounattend.xml.
    pub fn uses_winnt_sif(self) -> bool {
        matches!(self, Self::Xp | Self::Server2003)
    }

    pub fn is_server(self) -> bool {
        matches!(
            self,
            Self::Server2003
                | Self::Server2012R2
                | Self::Server2016
                | Self::Server2019
                | Self::Server2022
                | Self::Server2025
        )
    }

    /// Current Cygwin packages need Windows 8.1 / Server 2012 R2 (NT 6.3).
    pub fn runs_current_cygwin(self) -> bool {
        self >= Self::Win81
    }

    /// Windows NT version number (major, minor), as Cygwin's `_windows`
    /// pseudo-package compares it.
    pub fn nt_version(self) -> (u32, u32) {
        match self {
            Self::Xp => (5, 1),
            Self::Server2003 => (5, 2),
            Self::Win7 => (6, 1),
            Self::Win81 | Self::Server2012R2 => (6, 3),
            _ => (10, 0),
        }
    }

    pub fn default_firmware(self) -> Firmware {
        match self {
            Self::Xp | Self::Server2003 | Self::Win7 => Firmware::Bios,
            _ => Firmware::Uefi,
        }
    }
}

impl fmt::Display for WindowsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.config_name())
    }
}

impl FromStr for WindowsVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let norm = s.trim().to_ascii_lowercase().replace([' ', '-', '_'], "");
        let norm = norm.strip_prefix("windows").unwrap_or(&norm);
        let alias = match norm {
            "server2003" => Some(Self::Server2003),
            "81" => Some(Self::Win81),
            "2012r2" => Some(Self::Server2012R2),
            "2016" => Some(Self::Server2016),
            "2019" => Some(Self::Server2019),
            "2022" => Some(Self::Server2022),
            "2025" => Some(Self::Server2025),
            _ => None,
        };
        let found = alias.or_else(|| Self::ALL.into_iter().find(|v| v.config_name() == norm));
        found.ok_or_else(|| {
            let names: Vec<_> = Self::ALL.iter().map(|v| v.config_name()).collect();
            format!(
                "unknown Windows version {s:?}; expected one of {}",
                names.join(", ")
            )
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CygwinConfig {
    /// URL of a Cygwin mirror, or a local directory holding x86_64/setup.ini.
    pub mirror: Option<String>,
    /// Path or URL of Cygwin's installer; when absent it is taken from the
    /// mirror's top directory.
    #[serde(default = "default_setup_exe")]
    pub setup_exe: String,
    #[serde(default = "default_packages")]
    pub packages: Vec<PackageName>,
    /// Where Cygwin is installed in the guest.
    #[serde(default = "default_cygwin_root")]
    pub root: WindowsPath,
    /// Local cache of verified archives; defaults to `<image.dir>/.cache/cygwin`.
    pub cache: Option<PathBuf>,
}

impl Default for CygwinConfig {
    fn default() -> Self {
        Self {
            mirror: None,
            setup_exe: default_setup_exe(),
            packages: default_packages(),
            root: default_cygwin_root(),
            cache: None,
        }
    }
}

fn default_setup_exe() -> String {
    "setup-x86_64.exe".into()
}
fn default_packages() -> Vec<PackageName> {
    vec![PackageName("openssh".into())]
}
fn default_cygwin_root() -> WindowsPath {
    WindowsPath(r"C:\cygwin64".into())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    #[serde(default = "default_guest_addr")]
    pub guest: Ipv4Cidr,
    #[serde(default = "default_controller_addr")]
    pub controller: Ipv4Addr,
    /// Let the guest take its address by DHCP instead of the static one.
    #[serde(default)]
    pub dhcp: bool,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            guest: default_guest_addr(),
            controller: default_controller_addr(),
            dhcp: false,
        }
    }
}

fn default_guest_addr() -> Ipv4Cidr {
    Ipv4Cidr {
        addr: Ipv4Addr::new(192, 168, 0, 1),
        prefix: 24,
    }
}
fn default_controller_addr() -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 0, 2)
}

/// Deadlines of the install phases; unset ones depend on the guest OS.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsConfig {
    /// From the guest's first boot to its own power-off after installing.
    pub install: Option<Duration>,
    /// From starting the guest to SSH answering.
    pub boot: Option<Duration>,
}

impl Config {
    /// The install deadline: configured, or 90 min for Windows, 5 min for the stand-in.
    pub fn install_timeout(&self) -> std::time::Duration {
        self.timeouts
            .install
            .map(|d| d.0)
            .unwrap_or(match self.guest.os {
                GuestOsKind::Windows => std::time::Duration::from_secs(90 * 60),
                GuestOsKind::LinuxStandin => std::time::Duration::from_secs(5 * 60),
            })
    }

    /// The boot deadline: configured, or 15 min for Windows, 5 min for the stand-in.
    pub fn boot_timeout(&self) -> std::time::Duration {
        self.timeouts
            .boot
            .map(|d| d.0)
            .unwrap_or(match self.guest.os {
                GuestOsKind::Windows => std::time::Duration::from_secs(15 * 60),
                GuestOsKind::LinuxStandin => std::time::Duration::from_secs(5 * 60),
            })
    }
}

/// A duration written as `90m`, `15m`, `300s` or `2h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duration(pub std::time::Duration);

impl FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("duration {s:?} must be a number with a unit: s, m or h"))?;
        let secs = match unit {
            "s" => n,
            "m" => n * 60,
            "h" => n * 3600,
            _ => return Err(format!("duration {s:?} needs a unit: s, m or h")),
        };
        if secs == 0 {
            return Err(format!("duration {s:?} must be greater than zero"));
        }
        Ok(Self(std::time::Duration::from_secs(secs)))
    }
}

/// One kernel command-line word: no spaces, quotes or control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelArg(pub String);

impl FromStr for KernelArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty()
            || s.chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '"')
        {
            Err(format!(
                "kernel argument {s:?} must be one word without spaces or quotes"
            ))
        } else {
            Ok(Self(s.to_string()))
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionConfig {
    #[serde(default)]
    pub commands: Vec<String>,
}

// ---- validated scalar types -------------------------------------------

/// Implements `Deserialize` through `FromStr`, so a bad value is reported by
/// toml with its line and column.
macro_rules! deserialize_from_str {
    ($($ty:ty),*) => {$(
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(de::Error::custom)
            }
        }
    )*};
}

deserialize_from_str!(
    ImageName,
    WindowsVersion,
    ByteSize,
    Locale,
    NonEmpty,
    ComputerName,
    UserName,
    ProductKey,
    PackageName,
    WindowsPath,
    Ipv4Cidr,
    Duration,
    KernelArg
);

/// A size in bytes, written as `4G`, `512M`, `40GiB` or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn bytes(self) -> u64 {
        self.0
    }
    pub fn mib(self) -> u64 {
        self.0 >> 20
    }
}

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(digits_end);
        let n: u64 = num.parse().map_err(|_| {
            format!("size {s:?} must be a number with an optional unit (K, M, G, T)")
        })?;
        let shift = match unit.trim().to_ascii_uppercase().as_str() {
            "" | "B" => 0,
            "K" | "KB" | "KIB" => 10,
            "M" | "MB" | "MIB" => 20,
            "G" | "GB" | "GIB" => 30,
            "T" | "TB" | "TIB" => 40,
            other => {
                return Err(format!(
                    "size {s:?} has unknown unit {other:?}; use K, M, G or T"
                ));
            }
        };
        let bytes = n
            .checked_mul(1u64 << shift)
            .ok_or_else(|| format!("size {s:?} is too large"))?;
        if bytes == 0 {
            return Err(format!("size {s:?} must be greater than zero"));
        }
        Ok(Self(bytes))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let units = [(40, "T"), (30, "G"), (20, "M"), (10, "K")];
        for (shift, name) in units {
            if self.0 >= 1 << shift && self.0.is_multiple_of(1 << shift) {
                return write!(f, "{}{}", self.0 >> shift, name);
            }
        }
        write!(f, "{}", self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpus(pub u32);

impl<'de> Deserialize<'de> for Cpus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        if (1..=64).contains(&n) {
            Ok(Cpus(n as u32))
        } else {
            Err(de::Error::custom(format!(
                "cpus = {n} must be between 1 and 64"
            )))
        }
    }
}

/// A language tag such as `en-US` or `de-DE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locale(pub String);

impl FromStr for Locale {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split('-');
        let lang = parts.next().unwrap_or_default();
        let region = parts.next();
        let ok = (2..=3).contains(&lang.len())
            && lang.chars().all(|c| c.is_ascii_lowercase())
            && region.is_some_and(|r| r.len() >= 2 && r.chars().all(|c| c.is_ascii_alphanumeric()))
            && parts.all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric()));
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(format!(
                "locale {s:?} must be a language tag like \"en-US\""
            ))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonEmpty(pub String);

impl FromStr for NonEmpty {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().is_empty() {
            Err("value must not be empty".into())
        } else if s.chars().any(|c| c.is_control()) {
            Err(format!("value {s:?} must not contain control characters"))
        } else {
            Ok(Self(s.to_string()))
        }
    }
}

/// A NetBIOS computer name: at most 15 characters, letters, digits and `-`,
/// not all digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComputerName(pub String);

impl FromStr for ComputerName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 15
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !s.chars().all(|c| c.is_ascii_digit());
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(format!(
                "computer name {s:?} must be 1-15 letters, digits or '-', and not only digits"
            ))
        }
    }
}

/// A local Windows account name (also used as the Cygwin user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserName(pub String);

impl FromStr for UserName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 20
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !s.eq_ignore_ascii_case("administrator")
            && !s.eq_ignore_ascii_case("guest");
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(format!(
                "user name {s:?} must be 1-20 letters, digits, '-', '_' or '.', and not a built-in account"
            ))
        }
    }
}

/// A Windows product key: five groups of five characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductKey(pub String);

impl FromStr for ProductKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let groups: Vec<_> = s.split('-').collect();
        let ok = groups.len() == 5
            && groups
                .iter()
                .all(|g| g.len() == 5 && g.chars().all(|c| c.is_ascii_alphanumeric()));
        if ok {
            Ok(Self(s.to_ascii_uppercase()))
        } else {
            Err(format!(
                "product key {s:?} must look like XXXXX-XXXXX-XXXXX-XXXXX-XXXXX"
            ))
        }
    }
}

/// A Cygwin package name as setup.ini spells it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PackageName(pub String);

impl PackageName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for PackageName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        // `name=test` asks for the package's test version (docs/cygwin.md).
        let (name, version) = match s.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (s, None),
        };
        let ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'));
        if !ok {
            return Err(format!(
                "package name {s:?} is not a valid Cygwin package name"
            ));
        }
        match version {
            None | Some("test") => Ok(Self(s.to_string())),
            Some(v) => Err(format!(
                "package {s:?}: only `{name}=test` (its test version) can follow the name, not {v:?}"
            )),
        }
    }
}

impl PackageName {
    /// The package's name without a `=test` request: what Cygwin's setup
    /// is given, since the mirror's setup.ini offers the requested test
    /// version as the current one.
    pub fn name(&self) -> &str {
        self.0.split_once('=').map_or(&self.0, |(n, _)| n)
    }
}

/// An absolute Windows path such as `C:\cygwin64`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowsPath(pub String);

impl FromStr for WindowsPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let b = s.as_bytes();
        let ok = b.len() >= 3
            && b[0].is_ascii_alphabetic()
            && b[1] == b':'
            && b[2] == b'\\'
            && !s.contains(['/', '"', '<', '>', '|', '?', '*'])
            && !s[2..].contains(':');
        if ok {
            Ok(Self(s.trim_end_matches('\\').to_string()))
        } else {
            Err(format!(
                "{s:?} must be an absolute Windows path like C:\\cygwin64"
            ))
        }
    }
}

/// An IPv4 address with its prefix length, e.g. `192.168.0.1/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    pub fn netmask(self) -> Ipv4Addr {
        let bits = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        };
        Ipv4Addr::from(bits)
    }

    pub fn network(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & u32::from(self.netmask()))
    }

    pub fn contains(self, other: Ipv4Addr) -> bool {
        u32::from(other) & u32::from(self.netmask()) == u32::from(self.network())
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} must be an address with prefix, like 192.168.0.1/24"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (8..=30).contains(p))
            .ok_or_else(|| format!("prefix in {s:?} must be between 8 and 30"))?;
        let cidr = Self { addr, prefix };
        if addr == cidr.network() || u32::from(addr) | !u32::from(cidr.netmask()) == u32::from(addr)
        {
            return Err(format!(
                "{s:?} is the network or broadcast address, not a host"
            ));
        }
        Ok(cidr)
    }
}

// ---- loading -----------------------------------------------------------

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses config text; `path` names the file in errors and anchors
    /// relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|span| line_col(text, span.start))
                .unwrap_or((1, 1));
            ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                column,
                message: e.message().trim().to_string(),
            }
        })?;
        config.base_dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        config.check(text, path)?;
        Ok(config)
    }

    /// Checks that span several keys.
    fn check(&self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let fail = |key: &str, message: String| {
            let (line, column) = locate_key(text, key);
            Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                column,
                message: format!("key `{key}`: {message}"),
            })
        };
        let g = &self.guest;
        if g.edition.is_some() && g.index.is_some() {
            return fail(
                "guest.index",
                "set either `edition` or `index`, not both".into(),
            );
        }
        if g.index == Some(0) {
            return fail("guest.index", "image index starts at 1".into());
        }
        if g.os == GuestOsKind::Windows
            && g.version.uses_winnt_sif()
            && g.firmware() == Firmware::Uefi
        {
            return fail(
                "guest.firmware",
                format!(
                    "Windows {} cannot boot with UEFI; use firmware = \"bios\"",
                    g.version
                ),
            );
        }
        if g.memory.bytes() < 256 << 20 {
            return fail(
                "guest.memory",
                format!("{} is less than the 256M minimum", g.memory),
            );
        }
        if g.disk.bytes() < 1 << 30 {
            return fail(
                "guest.disk",
                format!("{} is less than the 1G minimum", g.disk),
            );
        }
        if let Some(pw) = &g.admin_password
            && g.version.uses_winnt_sif()
            && pw.0.len() > 127
        {
            return fail("guest.admin_password", "longer than 127 characters".into());
        }
        let net = &self.network;
        if !net.guest.contains(net.controller) {
            return fail(
                "network.controller",
                format!(
                    "{} is outside the guest's network {}",
                    net.controller, net.guest
                ),
            );
        }
        if net.guest.addr == net.controller {
            return fail(
                "network.controller",
                "must differ from the guest's address".into(),
            );
        }
        if self.cygwin.packages.is_empty() {
            return fail(
                "cygwin.packages",
                "list at least one package (openssh is needed for SSH)".into(),
            );
        }
        Ok(())
    }

    /// The config an image generation was made from: `config.toml` as the
    /// user wrote it, with relative paths taken from the directory the
    /// original lived in (recorded in `config.base`).
    pub fn load_generation(dir: &Path) -> Result<Self, ConfigError> {
        let mut config = Self::load(&dir.join("config.toml"))?;
        if let Ok(base) = std::fs::read_to_string(dir.join("config.base")) {
            config.base_dir = PathBuf::from(base.trim_end_matches('\n'));
        }
        Ok(config)
    }

    /// Records a config in an image generation directory (see
    /// [`Config::load_generation`]).
    pub fn store_in_generation(&self, source: &Path, dir: &Path) -> std::io::Result<()> {
        let text = std::fs::read(source)?;
        crate::fsutil::write_atomic(&dir.join("config.toml"), &text, 0o644)?;
        let base = std::path::absolute(&self.base_dir)?;
        crate::fsutil::write_atomic(
            &dir.join("config.base"),
            format!("{}\n", base.display()).as_bytes(),
            0o644,
        )
    }

    /// Resolves a path from the config relative to the config's directory.
    pub fn resolve_path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// `images/<name>`.
    pub fn image_dir(&self) -> PathBuf {
        self.resolve_path(&self.image.dir)
            .join(self.image.name.as_str())
    }

    /// The mirror as given: a URL, or a local directory resolved against
    /// the config's directory.
    pub fn mirror_source(&self) -> Option<String> {
        self.cygwin.mirror.as_ref().map(|m| {
            if m.contains("://") {
                m.clone()
            } else {
                self.resolve_path(Path::new(m))
                    .to_string_lossy()
                    .into_owned()
            }
        })
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// Finds where `table.key` is written, for checks made after parsing.
/// Falls back to the table header, then to line 1.
fn locate_key(text: &str, dotted: &str) -> (usize, usize) {
    let (table, key) = dotted.rsplit_once('.').unwrap_or(("", dotted));
    let mut in_table = table.is_empty();
    let mut table_line = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('[') {
            let name = line.trim_matches(|c| c == '[' || c == ']').trim();
            in_table = name == table;
            if in_table {
                table_line = Some(i + 1);
            }
            continue;
        }
        if in_table
            && let Some((k, _)) = line.split_once('=')
            && k.trim().trim_matches('"') == key
        {
            return (i + 1, raw.len() - raw.trim_start().len() + 1);
        }
    }
    (table_line.unwrap_or(1), 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("cygvm.toml"))
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn example_from_the_design_parses() {
        let c = parse(
            r#"
[image]
name = "cygwin-build"
dir = "images"

[guest]
os = "windows"
version = "11"
iso = "Win11_24H2_English_x64.iso"
edition = "Windows 11 Pro"
firmware = "uefi"
memory = "4G"
cpus = 2
disk = "40G"
locale = "en-US"

[cygwin]
mirror = "https://mirror.example/cygwin/"
setup_exe = "setup-x86_64.exe"
packages = ["openssh", "make", "gcc-core", "cygport"]

[network]
guest = "192.168.0.1/24"
controller = "192.168.0.2"

[provision]
commands = []
"#,
        )
        .unwrap();
        assert_eq!(c.guest.version, WindowsVersion::Win11);
        assert_eq!(c.guest.memory.bytes(), 4 << 30);
        assert_eq!(c.guest.firmware(), Firmware::Uefi);
        assert_eq!(c.cygwin.packages.len(), 4);
        assert_eq!(c.network.guest.netmask(), Ipv4Addr::new(255, 255, 255, 0));
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let c = parse("[image]\nname = \"x\"\n").unwrap();
        assert_eq!(c.guest.os, GuestOsKind::Windows);
        assert_eq!(c.guest.cpus, Cpus(2));
        assert_eq!(c.cygwin.root.0, r"C:\cygwin64");
        assert_eq!(c.network.controller, Ipv4Addr::new(192, 168, 0, 2));
        assert_eq!(c.image_dir(), PathBuf::from("./images/x"));
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = err("[image]\nname = \"x\"\n\n[guest]\nmemroy = \"4G\"\n");
        assert!(e.starts_with("cygvm.toml:5:1: "), "{e}");
        assert!(e.contains("memroy"), "{e}");
    }

    #[test]
    fn wrong_type_names_line() {
        let e = err("[image]\nname = \"x\"\n[guest]\ncpus = \"two\"\n");
        assert!(e.starts_with("cygvm.toml:4:"), "{e}");
        assert!(e.contains("integer") || e.contains("invalid type"), "{e}");
    }

    #[test]
    fn impossible_values_are_errors() {
        let e = err("[image]\nname = \"x\"\n[guest]\nmemory = \"4X\"\n");
        assert!(e.starts_with("cygvm.toml:4:"), "{e}");
        assert!(e.contains("unknown unit"), "{e}");
        let e = err("[image]\nname = \"x\"\n[guest]\ncpus = 0\n");
        assert!(e.contains("between 1 and 64"), "{e}");
        let e = err("[image]\nname = \"x\"\n[guest]\nversion = \"12\"\n");
        assert!(e.contains("unknown Windows version"), "{e}");
        let e = err("[image]\nname = \"../x\"\n");
        assert!(e.starts_with("cygvm.toml:2:"), "{e}");
        let e = err("[image]\nname = \"x\"\n[network]\nguest = \"192.168.0.0/24\"\n");
        assert!(e.contains("network or broadcast"), "{e}");
    }

    #[test]
    fn cross_key_checks_point_at_the_key() {
        let e = err("[image]\nname = \"x\"\n[guest]\nversion = \"xp\"\nfirmware = \"uefi\"\n");
        assert!(e.starts_with("cygvm.toml:5:1: key `guest.firmware`"), "{e}");
        let e = err("[image]\nname = \"x\"\n[network]\ncontroller = \"10.0.0.2\"\n");
        assert!(
            e.starts_with("cygvm.toml:4:1: key `network.controller`"),
            "{e}"
        );
        let e = err("[image]\nname = \"x\"\n[guest]\nedition = \"Pro\"\nindex = 3\n");
        assert!(e.contains("either `edition` or `index`"), "{e}");
    }

    #[test]
    fn missing_image_section_is_an_error() {
        let e = err("[guest]\nos = \"windows\"\n");
        assert!(e.contains("image"), "{e}");
    }

    #[test]
    fn versions_parse_in_several_spellings() {
        assert_eq!(
            "11".parse::<WindowsVersion>().unwrap(),
            WindowsVersion::Win11
        );
        assert_eq!(
            "server2022".parse::<WindowsVersion>().unwrap(),
            WindowsVersion::Server2022
        );
        assert_eq!(
            "Server 2019".parse::<WindowsVersion>().unwrap(),
            WindowsVersion::Server2019
        );
        assert_eq!(
            "8.1".parse::<WindowsVersion>().unwrap(),
            WindowsVersion::Win81
        );
        assert_eq!("XP".parse::<WindowsVersion>().unwrap(), WindowsVersion::Xp);
        assert_eq!(
            "2003".parse::<WindowsVersion>().unwrap(),
            WindowsVersion::Server2003
        );
        for v in WindowsVersion::ALL {
            assert_eq!(v.config_name().parse::<WindowsVersion>().unwrap(), v);
        }
    }

    #[test]
    fn timeouts_default_by_guest_os() {
        let c = parse("[image]\nname = \"x\"\n").unwrap();
        assert_eq!(c.install_timeout().as_secs(), 90 * 60);
        assert_eq!(c.boot_timeout().as_secs(), 15 * 60);
        let c = parse(
            "[image]\nname = \"x\"\n[guest]\nos = \"linux-standin\"\n[timeouts]\nboot = \"20s\"\n",
        )
        .unwrap();
        assert_eq!(c.install_timeout().as_secs(), 5 * 60);
        assert_eq!(c.boot_timeout().as_secs(), 20);
        let e = err("[image]\nname = \"x\"\n[timeouts]\ninstall = \"90\"\n");
        assert!(e.starts_with("cygvm.toml:4:"), "{e}");
        assert!(e.contains("needs a unit"), "{e}");
    }

    #[test]
    fn byte_sizes() {
        assert_eq!("512M".parse::<ByteSize>().unwrap().bytes(), 512 << 20);
        assert_eq!("40GiB".parse::<ByteSize>().unwrap().bytes(), 40 << 30);
        assert_eq!("1024".parse::<ByteSize>().unwrap().bytes(), 1024);
        assert!("0".parse::<ByteSize>().is_err());
        assert!("-1G".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(4 << 30).to_string(), "4G");
    }
}
