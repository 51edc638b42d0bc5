//! The page: files embedded at build time or loaded from `web_root`, held in memory with their
//! response headers prepared, and the mapping from a request path to one of them.
//!
//! A request path never touches the file system: it is decoded, checked component by component
//! (only plain names pass) and looked up in the table. `web_root` is read once, at start and on
//! reload; files reached through a symlink that leaves the root are left out of the table.
//!
//! Owns: the page in memory, and the only `std::fs` reads of the HTTP layer (start and reload).
//! May not touch: requests' effects on connections.
use std::{
    borrow::Cow,
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use sha1::{Digest, Sha1};

use super::{HttpError, Result};

include!(concat!(env!("OUT_DIR"), "/assets.rs"));

/// Most files loaded from a `web_root`.
const MAX_FILES: usize = 512;
/// Most bytes loaded from a `web_root`, all files together.
const MAX_TOTAL_BYTES: u64 = 32 * 1024 * 1024;

/// Why a `web_root` could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Reading the folder or a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The folder has no `index.html`.
    #[error("{0}: no index.html")]
    NoIndex(PathBuf),
    /// More than `MAX_FILES` files or `MAX_TOTAL_BYTES` bytes.
    #[error("{0}: too large to serve from memory (at most 512 files and 32 MiB)")]
    TooLarge(PathBuf),
}

/// One file, ready to send.
#[derive(Debug, Clone)]
pub struct Asset {
    /// The body.
    pub body: Cow<'static, [u8]>,
    /// The strong validator, quoted.
    pub etag: String,
    /// Header lines for a 200 or 304 (Content-Type, Cache-Control, ETag), each ending in CRLF.
    pub headers: String,
}

impl Asset {
    fn new(path: &str, body: Cow<'static, [u8]>) -> Asset {
        let digest = Sha1::digest(&body);
        let etag: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let etag = format!("\"{etag}\"");
        // The files have no content hash in their names, so the browser revalidates each time:
        // an If-None-Match round trip answered with a 304 that costs a few hundred bytes.
        let headers = format!(
            "Content-Type: {}\r\nCache-Control: no-cache\r\nETag: {etag}\r\n",
            content_type(path)
        );
        Asset { body, etag, headers }
    }
}

/// The set of files served, keyed by path relative to the root (`index.html`, `app.js`).
#[derive(Debug, Clone)]
pub struct Site {
    files: HashMap<String, Asset>,
}

impl Site {
    /// The page embedded in the binary.
    pub fn embedded() -> Site {
        let files = EMBEDDED
            .iter()
            .map(|(p, b)| (p.to_string(), Asset::new(p, Cow::Borrowed(*b))))
            .collect();
        Site { files }
    }

    /// The page for a configuration: the files under `web_root` if one is set, else the
    /// embedded page. The one place where start-up and reload choose what is served.
    pub fn for_root(web_root: Option<&Path>) -> Result<Site, LoadError> {
        match web_root {
            Some(root) => Site::load(root),
            None => Ok(Site::embedded()),
        }
    }

    /// Reads every regular file under `root` into memory. Files whose real path is outside the
    /// root (reached through a symlink) and hidden files are left out.
    pub fn load(root: &Path) -> Result<Site, LoadError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| LoadError::Io { path, source }
        };
        let real_root = fs::canonicalize(root).map_err(io(root))?;
        let mut files = HashMap::new();
        let mut total = 0u64;
        let mut stack = vec![real_root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).map_err(io(&dir))? {
                let entry = entry.map_err(io(&dir))?;
                let path = entry.path();
                if entry.file_name().to_string_lossy().starts_with('.') {
                    continue;
                }
                let Ok(real) = fs::canonicalize(&path) else { continue };
                if !real.starts_with(&real_root) {
                    continue;
                }
                let meta = fs::metadata(&real).map_err(io(&real))?;
                if meta.is_dir() {
                    if real == path {
                        stack.push(real);
                    }
                    continue;
                }
                total += meta.len();
                if files.len() >= MAX_FILES || total > MAX_TOTAL_BYTES {
                    return Err(LoadError::TooLarge(root.to_owned()));
                }
                let Ok(rel) = path.strip_prefix(&real_root) else { continue };
                let Some(rel) = rel.to_str() else { continue };
                let body = fs::read(&real).map_err(io(&real))?;
                files.insert(rel.to_owned(), Asset::new(rel, Cow::Owned(body)));
            }
        }
        if !files.contains_key("index.html") {
            return Err(LoadError::NoIndex(root.to_owned()));
        }
        Ok(Site { files })
    }

    /// The file for a request path, after [`resolve_path`].
    pub fn get(&self, key: &str) -> Option<&Asset> {
        self.files.get(key)
    }

    /// How many files are served.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether no file is served.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// Maps a request path to a key of the file table: percent-decodes it and accepts only plain
