//! ACME (RFC 8555) certificates for TLS listeners with `tls.acme`: one task per such
//! listener on the control runtime orders the certificate when none valid is stored,
//! keeps it (and the account key) in the state folder, installs it in the listener's
//! certificate resolver through the ordinary reload path ([`crate::tls::TlsTerm::reload`]),
//! and renews it `renew_before` its expiry (never before half its lifetime has passed),
//! backing off exponentially after a failure.
//!
//! The challenges are answered here too: HTTP-01 tokens by every plain-HTTP listener
//! ([`http01`], before any redirect, firewall or pool) and TLS-ALPN-01 certificates by
//! the TLS listener's resolver ([`alpn_cert`]).

pub(crate) mod client;
pub(crate) mod der;
mod share;

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rampart_topology::lb::{Acme, Challenge, LbConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use client::{AcmeError, Client, Responder};

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737).
pub(crate) const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// Where HTTP-01 tokens are fetched.
pub(crate) const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// After a failed order the next try waits this, doubled after each further failure...
const BACKOFF_FIRST: Duration = Duration::from_secs(60);
/// ... up to this (Let's Encrypt allows 5 failed validations per name and hour).
const BACKOFF_MAX: Duration = Duration::from_secs(12 * 3600);
/// A sleeping task wakes at least this often to look at the stored certificate again.
const RECHECK: Duration = Duration::from_secs(3600);

/// Pending HTTP-01 tokens and their key authorizations.
static HTTP_TOKENS: LazyLock<Mutex<HashMap<String, String>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));
/// Pending TLS-ALPN-01 certificates by domain.
static ALPN_CERTS: LazyLock<Mutex<HashMap<String, Arc<CertifiedKey>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Whether a request target may be an HTTP-01 token we answer (the fast path then hands
/// the request to the path that calls [`http01`]).
pub(crate) fn http01_target(target: &[u8]) -> bool {
    target.starts_with(HTTP01_PREFIX.as_bytes())
        && HTTP_TOKENS.lock().map(|t| !t.is_empty()).unwrap_or(false)
}

/// The key authorization for a `GET /.well-known/acme-challenge/<token>` we are asked for.
pub(crate) fn http01(path: &str) -> Option<String> {
    let token = path.strip_prefix(HTTP01_PREFIX)?;
    HTTP_TOKENS.lock().ok()?.get(token).cloned()
}

/// The TLS-ALPN-01 certificate for a validator's SNI.
pub(crate) fn alpn_cert(sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
    let name = sni?.trim_end_matches('.').to_ascii_lowercase();
    ALPN_CERTS.lock().ok()?.get(&name).cloned()
}

/// Puts challenge answers where the listeners find them.
pub(crate) struct Store;

pub(crate) fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Store {
    pub(crate) fn present_now(
        challenge: Challenge,
        domain: &str,
        token: &str,
        key_authorization: &str,
    ) -> Result<(), AcmeError> {
        match challenge {
            Challenge::Http01 => {
                if let Ok(mut t) = HTTP_TOKENS.lock() {
                    t.insert(token.to_string(), key_authorization.to_string());
                }
            }
            Challenge::TlsAlpn01 => {
                let key =
                    der::new_key(&ring::rand::SystemRandom::new()).map_err(AcmeError::Setup)?;
                let cert = der::alpn_challenge_cert(&key, domain, key_authorization, now_secs())
                    .map_err(AcmeError::Setup)?;
                // Not `from_der`: its check refuses the critical acmeIdentifier extension.
                let signer = crate::tls::provider()
                    .key_provider
                    .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)))
                    .map_err(|e| AcmeError::Setup(format!("challenge key: {e}")))?;
                let ck = CertifiedKey::new(vec![CertificateDer::from(cert)], signer);
                if let Ok(mut c) = ALPN_CERTS.lock() {
                    c.insert(domain.to_ascii_lowercase(), Arc::new(ck));
                }
            }
        }
        Ok(())
    }

    pub(crate) fn cleanup_now(challenge: Challenge, domain: &str, token: &str) {
        match challenge {
            Challenge::Http01 => {
                if let Ok(mut t) = HTTP_TOKENS.lock() {
                    t.remove(token);
                }
            }
            Challenge::TlsAlpn01 => {
                if let Ok(mut c) = ALPN_CERTS.lock() {
                    c.remove(&domain.to_ascii_lowercase());
                }
            }
        }
    }
}

impl Responder for Store {
    async fn present(
        &self,
        challenge: Challenge,
        domain: &str,
        token: &str,
        key_authorization: &str,
    ) -> Result<(), AcmeError> {
        Store::present_now(challenge, domain, token, key_authorization)
    }

    async fn cleanup(&self, challenge: Challenge, domain: &str, token: &str) {
        Store::cleanup_now(challenge, domain, token)
    }
}

/// When a stored certificate (validity `(not_before, not_after)`) is renewed:
/// `renew_before` ahead of its expiry, but not before half of its lifetime has passed (a
/// `renew_before` longer than the lifetime would otherwise renew without end). Pure.
pub(crate) fn renew_at(validity: (i64, i64), renew_before: Duration) -> i64 {
    let (nb, na) = validity;
    let half = (na - nb).max(0) / 2;
    let ahead = i64::try_from(renew_before.as_secs()).unwrap_or(i64::MAX);
    na - ahead.min(half)
}

