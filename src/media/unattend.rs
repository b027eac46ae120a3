//! autounattend.xml for Windows 7 … 11 and Server 2012 R2 … 2025 (amd64).
//!
//! Every element written here is one Microsoft documents in the unattended
//! Windows Setup reference for the component and pass it sits in; see
//! `docs/windows-media.md` for the list and the sources. The first-logon
//! commands find the Cygwin ISO by its marker file and hand over to
//! `cygvm\firstlogon.cmd` on it (see `unattend/`).

use std::io;

use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};

use crate::config::{Config, Firmware, WindowsVersion};
use crate::media::password::{self, PasswordSetting};
use crate::media::product_key::{Edition, GenericKey, generic_key};

/// Everything an answer file and the bootstrap files are made from.
pub struct MediaContext<'a> {
    pub config: &'a Config,
    /// The admin password: the configured one, or one generated per image.
    pub admin_password: &'a str,
    /// OpenSSH one-line public key (`ssh-ed25519 …`) the host logs in with.
    pub client_public_key: &'a str,
    /// File name at the root of the Cygwin ISO that identifies it.
    pub marker_name: &'a str,
    /// Content of the marker file, so the guest knows it found our ISO.
    pub media_id: &'a str,
    /// The install.wim image Setup will install, from the ISO's metadata,
    /// when it has been read; it decides the generic product key.
    pub image: Option<SelectedImage>,
}

/// The install.wim image Setup installs, as the ISO's XML metadata
/// describes it.
pub use crate::media::wim::WimImage as SelectedImage;

/// An answer file ready for the floppy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerFile {
    /// `autounattend.xml` or `winnt.sif`.
    pub name: &'static str,
    pub bytes: Vec<u8>,
    /// Files that go next to it on the floppy (XP/2003: the first-logon
    /// script), as (name, content).
    pub companions: Vec<(&'static str, Vec<u8>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum AnswerFileError {
    #[error(
        "Windows {version} installs from {expected}, not {requested}; this is a bug in the caller, use media::answer_file"
    )]
    WrongFormat {
        version: WindowsVersion,
        requested: &'static str,
        expected: &'static str,
    },
    #[error(
        "key `guest.product_key`: Windows {version} cannot install without a product key; set product_key = \"XXXXX-XXXXX-XXXXX-XXXXX-XXXXX\" from your licence"
    )]
    ProductKeyRequired { version: WindowsVersion },
    #[error(
        "key `guest.product_key`: Windows {version} Setup stops at its product-key page without a key, and Microsoft publishes no generic key for the edition {edition:?}; set product_key = \"XXXXX-XXXXX-XXXXX-XXXXX-XXXXX\" from your licence, or choose an edition with a generic key (Pro, Education, Enterprise and their N editions)"
    )]
    NoGenericKey {
        version: WindowsVersion,
        edition: String,
    },
    #[error(
        "key `guest.timezone`: winnt.sif (Windows {version}) needs a numeric time zone and cygvm knows none for {zone:?}; use one of: {known}"
    )]
    UnknownTimeZone {
        version: WindowsVersion,
        zone: String,
        known: String,
    },
    #[error("key `{key}`: {value:?} {problem}")]
    UnsafeValue {
        key: &'static str,
        value: String,
        problem: String,
    },
    #[error("cannot write the answer file")]
    Write(#[from] io::Error),
}

pub const AUTOUNATTEND_NAME: &str = "autounattend.xml";

/// Where firstlogon.cmd and bootstrap.sh leave status and logs on the guest.
pub const GUEST_STATE_DIR: &str = r"C:\cygvm";

/// Drive letters searched for the Cygwin ISO: every letter but the floppies
/// and the system drive.
pub const SEARCHED_DRIVES: [char; 23] = [
    'D', 'E', 'F', 'G', 'H', 'I', 'J', 'K', 'L', 'M', 'N', 'O', 'P', 'Q', 'R', 'S', 'T', 'U', 'V',
    'W', 'X', 'Y', 'Z',
];

/// Picks the answer file format for the configured Windows version.
pub fn answer_file(ctx: &MediaContext) -> Result<AnswerFile, AnswerFileError> {
    if ctx.config.guest.version.uses_winnt_sif() {
        use crate::media::winnt_sif::{
            FIRSTLOGON_SCRIPT_NAME, WINNT_SIF_NAME, firstlogon_script, winnt_sif,
        };
        Ok(AnswerFile {
            name: WINNT_SIF_NAME,
            bytes: winnt_sif(ctx)?.into_bytes(),
            companions: vec![(FIRSTLOGON_SCRIPT_NAME, firstlogon_script(ctx).into_bytes())],
        })
    } else {
        Ok(AnswerFile {
            name: AUTOUNATTEND_NAME,
            bytes: autounattend_xml(ctx)?.into_bytes(),
            companions: Vec::new(),
        })
    }
}

