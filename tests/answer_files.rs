//! Answer files and bootstrap files as Windows and Cygwin will read them.
//! Golden files: `UPDATE_GOLDEN=1 cargo test --test answer_files` rewrites
//! them; review the diff before committing.

use std::path::{Path, PathBuf};

use cygvm::config::{Config, Firmware, WindowsVersion};
use cygvm::media::bootstrap::bootstrap_files;
use cygvm::media::password::{PasswordSetting, decode};
use cygvm::media::unattend::{
    AnswerFileError, ImageSelector, MediaContext, SelectedImage, answer_file, autounattend_xml,
    image_selector, installer_name, setup_flags,
};
use cygvm::media::winnt_sif::winnt_sif;
use quick_xml::Reader;
use quick_xml::events::Event;

const PASSWORD: &str = "Fixed-Passw0rd";
const CLIENT_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFixedTestKeyFixedTestKeyFixedTestKey00 cygvm";

fn config(version: &str, firmware: &str, extra: &str) -> Config {
    let text = format!(
        "[image]\nname = \"t\"\n[guest]\nversion = \"{version}\"\nfirmware = \"{firmware}\"\n{extra}\n"
    );
    Config::parse(&text, Path::new("cygvm.toml")).expect("test config parses")
}

fn ctx<'a>(config: &'a Config, password: &'a str) -> MediaContext<'a> {
    MediaContext {
        config,
        admin_password: password,
        client_public_key: CLIENT_KEY,
        marker_name: "CYGVM.TAG",
        media_id: "cygvm-0123456789abcdef",
        image: None,
    }
}

// ---- a small tree of the parsed XML --------------------------------------

#[derive(Debug, Default)]
struct Node {
    name: String,
    attrs: Vec<(String, String)>,
    children: Vec<Node>,
    text: String,
}

impl Node {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn kids<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a Node> + use<'a, 'n> {
        self.children.iter().filter(move |c| c.name == name)
    }
    fn kid(&self, name: &str) -> &Node {
        self.kids(name)
            .next()
            .unwrap_or_else(|| panic!("<{}> has no <{name}>", self.name))
    }
    fn has(&self, name: &str) -> bool {
        self.kids(name).next().is_some()
    }
    /// Follows a path of child names.
    fn at(&self, path: &str) -> &Node {
        path.split('/').fold(self, |n, p| n.kid(p))
    }
    fn text_at(&self, path: &str) -> &str {
        self.at(path).text.trim()
    }
    fn pass(&self, pass: &str) -> &Node {
        self.kids("settings")
            .find(|s| s.attr("pass") == Some(pass))
            .unwrap_or_else(|| panic!("no settings pass {pass}"))
    }
    fn component(&self, name: &str) -> &Node {
        self.kids("component")
            .find(|c| c.attr("name") == Some(name))
            .unwrap_or_else(|| panic!("no component {name}"))
    }
    fn walk<'a>(&'a self, out: &mut Vec<&'a Node>) {
        out.push(self);
        for c in &self.children {
            c.walk(out);
        }
    }
}

fn parse(xml: &str) -> Node {
    let mut reader = Reader::from_str(xml);
    let mut stack = vec![Node::default()];
    loop {
        match reader.read_event().expect("well-formed XML") {
            Event::Start(e) => {
                let mut n = Node {
                    name: e.name().as_ref().to_string(),
                    ..Node::default()
                };
                for a in e.attributes() {
                    let a = a.unwrap();
                    n.attrs.push((
                        a.key.as_ref().to_string(),
                        a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                            .unwrap()
                            .into_owned(),
                    ));
                }
                stack.push(n);
            }
            Event::Empty(e) => {
                let n = Node {
                    name: e.name().as_ref().to_string(),
                    ..Node::default()
                };
                stack.last_mut().unwrap().children.push(n);
            }
            Event::End(_) => {
                let n = stack.pop().unwrap();
                stack.last_mut().unwrap().children.push(n);
            }
            Event::Text(t) => stack.last_mut().unwrap().text.push_str(&t.xml10_content()),
            Event::GeneralRef(r) => {
                let raw = format!("&{};", r.xml10_content());
                let s = quick_xml::escape::unescape(&raw).expect("known entity");
                stack.last_mut().unwrap().text.push_str(&s);
            }
            Event::Eof => break,
            _ => {}
        }
    }
    assert_eq!(stack.len(), 1, "unbalanced XML");
    let mut doc = stack.pop().unwrap();
    assert_eq!(doc.children.len(), 1, "one root element");
    doc.children.pop().unwrap()
}

fn xml_for(version: &str, firmware: &str, extra: &str) -> Node {
    let c = config(version, firmware, extra);
    parse(&autounattend_xml(&ctx(&c, PASSWORD)).unwrap())
}

// ---- golden files ----------------------------------------------------------

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn check_golden(name: &str, actual: &str) {
    let path = golden_dir().join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run with UPDATE_GOLDEN=1", path.display()));
    assert!(
        expected == actual,
        "{name} differs from {}; run with UPDATE_GOLDEN=1 and review the diff",
        path.display()
    );
}

