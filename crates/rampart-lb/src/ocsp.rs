//! OCSP (RFC 6960) for stapling, pure: the responder a certificate names (its Authority
//! Information Access extension), the request for it (a `CertID` with SHA-1 hashes of its
//! issuer's name and key, DER written with [`crate::acme::der`]), the minimal check of an
//! answer before it is stapled, and when to fetch the next one.
//!
//! The check: the response is `successful` and `basic`, signed by the certificate's issuer
//! or by a responder certificate the issuer signed for OCSP signing (extended key usage
//! `OCSPSigning`, valid now; RFC 6960 4.2.2.2), one of its answers is for this
//! certificate (serial, issuer name and key hashes), its status is `good` or `revoked`
//! (`unknown` is an error), `thisUpdate` is not in the future (5 minutes of clock skew
//! allowed) and `nextUpdate`, when present, has not passed. Answers come over plain
//! HTTP: the signature check keeps one altered on the way from being stapled (clients
//! would refuse the certificate with it). Signatures are verified with webpki's
//! algorithms (ECDSA P-256/P-384, RSA PKCS#1 and PSS, Ed25519).

use ring::digest::{digest, SHA1_FOR_LEGACY_USE_ONLY, SHA256};

use crate::acme::der::{octets, oid, seq, tlv};
use crate::tls_certs::{tlv as read, x509_time};

/// Clock skew allowed between the responder and this host.
const SKEW: i64 = 300;
/// A response without `nextUpdate` ("newer information is always available") is kept and
/// refreshed as if it had this lifetime.
pub(crate) const NO_NEXT_UPDATE: i64 = 3600;
/// Never fetch again sooner than this after a success.
const MIN_REFRESH: i64 = 10;
/// After a failed fetch the next try waits this, doubled after each further failure...
const BACKOFF_FIRST: i64 = 10;
/// ... up to this.
const BACKOFF_MAX: i64 = 600;

const SHA1: &[u64] = &[1, 3, 14, 3, 2, 26];
/// Content octets of the OIDs read here.
const OID_SHA1: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];
const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
const OID_AIA: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x01];
const OID_AD_OCSP: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01];
const OID_OCSP_BASIC: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01];
const OID_EXT_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x25];
const OID_KP_OCSP_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x09];

/// Why a response is not stapled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OcspError {
    #[error("the responder answered {0}")]
    Status(&'static str),
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    #[error("the response is not signed by the certificate's issuer or a responder it authorized")]
    Signature,
    #[error("the response is not about this certificate")]
    OtherCert,
    #[error("the responder does not know this certificate (status unknown)")]
    Unknown,
    #[error("the response's thisUpdate ({0}) is in the future")]
    Future(i64),
    #[error("the response expired (nextUpdate {0})")]
    Expired(i64),
}

/// The certificate status an answer gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CertStatus {
    Good,
    /// Revoked at this time (seconds since the epoch; 0 if unreadable).
    Revoked(i64),
}

/// An answer that passed the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checked {
    pub status: CertStatus,
    pub this_update: i64,
    pub next_update: Option<i64>,
}

impl Checked {
    /// Until when it may be stapled: its `nextUpdate`, or [`NO_NEXT_UPDATE`] after it was
    /// fetched (`now`) when it has none.
    pub fn valid_until(&self, now: i64) -> i64 {
        self.next_update.unwrap_or(now + NO_NEXT_UPDATE)
    }

    /// When to fetch the next one: halfway between `thisUpdate` and [`Self::valid_until`];
    /// when that has passed already (a responder's cached answer), halfway from now; never
    /// sooner than [`MIN_REFRESH`].
    pub fn refresh_at(&self, now: i64) -> i64 {
        let until = self.valid_until(now);
        let start = self.this_update.min(now);
        let mut at = start + (until - start) / 2;
        if at <= now {
            at = now + (until - now) / 2;
        }
        at.max(now + MIN_REFRESH)
    }
}

/// The wait (seconds) before try number `failures + 1` after `failures` failed ones.
pub(crate) fn backoff(failures: u32) -> i64 {
    BACKOFF_FIRST
        .saturating_mul(1i64 << failures.saturating_sub(1).min(20))
        .min(BACKOFF_MAX)
}

/// One DER element.
struct Elem<'a> {
    tag: u8,
    content: &'a [u8],
    /// The element itself (tag, length and contents).
    whole: &'a [u8],
    /// What follows it.
    rest: &'a [u8],
}

fn elem(b: &[u8]) -> Option<Elem<'_>> {
    let (tag, content, rest) = read(b)?;
    Some(Elem {
        tag,
        content,
        whole: &b[..b.len() - rest.len()],
        rest,
    })
}

