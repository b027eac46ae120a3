//! Writes a benchmark's table into its own section of docs/perf.md, between
//! `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`, leaving the rest alone.

use std::path::Path;

pub fn write_section(name: &str, body: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/perf.md");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let start = format!("<!-- bench:{name} -->");
    let end = format!("<!-- /bench:{name} -->");
    let section = format!("{start}\n{}\n{end}", body.trim_end());
    let updated = match (text.find(&start), text.find(&end)) {
        (Some(a), Some(b)) if b > a => format!("{}{section}{}", &text[..a], &text[b + end.len()..]),
        _ => format!("{}\n{section}\n", text.trim_end()),
    };
    let tmp = path.with_extension("md.tmp");
    std::fs::write(&tmp, updated).expect("write docs/perf.md");
    std::fs::rename(&tmp, &path).expect("replace docs/perf.md");
    println!("wrote the {name} section of {}", path.display());
}