#[test]
fn golden_answer_files() {
    let cases = [
        (
            "win11-uefi.xml",
            "11",
            "uefi",
            "edition = \"Windows 11 Pro\"",
        ),
        ("win11-bios.xml", "11", "bios", "index = 6"),
        (
            "win10-uefi.xml",
            "10",
            "uefi",
            "product_key = \"VK7JG-NPHTM-C97JM-9MPGT-3V66T\"\nlocale = \"de-DE\"\ntimezone = \"W. Europe Standard Time\"",
        ),
        ("server2022-uefi.xml", "server2022", "uefi", ""),
        (
            "server2025-bios.xml",
            "server2025",
            "bios",
            "computer_name = \"BUILD-25\"",
        ),
        ("win7-bios.xml", "7", "bios", "index = 4"),
        (
            "winxp.sif",
            "xp",
            "bios",
            "product_key = \"AAAAA-BBBBB-CCCCC-DDDDD-EEEEE\"",
        ),
    ];
    for (name, version, firmware, extra) in cases {
        let c = config(version, firmware, extra);
        let file = answer_file(&ctx(&c, PASSWORD)).unwrap();
        let text = String::from_utf8(file.bytes).unwrap();
        assert_eq!(
            file.name,
            if name.ends_with(".sif") {
                "winnt.sif"
            } else {
                "autounattend.xml"
            }
        );
        check_golden(name, &text);
        for (companion, bytes) in &file.companions {
            let stem = name.rsplit_once('.').unwrap().0;
            let golden = format!("{stem}-{}", companion.to_ascii_lowercase());
            check_golden(&golden, &String::from_utf8(bytes.clone()).unwrap());
        }
    }
}

#[test]
fn golden_bootstrap_files() {
    let c = config(
        "11",
        "uefi",
        "[cygwin]\npackages = [\"openssh\", \"make\", \"gcc-g++\"]",
    );
    for (path, bytes) in bootstrap_files(&ctx(&c, PASSWORD)) {
        if path.ends_with("config.cmd") || path.ends_with("config.sh") {
            let name = format!("win11-{}", path.trim_start_matches("cygvm/"));
            check_golden(&name, &String::from_utf8(bytes).unwrap());
        }
    }
}

// ---- structure -------------------------------------------------------------

const ALL_XML: [(&str, &str); 10] = [
    ("7", "bios"),
    ("8.1", "uefi"),
    ("server2012r2", "bios"),
    ("10", "uefi"),
    ("11", "uefi"),
    ("11", "bios"),
    ("server2016", "uefi"),
    ("server2019", "bios"),
    ("server2022", "uefi"),
    ("server2025", "bios"),
];

#[test]
fn root_passes_and_component_attributes() {
    for (version, firmware) in ALL_XML {
        let root = xml_for(version, firmware, "");
        assert_eq!(root.name, "unattend");
        assert_eq!(
            root.attr("xmlns"),
            Some("urn:schemas-microsoft-com:unattend")
        );
        assert_eq!(
            root.attr("xmlns:wcm"),
            Some("http://schemas.microsoft.com/WMIConfig/2002/State")
        );
        assert_eq!(
            root.attr("xmlns:xsi"),
            Some("http://www.w3.org/2001/XMLSchema-instance")
        );
        let passes: Vec<_> = root
            .kids("settings")
            .filter_map(|s| s.attr("pass"))
            .collect();
        assert_eq!(
            passes,
            ["windowsPE", "specialize", "oobeSystem"],
            "{version}"
        );
        let mut components = 0;
        for settings in root.kids("settings") {
            for c in &settings.children {
                assert_eq!(c.name, "component");
                components += 1;
                assert_eq!(c.attr("processorArchitecture"), Some("amd64"));
                assert_eq!(c.attr("publicKeyToken"), Some("31bf3856ad364e35"));
                assert_eq!(c.attr("language"), Some("neutral"));
                assert_eq!(c.attr("versionScope"), Some("nonSxS"));
                assert!(
                    c.attr("name")
                        .is_some_and(|n| n.starts_with("Microsoft-Windows-"))
                );
            }
        }
        // Windows 11 adds Microsoft-Windows-Deployment in specialize.
        assert_eq!(
            components,
            if version == "11" { 6 } else { 5 },
            "{version}: WinPE international + setup, shell (+ deployment), international + shell"
        );
    }
}

#[test]
fn every_ordered_list_counts_from_one_without_gaps() {
    for (version, firmware) in ALL_XML {
        let root = xml_for(version, firmware, "");
        let mut all = Vec::new();
        root.walk(&mut all);
        let lists = [
            "CreatePartitions",
            "ModifyPartitions",
            "RunSynchronous",
            "FirstLogonCommands",
        ];
        let mut seen = 0;
        for list in all.iter().filter(|n| lists.contains(&n.name.as_str())) {
            seen += 1;
            let orders: Vec<u32> = list
                .children
                .iter()
                .map(|item| {
                    assert_eq!(item.attr("wcm:action"), Some("add"), "{}", item.name);
                    item.text_at("Order").parse().unwrap()
                })
                .collect();
            let expected: Vec<u32> = (1..=orders.len() as u32).collect();
            assert_eq!(orders, expected, "{version}: {}", list.name);
        }
        assert!(
            seen >= 3,
            "{version}: partition lists and first-logon commands"
        );
    }
}