/// The whole element (a SEQUENCE, such as a Name) at the start of `b`, and what follows.
fn whole_seq(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let e = elem(b)?;
    (e.tag == 0x30).then_some((e.whole, e.rest))
}

/// The contents of an element that must have tag `want`, and what follows.
fn expect(b: &[u8], want: u8) -> Option<(&[u8], &[u8])> {
    let (tag, content, rest) = read(b)?;
    (tag == want).then_some((content, rest))
}

/// What OCSP needs of a certificate's TBSCertificate.
struct Tbs<'a> {
    /// The serialNumber INTEGER's contents.
    serial: &'a [u8],
    /// The issuer Name, whole element.
    issuer: &'a [u8],
    /// The subject Name, whole element.
    subject: &'a [u8],
    /// notBefore and notAfter, seconds since the epoch.
    validity: Option<(i64, i64)>,
    /// The public key's AlgorithmIdentifier contents.
    key_alg: &'a [u8],
    /// The subjectPublicKey BIT STRING's contents, without the unused-bits octet.
    key: &'a [u8],
    /// The extensions' SEQUENCE contents, if any.
    extensions: Option<&'a [u8]>,
}

fn tbs(cert: &[u8]) -> Option<Tbs<'_>> {
    let (cert, _) = expect(cert, 0x30)?;
    let (mut b, _) = expect(cert, 0x30)?;
    if let Some((0xa0, _, rest)) = read(b) {
        b = rest;
    }
    let (serial, b) = expect(b, 0x02)?;
    let (_, b) = expect(b, 0x30)?; // signature algorithm
    let (issuer, b) = whole_seq(b)?;
    let (validity, b) = expect(b, 0x30)?;
    let validity = (|| {
        let (t, v, rest) = read(validity)?;
        let not_before = x509_time(t, v)?;
        let (t, v, _) = read(rest)?;
        Some((not_before, x509_time(t, v)?))
    })();
    let (subject, b) = whole_seq(b)?;
    let (spki, mut b) = expect(b, 0x30)?;
    let (key_alg, spki) = expect(spki, 0x30)?;
    let (bits, _) = expect(spki, 0x03)?;
    let key = bits.get(1..)?;
    let mut extensions = None;
    while let Some((tag, content, rest)) = read(b) {
        if tag == 0xa3 {
            extensions = Some(expect(content, 0x30)?.0);
        }
        b = rest;
    }
    Some(Tbs {
        serial,
        issuer,
        subject,
        validity,
        key_alg,
        key,
        extensions,
    })
}

/// The value (OCTET STRING contents) of a certificate's extension `id`, from the
/// extensions' SEQUENCE contents.
fn extension<'a>(mut exts: &'a [u8], id: &[u8]) -> Option<&'a [u8]> {
    while let Some((ext, rest)) = expect(exts, 0x30) {
        exts = rest;
        let (oid, mut e) = expect(ext, 0x06)?;
        if oid != id {
            continue;
        }
        if let Some((0x01, _, r)) = read(e) {
            e = r; // critical
        }
        return Some(expect(e, 0x04)?.0);
    }
    None
}

/// Whether `sig` over `msg` verifies with the key (`key_alg`: its AlgorithmIdentifier
/// contents, `key`: its bits) by the signature algorithm `sig_alg` (AlgorithmIdentifier
/// contents).
fn verify(sig_alg: &[u8], key_alg: &[u8], key: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    webpki::ALL_VERIFICATION_ALGS.iter().any(|a| {
        a.signature_alg_id().as_ref() == sig_alg
            && a.public_key_alg_id().as_ref() == key_alg
            && a.verify_signature(key, msg, sig).is_ok()
    })
}

/// A signed structure: a Certificate or a BasicOCSPResponse.
struct Signed<'a> {
    /// The signed element, whole.
    data: &'a [u8],
    /// The signatureAlgorithm's contents.
    alg: &'a [u8],
    /// The signature's bits.
    sig: &'a [u8],
    /// What follows the signature.
    rest: &'a [u8],
}

/// A signed structure from its SEQUENCE contents.
fn signed(b: &[u8]) -> Option<Signed<'_>> {
    let (data, b) = whole_seq(b)?;
    let (alg, b) = expect(b, 0x30)?;
    let (bits, rest) = expect(b, 0x03)?;
    let (&unused, sig) = bits.split_first()?;
    (unused == 0).then_some(Signed {
        data,
        alg,
        sig,
        rest,
    })
}

/// The first OCSP responder URL of a certificate's Authority Information Access.
pub(crate) fn responder_url(cert: &[u8]) -> Option<String> {
    let value = extension(tbs(cert)?.extensions?, OID_AIA)?;
    let (mut ads, _) = expect(value, 0x30)?;
    while let Some((ad, rest)) = expect(ads, 0x30) {
        ads = rest;
        let (method, loc) = expect(ad, 0x06)?;
        if method != OID_AD_OCSP {
            continue;
        }
        // uniformResourceIdentifier [6] IA5String
        if let Some((0x86, uri, _)) = read(loc) {
            if let Ok(s) = std::str::from_utf8(uri) {
                return Some(s.to_string());
            }
        }
    }
    None
}

