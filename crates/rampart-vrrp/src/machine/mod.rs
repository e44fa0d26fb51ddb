//! The state machine of one virtual router (RFC 5798 section 6.4), pure: the caller
//! passes the time in, feeds it received advertisements and timer wake-ups, and performs
//! the [`Action`]s it returns, in order.
//!
//! # Driving it
//!
//! ```text
//! let mut r = Router::new(config)?;
//! run(r.start(now));
//! loop {
//!     wait for an advertisement or r.next_deadline(), whichever comes first;
//!     run(r.on_advert(now, src, &advert))  or  run(r.on_timer(now));
//! }
//! ```
//!
//! Calls may come late or early: `on_timer` does what is due at `now` and nothing else,
//! and `next_deadline` is always up to date after a call.
//!
//! # Rules
//!
//! * Start: to Backup with the down timer armed; with priority 255 (the address owner)
//!   straight to Master; with a fault set, to Fault.
//! * Backup: Master_Down_Interval = 3 × Master_Adver_Interval + Skew_Time, Skew_Time =
//!   (256 − priority) × Master_Adver_Interval / 256, our effective priority, the interval
//!   learned from the master's adverts. An advert with priority ≥ ours, or any advert when
//!   preempt is off, resets the down timer. A lower-priority advert with preempt on is
//!   ignored, so the down timer runs out, but only once `preempt_delay` has passed since
//!   this backup first heard a lower-priority master (before that it is accepted). A
//!   priority-0 advert brings the timer down to Skew_Time. Expiry: Master (add the
//!   addresses, announce them, advertise).
//! * Master: advertises every interval with its effective priority. Priority-0 advert:
//!   advertises at once. Higher priority, or equal priority from a higher address: to
//!   Backup, addresses removed. Lower priority (two masters after a partition heals):
//!   stays, advertises *and announces* at once so clients that followed the other master
//!   come back. The announcement of a takeover is repeated once after `announce_repeat`.
//! * Clean stop (make before break): a master advertises priority 0 and enters Stopping,
//!   keeping the addresses and re-advertising 0 every interval, until another router
//!   advertises a priority above 0 (the successor, which added the addresses before
//!   advertising) or 3 × interval + 1 s pass; then it removes the addresses. Other states
//!   stop at once.
//! * Fault: a master advertises 0 and removes the addresses; nothing is sent in Fault;
//!   clearing the fault goes to Backup with the down timer armed.
//! * Penalty: effective priority = priority − penalty, at least 1; a master's next
//!   adverts carry it, so a healthier backup with preempt takes over.
//!
//! Adverts for another VRID, of the other address family, with an interval of 0 or
//! above 4095 cs, or from our own primary address (the loopback of our own multicast)
//! are ignored.

mod actions;
mod config;
#[cfg(test)]
mod props;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::time::{Duration, Instant};

pub use actions::{Action, Actions, Cause, IntoIter, State};
pub use config::{ConfigError, RouterConfig};

use crate::packet::{Advert, MAX_INTERVAL_CS};

/// A stopping master gives up waiting for a successor after 3 × interval + this.
pub const STOP_GRACE: Duration = Duration::from_secs(1);

/// One virtual router.
#[derive(Clone, Debug)]
pub struct Router {
    cfg: RouterConfig,
    state: State,
    penalty: u8,
    fault: bool,
    /// Master_Adver_Interval: the interval of the master we follow.
    master_adver_interval: Duration,
    /// Backup: Master_Down_Timer.
    down_at: Option<Instant>,
    /// Backup: the cause to report if the down timer runs out.
    down_cause: Cause,
    /// Master and Stopping: Adver_Timer.
    adver_at: Option<Instant>,
    /// Master: the repeated announcement of a takeover.
    announce_at: Option<Instant>,
    /// Stopping: when to give up waiting for a successor.
    give_up_at: Option<Instant>,
    /// Backup: when we first heard a lower-priority master (for `preempt_delay`).
    lower_since: Option<Instant>,
    /// The last other router that advertised a priority above 0.
    master_seen: Option<(IpAddr, u8)>,
}

