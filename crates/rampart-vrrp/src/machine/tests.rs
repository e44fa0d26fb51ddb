use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use super::*;
use Action::*;

const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 100));

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Priority `prio`, primary 10.0.0.10, 1 s, preempt on without delay, repeat after 1 s.
fn cfg(prio: u8) -> RouterConfig {
    RouterConfig::new(51, prio, ip(10), vec![VIP])
}

fn ad(prio: u8) -> Advert {
    Advert {
        vrid: 51,
        priority: prio,
        interval_cs: 100,
        addrs: vec![VIP],
    }
}

fn tr(from: State, to: State, cause: Cause) -> Action {
    Transition { from, to, cause }
}

/// A started backup of priority `prio` (at `t0`).
fn backup(c: RouterConfig, t0: Instant) -> Router {
    let mut r = Router::new(c).unwrap();
    let a = r.start(t0);
    assert_eq!(a, [tr(State::Init, State::Backup, Cause::Startup)]);
    r
}

/// A router of priority `prio` that became master at `t0 + its down interval`; returns it
/// and that instant.
fn master(c: RouterConfig, t0: Instant) -> (Router, Instant) {
    let mut r = backup(c, t0);
    let t = r.next_deadline().unwrap();
    assert_eq!(r.on_timer(t).len(), 4);
    assert_eq!(r.state(), State::Master);
    (r, t)
}

#[test]
fn config_validation() {
    assert!(cfg(100).validate().is_ok());
    assert!(cfg(255).validate().is_ok(), "the address owner");
    let bad = |f: &dyn Fn(&mut RouterConfig)| {
        let mut c = cfg(100);
        f(&mut c);
        Router::new(c).unwrap_err()
    };
    assert_eq!(bad(&|c| c.vrid = 0), ConfigError::ZeroVrid);
    assert_eq!(bad(&|c| c.priority = 0), ConfigError::ZeroPriority);
    assert_eq!(
        bad(&|c| c.interval = ms(5)),
        ConfigError::IntervalOutOfRange(ms(5))
    );
    assert_eq!(
        bad(&|c| c.interval = ms(40_960)),
        ConfigError::IntervalOutOfRange(ms(40_960))
    );
    assert_eq!(
        bad(&|c| c.interval = ms(1_005)),
        ConfigError::IntervalNotCentiseconds(ms(1_005))
    );
    assert_eq!(bad(&|c| c.addrs.clear()), ConfigError::NoAddresses);
    assert_eq!(
        bad(&|c| c.addrs = (0..=255).map(|i| ip(i as u8)).chain([ip(1)]).collect()),
        ConfigError::TooManyAddresses(257)
    );
    assert_eq!(
        bad(&|c| c.addrs.push(VIP)),
        ConfigError::DuplicateAddress(VIP)
    );
    let v6: IpAddr = "2001:db8::1".parse().unwrap();
    assert_eq!(
        bad(&|c| c.addrs.push(v6)),
        ConfigError::MixedFamilies {
            addr: v6,
            primary: ip(10)
        }
    );
    let mc: IpAddr = "224.0.0.18".parse().unwrap();
    assert_eq!(bad(&|c| c.addrs.push(mc)), ConfigError::InvalidAddress(mc));
    let any: IpAddr = "0.0.0.0".parse().unwrap();
    assert_eq!(bad(&|c| c.primary = any), ConfigError::InvalidPrimary(any));
    // Both ends of the range, and the centiseconds they advertise.
    for (iv, cs) in [(ms(10), 1), (ms(40_950), 4095), (ms(1_000), 100)] {
        let mut c = cfg(100);
        c.interval = iv;
        assert!(c.validate().is_ok());
        assert_eq!(c.interval_cs(), cs);
    }
    let msg = bad(&|c| c.interval = ms(1_005)).to_string();
    assert!(msg.contains("centiseconds"), "{msg}");
}

#[test]
fn start_arms_the_master_down_timer() {
    let t0 = Instant::now();
    let r = backup(cfg(100), t0);
    // Skew = (256 - 100) * 1 s / 256 = 609.375 ms; down = 3 s + skew.
    assert_eq!(r.skew_time(), Duration::from_micros(609_375));
    assert_eq!(r.master_down_interval(), Duration::from_micros(3_609_375));
    assert_eq!(
        r.next_deadline(),
        Some(t0 + Duration::from_micros(3_609_375))
    );
    assert_eq!(r.master_seen(), None);
}

