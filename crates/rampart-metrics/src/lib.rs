//! How every rampart role answers `GET /metrics` (the lb's admin API, the web server, the
//! db agent, the monitor): each renders its metrics once, in OpenMetrics 1.0 text (what
//! `prometheus_client` writes), and [`respond`] answers in the format the scraper asked
//! for in its `Accept` header:
//!
//! - `application/openmetrics-text` preferred (Prometheus' default `Accept`): OpenMetrics
//!   as rendered;
//! - anything else (`text/plain;version=0.0.4`, `*/*`, no `Accept`): the Prometheus text
//!   format 0.0.4 ([`classic`]), which `promtool check metrics` and every older scraper
//!   read.
//!
//! Pure, but for [`host`], which reads `/proc` and `statvfs` at each scrape.

/// The `Content-Type` of an OpenMetrics answer.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The `Content-Type` of a Prometheus text format answer.
pub const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a scraper gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    Classic,
}

/// The format an `Accept` header asks for: OpenMetrics when a media range
/// `application/openmetrics-text` has a quality above 0 and at least that of every range
/// the classic format answers (`text/plain`, `text/*`, `*/*`); else the classic format.
pub fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept else {
        return Format::Classic;
    };
    let (mut om, mut plain) = (0.0f64, 0.0f64);
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let mut q = 1.0;
        for p in parts {
            if let Some((k, v)) = p.split_once('=') {
                if k.trim().eq_ignore_ascii_case("q") {
                    q = v.trim().parse::<f64>().unwrap_or(0.0).clamp(0.0, 1.0);
                }
            }
        }
        match media.as_str() {
            "application/openmetrics-text" => om = om.max(q),
            "text/plain" | "text/*" | "*/*" => plain = plain.max(q),
            _ => {}
        }
    }
    if om > 0.0 && om >= plain {
        Format::OpenMetrics
    } else {
        Format::Classic
    }
}

pub mod host;

/// [`respond`] with this host's and process's figures ([`host`]) added: what every role's
/// `/metrics` answers.
pub fn respond_with_host(accept: Option<&str>, openmetrics: String) -> (&'static str, String) {
    respond(accept, host::append(&openmetrics, &host::sample_now()))
}

/// The answer to a scrape: its `Content-Type` and body, from the metrics rendered in
/// OpenMetrics text and the request's `Accept` header.
pub fn respond(accept: Option<&str>, openmetrics: String) -> (&'static str, String) {
    match negotiate(accept) {
        Format::OpenMetrics => (OPENMETRICS, openmetrics),
        Format::Classic => (CLASSIC, classic(&openmetrics)),
    }
}

/// OpenMetrics text as the Prometheus text format 0.0.4: a counter family `x` is
/// described as `x_total` (its samples' name), an info family `x` as the gauge `x_info`,
/// `stateset` as gauge and `unknown` as untyped; `_created` samples, `# UNIT`, `# EOF`
/// and exemplars are dropped; timestamps go from seconds to milliseconds; `\"` in a HELP
/// text becomes `"` (0.0.4 escapes only `\\` and `\n` there).
pub fn classic(openmetrics: &str) -> String {
    let mut types: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, ty)) = rest.split_once(' ') {
                types.insert(name, ty.trim());
            }
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            let ty = types.get(name).copied().unwrap_or("");
            out.push_str("# HELP ");
            out.push_str(&family_name(name, ty));
            out.push(' ');
            out.push_str(&text.replace("\\\"", "\""));
            out.push('\n');
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').unwrap_or((rest, ""));
            let ty = ty.trim();
            let classic_ty = match ty {
                "counter" | "gauge" | "histogram" | "summary" => ty,
                "info" | "stateset" => "gauge",
                "unknown" | "untyped" => "untyped",
                _ => continue,
            };
            out.push_str("# TYPE ");
            out.push_str(&family_name(name, ty));
            out.push(' ');
            out.push_str(classic_ty);
            out.push('\n');
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if let Some(sample) = sample(line, &types) {
            out.push_str(&sample);
            out.push('\n');
        }
    }
    out
}

/// The name a family has in the classic format.
fn family_name(name: &str, ty: &str) -> String {
    match ty {
        "counter" if !name.ends_with("_total") => format!("{name}_total"),
        "info" if !name.ends_with("_info") => format!("{name}_info"),
        _ => name.to_string(),
    }
}

