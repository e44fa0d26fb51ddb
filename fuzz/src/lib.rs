//! What the fuzz targets share: reading a rendered head back, and a reference request
//! parser (httparse's tokens plus the RFC 9110/9112 rules, written apart from the codec)
//! for the differential target.

pub mod reference;
pub mod targets;

/// A head parsed back with httparse: its fields as (lowercased name, value).
pub struct Head {
    pub len: usize,
    pub fields: Vec<(String, Vec<u8>)>,
}

impl Head {
    /// The values of the fields named `name` (lowercase).
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.fields
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    pub fn count(&self, name: &str) -> usize {
        self.all(name).count()
    }

    pub fn one<'a>(&'a self, name: &'a str) -> Option<&'a [u8]> {
        let mut it = self.all(name);
        let v = it.next()?;
        it.next().is_none().then_some(v)
    }
}

fn fields(hs: &[httparse::Header<'_>]) -> Vec<(String, Vec<u8>)> {
    hs.iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .collect()
}

/// A rendered request head: it must be exactly one complete head, CRLF only.
pub fn request_head(out: &[u8]) -> Result<(String, String, Head), String> {
    let mut hs = [httparse::EMPTY_HEADER; 512];
    let mut req = httparse::Request::new(&mut hs);
    match req.parse(out) {
        Ok(httparse::Status::Complete(n)) if n == out.len() => {}
        r => return Err(format!("{r:?} for {} bytes", out.len())),
    }
    bare_lf(out)?;
    let (Some(m), Some(t)) = (req.method, req.path) else {
        return Err("no request line".into());
    };
    Ok((
        m.to_string(),
        t.to_string(),
        Head {
            len: out.len(),
            fields: fields(req.headers),
        },
    ))
}

/// A rendered response head, as [`request_head`]; also its status.
pub fn response_head(out: &[u8]) -> Result<(u16, Head), String> {
    let mut hs = [httparse::EMPTY_HEADER; 512];
    let mut resp = httparse::Response::new(&mut hs);
    match resp.parse(out) {
        Ok(httparse::Status::Complete(n)) if n == out.len() => {}
        r => return Err(format!("{r:?} for {} bytes", out.len())),
    }
    bare_lf(out)?;
    Ok((
        resp.code.unwrap_or(0),
        Head {
            len: out.len(),
            fields: fields(resp.headers),
        },
    ))
}

/// Every LF is preceded by CR and every CR followed by LF (what goes out is strict even
/// when what came in was not).
fn bare_lf(out: &[u8]) -> Result<(), String> {
    for (i, b) in out.iter().enumerate() {
        let ok = match b {
            b'\n' => i > 0 && out[i - 1] == b'\r',
            b'\r' => out.get(i + 1) == Some(&b'\n'),
            _ => true,
        };
        if !ok {
            return Err(format!("a bare CR or LF at {i}"));
        }
    }
    Ok(())
}

/// The comma-separated elements of a field value, OWS trimmed, empty ones dropped
/// (RFC 9110 section 5.6.1).
pub fn elements(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|b| *b == b',')
        .map(|e| e.trim_ascii())
        .filter(|e| !e.is_empty())
}

/// Hop-by-hop names that must never reach the other side (RFC 9110 section 7.6.1).
pub const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Lossy text of some bytes, for failure messages.
pub fn show(b: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(b))
}
