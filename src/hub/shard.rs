//! A shard: the task that alone owns a set of rooms.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::presence::RemoteUsers;
use super::room::{Delivered, JoinPlan, Member, PendingJoin, Room};
use super::{HubOptions, ShardMsg};
use crate::auth::User;
use crate::broker::SharedBroker;
use crate::metrics::Metrics;
use crate::protocol::{self, DEFAULT_HISTORY, ErrorCode, Frame, Message};
use crate::session::{ConnId, Outbox};
use crate::store::Store;

pub(super) struct Shard {
    index: usize,
    rx: mpsc::Receiver<ShardMsg>,
    /// This shard's own inbox, for store reads that complete later.
    inbox: mpsc::Sender<ShardMsg>,
    /// Rooms with members or pending joins.
    rooms: HashMap<Arc<str>, Room>,
    /// Latest offset of rooms that have no state in `rooms`.
    known: HashMap<Arc<str>, u64>,
    /// Users present through other nodes, per room (cluster mode; kept also for rooms without
    /// local members, so that a later local join sees them).
    remote: HashMap<Arc<str>, RemoteUsers>,
    options: HubOptions,
    broker: SharedBroker,
    store: Store,
    metrics: Arc<Metrics>,
    tracker: TaskTracker,
}

fn not_joined(reply: &Outbox, id: u64) {
    reply.send(protocol::error(
        Some(id),
        ErrorCode::NotJoined,
        "join the room first",
    ));
}

