//! Prometheus metrics of one web node.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Kind {
    Static,
    Proxy,
    App,
    Admin,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Class {
    C2xx,
    C3xx,
    C4xx,
    C5xx,
}

impl prometheus_client::encoding::EncodeLabelValue for Class {
    fn encode(
        &self,
        e: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        e.write_str(match self {
            Class::C2xx => "2xx",
            Class::C3xx => "3xx",
            Class::C4xx => "4xx",
            Class::C5xx => "5xx",
        })
    }
}

impl Class {
    pub fn of(status: u16) -> Class {
        match status {
            500.. => Class::C5xx,
            400..=499 => Class::C4xx,
            300..=399 => Class::C3xx,
            _ => Class::C2xx,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReqLabels {
    pub kind: Kind,
    pub class: Class,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: Kind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabel {
    pub role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    pub transport: &'static str,
}

pub struct Metrics {
    pub registry: Registry,
    pub requests: Family<ReqLabels, Counter>,
    pub duration: Family<KindLabel, Histogram>,
    pub in_flight: Gauge,
    pub ready: Gauge,
    pub db_reads: Family<RoleLabel, Gauge>,
    pub db_reads_waited: Gauge,
    pub db_writes: Gauge,
    /// Connections accepted, by transport (`plain`, `tls`).
    pub connections: Family<TransportLabel, Counter>,
    pub tls_handshake_failures: Counter,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("rampart_web");
        let requests = Family::<ReqLabels, Counter>::default();
        registry.register("requests", "HTTP requests answered", requests.clone());
        let duration = Family::<KindLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(
                [
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ]
                .into_iter(),
            )
        });
        registry.register(
            "request_duration_seconds",
            "Time to the response head",
            duration.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "in_flight_requests",
            "Requests being handled",
            in_flight.clone(),
        );
        let ready = Gauge::default();
        registry.register("ready", "1 when /readyz answers 200", ready.clone());
        let db_reads = Family::<RoleLabel, Gauge>::default();
        registry.register(
            "db_reads",
            "Guestbook reads by database role (total)",
            db_reads.clone(),
        );
        let db_reads_waited = Gauge::default();
        registry.register(
            "db_reads_waited",
            "Token-bearing reads that waited for a replica to catch up (total)",
            db_reads_waited.clone(),
        );
        let db_writes = Gauge::default();
        registry.register(
            "db_writes",
            "Guestbook write checkouts (total)",
            db_writes.clone(),
        );
        let connections = Family::<TransportLabel, Counter>::default();
        registry.register(
            "connections",
            "Connections accepted, by transport (plain, tls)",
            connections.clone(),
        );
        let tls_handshake_failures = Counter::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            tls_handshake_failures.clone(),
        );
        Metrics {
            connections,
            tls_handshake_failures,
            registry,
            requests,
            duration,
            in_flight,
            ready,
            db_reads,
            db_reads_waited,
            db_writes,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