/// Cygwin's installer at the root of the ISO: XP and 2003 need the x86 one.
pub fn installer_name(version: WindowsVersion) -> &'static str {
    if version.uses_winnt_sif() {
        "setup-x86.exe"
    } else {
        "setup-x86_64.exe"
    }
}

/// Cygwin setup's flags for this Windows, for the install (firstlogon.cmd
/// through config.cmd) and the refresh alike; the per-run `-l`, `-R` and
/// `-P` come after them. `-q` quiet, `-L` install from the local directory,
/// `-n -N -d` no shortcuts, start menu or desktop icons, `-X` no signature
/// check (the mirror's setup.ini is checked and rewritten on the host, so a
/// .sig next to it would not match).
///
/// Setup refuses Windows older than the Cygwin release it installs
/// supports unless given `--allow-unsupported-windows` (added in setup
/// 2.878): XP and 2003 (NT 5.x, refused since that release) and Windows 7
/// (NT 6.1; current Cygwin needs 8.1 / Server 2012 R2). Cygwin's install
/// page gives the flag for exactly these, with a Time Machine mirror of
/// their era.
pub fn setup_flags(version: WindowsVersion) -> &'static str {
    if version.runs_current_cygwin() {
        SETUP_FLAGS
    } else {
        "-q -L -n -N -d -X --allow-unsupported-windows"
    }
}

/// [`setup_flags`] on every Windows current Cygwin supports.
pub const SETUP_FLAGS: &str = "-q -L -n -N -d -X";

/// Where firstlogon.cmd records the flags it ran setup with, so a refresh
/// runs setup the same way (Cygwin's path of `C:\cygvm\setup-flags.txt`).
pub const SETUP_FLAGS_RECORD: &str = "/cygdrive/c/cygvm/setup-flags.txt";

/// The Cygwin root in the guest. The config's default `C:\cygwin64` becomes
/// `C:\cygwin` for XP/2003, where Cygwin is 32-bit.
pub fn cygwin_root(config: &Config) -> String {
    let root = &config.cygwin.root.0;
    if config.guest.version.uses_winnt_sif() && root.eq_ignore_ascii_case(r"C:\cygwin64") {
        r"C:\cygwin".to_string()
    } else {
        root.clone()
    }
}

/// Which image of install.wim to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSelector {
    /// `/IMAGE/NAME`.
    Name(String),
    /// `/IMAGE/INDEX`.
    Index(u32),
}

/// The configured edition or index; otherwise a name per version: Pro for
/// client releases, Standard with the Desktop Experience for servers. These
/// are the names Microsoft's ISOs carry in install.wim. A name, not index 1:
/// index 1 is Home on the consumer ISOs of 10 and 11 (which has no generic
/// key) and Server Core on the evaluation ISOs.
pub fn image_selector(config: &Config) -> ImageSelector {
    let g = &config.guest;
    if let Some(name) = &g.edition {
        return ImageSelector::Name(name.clone());
    }
    if let Some(index) = g.index {
        return ImageSelector::Index(index);
    }
    let name = match g.version {
        WindowsVersion::Win7 => "Windows 7 PROFESSIONAL",
        WindowsVersion::Win81 => "Windows 8.1 Pro",
        WindowsVersion::Win10 => "Windows 10 Pro",
        WindowsVersion::Win11 => "Windows 11 Pro",
        WindowsVersion::Server2012R2 => "Windows Server 2012 R2 SERVERSTANDARD",
        WindowsVersion::Server2016 => "Windows Server 2016 SERVERSTANDARD",
        WindowsVersion::Server2019 => "Windows Server 2019 SERVERSTANDARD",
        WindowsVersion::Server2022 => "Windows Server 2022 SERVERSTANDARD",
        WindowsVersion::Server2025 => "Windows Server 2025 SERVERSTANDARD",
        // winnt.sif has no image selection.
        WindowsVersion::Xp | WindowsVersion::Server2003 => return ImageSelector::Index(1),
    };
    ImageSelector::Name(name.to_string())
}