#[test]
fn passwords_decode_back_to_the_password() {
    let tricky = "p<&\"'>ä w€";
    let c = config("11", "uefi", "");
    let root = parse(&autounattend_xml(&ctx(&c, tricky)).unwrap());
    let shell = root
        .pass("oobeSystem")
        .component("Microsoft-Windows-Shell-Setup");
    let cases = [
        (
            "UserAccounts/AdministratorPassword",
            PasswordSetting::Administrator,
        ),
        (
            "UserAccounts/LocalAccounts/LocalAccount/Password",
            PasswordSetting::Account,
        ),
        ("AutoLogon/Password", PasswordSetting::Account),
    ];
    for (path, setting) in cases {
        let node = shell.at(path);
        assert_eq!(node.text_at("PlainText"), "false", "{path}");
        let value = node.text_at("Value");
        assert_eq!(decode(value, setting).as_deref(), Some(tricky), "{path}");
        assert!(!value.contains(tricky), "{path} is not in clear text");
    }
    let account = shell.at("UserAccounts/LocalAccounts/LocalAccount");
    assert_eq!(account.text_at("Name"), "cygvm");
    assert_eq!(account.text_at("Group"), "Administrators");
    let autologon = shell.at("AutoLogon");
    assert_eq!(autologon.text_at("Username"), "cygvm");
    assert_eq!(autologon.text_at("Enabled"), "true");
    assert_eq!(autologon.text_at("LogonCount"), "1");
}

#[test]
fn edition_name_with_markup_characters_survives() {
    let root = xml_for("10", "uefi", "edition = \"Windows <10> & \\\"Pro\\\" 'N'\"");
    let meta = root
        .pass("windowsPE")
        .component("Microsoft-Windows-Setup")
        .at("ImageInstall/OSImage/InstallFrom/MetaData");
    assert_eq!(meta.text_at("Key"), "/IMAGE/NAME");
    assert_eq!(meta.text_at("Value"), "Windows <10> & \"Pro\" 'N'");
}

#[test]
fn edition_by_index_or_default_name() {
    let meta = |root: &Node| -> (String, String) {
        let m = root
            .pass("windowsPE")
            .component("Microsoft-Windows-Setup")
            .at("ImageInstall/OSImage/InstallFrom/MetaData");
        (m.text_at("Key").into(), m.text_at("Value").into())
    };
    assert_eq!(
        meta(&xml_for("11", "uefi", "index = 6")),
        ("/IMAGE/INDEX".into(), "6".into())
    );
    assert_eq!(
        meta(&xml_for("11", "uefi", "")),
        ("/IMAGE/NAME".into(), "Windows 11 Pro".into())
    );
    assert_eq!(
        meta(&xml_for("server2022", "uefi", "")),
        (
            "/IMAGE/NAME".into(),
            "Windows Server 2022 SERVERSTANDARD".into()
        )
    );
}

fn key_in(root: &Node) -> Option<String> {
    let user_data = root
        .pass("windowsPE")
        .component("Microsoft-Windows-Setup")
        .kid("UserData");
    assert_eq!(user_data.text_at("AcceptEula"), "true");
    user_data
        .has("ProductKey")
        .then(|| user_data.text_at("ProductKey/Key").to_string())
}

fn xml_for_image(version: &str, image: SelectedImage) -> Result<String, AnswerFileError> {
    let c = config(version, "uefi", "");
    let mut cx = ctx(&c, PASSWORD);
    cx.image = Some(image);
    autounattend_xml(&cx)
}

fn image(name: &str, edition_id: &str) -> SelectedImage {
    SelectedImage {
        index: 2,
        name: name.into(),
        edition_id: Some(edition_id.into()),
        installation_type: None,
        display_name: None,
    }
}

#[test]
fn docs_name_the_default_edition_of_every_version() {
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/config.md"))
            .unwrap();
    assert!(!docs.contains("index 1 is used"), "the default is a name");
    for v in WindowsVersion::ALL {
        if v.uses_winnt_sif() {
            continue;
        }
        let c = config(v.config_name(), "uefi", "");
        let ImageSelector::Name(name) = image_selector(&c) else {
            panic!("{v}: the default edition is a name");
        };
        let row = format!("| `\"{}\"` | `\"{name}\"` |", v.config_name());
        assert!(docs.contains(&row), "docs/config.md lacks {row}");
    }
}

