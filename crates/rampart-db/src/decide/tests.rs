//! Tests of `decide`.

#![allow(clippy::unwrap_used)]

use super::*;
use proptest::prelude::*;

fn base() -> Observed {
    Observed {
        me: "db2".into(),
        nofailover: false,
        synchronous: false,
        max_lag_bytes: 1 << 20,
        dcs_ok: true,
        initialized: true,
        leader: None,
        lease_valid_until: Some(Duration::from_secs(10)),
        now: Duration::from_secs(5),
        pg: Pg::Running(PgRunning {
            in_recovery: true,
            timeline: 1,
            timeline_known: true,
            wal_lsn: 1000,
            replay_lsn: 1000,
            streaming: false,
            not_streaming_for: Duration::ZERO,
            diverged: false,
        }),
        peers: vec![],
        sync: None,
        failover: None,
        paused: false,
        disk_full: false,
        stuck_after: STUCK_REPLICA_TIMEOUT,
        last_leader_lsn: Some(1000),
        cluster_timeline: Some(1),
        fence_ok: true,
    }
}

#[test]
fn lone_healthy_replica_takes_the_key() {
    assert!(matches!(decide(&base()), Action::TakeLeader { .. }));
}

#[test]
fn replica_with_less_wal_waits_for_the_better_one() {
    let mut o = base();
    o.peers.push(Peer {
        name: "db3".into(),
        running: true,
        in_recovery: true,
        streaming: false,
        timeline: 1,
        timeline_known: true,
        wal_lsn: 2000,
        replay_lsn: 2000,
        nofailover: false,
        starting: false,
        seen_for: Duration::ZERO,
    });
    assert!(matches!(decide(&o), Action::Wait(_)));
    o.peers[0].seen_for = PEER_GRACE;
    assert!(matches!(decide(&o), Action::TakeLeader { .. }));
}

#[test]
fn replay_lag_excludes_and_lagging_peers_do_not_hold_back() {
    // Everything received, but replay (paused) far behind the last leader position.
    let mut o = base();
    o.last_leader_lsn = Some(5_000_000);
    o.pg = Pg::Running(PgRunning {
        in_recovery: true,
        timeline: 1,
        timeline_known: true,
        wal_lsn: 5_000_000,
        replay_lsn: 1000,
        streaming: false,
        not_streaming_for: Duration::ZERO,
        diverged: false,
    });
    assert!(matches!(decide(&o), Action::Wait(_)));
    // A caught-up replica is not held back by a lagging peer with more WAL.
    let mut o = base();
    o.last_leader_lsn = Some(5_000_000);
    o.pg = Pg::Running(PgRunning {
        in_recovery: true,
        timeline: 1,
        timeline_known: true,
        wal_lsn: 5_000_000,
        replay_lsn: 5_000_000,
        streaming: false,
        not_streaming_for: Duration::ZERO,
        diverged: false,
    });
    o.peers.push(Peer {
        name: "db1".into(),
        running: true,
        in_recovery: true,
        streaming: false,
        timeline: 1,
        timeline_known: true,
        wal_lsn: 5_000_001,
        replay_lsn: 1000,
        nofailover: false,
        starting: false,
        seen_for: Duration::ZERO,
    });
    assert!(matches!(decide(&o), Action::TakeLeader { .. }));
    o.peers[0].replay_lsn = 5_000_001;
    assert!(matches!(decide(&o), Action::Wait(_)));
}

fn on_tl(timeline: u32, known: bool, lsn: u64) -> Pg {
    Pg::Running(PgRunning {
        in_recovery: true,
        timeline,
        timeline_known: known,
        wal_lsn: lsn,
        replay_lsn: lsn,
        streaming: false,
        not_streaming_for: Duration::ZERO,
        diverged: false,
    })
}

fn peer(name: &str, timeline: u32, lsn: u64) -> Peer {
    Peer {
        name: name.into(),
        running: true,
        in_recovery: true,
        streaming: false,
        timeline,
        timeline_known: true,
        wal_lsn: lsn,
        replay_lsn: lsn,
        nofailover: false,
        starting: false,
        seen_for: Duration::ZERO,
    }
}

