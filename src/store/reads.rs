//! Reads of the room log. Every read stays within the room's contiguous prefix.

use std::sync::Arc;

use rusqlite::{Connection, params};

use super::{Replicated, Store, StoreError, row_to_message};
use crate::protocol::{DEFAULT_HISTORY, MAX_SINCE_MESSAGES, Message, Page};

/// A page of a room's log (a `history` reply's messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRead {
    /// Oldest first.
    pub messages: Vec<Message>,
    /// For `Page::After`: further messages exist after these.
    pub more: bool,
}

/// What a join needs from the store, read in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRead {
    /// The room's latest offset the reply is about (its contiguous prefix, or the shard's own
    /// latest offset when it gave one).
    pub last: u64,
    /// Oldest first: the last 50 (plain join) or those after `since` (at most 1,000).
    pub messages: Vec<Message>,
    /// Further messages up to `last` exist after these (`since` joins).
    pub more: bool,
    /// For a join with `since`: every message after it up to `last` is stored and within the
    /// recovery window.
    pub recovered: bool,
}

fn contiguous(conn: &Connection, room: &str) -> Result<u64, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT last_offset FROM rooms WHERE room = ?1")?;
    let mut rows = stmt.query(params![room])?;
    Ok(match rows.next()? {
        Some(r) => r.get::<_, i64>(0)? as u64,
        None => 0,
    })
}

/// Messages with `after < offset <= upto`, oldest first, at most `limit`.
fn range(
    conn: &Connection,
    room: &Arc<str>,
    after: u64,
    upto: u64,
    limit: usize,
) -> Result<Vec<Message>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT offset, user_id, user_name, body, ts FROM messages
         WHERE room = ?1 AND offset > ?2 AND offset <= ?3 ORDER BY offset ASC LIMIT ?4",
    )?;
    let rows = stmt.query_map(
        params![
            &**room,
            after as i64,
            upto.min(i64::MAX as u64) as i64,
            limit as i64
        ],
        |r| row_to_message(room, r),
    )?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

fn count(conn: &Connection, room: &str, after: u64, upto: u64) -> Result<u64, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT COUNT(*) FROM messages WHERE room = ?1 AND offset > ?2 AND offset <= ?3",
    )?;
    Ok(
        stmt.query_row(params![room, after as i64, upto as i64], |r| {
            r.get::<_, i64>(0)
        })? as u64,
    )
}

impl Store {
    /// A page of `room`'s log: at most `limit` messages before or after an offset.
    pub async fn read_page(
        &self,
        room: Arc<str>,
        page: Page,
        limit: usize,
    ) -> Result<PageRead, StoreError> {
        self.read(move |conn| {
            let tx = conn.unchecked_transaction()?;
            let last = contiguous(&tx, &room)?;
            let read = match page {
                Page::After(after) => {
                    let mut messages = range(&tx, &room, after, last, limit + 1)?;
                    let more = messages.len() > limit;
                    messages.truncate(limit);
                    PageRead { messages, more }
                }
                Page::Before(before) => {
                    let before = before.map_or(u64::MAX, |b| b.saturating_sub(1));
                    let upto = before.min(last);
                    let mut stmt = tx.prepare_cached(
                        "SELECT offset, user_id, user_name, body, ts FROM messages
                         WHERE room = ?1 AND offset <= ?2 ORDER BY offset DESC LIMIT ?3",
                    )?;
                    let rows = stmt.query_map(
                        params![&*room, upto.min(i64::MAX as u64) as i64, limit as i64],
                        |r| row_to_message(&room, r),
                    )?;
                    let mut messages = rows.collect::<Result<Vec<_>, _>>()?;
                    messages.reverse();
                    PageRead {
                        messages,
                        more: false,
                    }
                }
            };
            Ok(read)
        })
        .await
    }

