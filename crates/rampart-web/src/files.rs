//! Static files: safe path resolution, conditional and range requests, precompressed
//! variants, and a small in-memory cache of file contents validated by `stat` on every
//! request (so an edited file is served new at once).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::mime::content_type;

/// Characters escaped in a redirect's path segment.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'%')
    .add(b'/');

/// Why a request path names no file to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// The path is malformed or tries to leave the root: 400.
    BadPath,
    /// Nothing there (or a dotfile, or a symlink out of the root): 404.
    NotFound,
}

/// Decode and check a request path: percent-decoding, UTF-8, no NUL or backslash, no
/// `..` segment, no dotfile segment. Returns the path's segments.
pub fn sanitize(raw_path: &str) -> Result<Vec<String>, Miss> {
    if !raw_path.starts_with('/') {
        return Err(Miss::BadPath);
    }
    let decoded: Vec<u8> = percent_encoding::percent_decode_str(raw_path).collect();
    let decoded = String::from_utf8(decoded).map_err(|_| Miss::BadPath)?;
    let mut out = Vec::new();
    for seg in decoded.split('/') {
        if seg.is_empty() || seg == "." {
            continue;
        }
        if seg == ".." || seg.contains('\0') || seg.contains('\\') {
            return Err(Miss::BadPath);
        }
        if seg.starts_with('.') {
            // .git, .env, .htpasswd...: never served.
            return Err(Miss::NotFound);
        }
        out.push(seg.to_string());
    }
    Ok(out)
}

/// A parsed `Range` header against a representation of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeReq {
    /// No usable Range header (absent, malformed or multi-range): send everything.
    Full,
    /// Bytes start..=end.
    Partial { start: u64, end: u64 },
    /// Syntactically fine but nothing of it is inside the representation: 416.
    Unsatisfiable,
}

