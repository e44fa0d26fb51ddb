//! Static files: safe path resolution, conditional and range requests, precompressed
//! variants, and a cache of representations keyed by request path.
//!
//! A cached representation holds everything a response needs, computed once: the
//! validators (ETag, Last-Modified) and content headers already rendered as header lines,
//! and the body: the bytes themselves for files up to [`MEM_MAX_FILE`] (a hit is a clone
//! of `Bytes`), else an open file descriptor (sent with `sendfile(2)` by the HTTP/1 fast
//! path in [`crate::h1`]). An entry is re-resolved (realpath inside the root, `stat`)
//! when it is older than [`CHECK_EVERY`], so an edited file is served new within that.
//! The cache is bounded in bytes and open files, and emptied when full.

use std::collections::HashMap;
use std::fs::File;
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

/// A request path resolved to canonical files inside the root.
struct Resolved {
    path: PathBuf,
    /// Canonical `.br` and `.gz` variants, when present.
    variants: [Option<PathBuf>; 2],
}

/// How long a cached entry is used before its path is resolved and its files `stat`ed
/// again (like nginx's `open_file_cache_valid`).
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Files up to this size are held in memory; bigger ones as an open file.
pub const MEM_MAX_FILE: u64 = 256 * 1024;
/// The cache is emptied when its file contents would pass this...
const CACHE_MAX_BYTES: u64 = 128 * 1024 * 1024;
/// ...or when it would hold more open files than this...
const CACHE_MAX_FILES: usize = 256;
/// ...or more paths than this.
const CACHE_MAX_PATHS: usize = 10_000;

/// The body of a representation.
pub enum RepBody {
    /// The whole file.
    Mem(Bytes),
    /// An open descriptor of the file (read with explicit offsets only: shared safely).
    File(Arc<File>),
}

/// One representation of a path (the file itself, or its `.br` / `.gz` variant), with
/// its response headers rendered once.
pub struct Rep {
    pub len: u64,
    /// Last-Modified, whole seconds.
    pub mtime_secs: SystemTime,
    pub etag: String,
    pub encoding: Option<&'static str>,
    pub ctype: &'static str,
    /// `etag`, `last-modified`, `accept-ranges` and (when the path has variants) `vary`
    /// header lines, each ending in CRLF (sent with every status).
    pub validators: Bytes,
    /// `content-type` and `content-encoding` header lines.
    pub content: Bytes,
    /// `content-length` of the whole representation.
    pub length_line: Bytes,
    pub body: RepBody,
    pub has_variant: bool,
    /// The canonical file (for streaming it on the hyper path).
    pub path: PathBuf,
    ino: u64,
    mtime: SystemTime,
}

impl Rep {
    fn same_file(&self, meta: &std::fs::Metadata, has_variant: bool) -> bool {
        self.ino == std::os::unix::fs::MetadataExt::ino(meta)
            && self.len == meta.len()
            && Some(self.mtime) == meta.modified().ok()
            && self.has_variant == has_variant
    }
}

/// A cached path: its representations, identity first.
struct Entry {
    checked: Instant,
    /// identity, br, gzip.
    reps: [Option<Arc<Rep>>; 3],
}

impl Entry {
    fn pick(&self, accept_encoding: &str) -> Option<Arc<Rep>> {
        if !accept_encoding.is_empty() && (self.reps[1].is_some() || self.reps[2].is_some()) {
            let (br, gz) = accepts(accept_encoding);
            if br && self.reps[1].is_some() {
                return self.reps[1].clone();
            }
            if gz && self.reps[2].is_some() {
                return self.reps[2].clone();
            }
        }
        self.reps[0].clone()
    }
}

#[derive(Default)]
struct Cache {
    map: HashMap<String, Arc<Entry>>,
    bytes: u64,
    files: usize,
}

/// What a path names.
pub enum Found {
    /// A file: the representation chosen for the request's Accept-Encoding.
    Rep(Arc<Rep>),
    /// A folder without the trailing slash: redirect here.
    Redirect(String),
}

