//! Publishing: the member record in etcd, the metrics, and the snapshot the HTTP API
//! serves (Patroni's view of the node included).

use super::*;

impl Agent {
    pub(super) async fn publish(
        &mut self,
        keys: &Keys,
        dcs_ok: bool,
        st: Option<&PgStatus>,
        action: &Action,
    ) {
        let holder_is_me = keys
            .leader
            .as_ref()
            .is_some_and(|kv| kv.value_str() == self.node.name);
        let leader_lsn = keys
            .leader
            .as_ref()
            .and_then(|kv| keys.members.iter().find(|m| m.name == kv.value_str()))
            .map(|m| m.lsn);
        let (role, state) = match st {
            Some(s) if !s.in_recovery => ("primary", "running"),
            Some(s) if s.streaming => ("replica", "streaming"),
            Some(_) => ("replica", "not streaming"),
            None if self.child.is_some() || matches!(action, Action::Start { .. }) => {
                ("starting", "starting")
            }
            None if self.demoted => ("demoted", "stopped"),
            None if !self.ctl.has_data() => ("stopped", "no data"),
            None => ("stopped", "stopped"),
        };
        let mut state = state.to_string();
        if self.disk_full {
            state.push_str(", disk full");
        }
        if !dcs_ok {
            state.push_str(", etcd unreachable");
        }
        let lag_bytes = match (st, leader_lsn) {
            (Some(s), Some(l)) if s.in_recovery => l.saturating_sub(s.lsn),
            _ => 0,
        };
        let lag_too_big = st.is_some_and(|s| s.in_recovery) && lag_bytes > self.cfg.max_lag_bytes;
        let mut state = if lag_too_big {
            format!("{state}, lagging beyond max_lag")
        } else {
            state
        };
        // The timeline it is on (a replica's from find_timeline, not the lagging checkpoint's).
        let (timeline, timeline_known) = match st {
            Some(s) if !s.in_recovery => (s.timeline, true),
            Some(s) => match (s.received_tli, self.local_timeline) {
                (Some(t), _) => (t, true),
                (None, Some((t, k))) => (t.max(s.timeline), k),
                (None, None) => (s.timeline, false),
            },
            None => (0, false),
        };
        if let (Some(c), Some(_)) = (self.cluster_tl, st) {
            if timeline < c {
                state.push_str(if timeline_known {
                    ", behind the cluster timeline"
                } else {
                    ", timeline unknown"
                });
            }
        }
        let sync_standby = keys.sync.as_ref().and_then(|s| s.sync_standby.as_deref())
            == Some(self.node.name.as_str());
        let lease_age = if holder_is_me {
            self.fence.renewed_at().map(|t| t.elapsed().as_secs_f64())
        } else {
            None
        };
        let me = Member {
            name: self.node.name.clone(),
            role: role.to_string(),
            state,
            host: self.node.host.clone(),
            port: self.node.port,
            api_url: format!("http://{}", self.node.api),
            timeline,
            timeline_known,
            lsn: st.map(|s| s.lsn).unwrap_or(0),
            lag_bytes,
            lag_seconds: st.map(|s| s.replay_delay_seconds).unwrap_or(0.0),
            sync_standby,
            nofailover: self.node.nofailover,
            lease_age_seconds: lease_age,
            receive_lsn: st.map(|s| s.receive_lsn.max(s.lsn)).unwrap_or(0),
            streaming: st.is_some_and(|s| s.streaming),
            action: match action {
                Action::Wait(w) => format!("wait: {w}"),
                a => format!("{a:?}"),
            },
            pending_restart: !self.pending_restart.is_empty() && self.child.is_some(),
        };
        if dcs_ok {
            if let (Some(lease), Ok(body)) = (self.fence.lease(), serde_json::to_vec(&me)) {
                if let Err(e) = self
                    .coord
                    .put(
                        &dcs::member_key(&self.cfg.cluster, &self.node.name),
                        &body,
                        Some(lease),
                    )
                    .await
                {
                    tracing::warn!(error = %e, "cannot post our member state");
                }
            }
        }
        let writable_leader = holder_is_me && self.lease_ok() && st.is_some_and(|s| !s.in_recovery);
        let mut members: Vec<Member> = keys
            .members
            .iter()
            .filter(|m| m.name != me.name)
            .cloned()
            .collect();
        members.push(me.clone());
        members.sort_by(|a, b| a.name.cmp(&b.name));
        let view = ClusterView {
            cluster: self.cfg.cluster.clone(),
            leader: keys.leader.as_ref().map(|kv| kv.value_str()),
            timeline: keys.timeline.as_ref().map(|(t, _)| t.timeline),
            paused: keys.paused,
            members,
        };
        self.metrics.update(&me, st, writable_leader);
        if dcs_ok {
            self.dcs_last_seen = Some(dcs::unix_ms() / 1000);
        }
        if timeline != self.history.0 && st.is_some() {
            let file = self
                .ctl
                .data_dir
                .join("pg_wal")
                .join(format!("{timeline:08X}.history"));
            let text = std::fs::read_to_string(file).unwrap_or_default();
            self.history = (timeline, crate::api::patroni::history_lines(&text));
        }
        let node = self.patroni_view(keys, dcs_ok, st, holder_is_me, timeline, writable_leader);
        if let Ok(mut s) = self.shared.lock() {
            *s = Snapshot {
                view: if dcs_ok {
                    Some(view)
                } else {
                    s.view.clone().map(|mut v| {
                        v.members.retain(|m| m.name != me.name);
                        v.members.push(me.clone());
                        v.members.sort_by(|a, b| a.name.cmp(&b.name));
                        v
                    })
                },
                me: Some(me),
                writable_leader,
                writable_until: self.valid_until(),
                pg_running: st.is_some(),
                replica_streaming: st.is_some_and(|s| s.in_recovery && s.streaming),
                lag_bytes,
                lag_seconds: st.map(|s| s.replay_delay_seconds).unwrap_or(0.0),
                node: Some(node),
                history: crate::api::patroni::history_with_leaders(
                    &self.history.1,
                    timeline,
                    keys.history
                        .as_ref()
                        .map(|(h, _)| h.as_slice())
                        .unwrap_or(&[]),
                ),
            };
        }
    }

