//! A reference reading of a request head: httparse for the tokens, then the rules of
//! RFC 9112 (message framing, Host, request target) and RFC 9110 (field lists, URIs),
//! written from the RFCs and not from rampart's codec. Where the RFCs leave a choice the
//! codec documents one (it refuses both framings at once, CONNECT, a fragment), the
//! reference takes the same, so that a disagreement is a finding.

use crate::elements;

/// How the body of a request is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    None,
    Length(u64),
    Chunked,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Incomplete,
    Accept {
        head_len: usize,
        body: Body,
        /// Where the request goes: an absolute-form target's authority, else the Host.
        host: Vec<u8>,
        http10: bool,
    },
    /// Every reason found.
    Refuse(Vec<Why>),
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// httparse refused the tokens (or too many fields).
    Syntax,
    /// CONNECT (no tunnels: the codec's documented choice).
    Connect,
    /// A target byte that is not visible ASCII, or a fragment.
    TargetBytes,
    /// The target's form does not fit the method (authority-form, `*` without OPTIONS),
    /// or an absolute-form target that is not `http(s)://authority...`, or has userinfo.
    TargetForm,
    /// Visible ASCII, but not RFC 3986 (`"`, `{`, `%zz`...): many servers take these.
    TargetStrict,
    /// HTTP/1.1, origin or asterisk form, and no Host.
    HostMissing,
    /// HTTP/1.1 in absolute form without a Host: the target names the host anyway.
    HostMissingAbsolute,
    HostTwice,
    /// A Host byte that no `uri-host [":" port]` has (space, `,`, `/`, `@`, controls...).
    HostBytes,
    /// Host bytes that are all allowed, in an order RFC 3986 does not allow (`a:b:c`).
    HostStrict,
    /// A Content-Length that is not a list of equal decimal numbers.
    Length,
    /// Transfer codings that do not end in exactly one `chunked`.
    Coding,
    /// Both Transfer-Encoding and Content-Length (the codec's documented choice).
    CodingAndLength,
    /// Transfer-Encoding in HTTP/1.0 (RFC 9112 section 6.1: faulty framing).
    CodingInHttp10,
}

impl Why {
    /// Whether a proxy that takes such a request anyway is wrong in a way that matters:
    /// framing (smuggling), where it goes (Host), or what it asks (target bytes, form).
    pub fn matters(self) -> bool {
        !matches!(
            self,
            Why::Syntax | Why::TargetStrict | Why::HostStrict | Why::HostMissingAbsolute
        )
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}

/// Whether `s` is unreserved / pct-encoded / sub-delims / `extra` only (RFC 3986).
fn strict(s: &[u8], extra: &[u8]) -> bool {
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        if b == b'%' {
            if !(s.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && s.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
            {
                return false;
            }
            i += 3;
            continue;
        }
        if !(unreserved(b) || sub_delim(b) || extra.contains(&b)) {
            return false;
        }
        i += 1;
    }
    true
}

/// `uri-host [":" port]` (RFC 9110 section 7.2), or empty.
fn host_syntax(h: &[u8]) -> Result<(), Why> {
    // The bytes any authority may have at all; `,` is a list, so not one host.
    if !h
        .iter()
        .all(|b| (unreserved(*b) || sub_delim(*b) || b":[]%".contains(b)) && *b != b',')
    {
        return Err(Why::HostBytes);
    }
    let (host, port) = if let Some(rest) = h.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|b| *b == b']') else {
            return Err(Why::HostStrict);
        };
        let lit = &rest[..end];
        if lit.is_empty()
            || !lit
                .iter()
                .all(|b| b.is_ascii_hexdigit() || b":.".contains(b))
        {
            return Err(Why::HostStrict);
        }
        match &rest[end + 1..] {
            [] => (&b""[..], None),
            [b':', p @ ..] => (&b""[..], Some(p)),
            _ => return Err(Why::HostStrict),
        }
    } else {
        match h.iter().position(|b| *b == b':') {
            Some(i) => (&h[..i], Some(&h[i + 1..])),
            None => (h, None),
        }
    };
    if !strict(host, b"") || port.is_some_and(|p| !p.iter().all(u8::is_ascii_digit)) {
        return Err(Why::HostStrict);
    }
    Ok(())
}