/// The request headers that decide a static answer.
#[derive(Default, Clone, Copy, Debug)]
pub struct Conds<'a> {
    pub if_match: Option<&'a str>,
    pub if_none_match: Option<&'a str>,
    pub if_modified_since: Option<&'a str>,
    pub if_unmodified_since: Option<&'a str>,
    pub range: Option<&'a str>,
    pub if_range: Option<&'a str>,
}

impl<'a> Conds<'a> {
    pub fn from_headers(h: &'a HeaderMap) -> Conds<'a> {
        let hv = |n: header::HeaderName| h.get(n).and_then(|v| v.to_str().ok());
        Conds {
            if_match: hv(header::IF_MATCH),
            if_none_match: hv(header::IF_NONE_MATCH),
            if_modified_since: hv(header::IF_MODIFIED_SINCE),
            if_unmodified_since: hv(header::IF_UNMODIFIED_SINCE),
            range: hv(header::RANGE),
            if_range: hv(header::IF_RANGE),
        }
    }

    /// Record a header by its (lowercase or not) name; false when it is not one of ours.
    pub fn set(&mut self, name: &str, value: &'a str) -> bool {
        let slot = if name.eq_ignore_ascii_case("if-match") {
            &mut self.if_match
        } else if name.eq_ignore_ascii_case("if-none-match") {
            &mut self.if_none_match
        } else if name.eq_ignore_ascii_case("if-modified-since") {
            &mut self.if_modified_since
        } else if name.eq_ignore_ascii_case("if-unmodified-since") {
            &mut self.if_unmodified_since
        } else if name.eq_ignore_ascii_case("range") {
            &mut self.range
        } else if name.eq_ignore_ascii_case("if-range") {
            &mut self.if_range
        } else {
            return false;
        };
        *slot = Some(value);
        true
    }
}

/// The answer to a GET or HEAD of a representation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    NotModified,
    PreconditionFailed,
    /// 416, with `Content-Range: bytes */len`.
    Unsatisfiable,
    Full,
    /// 206 of bytes start..=end.
    Partial {
        start: u64,
        end: u64,
    },
}

/// Preconditions (RFC 9110 section 13.2.2), then the range (pure).
pub fn evaluate(rep: &Rep, c: &Conds) -> Outcome {
    let etag = rep.etag.as_str();
    if let Some(im) = c.if_match {
        if !etag_matches(im, etag) || im.trim().starts_with("W/") {
            return Outcome::PreconditionFailed;
        }
    } else if let Some(ius) = c
        .if_unmodified_since
        .and_then(|d| httpdate::parse_http_date(d).ok())
    {
        if rep.mtime_secs > ius {
            return Outcome::PreconditionFailed;
        }
    }
    if let Some(inm) = c.if_none_match {
        if etag_matches(inm, etag) {
            return Outcome::NotModified;
        }
    } else if let Some(ims) = c
        .if_modified_since
        .and_then(|d| httpdate::parse_http_date(d).ok())
    {
        if rep.mtime_secs <= ims {
            return Outcome::NotModified;
        }
    }
    let Some(r) = c.range else {
        return Outcome::Full;
    };
    let range = parse_range(r, rep.len);
    if range == RangeReq::Full {
        return Outcome::Full;
    }
    if let Some(ir) = c.if_range {
        let t = ir.trim_start();
        let fresh = if t.starts_with('"') || t.starts_with("W/") {
            !t.starts_with("W/") && ir.trim() == etag
        } else {
            httpdate::parse_http_date(ir).is_ok_and(|d| d == rep.mtime_secs)
        };
        if !fresh {
            return Outcome::Full;
        }
    }
    match range {
        RangeReq::Partial { start, end } => Outcome::Partial { start, end },
        RangeReq::Unsatisfiable => Outcome::Unsatisfiable,
        RangeReq::Full => Outcome::Full,
    }
}