impl Shard {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        index: usize,
        rx: mpsc::Receiver<ShardMsg>,
        inbox: mpsc::Sender<ShardMsg>,
        known: HashMap<Arc<str>, u64>,
        options: HubOptions,
        broker: SharedBroker,
        store: Store,
        metrics: Arc<Metrics>,
        tracker: TaskTracker,
    ) -> Shard {
        Shard {
            remote: HashMap::new(),
            index,
            rx,
            inbox,
            rooms: HashMap::new(),
            known,
            options,
            broker,
            store,
            metrics,
            tracker,
        }
    }

    /// Handles requests until `Stop`.
    pub(super) async fn run(mut self) {
        while let Some(msg) = self.rx.recv().await {
            match msg {
                ShardMsg::Join {
                    member,
                    room,
                    since,
                    id,
                } => self.join(member, room, since, id),
                ShardMsg::Leave {
                    conn,
                    room,
                    id,
                    reply,
                } => self.leave(conn, &room, id, &reply),
                ShardMsg::Publish { conn, publish } => {
                    let joined = self.rooms.get(&publish.room).is_some_and(|r| {
                        r.members.contains_key(&conn) || r.pending.contains_key(&conn)
                    });
                    if joined {
                        self.broker.publish(publish);
                    } else {
                        self.metrics.publishes_refused.inc();
                        not_joined(&publish.reply, publish.request_id);
                    }
                }
                ShardMsg::Presence {
                    conn,
                    room,
                    id,
                    reply,
                } => match self.rooms.get(&room) {
                    Some(r) if r.members.contains_key(&conn) || r.pending.contains_key(&conn) => {
                        reply.send(protocol::presence(
                            id,
                            &room,
                            members(r, self.remote.get(&room)),
                        ));
                    }
                    _ => not_joined(&reply, id),
                },
                ShardMsg::Deliver(message) => self.deliver(message),
                ShardMsg::RemotePresence {
                    room,
                    node,
                    user,
                    present,
                } => self.remote_presence(&room, &node, &user, present),
                ShardMsg::NodeGone { node } => self.node_gone(&node),
                ShardMsg::RemoteReset { entries } => self.remote_reset(entries),
                ShardMsg::Loaded {
                    room,
                    conn,
                    id,
                    result,
                } => self.loaded(room, conn, id, result),
                ShardMsg::Stop => break,
            }
        }
        tracing::debug!(
            shard = self.index,
            rooms = self.rooms.len(),
            "shard stopped"
        );
    }

    fn room_mut(&mut self, name: &Arc<str>) -> &mut Room {
        if !self.rooms.contains_key(name) {
            let last = self.known.remove(name).unwrap_or(0);
            self.metrics.rooms.inc();
            self.rooms.insert(
                name.clone(),
                Room::new(name.clone(), last, self.options.ring_capacity),
            );
        }
        self.rooms.get_mut(name).expect("inserted above")
    }

    /// Drops the state of a room that has nobody left, keeping its latest offset.
    fn forget_if_empty(&mut self, name: &Arc<str>) {
        if self
            .rooms
            .get(name)
            .is_some_and(|r| r.members.is_empty() && r.pending.is_empty())
        {
            let room = self.rooms.remove(name).expect("checked above");
            self.known.insert(room.name, room.last);
            self.metrics.rooms.dec();
        }
    }

    fn join(&mut self, member: Member, name: Arc<str>, since: Option<u64>, id: u64) {
        let window = self.options.recovery_window;
        let room = self.room_mut(&name);
        let conn = member.outbox.conn;
        match room.plan_join(since, window, DEFAULT_HISTORY) {
            JoinPlan::FromRing => self.finish_join(&name, conn, member, id, since, None),
            JoinPlan::Load { after, limit } => {
                room.pending.insert(
                    conn,
                    PendingJoin {
                        member,
                        id,
                        since,
                        attempts: 1,
                    },
                );
                self.load(name, conn, id, after, limit);
            }
        }
    }

    /// Reads messages after `after` from the store, off the shard; the result comes back as
    /// `Loaded`.
    fn load(&self, room: Arc<str>, conn: ConnId, id: u64, after: u64, limit: usize) {
        let store = self.store.clone();
        let inbox = self.inbox.clone();
        self.tracker.spawn(async move {
            let result = store
                .read_after(room.clone(), after, limit)
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, %room, "history read for a join failed");
                });
            let _shard_stopped = inbox
                .send(ShardMsg::Loaded {
                    room,
                    conn,
                    id,
                    result,
                })
                .await;
        });
    }

    fn loaded(&mut self, name: Arc<str>, conn: ConnId, id: u64, result: Result<Vec<Message>, ()>) {
        let window = self.options.recovery_window;
        let Some(room) = self.rooms.get_mut(&name) else {
            return;
        };
        if room.pending.get(&conn).is_none_or(|p| p.id != id) {
            return; // Left, or joined again meanwhile: a newer load answers.
        }
        let Ok(messages) = result else {
            let pending = room.pending.remove(&conn).expect("checked above");
            pending.member.outbox.send(protocol::error(
                Some(id),
                ErrorCode::Unavailable,
                "history is unavailable",
            ));
            self.forget_if_empty(&name);
            return;
        };
        let last = room.last;
        let loaded: Vec<(u64, Frame)> = messages
            .iter()
            .filter(|m| m.offset <= last)
            .map(|m| (m.offset, protocol::message_push(m)))
            .collect();
        let loaded_to = loaded.last().map(|(o, _)| *o);
        // What the store had up to `last` plus what the ring has after it must meet.
        let meets = match loaded_to {
            Some(to) => to == last || room.ring.front().is_some_and(|(o, _)| *o <= to + 1),
            None => room.ring_covers(last.min(DEFAULT_HISTORY as u64)),
        };
        if !meets {
            let pending = room.pending.get(&conn).expect("checked above");
            let (since, attempts) = (pending.since, pending.attempts);
            let plan = room.plan_join(since, window, DEFAULT_HISTORY);
            if let (JoinPlan::Load { after, limit }, true) = (plan, attempts < 3) {
                room.pending.get_mut(&conn).expect("checked above").attempts += 1;
                self.load(name, conn, id, after, limit);
                return;
            }
        }
        room.seed_ring(&loaded);
        let pending = room.pending.remove(&conn).expect("checked above");
        let complete =
            meets || room.plan_join(pending.since, window, DEFAULT_HISTORY) == JoinPlan::FromRing;
        let loaded = LoadedPushes {
            pushes: &loaded,
            complete,
        };
        self.finish_join(&name, conn, pending.member, id, pending.since, Some(loaded));
    }

    /// Makes a joining connection a member and sends its `joined` reply. `loaded` holds what
    /// was read from the store; the ring supplies the rest.
    fn finish_join(
        &mut self,
        name: &Arc<str>,
        conn: ConnId,
        member: Member,
        id: u64,
        since: Option<u64>,
        loaded: Option<LoadedPushes<'_>>,
    ) {
        let window = self.options.recovery_window;
        let room = self.rooms.get_mut(name).expect("the room of a join exists");
        let remote = self.remote.get(name);
        let complete = loaded.as_ref().is_none_or(|l| l.complete);
        let (recovered, after) = match since {
            None => (None, room.last.saturating_sub(DEFAULT_HISTORY as u64)),
            Some(k) => {
                let (recovered, after) = room.recovery(k, window);
                (Some(recovered && complete), after)
            }
        };
        let outbox = member.outbox.clone();
        let user = member.user.clone();
        let first_here = room.add_member(conn, member);
        let loaded = loaded.map_or(&[][..], |l| l.pushes);
        let loaded_to = loaded.last().map_or(after, |(o, _)| *o).max(after);
        let from_store = loaded.iter().filter(|(o, _)| *o > after);
        let from_ring = room.ring_after(loaded_to);
        let messages = from_store.chain(from_ring).map(|(_, f)| f);
        let reply = protocol::joined(
            id,
            &room.name,
            room.last,
            members(room, remote),
            messages,
            recovered,
        );
        outbox.send(reply);
        if first_here {
            self.broker.presence(name, &user, true);
            if !remote.is_some_and(|r| r.contains(&user.id)) {
                let event = protocol::member_event("member_joined", &room.name, &user);
                room.broadcast(&event, Some(conn), &self.metrics);
            }
        }
    }

    /// A user's presence through another node changed: tell local members when the user
    /// appears or disappears cluster-wide.
    fn remote_presence(&mut self, name: &Arc<str>, node: &Arc<str>, user: &User, present: bool) {
        let remote = self.remote.entry(name.clone()).or_default();
        let here = self
            .rooms
            .get(name)
            .is_some_and(|r| r.users.contains_key(&user.id));
        let changed = if present {
            remote.add(node, user)
        } else {
            remote.remove(node, &user.id)
        };
        if remote.is_empty() {
            self.remote.remove(name);
        }
        if changed
            && !here
            && let Some(room) = self.rooms.get(name)
        {
            let kind = if present {
                "member_joined"
            } else {
                "member_left"
            };
            room.broadcast(
                &protocol::member_event(kind, name, user),
                None,
                &self.metrics,
            );
        }
    }

    fn node_gone(&mut self, node: &str) {
        let mut left = Vec::new();
        self.remote.retain(|room, remote| {
            for user in remote.remove_node(node) {
                left.push((room.clone(), user));
            }
            !remote.is_empty()
        });
        for (name, user) in left {
            if let Some(room) = self.rooms.get(&name)
                && !room.users.contains_key(&user.id)
            {
                room.broadcast(
                    &protocol::member_event("member_left", &name, &user),
                    None,
                    &self.metrics,
                );
            }
        }
    }

    /// Replaces the remote presence of this shard's rooms, announcing only the differences.
    fn remote_reset(&mut self, entries: Vec<(Arc<str>, Arc<str>, User)>) {
        let wanted: std::collections::HashSet<(Arc<str>, Arc<str>, Arc<str>)> = entries
            .iter()
            .map(|(room, node, user)| (room.clone(), node.clone(), user.id.clone()))
            .collect();
        let mut stale = Vec::new();
        for (room, remote) in &self.remote {
            for (node, user_id) in remote.pairs() {
                if !wanted.contains(&(room.clone(), node.clone(), user_id.clone())) {
                    let user = remote.users().find(|u| u.id == user_id).cloned();
                    stale.extend(user.map(|u| (room.clone(), node, u)));
                }
            }
        }
        for (room, node, user) in stale {
            self.remote_presence(&room, &node, &user, false);
        }
        for (room, node, user) in entries {
            self.remote_presence(&room, &node, &user, true);
        }
    }

    fn leave(&mut self, conn: ConnId, name: &Arc<str>, id: Option<u64>, reply: &Outbox) {
        if let Some(room) = self.rooms.get_mut(name) {
            room.pending.remove(&conn);
            if let Some(user) = room.remove_member(conn) {
                self.broker.presence(name, &user, false);
                if !self.remote.get(name).is_some_and(|r| r.contains(&user.id)) {
                    let event = protocol::member_event("member_left", name, &user);
                    room.broadcast(&event, None, &self.metrics);
                }
            }
        }
        self.forget_if_empty(name);
        if let Some(id) = id {
            reply.send(protocol::simple(id, "left", Some(name)));
        }
    }

    fn deliver(&mut self, message: Message) {
        let Some(room) = self.rooms.get_mut(&message.room) else {
            let last = self.known.entry(message.room.clone()).or_insert(0);
            *last = (*last).max(message.offset);
            return;
        };
        if let Delivered::Gap { last } = room.deliver(&message, &self.metrics) {
            // Single node: cannot happen (the writer delivers every offset in order).
            tracing::warn!(room = %room.name, last, offset = message.offset, "offset gap in deliveries");
            room.ring.clear();
            room.last = message.offset - 1;
            room.deliver(&message, &self.metrics);
        }
    }
}

/// Pushes read from the store for a join (contiguous, ending at or before `room.last`).
struct LoadedPushes<'a> {
    pushes: &'a [(u64, Frame)],
    /// False when they and the ring leave a hole: the reply then says `recovered: false`.
    complete: bool,
}

/// The members of a room as clients see them: local users, then users present only through
/// other nodes; each once.
fn members<'a>(room: &'a Room, remote: Option<&'a RemoteUsers>) -> impl Iterator<Item = &'a User> {
    let remote = remote
        .into_iter()
        .flat_map(RemoteUsers::users)
        .filter(|u| !room.users.contains_key(&u.id));
    room.users.values().map(|(u, _)| u).chain(remote)
}
