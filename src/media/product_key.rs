//! Which product key the answer file carries when `guest.product_key` is
//! not set.
//!
//! Windows 10 and 11 Setup stops at its product-key page unless the answer
//! file names a key: the consumer ISOs hold several editions and the key
//! says which one may be installed. Microsoft publishes one key per volume
//! edition that installs that edition without activating it: the Generic
//! Volume License Keys (GVLKs, "KMS client product keys") on Microsoft
//! Learn's "Key Management Services (KMS) client activation and product
//! keys". A GVLK activates only against a KMS host, and the guest's private
//! network has none, so the guest stays unactivated, as evaluation and
//! unlicensed installs are. Evaluation media take no key at all: their
//! images' EditionID ends in `Eval` (`ServerStandardEval`,
//! `EnterpriseEval`) and their names say `Evaluation`.
//!
//! Windows 7 and 8.1 retail media refuse volume keys, and the name of a
//! server image does not say whether the ISO is evaluation or volume media
//! (both are `Windows Server 2022 SERVERSTANDARD`), so for those cygvm uses
//! a key only when it knows the image's EditionID.

use crate::config::WindowsVersion;
use crate::media::unattend::SelectedImage;

/// Windows 10 and 11 editions: (EditionID, name after "Windows 1x ", GVLK).
/// Microsoft lists the same key for both versions.
const CLIENT_KEYS: &[(&str, &str, &str)] = &[
    ("Professional", "Pro", "W269N-WFGWX-YVC9B-4J6C9-T83GX"),
    ("ProfessionalN", "Pro N", "MH37W-N47XK-V7XM9-C7227-GCQG9"),
    (
        "ProfessionalWorkstation",
        "Pro for Workstations",
        "NRG8B-VKK3Q-CXVCJ-9G2XF-6Q84J",
    ),
    (
        "ProfessionalWorkstationN",
        "Pro for Workstations N",
        "9FNHH-K3HBT-3W4TD-6383H-6XYWF",
    ),
    (
        "ProfessionalEducation",
        "Pro Education",
        "6TP4R-GNPTD-KYYHQ-7B7DP-J447Y",
    ),
    (
        "ProfessionalEducationN",
        "Pro Education N",
        "YVWGF-BXNMC-HTQYQ-CPQ99-66QFC",
    ),
    ("Education", "Education", "NW6C2-QMPVW-D7KKK-3GKT6-VCFB2"),
    ("EducationN", "Education N", "2WH4N-8QGBV-H22JP-CT43Q-MDWWJ"),
    ("Enterprise", "Enterprise", "NPPR9-FWDCX-D2C8J-H872K-2YT43"),
    (
        "EnterpriseN",
        "Enterprise N",
        "DPH2V-TTNVB-4X9Q3-TJR4H-KHJW4",
    ),
];

/// Windows 10 and 11 Home editions, which have no volume licence and so no
/// GVLK: (EditionID, name after "Windows 1x ").
const HOME_EDITIONS: &[(&str, &str)] = &[
    ("Core", "Home"),
    ("CoreN", "Home N"),
    ("CoreSingleLanguage", "Home Single Language"),
    ("CoreCountrySpecific", "Home China"),
];

/// Server editions by EditionID: (version, Standard GVLK, Datacenter GVLK).
/// Server Core images carry the same EditionID as their Desktop Experience
/// twins.
const SERVER_KEYS: &[(WindowsVersion, &str, &str)] = &[
    (
        WindowsVersion::Server2012R2,
        "D2N9P-3P6X9-2R39C-7RTCD-MDVJX",
        "W3GGN-FT8W3-Y4M27-J84CP-Q3VJ9",
    ),
    (
        WindowsVersion::Server2016,
        "WC2BQ-8NRM3-FDDYY-2BFGV-KHKQY",
        "CB7KF-BWN84-R7R2Y-793K2-8XDDG",
    ),
    (
        WindowsVersion::Server2019,
        "N69G4-B89J2-4G8F4-WWYCC-J464C",
        "WMDGN-G9PQG-XVVXX-R3X43-63DFG",
    ),
    (
        WindowsVersion::Server2022,
        "VDYBN-27WPP-V4HQT-9VMD4-VMK7H",
        "WX4NM-KYWYW-QJJR4-XV3QB-6VM33",
    ),
    (
        WindowsVersion::Server2025,
        "TVRH6-WHNXV-R9WG3-9XRFY-MY832",
        "D764K-2NDRG-47T6Q-P8T8W-YP6DF",
    ),
];

