//! Which timeline a replica is on — pure logic, no I/O.
//!
//! A replica that is not streaming cannot be asked "which timeline do you receive?", and
//! `pg_control_checkpoint()` lags behind a timeline switch until the next restartpoint
//! (minutes). The agent therefore asks PostgreSQL for its *replay* timeline (replication
//! command `IDENTIFY_SYSTEM`, as Patroni does) and then lets [`follows`] extend it with
//! the timeline history files in `pg_wal`: a replica that replayed up to (not past) the
//! point where a newer timeline forked off has nothing that timeline lacks, and
//! PostgreSQL (`recovery_target_timeline = 'latest'`) follows that timeline as soon as it
//! reads its WAL — it is on it, just not replayed that far yet.

/// One line of a `NNNNNNNN.history` file: timeline `tli` ended at `switchpoint` (where
/// its child forked off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryEntry {
    pub tli: u32,
    pub switchpoint: u64,
}

/// The history of timeline `tli`: every ancestor and where it ended, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    pub tli: u32,
    pub entries: Vec<HistoryEntry>,
}

/// `recovery_target_timeline`: how far a replica follows newer timelines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `'latest'` (rampart's setting): any newer timeline whose history contains ours.
    Latest,
    /// `'current'`: never leaves the timeline it started on.
    Current,
    /// A fixed timeline.
    Fixed(u32),
}

impl Target {
    pub fn parse(setting: &str) -> Target {
        match setting.trim().trim_matches('\'') {
            "" | "latest" => Target::Latest,
            "current" => Target::Current,
            n => n.parse().map(Target::Fixed).unwrap_or(Target::Latest),
        }
    }
}

/// A history file name `0000000A.history` -> 10.
pub fn history_file_tli(name: &str) -> Option<u32> {
    let hex = name.strip_suffix(".history")?;
    if hex.len() != 8 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(hex, 16).ok()
}

/// Parse a history file (`parentTLI <tab> switchpoint <tab> reason` lines; `#` comments).
/// Malformed lines are skipped.
pub fn parse_history(tli: u32, text: &str) -> History {
    let entries = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let t: u32 = f.next()?.parse().ok()?;
            let (hi, lo) = f.next()?.split_once('/')?;
            let hi = u64::from_str_radix(hi, 16).ok()?;
            let lo = u64::from_str_radix(lo, 16).ok()?;
            Some(HistoryEntry {
                tli: t,
                switchpoint: (hi << 32) | lo,
            })
        })
        .collect();
    History { tli, entries }
}

/// Can a replica that replayed timeline `replay_tli` up to `replay_lsn` (end of the last
/// replayed record) follow timeline `h.tli`? Yes when `replay_tli` is one of its
/// ancestors and the replica has not replayed past the point where the ancestor ended —
/// PostgreSQL's own test before it switches to a newer timeline.
pub fn can_follow(replay_tli: u32, replay_lsn: u64, h: &History) -> bool {
    if h.tli == replay_tli {
        return true;
    }
    h.tli > replay_tli
        && h.entries
            .iter()
            .find(|e| e.tli == replay_tli)
            .is_some_and(|e| replay_lsn <= e.switchpoint)
}

/// The timeline a replica is on: its replay timeline, or the newest timeline in
/// `histories` it can follow (and its `recovery_target_timeline` lets it follow).
pub fn follows(replay_tli: u32, replay_lsn: u64, target: Target, histories: &[History]) -> u32 {
    let cap = match target {
        Target::Latest => u32::MAX,
        Target::Current => replay_tli,
        Target::Fixed(t) => t.max(replay_tli),
    };
    histories
        .iter()
        .filter(|h| h.tli <= cap && can_follow(replay_tli, replay_lsn, h))
        .map(|h| h.tli)
        .fold(replay_tli, u32::max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const H3: &str = "1\t0/3000060\tno recovery target specified\n\n2\t0/50000A0\tno recovery target specified\n";

    #[test]
    fn parses_history_files() {
        assert_eq!(history_file_tli("00000003.history"), Some(3));
        assert_eq!(history_file_tli("0000000A.history"), Some(10));
        assert_eq!(history_file_tli("000000010000000000000003"), None);
        assert_eq!(history_file_tli("3.history"), None);
        let h = parse_history(3, H3);
        assert_eq!(
            h.entries,
            vec![
                HistoryEntry {
                    tli: 1,
                    switchpoint: 0x300_0060
                },
                HistoryEntry {
                    tli: 2,
                    switchpoint: 0x500_00A0
                }
            ]
        );
        assert_eq!(
            parse_history(2, "# x\ngarbage\n1\tzz/1\tr\n").entries,
            vec![]
        );
        assert_eq!(Target::parse("latest"), Target::Latest);
        assert_eq!(Target::parse("current"), Target::Current);
        assert_eq!(Target::parse("2"), Target::Fixed(2));
    }

    #[test]
    fn replica_before_the_fork_follows_the_new_timeline() {
        let hs = vec![parse_history(2, "1\t0/3000060\tr\n"), parse_history(3, H3)];
        // Replayed TL1 exactly up to the fork: on TL3's history (via TL2).
        assert_eq!(follows(1, 0x300_0060, Target::Latest, &hs), 3);
        // Past TL1's end: diverged, stays on 1.
        assert_eq!(follows(1, 0x300_0061, Target::Latest, &hs), 1);
        // On TL2 before its end: follows 3; after: stays 2.
        assert_eq!(follows(2, 0x400_0000, Target::Latest, &hs), 3);
        assert_eq!(follows(2, 0x600_0000, Target::Latest, &hs), 2);
        // Pinned targets.
        assert_eq!(follows(1, 0x100_0000, Target::Current, &hs), 1);
        assert_eq!(follows(1, 0x100_0000, Target::Fixed(2), &hs), 2);
        // No history files: the replay timeline.
        assert_eq!(follows(4, 0, Target::Latest, &[]), 4);
    }

    proptest! {
        /// Never below the replay timeline; never a timeline whose history forks off ours
        /// before our replay position or does not contain ours.
        #[test]
        fn follows_only_compatible_timelines(
            replay_tli in 1u32..6, lsn in 0u64..1000,
            hs in proptest::collection::vec((1u32..8, proptest::collection::vec((1u32..8, 0u64..1000), 0..4)), 0..4),
        ) {
            let hs: Vec<History> = hs.into_iter().map(|(t, es)| History {
                tli: t,
                entries: es.into_iter().map(|(tli, switchpoint)| HistoryEntry { tli, switchpoint }).collect(),
            }).collect();
            let t = follows(replay_tli, lsn, Target::Latest, &hs);
            prop_assert!(t >= replay_tli);
            if t > replay_tli {
                let h = hs.iter().find(|h| h.tli == t && can_follow(replay_tli, lsn, h));
                prop_assert!(h.is_some());
            }
            prop_assert_eq!(follows(replay_tli, lsn, Target::Current, &hs), replay_tli);
        }
    }
}