/// Why a certificate's OCSP request cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CertIdError {
    #[error("the certificate cannot be read")]
    Unreadable,
    #[error("its chain holds no issuer certificate (the next one must be the issuer)")]
    NoIssuer,
}

/// Which certificate an OCSP request and answer are about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CertId {
    /// The serialNumber INTEGER's contents.
    serial: Vec<u8>,
    /// The leaf's issuer Name (DER) and its issuer's public key bits and algorithm
    /// (AlgorithmIdentifier contents).
    issuer_name: Vec<u8>,
    issuer_key: Vec<u8>,
    issuer_key_alg: Vec<u8>,
}

impl CertId {
    /// For `leaf`, issued by `issuer` (the next certificate of its chain, if any).
    pub fn new(leaf: &[u8], issuer: Option<&[u8]>) -> Result<CertId, CertIdError> {
        let l = tbs(leaf).ok_or(CertIdError::Unreadable)?;
        let i = issuer.and_then(tbs).ok_or(CertIdError::NoIssuer)?;
        if i.subject != l.issuer {
            return Err(CertIdError::NoIssuer);
        }
        Ok(CertId {
            serial: l.serial.to_vec(),
            issuer_name: l.issuer.to_vec(),
            issuer_key: i.key.to_vec(),
            issuer_key_alg: i.key_alg.to_vec(),
        })
    }

    /// The leaf's serial number in hex, for logs.
    pub fn serial_hex(&self) -> String {
        self.serial.iter().map(|b| format!("{b:02X}")).collect()
    }

    /// An `OCSPRequest` for this certificate alone (SHA-1 hashes, no nonce: responders
    /// that pre-sign their answers ignore it), DER.
    pub fn request(&self) -> Vec<u8> {
        let sha1 = |b: &[u8]| digest(&SHA1_FOR_LEGACY_USE_ONLY, b).as_ref().to_vec();
        let cert_id = seq(&[
            &seq(&[&oid(SHA1), &[0x05, 0x00]]),
            &octets(&sha1(&self.issuer_name)),
            &octets(&sha1(&self.issuer_key)),
            &tlv(0x02, &self.serial),
        ]);
        // OCSPRequest { TBSRequest { requestList { Request { reqCert } } } }
        seq(&[&seq(&[&seq(&[&seq(&[&cert_id])])])])
    }

    /// Whether a response's `CertID` (contents) names this certificate.
    fn matches(&self, id: &[u8]) -> Option<bool> {
        let (alg, b) = expect(id, 0x30)?;
        let (alg, _) = expect(alg, 0x06)?;
        let (name_hash, b) = expect(b, 0x04)?;
        let (key_hash, b) = expect(b, 0x04)?;
        let (serial, _) = expect(b, 0x02)?;
        let h = match alg {
            OID_SHA1 => &SHA1_FOR_LEGACY_USE_ONLY,
            OID_SHA256 => &SHA256,
            _ => return Some(false),
        };
        Some(
            serial == self.serial.as_slice()
                && name_hash == digest(h, &self.issuer_name).as_ref()
                && key_hash == digest(h, &self.issuer_key).as_ref(),
        )
    }

    /// Whether a response's `tbsResponseData` (`data`) is signed (`sig_alg`, `sig`) by the
    /// issuer, or by one of the response's `certs` (SEQUENCE contents) that the issuer
    /// signed for OCSP signing and that is valid at `now`.
    fn signed_by_issuer(
        &self,
        data: &[u8],
        sig_alg: &[u8],
        sig: &[u8],
        mut certs: &[u8],
        now: i64,
    ) -> bool {
        if verify(sig_alg, &self.issuer_key_alg, &self.issuer_key, data, sig) {
            return true;
        }
        while let Some(Elem {
            tag: 0x30,
            content,
            whole,
            rest,
        }) = elem(certs)
        {
            certs = rest;
            let delegated = (|| {
                let c = signed(content)?;
                let t = tbs(whole)?;
                let (not_before, not_after) = t.validity?;
                let eku = extension(t.extensions?, OID_EXT_KEY_USAGE)?;
                let (mut purposes, _) = expect(eku, 0x30)?;
                let mut ocsp_signing = false;
                while let Some((p, rest)) = expect(purposes, 0x06) {
                    purposes = rest;
                    ocsp_signing |= p == OID_KP_OCSP_SIGNING;
                }
                let ok = t.issuer == self.issuer_name.as_slice()
                    && ocsp_signing
                    && not_before - SKEW <= now
                    && now <= not_after
                    && verify(c.alg, &self.issuer_key_alg, &self.issuer_key, c.data, c.sig)
                    && verify(sig_alg, t.key_alg, t.key, data, sig);
                Some(ok)
            })();
            if delegated == Some(true) {
                return true;
            }
        }
        false
    }