#[test]
fn start_twice_does_nothing() {
    let t0 = Instant::now();
    let mut r = backup(cfg(100), t0);
    assert!(r.start(t0 + ms(10)).is_empty());
    assert_eq!(r.next_deadline(), Some(t0 + r.master_down_interval()));
}

#[test]
fn address_owner_starts_as_master() {
    let t0 = Instant::now();
    let mut r = Router::new(cfg(255)).unwrap();
    assert_eq!(
        r.start(t0),
        [
            tr(State::Init, State::Master, Cause::Startup),
            AddAddresses,
            Announce,
            SendAdvert { priority: 255 },
        ]
    );
    // With a penalty it is no longer 255 and starts as a backup.
    let mut r = Router::new(cfg(255)).unwrap();
    r.set_penalty(t0, 1);
    assert_eq!(
        r.start(t0)[0],
        tr(State::Init, State::Backup, Cause::Startup)
    );
}

#[test]
fn an_inherited_mastership_skips_the_backup_phase_and_then_behaves_as_any_master() {
    let t0 = Instant::now();
    let mut r = Router::new(cfg(100)).unwrap();
    assert_eq!(
        r.resume_master(t0),
        [
            tr(State::Init, State::Master, Cause::Inherited),
            AddAddresses,
            Announce,
            SendAdvert { priority: 100 },
        ]
    );
    assert_eq!(r.state(), State::Master);
    // Only once: a started router is left alone, by either start.
    assert!(r.resume_master(t0 + ms(5)).is_empty());
    assert!(r.start(t0 + ms(5)).is_empty());
    // A higher priority on the link still deposes it, as it would any master.
    let acts = r.on_advert(t0 + ms(20), ip(20), &ad(200));
    assert_eq!(
        acts.as_slice()[0],
        tr(State::Master, State::Backup, Cause::HigherPriorityMaster)
    );
}

#[test]
fn down_timer_expiry_takes_over_and_repeats_the_announcement() {
    let t0 = Instant::now();
    let mut r = backup(cfg(100), t0);
    let t = r.next_deadline().unwrap();
    assert!(
        r.on_timer(t - ms(1)).is_empty(),
        "nothing before the deadline"
    );
    assert_eq!(
        r.on_timer(t),
        [
            tr(State::Backup, State::Master, Cause::MasterDownTimerExpired),
            AddAddresses,
            Announce,
            SendAdvert { priority: 100 },
        ]
    );
    assert!(r.state().holds_addresses());
    assert_eq!(r.next_deadline(), Some(t + ms(1000)));
    // The repeat (1 s) falls with the next advert (1 s).
    assert_eq!(
        r.on_timer(t + ms(1000)),
        [SendAdvert { priority: 100 }, Announce]
    );
    assert_eq!(r.on_timer(t + ms(2000)), [SendAdvert { priority: 100 }]);
    assert_eq!(r.next_deadline(), Some(t + ms(3000)));

    // A repeat after 300 ms, and none with zero.
    let mut c = cfg(100);
    c.announce_repeat = ms(300);
    let (mut r, t) = master(c, t0);
    assert_eq!(r.next_deadline(), Some(t + ms(300)));
    assert_eq!(r.on_timer(t + ms(300)), [Announce]);
    assert_eq!(r.next_deadline(), Some(t + ms(1000)));
    let mut c = cfg(100);
    c.announce_repeat = Duration::ZERO;
    let (mut r, t) = master(c, t0);
    assert_eq!(r.on_timer(t + ms(1000)), [SendAdvert { priority: 100 }]);
}

#[test]
fn backup_learns_the_master_interval() {
    let t0 = Instant::now();
    let mut r = backup(cfg(100), t0);
    let mut slow = ad(200);
    slow.interval_cs = 200;
    let t1 = t0 + ms(500);
    assert!(r.on_advert(t1, ip(20), &slow).is_empty());
    assert_eq!(r.master_adver_interval(), ms(2000));
    // 3 * 2 s + (156 * 2 s) / 256
    assert_eq!(
        r.next_deadline(),
        Some(t1 + Duration::from_micros(7_218_750))
    );
    assert_eq!(r.master_seen(), Some((ip(20), 200)));
}

