//! winnt.sif for Windows XP and Server 2003, read by Setup from the floppy.
//!
//! This legacy format holds the administrator password in plain text
//! (`EncryptedAdminPassword=No`); the media builder keeps the file and the
//! floppy mode 0600. XP/2003 cannot create a named account from the answer
//! file, so the first `[GuiRunOnce]` commands create `guest.admin_user` with
//! the same password while the built-in Administrator is logged on.

use std::fmt::Write as _;

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
    line("[GuiRunOnce]");
    // `echo Y|` answers net's question about passwords longer than 14
    // characters, which would otherwise wait for a keypress.
    line(&format!(
        "Command0=\"cmd.exe /d /c echo Y| net user {user} {pw} /add\""
    ));
    line(&format!(
        "Command1=\"cmd.exe /d /c net localgroup Administrators {user} /add\""
    ));
    line(&format!("Command2=\"{}\"", legacy_marker_search(ctx)));
    Ok(s)
}

/// The first-logon search as a chain of `if exist … else` so that the
/// command holds no `%`, which winnt.sif would take for a string key.
pub fn legacy_marker_search(ctx: &MediaContext) -> String {
    let mut cmd = String::from("cmd.exe /d /c ");
    for d in SEARCHED_DRIVES {
        let _ = write!(
            cmd,
            "if exist {d}:\\{marker} ({d}:\\cygvm\\firstlogon.cmd {d}: {id}) else ",
            marker = ctx.marker_name,
            id = ctx.media_id,
        );
    }
    let _ = write!(
        cmd,
        "(mkdir {dir} & echo failed: find-cygwin-iso> {dir}\\status.txt & shutdown.exe -s -t 0)",
        dir = GUEST_STATE_DIR
    );
    cmd
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
