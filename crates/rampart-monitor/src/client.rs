//! A small async HTTP/1.1 client (hyper, one connection per request): scrapes and
//! webhook POSTs. Every call is bounded by a timeout.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper_util::rt::TokioIo;

/// Bodies bigger than this are refused (an exporter gone wrong must not eat the monitor).
const MAX_BODY: usize = 8 << 20;

/// What went wrong, in words for the targets page and logs.
pub type ClientError = String;

pub struct Reply {
    pub status: u16,
    pub body: Bytes,
}

/// `http://host:port/path` → (host:port, path). Only plain HTTP.
pub fn split_url(url: &str) -> Result<(String, String), ClientError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let hostport = if hostport.contains(':') && !hostport.ends_with(']') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    Ok((hostport, path.to_string()))
}

async fn resolve(hostport: &str) -> Result<SocketAddr, ClientError> {
    if let Ok(a) = hostport.parse() {
        return Ok(a);
    }
    tokio::net::lookup_host(hostport)
        .await
        .map_err(|e| format!("resolve {hostport}: {e}"))?
        .next()
        .ok_or_else(|| format!("resolve {hostport}: no address"))
}

pub async fn request(
    hostport: &str,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    bearer: Option<&str>,
    body: Bytes,
    timeout: Duration,
) -> Result<Reply, ClientError> {
    request_with(
        hostport,
        method,
        path,
        content_type,
        bearer,
        &[],
        body,
        timeout,
    )
    .await
}

/// `request` with extra header fields.
#[allow(clippy::too_many_arguments)]
async fn request_with(
    hostport: &str,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    bearer: Option<&str>,
    extra: &[(&str, String)],
    body: Bytes,
    timeout: Duration,
) -> Result<Reply, ClientError> {
    let fut = async {
        let addr = resolve(hostport).await?;
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake {addr}: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, hostport)
            .header(hyper::header::USER_AGENT, "rampart-monitor");
        if let Some(ct) = content_type {
            req = req.header(hyper::header::CONTENT_TYPE, ct);
        }
        if let Some(t) = bearer {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        for (name, value) in extra {
            req = req.header(*name, value.as_str());
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| format!("build request: {e}"))?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| format!("{method} {path} on {addr}: {e}"))?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("read body from {addr}: {e}"))?
            .to_bytes();
        Ok(Reply { status, body })
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| format!("{TIMED_OUT} {hostport} within {} ms", timeout.as_millis()))?
}

/// How the error of a request that got no answer in time starts.
const TIMED_OUT: &str = "no answer from";

/// Whether an error is a timeout (the target may be slow, not gone).
pub fn is_timeout(e: &str) -> bool {
    e.starts_with(TIMED_OUT)
}

/// The header Prometheus sends with each scrape so that an exporter can fit its
/// work inside the scraper's timeout (`X-Prometheus-Scrape-Timeout-Seconds`).
pub const SCRAPE_TIMEOUT_HEADER: &str = "x-prometheus-scrape-timeout-seconds";

/// A scrape: `get_auth` that tells the target how long the scraper waits, as
/// Prometheus does.
pub async fn scrape(
    addr: SocketAddr,
    path: &str,
    bearer: Option<&str>,
    timeout: Duration,
) -> Result<Reply, ClientError> {
    request_with(
        &addr.to_string(),
        "GET",
        path,
        None,
        bearer,
        &[(
            SCRAPE_TIMEOUT_HEADER,
            format!("{:.3}", timeout.as_secs_f64()),
        )],
        Bytes::new(),
        timeout,
    )
    .await
}

pub async fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Reply, ClientError> {
    get_auth(addr, path, None, timeout).await
}

/// `get` with `Authorization: Bearer <bearer>` when given.
pub async fn get_auth(
    addr: SocketAddr,
    path: &str,
    bearer: Option<&str>,
    timeout: Duration,
) -> Result<Reply, ClientError> {
    request(
        &addr.to_string(),
        "GET",
        path,
        None,
        bearer,
        Bytes::new(),
        timeout,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_scrape_tells_the_target_how_long_the_scraper_waits() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed before the head ended");
                head.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            String::from_utf8(head).unwrap().to_ascii_lowercase()
        });
        let r = scrape(addr, "/metrics", None, Duration::from_millis(1500))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        let head = server.await.unwrap();
        assert!(
            head.contains("\r\nx-prometheus-scrape-timeout-seconds: 1.500\r\n"),
            "{head}"
        );
    }
}
