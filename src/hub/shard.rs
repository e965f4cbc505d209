//! A shard: the task that alone owns a set of rooms.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::join::{self, Assembled, PendingJoin, Plan};
use super::presence::RemoteUsers;
use super::room::{Delivered, Room};
use super::{JoinOutcome, JoinRequest, RoomSummary, ShardContext, ShardMsg, listed_members};
use crate::broker::PresenceEvent;
use crate::conn::{ConnId, Outbox};
use crate::protocol::{Encoded, ErrorCode, JoinedReply, MemberEvent, PerCodec};
use crate::store::{JoinRead, StoreError};

pub(super) struct Shard {
    index: usize,
    rx: mpsc::Receiver<ShardMsg>,
    /// This shard's own inbox, for store reads that complete later.
    inbox: mpsc::Sender<ShardMsg>,
    /// Rooms with members, joins in flight or deliveries waiting for their first read.
    rooms: HashMap<Arc<str>, Room>,
    /// Joins waiting for a store read, by load id.
    pending: HashMap<u64, (Arc<str>, PendingJoin)>,
    /// Joins waiting for a room's first read (it tells the room's latest offset), by room.
    waiting: HashMap<Arc<str>, Vec<PendingJoin>>,
    next_load: u64,
    /// Users present through other nodes, per room (cluster mode; kept also for rooms without
    /// local members, so that a later local join sees them).
    remote: HashMap<Arc<str>, RemoteUsers>,
    ctx: ShardContext,
}

impl Shard {
    pub(super) fn new(
        index: usize,
        rx: mpsc::Receiver<ShardMsg>,
        inbox: mpsc::Sender<ShardMsg>,
        ctx: ShardContext,
    ) -> Shard {
        Shard {
            index,
            rx,
            inbox,
            rooms: HashMap::new(),
            pending: HashMap::new(),
            waiting: HashMap::new(),
            next_load: 1,
            remote: HashMap::new(),
            ctx,
        }
    }

    /// Handles requests until `Stop`.
    pub(super) async fn run(mut self) {
        while let Some(msg) = self.rx.recv().await {
            match msg {
                ShardMsg::Join { request, outcome } => self.join(PendingJoin { request, outcome }),
                ShardMsg::Leave {
                    conn,
                    room,
                    id,
                    outbox,
                } => self.leave(conn, &room, id, &outbox),
                ShardMsg::Presence {
                    conn,
                    room,
                    id,
                    outbox,
                } => self.presence(conn, &room, id, &outbox),
                ShardMsg::Deliver(message) => self.deliver(message),
                ShardMsg::Remote(event) => self.remote(event),
                ShardMsg::Loaded { room, load, result } => self.loaded(room, load, result),
                ShardMsg::Summary(reply) => {
                    let _asker_gone = reply.send(self.summary());
                }
                ShardMsg::Stop => break,
            }
        }
        // Joins still waiting get no reply: their sessions are closing.
        tracing::debug!(
            shard = self.index,
            rooms = self.rooms.len(),
            "shard stopped"
        );
    }

    fn join(&mut self, pending: PendingJoin) {
        let name = pending.request.room.clone();
        let window = self.ctx.recovery_window;
        let room = self.rooms.entry(name.clone()).or_insert_with(|| {
            self.ctx.metrics.rooms.inc();
            Room::new(name.clone(), self.ctx.ring_capacity)
        });
        if room.last.is_none() {
            // The room's latest offset is not known: its first read tells it. While that read
            // is in flight, later joins wait for it.
            match self.waiting.get_mut(&name) {
                Some(queue) => queue.push(pending),
                None => {
                    self.waiting.insert(name, Vec::new());
                    self.load(pending, None);
                }
            }
            return;
        }
        match join::plan(room, pending.request.since, window) {
            Plan::Ring => {
                let assembled = join::from_ring(room, pending.request.since, window);
                self.finish(pending, assembled);
            }
            Plan::Load => {
                let upto = room.last;
                self.load(pending, upto);
            }
        }
    }

    /// Reads what a join needs from the store, off the shard; the result comes back as
    /// `Loaded`. `upto`: the room's latest offset, or `None` for the room's first read.
    fn load(&mut self, pending: PendingJoin, upto: Option<u64>) {
        let load = self.next_load;
        self.next_load += 1;
        let room = pending.request.room.clone();
        let since = pending.request.since;
        self.pending.insert(load, (room.clone(), pending));
        let store = self.ctx.store.clone();
        let inbox = self.inbox.clone();
        let window = self.ctx.recovery_window;
        self.ctx.tracker.spawn(async move {
            let result = store.read_join(room.clone(), since, window, upto).await;
            let _shard_stopped = inbox.send(ShardMsg::Loaded { room, load, result }).await;
        });
    }

