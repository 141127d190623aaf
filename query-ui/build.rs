//! Embeds the Grafana dashboards of `dashboards/*.json` in the binary: the
//! list is generated here so a dashboard added to the directory is served
//! without touching the code.

use std::fmt::Write;
use std::path::Path;

fn main() {
    // Read at run time, not with env!(): cargo may reuse this compiled
    // script for a checkout at another path sharing the target directory,
    // and a stale path silently embedded no dashboards at all.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let dir = Path::new(&manifest_dir).join("../dashboards");
    println!("cargo:rerun-if-changed={}", dir.display());
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("reading the dashboards in {}: {error}", dir.display()));
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    let mut out = String::from("/// `(file name, JSON text)` of every `dashboards/*.json`.\n");
    out.push_str("pub(crate) const DASHBOARDS: &[(&str, &str)] = &[\n");
    for path in &files {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let absolute = path.canonicalize().unwrap_or_else(|_| path.clone());
        let _ = writeln!(
            out,
            "    ({name:?}, include_str!({:?})),",
            absolute.display().to_string()
        );
    }
    out.push_str("];\n");
    let out_dir = std::env::var("OUT_DIR").unwrap_or_else(|_| ".".into());
    if let Err(error) = std::fs::write(Path::new(&out_dir).join("dashboards.rs"), out) {
        panic!("writing the dashboard list to {out_dir}: {error}");
    }
}
