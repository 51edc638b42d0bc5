//! Embeds every file under `web/` into the binary: writes `$OUT_DIR/assets.rs`, a table of
//! (path relative to web/, bytes) that `http::Site::embedded` serves.
use std::{env, fs, path::Path};

fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
    let mut entries: Vec<_> =
        fs::read_dir(dir).expect("read web/").map(|e| e.unwrap().path()).collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if p.is_dir() {
            walk(&p, base, out);
        } else {
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().replace('\\', "/");
            out.push(format!("    ({rel:?}, include_bytes!({:?})),\n", p.display().to_string()));
        }
    }
}

fn main() {
    let root = Path::new(&env::var("CARGO_MANIFEST_DIR").unwrap()).join("web");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut rows = Vec::new();
    walk(&root, &root, &mut rows);
    let src = format!("/// The files of web/, embedded at build time.\npub(crate) static EMBEDDED: &[(&str, &[u8])] = &[\n{}];\n", rows.concat());
    fs::write(Path::new(&env::var("OUT_DIR").unwrap()).join("assets.rs"), src).unwrap();
}
