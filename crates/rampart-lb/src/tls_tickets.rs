//! Session ticket keys: our own [`ProducesTickets`] (AES-256-GCM from ring) whose keys can
//! live in a file that the balancers of a pair share, so a client resumes on either.
//!
//! The key file is text, one key per line (64 hex digits, 32 bytes), newest first; `#`
//! starts a comment. Like HAProxy's `tls-ticket-keys`, the newest key is published one
//! rotation ahead: new tickets are sealed with the *second* key (the only one when there
//! is one), every key opens tickets. By the time a balancer seals with a key, each balancer
//! reading the file has had it for a whole rotation period, so a ticket from one opens on
//! the other even if they re-read the file at different moments.
//!
//! Rotation (prepend a fresh key, keep three) is done by the balancer configured with
//! `ticket_keys_rotate` (one of the pair) when the file is older than the period (its
//! modification time is the schedule, so a restart keeps it), or by the operator; the
//! file is replaced atomically (written beside, renamed) and created when missing. The
//! others re-read it when its modification time changes. Without a file the keys are
//! random, kept in memory and rotated the same way.
//!
//! A ticket is `key id (4) | nonce (12) | sealed session state | tag (16)`, the key id
//! (the first bytes of the key's SHA-256) being the associated data.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;

/// Keys a file keeps after a rotation: the pre-published one, the sealing one, the last.
const KEEP: usize = 3;
const ID_LEN: usize = 4;
const KEY_LEN: usize = 32;

/// A ticket key file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("ticket key file {path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("ticket key file {path}:{line}: {reason}")]
    Bad {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

/// Parse a key file's text: its keys, newest first; `Err((line, reason))`.
pub fn parse_keys(text: &str) -> Result<Vec<[u8; KEY_LEN]>, (usize, String)> {
    let mut keys = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bytes = line.as_bytes();
        if bytes.len() != 2 * KEY_LEN || !bytes.iter().all(u8::is_ascii_hexdigit) {
            return Err((
                i + 1,
                format!(
                    "expected a key of {} hex digits, got {} characters",
                    2 * KEY_LEN,
                    line.len()
                ),
            ));
        }
        let mut k = [0u8; KEY_LEN];
        for (j, pair) in bytes.chunks(2).enumerate() {
            let s = std::str::from_utf8(pair).unwrap_or("00");
            k[j] = u8::from_str_radix(s, 16).unwrap_or(0);
        }
        keys.push(k);
    }
    if keys.is_empty() {
        return Err((1, "holds no key".into()));
    }
    Ok(keys)
}

/// A key file's text.
pub fn render_keys(keys: &[[u8; KEY_LEN]]) -> String {
    let mut s = String::from(
        "# rampart TLS session ticket keys, newest first; tickets are sealed with the second.\n",
    );
    for k in keys {
        for b in k {
            s.push_str(&format!("{b:02x}"));
        }
        s.push('\n');
    }
    s
}

/// `keys` after one rotation: `new` first, at most [`KEEP`].
pub fn rotated(keys: &[[u8; KEY_LEN]], new: [u8; KEY_LEN]) -> Vec<[u8; KEY_LEN]> {
    std::iter::once(new)
        .chain(keys.iter().copied())
        .take(KEEP)
        .collect()
}

fn fresh_key() -> Option<[u8; KEY_LEN]> {
    let mut k = [0u8; KEY_LEN];
    SystemRandom::new().fill(&mut k).ok()?;
    Some(k)
}

struct Key {
    id: [u8; ID_LEN],
    aead: LessSafeKey,
}

/// Keys in use: `seal` indexes the one new tickets are sealed with.
struct KeySet {
    keys: Vec<Key>,
    seal: usize,
}

