//! Access logs (`[access_log]`, off by default): one structured line per request, JSON or
//! logfmt, written when the response head goes out (so `bytes` is the announced length).
//! Lines go through a buffered writer under a short lock, flushed every second by the
//! control thread and at exit.

use std::fmt::Write as _;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use rampart_topology::lb::{AccessLog, AccessLogFormat};

static LOG: ArcSwapOption<Logger> = ArcSwapOption::const_empty();

pub struct Logger {
    format: AccessLogFormat,
    out: Mutex<Box<dyn Write + Send>>,
}

/// Whether `LOG` is set: what the data path asks per request, kept apart from it so that
/// the question is one load rather than a load of the logger.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether lines are written (checked on the data path before gathering anything).
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Open the log of `cfg` (or turn logging off).
pub fn configure(cfg: Option<&AccessLog>) -> std::io::Result<()> {
    flush();
    let Some(cfg) = cfg else {
        ENABLED.store(false, Ordering::Relaxed);
        LOG.store(None);
        return Ok(());
    };
    let out: Box<dyn Write + Send> = match &cfg.path {
        Some(p) => Box::new(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?,
        )),
        None => Box::new(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stdout(),
        )),
    };
    LOG.store(Some(Arc::new(Logger {
        format: cfg.format,
        out: Mutex::new(out),
    })));
    ENABLED.store(true, Ordering::Relaxed);
    Ok(())
}

pub fn flush() {
    let Some(l) = LOG.load_full() else {
        return;
    };
    let Ok(mut o) = l.out.lock() else {
        return;
    };
    let _ = o.flush();
}

/// What the upstream side of a request was (set on the response by the proxy).
#[derive(Clone)]
pub struct Served {
    pub server: String,
    /// Attempts made (1 = no retry).
    pub attempts: u32,
    pub upstream_ns: u64,
}

/// One request's line.
pub struct Entry<'a> {
    pub client: SocketAddr,
    pub listener: &'a str,
    pub pool: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub bytes: Option<u64>,
    pub total_ns: u64,
    pub served: Option<&'a Served>,
}

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn logfmt_str(out: &mut String, s: &str) {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '=')
    {
        out.push_str(s);
    } else {
        json_str(out, s);
    }
}

/// Format one line (no newline).
pub fn format(f: AccessLogFormat, e: &Entry<'_>, now: SystemTime) -> String {
    let ts = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let ms = |ns: u64| ns as f64 / 1e6;
    let mut o = String::with_capacity(256);
    let (server, attempts, up) = match e.served {
        Some(s) => (s.server.as_str(), s.attempts, Some(ms(s.upstream_ns))),
        None => ("-", 0, None),
    };
    match f {
        AccessLogFormat::Json => {
            let _ = write!(o, "{{\"ts\":{ts:.3},\"client\":");
            json_str(&mut o, &e.client.to_string());
            o.push_str(",\"listener\":");
            json_str(&mut o, e.listener);
            o.push_str(",\"pool\":");
            json_str(&mut o, e.pool);
            o.push_str(",\"server\":");
            if e.served.is_some() {
                json_str(&mut o, server);
            } else {
                o.push_str("null");
            }
            o.push_str(",\"method\":");
            json_str(&mut o, e.method);
            o.push_str(",\"path\":");
            json_str(&mut o, e.path);
            let _ = write!(o, ",\"status\":{},\"bytes\":", e.status);
            match e.bytes {
                Some(b) => {
                    let _ = write!(o, "{b}");
                }
                None => o.push_str("null"),
            }
            let _ = write!(o, ",\"total_ms\":{:.3},\"upstream_ms\":", ms(e.total_ns));
            match up {
                Some(u) => {
                    let _ = write!(o, "{u:.3}");
                }
                None => o.push_str("null"),
            }
            let _ = write!(o, ",\"retries\":{}}}", attempts.saturating_sub(1));
        }
        AccessLogFormat::Logfmt => {
            let _ = write!(o, "ts={ts:.3} client={} listener=", e.client);
            logfmt_str(&mut o, e.listener);
            o.push_str(" pool=");
            logfmt_str(&mut o, e.pool);
            o.push_str(" server=");
            logfmt_str(&mut o, server);
            o.push_str(" method=");
            logfmt_str(&mut o, e.method);
            o.push_str(" path=");
            logfmt_str(&mut o, e.path);
            let _ = write!(o, " status={} bytes=", e.status);
            match e.bytes {
                Some(b) => {
                    let _ = write!(o, "{b}");
                }
                None => o.push('-'),
            }
            let _ = write!(o, " total_ms={:.3} upstream_ms=", ms(e.total_ns));
            match up {
                Some(u) => {
                    let _ = write!(o, "{u:.3}");
                }
                None => o.push('-'),
            }
            let _ = write!(o, " retries={}", attempts.saturating_sub(1));
        }
    }
    o
}

/// Write one request's line (when logging is on).
pub fn write(e: &Entry<'_>) {
    let Some(l) = LOG.load_full() else {
        return;
    };
    let mut line = format(l.format, e, SystemTime::now());
    line.push('\n');
    let Ok(mut o) = l.out.lock() else {
        return;
    };
    let _ = o.write_all(line.as_bytes());
}

/// Log a response of listener `l` (the proxy put a [`Served`] on it when a server answered).
pub fn log_response<B>(
    l: &crate::ListenerRt,
    pool: &str,
    client: SocketAddr,
    method: &http::Method,
    uri: &http::Uri,
    r: &http::Response<B>,
    total_ns: u64,
) where
    B: http_body::Body,
{
    let bytes = r
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .or_else(|| r.body().size_hint().exact());
    write(&Entry {
        client,
        listener: &l.cfg.name,
        pool,
        method: method.as_str(),
        path: uri.path_and_query().map_or("/", |p| p.as_str()),
        status: r.status().as_u16(),
        bytes,
        total_ns,
        served: r.extensions().get::<Served>(),
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn json_and_logfmt_lines() {
        let served = Served {
            server: "web1".into(),
            attempts: 2,
            upstream_ns: 1_500_000,
        };
        let e = Entry {
            client: "10.0.0.7:5555".parse().unwrap(),
            listener: "site",
            pool: "web",
            method: "GET",
            path: "/a \"b\"",
            status: 200,
            bytes: Some(12),
            total_ns: 2_000_000,
            served: Some(&served),
        };
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1);
        let j = format(AccessLogFormat::Json, &e, t);
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["server"], "web1");
        assert_eq!(v["path"], "/a \"b\"");
        assert_eq!(v["retries"], 1);
        assert_eq!(v["bytes"], 12);
        assert_eq!(v["upstream_ms"], 1.5);
        let l = format(AccessLogFormat::Logfmt, &e, t);
        assert_eq!(
            l,
            "ts=1.000 client=10.0.0.7:5555 listener=site pool=web server=web1 method=GET path=\"/a \\\"b\\\"\" status=200 bytes=12 total_ms=2.000 upstream_ms=1.500 retries=1"
        );
    }
}