#[test]
fn product_key_configured_or_microsofts_generic_key() {
    // A configured key wins.
    let with = xml_for(
        "10",
        "uefi",
        "product_key = \"vk7jg-nphtm-c97jm-9mpgt-3v66t\"",
    );
    assert_eq!(
        key_in(&with).as_deref(),
        Some("VK7JG-NPHTM-C97JM-9MPGT-3V66T")
    );
    // The default edition of 10 and 11 (Pro) gets the generic Pro key,
    // so Setup does not stop at the product-key page.
    const PRO: &str = "W269N-WFGWX-YVC9B-4J6C9-T83GX";
    assert_eq!(key_in(&xml_for("11", "uefi", "")).as_deref(), Some(PRO));
    assert_eq!(key_in(&xml_for("10", "bios", "")).as_deref(), Some(PRO));
    assert_eq!(
        key_in(&xml_for(
            "11",
            "uefi",
            "edition = \"Windows 11 Enterprise N\""
        ))
        .as_deref(),
        Some("DPH2V-TTNVB-4X9Q3-TJR4H-KHJW4")
    );
    // By index and without the ISO's metadata the edition is unknown.
    assert_eq!(key_in(&xml_for("11", "uefi", "index = 6")), None);
    // Evaluation server ISOs, and names that cannot tell them apart: none.
    assert_eq!(key_in(&xml_for("server2022", "uefi", "")), None);
    // 7 and 8.1 retail media refuse volume keys.
    assert_eq!(key_in(&xml_for("7", "bios", "")), None);
    assert_eq!(key_in(&xml_for("8.1", "uefi", "")), None);

    // The image read from the ISO decides when it is known.
    let eval = xml_for_image(
        "server2022",
        image("Windows Server 2022 SERVERSTANDARD", "ServerStandardEval"),
    )
    .unwrap();
    assert_eq!(key_in(&parse(&eval)), None);
    let volume = xml_for_image(
        "server2022",
        image("Windows Server 2022 SERVERSTANDARD", "ServerStandard"),
    )
    .unwrap();
    assert_eq!(
        key_in(&parse(&volume)).as_deref(),
        Some("VDYBN-27WPP-V4HQT-9VMD4-VMK7H")
    );
    let enterprise_eval = xml_for_image(
        "11",
        image("Windows 11 Enterprise Evaluation", "EnterpriseEval"),
    )
    .unwrap();
    assert_eq!(key_in(&parse(&enterprise_eval)), None);
    let education = xml_for_image("11", image("Windows 11 Education", "Education")).unwrap();
    assert_eq!(
        key_in(&parse(&education)).as_deref(),
        Some("NW6C2-QMPVW-D7KKK-3GKT6-VCFB2")
    );
}

#[test]
fn an_edition_without_a_generic_key_asks_for_product_key() {
    let c = config("11", "uefi", "edition = \"Windows 11 Home\"");
    let e = autounattend_xml(&ctx(&c, PASSWORD)).unwrap_err();
    assert!(matches!(e, AnswerFileError::NoGenericKey { .. }), "{e}");
    let text = e.to_string();
    assert!(text.contains("guest.product_key"), "{text}");
    assert!(text.contains("\"Windows 11 Home\""), "{text}");
    let e = xml_for_image("10", image("Windows 10 Home", "Core")).unwrap_err();
    assert!(e.to_string().contains("Windows 10 Home"), "{e}");
    // With a configured key any edition installs.
    let c = config(
        "11",
        "uefi",
        "edition = \"Windows 11 Home\"\nproduct_key = \"AAAAA-BBBBB-CCCCC-DDDDD-EEEEE\"",
    );
    assert!(autounattend_xml(&ctx(&c, PASSWORD)).is_ok());
}

#[test]
fn windows_11_oobe_needs_no_network() {
    for (version, firmware) in ALL_XML {
        let root = xml_for(version, firmware, "");
        let specialize = root.pass("specialize");
        let deployment = specialize
            .kids("component")
            .find(|c| c.attr("name") == Some("Microsoft-Windows-Deployment"));
        if version == "11" {
            let deployment = deployment.expect("Microsoft-Windows-Deployment in specialize");
            let command = deployment.at("RunSynchronous/RunSynchronousCommand");
            assert_eq!(command.text_at("Order"), "1");
            assert_eq!(
                command.text_at("Path"),
                r"reg.exe add HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\OOBE /v BypassNRO /t REG_DWORD /d 1 /f"
            );
            let oobe = root
                .pass("oobeSystem")
                .component("Microsoft-Windows-Shell-Setup")
                .kid("OOBE");
            for hide in ["HideOnlineAccountScreens", "HideWirelessSetupInOOBE"] {
                assert_eq!(oobe.text_at(hide), "true", "{hide}");
            }
        } else {
            assert!(deployment.is_none(), "{version}");
        }
    }
}

#[test]
fn windows_11_bypass_only_for_windows_11() {
    for (version, firmware) in ALL_XML {
        let root = xml_for(version, firmware, "");
        let setup = root.pass("windowsPE").component("Microsoft-Windows-Setup");
        let xml = autounattend_xml(&ctx(&config(version, firmware, ""), PASSWORD)).unwrap();
        if version == "11" {
            let paths: Vec<&str> = setup
                .kid("RunSynchronous")
                .kids("RunSynchronousCommand")
                .map(|c| c.text_at("Path"))
                .collect();
            for check in ["BypassTPMCheck", "BypassSecureBootCheck", "BypassRAMCheck"] {
                assert!(
                    paths
                        .iter()
                        .any(|p| p.contains(r"HKLM\SYSTEM\Setup\LabConfig") && p.contains(check)),
                    "{check} in {paths:?}"
                );
            }
        } else {
            assert!(!setup.has("RunSynchronous"), "{version}");
            assert!(!xml.contains("LabConfig"), "{version}");
        }
    }
}

