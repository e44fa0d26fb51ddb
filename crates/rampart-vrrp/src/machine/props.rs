//! Property tests over the simulation in `sim.rs`: (a) one master after every heal,
//! (b) a crashed master is replaced within the master down interval, (c) preemption
//! follows `preempt` and `preempt_delay`, (d) a clean stop never leaves the addresses
//! unheld, (e) once every router is settled with one master, nobody takes over.

use std::time::Duration;

use proptest::prelude::*;

use super::sim::{Ev, Rng, World};
use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn interval() -> impl Strategy<Value = Duration> {
    prop_oneof![Just(ms(100)), Just(ms(300)), Just(ms(1000))]
}

/// A priority: mostly spread out, sometimes tied, rarely the owner's 255.
fn priority(rng: &mut Rng) -> u8 {
    match rng.below(10) {
        0 => 255,
        1..=3 => 100,
        _ => 1 + rng.below(254) as u8,
    }
}

/// N routers with random priorities, preempt and preempt delay (up to `max_delay`).
fn routers(rng: &mut Rng, n: usize, iv: Duration, max_delay: Duration) -> Vec<RouterConfig> {
    (0..n)
        .map(|i| {
            let mut c = World::config(i, priority(rng), iv);
            c.preempt = rng.chance(70);
            if rng.chance(50) {
                c.preempt_delay = rng.between(Duration::ZERO, max_delay);
            }
            c
        })
        .collect()
}

fn latency(rng: &mut Rng) -> (Duration, Duration) {
    let lo = Duration::from_micros(100);
    (lo, rng.between(lo * 2, ms(5)))
}

/// 3 × interval + the largest skew + one interval, plus one latency and a tick.
fn heal_bound(iv: Duration, lat: (Duration, Duration)) -> Duration {
    iv * 4 + iv * 255 / 256 + lat.1 + ms(1)
}

