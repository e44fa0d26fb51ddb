//! Patroni's `POST /switchover` and `POST /failover`, as pure rules: who may call them,
//! and what a request (`leader`, `candidate`, `scheduled_at`) becomes in rampart's
//! `/failover` key — or which of Patroni's status codes and messages refuses it.
//!
//! Mapping: a switchover (`leader` given) is rampart's switchover (`from` = leader,
//! `to` = candidate or any good replica, not forced: the old primary stops cleanly and the
//! target promotes with all its WAL); a failover (`candidate` only) is rampart's forced
//! failover to the candidate (`rampart db failover --to`). As in Patroni, a failover that
//! names the leader is a switchover, and only switchovers can be scheduled.
//! rampart does not switch over in maintenance mode (Patroni does, to a named candidate):
//! such a request is refused with 412.

use std::net::IpAddr;

use rampart_topology::lb::Cidr;

use crate::dcs::{ClusterView, FailoverValue};

/// Who may call the write endpoints (`[db] api_allow`, `api_token_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub allow: Vec<Cidr>,
    pub token: Option<String>,
}

/// A refusal: status code and text body (Patroni's words where it has some).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

fn refuse(status: u16, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
    }
}

/// Constant-time comparison (the length is not secret).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Standard base64 (with or without padding); `None` when malformed.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim().trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// May a client at `peer` with this `Authorization` header use a write endpoint?
/// 403 from a network not allowed (Patroni's `allowlist`), 401 without the token when one
/// is set: `Bearer <token>`, or basic auth whose password is the token (what Patroni's
/// clients send with `restapi.authentication`).
pub fn authorize(
    access: &Access,
    peer: IpAddr,
    authorization: Option<&str>,
) -> Result<(), Refusal> {
    if !access.allow.iter().any(|c| c.contains(peer)) {
        return Err(refuse(403, "Access is denied"));
    }
    let Some(token) = &access.token else {
        return Ok(());
    };
    let Some(h) = authorization else {
        return Err(refuse(401, "no auth header received"));
    };
    let ok = if let Some(t) = h.strip_prefix("Bearer ") {
        same(t.trim().as_bytes(), token.as_bytes())
    } else if let Some(b) = h.strip_prefix("Basic ") {
        base64_decode(b)
            .and_then(|d| {
                let i = d.iter().position(|&c| c == b':')?;
                Some(same(&d[i + 1..], token.as_bytes()))
            })
            .unwrap_or(false)
    } else {
        false
    };
    if ok {
        Ok(())
    } else {
        Err(refuse(401, "not authenticated"))
    }
}

/// Days from 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Why a timestamp was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimeError {
    /// Parsed, but without a UTC offset.
    NoTimezone,
    Unparsable,
}

/// Parse an ISO 8601 / RFC 3339 timestamp (`2026-12-05T02:30:00+01:00`, `...Z`, a space for
/// the `T`, optional fractional seconds) to Unix milliseconds.
pub fn parse_timestamp_ms(s: &str) -> Result<u64, TimeError> {
    let s = s.trim();
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Result<u32, TimeError> {
        let t = s.get(r).ok_or(TimeError::Unparsable)?;
        if t.is_empty() || !t.bytes().all(|c| c.is_ascii_digit()) {
            return Err(TimeError::Unparsable);
        }
        t.parse().map_err(|_| TimeError::Unparsable)
    };
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return Err(TimeError::Unparsable);
    }
    if b[13] != b':' || b[16] != b':' {
        return Err(TimeError::Unparsable);
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return Err(TimeError::Unparsable);
    }
    let mut i = 19;
    let mut ms = 0u64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(|c| c.is_ascii_digit()) {
            i += 1;
        }
        if i == start {
            return Err(TimeError::Unparsable);
        }
        let frac = &s[start..i.min(start + 3)];
        ms = frac.parse::<u64>().map_err(|_| TimeError::Unparsable)?
            * 10u64.pow(3 - frac.len() as u32);
    }
    let offset_min: i64 = match &s[i..] {
        "" => return Err(TimeError::NoTimezone),
        "Z" | "z" => 0,
        tz => {
            let sign = match tz.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return Err(TimeError::Unparsable),
            };
            let rest = &tz[1..];
            let (oh, om) = match rest.len() {
                5 if rest.as_bytes()[2] == b':' => (&rest[0..2], &rest[3..5]),
                4 => (&rest[0..2], &rest[2..4]),
                2 => (rest, "00"),
                _ => return Err(TimeError::Unparsable),
            };
            let oh: i64 = oh.parse().map_err(|_| TimeError::Unparsable)?;
            let om: i64 = om.parse().map_err(|_| TimeError::Unparsable)?;
            if oh > 23 || om > 59 {
                return Err(TimeError::Unparsable);
            }
            sign * (oh * 60 + om)
        }
    };
    let days = days_from_civil(i64::from(y), mo, d);
    let secs =
        days * 86_400 + i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(sec) - offset_min * 60;
    u64::try_from(secs)
        .map(|s| s * 1000 + ms)
        .map_err(|_| TimeError::Unparsable)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Switchover,
    Failover,
}

