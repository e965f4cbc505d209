//! One batch's transaction: what the writer does in SQLite for each operation, and the changes
//! to its state that apply only once the transaction committed.

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::params;

use rusqlite::Connection;

use super::ops::{AppendOutcome, KeyId, Replicated, RoomLog, WriteOp};
use crate::protocol::{IDEMPOTENCY_WINDOW_MS, Message};

/// What one batch changes, applied to the writer's state only once it is committed.
#[derive(Default)]
pub(super) struct Changes {
    pub(super) rooms: HashMap<Arc<str>, RoomLog>,
    pub(super) keys: HashMap<KeyId, (u64, u64)>,
}

/// Writes `batch` in one transaction on `conn`, given the writer's committed state (`rooms`,
/// `keys`); fills `outcomes` (one per op) and `changes`, which the writer applies only if the
/// transaction committed.
pub(super) fn write(
    conn: &mut Connection,
    rooms: &HashMap<Arc<str>, RoomLog>,
    keys: &HashMap<KeyId, (u64, u64)>,
    batch: &[WriteOp],
    outcomes: &mut Vec<Option<AppendOutcome>>,
    changes: &mut Changes,
) -> rusqlite::Result<()> {
    let log_of = |changes: &mut Changes, room: &Arc<str>| -> RoomLog {
        changes
            .rooms
            .get(room)
            .or_else(|| rooms.get(room))
            .cloned()
            .unwrap_or_default()
    };
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT OR IGNORE INTO messages (room, offset, user_id, user_name, body, ts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut insert_key = tx.prepare_cached(
                "INSERT OR REPLACE INTO idempotency (room, user_id, key, offset, ts) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
        let cutoff = crate::protocol::now_ms().saturating_sub(IDEMPOTENCY_WINDOW_MS);
        for op in batch {
            match op {
                WriteOp::Append(a) => {
                    let key_id = a
                        .key
                        .as_ref()
                        .map(|k| (a.room.clone(), a.user.id.clone(), k.clone()));
                    if let Some(id) = &key_id {
                        let seen = changes.keys.get(id).or_else(|| keys.get(id));
                        if let Some(&(offset, _)) = seen.filter(|(_, ts)| *ts >= cutoff) {
                            outcomes.push(Some(AppendOutcome::Duplicate { offset }));
                            continue;
                        }
                    }
                    let mut log = log_of(changes, &a.room);
                    let offset = log.contiguous + 1;
                    insert.execute(params![
                        &*a.room,
                        offset as i64,
                        &*a.user.id,
                        &*a.user.name,
                        &*a.body,
                        a.ts as i64
                    ])?;
                    if let (Some(id), Some(key)) = (key_id, &a.key) {
                        insert_key.execute(params![
                            &*a.room,
                            &*a.user.id,
                            &**key,
                            offset as i64,
                            a.ts as i64
                        ])?;
                        changes.keys.insert(id, (offset, a.ts));
                    }
                    log.stored(offset);
                    changes.rooms.insert(a.room.clone(), log);
                    outcomes.push(Some(AppendOutcome::Stored(Message {
                        room: a.room.clone(),
                        offset,
                        user: a.user.clone(),
                        body: a.body.clone(),
                        ts: a.ts,
                    })));
                }
                WriteOp::Insert(ins) => {
                    for Replicated { message: m, key } in &ins.messages {
                        insert.execute(params![
                            &*m.room,
                            m.offset as i64,
                            &*m.user.id,
                            &*m.user.name,
                            &*m.body,
                            m.ts as i64
                        ])?;
                        if let Some(key) = key {
                            insert_key.execute(params![
                                &*m.room,
                                &*m.user.id,
                                &**key,
                                m.offset as i64,
                                m.ts as i64
                            ])?;
                        }
                        let mut log = log_of(changes, &m.room);
                        log.stored(m.offset);
                        changes.rooms.insert(m.room.clone(), log);
                    }
                    outcomes.push(None);
                }
                WriteOp::Meta { key, value } => {
                    tx.execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
                        params![key, value],
                    )?;
                    outcomes.push(None);
                }
                WriteOp::Revoke {
                    user,
                    generation,
                    at,
                } => {
                    tx.execute(
                            "INSERT INTO revocations (user_id, gen, at) VALUES (?1, ?2, ?3)
                             ON CONFLICT (user_id) DO UPDATE SET gen = max(gen, excluded.gen), at = excluded.at",
                            params![&**user, *generation as i64, *at as i64],
                        )?;
                    outcomes.push(None);
                }
                WriteOp::Close(_) => outcomes.push(None),
            }
        }
        let mut upsert_room = tx.prepare_cached(
                "INSERT INTO rooms (room, last_offset) VALUES (?1, ?2)
                 ON CONFLICT (room) DO UPDATE SET last_offset = max(last_offset, excluded.last_offset)",
            )?;
        for (room, log) in changes.rooms.iter() {
            upsert_room.execute(params![&**room, log.contiguous as i64])?;
        }
    }
    tx.commit()
}
