//! Tests of `ocsp`: requests read and answered by `openssl ocsp` (its responder mode on
//! files, no server), answers checked here.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use super::*;

fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "openssl {args:?}: {text}");
    text
}

fn der(dir: &Path, pem: &str) -> Vec<u8> {
    openssl(
        dir,
        &["x509", "-in", pem, "-outform", "DER", "-out", "x.der"],
    );
    std::fs::read(dir.join("x.der")).unwrap()
}

/// A CA (`ca.pem`) and two leaves it signed: `leaf.pem` (serial 0x1001, names an OCSP
/// responder) and `other.pem` (serial 0x1002, names none); responder certificates:
/// `resp.pem` (RSA, signed by the CA for OCSP signing), `noeku.pem` (signed by the CA
/// without OCSP signing) and `stranger.pem` (self-signed, for OCSP signing).
fn pki(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=ocsp test ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    std::fs::write(
        dir.join("leaf.ext"),
        "basicConstraints=CA:FALSE\nsubjectAltName=DNS:a.test\n\
         authorityInfoAccess=caIssuers;URI:http://127.0.0.1:8888/ca.crt,OCSP;URI:http://127.0.0.1:8888/ocsp\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("other.ext"),
        "basicConstraints=CA:FALSE\nsubjectAltName=DNS:b.test\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("resp.ext"),
        "basicConstraints=CA:FALSE\nextendedKeyUsage=OCSPSigning\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("noeku.ext"),
        "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=ocsp test ca",
            "-addext",
            "extendedKeyUsage=OCSPSigning",
            "-keyout",
            "stranger.key",
            "-out",
            "stranger.pem",
        ],
    );
    for (name, serial, key) in [
        ("leaf", "0x1001", "ec"),
        ("other", "0x1002", "ec"),
        ("resp", "0x2001", "rsa"),
        ("noeku", "0x2002", "ec"),
    ] {
        let key_opts: &[&str] = if key == "rsa" {
            &["-newkey", "rsa:2048"]
        } else {
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
        };
        openssl(
            dir,
            &[
                &["req", "-new"][..],
                key_opts,
                &[
                    "-nodes",
                    "-subj",
                    &format!("/CN={name}"),
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                ][..],
            ]
            .concat(),
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                serial,
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }
}

/// `openssl ocsp`'s answer to `request` from an index where serial 1001 has `status`
/// (`V` or `R`; absent when `None`), valid `nmin` minutes, signed by the CA.
fn answer(dir: &Path, request: &[u8], status: Option<char>, nmin: &str) -> Vec<u8> {
    answer_by(dir, request, status, nmin, "ca")
}

/// [`answer`] signed by `signer` (`{signer}.pem` and `.key`).
fn answer_by(
    dir: &Path,
    request: &[u8],
    status: Option<char>,
    nmin: &str,
    signer: &str,
) -> Vec<u8> {
    let line = match status {
        Some('R') => "R\t301231000000Z\t260101000000Z\t1001\tunknown\t/CN=leaf\n",
        Some(_) => "V\t301231000000Z\t\t1001\tunknown\t/CN=leaf\n",
        None => "",
    };
    std::fs::write(dir.join("index.txt"), line).unwrap();
    std::fs::write(dir.join("req.der"), request).unwrap();
    let _ = std::fs::remove_file(dir.join("resp.der"));
    let (cert, key) = (format!("{signer}.pem"), format!("{signer}.key"));
    let mut args = vec![
        "ocsp",
        "-index",
        "index.txt",
        "-rsigner",
        &cert,
        "-rkey",
        &key,
        "-CA",
        "ca.pem",
        "-reqin",
        "req.der",
        "-respout",
        "resp.der",
    ];
    if !nmin.is_empty() {
        args.extend(["-nmin", nmin]);
    }
    openssl(dir, &args);
    std::fs::read(dir.join("resp.der")).unwrap()
}

fn now() -> i64 {
    crate::acme::now_secs()
}

