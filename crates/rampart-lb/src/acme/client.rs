//! An ACME client (RFC 8555) for one order at a time: the directory, nonces, the account
//! (created or found by its key), the order, its authorizations and challenges, the
//! finalization with a CSR and the certificate chain. HTTPS through hyper's HTTP/1
//! client over rustls (one connection per request: an order is a few dozen requests).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rampart_topology::lb::{Acme, Challenge};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::net::TcpStream;

use super::der::{self, AccountKey};

/// Longest answer read from the CA (a certificate chain is a few KiB).
const MAX_BODY: usize = 1 << 20;
/// Each request (connect, TLS, answer) must be done within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Polls of an authorization or an order before giving up.
const MAX_POLLS: u32 = 60;
/// The system's CA bundle (Debian), when `ca` is not set.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("{0}")]
    Setup(String),
    #[error("{url}: {err}")]
    Http { url: String, err: String },
    /// An RFC 7807 problem document from the CA.
    #[error("{url}: the CA answered {status}: {kind}: {detail}")]
    Problem {
        url: String,
        status: u16,
        kind: String,
        detail: String,
    },
    #[error("{0}")]
    Protocol(String),
}

impl AcmeError {
    fn bad_nonce(&self) -> bool {
        matches!(self, AcmeError::Problem { kind, .. } if kind.ends_with(":badNonce"))
    }
}

/// An answer from the CA.
struct Answer {
    status: StatusCode,
    location: Option<String>,
    nonce: Option<String>,
    retry_after: Option<Duration>,
    body: Bytes,
}

impl Answer {
    fn json(&self, url: &str) -> Result<Value, AcmeError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| AcmeError::Protocol(format!("{url}: not JSON: {e}")))
    }
}

/// What the challenges need while they are pending: set up by the caller, removed
/// afterwards.
pub trait Responder: Sync {
    /// Serve `key_authorization` for `token` (HTTP-01) or the challenge certificate for
    /// `domain` (TLS-ALPN-01), until `cleanup`.
    fn present(
        &self,
        challenge: Challenge,
        domain: &str,
        token: &str,
        key_authorization: &str,
    ) -> impl std::future::Future<Output = Result<(), AcmeError>> + Send;
    fn cleanup(
        &self,
        challenge: Challenge,
        domain: &str,
        token: &str,
    ) -> impl std::future::Future<Output = ()> + Send;
}

pub struct Client {
    tls: Arc<rustls::ClientConfig>,
    key: AccountKey,
    dir: Directory,
    nonce: Option<String>,
    kid: Option<String>,
}

struct Directory {
    new_nonce: String,
    new_account: String,
    new_order: String,
}

fn string(v: &Value, field: &str, url: &str) -> Result<String, AcmeError> {
    v.get(field)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| AcmeError::Protocol(format!("{url}: no \"{field}\" in {v}")))
}

/// The root store for the directory's HTTPS.
fn roots(ca: Option<&Path>) -> Result<rustls::RootCertStore, AcmeError> {
    let path = ca.unwrap_or(Path::new(SYSTEM_BUNDLE));
    let pem = std::fs::read(path)
        .map_err(|e| AcmeError::Setup(format!("cannot read CA file {}: {e}", path.display())))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(AcmeError::Setup(format!(
            "CA file {} holds no usable certificate",
            path.display()
        )));
    }
    Ok(roots)
}