impl KeySet {
    fn new(raw: &[[u8; KEY_LEN]]) -> Option<KeySet> {
        let keys = raw
            .iter()
            .map(|k| {
                let d = ring::digest::digest(&ring::digest::SHA256, k);
                let mut id = [0u8; ID_LEN];
                id.copy_from_slice(&d.as_ref()[..ID_LEN]);
                let aead = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, k).ok()?);
                Some(Key { id, aead })
            })
            .collect::<Option<Vec<Key>>>()?;
        if keys.is_empty() {
            return None;
        }
        let seal = usize::from(keys.len() >= 2);
        Some(KeySet { keys, seal })
    }
}

/// Where the keys come from.
enum Source {
    Memory {
        raw: Mutex<(Vec<[u8; KEY_LEN]>, Instant)>,
        rotate: Duration,
    },
    File {
        path: PathBuf,
        /// Set when this balancer rotates the file.
        rotate: Option<Duration>,
        /// The modification time of the file when it was last read.
        read: Mutex<Option<SystemTime>>,
    },
}

/// A listener's ticket maker.
pub struct Tickets {
    set: ArcSwap<KeySet>,
    source: Source,
    lifetime: u32,
    rng: SystemRandom,
}

impl fmt::Debug for Tickets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Tickets")
    }
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn read_file(path: &Path) -> Result<Vec<[u8; KEY_LEN]>, KeyFileError> {
    let text = std::fs::read_to_string(path).map_err(|err| KeyFileError::Io {
        path: path.to_path_buf(),
        err,
    })?;
    parse_keys(&text).map_err(|(line, reason)| KeyFileError::Bad {
        path: path.to_path_buf(),
        line,
        reason,
    })
}