#[test]
fn openssl_answers_our_request_and_its_answers_are_checked() {
    let tmp = rampart_testkit::TempDir::new().unwrap();
    let dir = tmp.path();
    pki(dir);
    let (ca, leaf, other) = (
        der(dir, "ca.pem"),
        der(dir, "leaf.pem"),
        der(dir, "other.pem"),
    );
    assert_eq!(
        responder_url(&leaf).as_deref(),
        Some("http://127.0.0.1:8888/ocsp")
    );
    assert_eq!(responder_url(&other), None);
    assert_eq!(responder_url(&ca), None);

    assert_eq!(CertId::new(&leaf, None), Err(CertIdError::NoIssuer));
    assert_eq!(CertId::new(&leaf, Some(&other)), Err(CertIdError::NoIssuer));
    assert_eq!(
        CertId::new(b"\x30\x00", Some(&ca)),
        Err(CertIdError::Unreadable)
    );
    let id = CertId::new(&leaf, Some(&ca)).unwrap();
    assert_eq!(id.serial_hex(), "1001");

    // openssl reads the request.
    let req = id.request();
    std::fs::write(dir.join("req.der"), &req).unwrap();
    let text = openssl(dir, &["ocsp", "-reqin", "req.der", "-req_text"]);
    assert!(text.contains("Hash Algorithm: sha1"), "{text}");
    assert!(text.contains("Serial Number: 1001"), "{text}");

    let t = now();
    let good = answer(dir, &req, Some('V'), "5");
    let c = id.check(&good, t).unwrap();
    assert_eq!(c.status, CertStatus::Good);
    assert!((c.this_update - t).abs() < 60, "{c:?} at {t}");
    let next = c.next_update.unwrap();
    assert!((next - (t + 300)).abs() < 60, "{c:?} at {t}");
    // Halfway.
    assert!((c.refresh_at(t) - (t + 150)).abs() < 60, "{c:?}");
    assert_eq!(id.check(&good, next + 1), Err(OcspError::Expired(next)));
    assert_eq!(
        id.check(&good, c.this_update - 1000),
        Err(OcspError::Future(c.this_update))
    );
    // Another certificate of the same CA.
    let other_id = CertId {
        serial: vec![0x10, 0x02],
        ..id.clone()
    };
    assert_eq!(other_id.check(&good, t), Err(OcspError::OtherCert));

    let revoked = answer(dir, &req, Some('R'), "5");
    let c = id.check(&revoked, t).unwrap();
    // 2026-01-01T00:00:00Z
    assert_eq!(c.status, CertStatus::Revoked(1_767_225_600));

    let unknown = answer(dir, &req, None, "5");
    assert_eq!(id.check(&unknown, t), Err(OcspError::Unknown));

    // No nextUpdate: kept an hour, refreshed after half of it.
    let open = answer(dir, &req, Some('V'), "");
    let c = id.check(&open, t).unwrap();
    assert_eq!(c.next_update, None);
    assert_eq!(c.valid_until(t), t + NO_NEXT_UPDATE);
    assert!(
        (c.refresh_at(t) - (t + NO_NEXT_UPDATE / 2)).abs() < 60,
        "{c:?}"
    );

    for cut in [0, 1, 10, good.len() / 2, good.len() - 1] {
        assert!(id.check(&good[..cut], t).is_err());
    }

    // Signatures: an answer altered on the way (its producedAt) is refused...
    let mut altered = good.clone();
    let at = altered.windows(2).position(|w| w == [0x18, 0x0f]).unwrap() + 2 + 13;
    altered[at] = b'0' + (altered[at] - b'0' + 1) % 10;
    assert_eq!(id.check(&altered, t), Err(OcspError::Signature));
    // ... one signed by a responder the CA authorized (RSA) is taken...
    let delegated = answer_by(dir, &req, Some('V'), "5", "resp");
    assert_eq!(id.check(&delegated, t).unwrap().status, CertStatus::Good);
    // ... unless that responder certificate has expired...
    assert_eq!(
        id.check(&delegated, t + 3 * 86_400),
        Err(OcspError::Signature)
    );
    // ... and none by a certificate of the CA not for OCSP signing, or by a stranger
    // with the CA's name.
    for signer in ["noeku", "stranger"] {
        let a = answer_by(dir, &req, Some('V'), "5", signer);
        assert_eq!(id.check(&a, t), Err(OcspError::Signature), "{signer}");
    }
}

#[test]
fn error_statuses_and_schedules() {
    let id = CertId {
        serial: vec![1],
        issuer_name: vec![0x30, 0x00],
        issuer_key: vec![1, 2, 3],
        issuer_key_alg: vec![],
    };
    assert_eq!(
        id.check(b"\x30\x03\x0a\x01\x03", 0),
        Err(OcspError::Status("tryLater"))
    );
    assert_eq!(
        id.check(b"\x30\x03\x0a\x01\x06", 0),
        Err(OcspError::Status("unauthorized"))
    );
    assert!(matches!(
        id.check(b"\x30\x03\x0a\x01\x00", 0),
        Err(OcspError::Malformed(_))
    ));
    let c = |this_update, next_update| Checked {
        status: CertStatus::Good,
        this_update,
        next_update,
    };
    // Halfway from thisUpdate...
    assert_eq!(c(1000, Some(2000)).refresh_at(1100), 1500);
    // ... or from now when that has passed (a cached answer) ...
    assert_eq!(c(0, Some(2000)).refresh_at(1600), 1800);
    // ... never sooner than MIN_REFRESH.
    assert_eq!(c(0, Some(1604)).refresh_at(1600), 1600 + MIN_REFRESH);
    assert_eq!(backoff(1), 10);
    assert_eq!(backoff(2), 20);
    assert_eq!(backoff(4), 80);
    assert_eq!(backoff(30), BACKOFF_MAX);
    assert_eq!(gtime(0x18, b"20260101000000Z"), Some(1_767_225_600));
    assert_eq!(gtime(0x18, b"20260101000000.25Z"), Some(1_767_225_600));
    assert_eq!(gtime(0x17, b"260101000000Z"), None);
}

proptest::proptest! {
    #[test]
    fn parsers_never_panic(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
        let id = CertId {
            serial: vec![1],
            issuer_name: vec![0x30, 0x00],
            issuer_key: vec![1],
            issuer_key_alg: vec![],
        };
        let _ = id.check(&b, 0);
        let _ = responder_url(&b);
        let _ = CertId::new(&b, Some(&b));
    }
}
