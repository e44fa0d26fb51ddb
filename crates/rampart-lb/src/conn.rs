//! What one client connection knows, shared by its requests and by both HTTP paths (the
//! HTTP/1 fast path and hyper's HTTP/2): its listener, the peer and whether it is a
//! trusted proxy, its hash key, and how the forwarding headers name it.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use http::HeaderValue;

use crate::io::Activity;
use crate::tls::TlsTerm;
use crate::token::is_tchar;
use crate::ListenerRt;

/// What one client connection knows, shared by its requests.
pub(crate) struct ConnCtx {
    pub(crate) listener: Arc<ListenerRt>,
    pub(crate) peer: SocketAddr,
    pub(crate) worker: usize,
    pub(crate) trusted: bool,
    pub(crate) hash_key: u64,
    /// Progress counters of the hyper paths (made when one first serves the connection).
    activity: OnceLock<Arc<Activity>>,
    /// The client came over TLS (`X-Forwarded-Proto: https`).
    pub(crate) https: bool,
}

/// Each octet's decimal digits (up to three, zero-padded on the right) and their count.
static OCTETS: [[u8; 4]; 256] = {
    let mut t = [[0u8; 4]; 256];
    let mut i = 0;
    while i < 256 {
        let o = i as u8;
        t[i] = if o >= 100 {
            [b'0' + o / 100, b'0' + o / 10 % 10, b'0' + o % 10, 3]
        } else if o >= 10 {
            [b'0' + o / 10, b'0' + o % 10, 0, 2]
        } else {
            [b'0' + o, 0, 0, 1]
        };
        i += 1;
    }
    t
};

/// Append an IP address as text (IPv4 by hand: this runs for every request).
pub(crate) fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            // Written on the stack and appended at once: one capacity check, not fifteen;
            // each octet's digits from a table, copied whole (the next octet's overwrite
            // the padding).
            let mut text = [0u8; 16];
            let mut n = 0;
            for o in v4.octets() {
                let d = OCTETS[usize::from(o)];
                text[n..n + 3].copy_from_slice(&d[..3]);
                n += usize::from(d[3]);
                text[n] = b'.';
                n += 1;
            }
            out.extend_from_slice(&text[..n - 1]);
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

impl ConnCtx {
    pub(crate) fn new(
        peer: SocketAddr,
        listener: &Arc<ListenerRt>,
        worker: usize,
        tls: Option<&TlsTerm>,
    ) -> Option<Arc<ConnCtx>> {
        let ip = canonical_ip(peer.ip());
        Some(Arc::new(ConnCtx {
            trusted: listener.is_trusted(ip),
            hash_key: match ip {
                IpAddr::V4(v4) => rampart_balance::hash_key(&v4.octets()),
                IpAddr::V6(v6) => rampart_balance::hash_key(&v6.octets()),
            },
            peer,
            worker,
            activity: OnceLock::new(),
            listener: listener.clone(),
            https: tls.is_some(),
        }))
    }

    /// The client's address (IPv4-mapped IPv6 ones as IPv4), appended as text.
    pub(crate) fn push_peer_ip(&self, out: &mut Vec<u8>) {
        push_ip(out, canonical_ip(self.peer.ip()));
    }

    /// One RFC 7239 `Forwarded` element for this request: `for=<client>;proto=<scheme>`,
    /// and `;host=<Host>` when the request names one (IPv6 and any value that is not a
    /// token quoted, section 4 and 6).
    pub(crate) fn push_forwarded_element(&self, out: &mut Vec<u8>, host: Option<&[u8]>) {
        out.extend_from_slice(b"for=");
        match canonical_ip(self.peer.ip()) {
            ip @ IpAddr::V4(_) => push_ip(out, ip),
            ip @ IpAddr::V6(_) => {
                out.extend_from_slice(b"\"[");
                push_ip(out, ip);
                out.extend_from_slice(b"]\"");
            }
        }
        out.extend_from_slice(if self.https {
            b";proto=https"
        } else {
            b";proto=http"
        });
        if let Some(h) = host.map(<[u8]>::trim_ascii).filter(|h| !h.is_empty()) {
            out.extend_from_slice(b";host=");
            if h.iter().all(|&b| is_tchar(b)) {
                out.extend_from_slice(h);
            } else {
                out.push(b'"');
                for &b in h {
                    if b == b'"' || b == b'\\' {
                        out.push(b'\\');
                    }
                    out.push(b);
                }
                out.push(b'"');
            }
        }
    }

    pub(crate) fn peer_ip_value(&self) -> HeaderValue {
        let mut v = Vec::with_capacity(39);
        self.push_peer_ip(&mut v);
        HeaderValue::from_bytes(&v).unwrap_or(HeaderValue::from_static("unknown"))
    }

    /// The client a trusted proxy names in `X-Forwarded-For` (`fields`, in order).
    pub(crate) fn forwarded_client(&self, fields: &[&[u8]]) -> Option<IpAddr> {
        crate::firewall::forwarded::forwarded_client(fields, |ip| self.listener.is_trusted(ip))
    }

    /// `Strict-Transport-Security` for every response (TLS listeners with `hsts`).
    pub(crate) fn hsts(&self) -> Option<&HeaderValue> {
        if !self.https {
            return None;
        }
        self.listener.tls.as_ref()?.hsts.as_ref()
    }

    pub(crate) fn activity(&self) -> &Arc<Activity> {
        self.activity.get_or_init(Default::default)
    }
}

pub(crate) fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod ip_tests {
    use super::*;

    #[test]
    fn ip_text_matches_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.100.255",
            "203.0.113.9",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut v = Vec::new();
            push_ip(&mut v, ip);
            assert_eq!(String::from_utf8(v).unwrap(), ip.to_string());
        }
    }

    #[test]
    fn every_octet_in_every_place_matches_display() {
        for o in 0..=255u8 {
            for place in 0..4 {
                let mut octets = [1, 22, 133, 4];
                octets[place] = o;
                let ip = IpAddr::from(octets);
                let mut v = b"x".to_vec();
                push_ip(&mut v, ip);
                assert_eq!(v, format!("x{ip}").into_bytes());
            }
        }
    }
}