/// What cygvm knows about the edition Setup will install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edition<'a> {
    /// `/IMAGE/NAME`, from the ISO or the config.
    pub name: Option<&'a str>,
    /// `WINDOWS/EDITIONID`, known only from the ISO's metadata.
    pub edition_id: Option<&'a str>,
}

impl<'a> Edition<'a> {
    pub fn of_image(image: &'a SelectedImage) -> Self {
        Self {
            name: Some(&image.name),
            edition_id: image.edition_id.as_deref(),
        }
    }

    /// Evaluation media: they install without a key and refuse one.
    pub fn is_evaluation(&self) -> bool {
        let eval = |s: &str| s.to_ascii_lowercase().contains("eval");
        self.name.is_some_and(eval) || self.edition_id.is_some_and(eval)
    }
}

/// The outcome for an edition without a configured key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenericKey {
    /// Microsoft's generic key for the edition.
    Key(&'static str),
    /// No key: evaluation media, or a version whose Setup goes on without.
    NoneNeeded,
    /// Setup needs a key and Microsoft publishes none for this edition
    /// (the Home editions): the user must configure one.
    Missing,
    /// The edition is not known (selected by index without the image's
    /// metadata, or a name cygvm has no entry for): no key is written.
    Unknown,
}

/// The generic key for `edition` of `version`.
pub fn generic_key(version: WindowsVersion, edition: Edition) -> GenericKey {
    if edition.is_evaluation() {
        return GenericKey::NoneNeeded;
    }
    match version {
        WindowsVersion::Win10 | WindowsVersion::Win11 => {
            if let Some(id) = edition.edition_id {
                if let Some((_, _, key)) = CLIENT_KEYS
                    .iter()
                    .find(|(edition_id, _, _)| edition_id.eq_ignore_ascii_case(id))
                {
                    return GenericKey::Key(key);
                }
                if HOME_EDITIONS
                    .iter()
                    .any(|(e, _)| e.eq_ignore_ascii_case(id))
                {
                    return GenericKey::Missing;
                }
                return GenericKey::Unknown;
            }
            let prefix = if version == WindowsVersion::Win10 {
                "Windows 10 "
            } else {
                "Windows 11 "
            };
            let Some(short) = edition.name.map(str::trim).and_then(|name| {
                name.get(..prefix.len())
                    .filter(|p| p.eq_ignore_ascii_case(prefix))
                    .map(|_| name[prefix.len()..].trim())
            }) else {
                return GenericKey::Unknown;
            };
            if let Some((_, _, key)) = CLIENT_KEYS
                .iter()
                .find(|(_, s, _)| s.eq_ignore_ascii_case(short))
            {
                GenericKey::Key(key)
            } else if HOME_EDITIONS
                .iter()
                .any(|(_, s)| s.eq_ignore_ascii_case(short))
            {
                GenericKey::Missing
            } else {
                GenericKey::Unknown
            }
        }
        v if v.is_server() => {
            let Some(id) = edition.edition_id else {
                // A name alone cannot tell evaluation from volume media.
                return GenericKey::Unknown;
            };
            let Some((_, standard, datacenter)) = SERVER_KEYS.iter().find(|(s, _, _)| *s == v)
            else {
                return GenericKey::Unknown;
            };
            match id.to_ascii_lowercase().as_str() {
                "serverstandard" => GenericKey::Key(standard),
                "serverdatacenter" => GenericKey::Key(datacenter),
                _ => GenericKey::Unknown,
            }
        }
        // 7 and 8.1 retail media refuse volume keys; XP and 2003 need the
        // user's own key (winnt.sif checks that).
        _ => GenericKey::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &str) -> Edition<'_> {
        Edition {
            name: Some(name),
            edition_id: None,
        }
    }

    #[test]
    fn client_editions_by_name_or_edition_id() {
        let pro = GenericKey::Key("W269N-WFGWX-YVC9B-4J6C9-T83GX");
        assert_eq!(
            generic_key(WindowsVersion::Win11, named("Windows 11 Pro")),
            pro
        );
        assert_eq!(
            generic_key(WindowsVersion::Win10, named("Windows 10 Pro")),
            pro
        );
        assert_eq!(
            generic_key(
                WindowsVersion::Win11,
                Edition {
                    name: Some("Windows 11 Pro"),
                    edition_id: Some("Professional")
                }
            ),
            pro
        );
        assert_eq!(
            generic_key(WindowsVersion::Win11, named("Windows 11 Pro N")),
            GenericKey::Key("MH37W-N47XK-V7XM9-C7227-GCQG9")
        );
        assert_eq!(
            generic_key(WindowsVersion::Win11, named("Windows 11 Education")),
            GenericKey::Key("NW6C2-QMPVW-D7KKK-3GKT6-VCFB2")
        );
        // Microsoft publishes no key for Home.
        assert_eq!(
            generic_key(WindowsVersion::Win11, named("Windows 11 Home")),
            GenericKey::Missing
        );
        assert_eq!(
            generic_key(
                WindowsVersion::Win10,
                Edition {
                    name: Some("Windows 10 Home"),
                    edition_id: Some("Core")
                }
            ),
            GenericKey::Missing
        );
        // Names cygvm does not know, or of another version, are not
        // guessed at: no key.
        assert_eq!(
            generic_key(WindowsVersion::Win11, named("Windows 10 Pro")),
            GenericKey::Unknown
        );
        assert_eq!(
            generic_key(
                WindowsVersion::Win11,
                named("Windows 11 IoT Enterprise LTSC")
            ),
            GenericKey::Unknown
        );
        assert_eq!(
            generic_key(
                WindowsVersion::Win11,
                Edition {
                    name: None,
                    edition_id: None
                }
            ),
            GenericKey::Unknown
        );
    }

    #[test]
    fn evaluation_media_take_no_key() {
        assert_eq!(
            generic_key(
                WindowsVersion::Win11,
                Edition {
                    name: Some("Windows 11 Enterprise Evaluation"),
                    edition_id: Some("EnterpriseEval")
                }
            ),
            GenericKey::NoneNeeded
        );
        assert_eq!(
            generic_key(
                WindowsVersion::Server2022,
                Edition {
                    name: Some("Windows Server 2022 SERVERSTANDARD"),
                    edition_id: Some("ServerStandardEval")
                }
            ),
            GenericKey::NoneNeeded
        );
    }

    #[test]
    fn servers_need_the_edition_id() {
        assert_eq!(
            generic_key(
                WindowsVersion::Server2022,
                named("Windows Server 2022 SERVERSTANDARD")
            ),
            GenericKey::Unknown
        );
        assert_eq!(
            generic_key(
                WindowsVersion::Server2025,
                Edition {
                    name: Some("Windows Server 2025 SERVERDATACENTERCORE"),
                    edition_id: Some("ServerDatacenter")
                }
            ),
            GenericKey::Key("D764K-2NDRG-47T6Q-P8T8W-YP6DF")
        );
        assert_eq!(
            generic_key(WindowsVersion::Win81, named("Windows 8.1 Pro")),
            GenericKey::Unknown
        );
    }
}