    /// The node as Patroni's health checks see it (pure rules in [`crate::api::patroni`]).
    pub(super) fn patroni_view(
        &self,
        keys: &Keys,
        dcs_ok: bool,
        st: Option<&PgStatus>,
        holder_is_me: bool,
        timeline: u32,
        writable_leader: bool,
    ) -> crate::api::patroni::NodeView {
        use crate::api::patroni::{NodeView, PgView, Running};
        let leader_lsn = keys
            .leader
            .as_ref()
            .and_then(|kv| keys.members.iter().find(|m| m.name == kv.value_str()))
            .map(|m| m.lsn)
            .or(self.last_leader_lsn);
        NodeView {
            name: self.node.name.clone(),
            scope: self.cfg.cluster.clone(),
            leader_until: if holder_is_me {
                self.valid_until()
            } else {
                None
            },
            writable_until: if writable_leader {
                self.valid_until()
            } else {
                None
            },
            pg: match st {
                Some(s) => PgView::Running(Running {
                    primary: !s.in_recovery,
                    timeline,
                    lsn: s.lsn,
                    receive_lsn: s.receive_lsn,
                    streaming: s.streaming,
                    replay_delay_seconds: s.replay_delay_seconds,
                    server_version: s.server_version,
                    postmaster_start_time: s.postmaster_start_time.clone(),
                }),
                None if self.child.is_some() => PgView::Starting,
                None => PgView::Stopped,
            },
            sync_standby: keys.sync.as_ref().and_then(|s| s.sync_standby.as_deref())
                == Some(self.node.name.as_str()),
            leader_lsn,
            dcs_ok,
            cluster_unlocked: dcs_ok && keys.leader.is_none(),
            paused: keys.paused,
            nofailover: self.node.nofailover,
            tags: self.node.tags.clone(),
            heartbeat: Instant::now(),
            ttl: self.cfg.ttl,
            max_lag_bytes: self.cfg.max_lag_bytes,
            dcs_last_seen: self.dcs_last_seen,
        }
    }

    /// PostgreSQL is being stopped: `/primary` and `/leader` turn 503 now, not when the
    /// turn publishes (a fast shutdown can take seconds, and load balancers must not send
    /// new connections to a primary that is going away).
    pub(super) fn unpublish_writable(&self) {
        if let Ok(mut s) = self.shared.lock() {
            s.writable_leader = false;
            s.writable_until = None;
            if let Some(n) = s.node.as_mut() {
                n.writable_until = None;
                n.leader_until = None;
            }
        }
    }
}