impl Kind {
    /// `switchover` / `failover`, as Patroni words its messages.
    pub fn word(self) -> &'static str {
        match self {
            Kind::Switchover => "switchover",
            Kind::Failover => "failover",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Kind::Switchover => "Switchover",
            Kind::Failover => "Failover",
        }
    }
}

/// Patroni's request body.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct Request {
    #[serde(default)]
    pub leader: Option<String>,
    #[serde(default)]
    pub candidate: Option<String>,
    /// Patroni's older name for `candidate`.
    #[serde(default)]
    pub member: Option<String>,
    #[serde(default)]
    pub scheduled_at: Option<String>,
}

/// What to write into `/failover`, and how to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// What it finally is (a failover naming the leader is a switchover).
    pub kind: Kind,
    pub value: FailoverValue,
    /// The leader when the request was made (to see it change).
    pub old_leader: Option<String>,
}

/// Check a request against the cluster as read from etcd just now (`sync_standby`: the
/// standby named in `/sync`) and turn it into the `/failover` value to write.
pub fn plan(
    kind: Kind,
    req: &Request,
    view: &ClusterView,
    synchronous: bool,
    sync_standby: Option<&str>,
    now_ms: u64,
) -> Result<Plan, Refusal> {
    let leader = req.leader.clone().filter(|s| !s.is_empty());
    let candidate = req
        .candidate
        .clone()
        .or_else(|| req.member.clone())
        .filter(|s| !s.is_empty());
    match kind {
        Kind::Failover if candidate.is_none() => {
            return Err(refuse(
                400,
                "Failover could be performed only to a specific candidate",
            ))
        }
        Kind::Switchover if leader.is_none() => {
            return Err(refuse(
                400,
                "Switchover could be performed only from a specific leader",
            ))
        }
        _ => {}
    }
    let mut scheduled_at_ms = None;
    if let Some(s) = req.scheduled_at.as_deref().filter(|s| !s.is_empty()) {
        if kind == Kind::Failover {
            return Err(refuse(400, "Failover can't be scheduled"));
        }
        if view.paused {
            return Err(refuse(400, "Can't schedule switchover in the paused state"));
        }
        match parse_timestamp_ms(s) {
            Ok(t) if t < now_ms => {
                return Err(refuse(422, format!("Cannot schedule {} in the past", kind.word())))
            }
            Ok(t) => scheduled_at_ms = Some(t),
            Err(TimeError::NoTimezone) => {
                return Err(refuse(
                    400,
                    format!("Timezone information is mandatory for the scheduled {}", kind.word()),
                ))
            }
            Err(TimeError::Unparsable) => {
                return Err(refuse(
                    422,
                    "Unable to parse scheduled timestamp. It should be in an unambiguous format, e.g. ISO 8601",
                ))
            }
        }
    }
    if view.paused && candidate.is_none() {
        return Err(refuse(
            400,
            "Switchover is possible only to a specific candidate in a paused state",
        ));
    }
    let kind = if kind == Kind::Failover && leader.is_some() {
        Kind::Switchover
    } else {
        kind
    };
    if leader.is_some() && leader == candidate {
        return Err(refuse(400, "Switchover target and source are the same"));
    }
    if scheduled_at_ms.is_none() {
        possible(
            kind,
            view,
            leader.as_deref(),
            candidate.as_deref(),
            synchronous,
            sync_standby,
        )
        .map_err(|m| refuse(412, m))?;
    }
    if view.paused {
        return Err(refuse(
            412,
            "the cluster is paused: rampart does not switch over in maintenance mode (resume it first)",
        ));
    }
    let forced = kind == Kind::Failover;
    Ok(Plan {
        kind,
        value: FailoverValue {
            from: if forced { view.leader.clone() } else { leader },
            to: candidate,
            forced,
            min_lsn: None,
            requested_at_ms: now_ms,
            scheduled_at_ms,
        },
        old_leader: view.leader.clone(),
    })
}