#[test]
fn disk_layout_follows_firmware() {
    for (version, firmware) in ALL_XML {
        let root = xml_for(version, firmware, "");
        let setup = root.pass("windowsPE").component("Microsoft-Windows-Setup");
        let disk = setup.at("DiskConfiguration/Disk");
        assert_eq!(disk.text_at("DiskID"), "0");
        assert_eq!(disk.text_at("WillWipeDisk"), "true");
        let created: Vec<(String, String)> = disk
            .kid("CreatePartitions")
            .kids("CreatePartition")
            .map(|p| {
                let size = if p.has("Extend") {
                    assert_eq!(p.text_at("Extend"), "true");
                    "extend".to_string()
                } else {
                    p.text_at("Size").to_string()
                };
                (p.text_at("Type").to_string(), size)
            })
            .collect();
        let modified: Vec<(String, String, bool)> = disk
            .kid("ModifyPartitions")
            .kids("ModifyPartition")
            .map(|p| {
                (
                    p.text_at("PartitionID").to_string(),
                    p.text_at("Format").to_string(),
                    p.has("Active"),
                )
            })
            .collect();
        let install_to = setup.text_at("ImageInstall/OSImage/InstallTo/PartitionID");
        if firmware == "uefi" {
            let want: Vec<(String, String)> =
                [("EFI", "100"), ("MSR", "16"), ("Primary", "extend")]
                    .iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect();
            assert_eq!(created, want, "{version}");
            assert_eq!(
                modified,
                [
                    ("1".into(), "FAT32".into(), false),
                    ("3".into(), "NTFS".into(), false)
                ],
                "{version}"
            );
            assert_eq!(install_to, "3");
        } else {
            assert_eq!(created[0].0, "Primary");
            assert_eq!(created[1], ("Primary".into(), "extend".into()));
            assert_eq!(created.len(), 2);
            assert_eq!(
                modified,
                [
                    ("1".into(), "NTFS".into(), true),
                    ("2".into(), "NTFS".into(), false)
                ],
                "{version}"
            );
            assert_eq!(install_to, "2");
        }
    }
}

#[test]
fn first_logon_finds_the_iso_by_marker_not_by_letter() {
    for (version, firmware) in ALL_XML {
        let root = xml_for(version, firmware, "");
        let shell = root
            .pass("oobeSystem")
            .component("Microsoft-Windows-Shell-Setup");
        let commands: Vec<&Node> = shell
            .kid("FirstLogonCommands")
            .kids("SynchronousCommand")
            .collect();
        for c in &commands {
            assert_eq!(c.text_at("RequiresUserInput"), "false");
            assert!(!c.text_at("Description").is_empty());
        }
        let lines: Vec<&str> = commands.iter().map(|c| c.text_at("CommandLine")).collect();
        let search = lines
            .iter()
            .find(|l| l.contains("firstlogon.cmd"))
            .expect("a command runs firstlogon.cmd");
        assert!(
            search.contains("for %d in (D E F G H I J K L M N O P Q R S T U V W X Y Z) do"),
            "{search}"
        );
        assert!(search.contains(r"if exist %d:\CYGVM.TAG"), "{search}");
        assert!(search.contains(r"%d:\cygvm\firstlogon.cmd %d: cygvm-0123456789abcdef"));
        for line in &lines {
            for d in 'D'..='Z' {
                assert!(
                    !line.contains(&format!("{d}:\\cygvm")),
                    "fixed drive in {line}"
                );
            }
        }
        assert!(lines.last().unwrap().contains("failed: find-cygwin-iso"));
        assert!(lines.last().unwrap().contains("shutdown"));
    }
}

#[test]
fn locale_time_zone_and_name_land_in_their_passes() {
    let root = xml_for(
        "10",
        "uefi",
        "locale = \"de-DE\"\ntimezone = \"W. Europe Standard Time\"\ncomputer_name = \"BUILDER\"",
    );
    for (pass, component) in [
        ("windowsPE", "Microsoft-Windows-International-Core-WinPE"),
        ("oobeSystem", "Microsoft-Windows-International-Core"),
    ] {
        let c = root.pass(pass).component(component);
        for key in ["InputLocale", "SystemLocale", "UILanguage", "UserLocale"] {
            assert_eq!(c.text_at(key), "de-DE", "{pass} {key}");
        }
    }
    let special = root
        .pass("specialize")
        .component("Microsoft-Windows-Shell-Setup");
    assert_eq!(special.text_at("ComputerName"), "BUILDER");
    assert_eq!(special.text_at("TimeZone"), "W. Europe Standard Time");
}

#[test]
fn oobe_settings_match_each_versions_schema() {
    let oobe = |v: &str| {
        let root = xml_for(v, "bios", "");
        let names: Vec<String> = root
            .pass("oobeSystem")
            .component("Microsoft-Windows-Shell-Setup")
            .kid("OOBE")
            .children
            .iter()
            .map(|c| c.name.clone())
            .collect();
        names
    };
    let win7 = oobe("7");
    assert!(win7.contains(&"NetworkLocation".to_string()));
    assert!(!win7.contains(&"HideOnlineAccountScreens".to_string()));
    let win11 = oobe("11");
    assert!(win11.contains(&"HideOnlineAccountScreens".to_string()));
    assert!(
        !win11.contains(&"NetworkLocation".to_string()),
        "deprecated in Windows 10"
    );
    assert!(win11.contains(&"HideEULAPage".to_string()));
}