#[test]
fn backup_accepts_higher_and_equal_priorities() {
    let t0 = Instant::now();
    let mut r = backup(cfg(100), t0);
    for (i, p) in [100u8, 150, 255].into_iter().enumerate() {
        let t = t0 + ms(1000 * (i as u64 + 1));
        assert!(r.on_advert(t, ip(20), &ad(p)).is_empty());
        assert_eq!(r.next_deadline(), Some(t + r.master_down_interval()));
        assert_eq!(r.state(), State::Backup);
    }
}

#[test]
fn priority_zero_brings_the_takeover_to_skew_time() {
    let t0 = Instant::now();
    let mut r = backup(cfg(100), t0);
    r.on_advert(t0 + ms(500), ip(20), &ad(200));
    assert_eq!(r.master_seen(), Some((ip(20), 200)));
    let t1 = t0 + ms(900);
    assert!(r.on_advert(t1, ip(20), &ad(0)).is_empty());
    assert_eq!(r.master_seen(), None, "it said it is leaving");
    assert_eq!(r.next_deadline(), Some(t1 + r.skew_time()));
    let a = r.on_timer(t1 + r.skew_time());
    assert_eq!(
        a[0],
        tr(State::Backup, State::Master, Cause::PriorityZeroReceived)
    );
    // A priority 0 never postpones a takeover already closer than Skew_Time.
    let mut r = backup(cfg(100), t0);
    let due = r.next_deadline().unwrap();
    r.on_advert(due - ms(10), ip(20), &ad(0));
    assert_eq!(r.next_deadline(), Some(due));
}

#[test]
fn lower_priority_with_preempt_is_ignored_then_taken_over() {
    let t0 = Instant::now();
    let mut r = backup(cfg(200), t0);
    let due = r.next_deadline().unwrap();
    for k in 1..4 {
        assert!(r.on_advert(t0 + ms(1000 * k), ip(20), &ad(100)).is_empty());
    }
    assert_eq!(
        r.next_deadline(),
        Some(due),
        "lower adverts do not reset it"
    );
    assert_eq!(
        r.on_timer(due)[0],
        tr(State::Backup, State::Master, Cause::Preempted)
    );
}

#[test]
fn lower_priority_without_preempt_is_a_valid_master() {
    let t0 = Instant::now();
    let mut c = cfg(200);
    c.preempt = false;
    let mut r = backup(c, t0);
    for k in 1..20 {
        let t = t0 + ms(1000 * k);
        assert!(r.on_timer(t).is_empty());
        assert!(r.on_advert(t, ip(20), &ad(100)).is_empty());
        assert_eq!(r.next_deadline(), Some(t + r.master_down_interval()));
    }
    assert_eq!(r.state(), State::Backup);
}

#[test]
fn preempt_delay_counts_from_the_first_lower_advert() {
    let t0 = Instant::now();
    let mut c = cfg(200);
    c.preempt_delay = ms(5000);
    let mut r = backup(c, t0);
    // Heard first at 1 s; accepted up to (not including) 6 s.
    let mut last_reset = t0;
    for k in 1..=10 {
        let t = t0 + ms(1000 * k);
        assert!(r.on_timer(t).is_empty(), "no takeover at {k} s");
        r.on_advert(t, ip(20), &ad(100));
        if k < 6 {
            assert_eq!(r.next_deadline(), Some(t + r.master_down_interval()));
            last_reset = t;
        } else {
            assert_eq!(
                r.next_deadline(),
                Some(last_reset + r.master_down_interval())
            );
        }
        if r.next_deadline().unwrap() <= t0 + ms(1000 * (k + 1)) {
            break;
        }
    }
    // Last accepted at 5 s: takeover at 5 s + 3 s + (56 / 256) s.
    let due = t0 + ms(5000) + r.master_down_interval();
    assert_eq!(r.next_deadline(), Some(due));
    assert_eq!(
        r.on_timer(due)[0],
        tr(State::Backup, State::Master, Cause::Preempted)
    );

    // A master with priority at least ours in between starts the delay again.
    let mut c = cfg(200);
    c.preempt_delay = ms(2500);
    let mut r = backup(c, t0);
    r.on_advert(t0 + ms(1000), ip(20), &ad(100));
    r.on_advert(t0 + ms(2000), ip(21), &ad(250));
    let t = t0 + ms(4000);
    r.on_advert(t, ip(20), &ad(100));
    assert_eq!(r.next_deadline(), Some(t + r.master_down_interval()));
}