    fn loaded(&mut self, name: Arc<str>, load: u64, result: Result<JoinRead, StoreError>) {
        let Some((_, pending)) = self.pending.remove(&load) else {
            return;
        };
        let first = self.rooms.get(&name).is_some_and(|r| r.last.is_none());
        let read = match result {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(error = %e, room = %name, "history read for a join failed");
                self.refuse(pending, ErrorCode::Unavailable, "history is unavailable");
                if first {
                    // Nobody knows the room's latest offset: the joins waiting for it fail too.
                    for waiting in self.waiting.remove(&name).unwrap_or_default() {
                        self.refuse(waiting, ErrorCode::Unavailable, "history is unavailable");
                    }
                }
                self.forget_if_idle(&name);
                return;
            }
        };
        let metrics = self.ctx.metrics.clone();
        let room = self
            .rooms
            .get_mut(&name)
            .expect("a room with a load in flight exists");
        let loaded: Vec<Arc<Encoded>> = read.messages.iter().cloned().map(Encoded::new).collect();
        if first {
            room.known(read.last, &metrics);
        }
        room.seed_ring(&loaded);
        let assembled = join::from_read(room, pending.request.since, &read, loaded);
        self.finish(pending, assembled);
        if first {
            // The room's latest offset is known now: plan the joins that waited for it.
            for waiting in self.waiting.remove(&name).unwrap_or_default() {
                self.join(waiting);
            }
        }
    }

    fn refuse(&self, pending: PendingJoin, code: ErrorCode, message: &str) {
        let outbox = &pending.request.member.outbox;
        outbox.send(outbox.codec.error(Some(pending.request.id), code, message));
        let _gone = pending.outcome.send(JoinOutcome::Refused);
    }

    /// Queues the `joined` reply, then makes the connection a member (so the pushes after the
    /// reply follow it, with no overlap and no hole), and tells the others when the user is
    /// new here.
    fn finish(&mut self, pending: PendingJoin, assembled: Assembled) {
        let PendingJoin { request, outcome } = pending;
        let JoinRequest {
            member,
            room: name,
            id,
            reservation,
            ..
        } = request;
        let room = self
            .rooms
            .get_mut(&name)
            .expect("the room of a join exists");
        let remote = self.remote.get(&name);
        let outbox = member.outbox.clone();
        let codec = outbox.codec;
        let head = JoinedReply {
            id,
            room: &name,
            offset: room.last.unwrap_or(0),
            recovered: assembled.recovered,
        };
        let conn = outbox.conn;
        let user = member.user.clone();
        let first_here = room.add_member(conn, member);
        let (reply, _held) = codec.joined(
            &head,
            listed_members(room, remote),
            &assembled.messages,
            assembled.more,
        );
        outbox.send(reply);
        drop(reservation);
        let _gone = outcome.send(JoinOutcome::Joined);
        if first_here {
            self.ctx.broker.presence(&name, &user, true);
            if !remote.is_some_and(|r| r.contains(&user.id)) {
                let mut event =
                    PerCodec::new(|c| c.member_event(MemberEvent::Joined, &name, &user));
                room.broadcast(|c| event.get(c), Some(conn));
            }
        }
    }

    fn leave(&mut self, conn: ConnId, name: &Arc<str>, id: Option<u64>, outbox: &Outbox) {
        if let Some(room) = self.rooms.get_mut(name)
            && let Some(user) = room.remove_member(conn)
        {
            self.ctx.broker.presence(name, &user, false);
            if !self.remote.get(name).is_some_and(|r| r.contains(&user.id)) {
                let mut event = PerCodec::new(|c| c.member_event(MemberEvent::Left, name, &user));
                room.broadcast(|c| event.get(c), None);
            }
        }
        self.forget_if_idle(name);
        if let Some(id) = id {
            outbox.send(outbox.codec.left(id, name));
        }
    }

    fn presence(&self, conn: ConnId, name: &Arc<str>, id: u64, outbox: &Outbox) {
        let codec = outbox.codec;
        let frame = match self.rooms.get(name) {
            Some(room) if room.members.contains_key(&conn) => {
                codec.presence(id, name, listed_members(room, self.remote.get(name)))
            }
            _ => codec.error(Some(id), ErrorCode::NotJoined, "join the room first"),
        };
        outbox.send(frame);
    }

    fn summary(&self) -> Vec<RoomSummary> {
        self.rooms
            .values()
            .map(|r| RoomSummary {
                name: r.name.clone(),
                users: r.users.len(),
                connections: r.members.len(),
                last: r.last.unwrap_or(0),
                delivered: r.delivered,
            })
            .collect()
    }

    /// Drops the state of a room that has nobody and nothing in flight: the store keeps its
    /// log, the next join reads what it needs.
    fn forget_if_idle(&mut self, name: &Arc<str>) {
        let busy =
            self.waiting.contains_key(name) || self.pending.values().any(|(room, _)| room == name);
        if !busy && self.rooms.get(name).is_some_and(Room::is_idle) {
            self.rooms.remove(name);
            self.ctx.metrics.rooms.dec();
        }
    }

    fn deliver(&mut self, message: crate::protocol::Message) {
        // A room nobody is in has no state: the store has the message.
        let Some(room) = self.rooms.get_mut(&message.room) else {
            return;
        };
        if let Delivered::Jumped { from } = room.deliver(message, &self.ctx.metrics) {
            tracing::warn!(room = %room.name, from, to = ?room.last, "offsets missing from the deliveries; the room moved past them");
        }
    }

    /// A user's presence through another node changed: tell local members when the user
    /// appears in or disappears from the whole cluster.
    fn remote(&mut self, event: PresenceEvent) {
        let (name, node, user, present) = match event {
            PresenceEvent::Joined { room, node, user } => (room, node, user, true),
            PresenceEvent::Left { room, node, user } => (room, node, user, false),
        };
        let remote = self.remote.entry(name.clone()).or_default();
        let changed = if present {
            remote.add(&node, &user)
        } else {
            remote.remove(&node, &user.id)
        };
        if remote.is_empty() {
            self.remote.remove(&name);
        }
        let Some(room) = self.rooms.get(&name) else {
            return;
        };
        if changed && !room.users.contains_key(&user.id) {
            let kind = if present {
                MemberEvent::Joined
            } else {
                MemberEvent::Left
            };
            let mut event = PerCodec::new(|c| c.member_event(kind, &name, &user));
            room.broadcast(|c| event.get(c), None);
        }
    }
}