/// The product key for windowsPE's `UserData/ProductKey`: the configured
/// one, else Microsoft's generic key for the edition (see
/// `media::product_key`), else none. The edition is the ISO image's when
/// known, else the configured or default `/IMAGE/NAME`.
pub fn product_key(ctx: &MediaContext) -> Result<Option<String>, AnswerFileError> {
    let g = &ctx.config.guest;
    if let Some(key) = &g.product_key {
        return Ok(Some(key.0.clone()));
    }
    let selector = image_selector(ctx.config);
    let edition = match (&ctx.image, &selector) {
        (Some(image), _) => Edition::of_image(image),
        (None, ImageSelector::Name(name)) => Edition {
            name: Some(name),
            edition_id: None,
        },
        (None, ImageSelector::Index(_)) => Edition {
            name: None,
            edition_id: None,
        },
    };
    match generic_key(g.version, edition) {
        GenericKey::Key(key) => Ok(Some(key.to_string())),
        GenericKey::NoneNeeded | GenericKey::Unknown => Ok(None),
        GenericKey::Missing => Err(AnswerFileError::NoGenericKey {
            version: g.version,
            edition: edition
                .name
                .or(edition.edition_id)
                .unwrap_or_default()
                .to_string(),
        }),
    }
}

/// Checks the values that end up in cmd and shell command lines.
pub(crate) fn check_context(ctx: &MediaContext) -> Result<(), AnswerFileError> {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    if ctx.marker_name.is_empty()
        || ctx.marker_name.len() > 64
        || !ctx.marker_name.chars().all(plain)
    {
        return Err(AnswerFileError::UnsafeValue {
            key: "media.marker_name",
            value: ctx.marker_name.to_string(),
            problem: "must be 1-64 letters, digits, '.', '-' or '_'".into(),
        });
    }
    if ctx.media_id.is_empty() || ctx.media_id.len() > 64 || !ctx.media_id.chars().all(plain) {
        return Err(AnswerFileError::UnsafeValue {
            key: "media.media_id",
            value: ctx.media_id.to_string(),
            problem: "must be 1-64 letters, digits, '.', '-' or '_'".into(),
        });
    }
    let root = cygwin_root(ctx.config);
    let root_ok = root
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '\\' | ':' | '.' | '-' | '_'));
    if !root_ok {
        return Err(AnswerFileError::UnsafeValue {
            key: "cygwin.root",
            value: root,
            problem: "may only hold letters, digits, '\\', '.', '-' and '_' (no spaces): the first-logon scripts pass it through cmd and bash".into(),
        });
    }
    if ctx.admin_password.is_empty() || ctx.admin_password.chars().any(char::is_control) {
        return Err(AnswerFileError::UnsafeValue {
            key: "guest.admin_password",
            value: "<hidden>".into(),
            problem: "must be non-empty and free of control characters".into(),
        });
    }
    let key = ctx.client_public_key.trim();
    if key.lines().count() != 1 || !key.starts_with("ssh-") && !key.starts_with("ecdsa-") {
        return Err(AnswerFileError::UnsafeValue {
            key: "secrets.client_public_key",
            value: key.chars().take(40).collect(),
            problem: "must be one OpenSSH public key line (ssh-ed25519 AAAA…)".into(),
        });
    }
    Ok(())
}

/// The cmd line run at first logon: finds the drive holding the marker and
/// runs `firstlogon.cmd` from it, never assuming a drive letter.
pub fn marker_search_command(ctx: &MediaContext) -> String {
    let drives: Vec<String> = SEARCHED_DRIVES.iter().map(char::to_string).collect();
    format!(
        "cmd.exe /d /c for %d in ({drives}) do @if exist %d:\\{marker} (call %d:\\cygvm\\firstlogon.cmd %d: {id} & exit /b 0)",
        drives = drives.join(" "),
        marker = ctx.marker_name,
        id = ctx.media_id,
    )
}

/// Run after the search: when firstlogon.cmd never started there is no
/// status file, so say why and power off instead of waiting forever.
pub fn marker_missing_command(shutdown: &str) -> String {
    format!(
        "cmd.exe /d /c if not exist {dir}\\status.txt (echo failed: find-cygwin-iso> {dir}\\status.txt & {shutdown})",
        dir = GUEST_STATE_DIR
    )
}

const ARCH: &str = "amd64";