    /// Check a DER `OCSPResponse` at `now` (seconds since the epoch).
    pub fn check(&self, der: &[u8], now: i64) -> Result<Checked, OcspError> {
        let bad = OcspError::Malformed;
        let (resp, _) = expect(der, 0x30).ok_or(bad("not a SEQUENCE"))?;
        let (status, rest) = expect(resp, 0x0a).ok_or(bad("no responseStatus"))?;
        match status {
            [0] => {}
            [1] => return Err(OcspError::Status("malformedRequest")),
            [2] => return Err(OcspError::Status("internalError")),
            [3] => return Err(OcspError::Status("tryLater")),
            [5] => return Err(OcspError::Status("sigRequired")),
            [6] => return Err(OcspError::Status("unauthorized")),
            _ => return Err(bad("unknown responseStatus")),
        }
        let (bytes, _) = expect(rest, 0xa0).ok_or(bad("no responseBytes"))?;
        let (bytes, _) = expect(bytes, 0x30).ok_or(bad("responseBytes"))?;
        let (kind, b) = expect(bytes, 0x06).ok_or(bad("no responseType"))?;
        if kind != OID_OCSP_BASIC {
            return Err(bad("not a basic OCSP response"));
        }
        let (basic, _) = expect(b, 0x04).ok_or(bad("no response"))?;
        let (basic, _) = expect(basic, 0x30).ok_or(bad("BasicOCSPResponse"))?;
        let s = signed(basic).ok_or(bad("no signature"))?;
        let certs = match read(s.rest) {
            Some((0xa0, certs, _)) => expect(certs, 0x30).ok_or(bad("certs"))?.0,
            _ => &[],
        };
        if !self.signed_by_issuer(s.data, s.alg, s.sig, certs, now) {
            return Err(OcspError::Signature);
        }
        let (data, _) = expect(s.data, 0x30).ok_or(bad("no tbsResponseData"))?;
        let mut b = data;
        if let Some((0xa0, _, rest)) = read(b) {
            b = rest; // version
        }
        let (tag, _, b) = read(b).ok_or(bad("no responderID"))?;
        if tag != 0xa1 && tag != 0xa2 {
            return Err(bad("responderID"));
        }
        let (_, b) = expect(b, 0x18).ok_or(bad("no producedAt"))?;
        let (mut singles, _) = expect(b, 0x30).ok_or(bad("no responses"))?;
        while let Some((single, rest)) = expect(singles, 0x30) {
            singles = rest;
            let (id, b) = expect(single, 0x30).ok_or(bad("no certID"))?;
            if !self.matches(id).ok_or(bad("certID"))? {
                continue;
            }
            let (tag, info, b) = read(b).ok_or(bad("no certStatus"))?;
            let status = match tag {
                0x80 => CertStatus::Good,
                0xa1 => {
                    CertStatus::Revoked(read(info).and_then(|(t, v, _)| gtime(t, v)).unwrap_or(0))
                }
                0x82 => return Err(OcspError::Unknown),
                _ => return Err(bad("certStatus")),
            };
            let (t, v, b) = read(b).ok_or(bad("no thisUpdate"))?;
            let this_update = gtime(t, v).ok_or(bad("thisUpdate"))?;
            let next_update = match read(b) {
                Some((0xa0, n, _)) => {
                    let (t, v, _) = read(n).ok_or(bad("nextUpdate"))?;
                    Some(gtime(t, v).ok_or(bad("nextUpdate"))?)
                }
                _ => None,
            };
            if this_update > now + SKEW {
                return Err(OcspError::Future(this_update));
            }
            if let Some(n) = next_update {
                if n <= now || n < this_update {
                    return Err(OcspError::Expired(n));
                }
            }
            return Ok(Checked {
                status,
                this_update,
                next_update,
            });
        }
        Err(OcspError::OtherCert)
    }
}

/// A GeneralizedTime (fractions of a second allowed, dropped) in seconds since the epoch.
fn gtime(tag: u8, v: &[u8]) -> Option<i64> {
    if tag != 0x18 {
        return None;
    }
    match v.iter().position(|&c| c == b'.') {
        Some(dot) if v.last() == Some(&b'Z') => {
            let mut whole = v[..dot].to_vec();
            whole.push(b'Z');
            x509_time(0x18, &whole)
        }
        _ => x509_time(0x18, v),
    }
}

#[cfg(test)]
#[path = "ocsp_tests.rs"]
mod tests;