/// The wait before try number `failures + 1` after `failures` failed ones. Pure.
pub(crate) fn backoff(failures: u32) -> Duration {
    BACKOFF_FIRST
        .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
        .min(BACKOFF_MAX)
}

/// The validity of the stored certificate, if it is one for exactly the configured
/// domains.
pub(crate) fn stored(cfg: &Acme) -> Option<(i64, i64)> {
    let pem = std::fs::read(cfg.cert_path()).ok()?;
    let leaf = CertificateDer::pem_slice_iter(&pem).next()?.ok()?;
    let ee = webpki::EndEntityCert::try_from(&leaf).ok()?;
    let mut names: Vec<String> = ee
        .valid_dns_names()
        .map(|n| n.to_ascii_lowercase())
        .collect();
    names.sort();
    let mut want = cfg.domains.clone();
    want.sort();
    if names != want || !cfg.key_path().exists() {
        return None;
    }
    crate::tls_certs::validity(leaf.as_ref())
}

/// Write `data` to `path` with mode `mode`, replacing it at once (a temporary file
/// renamed over it).
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The account key of the state folder, created (0600) the first time.
fn account_key(cfg: &Acme) -> Result<der::AccountKey, AcmeError> {
    let path = cfg.state_dir.join("account.key");
    let setup = |what: &str, e: &dyn std::fmt::Display| {
        AcmeError::Setup(format!("{what} {}: {e}", path.display()))
    };
    let pkcs8 = match std::fs::read(&path) {
        Ok(pem) => der::pkcs8_from_pem(&pem).map_err(|e| setup("account key", &e))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let k = der::new_key(&ring::rand::SystemRandom::new()).map_err(AcmeError::Setup)?;
            write_atomic(&path, der::pem("PRIVATE KEY", &k).as_bytes(), 0o600)
                .map_err(|e| setup("cannot write the account key", &e))?;
            tracing::info!(path = %path.display(), "ACME account key created");
            k
        }
        Err(e) => return Err(setup("cannot read the account key", &e)),
    };
    der::AccountKey::from_pkcs8(&pkcs8).map_err(|e| setup("account key", &e))
}

/// A certificate just ordered: its chain and key (PEM) and its validity.
pub(crate) struct Ordered {
    pub chain: String,
    pub key_pem: String,
    pub validity: (i64, i64),
}

/// Order a certificate for `cfg` (nothing is stored).
async fn order<R: Responder>(cfg: &Acme, responder: &R) -> Result<Ordered, AcmeError> {
    let dir = &cfg.state_dir;
    std::fs::create_dir_all(dir).map_err(|e| {
        AcmeError::Setup(format!(
            "cannot create the state folder {}: {e}",
            dir.display()
        ))
    })?;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    let key = account_key(cfg)?;
    let mut client = Client::connect(cfg, key).await?;
    let cert_key = der::new_key(&ring::rand::SystemRandom::new()).map_err(AcmeError::Setup)?;
    let chain = client.order(cfg, &cert_key, responder).await?;
    let validity = chain_validity(&chain).ok_or_else(|| {
        AcmeError::Protocol("the chain's first certificate cannot be read".into())
    })?;
    Ok(Ordered {
        chain,
        key_pem: der::pem("PRIVATE KEY", &cert_key),
        validity,
    })
}

/// The validity of a PEM chain's first certificate.
pub(crate) fn chain_validity(chain: &str) -> Option<(i64, i64)> {
    let leaf = CertificateDer::pem_slice_iter(chain.as_bytes())
        .next()?
        .ok()?;
    crate::tls_certs::validity(leaf.as_ref())
}

/// Keep a certificate in the state folder and present it from the next handshake on.
pub(crate) fn store(
    listener: &str,
    cfg: &Acme,
    chain: &str,
    key_pem: &str,
) -> Result<(), AcmeError> {
    let dir = &cfg.state_dir;
    std::fs::create_dir_all(dir).map_err(|e| {
        AcmeError::Setup(format!(
            "cannot create the state folder {}: {e}",
            dir.display()
        ))
    })?;
    let io = |what: &str, e: std::io::Error| AcmeError::Setup(format!("cannot write {what}: {e}"));
    // The key first: a reload between the two renames keeps the old pair (a key that does
    // not fit its certificate is not loaded).
    write_atomic(&cfg.key_path(), key_pem.as_bytes(), 0o600)
        .map_err(|e| io("the certificate key", e))?;
    write_atomic(&cfg.cert_path(), chain.as_bytes(), 0o644)
        .map_err(|e| io("the certificate", e))?;
    install(listener);
    Ok(())
}

/// Present the stored certificate from the next handshake on.
fn install(listener: &str) {
    match crate::tls::term(listener) {
        Some(t) => {
            if let Err(e) = t.reload() {
                tracing::warn!(listener, error = %e, "ACME certificate stored but not loaded");
            }
        }
        None => tracing::warn!(
            listener,
            "ACME certificate stored for a listener that is gone"
        ),
    }
}