    /// What a join of `room` needs: with `since` the messages after it (at most 1,000, within
    /// the latest `window`), else the last 50; up to `upto` (the shard's latest offset) or,
    /// when the shard does not know the room, up to the contiguous prefix.
    pub async fn read_join(
        &self,
        room: Arc<str>,
        since: Option<u64>,
        window: u64,
        upto: Option<u64>,
    ) -> Result<JoinRead, StoreError> {
        self.read(move |conn| {
            let tx = conn.unchecked_transaction()?;
            let stored = contiguous(&tx, &room)?;
            let last = upto.map_or(stored, |u| u.min(stored));
            let read = match since {
                None => {
                    let after = last.saturating_sub(DEFAULT_HISTORY as u64);
                    JoinRead {
                        last,
                        messages: range(&tx, &room, after, last, DEFAULT_HISTORY)?,
                        more: false,
                        recovered: false,
                    }
                }
                Some(k) if k >= last => JoinRead {
                    last,
                    messages: Vec::new(),
                    more: false,
                    recovered: k == last,
                },
                Some(k) => {
                    let after = k.max(last.saturating_sub(window));
                    let mut messages = range(&tx, &room, after, last, MAX_SINCE_MESSAGES + 1)?;
                    let more = messages.len() > MAX_SINCE_MESSAGES;
                    messages.truncate(MAX_SINCE_MESSAGES);
                    // Recovered only when nothing between `since` and `last` is missing: the
                    // window held it all and the log has every offset of the range.
                    let recovered = after == k && count(&tx, &room, k, last)? == last - k;
                    JoinRead {
                        last,
                        messages,
                        more,
                        recovered,
                    }
                }
            };
            Ok(read)
        })
        .await
    }

    /// Every room's contiguous prefix (where a node's catch-up starts).
    pub async fn rooms_contiguous(&self) -> Result<Vec<(Arc<str>, u64)>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached("SELECT room, last_offset FROM rooms")?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get::<_, String>(0)?.into(), r.get::<_, i64>(1)? as u64))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Every room's highest stored offset, contiguous or not (what a Redis repair must not
    /// number below).
    pub async fn room_maxima(&self) -> Result<Vec<(Arc<str>, u64)>, StoreError> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT room, MAX(offset) FROM messages GROUP BY room")?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get::<_, String>(0)?.into(), r.get::<_, i64>(1)? as u64))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Messages of `room` with offset in `(after, upto]`, at most `limit`, with their
    /// idempotency keys, whether or not the prefix is contiguous there (a Redis repair copies
    /// them back).
    pub async fn read_stored(
        &self,
        room: Arc<str>,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<Replicated>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT m.offset, m.user_id, m.user_name, m.body, m.ts, i.key FROM messages m
                 LEFT JOIN idempotency i
                   ON i.room = m.room AND i.user_id = m.user_id AND i.offset = m.offset
                 WHERE m.room = ?1 AND m.offset > ?2 AND m.offset <= ?3
                 ORDER BY m.offset ASC LIMIT ?4",
            )?;
            let rows = stmt.query_map(
                params![
                    &*room,
                    after as i64,
                    upto.min(i64::MAX as u64) as i64,
                    limit as i64
                ],
                |r| {
                    Ok(Replicated {
                        message: row_to_message(&room, r)?,
                        key: r.get::<_, Option<String>>(5)?.map(Arc::from),
                    })
                },
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// The offset of the message of `user` with this `ts` and `body` in `room`, if this node has
    /// it (a publish whose answer was lost with Redis's data is looked up in the logs).
    pub async fn find(
        &self,
        room: Arc<str>,
        user: Arc<str>,
        ts: u64,
        body: Arc<str>,
    ) -> Result<Option<u64>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT offset FROM messages
                 WHERE room = ?1 AND user_id = ?2 AND ts = ?3 AND body = ?4 LIMIT 1",
            )?;
            let mut rows = stmt.query(params![&*room, &*user, ts as i64, &*body])?;
            Ok(match rows.next()? {
                Some(r) => Some(r.get::<_, i64>(0)? as u64),
                None => None,
            })
        })
        .await
    }

    /// Idempotency keys younger than `since_ms`: (room, user id, key, offset, ts).
    pub async fn recent_keys(
        &self,
        since_ms: u64,
    ) -> Result<Vec<(Arc<str>, Arc<str>, Arc<str>, u64, u64)>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT room, user_id, key, offset, ts FROM idempotency WHERE ts >= ?1",
            )?;
            let rows = stmt.query_map(params![since_ms as i64], |r| {
                Ok((
                    r.get::<_, String>(0)?.into(),
                    r.get::<_, String>(1)?.into(),
                    r.get::<_, String>(2)?.into(),
                    r.get::<_, i64>(3)? as u64,
                    r.get::<_, i64>(4)? as u64,
                ))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}