/// Parse a `Range` header (only single ranges are honoured; a multi-range request gets
/// the full representation, which RFC 9110 allows).
pub fn parse_range(value: &str, len: u64) -> RangeReq {
    let value = value.trim();
    let Some((unit, specs)) = value.split_once('=') else {
        return RangeReq::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return RangeReq::Full;
    }
    let parts: Vec<&str> = specs
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if parts.len() != 1 {
        return RangeReq::Full;
    }
    let Some((a, b)) = parts[0].split_once('-') else {
        return RangeReq::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || s.len() > 19 || !s.bytes().all(|c| c.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    if a.is_empty() {
        let Some(n) = num(b) else {
            return RangeReq::Full;
        };
        if n == 0 || len == 0 {
            return RangeReq::Unsatisfiable;
        }
        let n = n.min(len);
        return RangeReq::Partial {
            start: len - n,
            end: len - 1,
        };
    }
    let Some(start) = num(a) else {
        return RangeReq::Full;
    };
    let end = if b.is_empty() {
        None
    } else {
        match num(b) {
            Some(e) if e >= start => Some(e),
            _ => return RangeReq::Full,
        }
    };
    if start >= len {
        return RangeReq::Unsatisfiable;
    }
    RangeReq::Partial {
        start,
        end: end.map_or(len - 1, |e| e.min(len - 1)),
    }
}

/// Which precompressed variants a request's Accept-Encoding allows: (br, gzip).
pub fn accepts(accept_encoding: &str) -> (bool, bool) {
    let mut br = None;
    let mut gz = None;
    let mut star = None;
    for item in accept_encoding.split(',') {
        let mut it = item.split(';');
        let name = it.next().unwrap_or("").trim().to_ascii_lowercase();
        let mut q = 1.0f32;
        for p in it {
            if let Some((k, v)) = p.split_once('=') {
                if k.trim().eq_ignore_ascii_case("q") {
                    q = v.trim().parse().unwrap_or(0.0);
                }
            }
        }
        let ok = q > 0.0;
        match name.as_str() {
            "br" => br = Some(ok),
            "gzip" | "x-gzip" => gz = Some(ok),
            "*" => star = Some(ok),
            _ => {}
        }
    }
    (br.or(star).unwrap_or(false), gz.or(star).unwrap_or(false))
}

/// Does an `If-None-Match`/`If-Match` list contain `etag` (weak comparison)?
pub fn etag_matches(list: &str, etag: &str) -> bool {
    let bare = |s: &str| s.trim().trim_start_matches("W/").to_string();
    let want = bare(etag);
    list.split(',').any(|t| {
        let t = t.trim();
        t == "*" || bare(t) == want
    })
}

/// A file chosen to answer a request.
struct Chosen {
    path: PathBuf,
    meta: std::fs::Metadata,
    encoding: Option<&'static str>,
    /// A precompressed variant exists for this file (so the answer varies by encoding).
    has_variant: bool,
}

/// A request path resolved to canonical files inside the root.
struct Resolved {
    path: PathBuf,
    /// Canonical `.br` and `.gz` variants, when present.
    variants: [Option<PathBuf>; 2],
    at: Instant,
}

/// How long a path resolution (realpath of the file and its variants) is reused.
const RESOLVE_VALID: Duration = Duration::from_secs(1);
/// The resolution cache is emptied when it holds this many paths.
const RESOLVE_MAX: usize = 10_000;

struct CacheEntry {
    len: u64,
    mtime: SystemTime,
    ino: u64,
    bytes: Bytes,
}

/// The static file server for one root folder.
pub struct StaticFiles {
    root: PathBuf,
    cache: Mutex<HashMap<PathBuf, Arc<CacheEntry>>>,
    cache_bytes: Mutex<u64>,
    resolved: Mutex<HashMap<String, Arc<Resolved>>>,
}

/// Files up to this size are read whole and cached.
const CACHE_MAX_FILE: u64 = 2 * 1024 * 1024;
/// The cache is emptied when it would grow past this.
const CACHE_MAX_TOTAL: u64 = 128 * 1024 * 1024;
/// Files up to this size are read on the request's own task (page-cache speed).
const INLINE_READ_MAX: u64 = 256 * 1024;

impl StaticFiles {
    /// A server for `root` (must be an existing folder; it is canonicalized).
    pub fn new(root: &Path) -> std::io::Result<StaticFiles> {
        let root = std::fs::canonicalize(root)?;
        if !root.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                format!("{} is not a folder", root.display()),
            ));
        }
        Ok(StaticFiles {
            root,
            cache: Mutex::new(HashMap::new()),
            cache_bytes: Mutex::new(0),
            resolved: Mutex::new(HashMap::new()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Resolve a candidate path: it must exist and, symlinks followed, stay inside the root.
    fn inside(&self, p: &Path) -> Option<(PathBuf, std::fs::Metadata)> {
        let canon = std::fs::canonicalize(p).ok()?;
        if !canon.starts_with(&self.root) {
            tracing::debug!(path = %p.display(), "symlink leads out of the root; refused");
            return None;
        }
        let meta = std::fs::metadata(&canon).ok()?;
        Some((canon, meta))
    }

    /// Resolve a request path to a canonical file inside the root and its precompressed
    /// variants (the expensive part: realpath of every candidate).
    fn resolve(&self, raw_path: &str) -> Result<Result<Resolved, String>, Miss> {
        let segs = sanitize(raw_path)?;
        let mut p = self.root.clone();
        for s in &segs {
            p.push(s);
        }
        let (mut path, mut meta) = self.inside(&p).ok_or(Miss::NotFound)?;
        if meta.is_dir() {
            if !raw_path.ends_with('/') {
                // Redirect to the folder's canonical URL so relative links resolve. Built
                // from the checked segments: never `//host` (an open redirect).
                let mut loc = String::from("/");
                for s in &segs {
                    loc.extend(percent_encoding::utf8_percent_encode(s, SEGMENT));
                    loc.push('/');
                }
                return Ok(Err(loc));
            }
            let (ip, im) = self
                .inside(&path.join("index.html"))
                .ok_or(Miss::NotFound)?;
            path = ip;
            meta = im;
        }
        if !meta.is_file() {
            return Err(Miss::NotFound);
        }
        let mut variants = [None, None];
        for (slot, ext) in variants.iter_mut().zip(["br", "gz"]) {
            let mut vp = path.clone().into_os_string();
            vp.push(".");
            vp.push(ext);
            let vp = PathBuf::from(vp);
            // One cheap stat first: most files have no variant.
            if std::fs::symlink_metadata(&vp).is_err() {
                continue;
            }
            if let Some((vpath, vmeta)) = self.inside(&vp) {
                if vmeta.is_file() {
                    *slot = Some(vpath);
                }
            }
        }
        Ok(Ok(Resolved {
            path,
            variants,
            at: Instant::now(),
        }))
    }

    fn choose(&self, raw_path: &str, headers: &HeaderMap) -> Result<Result<Chosen, String>, Miss> {
        // Resolutions are reused for RESOLVE_VALID (like nginx's open_file_cache_valid);
        // the file itself is still lstat'ed on every request, so edits show at once, and a
        // canonical path that turned into a symlink is resolved again (never followed out).
        let cached = self
            .resolved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(raw_path)
            .filter(|r| r.at.elapsed() < RESOLVE_VALID)
            .cloned();
        let res = match cached {
            Some(r) => r,
            None => match self.resolve(raw_path)? {
                Ok(r) => {
                    let r = Arc::new(r);
                    let mut m = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
                    if m.len() >= RESOLVE_MAX {
                        m.clear();
                    }
                    m.insert(raw_path.to_string(), r.clone());
                    r
                }
                Err(loc) => return Ok(Err(loc)),
            },
        };
        let ae = headers
            .get(header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let (br, gz) = if ae.is_empty() {
            (false, false)
        } else {
            accepts(ae)
        };
        let has_variant = res.variants.iter().any(Option::is_some);
        for (ok, v, enc) in [(br, &res.variants[0], "br"), (gz, &res.variants[1], "gzip")] {
            if let (true, Some(vp)) = (ok, v) {
                if let Ok(meta) = std::fs::symlink_metadata(vp) {
                    if meta.is_file() {
                        return Ok(Ok(Chosen {
                            path: vp.clone(),
                            meta,
                            encoding: Some(enc),
                            has_variant,
                        }));
                    }
                }
            }
        }
        match std::fs::symlink_metadata(&res.path) {
            Ok(meta) if meta.is_file() => Ok(Ok(Chosen {
                path: res.path.clone(),
                meta,
                encoding: None,
                has_variant,
            })),
            _ => {
                // Gone or replaced: forget it and resolve again.
                self.resolved
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(raw_path);
                match self.resolve(raw_path)? {
                    Ok(r) => match std::fs::symlink_metadata(&r.path) {
                        Ok(meta) => Ok(Ok(Chosen {
                            has_variant: r.variants.iter().any(Option::is_some),
                            path: r.path,
                            meta,
                            encoding: None,
                        })),
                        Err(_) => Err(Miss::NotFound),
                    },
                    Err(loc) => Ok(Err(loc)),
                }
            }
        }
    }

    /// Answer a GET or HEAD for `raw_path` (still percent-encoded), or say why not.
    pub async fn serve(
        &self,
        method: &Method,
        raw_path: &str,
        headers: &HeaderMap,
    ) -> Result<Response<Body>, Miss> {
        let chosen = match self.choose(raw_path, headers)? {
            Ok(c) => c,
            Err(location) => return Ok(redirect(&location)),
        };
        let named = match chosen.encoding {
            Some(_) => strip_variant_ext(&chosen.path),
            None => chosen.path.clone(),
        };
        let ctype = content_type(named.to_str().unwrap_or(""));
        let len = chosen.meta.len();
        let mtime = chosen.meta.modified().unwrap_or(UNIX_EPOCH);
        let since_epoch = mtime.duration_since(UNIX_EPOCH).unwrap_or_default();
        let etag = format!(
            "\"{:x}-{:x}-{:x}{}\"",
            since_epoch.as_secs(),
            since_epoch.subsec_nanos(),
            len,
            match chosen.encoding {
                Some("br") => "-br",
                Some(_) => "-gz",
                None => "",
            }
        );
        let mtime_secs = UNIX_EPOCH + std::time::Duration::from_secs(since_epoch.as_secs());
        let last_modified = httpdate::fmt_http_date(mtime_secs);

        let mut base = Response::builder()
            .header(header::ETAG, &etag)
            .header(header::LAST_MODIFIED, &last_modified)
            .header(header::ACCEPT_RANGES, "bytes");
        if chosen.has_variant {
            base = base.header(header::VARY, "Accept-Encoding");
        }

        // Preconditions (RFC 9110 section 13.2.2).
        let hv = |n: header::HeaderName| headers.get(n).and_then(|v| v.to_str().ok());
        if let Some(im) = hv(header::IF_MATCH) {
            if !etag_matches(im, &etag) || im.trim().starts_with("W/") {
                return Ok(empty(base, StatusCode::PRECONDITION_FAILED));
            }
        } else if let Some(ius) =
            hv(header::IF_UNMODIFIED_SINCE).and_then(|d| httpdate::parse_http_date(d).ok())
        {
            if mtime_secs > ius {
                return Ok(empty(base, StatusCode::PRECONDITION_FAILED));
            }
        }
        if let Some(inm) = hv(header::IF_NONE_MATCH) {
            if etag_matches(inm, &etag) {
                return Ok(empty(base, StatusCode::NOT_MODIFIED));
            }
        } else if let Some(ims) =
            hv(header::IF_MODIFIED_SINCE).and_then(|d| httpdate::parse_http_date(d).ok())
        {
            if mtime_secs <= ims {
                return Ok(empty(base, StatusCode::NOT_MODIFIED));
            }
        }

        let mut range = match hv(header::RANGE) {
            Some(r) => parse_range(r, len),
            None => RangeReq::Full,
        };
        if range != RangeReq::Full {
            if let Some(ir) = hv(header::IF_RANGE) {
                let fresh = if ir.trim_start().starts_with('"') || ir.trim_start().starts_with("W/")
                {
                    !ir.trim_start().starts_with("W/") && ir.trim() == etag
                } else {
                    httpdate::parse_http_date(ir).is_ok_and(|d| d == mtime_secs)
                };
                if !fresh {
                    range = RangeReq::Full;
                }
            }
        }
        base = base.header(header::CONTENT_TYPE, ctype);
        if let Some(enc) = chosen.encoding {
            base = base.header(header::CONTENT_ENCODING, enc);
        }
        let (status, start, count) = match range {
            RangeReq::Full => (StatusCode::OK, 0, len),
            RangeReq::Partial { start, end } => {
                base = base.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
                (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
            }
            RangeReq::Unsatisfiable => {
                let r = base
                    .status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                    .header(header::CONTENT_LENGTH, 0)
                    .body(Body::empty());
                return Ok(r.unwrap_or_else(|_| internal()));
            }
        };
        base = base.status(status).header(header::CONTENT_LENGTH, count);
        if method == Method::HEAD {
            return Ok(base.body(Body::empty()).unwrap_or_else(|_| internal()));
        }
        let body = match self.contents(&chosen, len, mtime).await {
            Ok(Some(bytes)) => {
                let s = start as usize;
                let e = (start + count) as usize;
                if e > bytes.len() {
                    // The file shrank between stat and read: tell the client to retry.
                    return Ok(empty(Response::builder(), StatusCode::SERVICE_UNAVAILABLE));
                }
                Body::from(bytes.slice(s..e))
            }
            Ok(None) => match stream_file(&chosen.path, start, count).await {
                Ok(b) => b,
                Err(_) => return Err(Miss::NotFound),
            },
            Err(_) => return Err(Miss::NotFound),
        };
        Ok(base.body(body).unwrap_or_else(|_| internal()))
    }

    /// The whole file from the cache (reading it if needed), or None when it is too big
    /// to cache and must be streamed.
    async fn contents(
        &self,
        c: &Chosen,
        len: u64,
        mtime: SystemTime,
    ) -> std::io::Result<Option<Bytes>> {
        if len > CACHE_MAX_FILE {
            return Ok(None);
        }
        let ino = std::os::unix::fs::MetadataExt::ino(&c.meta);
        if let Some(e) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&c.path)
        {
            if e.len == len && e.mtime == mtime && e.ino == ino {
                return Ok(Some(e.bytes.clone()));
            }
        }
        let data = if len <= INLINE_READ_MAX {
            std::fs::read(&c.path)?
        } else {
            let p = c.path.clone();
            tokio::task::spawn_blocking(move || std::fs::read(p))
                .await
                .map_err(std::io::Error::other)??
        };
        let bytes = Bytes::from(data);
        if bytes.len() as u64 == len {
            let mut total = self.cache_bytes.lock().unwrap_or_else(|e| e.into_inner());
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if *total + len > CACHE_MAX_TOTAL {
                cache.clear();
                *total = 0;
            }
            if let Some(old) = cache.insert(
                c.path.clone(),
                Arc::new(CacheEntry {
                    len,
                    mtime,
                    ino,
                    bytes: bytes.clone(),
                }),
            ) {
                *total = total.saturating_sub(old.len);
            }
            *total += len;
        }
        Ok(Some(bytes))
    }
}

fn strip_variant_ext(p: &Path) -> PathBuf {
    match p.extension().and_then(|e| e.to_str()) {
        Some("br") | Some("gz") => p.with_extension(""),
        _ => p.to_path_buf(),
    }
}

async fn stream_file(path: &Path, start: u64, count: u64) -> std::io::Result<Body> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut f = tokio::fs::File::open(path).await?;
    if start > 0 {
        f.seek(std::io::SeekFrom::Start(start)).await?;
    }
    let stream = tokio_util::io::ReaderStream::with_capacity(f.take(count), 256 * 1024);
    Ok(Body::from_stream(stream))
}

fn redirect(location: &str) -> Response<Body> {
    Response::builder()
        .status(StatusCode::MOVED_PERMANENTLY)
        .header(
            header::LOCATION,
            HeaderValue::from_str(location).unwrap_or(HeaderValue::from_static("/")),
        )
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .unwrap_or_else(|_| internal())
}

fn empty(b: http::response::Builder, status: StatusCode) -> Response<Body> {
    b.status(status)
        .body(Body::empty())
        .unwrap_or_else(|_| internal())
}

fn internal() -> Response<Body> {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn traversal_is_refused() {
        assert_eq!(sanitize("/../etc/passwd"), Err(Miss::BadPath));
        assert_eq!(sanitize("/a/%2e%2e/%2e%2e/etc/passwd"), Err(Miss::BadPath));
        assert_eq!(sanitize("/a/%2E%2E/b"), Err(Miss::BadPath));
        assert_eq!(sanitize("/a%00.html"), Err(Miss::BadPath));
        assert_eq!(sanitize("/a%5c..%5cb"), Err(Miss::BadPath));
        assert_eq!(sanitize("/%ff"), Err(Miss::BadPath));
        assert_eq!(sanitize("/.git/config"), Err(Miss::NotFound));
        assert_eq!(sanitize("relative"), Err(Miss::BadPath));
        assert_eq!(
            sanitize("/a/./b//c"),
            Ok(vec!["a".into(), "b".into(), "c".into()])
        );
        assert_eq!(sanitize("/caf%C3%A9.txt"), Ok(vec!["café.txt".into()]));
    }

    #[test]
    fn ranges() {
        assert_eq!(
            parse_range("bytes=0-9", 100),
            RangeReq::Partial { start: 0, end: 9 }
        );
        assert_eq!(
            parse_range("bytes=90-", 100),
            RangeReq::Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=-10", 100),
            RangeReq::Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=-1000", 100),
            RangeReq::Partial { start: 0, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=50-1000", 100),
            RangeReq::Partial { start: 50, end: 99 }
        );
        assert_eq!(parse_range("bytes=100-", 100), RangeReq::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), RangeReq::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-0", 0), RangeReq::Unsatisfiable);
        assert_eq!(parse_range("bytes=9-1", 100), RangeReq::Full);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeReq::Full);
        assert_eq!(parse_range("items=0-1", 100), RangeReq::Full);
        assert_eq!(parse_range("bytes=a-b", 100), RangeReq::Full);
        assert_eq!(
            parse_range("bytes=99999999999999999999-", 100),
            RangeReq::Full
        );
    }

    #[test]
    fn accept_encoding() {
        assert_eq!(accepts("gzip, deflate, br"), (true, true));
        assert_eq!(accepts("gzip;q=0, br"), (true, false));
        assert_eq!(accepts("br;q=0"), (false, false));
        assert_eq!(accepts("*"), (true, true));
        assert_eq!(accepts("*;q=0.5, br;q=0"), (false, true));
        assert_eq!(accepts("identity"), (false, false));
    }

    #[test]
    fn etag_lists() {
        assert!(etag_matches("\"a\", \"b\"", "\"b\""));
        assert!(etag_matches("W/\"b\"", "\"b\""));
        assert!(etag_matches("*", "\"b\""));
        assert!(!etag_matches("\"c\"", "\"b\""));
    }

    proptest! {
        #[test]
        fn ranges_stay_inside(s in "bytes=[0-9-,]{0,12}", len in 0u64..1000) {
            if let RangeReq::Partial { start, end } = parse_range(&s, len) {
                prop_assert!(start <= end && end < len);
            }
        }

        #[test]
        fn sanitized_segments_are_plain(s in "/[a-zA-Z0-9%./\\\\]{0,30}") {
            if let Ok(segs) = sanitize(&s) {
                for seg in segs {
                    prop_assert!(seg != ".." && seg != "." && !seg.is_empty());
                    prop_assert!(!seg.contains('/') && !seg.contains('\0') && !seg.starts_with('.'));
                }
            }
        }
    }
}