#[test]
fn synchronous_mode_the_eligible_node_with_more_wal_goes_first() {
    // A clean restart of the whole cluster: the former primary (db1, recorded in
    // /sync) holds its shutdown checkpoint, which the sync standby (db2) lacks.
    let mut o = base();
    o.synchronous = true;
    o.sync = Some(SyncKey {
        leader: "db1".into(),
        sync_standby: Some("db2".into()),
    });
    o.peers.push(peer("db1", 1, 1100));
    o.peers.push(peer("db3", 1, 5000)); // not eligible: never counts
    assert_eq!(
        decide(&o),
        Action::Wait("the other node that may promote has more WAL: it goes first")
    );
    // Its grace is over (it could not take the key): the standby goes on.
    o.peers[0].seen_for = PEER_GRACE;
    assert!(matches!(decide(&o), Action::TakeLeader { .. }));
    // With less WAL it never held the standby up.
    o.peers[0].seen_for = Duration::ZERO;
    o.peers[0].wal_lsn = 900;
    assert!(matches!(decide(&o), Action::TakeLeader { .. }));
    // The former primary itself, with more WAL than the standby: it goes.
    let mut f = o.clone();
    f.me = "db1".into();
    f.peers = vec![peer("db2", 1, 900), peer("db3", 1, 5000)];
    assert!(matches!(decide(&f), Action::TakeLeader { .. }));
    // ... and with less, it waits for the standby.
    f.peers[0].wal_lsn = 1100;
    assert!(matches!(decide(&f), Action::Wait(_)));
}

#[test]
fn a_member_arriving_during_the_vacancy_gets_its_grace() {
    // The former primary comes back while the key is vacant: first its PostgreSQL
    // starts (position unknown), then it shows more WAL. A replica that has waited
    // long for a leader still gives it PEER_GRACE from its arrival, once.
    let mut o = base();
    let mut p = peer("db1", 1, 5000);
    p.running = false;
    p.in_recovery = false;
    p.starting = true;
    o.peers.push(p);
    let Action::Wait(why) = decide(&o) else {
        panic!("{:?}", decide(&o))
    };
    assert!(why.contains("starting"), "{why}");
    o.peers[0].running = true;
    o.peers[0].in_recovery = true;
    o.peers[0].starting = false;
    o.peers[0].seen_for = Duration::from_secs(2);
    assert_eq!(decide(&o), Action::Wait("a healthier replica goes first"));
    // Restarted, it shows only its last checkpoint's timeline (a lower bound that
    // may predate its promotion): it may still be better.
    o.peers[0].timeline_known = false;
    o.peers[0].wal_lsn = 10;
    o.peers[0].replay_lsn = 10;
    assert_eq!(decide(&o), Action::Wait("a healthier replica goes first"));
    o.peers[0].timeline_known = true;
    assert!(matches!(decide(&o), Action::TakeLeader { .. }));
    o.peers[0].wal_lsn = 5000;
    o.peers[0].replay_lsn = 5000;
    // Its grace is over (it could not take the key): the others go on.
    o.peers[0].seen_for = PEER_GRACE;
    assert!(matches!(decide(&o), Action::TakeLeader { .. }));
    // A member stuck starting holds nobody up past its grace either; nor does a
    // nofailover one at all.
    o.peers[0].running = false;
    o.peers[0].starting = true;
    assert!(matches!(decide(&o), Action::TakeLeader { .. }));
    o.peers[0].seen_for = Duration::ZERO;
    o.peers[0].nofailover = true;
    assert!(matches!(decide(&o), Action::TakeLeader { .. }));
}

#[test]
fn older_timeline_never_takes_the_key() {
    let mut o = base();
    o.cluster_timeline = Some(2);
    o.pg = on_tl(1, true, 1000);
    let Action::Wait(why) = decide(&o) else {
        panic!("{:?}", decide(&o))
    };
    assert!(why.contains("older timeline"), "{why}");
    // Not even as the recorded synchronous standby...
    o.synchronous = true;
    o.sync = Some(SyncKey {
        leader: "db1".into(),
        sync_standby: Some("db2".into()),
    });
    assert!(matches!(decide(&o), Action::Wait(_)));
    // ...nor as a switchover target whose LSN (on another timeline) looks complete.
    o.failover = Some(FailoverReq {
        from: Some("db1".into()),
        to: Some("db2".into()),
        forced: false,
        min_lsn: Some(500),
        age: Duration::from_secs(1),
    });
    assert!(matches!(decide(&o), Action::Wait(_)));
    // An operator's forced failover is the way out when nothing newer is left.
    o.failover.as_mut().unwrap().forced = true;
    o.failover.as_mut().unwrap().min_lsn = None;
    assert!(matches!(decide(&o), Action::TakeLeader { .. }));
    // On the cluster's timeline (or a newer one): promoted.
    let mut o = base();
    o.cluster_timeline = Some(2);
    for t in [2, 3] {
        o.pg = on_tl(t, true, 1000);
        assert!(matches!(decide(&o), Action::TakeLeader { .. }), "tl {t}");
    }
}