/// autounattend.xml for `ctx.config.guest.version` (Windows 7 or newer).
pub fn autounattend_xml(ctx: &MediaContext) -> Result<String, AnswerFileError> {
    let g = &ctx.config.guest;
    if g.version.uses_winnt_sif() {
        return Err(AnswerFileError::WrongFormat {
            version: g.version,
            requested: AUTOUNATTEND_NAME,
            expected: crate::media::winnt_sif::WINNT_SIF_NAME,
        });
    }
    check_context(ctx)?;
    let key = product_key(ctx)?;
    let mut x = Xml::new();
    x.w.write_event(Event::Decl(BytesDecl::new("1.0", Some("utf-8"), None)))?;
    x.open(
        "unattend",
        &[
            ("xmlns", "urn:schemas-microsoft-com:unattend"),
            (
                "xmlns:wcm",
                "http://schemas.microsoft.com/WMIConfig/2002/State",
            ),
            ("xmlns:xsi", "http://www.w3.org/2001/XMLSchema-instance"),
        ],
    )?;
    windows_pe(&mut x, ctx, key.as_deref())?;
    specialize(&mut x, ctx)?;
    oobe_system(&mut x, ctx)?;
    x.close("unattend")?;
    let mut text = String::from_utf8(x.w.into_inner()).map_err(io::Error::other)?;
    text.push('\n');
    Ok(text)
}

fn windows_pe(x: &mut Xml, ctx: &MediaContext, key: Option<&str>) -> io::Result<()> {
    let g = &ctx.config.guest;
    let locale = g.locale.0.as_str();
    x.open("settings", &[("pass", "windowsPE")])?;

    x.component("Microsoft-Windows-International-Core-WinPE")?;
    x.open("SetupUILanguage", &[])?;
    x.leaf("UILanguage", locale)?;
    x.close("SetupUILanguage")?;
    x.leaf("InputLocale", locale)?;
    x.leaf("SystemLocale", locale)?;
    x.leaf("UILanguage", locale)?;
    x.leaf("UserLocale", locale)?;
    x.close("component")?;

    x.component("Microsoft-Windows-Setup")?;
    disk_configuration(x, g.firmware())?;
    x.open("ImageInstall", &[])?;
    x.open("OSImage", &[])?;
    x.open("InstallFrom", &[])?;
    x.open("MetaData", &[("wcm:action", "add")])?;
    match image_selector(ctx.config) {
        ImageSelector::Name(name) => {
            x.leaf("Key", "/IMAGE/NAME")?;
            x.leaf("Value", &name)?;
        }
        ImageSelector::Index(index) => {
            x.leaf("Key", "/IMAGE/INDEX")?;
            x.leaf("Value", &index.to_string())?;
        }
    }
    x.close("MetaData")?;
    x.close("InstallFrom")?;
    x.open("InstallTo", &[])?;
    x.leaf("DiskID", "0")?;
    x.leaf("PartitionID", &windows_partition(g.firmware()).to_string())?;
    x.close("InstallTo")?;
    x.leaf("WillShowUI", "OnError")?;
    x.close("OSImage")?;
    x.close("ImageInstall")?;
    x.open("UserData", &[])?;
    x.leaf("AcceptEula", "true")?;
    x.leaf("FullName", ctx.config.guest.admin_user.0.as_str())?;
    x.leaf("Organization", "cygvm")?;
    if let Some(key) = key {
        x.open("ProductKey", &[])?;
        x.leaf("Key", key)?;
        x.leaf("WillShowUI", "OnError")?;
        x.close("ProductKey")?;
    }
    x.close("UserData")?;
    if g.version == WindowsVersion::Win11 {
        // Windows 11 Setup refuses machines without TPM 2.0, Secure Boot,
        // 4 GB or a listed CPU; a QEMU guest may have none of them.
        x.open("RunSynchronous", &[])?;
        let checks = [
            "BypassTPMCheck",
            "BypassSecureBootCheck",
            "BypassRAMCheck",
            "BypassCPUCheck",
            "BypassStorageCheck",
        ];
        for (i, check) in checks.iter().enumerate() {
            x.open("RunSynchronousCommand", &[("wcm:action", "add")])?;
            x.leaf("Order", &(i + 1).to_string())?;
            x.leaf(
                "Path",
                &format!(
                    r"reg.exe add HKLM\SYSTEM\Setup\LabConfig /v {check} /t REG_DWORD /d 1 /f"
                ),
            )?;
            x.leaf("Description", &format!("Windows 11 Setup: {check}"))?;
            x.close("RunSynchronousCommand")?;
        }
        x.close("RunSynchronous")?;
    }
    x.close("component")?;
    x.close("settings")
}