#[test]
fn master_advertises_its_effective_priority() {
    let t0 = Instant::now();
    let (mut r, t) = master(cfg(100), t0);
    assert!(r.set_penalty(t, 30).is_empty());
    assert_eq!(r.effective_priority(), 70);
    assert_eq!(r.on_timer(t + ms(1000))[0], SendAdvert { priority: 70 });
    r.set_penalty(t, 250);
    assert_eq!(r.effective_priority(), 1, "floored at 1");
    assert_eq!(r.on_timer(t + ms(2000)), [SendAdvert { priority: 1 }]);
    r.set_penalty(t, 0);
    assert_eq!(r.on_timer(t + ms(3000)), [SendAdvert { priority: 100 }]);
}

#[test]
fn master_answers_priority_zero_at_once() {
    let t0 = Instant::now();
    let (mut r, t) = master(cfg(100), t0);
    let t1 = t + ms(400);
    assert_eq!(
        r.on_advert(t1, ip(20), &ad(0)),
        [SendAdvert { priority: 100 }]
    );
    assert_eq!(
        r.next_deadline(),
        Some(t + ms(1000)),
        "the repeat comes first"
    );
    r.on_timer(t + ms(1000));
    assert_eq!(r.next_deadline(), Some(t1 + ms(1000)));
}

#[test]
fn master_yields_to_a_higher_priority() {
    let t0 = Instant::now();
    let (mut r, t) = master(cfg(100), t0);
    let mut higher = ad(101);
    higher.interval_cs = 50;
    let t1 = t + ms(100);
    assert_eq!(
        r.on_advert(t1, ip(2), &higher),
        [
            tr(State::Master, State::Backup, Cause::HigherPriorityMaster),
            RemoveAddresses,
            // The parting advert: the new master hears a lower one and re-announces.
            SendAdvert { priority: 100 },
        ]
    );
    assert_eq!(r.master_adver_interval(), ms(500));
    assert_eq!(r.next_deadline(), Some(t1 + r.master_down_interval()));
    assert_eq!(r.master_seen(), Some((ip(2), 101)));
}

#[test]
fn equal_priorities_break_the_tie_by_address() {
    let t0 = Instant::now();
    // We are 10.0.0.10: 10.0.0.11 wins, 10.0.0.9 loses.
    let (mut r, t) = master(cfg(100), t0);
    assert_eq!(
        r.on_advert(t, ip(9), &ad(100)),
        [SendAdvert { priority: 100 }, Announce]
    );
    assert_eq!(r.state(), State::Master);
    assert_eq!(
        r.on_advert(t, ip(11), &ad(100))[0],
        tr(State::Master, State::Backup, Cause::HigherPriorityMaster)
    );
}

#[test]
fn master_reasserts_against_a_lower_master() {
    let t0 = Instant::now();
    let (mut r, t) = master(cfg(200), t0);
    let t1 = t + ms(700);
    assert_eq!(
        r.on_advert(t1, ip(20), &ad(100)),
        [SendAdvert { priority: 200 }, Announce]
    );
    assert_eq!(r.state(), State::Master);
    assert_eq!(r.master_seen(), Some((ip(20), 100)));
    // The periodic advert restarts from the reassertion.
    r.on_timer(t + ms(1000)); // the announcement repeat
    assert_eq!(r.next_deadline(), Some(t1 + ms(1000)));
}

#[test]
fn clean_stop_waits_for_the_successor() {
    let t0 = Instant::now();
    let (mut r, t) = master(cfg(200), t0);
    assert_eq!(
        r.shutdown(t),
        [
            tr(State::Master, State::Stopping, Cause::Shutdown),
            SendAdvert { priority: 0 },
        ]
    );
    assert!(r.state().holds_addresses());
    assert!(r.shutdown(t).is_empty(), "a second call does nothing");
    assert_eq!(
        r.next_deadline(),
        Some(t + ms(1000)),
        "no announcement repeat"
    );
    assert_eq!(r.on_timer(t + ms(1000)), [SendAdvert { priority: 0 }]);
    // Another stopping router's priority 0 is not a successor.
    assert!(r.on_advert(t + ms(1200), ip(20), &ad(0)).is_empty());
    assert_eq!(
        r.on_advert(t + ms(1500), ip(20), &ad(100)),
        [
            tr(State::Stopping, State::Init, Cause::SuccessorSeen),
            RemoveAddresses,
            Stopped,
        ]
    );
    assert_eq!(r.state(), State::Init);
    assert_eq!(r.next_deadline(), None);
    // It can start again.
    assert_eq!(
        r.start(t + ms(2000))[0],
        tr(State::Init, State::Backup, Cause::Startup)
    );
}

