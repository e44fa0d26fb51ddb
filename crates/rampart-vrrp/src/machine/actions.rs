//! What the state machine asks its caller to do: states, causes, actions.

use std::fmt;
use std::ops::Deref;

/// The state of a virtual router.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Not started, or stopped.
    Init,
    /// Listening to the master, ready to take over when it goes silent.
    Backup,
    /// Holding the addresses and advertising.
    Master,
    /// The clean-stop sub-state of Master: still holding the addresses, advertising
    /// priority 0 until a successor advertises (or a bound passes).
    Stopping,
    /// A tracked object says this router must not be master: no addresses, no adverts.
    Fault,
}

impl State {
    /// Lower-case name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Init => "init",
            State::Backup => "backup",
            State::Master => "master",
            State::Stopping => "stopping",
            State::Fault => "fault",
        }
    }

    /// Whether a router in this state holds the virtual addresses.
    pub fn holds_addresses(self) -> bool {
        matches!(self, State::Master | State::Stopping)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a [`Action::Transition`] happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cause {
    /// `start`: to Backup, to Master (priority 255, the address owner).
    Startup,
    /// A backup heard no master for Master_Down_Interval.
    MasterDownTimerExpired,
    /// A backup took over Skew_Time after the master advertised priority 0 (it stopped).
    PriorityZeroReceived,
    /// A backup with preempt took over from a lower-priority master it chose to ignore.
    Preempted,
    /// A master heard a higher priority (or an equal one from a higher address).
    HigherPriorityMaster,
    /// `shutdown`: Master to Stopping, Backup or Fault to Init.
    Shutdown,
    /// A clean stop completed: the successor advertises.
    SuccessorSeen,
    /// A clean stop gave up waiting for a successor.
    StopTimedOut,
    /// `set_fault(true)`.
    Fault,
    /// `set_fault(false)`.
    FaultCleared,
    /// `resume_master`: the previous process of this balancer (a binary upgrade) was
    /// master and handed the mastership over with the addresses in place.
    Inherited,
}

impl Cause {
    /// Kebab-case name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Startup => "startup",
            Cause::MasterDownTimerExpired => "master-down-timer-expired",
            Cause::PriorityZeroReceived => "priority-zero-received",
            Cause::Preempted => "preempted",
            Cause::HigherPriorityMaster => "higher-priority-master",
            Cause::Shutdown => "shutdown",
            Cause::SuccessorSeen => "successor-seen",
            Cause::StopTimedOut => "stop-timed-out",
            Cause::Fault => "fault",
            Cause::FaultCleared => "fault-cleared",
            Cause::Inherited => "inherited",
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing the caller must do, in the order given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Send an advertisement with this priority, the configured addresses and interval
    /// ([`crate::machine::Router::advert`] builds it).
    SendAdvert {
        /// 0 when leaving, else the effective priority.
        priority: u8,
    },
    /// Configure the virtual addresses on the interface.
    AddAddresses,
    /// Remove the virtual addresses from the interface.
    RemoveAddresses,
    /// Send a gratuitous ARP (IPv4) or an unsolicited neighbour advertisement (IPv6) for
    /// every virtual address.
    Announce,
    /// The state changed (comes first among the actions of a call); for the log.
    Transition {
        /// State before.
        from: State,
        /// State after.
        to: State,
        /// Why.
        cause: Cause,
    },
    /// `shutdown` is complete: nothing is held, nothing more will be sent. The router
    /// is in [`State::Init`] and may be started again.
    Stopped,
}

/// Room for the longest list a call returns (taking over: transition, add, announce,
/// send).
const CAP: usize = 6;

/// The actions of one call, in order: a fixed array, so a call does not allocate.
/// Dereferences to `[Action]`; iterate by value or by reference.
#[derive(Clone, Copy)]
pub struct Actions {
    items: [Action; CAP],
    len: u8,
}

impl Actions {
    pub(crate) fn new() -> Self {
        Actions {
            items: [Action::Stopped; CAP],
            len: 0,
        }
    }

    pub(crate) fn push(&mut self, a: Action) {
        let i = usize::from(self.len);
        debug_assert!(i < CAP, "more than {CAP} actions in one call");
        if let Some(slot) = self.items.get_mut(i) {
            *slot = a;
            self.len += 1;
        }
    }

    /// The actions as a slice.
    pub fn as_slice(&self) -> &[Action] {
        &self.items[..usize::from(self.len)]
    }
}

impl Default for Actions {
    fn default() -> Self {
        Actions::new()
    }
}

impl Deref for Actions {
    type Target = [Action];
    fn deref(&self) -> &[Action] {
        self.as_slice()
    }
}

impl fmt::Debug for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl PartialEq for Actions {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Actions {}

impl PartialEq<[Action]> for Actions {
    fn eq(&self, other: &[Action]) -> bool {
        self.as_slice() == other
    }
}

impl<const N: usize> PartialEq<[Action; N]> for Actions {
    fn eq(&self, other: &[Action; N]) -> bool {
        self.as_slice() == other.as_slice()
    }
}

/// By-value iterator over [`Actions`].
#[derive(Clone, Debug)]
pub struct IntoIter {
    actions: Actions,
    next: usize,
}

impl Iterator for IntoIter {
    type Item = Action;
    fn next(&mut self) -> Option<Action> {
        let a = self.actions.as_slice().get(self.next).copied();
        self.next += usize::from(a.is_some());
        a
    }
}

impl IntoIterator for Actions {
    type Item = Action;
    type IntoIter = IntoIter;
    fn into_iter(self) -> IntoIter {
        IntoIter {
            actions: self,
            next: 0,
        }
    }
}

impl<'a> IntoIterator for &'a Actions {
    type Item = &'a Action;
    type IntoIter = std::slice::Iter<'a, Action>;
    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}