/// Partition number Windows goes to.
pub fn windows_partition(firmware: Firmware) -> u32 {
    match firmware {
        Firmware::Uefi => 3,
        Firmware::Bios => 2,
    }
}

fn disk_configuration(x: &mut Xml, firmware: Firmware) -> io::Result<()> {
    x.open("DiskConfiguration", &[])?;
    x.open("Disk", &[("wcm:action", "add")])?;
    x.leaf("DiskID", "0")?;
    x.leaf("WillWipeDisk", "true")?;
    x.open("CreatePartitions", &[])?;
    let create: &[(&str, Option<u32>)] = match firmware {
        // EFI system partition, Microsoft reserved partition, Windows.
        Firmware::Uefi => &[("EFI", Some(100)), ("MSR", Some(16)), ("Primary", None)],
        // System Reserved (active, boot files), Windows.
        Firmware::Bios => &[("Primary", Some(500)), ("Primary", None)],
    };
    for (i, (kind, size)) in create.iter().enumerate() {
        x.open("CreatePartition", &[("wcm:action", "add")])?;
        x.leaf("Order", &(i + 1).to_string())?;
        x.leaf("Type", kind)?;
        match size {
            Some(mb) => x.leaf("Size", &mb.to_string())?,
            None => x.leaf("Extend", "true")?,
        }
        x.close("CreatePartition")?;
    }
    x.close("CreatePartitions")?;
    x.open("ModifyPartitions", &[])?;
    // The MSR gets no format or label, as in Microsoft's UEFI sample.
    let (system_format, system_label) = match firmware {
        Firmware::Uefi => ("FAT32", "System"),
        Firmware::Bios => ("NTFS", "System Reserved"),
    };
    x.open("ModifyPartition", &[("wcm:action", "add")])?;
    x.leaf("Order", "1")?;
    x.leaf("PartitionID", "1")?;
    x.leaf("Format", system_format)?;
    x.leaf("Label", system_label)?;
    if firmware == Firmware::Bios {
        x.leaf("Active", "true")?;
    }
    x.close("ModifyPartition")?;
    x.open("ModifyPartition", &[("wcm:action", "add")])?;
    x.leaf("Order", "2")?;
    x.leaf("PartitionID", &windows_partition(firmware).to_string())?;
    x.leaf("Format", "NTFS")?;
    x.leaf("Label", "Windows")?;
    x.leaf("Letter", "C")?;
    x.close("ModifyPartition")?;
    x.close("ModifyPartitions")?;
    x.close("Disk")?;
    x.leaf("WillShowUI", "OnError")?;
    x.close("DiskConfiguration")
}

fn specialize(x: &mut Xml, ctx: &MediaContext) -> io::Result<()> {
    let g = &ctx.config.guest;
    x.open("settings", &[("pass", "specialize")])?;
    x.component("Microsoft-Windows-Shell-Setup")?;
    x.leaf("ComputerName", &g.computer_name.0)?;
    x.leaf("TimeZone", &g.timezone.0)?;
    x.close("component")?;
    if g.version == WindowsVersion::Win11 {
        // Windows 11's OOBE insists on a network ("Let's connect you to a
        // network") unless BypassNRO is set before it starts; the guest's
        // private switch has no internet. The value is what OOBE's own
        // bypassnro.cmd sets; specialize runs before OOBE.
        x.component("Microsoft-Windows-Deployment")?;
        x.open("RunSynchronous", &[])?;
        x.open("RunSynchronousCommand", &[("wcm:action", "add")])?;
        x.leaf("Order", "1")?;
        x.leaf("Path", BYPASS_NRO)?;
        x.leaf("Description", "Windows 11 OOBE: no network needed")?;
        x.close("RunSynchronousCommand")?;
        x.close("RunSynchronous")?;
        x.close("component")?;
    }
    x.close("settings")
}

/// Lets Windows 11's OOBE finish without a network connection.
pub const BYPASS_NRO: &str = r"reg.exe add HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\OOBE /v BypassNRO /t REG_DWORD /d 1 /f";