/// Patroni's `is_failover_possible`, with rampart's view of a good candidate: a replica
/// (streaming, for a switchover) without `nofailover`.
fn possible(
    kind: Kind,
    view: &ClusterView,
    leader: Option<&str>,
    candidate: Option<&str>,
    synchronous: bool,
    sync_standby: Option<&str>,
) -> Result<(), String> {
    if leader.is_some() && view.leader.as_deref() != leader {
        return Err("leader name does not match".into());
    }
    let members: Vec<_> = if let Some(c) = candidate {
        if kind == Kind::Switchover && synchronous && sync_standby != Some(c) {
            return Err("candidate name does not match with sync_standby".into());
        }
        let m: Vec<_> = view.members.iter().filter(|m| m.name == c).collect();
        if m.is_empty() {
            return Err("candidate does not exists".into());
        }
        m
    } else if synchronous {
        let m: Vec<_> = view
            .members
            .iter()
            .filter(|m| Some(m.name.as_str()) == sync_standby)
            .collect();
        if m.is_empty() {
            return Err(format!(
                "{} is not possible: can not find sync_standby",
                kind.word()
            ));
        }
        m
    } else {
        let m: Vec<_> = view
            .members
            .iter()
            .filter(|m| view.leader.as_deref() != Some(m.name.as_str()))
            .collect();
        if m.is_empty() {
            return Err(format!(
                "{} is not possible: cluster does not have members except leader",
                kind.word()
            ));
        }
        m
    };
    let good = |m: &&crate::dcs::Member| {
        m.role == "replica" && !m.nofailover && (kind == Kind::Failover || m.streaming)
    };
    if members.iter().any(good) {
        Ok(())
    } else {
        Err(format!(
            "{} is not possible: no good candidates have been found",
            kind.word()
        ))
    }
}

