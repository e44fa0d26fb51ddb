//! The bytes ACME needs, built by hand on ring's ECDSA P-256 (no new dependency): JWS
//! (ES256, RFC 7515/7518) and JWK thumbprints (RFC 7638), the certificate signing request
//! (PKCS#10) with the names as subjectAltName, and the self-signed TLS-ALPN-01 certificate
//! (RFC 8737) with its `acmeIdentifier` extension. A small DER writer does the encoding.
//! Pure, apart from the random numbers of signing and key generation.

use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P256_SHA256_FIXED_SIGNING,
};

/// base64url without padding (RFC 4648 section 5), as JOSE wants it.
pub fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// PEM armour of DER bytes.
pub fn pem(label: &str, der: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

// ---------------------------------------------------------------------------------
// DER (also used by the OCSP requests of `crate::ocsp`)

pub(crate) fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = body.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes = n.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(body);
    out
}

pub(crate) fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

pub(crate) fn oid(arcs: &[u64]) -> Vec<u8> {
    let mut body = vec![(arcs[0] * 40 + arcs[1]) as u8];
    for &a in &arcs[2..] {
        let mut groups = vec![(a & 0x7f) as u8];
        let mut v = a >> 7;
        while v > 0 {
            groups.push(0x80 | (v & 0x7f) as u8);
            v >>= 7;
        }
        groups.reverse();
        body.extend(groups);
    }
    tlv(0x06, &body)
}

fn bit_string(b: &[u8]) -> Vec<u8> {
    let mut body = vec![0u8];
    body.extend_from_slice(b);
    tlv(0x03, &body)
}

pub(crate) fn octets(b: &[u8]) -> Vec<u8> {
    tlv(0x04, b)
}

/// A positive INTEGER from big-endian magnitude bytes.
pub(crate) fn uint(b: &[u8]) -> Vec<u8> {
    let skip = b.iter().take_while(|x| **x == 0).count().min(b.len() - 1);
    let mut body = Vec::new();
    if b[skip] & 0x80 != 0 {
        body.push(0);
    }
    body.extend_from_slice(&b[skip..]);
    tlv(0x02, &body)
}

const EC_PUBLIC_KEY: &[u64] = &[1, 2, 840, 10045, 2, 1];
const PRIME256V1: &[u64] = &[1, 2, 840, 10045, 3, 1, 7];
const ECDSA_SHA256: &[u64] = &[1, 2, 840, 10045, 4, 3, 2];
const COMMON_NAME: &[u64] = &[2, 5, 4, 3];
const SUBJECT_ALT_NAME: &[u64] = &[2, 5, 29, 17];
const EXTENSION_REQUEST: &[u64] = &[1, 2, 840, 113_549, 1, 9, 14];
const ACME_IDENTIFIER: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 1, 31];

fn spki(public: &[u8]) -> Vec<u8> {
    seq(&[
        &seq(&[&oid(EC_PUBLIC_KEY), &oid(PRIME256V1)]),
        &bit_string(public),
    ])
}

fn name_cn(cn: &str) -> Vec<u8> {
    seq(&[&tlv(
        0x31,
        &seq(&[&oid(COMMON_NAME), &tlv(0x0c, cn.as_bytes())]),
    )])
}

fn san(names: &[String]) -> Vec<u8> {
    let general: Vec<u8> = names.iter().flat_map(|n| tlv(0x82, n.as_bytes())).collect();
    seq(&[&oid(SUBJECT_ALT_NAME), &octets(&tlv(0x30, &general))])
}

// ---------------------------------------------------------------------------------
// Keys and signatures

/// A new P-256 key, PKCS#8 DER.
pub fn new_key(rng: &SystemRandom) -> Result<Vec<u8>, String> {
    EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, rng)
        .map(|d| d.as_ref().to_vec())
        .map_err(|_| "cannot generate a P-256 key".to_string())
}

/// The key of a PEM `PRIVATE KEY` (PKCS#8) block.
pub fn pkcs8_from_pem(pem_text: &[u8]) -> Result<Vec<u8>, String> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(pem_text)
        .map(|k| k.secret_pkcs8_der().to_vec())
        .map_err(|e| format!("no PKCS#8 private key: {e}"))
}