#[test]
fn clean_stop_gives_up_after_three_intervals_and_a_second() {
    let t0 = Instant::now();
    let (mut r, t) = master(cfg(200), t0);
    r.shutdown(t);
    for k in 1..=3 {
        assert_eq!(r.on_timer(t + ms(1000 * k)), [SendAdvert { priority: 0 }]);
    }
    assert_eq!(r.next_deadline(), Some(t + ms(4000)));
    assert_eq!(
        r.on_timer(t + ms(4000)),
        [
            tr(State::Stopping, State::Init, Cause::StopTimedOut),
            RemoveAddresses,
            Stopped,
        ]
    );
    assert_eq!(r.next_deadline(), None);
}

#[test]
fn other_states_stop_at_once() {
    let t0 = Instant::now();
    let mut r = Router::new(cfg(100)).unwrap();
    assert_eq!(r.shutdown(t0), [Stopped]);
    let mut r = backup(cfg(100), t0);
    assert_eq!(
        r.shutdown(t0),
        [tr(State::Backup, State::Init, Cause::Shutdown), Stopped]
    );
    assert_eq!(r.next_deadline(), None);
    let mut r = backup(cfg(100), t0);
    r.set_fault(t0, true);
    assert_eq!(
        r.shutdown(t0),
        [tr(State::Fault, State::Init, Cause::Shutdown), Stopped]
    );
}

#[test]
fn fault_releases_and_silences_a_master() {
    let t0 = Instant::now();
    let (mut r, t) = master(cfg(200), t0);
    assert_eq!(
        r.set_fault(t, true),
        [
            tr(State::Master, State::Fault, Cause::Fault),
            SendAdvert { priority: 0 },
            RemoveAddresses,
        ]
    );
    assert!(r.set_fault(t, true).is_empty(), "already faulted");
    assert_eq!(r.next_deadline(), None, "no adverts in Fault");
    assert!(r.on_advert(t, ip(20), &ad(100)).is_empty());
    assert!(r.on_timer(t + ms(10_000)).is_empty());
    let t1 = t + ms(20_000);
    assert_eq!(
        r.set_fault(t1, false),
        [tr(State::Fault, State::Backup, Cause::FaultCleared)]
    );
    assert_eq!(r.next_deadline(), Some(t1 + r.master_down_interval()));
}

#[test]
fn fault_before_start_and_while_stopping() {
    let t0 = Instant::now();
    let mut r = Router::new(cfg(100)).unwrap();
    assert!(r.set_fault(t0, true).is_empty());
    assert_eq!(r.start(t0), [tr(State::Init, State::Fault, Cause::Fault)]);
    assert!(r.is_faulted());

    let (mut r, t) = master(cfg(200), t0);
    r.shutdown(t);
    assert_eq!(
        r.set_fault(t, true),
        [
            tr(State::Stopping, State::Init, Cause::Fault),
            RemoveAddresses,
            Stopped,
        ]
    );
    // A backup just stops listening.
    let mut r = backup(cfg(100), t0);
    assert_eq!(
        r.set_fault(t0, true),
        [tr(State::Backup, State::Fault, Cause::Fault)]
    );
    assert_eq!(r.next_deadline(), None);
}

#[test]
fn foreign_and_own_adverts_are_ignored() {
    let t0 = Instant::now();
    let (mut r, t) = master(cfg(100), t0);
    let mut other_vrid = ad(250);
    other_vrid.vrid = 52;
    assert!(r.on_advert(t, ip(20), &other_vrid).is_empty());
    let v6: IpAddr = "fe80::20".parse().unwrap();
    assert!(r.on_advert(t, v6, &ad(250)).is_empty());
    assert!(r.on_advert(t, ip(10), &ad(250)).is_empty(), "our own");
    let mut zero_iv = ad(250);
    zero_iv.interval_cs = 0;
    assert!(r.on_advert(t, ip(20), &zero_iv).is_empty());
    assert_eq!(r.state(), State::Master);
    assert_eq!(r.master_seen(), None);
    // Not started: adverts are only noted.
    let mut r = Router::new(cfg(100)).unwrap();
    assert!(r.on_advert(t0, ip(20), &ad(100)).is_empty());
    assert_eq!(r.next_deadline(), None);
}