/// The static file server for one root folder.
pub struct StaticFiles {
    root: PathBuf,
    cache: Mutex<Cache>,
}

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
            cache: Mutex::new(Cache::default()),
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
        Ok(Ok(Resolved { path, variants }))
    }

    /// What `raw_path` (still percent-encoded) names, with the representation chosen for
    /// `accept_encoding`. A cache hit costs a map lookup and an `Arc` clone.
    pub fn lookup(&self, raw_path: &str, accept_encoding: &str) -> Result<Found, Miss> {
        let old = {
            let c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            match c.map.get(raw_path) {
                Some(e) if e.checked.elapsed() < CHECK_EVERY => {
                    return e
                        .pick(accept_encoding)
                        .map(Found::Rep)
                        .ok_or(Miss::NotFound);
                }
                Some(e) => Some(e.clone()),
                None => None,
            }
        };
        let res = match self.resolve(raw_path) {
            Ok(Ok(r)) => r,
            Ok(Err(location)) => {
                self.forget(raw_path);
                return Ok(Found::Redirect(location));
            }
            Err(m) => {
                self.forget(raw_path);
                return Err(m);
            }
        };
        let has_variant = res.variants.iter().any(Option::is_some);
        let named = res.path.clone();
        let mut reps: [Option<Arc<Rep>>; 3] = [None, None, None];
        let files = [
            Some(&res.path),
            res.variants[0].as_ref(),
            res.variants[1].as_ref(),
        ];
        for (i, (slot, file)) in reps.iter_mut().zip(files).enumerate() {
            let Some(file) = file else { continue };
            let encoding = [None, Some("br"), Some("gzip")][i];
            let prev = old.as_ref().and_then(|o| o.reps[i].clone());
            match load_rep(file, &named, encoding, has_variant, prev) {
                Ok(r) => *slot = Some(r),
                Err(e) if i == 0 => {
                    tracing::debug!(path = %file.display(), error = %e, "cannot open");
                    self.forget(raw_path);
                    return Err(Miss::NotFound);
                }
                Err(_) => {}
            }
        }
        let entry = Arc::new(Entry {
            checked: Instant::now(),
            reps,
        });
        let picked = entry.pick(accept_encoding).ok_or(Miss::NotFound)?;
        self.store(raw_path, entry);
        Ok(Found::Rep(picked))
    }

    fn forget(&self, raw_path: &str) {
        let mut c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = c.map.remove(raw_path) {
            let (b, f) = weight(&old);
            c.bytes = c.bytes.saturating_sub(b);
            c.files = c.files.saturating_sub(f);
        }
    }

    fn store(&self, raw_path: &str, entry: Arc<Entry>) {
        let (b, f) = weight(&entry);
        let mut c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = c.map.remove(raw_path) {
            let (ob, of) = weight(&old);
            c.bytes = c.bytes.saturating_sub(ob);
            c.files = c.files.saturating_sub(of);
        }
        if c.bytes + b > CACHE_MAX_BYTES
            || c.files + f > CACHE_MAX_FILES
            || c.map.len() >= CACHE_MAX_PATHS
        {
            *c = Cache::default();
        }
        if b <= CACHE_MAX_BYTES && f <= CACHE_MAX_FILES {
            c.bytes += b;
            c.files += f;
            c.map.insert(raw_path.to_string(), entry);
        }
    }

    /// Answer a GET or HEAD for `raw_path` (still percent-encoded) on the hyper path,
    /// or say why not.
    pub async fn serve(
        &self,
        method: &Method,
        raw_path: &str,
        headers: &HeaderMap,
    ) -> Result<Response<Body>, Miss> {
        let ae = headers
            .get(header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let rep = match self.lookup(raw_path, ae)? {
            Found::Rep(r) => r,
            Found::Redirect(location) => return Ok(redirect(&location)),
        };
        let mut base = Response::builder()
            .header(header::ETAG, &rep.etag)
            .header(
                header::LAST_MODIFIED,
                httpdate::fmt_http_date(rep.mtime_secs),
            )
            .header(header::ACCEPT_RANGES, "bytes");
        if rep.has_variant {
            base = base.header(header::VARY, "Accept-Encoding");
        }
        let outcome = evaluate(&rep, &Conds::from_headers(headers));
        match outcome {
            Outcome::NotModified => return Ok(empty(base, StatusCode::NOT_MODIFIED)),
            Outcome::PreconditionFailed => return Ok(empty(base, StatusCode::PRECONDITION_FAILED)),
            _ => {}
        }
        base = base.header(header::CONTENT_TYPE, rep.ctype);
        if let Some(enc) = rep.encoding {
            base = base.header(header::CONTENT_ENCODING, enc);
        }
        let len = rep.len;
        let (status, start, count) = match outcome {
            Outcome::Partial { start, end } => {
                base = base.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
                (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
            }
            Outcome::Unsatisfiable => {
                let r = base
                    .status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                    .header(header::CONTENT_LENGTH, 0)
                    .body(Body::empty());
                return Ok(r.unwrap_or_else(|_| internal()));
            }
            _ => (StatusCode::OK, 0, len),
        };
        base = base.status(status).header(header::CONTENT_LENGTH, count);
        if method == Method::HEAD {
            return Ok(base.body(Body::empty()).unwrap_or_else(|_| internal()));
        }
        let body = match &rep.body {
            RepBody::Mem(bytes) => {
                Body::from(bytes.slice(start as usize..(start + count) as usize))
            }
            RepBody::File(_) => match stream_file(&rep.path, start, count).await {
                Ok(b) => b,
                Err(_) => return Err(Miss::NotFound),
            },
        };
        Ok(base.body(body).unwrap_or_else(|_| internal()))
    }
}

/// (bytes held in memory, open files) of an entry.
fn weight(e: &Entry) -> (u64, usize) {
    let mut b = 0;
    let mut f = 0;
    for r in e.reps.iter().flatten() {
        match &r.body {
            RepBody::Mem(m) => b += m.len() as u64,
            RepBody::File(_) => f += 1,
        }
    }
    (b, f)
}

/// Open (never following a symlink that replaced the resolved file) and describe one
/// representation; reuse `prev` when the file is unchanged.
fn load_rep(
    path: &Path,
    named: &Path,
    encoding: Option<&'static str>,
    has_variant: bool,
    prev: Option<Arc<Rep>>,
) -> std::io::Result<Arc<Rep>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if let Some(p) = prev.filter(|p| p.same_file(&meta, has_variant) && p.path == path) {
        return Ok(p);
    }
    let mtime = meta.modified().unwrap_or(UNIX_EPOCH);
    let body = if meta.len() <= MEM_MAX_FILE {
        let mut data = Vec::with_capacity(meta.len() as usize);
        (&f).take(MEM_MAX_FILE).read_to_end(&mut data)?;
        RepBody::Mem(Bytes::from(data))
    } else {
        RepBody::File(Arc::new(f))
    };
    let len = match &body {
        RepBody::Mem(m) => m.len() as u64,
        RepBody::File(_) => meta.len(),
    };
    let since_epoch = mtime.duration_since(UNIX_EPOCH).unwrap_or_default();
    let etag = format!(
        "\"{:x}-{:x}-{:x}{}\"",
        since_epoch.as_secs(),
        since_epoch.subsec_nanos(),
        len,
        match encoding {
            Some("br") => "-br",
            Some(_) => "-gz",
            None => "",
        }
    );
    let mtime_secs = UNIX_EPOCH + Duration::from_secs(since_epoch.as_secs());
    let ctype = content_type(named.to_str().unwrap_or(""));
    let mut validators = format!(
        "etag: {etag}\r\nlast-modified: {}\r\naccept-ranges: bytes\r\n",
        httpdate::fmt_http_date(mtime_secs)
    );
    if has_variant {
        validators.push_str("vary: Accept-Encoding\r\n");
    }
    let mut content = format!("content-type: {ctype}\r\n");
    if let Some(e) = encoding {
        content.push_str(&format!("content-encoding: {e}\r\n"));
    }
    Ok(Arc::new(Rep {
        len,
        mtime_secs,
        etag,
        encoding,
        ctype,
        validators: Bytes::from(validators),
        content: Bytes::from(content),
        length_line: Bytes::from(format!("content-length: {len}\r\n")),
        body,
        has_variant,
        path: path.to_path_buf(),
        ino: std::os::unix::fs::MetadataExt::ino(&meta),
        mtime,
    }))
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