/// Replace the file with `keys` atomically (a file beside it, renamed), owner-only.
fn write_file(path: &Path, keys: &[[u8; KEY_LEN]]) -> Result<(), KeyFileError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |err| KeyFileError::Io {
        path: path.to_path_buf(),
        err,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(render_keys(keys).as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

impl Tickets {
    /// Keys in memory, rotated every `rotate`.
    pub fn memory(rotate: Duration, lifetime: Duration) -> Option<Tickets> {
        let raw = vec![fresh_key()?, fresh_key()?];
        Some(Tickets {
            set: ArcSwap::from_pointee(KeySet::new(&raw)?),
            source: Source::Memory {
                raw: Mutex::new((raw, Instant::now())),
                rotate,
            },
            lifetime: lifetime.as_secs().min(u64::from(u32::MAX)) as u32,
            rng: SystemRandom::new(),
        })
    }

    /// Keys from `path`; with `rotate`, this balancer creates the file when it is missing
    /// and rotates it. A file that exists but cannot be used is an error; a missing one
    /// that another balancer rotates means random keys until it appears.
    pub fn file(
        path: &Path,
        rotate: Option<Duration>,
        lifetime: Duration,
    ) -> Result<Tickets, KeyFileError> {
        let missing = !path.exists();
        if missing && rotate.is_some() {
            let raw = [
                fresh_key().ok_or_else(|| no_rng(path))?,
                fresh_key().ok_or_else(|| no_rng(path))?,
            ];
            write_file(path, &raw)?;
            tracing::info!(file = %path.display(), "TLS ticket key file created");
        }
        let (raw, stamp) = if missing && rotate.is_none() {
            tracing::warn!(file = %path.display(), "TLS ticket key file missing: random keys until it appears (tickets will not resume on the other balancers meanwhile)");
            (
                vec![
                    fresh_key().ok_or_else(|| no_rng(path))?,
                    fresh_key().ok_or_else(|| no_rng(path))?,
                ],
                None,
            )
        } else {
            let stamp = mtime(path);
            (read_file(path)?, stamp)
        };
        let set = KeySet::new(&raw).ok_or_else(|| no_rng(path))?;
        Ok(Tickets {
            set: ArcSwap::from_pointee(set),
            source: Source::File {
                path: path.to_path_buf(),
                rotate,
                read: Mutex::new(stamp),
            },
            lifetime: lifetime.as_secs().min(u64::from(u32::MAX)) as u32,
            rng: SystemRandom::new(),
        })
    }

    /// Called every few seconds: rotate when due (keys in memory, or a file this balancer
    /// rotates), and re-read the file when it changed. Errors are logged; the keys in use
    /// stay.
    pub fn maintain(&self) {
        match &self.source {
            Source::Memory { raw, rotate } => {
                let Ok(mut r) = raw.lock() else { return };
                if r.1.elapsed() < *rotate {
                    return;
                }
                let Some(k) = fresh_key() else { return };
                let next = rotated(&r.0, k);
                if let Some(set) = KeySet::new(&next) {
                    self.set.store(Arc::new(set));
                    *r = (next, Instant::now());
                    tracing::info!("TLS ticket keys rotated");
                }
            }
            Source::File { path, rotate, read } => {
                let now = mtime(path);
                if let Some(period) = rotate {
                    let due = match now {
                        None => true,
                        Some(t) => t.elapsed().map(|e| e >= *period).unwrap_or(false),
                    };
                    if due {
                        let old = read_file(path).unwrap_or_default();
                        let rotated = fresh_key()
                            .map(|k| rotated(&old, k))
                            .ok_or_else(|| no_rng(path))
                            .and_then(|keys| write_file(path, &keys));
                        match rotated {
                            Ok(()) => {
                                tracing::info!(file = %path.display(), "TLS ticket keys rotated")
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "TLS ticket keys not rotated");
                                return;
                            }
                        }
                    }
                }
                let now = mtime(path);
                let Ok(mut last) = read.lock() else { return };
                if now.is_none() || now == *last {
                    return;
                }
                *last = now;
                match read_file(path).map(|raw| KeySet::new(&raw)) {
                    Ok(Some(set)) => {
                        self.set.store(Arc::new(set));
                        tracing::info!(file = %path.display(), "TLS ticket keys loaded");
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS ticket key file changed but cannot be used; the keys in use stay")
                    }
                }
            }
        }
    }
}

fn no_rng(path: &Path) -> KeyFileError {
    KeyFileError::Io {
        path: path.to_path_buf(),
        err: std::io::Error::other("no random keys from the system"),
    }
}

impl ProducesTickets for Tickets {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        self.lifetime
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let set = self.set.load();
        let key = set.keys.get(set.seal)?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(ID_LEN + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(&key.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let mut body = out.split_off(ID_LEN + NONCE_LEN);
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&key.id),
                &mut body,
            )
            .ok()?;
        out.extend_from_slice(&body);
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < ID_LEN + NONCE_LEN + 16 {
            return None;
        }
        let (id, rest) = cipher.split_at(ID_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let set = self.set.load();
        let key = set.keys.iter().find(|k| k.id == id)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain = key
            .aead
            .open_in_place(nonce, Aad::from(&key.id), &mut buf)
            .ok()?;
        let n = plain.len();
        buf.truncate(n);
        Some(buf)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tickets(raw: &[[u8; KEY_LEN]]) -> Tickets {
        Tickets {
            set: ArcSwap::from_pointee(KeySet::new(raw).unwrap()),
            source: Source::Memory {
                raw: Mutex::new((raw.to_vec(), Instant::now())),
                rotate: Duration::from_secs(60),
            },
            lifetime: 60,
            rng: SystemRandom::new(),
        }
    }

    #[test]
    fn key_file_round_trip_and_errors() {
        let keys = vec![[1u8; 32], [0xabu8; 32]];
        let text = render_keys(&keys);
        assert_eq!(parse_keys(&text).unwrap(), keys);
        assert_eq!(
            parse_keys("# c\n\n  0102\n").unwrap_err().0,
            3,
            "the short key's line"
        );
        assert!(parse_keys(&"zz".repeat(32)).is_err());
        assert_eq!(parse_keys("# nothing\n").unwrap_err().1, "holds no key");
    }

    #[test]
    fn rotation_keeps_three_newest_first() {
        let r = rotated(&[[1; 32], [2; 32], [3; 32]], [9; 32]);
        assert_eq!(r, vec![[9; 32], [1; 32], [2; 32]]);
    }

    #[test]
    fn a_ticket_opens_with_the_keys_of_the_next_rotations_only_while_kept() {
        let (k1, k2, k3, k4, k5) = ([1; 32], [2; 32], [3; 32], [4; 32], [5; 32]);
        // Sealed with the second key (k1) of [k2, k1].
        let a = tickets(&[k2, k1]);
        let t = a.encrypt(b"session").unwrap();
        assert_eq!(a.decrypt(&t).unwrap(), b"session");
        // Another balancer that has read the same file, one rotation later.
        let b = tickets(&[k3, k2, k1]);
        assert_eq!(b.decrypt(&t).unwrap(), b"session");
        // After two more rotations k1 is gone.
        let c = tickets(&[k5, k4, k3]);
        assert!(c.decrypt(&t).is_none());
        // Tampering fails.
        let mut bad = t.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(a.decrypt(&bad).is_none());
        assert!(a.decrypt(&t[..10]).is_none());
    }

    #[test]
    fn an_owner_creates_and_rotates_the_file_a_reader_follows() {
        let dir = rampart_testkit::TempDir::new().unwrap();
        let path = dir.path().join("keys");
        let owner = Tickets::file(
            &path,
            Some(Duration::from_secs(3600)),
            Duration::from_secs(60),
        )
        .unwrap();
        let reader = Tickets::file(&path, None, Duration::from_secs(60)).unwrap();
        let t = owner.encrypt(b"s").unwrap();
        assert_eq!(reader.decrypt(&t).unwrap(), b"s");
        // The operator rotates the file: both follow, old tickets still open.
        let keys = read_file(&path).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        write_file(&path, &rotated(&keys, [7; 32])).unwrap();
        let later = SystemTime::now() + Duration::from_secs(1);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        owner.maintain();
        reader.maintain();
        assert_eq!(owner.decrypt(&t).unwrap(), b"s");
        let t2 = reader.encrypt(b"s2").unwrap();
        assert_eq!(owner.decrypt(&t2).unwrap(), b"s2");
        // Sealed now with the key that was pre-published, not the one before.
        assert_ne!(&t2[..ID_LEN], &t[..ID_LEN]);
    }

    #[test]
    fn the_owner_rotates_when_the_file_is_older_than_the_period() {
        let dir = rampart_testkit::TempDir::new().unwrap();
        let path = dir.path().join("keys");
        let owner = Tickets::file(
            &path,
            Some(Duration::from_secs(60)),
            Duration::from_secs(60),
        )
        .unwrap();
        let t = owner.encrypt(b"s").unwrap();
        let before = read_file(&path).unwrap();
        // Not due yet: nothing changes.
        owner.maintain();
        assert_eq!(read_file(&path).unwrap(), before);
        // A minute old: a fresh key in front, the sealing key moves to the pre-published one.
        let old = SystemTime::now() - Duration::from_secs(61);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        owner.maintain();
        let after = read_file(&path).unwrap();
        assert_eq!(after.len(), 3);
        assert_eq!(&after[1..], &before[..]);
        assert_eq!(owner.decrypt(&t).unwrap(), b"s");
        let t2 = owner.encrypt(b"s2").unwrap();
        assert_ne!(&t2[..ID_LEN], &t[..ID_LEN]);
        // The next rotation drops the first ticket's key (a ticket lives one period at
        // least): the second ticket's still opens.
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        owner.maintain();
        assert_eq!(read_file(&path).unwrap().len(), 3);
        assert!(owner.decrypt(&t).is_none());
        assert_eq!(owner.decrypt(&t2).unwrap(), b"s2");
    }

    proptest! {
        #[test]
        fn garbage_never_opens_nor_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let a = tickets(&[[3; 32], [4; 32]]);
            prop_assert!(a.decrypt(&bytes).is_none());
        }
    }
}