#[test]
fn current_timeline_with_least_lag_wins_over_more_wal_on_an_older_one() {
    // db2 on timeline 2; db1 has more WAL, but on timeline 1 (diverged or stale):
    // it neither holds db2 back nor may take the key itself.
    let mut o = base();
    o.cluster_timeline = Some(2);
    o.pg = on_tl(2, true, 1000);
    o.peers.push(peer("db1", 1, 9000));
    assert!(matches!(decide(&o), Action::TakeLeader { .. }));
    let mut o1 = base();
    o1.me = "db1".into();
    o1.cluster_timeline = Some(2);
    o1.pg = on_tl(1, true, 9000);
    o1.peers.push(peer("db2", 2, 1000));
    o1.peers[0].seen_for = Duration::from_secs(60);
    assert!(matches!(decide(&o1), Action::Wait(_)));
    // Equal timelines: the most WAL goes first.
    o.peers.push(peer("db3", 2, 1500));
    assert!(matches!(decide(&o), Action::Wait(_)));
    o.peers[1].wal_lsn = 900;
    o.peers[1].replay_lsn = 900;
    assert!(matches!(decide(&o), Action::TakeLeader { .. }));
    // Without a recorded cluster timeline a newer timeline still goes first.
    let mut o = base();
    o.cluster_timeline = None;
    o.pg = on_tl(1, true, 9000);
    o.peers.push(peer("db3", 2, 1000));
    assert!(matches!(decide(&o), Action::Wait(_)));
}

#[test]
fn unknown_timelines_are_explicit() {
    // No cluster timeline recorded (cluster from before /timeline, or an agent that
    // never saw a leader and finds no key): the rule has nothing to compare with.
    let mut o = base();
    o.cluster_timeline = None;
    o.pg = on_tl(1, true, 1000);
    assert!(matches!(decide(&o), Action::TakeLeader { .. }));
    // Own timeline known only as a lower bound (the last checkpoint's): fine when that
    // already is the cluster's, refused when older (it may be, or may not).
    o.cluster_timeline = Some(2);
    o.pg = on_tl(2, false, 1000);
    assert!(matches!(decide(&o), Action::TakeLeader { .. }));
    o.pg = on_tl(1, false, 1000);
    let Action::Wait(why) = decide(&o) else {
        panic!("{:?}", decide(&o))
    };
    assert!(why.contains("cannot tell"), "{why}");
}

#[test]
fn stale_primary_does_not_retake_its_key() {
    // A primary frozen past its lease on timeline 1 while db3 was promoted to 2 and
    // then died: its key is gone and its lease renewed — it must demote, not lead.
    let mut o = base();
    o.cluster_timeline = Some(2);
    o.pg = Pg::Running(PgRunning {
        in_recovery: false,
        timeline: 1,
        timeline_known: true,
        wal_lsn: 1000,
        replay_lsn: 1000,
        streaming: false,
        not_streaming_for: Duration::ZERO,
        diverged: false,
    });
    assert!(matches!(decide(&o), Action::Demote { .. }));
    o.cluster_timeline = Some(1);
    assert!(matches!(decide(&o), Action::TakeLeader { .. }));
}

#[test]
fn sync_mode_only_the_sync_standby() {
    let mut o = base();
    o.synchronous = true;
    assert!(matches!(decide(&o), Action::Wait(_)));
    let key = |l: &str, s: Option<&str>| {
        Some(SyncKey {
            leader: l.into(),
            sync_standby: s.map(String::from),
        })
    };
    o.sync = key("db1", Some("db3"));
    assert!(
        matches!(decide(&o), Action::Wait(_)),
        "only db3 (or db1) may"
    );
    o.sync = key("db2", None);
    assert!(
        matches!(decide(&o), Action::TakeLeader { .. }),
        "the former primary may"
    );
    o.sync = key("db1", Some("db2"));
    assert!(matches!(decide(&o), Action::TakeLeader { .. }));
}