fn oobe_system(x: &mut Xml, ctx: &MediaContext) -> io::Result<()> {
    let g = &ctx.config.guest;
    let locale = g.locale.0.as_str();
    let user = g.admin_user.0.as_str();
    x.open("settings", &[("pass", "oobeSystem")])?;

    x.component("Microsoft-Windows-International-Core")?;
    x.leaf("InputLocale", locale)?;
    x.leaf("SystemLocale", locale)?;
    x.leaf("UILanguage", locale)?;
    x.leaf("UserLocale", locale)?;
    x.close("component")?;

    x.component("Microsoft-Windows-Shell-Setup")?;
    x.open("UserAccounts", &[])?;
    x.password(
        "AdministratorPassword",
        ctx.admin_password,
        PasswordSetting::Administrator,
    )?;
    x.open("LocalAccounts", &[])?;
    x.open("LocalAccount", &[("wcm:action", "add")])?;
    x.password("Password", ctx.admin_password, PasswordSetting::Account)?;
    x.leaf("Description", "cygvm build account")?;
    x.leaf("DisplayName", user)?;
    x.leaf("Group", "Administrators")?;
    x.leaf("Name", user)?;
    x.close("LocalAccount")?;
    x.close("LocalAccounts")?;
    x.close("UserAccounts")?;

    x.open("AutoLogon", &[])?;
    x.password("Password", ctx.admin_password, PasswordSetting::Account)?;
    x.leaf("Enabled", "true")?;
    // One logon runs the first-logon commands; they end by powering off.
    x.leaf("LogonCount", "1")?;
    x.leaf("Username", user)?;
    x.close("AutoLogon")?;

    x.open("OOBE", &[])?;
    x.leaf("HideEULAPage", "true")?;
    if g.version >= WindowsVersion::Win81 {
        // Introduced with Windows 8; not in the Windows 7 schema.
        x.leaf("HideLocalAccountScreen", "true")?;
        x.leaf("HideOEMRegistrationScreen", "true")?;
        x.leaf("HideOnlineAccountScreens", "true")?;
    }
    x.leaf("HideWirelessSetupInOOBE", "true")?;
    if g.version < WindowsVersion::Win10 {
        // Deprecated in Windows 10, where it is ignored.
        x.leaf("NetworkLocation", "Work")?;
    }
    x.leaf("ProtectYourPC", "3")?;
    x.close("OOBE")?;

    x.open("FirstLogonCommands", &[])?;
    let shutdown = "shutdown.exe /s /t 0";
    let commands = [
        (
            format!(r"cmd.exe /d /c if not exist {GUEST_STATE_DIR}\ mkdir {GUEST_STATE_DIR}"),
            "cygvm: create the status directory",
        ),
        (
            marker_search_command(ctx),
            "cygvm: find the Cygwin ISO by its marker and run cygvm\\firstlogon.cmd",
        ),
        (
            marker_missing_command(shutdown),
            "cygvm: record a missing Cygwin ISO and power off",
        ),
    ];
    for (i, (line, description)) in commands.iter().enumerate() {
        x.open("SynchronousCommand", &[("wcm:action", "add")])?;
        x.leaf("CommandLine", line)?;
        x.leaf("Description", description)?;
        x.leaf("Order", &(i + 1).to_string())?;
        x.leaf("RequiresUserInput", "false")?;
        x.close("SynchronousCommand")?;
    }
    x.close("FirstLogonCommands")?;
    x.close("component")?;
    x.close("settings")
}

/// A thin layer over quick-xml's writer: indented elements, escaped text.
struct Xml {
    w: Writer<Vec<u8>>,
}

impl Xml {
    fn new() -> Self {
        Self {
            w: Writer::new_with_indent(Vec::new(), b' ', 2),
        }
    }

    fn open(&mut self, name: &str, attrs: &[(&str, &str)]) -> io::Result<()> {
        let mut start = BytesStart::new(name);
        for attr in attrs {
            start.push_attribute(*attr);
        }
        self.w.write_event(Event::Start(start))
    }

    fn close(&mut self, name: &str) -> io::Result<()> {
        self.w.write_event(Event::End(BytesEnd::new(name)))
    }

    fn leaf(&mut self, name: &str, text: &str) -> io::Result<()> {
        self.w
            .create_element(name)
            .write_text_content(BytesText::new(text))?;
        Ok(())
    }

    /// A component with the attribute set every Microsoft sample carries.
    fn component(&mut self, name: &str) -> io::Result<()> {
        self.open(
            "component",
            &[
                ("name", name),
                ("processorArchitecture", ARCH),
                ("publicKeyToken", "31bf3856ad364e35"),
                ("language", "neutral"),
                ("versionScope", "nonSxS"),
            ],
        )
    }

    fn password(&mut self, element: &str, pw: &str, setting: PasswordSetting) -> io::Result<()> {
        self.open(element, &[])?;
        self.leaf("Value", &password::encode(pw, setting))?;
        self.leaf("PlainText", "false")?;
        self.close(element)
    }
}
