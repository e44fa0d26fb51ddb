//! One order for the balancers of a pair (`acme.etcd` and `acme.cluster`), through etcd
//! under `/rampart/<cluster>/acme/<first domain>/`:
//!
//! - `lock`: created, under a lease this balancer keeps alive, by the one that orders;
//!   the others wait for its result;
//! - `challenge/<token>`: the pending challenges (under the lock's lease), which every
//!   balancer answers, so the CA's validation may reach any of them (a virtual IP, DNS
//!   with both addresses);
//! - `cert`: the chain and its key (JSON), which every balancer stores in its state folder
//!   and installs when it is newer than its own;
//! - `backoff` (under a lease as long as the wait) and `failures`: after a failed order
//!   nobody orders again before the backoff ends.
//!
//! The certificate's private key is kept in etcd: etcd must be reachable only by the
//! cluster's nodes (it already holds the database's leadership).

use std::collections::HashMap;
use std::time::Duration;

use rampart_coord::{Coord, CoordOptions, Guard, KeyValue, LeaseId, WatchEvent};
use rampart_topology::lb::{Acme, AcmeShare, Challenge};
use serde_json::{json, Value};

use super::client::{AcmeError, Responder};
use super::Store;

/// The lock's lease: an orderer that dies frees it within this.
const LOCK_TTL: Duration = Duration::from_secs(30);
/// A balancer that finds the lock taken (or etcd unreachable) looks again after this.
const WAIT_PEER: Duration = Duration::from_secs(5);

fn etcd_err(what: &str, e: impl std::fmt::Display) -> AcmeError {
    AcmeError::Setup(format!("etcd: {what}: {e}"))
}

fn challenge_name(c: Challenge) -> &'static str {
    match c {
        Challenge::Http01 => "http-01",
        Challenge::TlsAlpn01 => "tls-alpn-01",
    }
}

/// Presents the challenges here and publishes them for the other balancers.
struct EtcdStore<'a> {
    coord: &'a Coord,
    prefix: &'a str,
    lease: LeaseId,
}

impl Responder for EtcdStore<'_> {
    async fn present(
        &self,
        challenge: Challenge,
        domain: &str,
        token: &str,
        key_authorization: &str,
    ) -> Result<(), AcmeError> {
        Store::present_now(challenge, domain, token, key_authorization)?;
        let v = json!({
            "challenge": challenge_name(challenge),
            "domain": domain,
            "token": token,
            "key_authorization": key_authorization,
        });
        let key = format!("{}challenge/{token}", self.prefix);
        self.coord
            .put(&key, v.to_string().as_bytes(), Some(self.lease))
            .await
            .map_err(|e| etcd_err("publishing a challenge", e))?;
        // The others see it through their watch: give them a moment before the CA asks.
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(())
    }

    async fn cleanup(&self, challenge: Challenge, domain: &str, token: &str) {
        Store::cleanup_now(challenge, domain, token);
        let _ = self
            .coord
            .delete(&format!("{}challenge/{token}", self.prefix))
            .await;
    }
}

/// A published challenge: (kind, domain, token, key authorization).
fn parse_challenge(kv: &KeyValue) -> Option<(Challenge, String, String, String)> {
    let v: Value = serde_json::from_slice(&kv.value).ok()?;
    let kind = match v["challenge"].as_str()? {
        "http-01" => Challenge::Http01,
        "tls-alpn-01" => Challenge::TlsAlpn01,
        _ => return None,
    };
    Some((
        kind,
        v["domain"].as_str()?.to_string(),
        v["token"].as_str()?.to_string(),
        v["key_authorization"].as_str()?.to_string(),
    ))
}

/// Store and install a published certificate when it is for our domains and newer than
/// ours; whether it was taken.
fn adopt(listener: &str, cfg: &Acme, value: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<Value>(value) else {
        return false;
    };
    let (Some(chain), Some(key)) = (v["cert"].as_str(), v["key"].as_str()) else {
        return false;
    };
    let Some(validity) = super::chain_validity(chain) else {
        return false;
    };
    if super::stored(cfg).is_some_and(|mine| mine.1 >= validity.1)
        || validity.1 <= super::now_secs()
    {
        return false;
    }
    match super::store(listener, cfg, chain, key) {
        // `stored` also checks the names: a certificate for other domains is dropped.
        Ok(()) if super::stored(cfg).is_some() => {
            tracing::info!(
                listener,
                not_after = validity.1,
                "ACME certificate taken from etcd (ordered by a peer)"
            );
            true
        }
        Ok(()) => false,
        Err(e) => {
            tracing::warn!(listener, error = %e, "cannot store the ACME certificate from etcd");
            false
        }
    }
}

/// Answer the challenges the others publish and take the certificates they order.
async fn follow(coord: Coord, prefix: String, listener: String, cfg: Acme) {
    let challenges = format!("{prefix}challenge/");
    let cert_key = format!("{prefix}cert");
    loop {
        let mut rx = match coord.watch_prefix(&prefix, 0).await {
            Ok(rx) => rx,
            Err(e) => {
                tracing::warn!(listener = %listener, error = %e, "ACME: cannot watch etcd; retrying");
                tokio::time::sleep(WAIT_PEER).await;
                continue;
            }
        };
        let mut shown: HashMap<String, (Challenge, String, String)> = HashMap::new();
        let on_put = |kv: &KeyValue, shown: &mut HashMap<String, (Challenge, String, String)>| {
            if kv.key == cert_key {
                adopt(&listener, &cfg, &kv.value);
            } else if kv.key.starts_with(&challenges) {
                if let Some((kind, domain, token, auth)) = parse_challenge(kv) {
                    if Store::present_now(kind, &domain, &token, &auth).is_ok() {
                        shown.insert(kv.key.clone(), (kind, domain, token));
                    }
                }
            }
        };
        while let Some(ev) = rx.recv().await {
            match ev {
                WatchEvent::Resync(kvs) => {
                    for (_, (kind, domain, token)) in shown.drain() {
                        Store::cleanup_now(kind, &domain, &token);
                    }
                    for kv in &kvs {
                        on_put(kv, &mut shown);
                    }
                }
                WatchEvent::Put(kv) => on_put(&kv, &mut shown),
                WatchEvent::Delete { key, .. } => {
                    if let Some((kind, domain, token)) = shown.remove(&key) {
                        Store::cleanup_now(kind, &domain, &token);
                    }
                }
            }
        }
    }
}