// ---- winnt.sif -----------------------------------------------------------

fn sif_sections(text: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut out: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for line in text.split("\r\n") {
        if line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            out.push((name.to_string(), Vec::new()));
        } else {
            let (k, v) = line.split_once('=').expect("key=value");
            out.last_mut().unwrap().1.push((k.into(), v.into()));
        }
    }
    out
}

fn sif_value<'a>(s: &'a [(String, Vec<(String, String)>)], section: &str, key: &str) -> &'a str {
    s.iter()
        .find(|(n, _)| n == section)
        .and_then(|(_, kv)| kv.iter().find(|(k, _)| k == key))
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("[{section}] {key} missing"))
}

#[test]
fn winnt_sif_sections_and_values() {
    let c = config(
        "xp",
        "bios",
        "product_key = \"AAAAA-BBBBB-CCCCC-DDDDD-EEEEE\"",
    );
    let text = winnt_sif(&ctx(&c, PASSWORD)).unwrap();
    assert!(text.ends_with("\r\n") && !text.replace("\r\n", "").contains('\n'));
    let s = sif_sections(&text);
    assert_eq!(sif_value(&s, "Data", "UnattendedInstall"), "\"Yes\"");
    assert_eq!(sif_value(&s, "Data", "MsDosInitiated"), "\"0\"");
    assert_eq!(sif_value(&s, "Data", "AutoPartition"), "1");
    assert_eq!(
        sif_value(&s, "Unattended", "UnattendMode"),
        "FullUnattended"
    );
    assert_eq!(sif_value(&s, "Unattended", "OemSkipEula"), "Yes");
    assert_eq!(sif_value(&s, "Unattended", "Repartition"), "Yes");
    assert_eq!(
        sif_value(&s, "GuiUnattended", "AdminPassword"),
        format!("\"{PASSWORD}\"")
    );
    assert_eq!(
        sif_value(&s, "GuiUnattended", "EncryptedAdminPassword"),
        "No"
    );
    assert_eq!(
        sif_value(&s, "GuiUnattended", "TimeZone"),
        "090",
        "UTC without DST"
    );
    assert_eq!(sif_value(&s, "GuiUnattended", "AutoLogon"), "Yes");
    assert_eq!(
        sif_value(&s, "UserData", "ProductKey"),
        "\"AAAAA-BBBBB-CCCCC-DDDDD-EEEEE\""
    );
    assert_eq!(sif_value(&s, "UserData", "ComputerName"), "CYGVM");
    assert_eq!(
        sif_value(&s, "Identification", "JoinWorkgroup"),
        "WORKGROUP"
    );
    let run = sif_value(&s, "GuiRunOnce", "Command2");
    assert!(
        !run.contains('%'),
        "no string-key syntax in winnt.sif: {run}"
    );
    assert_eq!(run, r#""cmd.exe /d /c A:\CYGVM.CMD""#);
    for (_, value) in &s.iter().find(|(name, _)| name == "GuiRunOnce").unwrap().1 {
        assert!(value.len() < 128, "short [GuiRunOnce] line: {value}");
    }
    assert!(sif_value(&s, "GuiRunOnce", "Command0").contains("net user cygvm"));
}

#[test]
fn xp_first_logon_script_sits_on_the_floppy() {
    let c = config(
        "2003",
        "bios",
        "product_key = \"AAAAA-BBBBB-CCCCC-DDDDD-EEEEE\"",
    );
    let answer = answer_file(&ctx(&c, PASSWORD)).unwrap();
    assert_eq!(answer.name, "winnt.sif");
    assert_eq!(answer.companions.len(), 1);
    let (name, bytes) = &answer.companions[0];
    assert_eq!(*name, "CYGVM.CMD", "8.3 name, root of the floppy");
    let sif = String::from_utf8(answer.bytes.clone()).unwrap();
    assert!(sif.contains(&format!(r"A:\{name}")), "winnt.sif runs it");
    let script = String::from_utf8(bytes.clone()).unwrap();
    assert!(!script.replace("\r\n", "").contains('\n'), "CRLF only");
    assert!(script.contains(
        r"for %%d in (D E F G H I J K L M N O P Q R S T U V W X Y Z) do if exist %%d:\CYGVM.TAG (call %%d:\cygvm\firstlogon.cmd %%d: cygvm-0123456789abcdef & goto :eof)"
    ));
    assert!(script.contains(r">C:\cygvm\status.txt echo failed: find-cygwin-iso"));
    assert!(script.trim_end().ends_with("shutdown.exe -s -t 0"));
    // autounattend.xml needs no companion.
    let c = config("11", "uefi", "");
    assert!(
        answer_file(&ctx(&c, PASSWORD))
            .unwrap()
            .companions
            .is_empty()
    );
}

#[test]
fn winnt_sif_errors_name_the_key() {
    let c = config("xp", "bios", "");
    let e = winnt_sif(&ctx(&c, PASSWORD)).unwrap_err();
    assert!(matches!(e, AnswerFileError::ProductKeyRequired { .. }));
    assert!(e.to_string().contains("guest.product_key"), "{e}");

    let c = config(
        "2003",
        "bios",
        "product_key = \"AAAAA-BBBBB-CCCCC-DDDDD-EEEEE\"\ntimezone = \"Mars Standard Time\"",
    );
    let e = winnt_sif(&ctx(&c, PASSWORD)).unwrap_err().to_string();
    assert!(
        e.contains("guest.timezone") && e.contains("Mars Standard Time"),
        "{e}"
    );
    assert!(
        e.contains("\"W. Europe Standard Time\""),
        "lists known zones: {e}"
    );

    let c = config(
        "xp",
        "bios",
        "product_key = \"AAAAA-BBBBB-CCCCC-DDDDD-EEEEE\"",
    );
    let e = winnt_sif(&ctx(&c, "a\"b")).unwrap_err().to_string();
    assert!(
        e.contains("guest.admin_password") && !e.contains("a\"b"),
        "{e}"
    );
}

#[test]
fn wrong_format_and_unsafe_values_are_errors() {
    let c = config(
        "xp",
        "bios",
        "product_key = \"AAAAA-BBBBB-CCCCC-DDDDD-EEEEE\"",
    );
    assert!(matches!(
        autounattend_xml(&ctx(&c, PASSWORD)),
        Err(AnswerFileError::WrongFormat { .. })
    ));
    let c = config("11", "uefi", "");
    assert!(winnt_sif(&ctx(&c, PASSWORD)).is_err());

    let c = config("11", "uefi", "[cygwin]\nroot = 'C:\\my cygwin'");
    let e = autounattend_xml(&ctx(&c, PASSWORD))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("key `cygwin.root`"), "{e}");

    let c = config("11", "uefi", "");
    let mut bad = ctx(&c, PASSWORD);
    bad.marker_name = "TAG & del";
    let e = autounattend_xml(&bad).unwrap_err().to_string();
    assert!(e.contains("marker_name"), "{e}");
}