/// The ACME account's key: signs JWS (ES256, fixed-width `r || s`).
pub struct AccountKey {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl AccountKey {
    pub fn from_pkcs8(der: &[u8]) -> Result<AccountKey, String> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|e| format!("not a P-256 PKCS#8 key: {e}"))?;
        Ok(AccountKey { pair, rng })
    }

    /// The public key as a JWK, members in the order RFC 7638 hashes them.
    pub fn jwk(&self) -> String {
        let p = self.pair.public_key().as_ref();
        format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            b64url(&p[1..33]),
            b64url(&p[33..65])
        )
    }

    /// `base64url(SHA-256(JWK))` (RFC 7638): the second half of a key authorization.
    pub fn thumbprint(&self) -> String {
        b64url(ring::digest::digest(&ring::digest::SHA256, self.jwk().as_bytes()).as_ref())
    }

    /// `token.thumbprint` (RFC 8555 section 8.1).
    pub fn key_authorization(&self, token: &str) -> String {
        format!("{token}.{}", self.thumbprint())
    }

    /// A flattened JWS (RFC 8555 section 6.2): `kid` when the account is known, else the
    /// JWK; `payload` `None` for POST-as-GET.
    pub fn jws(
        &self,
        url: &str,
        nonce: &str,
        kid: Option<&str>,
        payload: Option<&str>,
    ) -> Result<String, String> {
        let key = match kid {
            Some(k) => format!(r#""kid":{}"#, json_str(k)),
            None => format!(r#""jwk":{}"#, self.jwk()),
        };
        let protected = format!(
            r#"{{"alg":"ES256",{key},"nonce":{},"url":{}}}"#,
            json_str(nonce),
            json_str(url)
        );
        let protected = b64url(protected.as_bytes());
        let payload = payload.map(|p| b64url(p.as_bytes())).unwrap_or_default();
        let sig = self
            .pair
            .sign(&self.rng, format!("{protected}.{payload}").as_bytes())
            .map_err(|_| "cannot sign".to_string())?;
        Ok(format!(
            r#"{{"protected":"{protected}","payload":"{payload}","signature":"{}"}}"#,
            b64url(sig.as_ref())
        ))
    }
}

fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// A key for X.509 signatures (ASN.1 DER ECDSA).
fn x509_signer(pkcs8: &[u8]) -> Result<(EcdsaKeyPair, SystemRandom), String> {
    let rng = SystemRandom::new();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8, &rng)
        .map_err(|e| format!("not a P-256 PKCS#8 key: {e}"))?;
    Ok((pair, rng))
}

/// A PKCS#10 request for `names` (the first as commonName, all as subjectAltName), DER.
pub fn csr(pkcs8: &[u8], names: &[String]) -> Result<Vec<u8>, String> {
    let (pair, rng) = x509_signer(pkcs8)?;
    let first = names.first().ok_or("no name to certify")?;
    let ext_req = seq(&[&oid(EXTENSION_REQUEST), &tlv(0x31, &seq(&[&san(names)]))]);
    let info = seq(&[
        &uint(&[0]),
        &name_cn(first),
        &spki(pair.public_key().as_ref()),
        &tlv(0xa0, &ext_req),
    ]);
    let sig = pair
        .sign(&rng, &info)
        .map_err(|_| "cannot sign the request".to_string())?;
    Ok(seq(&[
        &info,
        &seq(&[&oid(ECDSA_SHA256)]),
        &bit_string(sig.as_ref()),
    ]))
}

/// `YYMMDDHHMMSSZ` of seconds since the epoch (UTCTime: years 1950 to 2049).
fn utc_time(t: i64) -> Vec<u8> {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let s = format!(
        "{:02}{:02}{:02}{:02}{:02}{:02}Z",
        y % 100,
        m,
        d,
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    );
    tlv(0x17, s.as_bytes())
}