/// The authority of an absolute-form target, or why it has none that will do.
fn absolute(target: &str) -> Result<&[u8], Why> {
    let t = target.as_bytes();
    let Some(colon) = t.iter().position(|b| *b == b':') else {
        return Err(Why::TargetForm);
    };
    let scheme = &t[..colon];
    if !(scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https")) {
        return Err(Why::TargetForm);
    }
    let Some(rest) = t[colon + 1..].strip_prefix(b"//") else {
        return Err(Why::TargetForm);
    };
    let end = rest
        .iter()
        .position(|b| matches!(b, b'/' | b'?'))
        .unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    // An http(s) URI has a host; userinfo is an error (RFC 9110 section 4.2.4).
    if authority.is_empty() || authority.contains(&b'@') {
        return Err(Why::TargetForm);
    }
    host_syntax(authority).map_err(|w| {
        if w == Why::HostBytes {
            Why::TargetForm
        } else {
            w
        }
    })?;
    if !strict(path, b":@/?") {
        return Err(Why::TargetStrict);
    }
    Ok(authority)
}

/// The reference's reading of the request head at the start of `data`.
pub fn judge(data: &[u8]) -> Verdict {
    judge_with(data, true)
}

/// As [`judge`], taking what is refused only for reasons that do not matter
/// ([`Why::matters`]): how an upstream that is not strict reads a head.
pub fn judge_lenient(data: &[u8]) -> Verdict {
    judge_with(data, false)
}

fn judge_with(data: &[u8], strict_rules: bool) -> Verdict {
    let mut hs = [httparse::EMPTY_HEADER; 512];
    let mut req = httparse::Request::new(&mut hs);
    let head_len = match req.parse(data) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Verdict::Incomplete,
        Err(_) => return Verdict::Refuse(vec![Why::Syntax]),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Verdict::Refuse(vec![Why::Syntax]);
    };
    let http10 = version == 0;
    // Every problem is noted, so that one that matters is not hidden behind one that
    // does not.
    let mut bad: Vec<Why> = Vec::new();
    if method == "CONNECT" {
        bad.push(Why::Connect);
    }
    // Framing (RFC 9112 section 6.3), Host, the target.
    let mut length: Option<u64> = None;
    let mut codings: Vec<&[u8]> = Vec::new();
    let mut te = false;
    let mut hosts: Vec<&[u8]> = Vec::new();
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let mut any = false;
            for e in elements(h.value) {
                let n = std::str::from_utf8(e)
                    .ok()
                    .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<u64>().ok());
                match (n, length) {
                    (Some(n), None) => length = Some(n),
                    (Some(n), Some(p)) if n == p => {}
                    _ => bad.push(Why::Length),
                }
                any = true;
            }
            if !any {
                bad.push(Why::Length);
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te = true;
            codings.extend(elements(h.value));
        } else if h.name.eq_ignore_ascii_case("host") {
            hosts.push(h.value);
        }
    }
    let mut body = match length {
        None | Some(0) => Body::None,
        Some(n) => Body::Length(n),
    };
    if te {
        if http10 {
            bad.push(Why::CodingInHttp10);
        }
        if length.is_some() {
            bad.push(Why::CodingAndLength);
        }
        let is_chunked = |c: &&[u8]| c.eq_ignore_ascii_case(b"chunked");
        if !codings.last().is_some_and(is_chunked)
            || codings
                .iter()
                .filter(|c| c.eq_ignore_ascii_case(b"chunked"))
                .count()
                != 1
        {
            bad.push(Why::Coding);
        }
        body = Body::Chunked;
    }
    if hosts.len() > 1 {
        bad.push(Why::HostTwice);
    }
    for h in &hosts {
        if let Err(w) = host_syntax(h) {
            bad.push(w);
        }
    }
    let mut authority = None;
    if !target
        .bytes()
        .all(|b| (0x21..=0x7e).contains(&b) && b != b'#')
    {
        bad.push(Why::TargetBytes);
    } else if target.starts_with('/') {
        if !strict(target.as_bytes(), b":@/?") {
            bad.push(Why::TargetStrict);
        }
    } else if target == "*" {
        if method != "OPTIONS" {
            bad.push(Why::TargetForm);
        }
    } else {
        match absolute(target) {
            Ok(a) => authority = Some(a),
            Err(w) => bad.push(w),
        }
    }
    let host = match (authority, hosts.first()) {
        (Some(a), h) => {
            if h.is_none() && !http10 {
                bad.push(Why::HostMissingAbsolute);
            }
            a.to_vec()
        }
        (None, Some(h)) => h.to_vec(),
        (None, None) => {
            let absolute_like = !(target.starts_with('/') || target == "*");
            if !http10 && !absolute_like {
                bad.push(Why::HostMissing);
            }
            Vec::new()
        }
    };
    if !strict_rules {
        bad.retain(|w| w.matters());
    }
    if !bad.is_empty() {
        return Verdict::Refuse(bad);
    }
    Verdict::Accept {
        head_len,
        body,
        host,
        http10,
    }
}