#[test]
fn primary_past_deadline_demotes_immediately() {
    let mut o = base();
    o.leader = Some("db2".into());
    o.pg = Pg::Running(PgRunning {
        in_recovery: false,
        timeline: 1,
        timeline_known: true,
        wal_lsn: 10,
        replay_lsn: 10,
        streaming: false,
        not_streaming_for: Duration::ZERO,
        diverged: false,
    });
    assert_eq!(decide(&o), Action::LeadRenew);
    o.now = Duration::from_secs(10);
    assert!(matches!(
        decide(&o),
        Action::Demote {
            mode: StopMode::Immediate,
            ..
        }
    ));
}

#[test]
fn switchover_target_waits_for_the_last_wal() {
    let mut o = base();
    o.synchronous = true;
    o.failover = Some(FailoverReq {
        from: Some("db1".into()),
        to: Some("db2".into()),
        forced: false,
        min_lsn: None,
        age: Duration::from_secs(1),
    });
    assert!(matches!(decide(&o), Action::Wait(_)));
    o.failover.as_mut().unwrap().min_lsn = Some(1001);
    assert!(matches!(decide(&o), Action::Wait(_)));
    o.failover.as_mut().unwrap().min_lsn = Some(1000);
    assert!(matches!(decide(&o), Action::TakeLeader { .. }));
}

#[test]
fn sync_step_goes_unpublish_switch_wait_publish() {
    let me = "db1";
    let pubd = |s: Option<&str>| SyncKey {
        leader: me.into(),
        sync_standby: s.map(String::from),
    };
    let row = |n: &str, st: &str, l: u64| ReplRow {
        name: n.into(),
        streaming: true,
        sync_state: st.into(),
        flush_lsn: l,
    };
    // Start: nothing configured, db2 streaming.
    let rows = vec![row("db2", "async", 100)];
    assert_eq!(
        sync_step(me, false, Some(&pubd(None)), None, 0, &rows, &[]),
        SyncStep::SetStandby(Some("db2".into()))
    );
    // Configured but not caught up to the mark.
    let rows = vec![row("db2", "sync", 90)];
    assert_eq!(
        sync_step(me, false, Some(&pubd(None)), Some("db2"), 100, &rows, &[]),
        SyncStep::Nothing
    );
    let rows = vec![row("db2", "sync", 100)];
    assert_eq!(
        sync_step(me, false, Some(&pubd(None)), Some("db2"), 100, &rows, &[]),
        SyncStep::Publish(Some("db2".into()))
    );
    assert_eq!(
        sync_step(
            me,
            false,
            Some(&pubd(Some("db2"))),
            Some("db2"),
            100,
            &rows,
            &[]
        ),
        SyncStep::Nothing
    );
    // db2 disappears: first un-publish, then (non-strict) clear the names.
    assert_eq!(
        sync_step(
            me,
            false,
            Some(&pubd(Some("db2"))),
            Some("db2"),
            100,
            &[],
            &[]
        ),
        SyncStep::Publish(None)
    );
    assert_eq!(
        sync_step(me, false, Some(&pubd(None)), Some("db2"), 100, &[], &[]),
        SyncStep::SetStandby(None)
    );
    assert_eq!(
        sync_step(me, true, Some(&pubd(None)), Some("db2"), 100, &[], &[]),
        SyncStep::Nothing
    );
}

// === property tests ===

fn arb_pg() -> impl Strategy<Value = Pg> {
    prop_oneof![
        Just(Pg::NoData),
        (any::<bool>(), 0u64..40).prop_map(|(w, d)| Pg::Stopped {
            was_primary: w,
            down_for: Duration::from_secs(d)
        }),
        (
            any::<bool>(),
            1u32..4,
            0u64..5000,
            0u64..3000,
            any::<bool>(),
            0u64..20,
            any::<bool>(),
        )
            .prop_map(|(r, t, l, behind, s, n, k)| Pg::Running(PgRunning {
                in_recovery: r,
                timeline: t,
                timeline_known: k,
                wal_lsn: l,
                replay_lsn: l.saturating_sub(behind),
                streaming: s,
                not_streaming_for: Duration::from_secs(n),
                diverged: n % 7 == 0,
            })),
    ]
}

fn arb_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("db1".to_string()),
        Just("db2".to_string()),
        Just("db3".to_string())
    ]
}

prop_compose! {
    fn arb_peer()(name in arb_name(), running in any::<bool>(), rec in any::<bool>(), st in any::<bool>(),
                  tl in 1u32..4, lsn in 0u64..5000, behind in 0u64..3000, nf in any::<bool>(),
                  starting in any::<bool>(), seen in 0u64..10, known in any::<bool>()) -> Peer {
        Peer { name, running, in_recovery: rec, streaming: st, timeline: tl, timeline_known: known, wal_lsn: lsn, replay_lsn: lsn.saturating_sub(behind), nofailover: nf,
               starting: starting && !running, seen_for: Duration::from_secs(seen) }
    }
}

