//! winnt.sif for Windows XP and Server 2003, read by Setup from the floppy.
//!
//! This legacy format holds the administrator password in plain text
//! (`EncryptedAdminPassword=No`); the media builder keeps the file and the
//! floppy mode 0600. XP/2003 cannot create a named account from the answer
//! file, so the first `[GuiRunOnce]` commands create `guest.admin_user` with
//! the same password while the built-in Administrator is logged on.

use crate::config::WindowsVersion;
use crate::media::unattend::{
    AnswerFileError, GUEST_STATE_DIR, MediaContext, SEARCHED_DRIVES, check_context,
};

pub const WINNT_SIF_NAME: &str = "winnt.sif";

/// Windows time zone IDs and the index values of Microsoft's "Time Zone
/// Index Values" table that winnt.sif's `TimeZone` key takes. XP has no UTC
/// zone; Greenwich Standard Time (Monrovia, Reykjavik) is UTC without
/// daylight saving, unlike GMT Standard Time (London), which has it.
pub const TIME_ZONE_INDEX: &[(&str, &str)] = &[
    ("UTC", "090"),
    ("Greenwich Standard Time", "090"),
    ("GMT Standard Time", "085"),
    ("W. Europe Standard Time", "110"),
    ("Central Europe Standard Time", "095"),
    ("Central European Standard Time", "100"),
    ("Romance Standard Time", "105"),
    ("E. Europe Standard Time", "115"),
    ("FLE Standard Time", "125"),
    ("Russian Standard Time", "145"),
    ("India Standard Time", "190"),
    ("China Standard Time", "210"),
    ("Tokyo Standard Time", "235"),
    ("AUS Eastern Standard Time", "255"),
    ("Hawaiian Standard Time", "002"),
    ("Pacific Standard Time", "004"),
    ("Mountain Standard Time", "010"),
    ("Central Standard Time", "020"),
    ("Eastern Standard Time", "035"),
    ("Atlantic Standard Time", "050"),
];

/// The winnt.sif index for a Windows time zone ID.
pub fn time_zone_index(zone: &str) -> Option<&'static str> {
    TIME_ZONE_INDEX
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(zone))
        .map(|(_, index)| *index)
}

/// winnt.sif for Windows XP or Server 2003.
pub fn winnt_sif(ctx: &MediaContext) -> Result<String, AnswerFileError> {
    let g = &ctx.config.guest;
    if !g.version.uses_winnt_sif() {
        return Err(AnswerFileError::WrongFormat {
            version: g.version,
            requested: WINNT_SIF_NAME,
            expected: crate::media::unattend::AUTOUNATTEND_NAME,
        });
    }
    check_context(ctx)?;
    let key = g
        .product_key
        .as_ref()
        .ok_or(AnswerFileError::ProductKeyRequired { version: g.version })?;
    let zone = time_zone_index(&g.timezone.0).ok_or_else(|| AnswerFileError::UnknownTimeZone {
        version: g.version,
        zone: g.timezone.0.clone(),
        known: TIME_ZONE_INDEX
            .iter()
            .map(|(name, _)| format!("{name:?}"))
            .collect::<Vec<_>>()
            .join(", "),
    })?;
    check_legacy_password(ctx.admin_password)?;
    let user = &g.admin_user.0;
    let pw = ctx.admin_password;

    let mut s = String::new();
    let mut line = |text: &str| {
        s.push_str(text);
        s.push_str("\r\n");
    };
    line("; Written by cygvm. Legacy format: the administrator password below is");
    line("; plain text, so this file is kept readable by its owner only.");
    line("[Data]");
    line("AutoPartition=1");
    line("MsDosInitiated=\"0\"");
    line("UnattendedInstall=\"Yes\"");
    line("");
    line("[Unattended]");
    line("UnattendMode=FullUnattended");
    line("OemSkipEula=Yes");
    line("OemPreinstall=No");
    line("Repartition=Yes");
    line("TargetPath=\\WINDOWS");
    line("UnattendSwitch=Yes");
    line("WaitForReboot=No");
    line("");
    line("[GuiUnattended]");
    line(&format!("AdminPassword=\"{pw}\""));
    line("EncryptedAdminPassword=No");
    line("AutoLogon=Yes");
    line("AutoLogonCount=1");
    line("OEMSkipRegional=1");
    line("OemSkipWelcome=1");
    line(&format!("TimeZone={zone}"));
    line("");
    line("[UserData]");
    line(&format!("ProductKey=\"{}\"", key.0));
    line(&format!("FullName=\"{user}\""));
    line("OrgName=\"cygvm\"");
    line(&format!("ComputerName={}", g.computer_name.0));
    line("");
    if g.version == WindowsVersion::Server2003 {
        line("[LicenseFilePrintData]");
        line("AutoMode=PerServer");
        line("AutoUsers=5");
        line("");
    }
    line("[Identification]");
    line("JoinWorkgroup=WORKGROUP");
    line("");
    line("[Networking]");
    line("InstallDefaultComponents=Yes");
    line("");
    // The first-logon search lives in a script on the floppy, next to this
    // file, so the [GuiRunOnce] lines stay short (see FIRSTLOGON_SCRIPT_NAME).
    line("[GuiRunOnce]");
    // `echo Y|` answers net's question about passwords longer than 14
    // characters, which would otherwise wait for a keypress.
    line(&format!(
        "Command0=\"cmd.exe /d /c echo Y| net user {user} {pw} /add\""
    ));
    line(&format!(
        "Command1=\"cmd.exe /d /c net localgroup Administrators {user} /add\""
    ));
    line(&format!(
        "Command2=\"cmd.exe /d /c A:\\{FIRSTLOGON_SCRIPT_NAME}\""
    ));
    Ok(s)
}