async fn request(
    tls: &Arc<rustls::ClientConfig>,
    method: Method,
    url: &str,
    body: Option<String>,
) -> Result<Answer, AcmeError> {
    let http_err = |err: String| AcmeError::Http {
        url: url.to_string(),
        err,
    };
    let uri: http::Uri = url.parse().map_err(|e| http_err(format!("bad URL: {e}")))?;
    if uri.scheme_str() != Some("https") {
        return Err(http_err("not an https URL".into()));
    }
    let host = uri
        .host()
        .ok_or_else(|| http_err("no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let name = ServerName::try_from(host.clone()).map_err(|e| http_err(e.to_string()))?;
    let work = async {
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| http_err(format!("connect: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| http_err(format!("TLS: {e}")))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| http_err(format!("HTTP: {e}")))?;
        tokio::spawn(conn);
        let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        let mut req = Request::builder()
            .method(method)
            .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(header::HOST, authority)
            .header(
                header::USER_AGENT,
                concat!("rampart/", env!("CARGO_PKG_VERSION")),
            );
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/jose+json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| http_err(e.to_string()))?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| http_err(format!("HTTP: {e}")))?;
        let h = resp.headers();
        let text = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        let status = resp.status();
        let location = text("location");
        let nonce = text("replay-nonce");
        let retry_after = text("retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| http_err(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok::<_, AcmeError>(Answer {
            status,
            location,
            nonce,
            retry_after,
            body,
        })
    };
    let a = tokio::time::timeout(REQUEST_TIMEOUT, work)
        .await
        .map_err(|_| http_err("timed out".into()))??;
    if a.status.is_client_error() || a.status.is_server_error() {
        let v: Value = serde_json::from_slice(&a.body).unwrap_or(Value::Null);
        return Err(AcmeError::Problem {
            url: url.to_string(),
            status: a.status.as_u16(),
            kind: v["type"].as_str().unwrap_or("?").to_string(),
            detail: v["detail"].as_str().unwrap_or("").to_string(),
        });
    }
    Ok(a)
}

impl Client {
    /// Read the directory and register (or find) the account of `key`.
    pub async fn connect(cfg: &Acme, key: AccountKey) -> Result<Client, AcmeError> {
        let roots = roots(cfg.ca.as_deref())?;
        let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| AcmeError::Setup(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tls = Arc::new(tls);
        let a = request(&tls, Method::GET, &cfg.directory, None).await?;
        let d = a.json(&cfg.directory)?;
        let dir = Directory {
            new_nonce: string(&d, "newNonce", &cfg.directory)?,
            new_account: string(&d, "newAccount", &cfg.directory)?,
            new_order: string(&d, "newOrder", &cfg.directory)?,
        };
        let mut c = Client {
            tls,
            key,
            dir,
            nonce: None,
            kid: None,
        };
        let mut account = serde_json::json!({ "termsOfServiceAgreed": true });
        if let Some(e) = &cfg.email {
            account["contact"] = serde_json::json!([format!("mailto:{e}")]);
        }
        let url = c.dir.new_account.clone();
        let a = c.post(&url, Some(&account.to_string())).await?;
        let kid = a
            .location
            .ok_or_else(|| AcmeError::Protocol(format!("{url}: no account Location")))?;
        c.kid = Some(kid);
        Ok(c)
    }

    async fn fresh_nonce(&mut self) -> Result<String, AcmeError> {
        if let Some(n) = self.nonce.take() {
            return Ok(n);
        }
        let url = self.dir.new_nonce.clone();
        let a = request(&self.tls, Method::HEAD, &url, None).await?;
        a.nonce
            .ok_or_else(|| AcmeError::Protocol(format!("{url}: no Replay-Nonce")))
    }

    /// A signed POST (`payload` `None`: POST-as-GET); a `badNonce` is retried with a
    /// new nonce (five times at most).
    async fn post(&mut self, url: &str, payload: Option<&str>) -> Result<Answer, AcmeError> {
        let mut tries = 0;
        loop {
            let nonce = self.fresh_nonce().await?;
            let body = self
                .key
                .jws(url, &nonce, self.kid.as_deref(), payload)
                .map_err(AcmeError::Setup)?;
            match request(&self.tls, Method::POST, url, Some(body)).await {
                Ok(a) => {
                    self.nonce = a.nonce.clone();
                    return Ok(a);
                }
                Err(e) if e.bad_nonce() && tries < 5 => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Poll `url` (POST-as-GET) until its status is none of `pending`, `processing`,
    /// `ready` unless `until` is it; the last object.
    async fn poll(&mut self, url: &str, until: &[&str]) -> Result<Value, AcmeError> {
        for _ in 0..MAX_POLLS {
            let a = self.post(url, None).await?;
            let v = a.json(url)?;
            let status = v["status"].as_str().unwrap_or("");
            if until.contains(&status) {
                return Ok(v);
            }
            if !matches!(status, "pending" | "processing" | "ready") {
                return Err(AcmeError::Protocol(format!(
                    "{url}: status \"{status}\": {}",
                    problem_of(&v)
                )));
            }
            let wait = a
                .retry_after
                .unwrap_or(Duration::from_millis(500))
                .clamp(Duration::from_millis(200), Duration::from_secs(10));
            tokio::time::sleep(wait).await;
        }
        Err(AcmeError::Protocol(format!("{url}: still not {until:?}")))
    }

    /// Order a certificate for `cfg.domains` with `cert_key` (PKCS#8); the chain (PEM).
    pub async fn order<R: Responder>(
        &mut self,
        cfg: &Acme,
        cert_key: &[u8],
        responder: &R,
    ) -> Result<String, AcmeError> {
        let ids: Vec<Value> = cfg
            .domains
            .iter()
            .map(|d| serde_json::json!({ "type": "dns", "value": d }))
            .collect();
        let new_order = self.dir.new_order.clone();
        let a = self
            .post(
                &new_order,
                Some(&serde_json::json!({ "identifiers": ids }).to_string()),
            )
            .await?;
        let order_url = a
            .location
            .clone()
            .ok_or_else(|| AcmeError::Protocol(format!("{new_order}: no order Location")))?;
        let order = a.json(&new_order)?;
        let authzs: Vec<String> = order["authorizations"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|u| u.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        for authz in &authzs {
            self.authorize(authz, cfg.challenge, responder).await?;
        }
        let order = self.poll(&order_url, &["ready", "valid"]).await?;
        let order = if order["status"] == "ready" {
            let finalize = string(&order, "finalize", &order_url)?;
            let csr = der::csr(cert_key, &cfg.domains).map_err(AcmeError::Setup)?;
            let body = serde_json::json!({ "csr": der::b64url(&csr) }).to_string();
            self.post(&finalize, Some(&body)).await?;
            self.poll(&order_url, &["valid"]).await?
        } else {
            order
        };
        let cert_url = string(&order, "certificate", &order_url)?;
        let a = self.post(&cert_url, None).await?;
        let chain = String::from_utf8(a.body.to_vec())
            .map_err(|_| AcmeError::Protocol(format!("{cert_url}: not a PEM chain")))?;
        if !chain.contains("-----BEGIN CERTIFICATE-----") {
            return Err(AcmeError::Protocol(format!("{cert_url}: not a PEM chain")));
        }
        Ok(chain)
    }

    async fn authorize<R: Responder>(
        &mut self,
        url: &str,
        kind: Challenge,
        responder: &R,
    ) -> Result<(), AcmeError> {
        let a = self.post(url, None).await?;
        let authz = a.json(url)?;
        if authz["status"] == "valid" {
            return Ok(());
        }
        let domain = string(&authz["identifier"], "value", url)?;
        let want = match kind {
            Challenge::Http01 => "http-01",
            Challenge::TlsAlpn01 => "tls-alpn-01",
        };
        let ch = authz["challenges"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == want))
            .ok_or_else(|| {
                AcmeError::Protocol(format!(
                    "{url}: the CA offers no {want} challenge for {domain}"
                ))
            })?
            .clone();
        let token = string(&ch, "token", url)?;
        let ch_url = string(&ch, "url", url)?;
        let key_auth = self.key.key_authorization(&token);
        responder.present(kind, &domain, &token, &key_auth).await?;
        let result = async {
            self.post(&ch_url, Some("{}")).await?;
            self.poll(url, &["valid"]).await
        }
        .await;
        responder.cleanup(kind, &domain, &token).await;
        result.map(|_| ())
    }
}

/// The problem of an invalid authorization or order, for the log.
fn problem_of(v: &Value) -> String {
    if let Some(e) = v.get("error") {
        return format!("{} {}", e["type"], e["detail"]);
    }
    v["challenges"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("error"))
        .map(|e| format!("{} {}", e["type"], e["detail"]))
        .collect::<Vec<_>>()
        .join("; ")
}