/// How a request that was written stands, polled like Patroni's `poll_failover_result`:
/// `Some(answer)` once it is decided. `leader`: the leader key now; `pending`: `/failover`
/// still holds the request.
pub fn outcome(plan: &Plan, leader: Option<&str>, pending: bool) -> Option<(u16, String)> {
    let past = match plan.kind {
        Kind::Switchover => "switched",
        Kind::Failover => "failed",
    };
    match leader {
        Some(l) if Some(l) != plan.old_leader.as_deref() => Some(match plan.value.to.as_deref() {
            None => (200, format!("Successfully {past} over to \"{l}\"")),
            Some(c) if c == l => (200, format!("Successfully {past} over to \"{l}\"")),
            Some(c) => {
                let mut t = past.to_string();
                t[..1].make_ascii_uppercase();
                (200, format!("{t} over to \"{l}\" instead of \"{c}\""))
            }
        }),
        _ if !pending => Some((503, format!("{} failed", plan.kind.title()))),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::dcs::Member;

    fn member(name: &str, role: &str, streaming: bool) -> Member {
        Member {
            name: name.into(),
            role: role.into(),
            state: "running".into(),
            host: "127.0.0.1".into(),
            port: 5432,
            api_url: String::new(),
            timeline: 1,
            timeline_known: true,
            lsn: 0,
            lag_bytes: 0,
            lag_seconds: 0.0,
            sync_standby: false,
            nofailover: false,
            lease_age_seconds: None,
            receive_lsn: 0,
            streaming,
            action: String::new(),
            pending_restart: false,
        }
    }

    fn view() -> ClusterView {
        ClusterView {
            cluster: "main".into(),
            leader: Some("db1".into()),
            timeline: Some(1),
            paused: false,
            members: vec![
                member("db1", "primary", false),
                member("db2", "replica", true),
                member("db3", "replica", false),
            ],
        }
    }

    fn req(leader: Option<&str>, candidate: Option<&str>, at: Option<&str>) -> Request {
        Request {
            leader: leader.map(String::from),
            candidate: candidate.map(String::from),
            member: None,
            scheduled_at: at.map(String::from),
        }
    }

    const NOW: u64 = 1_800_000_000_000;

    fn status(r: Result<Plan, Refusal>) -> u16 {
        match r {
            Ok(_) => 200,
            Err(e) => e.status,
        }
    }

    #[test]
    fn a_switchover_becomes_rampart_switchover() {
        let p = plan(
            Kind::Switchover,
            &req(Some("db1"), Some("db2"), None),
            &view(),
            true,
            Some("db2"),
            NOW,
        )
        .unwrap();
        assert_eq!(p.kind, Kind::Switchover);
        assert_eq!(p.value.from.as_deref(), Some("db1"));
        assert_eq!(p.value.to.as_deref(), Some("db2"));
        assert!(!p.value.forced);
        assert_eq!(p.value.requested_at_ms, NOW);
        // Without a candidate in asynchronous mode: any good replica.
        let p = plan(
            Kind::Switchover,
            &req(Some("db1"), None, None),
            &view(),
            false,
            None,
            NOW,
        )
        .unwrap();
        assert_eq!(p.value.to, None);
    }

    #[test]
    fn a_failover_is_forced_and_one_naming_the_leader_is_a_switchover() {
        let p = plan(
            Kind::Failover,
            &req(None, Some("db3"), None),
            &view(),
            true,
            Some("db2"),
            NOW,
        )
        .unwrap();
        assert!(p.value.forced);
        assert_eq!(p.value.from.as_deref(), Some("db1"));
        assert_eq!(p.value.to.as_deref(), Some("db3"));
        let p = plan(
            Kind::Failover,
            &req(Some("db1"), Some("db2"), None),
            &view(),
            true,
            Some("db2"),
            NOW,
        )
        .unwrap();
        assert_eq!(p.kind, Kind::Switchover);
        assert!(!p.value.forced);
    }

    #[test]
    fn patronis_refusals() {
        let v = view();
        type Case<'a> = (Kind, Request, bool, Option<&'a str>, u16, &'a str);
        let cases: Vec<Case> = vec![
            (
                Kind::Failover,
                req(None, None, None),
                true,
                None,
                400,
                "only to a specific candidate",
            ),
            (
                Kind::Switchover,
                req(None, Some("db2"), None),
                true,
                None,
                400,
                "only from a specific leader",
            ),
            (
                Kind::Switchover,
                req(Some("db2"), Some("db3"), None),
                false,
                None,
                412,
                "leader name does not match",
            ),
            (
                Kind::Switchover,
                req(Some("db1"), Some("db1"), None),
                false,
                None,
                400,
                "target and source are the same",
            ),
            (
                Kind::Switchover,
                req(Some("db1"), Some("db3"), None),
                true,
                Some("db2"),
                412,
                "does not match with sync_standby",
            ),
            (
                Kind::Switchover,
                req(Some("db1"), Some("db9"), None),
                false,
                None,
                412,
                "candidate does not exists",
            ),
            (
                Kind::Switchover,
                req(Some("db1"), None, None),
                true,
                None,
                412,
                "can not find sync_standby",
            ),
            // db3 does not stream: no good candidate for a switchover.
            (
                Kind::Switchover,
                req(Some("db1"), Some("db3"), None),
                false,
                None,
                412,
                "no good candidates",
            ),
            (
                Kind::Failover,
                req(None, Some("db2"), Some("2099-01-01T00:00:00Z")),
                false,
                None,
                400,
                "can't be scheduled",
            ),
            (
                Kind::Switchover,
                req(Some("db1"), Some("db2"), Some("2099-01-01T00:00:00")),
                false,
                None,
                400,
                "Timezone information is mandatory",
            ),
            (
                Kind::Switchover,
                req(Some("db1"), Some("db2"), Some("2020-01-01T00:00:00Z")),
                false,
                None,
                422,
                "in the past",
            ),
            (
                Kind::Switchover,
                req(Some("db1"), Some("db2"), Some("tomorrow")),
                false,
                None,
                422,
                "Unable to parse",
            ),
        ];
        for (kind, r, sync, ss, code, text) in cases {
            let e = plan(kind, &r, &v, sync, ss, NOW).unwrap_err();
            assert_eq!(e.status, code, "{r:?}: {e:?}");
            assert!(e.message.contains(text), "{r:?}: {e:?}");
        }
        let mut only = view();
        only.members.truncate(1);
        let e = plan(
            Kind::Switchover,
            &req(Some("db1"), None, None),
            &only,
            false,
            None,
            NOW,
        )
        .unwrap_err();
        assert!(
            e.message.contains("does not have members except leader"),
            "{e:?}"
        );
        let mut nf = view();
        nf.members[1].nofailover = true;
        assert_eq!(
            status(plan(
                Kind::Switchover,
                &req(Some("db1"), Some("db2"), None),
                &nf,
                false,
                None,
                NOW
            )),
            412
        );
    }

    #[test]
    fn paused_clusters_refuse() {
        let mut v = view();
        v.paused = true;
        let e = plan(
            Kind::Switchover,
            &req(Some("db1"), None, None),
            &v,
            false,
            None,
            NOW,
        )
        .unwrap_err();
        assert_eq!(e.status, 400);
        let e = plan(
            Kind::Switchover,
            &req(Some("db1"), Some("db2"), Some("2099-01-01T00:00:00Z")),
            &v,
            false,
            None,
            NOW,
        )
        .unwrap_err();
        assert!(e.message.contains("paused state"), "{e:?}");
        let e = plan(
            Kind::Switchover,
            &req(Some("db1"), Some("db2"), None),
            &v,
            false,
            None,
            NOW,
        )
        .unwrap_err();
        assert_eq!(e.status, 412);
        assert!(e.message.contains("maintenance"), "{e:?}");
    }

    #[test]
    fn a_scheduled_switchover_skips_the_candidate_check_and_carries_its_time() {
        let p = plan(
            Kind::Switchover,
            &req(Some("db1"), Some("db3"), Some("2027-01-15T10:00:00+01:00")),
            &view(),
            false,
            None,
            NOW,
        )
        .unwrap();
        assert_eq!(
            p.value.scheduled_at_ms,
            Some(parse_timestamp_ms("2027-01-15T09:00:00Z").unwrap())
        );
    }

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp_ms("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(
            parse_timestamp_ms("2000-03-01T00:00:00Z"),
            Ok(951_868_800_000)
        );
        assert_eq!(
            parse_timestamp_ms("2023-04-14T20:27:00+00:00"),
            Ok(1_681_504_020_000)
        );
        assert_eq!(
            parse_timestamp_ms("2023-04-14 22:27:00.250+02:00"),
            Ok(1_681_504_020_250)
        );
        assert_eq!(
            parse_timestamp_ms("2023-04-14T15:27:00-0500"),
            Ok(1_681_504_020_000)
        );
        assert_eq!(
            parse_timestamp_ms("2023-04-14T20:27:00"),
            Err(TimeError::NoTimezone)
        );
        for bad in [
            "",
            "2023-04-14",
            "2023-13-01T00:00:00Z",
            "2023-04-14T20:27:00+2:00",
            "x023-04-14T20:27:00Z",
            "2023-04-14T20:27:00.Z",
        ] {
            assert_eq!(parse_timestamp_ms(bad), Err(TimeError::Unparsable), "{bad}");
        }
    }

    #[test]
    fn access_rules() {
        let loopback: Vec<Cidr> = vec!["127.0.0.0/8".parse().unwrap()];
        let open = Access {
            allow: loopback.clone(),
            token: None,
        };
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let far: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(authorize(&open, lo, None), Ok(()));
        assert_eq!(authorize(&open, far, None).unwrap_err().status, 403);
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(authorize(&open, mapped, None), Ok(()));
        let t = Access {
            allow: loopback,
            token: Some("s3cret".into()),
        };
        assert_eq!(authorize(&t, lo, None).unwrap_err().status, 401);
        assert_eq!(authorize(&t, lo, Some("Bearer s3cret")), Ok(()));
        assert_eq!(
            authorize(&t, lo, Some("Bearer wrong")).unwrap_err().status,
            401
        );
        // patronictl: basic auth "patroni:s3cret".
        assert_eq!(
            authorize(&t, lo, Some("Basic cGF0cm9uaTpzM2NyZXQ=")),
            Ok(())
        );
        assert_eq!(
            authorize(&t, lo, Some("Basic cGF0cm9uaTp3cm9uZw=="))
                .unwrap_err()
                .status,
            401
        );
        assert_eq!(
            authorize(&t, lo, Some("Basic !!!")).unwrap_err().status,
            401
        );
    }

    #[test]
    fn outcomes_are_worded_like_patroni() {
        let p = plan(
            Kind::Switchover,
            &req(Some("db1"), Some("db2"), None),
            &view(),
            false,
            None,
            NOW,
        )
        .unwrap();
        assert_eq!(outcome(&p, Some("db1"), true), None);
        assert_eq!(outcome(&p, None, true), None);
        assert_eq!(
            outcome(&p, Some("db2"), false),
            Some((200, "Successfully switched over to \"db2\"".into()))
        );
        assert_eq!(
            outcome(&p, Some("db3"), false),
            Some((200, "Switched over to \"db3\" instead of \"db2\"".into()))
        );
        assert_eq!(
            outcome(&p, Some("db1"), false),
            Some((503, "Switchover failed".into()))
        );
        let f = plan(
            Kind::Failover,
            &req(None, Some("db3"), None),
            &view(),
            false,
            None,
            NOW,
        )
        .unwrap();
        assert_eq!(
            outcome(&f, Some("db3"), false),
            Some((200, "Successfully failed over to \"db3\"".into()))
        );
    }
}