prop_compose! {
    fn arb_failover()(from in proptest::option::of(arb_name()), to in proptest::option::of(arb_name()),
                      forced in any::<bool>(), min in proptest::option::of(0u64..5000), age in 0u64..60) -> FailoverReq {
        FailoverReq { from, to, forced, min_lsn: min, age: Duration::from_secs(age) }
    }
}

prop_compose! {
    fn arb_observed()(
        me in arb_name(), nofailover in any::<bool>(), synchronous in any::<bool>(),
        dcs_ok in any::<bool>(), initialized in any::<bool>(),
        leader in proptest::option::of(arb_name()),
        lease in proptest::option::of(0u64..20), now in 0u64..20,
        pg in arb_pg(), peers in proptest::collection::vec(arb_peer(), 0..3),
        sync in proptest::option::of((arb_name(), proptest::option::of(arb_name()))),
        failover in proptest::option::of(arb_failover()), paused in any::<bool>(),
        last in proptest::option::of(0u64..10000), lsn_full in any::<bool>(),
        cluster_tl in proptest::option::of(1u32..4), fence_ok in proptest::bool::weighted(0.8),
    ) -> Observed {
        Observed {
            me, nofailover, synchronous, max_lag_bytes: 1000, dcs_ok, initialized, leader,
            lease_valid_until: lease.map(Duration::from_secs), now: Duration::from_secs(now),
            pg, peers,
            sync: sync.map(|(l, s)| SyncKey { leader: l, sync_standby: s }),
            failover, paused, disk_full: lsn_full, stuck_after: STUCK_REPLICA_TIMEOUT, last_leader_lsn: last, cluster_timeline: cluster_tl,
            fence_ok,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    /// Only a vacant key is taken; only our own key leads to a promotion.
    #[test]
    fn never_promote_under_someone_elses_key(o in arb_observed()) {
        match decide(&o) {
            Action::TakeLeader { .. } => prop_assert!(o.leader.is_none()),
            Action::Promote => prop_assert_eq!(o.leader.as_deref(), Some(o.me.as_str())),
            _ => {}
        }
    }

    /// Without a watchdog no node leads: no promotion, no primary start, and a leading
    /// primary steps down (outside maintenance mode).
    #[test]
    fn no_leadership_without_a_watchdog(o in arb_observed()) {
        if !o.fence_ok {
            let a = decide(&o);
            prop_assert!(!a.is_promotion() || o.paused, "{:?}", a);
            prop_assert!(!matches!(a, Action::Start { primary: true, .. }) || o.paused, "{:?}", a);
            prop_assert!(!matches!(a, Action::Bootstrap), "{:?}", a);
            if let Pg::Running(pg) = &o.pg {
                let leading = !pg.in_recovery && o.dcs_ok && o.leader.as_deref() == Some(o.me.as_str())
                    && matches!(o.lease_valid_until, Some(t) if o.now < t);
                if leading && !o.paused {
                    prop_assert!(matches!(a, Action::Demote { .. }), "{:?}", a);
                }
            }
        }
    }

    /// Without etcd or without a valid lease, no promotion of any kind.
    #[test]
    fn no_promotion_without_etcd_or_lease(o in arb_observed()) {
        let lease_ok = matches!(o.lease_valid_until, Some(t) if o.now < t);
        if !o.dcs_ok || !lease_ok {
            prop_assert!(!decide(&o).is_promotion(), "{:?}", decide(&o));
        }
    }

    /// A writable primary that cannot renew before its deadline demotes (unless paused
    /// while etcd still names it leader).
    #[test]
    fn primary_past_deadline_demotes(o in arb_observed()) {
        let lease_ok = matches!(o.lease_valid_until, Some(t) if o.now < t);
        if let Pg::Running(pg) = &o.pg {
            let paused_leader = o.paused && o.dcs_ok && o.leader.as_deref() == Some(o.me.as_str());
            if !pg.in_recovery && !lease_ok && !paused_leader {
                let demoted = matches!(decide(&o), Action::Demote { mode: StopMode::Immediate, .. });
                prop_assert!(demoted);
            }
        }
    }

    /// A writable primary never stays writable while another node holds the key.
    #[test]
    fn primary_yields_to_another_leader(o in arb_observed()) {
        if let (Pg::Running(pg), Some(l)) = (&o.pg, &o.leader) {
            if !pg.in_recovery && l != &o.me && o.dcs_ok {
                let demoted = matches!(decide(&o), Action::Demote { .. });
                prop_assert!(demoted);
            }
        }
    }

    /// In synchronous mode a replica takes the key only as the recorded sync standby,
    /// or as a switchover target with all the old primary's WAL, or when forced.
    #[test]
    fn sync_mode_promotes_only_the_sync_standby(o in arb_observed()) {
        if let (Pg::Running(pg), Action::TakeLeader { .. }) = (&o.pg, decide(&o)) {
            if o.synchronous && pg.in_recovery {
                let is_sync = o.sync.as_ref().and_then(|s| s.sync_standby.as_deref()) == Some(o.me.as_str())
                    || o.sync.as_ref().is_some_and(|s| s.leader == o.me);
                let req = o.failover.as_ref().filter(|f| f.age < FAILOVER_REQUEST_TIMEOUT && f.to.as_deref() == Some(o.me.as_str()));
                let target_ok = req.is_some_and(|f| f.forced || f.min_lsn.is_some_and(|m| pg.wal_lsn >= m));
                prop_assert!(is_sync || target_ok);
            }
        }
    }

    /// nofailover and excessive lag exclude a replica from automatic promotion.
    #[test]
    fn excluded_replicas_never_take_the_key(o in arb_observed()) {
        if let (Pg::Running(pg), Action::TakeLeader { .. }) = (&o.pg, decide(&o)) {
            let operator = o.failover.as_ref().is_some_and(|f| f.age < FAILOVER_REQUEST_TIMEOUT && f.to.as_deref() == Some(o.me.as_str()));
            if pg.in_recovery && !operator {
                prop_assert!(!o.nofailover);
                prop_assert!(!o.disk_full);
                prop_assert!(!o.paused);
                if !o.synchronous {
                    if let Some(l) = o.last_leader_lsn {
                        prop_assert!(l.saturating_sub(pg.replay_lsn) <= o.max_lag_bytes);
                    }
                }
            }
        }
    }

    /// A node behind the cluster's timeline (or unsure it is not) never takes the key
    /// unless an operator forces a failover to it.
    #[test]
    fn older_timeline_never_promoted(o in arb_observed()) {
        if let (Pg::Running(pg), Action::TakeLeader { .. }) = (&o.pg, decide(&o)) {
            let forced = o.failover.as_ref().is_some_and(|f| f.age < FAILOVER_REQUEST_TIMEOUT && f.forced && f.to.as_deref() == Some(o.me.as_str()));
            if !forced {
                prop_assert!(o.cluster_timeline.is_none_or(|c| pg.timeline >= c), "{:?}", o);
            }
        }
    }

    /// The rule never blocks a node on the cluster's timeline: whatever such a node
    /// would do with no timeline recorded, it takes the key at least as readily.
    #[test]
    fn current_timeline_never_blocked_by_the_rule(o in arb_observed()) {
        if let Pg::Running(pg) = &o.pg {
            if o.cluster_timeline.is_some_and(|c| pg.timeline >= c) {
                let mut unrecorded = o.clone();
                unrecorded.cluster_timeline = None;
                if matches!(decide(&unrecorded), Action::TakeLeader { .. }) {
                    prop_assert!(matches!(decide(&o), Action::TakeLeader { .. }), "{:?}", o);
                }
            }
        }
    }

    /// /sync never names a standby that is not configured, streaming and synchronous.
    #[test]
    fn sync_publish_is_safe(
        strict in any::<bool>(), cfg in proptest::option::of(arb_name()), mark in 0u64..100,
        rows in proptest::collection::vec((arb_name(), any::<bool>(), prop_oneof![Just("sync"), Just("async"), Just("potential")], 0u64..100), 0..3),
    ) {
        let rows: Vec<ReplRow> = rows.into_iter().map(|(n, s, st, l)| ReplRow { name: n, streaming: s, sync_state: st.into(), flush_lsn: l }).collect();
        let key = SyncKey { leader: "db1".into(), sync_standby: None };
        if let SyncStep::Publish(Some(n)) = sync_step("db1", strict, Some(&key), cfg.as_deref(), mark, &rows, &[]) {
            prop_assert_eq!(Some(n.as_str()), cfg.as_deref());
            prop_assert!(rows.iter().any(|r| r.name == n && r.streaming && r.sync_state == "sync" && r.flush_lsn >= mark));
        }
    }
}