/// How long until the stored certificate is due for renewal (`None`: it is due now, or
/// there is none), capped at [`RECHECK`].
pub(crate) fn until_due(cfg: &Acme) -> Option<Duration> {
    let v = stored(cfg)?;
    let wait = renew_at(v, cfg.renew_before) - now_secs();
    (wait > 0).then(|| Duration::from_secs(wait.unsigned_abs()).min(RECHECK))
}

/// One listener's certificate, for ever: order when due, sleep until the next renewal.
async fn manage(listener: String, cfg: Acme) {
    if let Some(share) = cfg.share.clone() {
        return share::manage(listener, cfg, share).await;
    }
    let mut failures = 0u32;
    loop {
        if let Some(wait) = until_due(&cfg) {
            tokio::time::sleep(wait).await;
            continue;
        }
        tracing::info!(listener = %listener, domains = ?cfg.domains, directory = %cfg.directory, "ordering an ACME certificate");
        let r = match order(&cfg, &Store).await {
            Ok(o) => store(&listener, &cfg, &o.chain, &o.key_pem).map(|()| o.validity),
            Err(e) => Err(e),
        };
        match r {
            Ok((_, not_after)) => {
                failures = 0;
                tracing::info!(listener = %listener, domains = ?cfg.domains, not_after, "ACME certificate ordered and installed");
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let wait = backoff(failures);
                tracing::warn!(listener = %listener, error = %e, failures, retry_in_s = wait.as_secs(), "ACME order failed");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// The running tasks: (listener, its settings, the task).
type Tasks = Vec<(String, Acme, tokio::task::AbortHandle)>;
static TASKS: LazyLock<Mutex<Tasks>> = LazyLock::new(|| Mutex::new(Vec::new()));
static RUNTIME: std::sync::OnceLock<tokio::runtime::Handle> = std::sync::OnceLock::new();

/// Start a task for each listener with `tls.acme` that has none with the same settings,
/// and stop those of listeners gone or changed. First called on the control runtime,
/// after the listeners serve (the challenges need them) and after [`crate::tls::prepare`].
pub fn sync(config: &LbConfig) {
    let rt = match RUNTIME.get() {
        Some(h) => h.clone(),
        None => match tokio::runtime::Handle::try_current() {
            Ok(h) => RUNTIME.get_or_init(|| h).clone(),
            Err(_) => {
                tracing::error!("ACME: no runtime to run on");
                return;
            }
        },
    };
    let Ok(mut tasks) = TASKS.lock() else { return };
    let wanted: Vec<(String, Acme)> = config
        .listeners
        .iter()
        .filter_map(|l| Some((l.name.clone(), l.tls.as_ref()?.acme.clone()?)))
        .collect();
    tasks.retain(|(name, acme, h)| {
        let keep = wanted.iter().any(|(n, a)| n == name && a == acme);
        if !keep {
            h.abort();
        }
        keep
    });
    for (name, acme) in wanted {
        if !tasks.iter().any(|(n, a, _)| *n == name && *a == acme) {
            let h = rt.spawn(manage(name.clone(), acme.clone()));
            tasks.push((name, acme, h.abort_handle()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_time_and_backoff() {
        let day = 86_400;
        // 90 days, renewed 30 days ahead.
        assert_eq!(
            renew_at((0, 90 * day), Duration::from_secs(30 * day as u64)),
            60 * day
        );
        // renew_before longer than the lifetime: at half of it, not at once.
        assert_eq!(renew_at((100, 160), Duration::from_secs(3600)), 130);
        assert_eq!(backoff(1), Duration::from_secs(60));
        assert_eq!(backoff(2), Duration::from_secs(120));
        assert_eq!(backoff(5), Duration::from_secs(960));
        assert_eq!(backoff(40), BACKOFF_MAX);
    }

    #[test]
    fn http01_tokens_are_served_while_pending() {
        assert!(!http01_target(b"/.well-known/acme-challenge/t1"));
        Store::present_now(Challenge::Http01, "a.example", "t1", "t1.thumb")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(http01_target(b"/.well-known/acme-challenge/t1"));
        assert!(!http01_target(b"/other"));
        assert_eq!(
            http01("/.well-known/acme-challenge/t1").as_deref(),
            Some("t1.thumb")
        );
        assert_eq!(http01("/.well-known/acme-challenge/t2"), None);
        Store::cleanup_now(Challenge::Http01, "a.example", "t1");
        assert_eq!(http01("/.well-known/acme-challenge/t1"), None);
    }

    #[test]
    fn alpn_certificates_are_chosen_by_sni() {
        Store::present_now(Challenge::TlsAlpn01, "B.example", "t", "t.thumb")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(alpn_cert(Some("b.example.")).is_some());
        assert!(alpn_cert(Some("c.example")).is_none());
        assert!(alpn_cert(None).is_none());
        Store::cleanup_now(Challenge::TlsAlpn01, "b.example", "t");
        assert!(alpn_cert(Some("b.example")).is_none());
    }
}
