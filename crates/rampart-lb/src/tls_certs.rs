//! A TLS listener's certificates and the choice among them at each handshake.
//!
//! Each certificate is chosen for host names: those given in the configuration, else the
//! DNS names of its subjectAltName. The client's SNI picks the certificates for its name
//! (an exact name first, then a `*.` wildcard one label deep); no SNI, or a name no
//! certificate is for, gets the *default* ones: the first certificate and every other for
//! the same names. Among those, the client's offered signature schemes choose: ECDSA when
//! the client can verify it (a cheaper handshake), else RSA, as HAProxy does with an RSA
//! and an ECDSA certificate side by side.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rampart_topology::lb::CertFiles;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{SignatureAlgorithm, SignatureScheme};

use crate::tls::{provider, TlsError};

/// One certificate chain and key, ready to present.
#[derive(Clone)]
pub(crate) struct Loaded {
    pub key: Arc<CertifiedKey>,
    /// Lower case; `*.` wildcards.
    pub names: Vec<String>,
    /// The leaf's notAfter, in seconds since the Unix epoch.
    pub not_after: Option<i64>,
    /// Its position in the listener's configured list (an optional one may be missing).
    pub source: usize,
    /// Its leaf and issuer's identity, for OCSP stapling.
    pub chain_id: crate::tls_ocsp::ChainId,
}

impl Loaded {
    fn ecdsa(&self) -> bool {
        self.key.key.algorithm() == SignatureAlgorithm::ECDSA
    }
}

/// Which certificates serve which names: indices into the listener's list. Pure.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct NameIndex {
    by_name: HashMap<String, Vec<usize>>,
    default: Vec<usize>,
}

impl NameIndex {
    /// `names[i]`: the names of certificate `i`; the first is the default.
    pub fn new(names: &[Vec<String>]) -> NameIndex {
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, ns) in names.iter().enumerate() {
            for n in ns {
                let e = by_name.entry(n.to_ascii_lowercase()).or_default();
                if !e.contains(&i) {
                    e.push(i);
                }
            }
        }
        let same = |a: &Vec<String>, b: &Vec<String>| {
            let mut a = a.clone();
            let mut b = b.clone();
            a.sort();
            b.sort();
            a == b
        };
        let default = match names.first() {
            None => Vec::new(),
            Some(first) => (0..names.len())
                .filter(|&i| same(&names[i], first))
                .collect(),
        };
        NameIndex { by_name, default }
    }

    /// The certificates for a client's SNI (`None`: it sent none).
    pub fn candidates(&self, sni: Option<&str>) -> &[usize] {
        let Some(name) = sni else {
            return &self.default;
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(c) = self.by_name.get(&name) {
            return c;
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(c) = self.by_name.get(&format!("*.{parent}")) {
                return c;
            }
        }
        &self.default
    }
}

/// A listener's certificates as they are served now.
pub(crate) struct CertSet {
    pub certs: Vec<Loaded>,
    index: NameIndex,
}

impl CertSet {
    pub fn new(certs: Vec<Loaded>) -> CertSet {
        let names: Vec<Vec<String>> = certs.iter().map(|c| c.names.clone()).collect();
        CertSet {
            index: NameIndex::new(&names),
            certs,
        }
    }

    /// The certificate for a client's hello: by name, then by the signature schemes it
    /// offers (ECDSA preferred); when the client can verify none, the first candidate (the
    /// handshake then fails with the client's own error).
    pub fn pick(
        &self,
        sni: Option<&str>,
        schemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let cands = self.index.candidates(sni);
        let ordered = cands
            .iter()
            .filter(|&&i| self.certs[i].ecdsa())
            .chain(cands.iter().filter(|&&i| !self.certs[i].ecdsa()));
        let mut first = None;
        for &i in ordered {
            let c = &self.certs[i];
            first.get_or_insert(i);
            if c.key.key.choose_scheme(schemes).is_some() {
                return Some(c.key.clone());
            }
        }
        first.map(|i| self.certs[i].key.clone())
    }
}

/// Read and check a certificate chain and its key; the names it serves.
pub(crate) fn load(listener: &str, files: &CertFiles, source: usize) -> Result<Loaded, TlsError> {
    let read = |what: &'static str, path: &Path| {
        std::fs::read(path).map_err(|err| TlsError::Read {
            listener: listener.to_string(),
            what,
            path: path.to_path_buf(),
            err,
        })
    };
    let invalid = |what: &'static str, path: &Path, reason: String| TlsError::Invalid {
        listener: listener.to_string(),
        what,
        path: path.to_path_buf(),
        reason,
    };
    let cert_pem = read("cert", &files.cert)?;
    let key_pem = read("key", &files.key)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            invalid(
                "cert",
                &files.cert,
                format!("not a PEM certificate chain: {e}"),
            )
        })?;
    let Some(leaf) = certs.first() else {
        return Err(invalid(
            "cert",
            &files.cert,
            "holds no CERTIFICATE block".into(),
        ));
    };
    let names = if files.names.is_empty() {
        let ee = webpki::EndEntityCert::try_from(leaf).map_err(|e| {
            invalid(
                "cert",
                &files.cert,
                format!("the first certificate cannot be parsed: {e}"),
            )
        })?;
        ee.valid_dns_names()
            .map(|n| n.to_ascii_lowercase())
            .collect()
    } else {
        files.names.clone()
    };
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| invalid("key", &files.key, format!("no PEM private key: {e}")))?;
    let key = CertifiedKey::from_der(certs, key, &provider()).map_err(|e| {
        invalid(
            "key",
            &files.key,
            format!(
                "does not fit the certificate in {}: {e}",
                files.cert.display()
            ),
        )
    })?;
    let not_after = key.cert.first().and_then(|c| not_after(c.as_ref()));
    let chain_id = crate::tls_ocsp::chain_id(&key.cert);
    Ok(Loaded {
        key: Arc::new(key),
        names,
        not_after,
        source,
        chain_id,
    })
}