/// names between single slashes. `..`, `.`, empty segments (`//`), encoded `/` or `\`, NUL and
/// other control bytes, and bad escapes are refused. `/` and paths ending in `/` mean `index.html`.
pub fn resolve_path(path: &str) -> Result<String> {
    let rest = path.strip_prefix('/').ok_or(HttpError::BadPath)?;
    let mut key = String::with_capacity(rest.len() + 10);
    let mut segments = rest.split('/').peekable();
    while let Some(raw) = segments.next() {
        let last = segments.peek().is_none();
        if raw.is_empty() {
            if last {
                key.push_str("index.html");
                break;
            }
            return Err(HttpError::BadPath);
        }
        let seg = percent_decode(raw)?;
        if seg == "." || seg == ".." || seg.starts_with('.') {
            return Err(HttpError::BadPath);
        }
        if seg.bytes().any(|b| b == b'/' || b == b'\\' || b < 0x20 || b == 0x7f) {
            return Err(HttpError::BadPath);
        }
        key.push_str(&seg);
        if !last {
            key.push('/');
        }
    }
    Ok(key)
}

fn percent_decode(s: &str) -> Result<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).ok_or(HttpError::BadPath)?;
            let hex = std::str::from_utf8(hex).map_err(|_| HttpError::BadPath)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| HttpError::BadPath)?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| HttpError::BadPath)
}

/// The `Content-Type` for a file name, by extension.
pub fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).as_deref() {
        Some("html") | Some("htm") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js") | Some("mjs") => "text/javascript; charset=utf-8",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg") | Some("jpeg") => "image/jpeg",
        Some("ico") => "image/x-icon",
        Some("webp") => "image/webp",
        Some("woff2") => "font/woff2",
        Some("txt") => "text/plain; charset=utf-8",
        Some("webmanifest") => "application/manifest+json",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_paths_resolve() {
        assert_eq!(resolve_path("/").unwrap(), "index.html");
        assert_eq!(resolve_path("/app.js").unwrap(), "app.js");
        assert_eq!(resolve_path("/a/b.css").unwrap(), "a/b.css");
        assert_eq!(resolve_path("/sub/").unwrap(), "sub/index.html");
        assert_eq!(resolve_path("/caf%C3%A9.txt").unwrap(), "café.txt");
    }

    #[test]
    fn escapes_are_refused() {
        for bad in [
            "/../etc/passwd",
            "/a/../../etc/passwd",
            "/%2e%2e/etc/passwd",
            "/%2E%2E%2fetc%2fpasswd",
            "/a%2fb",
            "/a%5cb",
            "//etc/passwd",
            "/a//b",
            "/a/./b",
            "/.env",
            "/index.html%00.js",
            "/%",
            "/%zz",
            "/%c3",
            "relative",
            "",
        ] {
            assert_eq!(resolve_path(bad), Err(HttpError::BadPath), "{bad}");
        }
    }

    #[test]
    fn embedded_page_has_an_index() {
        let site = Site::embedded();
        let index = site.get("index.html").expect("web/index.html is embedded");
        assert!(index.headers.contains("text/html; charset=utf-8"));
        assert!(index.etag.starts_with('"') && index.etag.len() == 18);
    }

    #[test]
    fn load_leaves_out_symlinks_that_leave_the_root() {
        let tmp = std::env::temp_dir().join(format!("chatd-files-{}", std::process::id()));
        let root = tmp.join("root");
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::write(root.join("index.html"), "<p>hi</p>").unwrap();
        fs::write(root.join("sub/a.css"), "p{}").unwrap();
        fs::write(tmp.join("secret.txt"), "secret").unwrap();
        std::os::unix::fs::symlink(tmp.join("secret.txt"), root.join("leak.txt")).unwrap();
        std::os::unix::fs::symlink(root.join("index.html"), root.join("home.html")).unwrap();
        let site = Site::load(&root).unwrap();
        assert!(site.get("index.html").is_some());
        assert!(site.get("sub/a.css").is_some());
        assert!(site.get("home.html").is_some(), "a symlink inside the root is fine");
        assert!(site.get("leak.txt").is_none(), "a symlink out of the root is refused");
        fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("app.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("favicon.svg"), "image/svg+xml");
        assert_eq!(content_type("noext"), "application/octet-stream");
    }
}