#[test]
fn advert_and_address_check_helpers() {
    let r = Router::new(cfg(100)).unwrap();
    let a = r.advert(0);
    assert_eq!(a, ad(0));
    let bytes = a
        .encode(ip(10), IpAddr::V4(crate::packet::GROUP_V4))
        .unwrap();
    assert_eq!(bytes.len(), 12);
    assert!(r.addresses_match(&ad(100)));
    let mut other = ad(100);
    other.addrs.push(ip(101));
    assert!(!r.addresses_match(&other));
    other.addrs = vec![ip(101)];
    assert!(!r.addresses_match(&other));
}

#[test]
fn actions_iterate_by_value_and_by_reference() {
    let t0 = Instant::now();
    let mut r = Router::new(cfg(255)).unwrap();
    let a = r.start(t0);
    let by_ref: Vec<Action> = (&a).into_iter().copied().collect();
    let by_val: Vec<Action> = a.into_iter().collect();
    assert_eq!(by_ref, by_val);
    assert_eq!(by_val.len(), 4);
    assert_eq!(format!("{a:?}"), format!("{by_val:?}"));
    assert_eq!(
        Cause::MasterDownTimerExpired.to_string(),
        "master-down-timer-expired"
    );
    assert_eq!(State::Stopping.to_string(), "stopping");
}

#[test]
fn settled_means_the_state_holds_as_things_stand() {
    let t0 = Instant::now();
    // Not started, a fresh backup (no master heard: its down timer will run out).
    let mut r = Router::new(cfg(100)).unwrap();
    assert!(!r.is_settled(t0));
    r.start(t0);
    assert!(!r.is_settled(t0));
    // Following a master of at least its priority.
    r.on_advert(t0 + ms(100), ip(20), &ad(100));
    assert!(r.is_settled(t0 + ms(100)));
    r.on_advert(t0 + ms(200), ip(20), &ad(150));
    assert!(r.is_settled(t0 + ms(200)));
    // The master leaves (priority 0): the backup takes over after Skew_Time.
    r.on_advert(t0 + ms(300), ip(20), &ad(0));
    assert!(!r.is_settled(t0 + ms(300)));

    // A backup that outranks the master it hears will preempt...
    let mut r = backup(cfg(200), t0);
    r.on_advert(t0 + ms(100), ip(20), &ad(100));
    assert!(!r.is_settled(t0 + ms(100)));
    // ... unless preempt is off,
    let mut c = cfg(200);
    c.preempt = false;
    let mut r = backup(c, t0);
    r.on_advert(t0 + ms(100), ip(20), &ad(100));
    assert!(r.is_settled(t0 + ms(100)));
    // ... or while its preempt delay runs (from the first lower advert).
    let mut c = cfg(200);
    c.preempt_delay = ms(5000);
    let mut r = backup(c, t0);
    r.on_advert(t0 + ms(1000), ip(20), &ad(100));
    assert!(r.is_settled(t0 + ms(1000)));
    r.on_advert(t0 + ms(5900), ip(20), &ad(100));
    assert!(r.is_settled(t0 + ms(5999)));
    assert!(!r.is_settled(t0 + ms(6000)));
    // A penalty that brings it under the master makes it a follower again.
    let mut r = backup(cfg(200), t0);
    r.on_advert(t0 + ms(100), ip(20), &ad(150));
    assert!(!r.is_settled(t0 + ms(100)));
    r.set_penalty(t0 + ms(150), 60);
    assert!(r.is_settled(t0 + ms(150)));

    // A master and a faulted router are settled; a stopping master is not.
    let (mut m, t) = master(cfg(100), t0);
    assert!(m.is_settled(t));
    m.shutdown(t + ms(10));
    assert_eq!(m.state(), State::Stopping);
    assert!(!m.is_settled(t + ms(10)));
    let mut f = backup(cfg(100), t0);
    f.set_fault(t0 + ms(10), true);
    assert!(f.is_settled(t0 + ms(10)));
}