// ---- bootstrap files -------------------------------------------------------

#[test]
fn bootstrap_files_carry_the_config() {
    let c = config(
        "server2022",
        "uefi",
        "admin_user = \"builder\"\n[cygwin]\npackages = [\"openssh\", \"make\"]\n[network]\nguest = \"10.1.2.3/16\"\ncontroller = \"10.1.0.9\"",
    );
    let files = bootstrap_files(&ctx(&c, PASSWORD));
    let get = |name: &str| -> String {
        let (_, bytes) = files
            .iter()
            .find(|(p, _)| p == name)
            .unwrap_or_else(|| panic!("{name}"));
        String::from_utf8(bytes.clone()).unwrap()
    };
    let paths: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "cygvm/firstlogon.cmd",
            "cygvm/config.cmd",
            "cygvm/bootstrap.sh",
            "cygvm/config.sh"
        ]
    );

    let firstlogon = get("cygvm/firstlogon.cmd");
    assert!(!firstlogon.replace("\r\n", "").contains('\n'), "CRLF only");
    assert!(firstlogon.contains(
        "\r\nstart \"\" /wait \"%ISO%\\%CYGVM_INSTALLER%\" %CYGVM_SETUP_FLAGS% -l \"%ISO%\\mirror\" -R \"%CYGVM_ROOT%\" -P %CYGVM_PACKAGES%\r\n"
    ));
    assert!(firstlogon.contains(">\"%STATE%\\setup-flags.txt\" echo %CYGVM_SETUP_FLAGS%\r\n"));
    assert!(
        firstlogon.contains("\"%RC%\"==\"118\""),
        "reboot-pending is success"
    );
    assert!(firstlogon.contains("%CYGVM_SHUTDOWN%"));

    let cmd = get("cygvm/config.cmd");
    assert!(
        cmd.contains("set \"CYGVM_PACKAGES=openssh,make\"\r\n"),
        "{cmd}"
    );
    assert!(cmd.contains("set \"CYGVM_INSTALLER=setup-x86_64.exe\"\r\n"));
    assert!(cmd.contains("set \"CYGVM_ROOT=C:\\cygwin64\"\r\n"));
    assert!(cmd.contains("set \"CYGVM_MARKER=CYGVM.TAG\"\r\n"));

    let sh = get("cygvm/config.sh");
    assert!(!sh.contains('\r'));
    for want in [
        "CYGVM_USER='builder'",
        "CYGVM_ADDRESS='10.1.2.3'",
        "CYGVM_NETMASK='255.255.0.0'",
        "CYGVM_NETWORK='10.1.0.0'",
        "CYGVM_PREFIX='16'",
        "CYGVM_DHCP='no'",
        "CYGVM_LEGACY='no'",
    ] {
        assert!(sh.lines().any(|l| l == want), "{want} in {sh}");
    }
    let script = get("cygvm/bootstrap.sh");
    assert!(script.starts_with("#!/bin/bash\n") && !script.contains('\r'));
    assert!(script.contains("set -eu"));
    assert!(script.contains("ssh-host-config --yes"));
    assert!(script.contains("cygrunsrv -S \"$service\""));
    assert!(
        !script.contains("cygrunsrv -S sshd"),
        "the name is looked up"
    );
    assert!(script.contains("remoteip=\"$CYGVM_NETWORK/$CYGVM_PREFIX\""));
    assert!(!script.contains("advfirewall set"), "the firewall stays on");
}