/// One sample line in the classic format, or `None` for a `_created` sample.
fn sample(line: &str, types: &std::collections::HashMap<&str, &str>) -> Option<String> {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = &line[..name_end];
    if let Some(family) = name.strip_suffix("_created") {
        if matches!(
            types.get(family).copied(),
            Some("counter" | "histogram" | "summary")
        ) {
            return None;
        }
    }
    // The end of the label set: the `}` outside a quoted value.
    let mut end = name_end;
    if line[name_end..].starts_with('{') {
        let (mut quoted, mut escaped) = (false, false);
        for (i, c) in line[name_end..].char_indices() {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                quoted = !quoted;
            } else if c == '}' && !quoted {
                end = name_end + i + 1;
                break;
            }
        }
    }
    let (series, rest) = line.split_at(end);
    // An exemplar follows ` # `.
    let rest = rest.split(" # ").next().unwrap_or("");
    let mut fields = rest.split_whitespace();
    let value = fields.next().unwrap_or("");
    let mut s = format!("{series} {value}");
    if let Some(ts) = fields.next() {
        if let Ok(secs) = ts.parse::<f64>() {
            s.push_str(&format!(" {}", (secs * 1000.0).round() as i64));
        }
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::metrics::info::Info;
    use prometheus_client::registry::{Registry, Unit};

    #[test]
    fn prometheus_asks_for_openmetrics_and_the_rest_get_the_classic_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(
            negotiate(Some("application/openmetrics-text")),
            Format::OpenMetrics
        );
        for classic in [
            None,
            Some(""),
            Some("*/*"),
            Some("text/plain;version=0.0.4"),
            Some("text/plain; version=0.0.4; charset=utf-8"),
            Some("text/plain;version=0.0.4;q=1,*/*;q=0.1"),
            Some("application/openmetrics-text;q=0, text/plain"),
            Some("application/openmetrics-text;q=0.3, */*;q=0.5"),
            Some("application/json"),
        ] {
            assert_eq!(negotiate(classic), Format::Classic, "{classic:?}");
        }
        let (ct, body) = respond(None, "# TYPE a gauge\na 1\n# EOF\n".into());
        assert_eq!((ct, body.as_str()), (CLASSIC, "# TYPE a gauge\na 1\n"));
        let (ct, body) = respond(Some(prometheus), "# TYPE a gauge\na 1\n# EOF\n".into());
        assert_eq!(
            (ct, body.as_str()),
            (OPENMETRICS, "# TYPE a gauge\na 1\n# EOF\n")
        );
    }

    #[test]
    fn what_prometheus_client_writes_becomes_the_classic_format() {
        let mut reg = Registry::with_prefix("rampart_t");
        let c = Family::<Vec<(String, String)>, Counter>::default();
        c.get_or_create(&vec![("class".into(), "5xx".into())]).inc();
        reg.register("requests", "Answers \"sent\", by class", c);
        let g = Gauge::<i64>::default();
        g.set(3);
        reg.register("ready", "1 when ready", g);
        let h = Histogram::new([0.5, 1.0].into_iter());
        h.observe(0.7);
        reg.register_with_unit("response", "Time to answer", Unit::Seconds, h);
        reg.register("build", "Build", Info::new(vec![("version", "1.0")]));
        let mut om = String::new();
        encode(&mut om, &reg).unwrap();
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert_eq!(
            classic(&om),
            "# HELP rampart_t_requests_total Answers \"sent\", by class.\n\
             # TYPE rampart_t_requests_total counter\n\
             rampart_t_requests_total{class=\"5xx\"} 1\n\
             # HELP rampart_t_ready 1 when ready.\n\
             # TYPE rampart_t_ready gauge\n\
             rampart_t_ready 3\n\
             # HELP rampart_t_response_seconds Time to answer.\n\
             # TYPE rampart_t_response_seconds histogram\n\
             rampart_t_response_seconds_sum 0.7\n\
             rampart_t_response_seconds_count 1\n\
             rampart_t_response_seconds_bucket{le=\"0.5\"} 0\n\
             rampart_t_response_seconds_bucket{le=\"1.0\"} 1\n\
             rampart_t_response_seconds_bucket{le=\"+Inf\"} 1\n\
             # HELP rampart_t_build_info Build.\n\
             # TYPE rampart_t_build_info gauge\n\
             rampart_t_build_info{version=\"1.0\"} 1\n"
        );
    }

    #[test]
    fn created_samples_exemplars_and_timestamps() {
        let om = "# TYPE x counter\n# UNIT x bytes\nx_total{a=\"}# \\\"q\"} 5 1700000000.5 # {trace_id=\"1\"} 1\nx_created 1700000000\n# TYPE s stateset\ns{s=\"a\"} 1\n# TYPE u unknown\nu 2\n# EOF\n";
        assert_eq!(
            classic(om),
            "# TYPE x_total counter\nx_total{a=\"}# \\\"q\"} 5 1700000000500\n# TYPE s gauge\ns{s=\"a\"} 1\n# TYPE u untyped\nu 2\n"
        );
    }
}