/// Take the lock unless it is held or a backoff runs: its lease.
async fn try_lock(coord: &Coord, prefix: &str) -> Result<Option<LeaseId>, AcmeError> {
    let lease = coord
        .grant_lease(LOCK_TTL)
        .await
        .map_err(|e| etcd_err("lease", e))?;
    let lock = format!("{prefix}lock");
    let me = format!("pid {}", std::process::id());
    let guards = [
        Guard::Absent(lock.clone()),
        Guard::Absent(format!("{prefix}backoff")),
    ];
    match coord
        .put_guarded(&guards, &lock, me.as_bytes(), Some(lease))
        .await
    {
        Ok(true) => Ok(Some(lease)),
        Ok(false) => {
            let _ = coord.revoke(lease).await;
            Ok(None)
        }
        Err(e) => {
            let _ = coord.revoke(lease).await;
            Err(etcd_err("lock", e))
        }
    }
}

/// Record a failed order: nobody orders again before the backoff ends.
async fn record_failure(coord: &Coord, prefix: &str) -> Duration {
    let key = format!("{prefix}failures");
    let failures = match coord.get(&key).await {
        Ok(Some(kv)) => kv.value_str().parse::<u32>().unwrap_or(0),
        _ => 0,
    }
    .saturating_add(1);
    let wait = super::backoff(failures);
    let _ = coord.put(&key, failures.to_string().as_bytes(), None).await;
    if let Ok(lease) = coord.grant_lease(wait).await {
        let _ = coord
            .put(&format!("{prefix}backoff"), b"1", Some(lease))
            .await;
    }
    wait
}

/// The shared loop: wait until due, then order if this balancer gets the lock, else wait
/// for the peer's result (which [`follow`] installs).
pub(super) async fn manage(listener: String, cfg: Acme, share: AcmeShare) {
    let coord = loop {
        match Coord::connect(CoordOptions::new(share.etcd.clone())).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(listener = %listener, error = %e, "ACME: cannot reach etcd; retrying");
                tokio::time::sleep(WAIT_PEER).await;
            }
        }
    };
    let first = cfg.domains.first().cloned().unwrap_or_default();
    let prefix = format!("/rampart/{}/acme/{first}/", share.cluster);
    let follower = tokio::spawn(follow(
        coord.clone(),
        prefix.clone(),
        listener.clone(),
        cfg.clone(),
    ));
    // Ends with this task (an aborted manage aborts its follower).
    struct AbortOnDrop(tokio::task::AbortHandle);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _follower = AbortOnDrop(follower.abort_handle());
    loop {
        if let Some(wait) = super::until_due(&cfg) {
            tokio::time::sleep(wait).await;
            continue;
        }
        // A peer's result may be there already.
        if let Ok(Some(kv)) = coord.get(&format!("{prefix}cert")).await {
            if adopt(&listener, &cfg, &kv.value) && super::until_due(&cfg).is_some() {
                continue;
            }
        }
        let lease = match try_lock(&coord, &prefix).await {
            Ok(Some(l)) => l,
            Ok(None) => {
                tracing::debug!(listener = %listener, "ACME: a peer orders (or backs off); waiting for it");
                tokio::time::sleep(WAIT_PEER).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(listener = %listener, error = %e, "ACME: cannot take the order lock; retrying");
                tokio::time::sleep(WAIT_PEER).await;
                continue;
            }
        };
        let keeper = {
            let coord = coord.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(LOCK_TTL / 3).await;
                    if !matches!(coord.keep_alive_once(lease).await, Ok(Some(_))) {
                        tracing::warn!("ACME: the order lock's lease could not be renewed");
                    }
                }
            })
        };
        tracing::info!(listener = %listener, domains = ?cfg.domains, directory = %cfg.directory, "ordering an ACME certificate (holding the pair's lock)");
        let store = EtcdStore {
            coord: &coord,
            prefix: &prefix,
            lease,
        };
        let r = match super::order(&cfg, &store).await {
            // Stored here first: our own watch then finds it not newer than ours.
            Ok(o) => match super::store(&listener, &cfg, &o.chain, &o.key_pem) {
                Ok(()) => {
                    let published = json!({ "cert": o.chain, "key": o.key_pem }).to_string();
                    coord
                        .put(&format!("{prefix}cert"), published.as_bytes(), None)
                        .await
                        .map(|_| o.validity)
                        .map_err(|e| etcd_err("publishing the certificate", e))
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        keeper.abort();
        match r {
            Ok((_, not_after)) => {
                let _ = coord.delete(&format!("{prefix}failures")).await;
                let _ = coord.revoke(lease).await;
                tracing::info!(listener = %listener, domains = ?cfg.domains, not_after, "ACME certificate ordered, published and installed");
            }
            Err(e) => {
                let wait = record_failure(&coord, &prefix).await;
                let _ = coord.revoke(lease).await;
                tracing::warn!(listener = %listener, error = %e, retry_in_s = wait.as_secs(), "ACME order failed");
                tokio::time::sleep(WAIT_PEER).await;
            }
        }
    }
}