/// Runs bootstrap.sh's `sshd_service` function with a stand-in `cygrunsrv`
/// that lists `listed` (one name per line, CRLF as Cygwin programs may
/// write) and, like the real one, answers `-Q` for every existing service,
/// cygrunsrv's or not.
fn sshd_service_with(listed: &[&str], existing: &[&str]) -> (bool, String) {
    let script = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("unattend/bootstrap.sh"),
    )
    .unwrap();
    let start = script
        .find("sshd_service() {")
        .expect("sshd_service in bootstrap.sh");
    let end = start + script[start..].find("\n}\n").unwrap() + 3;
    let function = &script[start..end];
    let dir = tempfile::tempdir().unwrap();
    let stub = dir.path().join("cygrunsrv");
    let mut body = String::from("#!/bin/bash\ncase \"$1\" in\n-L)\n");
    for name in listed {
        body.push_str(&format!("  printf '%s\\r\\n' {name}\n"));
    }
    body.push_str("  ;;\n-Q)\n  case \"$2\" in\n");
    for name in existing {
        body.push_str(&format!(
            "  {name}) echo 'Service : {name}'; echo 'Current State : Running' ;;\n"
        ));
    }
    body.push_str("  *) echo \"cygrunsrv: Error querying service: OpenService: Win32 error 1060:\" >&2; exit 1 ;;\n  esac ;;\n*) exit 1 ;;\nesac\n");
    std::fs::write(&stub, body).unwrap();
    std::fs::set_permissions(&stub, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap()
    );
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -eu\nsay() {{ echo \"$*\"; }}\n{function}\nsshd_service"
        ))
        .env("PATH", path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

#[test]
fn bootstrap_starts_the_service_ssh_host_config_made() {
    // OpenSSH 8.0 and later: cygsshd.
    assert_eq!(
        sshd_service_with(&["cron", "cygsshd"], &["cron", "cygsshd"]),
        (true, "cygsshd".to_string())
    );
    // Older OpenSSH (the XP/2003 era): sshd.
    assert_eq!(
        sshd_service_with(&["sshd"], &["sshd"]),
        (true, "sshd".to_string())
    );
    // Server 2025 with Microsoft's sshd and Cygwin's cygsshd: Cygwin's.
    assert_eq!(
        sshd_service_with(&["cygsshd"], &["sshd", "cygsshd"]),
        (true, "cygsshd".to_string())
    );
    // Only Microsoft's sshd exists: not ours, so the step fails.
    let (ok, out) = sshd_service_with(&[], &["sshd"]);
    assert!(!ok, "{out}");
    assert!(out.is_empty(), "{out}");
}

#[test]
fn setup_flags_allow_unsupported_windows_only_where_needed() {
    for v in WindowsVersion::ALL {
        let extra = if v.uses_winnt_sif() {
            "product_key = \"AAAAA-BBBBB-CCCCC-DDDDD-EEEEE\""
        } else {
            ""
        };
        let firmware = if v.uses_winnt_sif() { "bios" } else { "uefi" };
        let c = config(v.config_name(), firmware, extra);
        let files = bootstrap_files(&ctx(&c, PASSWORD));
        let cmd = String::from_utf8(files[1].1.clone()).unwrap();
        let line = cmd
            .lines()
            .find(|l| l.starts_with("set \"CYGVM_SETUP_FLAGS="))
            .unwrap_or_else(|| panic!("{v}: no CYGVM_SETUP_FLAGS in {cmd}"));
        let want = match v {
            WindowsVersion::Xp | WindowsVersion::Server2003 | WindowsVersion::Win7 => {
                "set \"CYGVM_SETUP_FLAGS=-q -L -n -N -d -X --allow-unsupported-windows\"\r"
            }
            _ => "set \"CYGVM_SETUP_FLAGS=-q -L -n -N -d -X\"\r",
        };
        assert_eq!(format!("{line}\r"), want, "{v}");
        assert_eq!(
            setup_flags(v),
            want["set \"CYGVM_SETUP_FLAGS=".len()..want.len() - 2].to_string()
        );
    }
}

#[test]
fn legacy_windows_get_the_x86_installer_and_root() {
    assert_eq!(installer_name(WindowsVersion::Xp), "setup-x86.exe");
    assert_eq!(installer_name(WindowsVersion::Win7), "setup-x86_64.exe");
    let c = config(
        "xp",
        "bios",
        "product_key = \"AAAAA-BBBBB-CCCCC-DDDDD-EEEEE\"",
    );
    assert_eq!(c.guest.firmware(), Firmware::Bios);
    let files = bootstrap_files(&ctx(&c, PASSWORD));
    let cmd = String::from_utf8(files[1].1.clone()).unwrap();
    assert!(cmd.contains("CYGVM_INSTALLER=setup-x86.exe"));
    assert!(cmd.contains(r"CYGVM_ROOT=C:\cygwin"));
    assert!(!cmd.contains("cygwin64"));
    assert!(cmd.contains("shutdown.exe -s -t 0"));
    let sh = String::from_utf8(files[3].1.clone()).unwrap();
    assert!(sh.contains("CYGVM_LEGACY='yes'"));
}