/// One DER element: (tag, contents, what follows).
pub(crate) fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&l, b) = b.split_first()?;
    let (len, b) = if l < 0x80 {
        (usize::from(l), b)
    } else {
        let n = usize::from(l & 0x7f);
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let len = b[..n]
            .iter()
            .fold(0usize, |a, &x| (a << 8) | usize::from(x));
        (len, &b[n..])
    };
    if b.len() < len {
        return None;
    }
    Some((tag, &b[..len], &b[len..]))
}

/// Days from 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// An X.509 time (UTCTime or GeneralizedTime, in UTC) in seconds since the epoch.
pub(crate) fn x509_time(tag: u8, v: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(v).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 if s.len() == 12 => {
            let yy: i64 = s.get(..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, s.get(2..)?)
        }
        0x18 if s.len() == 14 => (s.get(..4)?.parse().ok()?, s.get(4..)?),
        _ => return None,
    };
    let n = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (mo, d, h, mi, se) = (n(0)?, n(2)?, n(4)?, n(6)?, n(8)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    Some(days_from_civil(year, mo, d) * 86_400 + h * 3600 + mi * 60 + se)
}

/// A certificate's notAfter (seconds since the epoch), read from its DER.
pub(crate) fn not_after(der: &[u8]) -> Option<i64> {
    validity(der).map(|v| v.1)
}

/// A certificate's (notBefore, notAfter) in seconds since the epoch, read from its DER.
pub(crate) fn validity(der: &[u8]) -> Option<(i64, i64)> {
    let (0x30, cert, _) = tlv(der)? else {
        return None;
    };
    let (0x30, tbs, _) = tlv(cert)? else {
        return None;
    };
    let mut rest = tbs;
    // [0] version (absent in v1), serial, signature algorithm, issuer, then validity.
    let (tag, _, r) = tlv(rest)?;
    if tag == 0xa0 {
        rest = r;
    }
    for _ in 0..3 {
        rest = tlv(rest)?.2;
    }
    let (0x30, validity, _) = tlv(rest)? else {
        return None;
    };
    let (tag, v, after) = tlv(validity)?;
    let before = x509_time(tag, v)?;
    let (tag, v, _) = tlv(after)?;
    Some((before, x509_time(tag, v)?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn v(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_default() {
        let idx = NameIndex::new(&[
            v(&["site.example", "www.site.example"]),
            v(&["www.site.example", "site.example"]),
            v(&["other.example"]),
            v(&["*.apps.example", "other.example"]),
        ]);
        assert_eq!(idx.candidates(None), &[0, 1]);
        assert_eq!(idx.candidates(Some("Site.Example.")), &[0, 1]);
        assert_eq!(idx.candidates(Some("other.example")), &[2, 3]);
        assert_eq!(idx.candidates(Some("a.apps.example")), &[3]);
        // A wildcard covers one label only.
        assert_eq!(idx.candidates(Some("a.b.apps.example")), &[0, 1]);
        assert_eq!(idx.candidates(Some("apps.example")), &[0, 1]);
        assert_eq!(idx.candidates(Some("unknown.test")), &[0, 1]);
    }

    #[test]
    fn x509_times_and_civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(x509_time(0x17, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(x509_time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(x509_time(0x18, b"20261205013000Z"), Some(1_796_434_200));
        assert_eq!(x509_time(0x17, b"261305000000Z"), None);
        assert_eq!(x509_time(0x18, b"2026"), None);
    }

    #[test]
    fn not_after_of_an_openssl_certificate() {
        let dir = rampart_testkit::TempDir::new().unwrap();
        let out = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args([
                "-nodes", "-days", "3", "-subj", "/CN=x", "-outform", "DER", "-keyout",
            ])
            .arg(dir.path().join("k.pem"))
            .arg("-out")
            .arg(dir.path().join("c.der"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let der = std::fs::read(dir.path().join("c.der")).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let t = not_after(&der).unwrap();
        assert!((t - (now + 3 * 86_400)).abs() < 120, "{t} vs {now}");
        assert_eq!(not_after(&der[..der.len() / 2]), None);
        assert_eq!(not_after(b"\x30\x03\x02\x01\x00"), None);
    }

    proptest::proptest! {
        #[test]
        fn not_after_never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = not_after(&b);
        }
    }

    #[test]
    fn a_lone_certificate_is_the_default_for_every_name() {
        let idx = NameIndex::new(&[v(&[])]);
        assert_eq!(idx.candidates(Some("x.example")), &[0]);
        assert_eq!(idx.candidates(None), &[0]);
        assert_eq!(NameIndex::new(&[]).candidates(None), &[] as &[usize]);
    }
}