impl Router {
    /// A router in [`State::Init`]; `start` it.
    pub fn new(cfg: RouterConfig) -> Result<Router, ConfigError> {
        cfg.validate()?;
        Ok(Router {
            master_adver_interval: cfg.interval,
            cfg,
            state: State::Init,
            penalty: 0,
            fault: false,
            down_at: None,
            down_cause: Cause::MasterDownTimerExpired,
            adver_at: None,
            announce_at: None,
            give_up_at: None,
            lower_since: None,
            master_seen: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RouterConfig {
        &self.cfg
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Configured priority minus the penalty, at least 1 (255 stays 255 without penalty).
    pub fn effective_priority(&self) -> u8 {
        self.cfg.priority.saturating_sub(self.penalty).max(1)
    }

    /// The penalty last set.
    pub fn penalty(&self) -> u8 {
        self.penalty
    }

    /// Whether a fault is set.
    pub fn is_faulted(&self) -> bool {
        self.fault
    }

    /// The last other router that advertised a priority above 0, with that priority: in
    /// Backup, the master (possibly gone silent); in Master, a competing master. Cleared
    /// on start, on taking over, and when that router advertises priority 0.
    pub fn master_seen(&self) -> Option<(IpAddr, u8)> {
        self.master_seen
    }

    /// Whether this router keeps its state as things stand, so that a client sent to the
    /// addresses now reaches the router that goes on holding them: a master, a faulted
    /// router, or a backup that hears a master it will not take over from (one of at
    /// least its effective priority; any master without preempt; a lower one while the
    /// preempt delay runs). Not settled: a starting or stopping router, a backup that has
    /// heard no master yet (its down timer will run out) or outranks the master it hears
    /// (it will preempt). A master gone silent is not seen here: its backups look settled
    /// until their down timers run out.
    pub fn is_settled(&self, now: Instant) -> bool {
        match self.state {
            State::Master | State::Fault => true,
            State::Init | State::Stopping => false,
            State::Backup => self.master_seen.is_some_and(|(_, p)| {
                p >= self.effective_priority()
                    || !self.cfg.preempt
                    || self.lower_since.is_some_and(|since| {
                        now.saturating_duration_since(since) < self.cfg.preempt_delay
                    })
            }),
        }
    }

    /// Master_Adver_Interval: the interval of the master we follow (ours until we hear one).
    pub fn master_adver_interval(&self) -> Duration {
        self.master_adver_interval
    }

    /// Skew_Time for our effective priority.
    pub fn skew_time(&self) -> Duration {
        self.master_adver_interval * (256 - u32::from(self.effective_priority())) / 256
    }

    /// Master_Down_Interval: 3 × Master_Adver_Interval + Skew_Time.
    pub fn master_down_interval(&self) -> Duration {
        self.master_adver_interval * 3 + self.skew_time()
    }

    /// The advertisement to send for [`Action::SendAdvert`]: our VRID, interval and
    /// addresses with `priority`. Encode it with our primary address as source.
    pub fn advert(&self, priority: u8) -> Advert {
        Advert {
            vrid: self.cfg.vrid,
            priority,
            interval_cs: self.cfg.interval_cs(),
            addrs: self.cfg.addrs.clone(),
        }
    }

    /// Whether `ad` lists exactly our addresses (in any order). The state machine does not
    /// use it: a mismatch is a configuration error to log (RFC 5798 section 7.1).
    pub fn addresses_match(&self, ad: &Advert) -> bool {
        ad.addrs.len() == self.cfg.addrs.len()
            && ad.addrs.iter().all(|a| self.cfg.addrs.contains(a))
            && self.cfg.addrs.iter().all(|a| ad.addrs.contains(a))
    }

    /// When `on_timer` must be called next; `None` when nothing is pending (Init, Fault).
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.down_at,
            self.adver_at,
            self.announce_at,
            self.give_up_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Starts the router; a no-op unless it is in Init.
    pub fn start(&mut self, now: Instant) -> Actions {
        let mut out = Actions::new();
        if self.state != State::Init {
            return out;
        }
        self.master_seen = None;
        if self.fault {
            self.enter(State::Fault, Cause::Fault, &mut out);
        } else if self.effective_priority() == 255 {
            self.become_master(now, Cause::Startup, &mut out);
        } else {
            self.enter(State::Backup, Cause::Startup, &mut out);
            self.arm_backup(now, self.cfg.interval);
        }
        out
    }

    /// Start as master, with no backup phase: the previous process of this balancer (a
    /// binary upgrade) was master, the addresses are still on the interface, and the
    /// peers must see no change (a normal `start` would go through Backup, and with
    /// preemption the address would travel to a peer and back). Adverts carry on at once;
    /// the addresses are added again (a no-op when present) and announced. A router that
    /// has started already is left as it is.
    pub fn resume_master(&mut self, now: Instant) -> Actions {
        let mut out = Actions::new();
        if self.state != State::Init {
            return out;
        }
        self.master_seen = None;
        if self.fault {
            self.enter(State::Fault, Cause::Fault, &mut out);
        } else {
            self.become_master(now, Cause::Inherited, &mut out);
        }
        out
    }

    /// A valid advertisement (decoded, TTL checked) from `from`, the source address of its
    /// IP header. Ignored: another VRID, the other address family, an interval of 0 or
    /// above 4095 cs, and `from` equal to our primary (the loopback of our own multicast;
    /// two routers of a group must therefore never share a primary address).
    pub fn on_advert(&mut self, now: Instant, from: IpAddr, ad: &Advert) -> Actions {
        let mut out = Actions::new();
        if ad.vrid != self.cfg.vrid
            || ad.interval_cs == 0
            || ad.interval_cs > MAX_INTERVAL_CS
            || from.is_ipv4() != self.cfg.primary.is_ipv4()
            || from == self.cfg.primary
        {
            return out;
        }
        if ad.priority > 0 {
            self.master_seen = Some((from, ad.priority));
        } else if self.master_seen.is_some_and(|(a, _)| a == from) {
            self.master_seen = None;
        }
        match self.state {
            State::Init | State::Fault => {}
            State::Backup => self.backup_advert(now, ad),
            State::Master => self.master_advert(now, from, ad, &mut out),
            State::Stopping => {
                if ad.priority > 0 {
                    self.finish_stop(Cause::SuccessorSeen, &mut out);
                }
            }
        }
        out
    }

    /// Does what is due at `now`: the down timer of a backup, the adverts and the repeated
    /// announcement of a master, the re-advertisement and the bound of a stopping master.
    pub fn on_timer(&mut self, now: Instant) -> Actions {
        let mut out = Actions::new();
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        match self.state {
            State::Init | State::Fault => {}
            State::Backup => {
                if due(self.down_at) {
                    self.become_master(now, self.down_cause, &mut out);
                }
            }
            State::Master => {
                if due(self.adver_at) {
                    self.send_advert(now, self.effective_priority(), &mut out);
                }
                if due(self.announce_at) {
                    self.announce_at = None;
                    out.push(Action::Announce);
                }
            }
            State::Stopping => {
                if due(self.give_up_at) {
                    self.finish_stop(Cause::StopTimedOut, &mut out);
                } else if due(self.adver_at) {
                    self.send_advert(now, 0, &mut out);
                }
            }
        }
        out
    }

    /// Sets the penalty (the caller sums the weights of failed tracked objects). A master
    /// carries the new effective priority in its next adverts; a backup uses it for its
    /// next preemption decision and Skew_Time. Returns no action today; the caller runs
    /// whatever it gets all the same.
    pub fn set_penalty(&mut self, _now: Instant, penalty: u8) -> Actions {
        self.penalty = penalty;
        Actions::new()
    }

    /// Sets or clears the fault (some tracked object says we must not be master).
    /// Master: advertises 0 and removes the addresses; Backup: stops listening; Stopping:
    /// ends the stop at once. Clearing it: Backup with the down timer armed. Before start
    /// it only decides where `start` goes.
    pub fn set_fault(&mut self, now: Instant, fault: bool) -> Actions {
        let mut out = Actions::new();
        if fault == self.fault {
            return out;
        }
        self.fault = fault;
        match (self.state, fault) {
            (State::Backup, true) => {
                self.enter(State::Fault, Cause::Fault, &mut out);
            }
            (State::Master, true) => {
                self.enter(State::Fault, Cause::Fault, &mut out);
                out.push(Action::SendAdvert { priority: 0 });
                out.push(Action::RemoveAddresses);
            }
            (State::Stopping, true) => self.finish_stop(Cause::Fault, &mut out),
            (State::Fault, false) => {
                self.enter(State::Backup, Cause::FaultCleared, &mut out);
                self.arm_backup(now, self.cfg.interval);
            }
            _ => {}
        }
        out
    }

    /// Stops the router. A master stops cleanly: it advertises priority 0 and keeps the
    /// addresses until a successor advertises (then [`Action::Stopped`] comes from
    /// `on_advert`) or 3 × interval + 1 s pass (from `on_timer`). Any other state stops at
    /// once. A second call while stopping does nothing.
    pub fn shutdown(&mut self, now: Instant) -> Actions {
        let mut out = Actions::new();
        match self.state {
            State::Stopping => {}
            State::Master => {
                self.enter(State::Stopping, Cause::Shutdown, &mut out);
                self.give_up_at = now.checked_add(self.cfg.interval * 3 + STOP_GRACE);
                self.send_advert(now, 0, &mut out);
            }
            State::Init => out.push(Action::Stopped),
            State::Backup | State::Fault => {
                self.enter(State::Init, Cause::Shutdown, &mut out);
                out.push(Action::Stopped);
            }
        }
        out
    }

    fn backup_advert(&mut self, now: Instant, ad: &Advert) {
        let ours = self.effective_priority();
        if ad.priority == 0 {
            // The master is leaving: take over after Skew_Time, never later than planned.
            let soon = now.checked_add(self.skew_time());
            self.down_at = match (self.down_at, soon) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            self.down_cause = Cause::PriorityZeroReceived;
            return;
        }
        if ad.priority >= ours {
            self.lower_since = None;
            self.arm_backup(now, ad.interval());
            return;
        }
        if !self.cfg.preempt {
            self.arm_backup(now, ad.interval());
            return;
        }
        let since = *self.lower_since.get_or_insert(now);
        if now.saturating_duration_since(since) < self.cfg.preempt_delay {
            self.arm_backup(now, ad.interval());
        } else {
            // Ignored: the down timer runs out and we take over.
            self.down_cause = Cause::Preempted;
        }
    }

    fn master_advert(&mut self, now: Instant, from: IpAddr, ad: &Advert, out: &mut Actions) {
        let ours = self.effective_priority();
        if ad.priority == 0 {
            self.send_advert(now, ours, out);
        } else if ad.priority > ours || (ad.priority == ours && from > self.cfg.primary) {
            self.enter(State::Backup, Cause::HigherPriorityMaster, out);
            out.push(Action::RemoveAddresses);
            // A parting advert at our priority: after a partition heals, the new master
            // may have yielded nothing to hear (we stopped advertising on its first advert),
            // and clients still send to us. Hearing a lower-priority master, it re-announces
            // (gratuitous ARP) and clients move to it now, not when their ARP entry expires.
            out.push(Action::SendAdvert { priority: ours });
            self.arm_backup(now, ad.interval());
        } else {
            // Another master below us: reassert at once, adverts and announcements.
            self.send_advert(now, ours, out);
            out.push(Action::Announce);
        }
    }

    /// Takes over: addresses first, then the announcement, then the advert, so that the
    /// stopping master (which waits for our advert) releases them only after we hold them.
    fn become_master(&mut self, now: Instant, cause: Cause, out: &mut Actions) {
        self.enter(State::Master, cause, out);
        self.master_seen = None;
        out.push(Action::AddAddresses);
        out.push(Action::Announce);
        if !self.cfg.announce_repeat.is_zero() {
            self.announce_at = now.checked_add(self.cfg.announce_repeat);
        }
        self.send_advert(now, self.effective_priority(), out);
    }

    fn finish_stop(&mut self, cause: Cause, out: &mut Actions) {
        self.enter(State::Init, cause, out);
        out.push(Action::RemoveAddresses);
        out.push(Action::Stopped);
    }

    fn send_advert(&mut self, now: Instant, priority: u8, out: &mut Actions) {
        out.push(Action::SendAdvert { priority });
        self.adver_at = now.checked_add(self.cfg.interval);
    }

    /// Backup: follow a master advertising every `interval`, from `now`.
    fn arm_backup(&mut self, now: Instant, interval: Duration) {
        self.master_adver_interval = interval;
        self.down_at = now.checked_add(self.master_down_interval());
        self.down_cause = Cause::MasterDownTimerExpired;
    }

    /// Changes state, reporting it, and forgets the timers of the old one (the caller arms
    /// those of the new one).
    fn enter(&mut self, to: State, cause: Cause, out: &mut Actions) {
        out.push(Action::Transition {
            from: self.state,
            to,
            cause,
        });
        self.state = to;
        self.lower_since = None;
        self.down_at = None;
        self.adver_at = None;
        self.announce_at = None;
        self.give_up_at = None;
    }
}