/// Starts every router within the first interval and runs until one master is left
/// (preemption included); returns it.
fn converge(w: &mut World, iv: Duration, max_delay: Duration) -> usize {
    for i in 0..w.nodes.len() {
        let t = w.rng.between(Duration::ZERO, iv);
        w.at(t, Ev::Restart(i));
    }
    let mut t = iv * 12 + max_delay * 2;
    for _ in 0..1000 {
        w.run_until(t);
        if let [m] = w.masters()[..] {
            return m;
        }
        t += w.lat.1 + ms(1);
    }
    w.fail("no single master after start");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// (a) Partitions (one-way or both ways), crashes, restarts, clean stops, faults and
    /// penalties; after every heal followed by a quiet period, and after the final heal
    /// (everything restarted, faults cleared), exactly one router is master within
    /// 3 × interval + skew + one interval.
    #[test]
    fn one_master_after_every_heal(seed in any::<u64>(), n in 2usize..=4, iv in interval()) {
        let mut rng = Rng(seed);
        let cfgs = routers(&mut rng, n, iv, iv * 3);
        let lat = latency(&mut rng);
        let bound = heal_bound(iv, lat);
        let mut w = World::new(cfgs, rng.next(), lat);
        for i in 0..n {
            w.at(rng.between(Duration::ZERO, iv * 2), Ev::Restart(i));
        }
        let mut times = Vec::new();
        let mut t = iv * 2;
        for _ in 0..rng.below(15) {
            t += rng.between(iv / 2, iv * 12);
            times.push(t);
        }
        let end = t + rng.between(iv, iv * 8);
        for (j, &t) in times.iter().enumerate() {
            let node = rng.below(n as u64) as usize;
            let other = (node + 1 + rng.below(n as u64 - 1) as usize) % n;
            let ev = match rng.below(100) {
                0..=24 => {
                    if rng.chance(50) {
                        w.at(t, Ev::Cut { from: other, to: node });
                    }
                    Ev::Cut { from: node, to: other }
                }
                25..=49 => Ev::Heal,
                50..=61 => Ev::Crash(node),
                62..=73 => Ev::Restart(node),
                74..=81 => Ev::Stop(node),
                82..=89 => Ev::Fault(node, rng.chance(50)),
                _ => Ev::Penalty(node, if rng.chance(30) { 0 } else { rng.below(120) as u8 }),
            };
            let next = times.get(j + 1).copied().unwrap_or(end);
            let quiet = next > t + bound + lat.1 * 2 + ms(2);
            if matches!(ev, Ev::Heal) && quiet {
                w.at(t + bound, Ev::Check);
            }
            w.at(t, ev);
        }
        w.at(end, Ev::Heal);
        for i in 0..n {
            w.at(end, Ev::Fault(i, false));
            w.at(end, Ev::Restart(i));
        }
        w.at(end + bound, Ev::Check);
        w.run_until(end + bound + iv * 6);
    }

    /// (b) When the master crashes, a backup takes over within its master down interval
    /// (counted from the crash, plus the latency of the master's last advert and a tick).
    #[test]
    fn crashed_master_is_replaced_within_the_down_interval(
        seed in any::<u64>(), n in 2usize..=4, iv in interval(),
    ) {
        let mut rng = Rng(seed);
        let cfgs = routers(&mut rng, n, iv, iv * 2);
        let lat = latency(&mut rng);
        let mut w = World::new(cfgs, rng.next(), lat);
        let m = converge(&mut w, iv, iv * 2);
        let t_x = w.now + w.rng.between(Duration::ZERO, iv);
        w.run_until(t_x);
        let m = match w.masters()[..] {
            [x] => x,
            _ => m,
        };
        let down = (0..n)
            .filter(|&b| b != m && w.nodes[b].running)
            .map(|b| w.nodes[b].r.master_down_interval())
            .min()
            .unwrap();
        w.at(t_x, Ev::Crash(m));
        let limit = t_x + down + lat.1 + ms(1);
        w.run_until(limit);
        let taken = w.takeovers.iter().any(|&(t, b, _)| b != m && t > t_x && t <= limit);
        prop_assert!(taken, "no takeover within {:?} of the crash", down + lat.1);
        w.at(limit + heal_bound(iv, lat), Ev::Check);
        w.run_until(limit + heal_bound(iv, lat) + iv);
    }

    /// (c) A higher-priority router coming back: with preempt off it leaves the working
    /// master alone; with preempt on it takes over once `preempt_delay` has passed since
    /// it first heard the master, within one master down interval after that.
    #[test]
    fn higher_priority_router_preempts_only_when_allowed(
        seed in any::<u64>(), preempt in any::<bool>(), extra in 0usize..=2, iv in interval(),
    ) {
        let mut rng = Rng(seed);
        let low = 2 + rng.below(140) as u8;
        let mut cfgs = vec![
            World::config(0, 150 + rng.below(105) as u8, iv),
            World::config(1, low, iv),
        ];
        cfgs[0].preempt = preempt;
        cfgs[0].preempt_delay = rng.between(Duration::ZERO, iv * 4);
        cfgs[1].preempt = rng.chance(50);
        for i in 0..extra {
            let mut c = World::config(2 + i, 1 + rng.below(u64::from(low) - 1) as u8, iv);
            c.preempt = rng.chance(50);
            cfgs.push(c);
        }
        let delay = cfgs[0].preempt_delay;
        let lat = latency(&mut rng);
        let mut w = World::new(cfgs, rng.next(), lat);
        // The low router is master first, the others follow it.
        w.at(Duration::ZERO, Ev::Restart(1));
        for i in 0..extra {
            w.at(iv, Ev::Restart(2 + i));
        }
        w.run_until(iv * 10);
        prop_assert_eq!(w.masters(), vec![1]);
        let t_s = w.now + rng.between(Duration::ZERO, iv);
        w.at(t_s, Ev::Restart(0));
        w.run_until(t_s);
        let down = Router::new(w.nodes[0].cfg.clone()).unwrap().master_down_interval();
        let end = t_s + (down + iv) * 3 + delay * 2;
        w.run_until(end);
        let by_h: Vec<_> = w.takeovers.iter().filter(|t| t.1 == 0).copied().collect();
        if !preempt {
            prop_assert!(by_h.is_empty(), "took over without preempt: {:?}", by_h);
            prop_assert_eq!(w.masters(), vec![1]);
            prop_assert!(w.takeovers.iter().all(|t| t.0 < t_s), "{:?}", w.takeovers);
        } else {
            let t_f = w.heard[0][1].unwrap();
            prop_assert_eq!(by_h.len(), 1, "{:?}", by_h);
            let (t_take, _, cause) = by_h[0];
            prop_assert_eq!(cause, Cause::Preempted);
            prop_assert!(t_take >= t_f + delay, "{:?} < {:?} + {:?}", t_take, t_f, delay);
            prop_assert!(t_take <= t_f + delay + down + ms(1), "{:?} too late", t_take);
            prop_assert_eq!(w.masters(), vec![0]);
        }
    }

    /// (d) A clean stop of the master: at every event some router holds the addresses
    /// (the successor adds them before the stopping master removes them), the stop ends
    /// on the successor's first advert, and one master is left.
    #[test]
    fn clean_stop_never_leaves_the_addresses_unheld(
        seed in any::<u64>(), n in 2usize..=4, iv in interval(),
    ) {
        let mut rng = Rng(seed);
        let cfgs = routers(&mut rng, n, iv, iv * 2);
        let lat = latency(&mut rng);
        let mut w = World::new(cfgs, rng.next(), lat);
        converge(&mut w, iv, iv * 2);
        let t_stop = w.now + w.rng.between(Duration::ZERO, iv);
        w.run_until(t_stop);
        let m = match w.masters()[..] {
            [x] => x,
            ref other => w.fail(&format!("masters {other:?} before the stop")),
        };
        let skew = (0..n)
            .filter(|&b| b != m)
            .map(|b| w.nodes[b].r.skew_time())
            .min()
            .unwrap();
        w.watch_holders = true;
        w.at(t_stop, Ev::Stop(m));
        let limit = t_stop + heal_bound(iv, lat) + iv * 4 + STOP_GRACE;
        w.at(limit, Ev::Check);
        w.run_until(limit + iv);
        let stop = w.stops.iter().find(|s| s.1 == m).copied();
        let (t, _, cause) = stop.unwrap();
        prop_assert_eq!(cause, Cause::SuccessorSeen);
        if t > t_stop + skew + lat.1 * 2 + ms(1) {
            w.fail(&format!("stop took {:?}", t - t_stop));
        }
        prop_assert!(!w.nodes[m].running);
    }

    /// (e) Routers started at random moments (a balancer pair started together, one of
    /// them a little late), preempt on or off without delay, nothing failing: from the
    /// first moment every router is settled ([`Router::is_settled`]) and exactly one is
    /// master, that master stays master and nobody takes over. What `rampart up` waits
    /// for before it says the virtual IPs are held.
    #[test]
    fn once_every_router_is_settled_the_master_stays(
        seed in any::<u64>(), n in 2usize..=4, iv in prop_oneof![Just(ms(100)), Just(ms(300))],
    ) {
        let mut rng = Rng(seed);
        let cfgs: Vec<_> = (0..n)
            .map(|i| {
                let mut c = World::config(i, priority(&mut rng), iv);
                c.preempt = rng.chance(70);
                c
            })
            .collect();
        let lat = latency(&mut rng);
        let mut w = World::new(cfgs, rng.next(), lat);
        let mut last_start = Duration::ZERO;
        for i in 0..n {
            let t = rng.between(Duration::ZERO, iv * 2);
            last_start = last_start.max(t);
            w.at(t, Ev::Restart(i));
        }
        let end = iv * 20;
        let mut t = last_start;
        let settled = loop {
            w.run_until(t);
            let now = w.instant();
            let all = w.nodes.iter().all(|n| n.running && n.r.is_settled(now));
            if let ([m], true) = (&w.masters()[..], all) {
                break (t, *m);
            }
            t += ms(1);
            if t > end {
                w.fail("never settled");
            }
        };
        let (t_s, m) = settled;
        w.run_until(end);
        prop_assert_eq!(w.masters(), vec![m]);
        let later: Vec<_> = w.takeovers.iter().filter(|x| x.0 > t_s).collect();
        prop_assert!(later.is_empty(), "settled at {:?} under {}, then {:?}", t_s, m, later);
    }
}
