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
pub(crate) fn load(listener: &str, files: &CertFiles) -> Result<Loaded, TlsError> {
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
    Ok(Loaded {
        key: Arc::new(key),
        names,
    })
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
    fn a_lone_certificate_is_the_default_for_every_name() {
        let idx = NameIndex::new(&[v(&[])]);
        assert_eq!(idx.candidates(Some("x.example")), &[0]);
        assert_eq!(idx.candidates(None), &[0]);
        assert_eq!(NameIndex::new(&[]).candidates(None), &[] as &[usize]);
    }
}