/// The self-signed certificate of a TLS-ALPN-01 challenge (RFC 8737 section 3) for
/// `name`, signed by `pkcs8`, valid around `now` (seconds since the epoch): DER.
pub fn alpn_challenge_cert(
    pkcs8: &[u8],
    name: &str,
    key_authorization: &str,
    now: i64,
) -> Result<Vec<u8>, String> {
    let (pair, rng) = x509_signer(pkcs8)?;
    let digest = ring::digest::digest(&ring::digest::SHA256, key_authorization.as_bytes());
    let acme_id = seq(&[
        &oid(ACME_IDENTIFIER),
        &tlv(0x01, &[0xff]),
        &octets(&octets(digest.as_ref())),
    ]);
    let mut serial = [0u8; 16];
    ring::rand::SecureRandom::fill(&rng, &mut serial)
        .map_err(|_| "no random serial".to_string())?;
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    let alg = seq(&[&oid(ECDSA_SHA256)]);
    let subject = name_cn(name);
    let tbs = seq(&[
        &tlv(0xa0, &uint(&[2])),
        &uint(&serial),
        &alg,
        &subject,
        &seq(&[&utc_time(now - 86_400), &utc_time(now + 7 * 86_400)]),
        &subject,
        &spki(pair.public_key().as_ref()),
        &tlv(0xa3, &seq(&[&san(&[name.to_string()]), &acme_id])),
    ]);
    let sig = pair
        .sign(&rng, &tbs)
        .map_err(|_| "cannot sign the challenge certificate".to_string())?;
    Ok(seq(&[&tbs, &alg, &bit_string(sig.as_ref())]))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn base64url_and_pem() {
        assert_eq!(b64url(b""), "");
        assert_eq!(b64url(b"f"), "Zg");
        assert_eq!(b64url(b"fo"), "Zm8");
        assert_eq!(b64url(b"foo"), "Zm9v");
        assert_eq!(b64url(&[0xfb, 0xff]), "-_8");
        assert_eq!(
            pem("X", b"fo"),
            "-----BEGIN X-----\nZm8=\n-----END X-----\n"
        );
    }

    #[test]
    fn der_lengths_oids_and_integers() {
        assert_eq!(oid(PRIME256V1), b"\x06\x08\x2a\x86\x48\xce\x3d\x03\x01\x07");
        assert_eq!(tlv(0x04, &[0; 200])[..3], [0x04, 0x81, 200]);
        assert_eq!(tlv(0x04, &[0; 300])[..4], [0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(uint(&[0]), [0x02, 0x01, 0x00]);
        assert_eq!(uint(&[0x00, 0x80]), [0x02, 0x02, 0x00, 0x80]);
        assert_eq!(utc_time(0), tlv(0x17, b"700101000000Z"));
        assert_eq!(utc_time(1_796_434_200), tlv(0x17, b"261205013000Z"));
    }

    /// openssl parses what is built here and checks its signatures.
    #[test]
    fn openssl_reads_the_csr_and_the_challenge_certificate() {
        let dir = rampart_testkit::TempDir::new().unwrap();
        let rng = SystemRandom::new();
        let key = new_key(&rng).unwrap();
        let names = vec!["a.example".to_string(), "b.example".to_string()];
        let p = dir.path().join("req.der");
        std::fs::write(&p, csr(&key, &names).unwrap()).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["req", "-inform", "DER", "-noout", "-verify", "-text", "-in"])
            .arg(&p)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        assert!(text.contains("DNS:a.example, DNS:b.example"), "{text}");
        assert!(text.to_lowercase().contains("verify ok"), "{text}");

        let now = 1_796_434_200;
        let der = alpn_challenge_cert(&key, "a.example", "tok.thumb", now).unwrap();
        let p = dir.path().join("c.der");
        std::fs::write(&p, &der).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["x509", "-inform", "DER", "-noout", "-text", "-in"])
            .arg(&p)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "{out:?}");
        assert!(text.contains("DNS:a.example"), "{text}");
        assert!(text.contains("1.3.6.1.5.5.7.1.31: critical"), "{text}");
        assert!(text.contains("Dec 12 01:30:00 2026 GMT"), "{text}");
        assert_eq!(crate::tls_certs::not_after(&der), Some(now + 7 * 86_400));
    }

    #[test]
    fn jws_is_signed_with_the_account_key() {
        let rng = SystemRandom::new();
        let k = AccountKey::from_pkcs8(&new_key(&rng).unwrap()).unwrap();
        let jws: serde_json::Value =
            serde_json::from_str(&k.jws("https://ca/x", "n0", None, Some("{}")).unwrap()).unwrap();
        let signed = format!(
            "{}.{}",
            jws["protected"].as_str().unwrap(),
            jws["payload"].as_str().unwrap()
        );
        assert_eq!(jws["payload"], "e30");
        let sig = jws["signature"].as_str().unwrap();
        // Decode base64url by re-encoding candidates is awkward; check the length (64
        // bytes: 86 characters) and verify with ring through the fixed-width algorithm.
        assert_eq!(sig.len(), 86);
        let raw = decode_b64url(sig);
        let public = k.pair.public_key().as_ref().to_vec();
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, public)
            .verify(signed.as_bytes(), &raw)
            .unwrap();
        assert!(k.key_authorization("t").starts_with("t."));
        assert_eq!(k.thumbprint().len(), 43);
    }

    fn decode_b64url(s: &str) -> Vec<u8> {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut bits = 0u32;
        let mut n = 0;
        let mut out = Vec::new();
        for c in s.bytes() {
            let v = A.iter().position(|a| *a == c).unwrap() as u32;
            bits = (bits << 6) | v;
            n += 6;
            if n >= 8 {
                n -= 8;
                out.push((bits >> n) as u8);
                bits &= (1 << n) - 1;
            }
        }
        out
    }
}