/// The script on the floppy that XP/2003's last [GuiRunOnce] command runs.
/// The search over 23 drive letters, inline, made a 1,934-character
/// [GuiRunOnce] line; Microsoft's unattend.txt reference gives no length
/// limit for those lines, and RunOnce values are run by Explorer, so the
/// line is kept to a short call. An 8.3 name: FAT12 and XP's Setup need no
/// long names for it.
pub const FIRSTLOGON_SCRIPT_NAME: &str = "CYGVM.CMD";

/// [`FIRSTLOGON_SCRIPT_NAME`]'s content (CRLF line ends): finds the drive
/// holding the marker and runs `firstlogon.cmd` from it; with no such drive
/// it records why and powers off, as the search of autounattend.xml does.
pub fn firstlogon_script(ctx: &MediaContext) -> String {
    let drives: Vec<String> = SEARCHED_DRIVES.iter().map(char::to_string).collect();
    let mut s = String::new();
    let mut line = |text: &str| {
        s.push_str(text);
        s.push_str("\r\n");
    };
    line("@echo off");
    line("rem Written by cygvm: the first logon of XP/2003 (winnt.sif [GuiRunOnce]).");
    line("rem Finds the Cygwin ISO by its marker, never by a fixed drive letter.");
    line(&format!(
        "for %%d in ({drives}) do if exist %%d:\\{marker} (call %%d:\\cygvm\\firstlogon.cmd %%d: {id} & goto :eof)",
        drives = drives.join(" "),
        marker = ctx.marker_name,
        id = ctx.media_id,
    ));
    line(&format!(
        "if not exist {GUEST_STATE_DIR}\\ mkdir {GUEST_STATE_DIR}"
    ));
    line(&format!(
        ">{GUEST_STATE_DIR}\\status.txt echo failed: find-cygwin-iso"
    ));
    line("shutdown.exe -s -t 0");
    s
}

/// The password goes into a quoted winnt.sif value and onto a `net user`
/// command line, so it must survive both unquoted.
fn check_legacy_password(pw: &str) -> Result<(), AnswerFileError> {
    let bad = pw
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '"' | '%' | '^' | '&' | '|' | '<' | '>'));
    if let Some(c) = bad {
        return Err(AnswerFileError::UnsafeValue {
            key: "guest.admin_password",
            value: "<hidden>".into(),
            problem: format!(
                "holds {c:?}; for XP/2003 use printable ASCII without spaces or \" % ^ & | < >"
            ),
        });
    }
    if pw == "*" {
        return Err(AnswerFileError::UnsafeValue {
            key: "guest.admin_password",
            value: "<hidden>".into(),
            problem: "\"*\" means a blank password in winnt.sif; choose another".into(),
        });
    }
    Ok(())
}
