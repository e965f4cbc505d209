//! The numbering's epoch, and the repair of a Redis that lost data.
//!
//! Redis is not trusted to keep its data: a restart without AOF, `FLUSHALL`, a failover to a
//! replica that lags. The epoch (a random id) lives in Redis (`nebula:epoch`) and in every
//! node's store; every publish script checks it and checks that each room's numbering is not
//! below what the node already stored. When either fails the node refuses publishes
//! (`unavailable`) and, under a lock, re-seeds Redis from its own log: each room's numbering is
//! raised to the node's highest offset and the room's stream gets the node's latest messages
//! back (with their idempotency keys). A room that changes fences every node at once (the epoch
//! is set to a "repairing" value inside the same script), so no node numbers from the old value;
//! each node then contributes its own log before it publishes under the new epoch. An offset,
//! once acked, is therefore never given to another message, as long as a node that stored it
//! takes part in the repair (every node stores every message within milliseconds; an ack leaves
//! only once the publishing node has it).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::streams::StreamRangeReply;

use super::{Shared, keys};
use crate::broker::BrokerError;
use crate::metrics::Metrics;
use crate::store::{Store, WriteOp};

/// The key of the epoch in the store's `meta` table.
pub(super) const EPOCH_META: &str = "epoch";
/// A repair lock expires by itself if its holder dies.
const LOCK_TTL_MS: u64 = 30_000;
/// Messages per room a repair copies back into the room's stream.
const REPAIR_TAIL: u64 = 1000;
/// Rooms per pipeline.
const CHUNK: usize = 200;

fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Checks the epoch and every room's numbering against this node's log; repairs Redis when it
/// lost data. Publishes are accepted again only after this succeeds.
pub(super) async fn check(
    conn: &mut ConnectionManager,
    shared: &Arc<Shared>,
    store: &Store,
    metrics: &Metrics,
) -> Result<(), BrokerError> {
    let current: Option<String> = redis::cmd("GET").arg(keys::EPOCH).query_async(conn).await?;
    let mine = shared.epoch();
    let empty_here = shared
        .high_water
        .lock()
        .expect("high water lock")
        .is_empty();
    if current.is_none() && mine.is_none() && empty_here {
        // A new cluster: the first node to get here names the epoch.
        let _: Option<String> = redis::cmd("SET")
            .arg(keys::EPOCH)
            .arg(new_epoch())
            .arg("NX")
            .query_async(conn)
            .await?;
        let epoch: Option<String> = redis::cmd("GET").arg(keys::EPOCH).query_async(conn).await?;
        return adopt(shared, store, epoch).await;
    }
    if current.is_some() && current == mine && !behind(conn, shared).await? {
        shared.accepting.store(true, Ordering::Release);
        return Ok(());
    }
    repair(conn, shared, store, metrics).await
}

async fn adopt(shared: &Shared, store: &Store, epoch: Option<String>) -> Result<(), BrokerError> {
    let Some(epoch) = epoch else {
        return Err(BrokerError::NoAnswer(
            "the epoch vanished while it was set".into(),
        ));
    };
    if shared.epoch().as_deref() != Some(&epoch) {
        store
            .write(WriteOp::Meta {
                key: EPOCH_META,
                value: epoch.clone(),
            })
            .await
            .map_err(|_| BrokerError::Closing)?;
        tracing::info!(%epoch, "numbering under epoch");
    }
    shared.set_epoch(Some(epoch));
    shared.accepting.store(true, Ordering::Release);
    Ok(())
}

/// True when some room's numbering in Redis is below what this node stored or had acked.
async fn behind(conn: &mut ConnectionManager, shared: &Shared) -> Result<bool, BrokerError> {
    let known: Vec<(Arc<str>, u64)> = shared
        .high_water
        .lock()
        .expect("high water lock")
        .iter()
        .map(|(r, o)| (r.clone(), *o))
        .collect();
    for chunk in known.chunks(CHUNK * 2) {
        let mut pipe = redis::pipe();
        for (room, _) in chunk {
            pipe.cmd("GET").arg(keys::seq(room));
        }
        let seqs: Vec<Option<u64>> = pipe.query_async(conn).await?;
        if let Some(((room, mine), seq)) = chunk
            .iter()
            .zip(seqs)
            .find(|((_, mine), seq)| seq.unwrap_or(0) < *mine)
        {
            tracing::warn!(%room, mine, redis = ?seq, "redis numbers a room below this node's log");
            return Ok(true);
        }
    }
    Ok(false)
}

async fn repair(
    conn: &mut ConnectionManager,
    shared: &Arc<Shared>,
    store: &Store,
    metrics: &Metrics,
) -> Result<(), BrokerError> {
    shared.accepting.store(false, Ordering::Release);
    loop {
        let locked: Option<String> = redis::cmd("SET")
            .arg(keys::REPAIR_LOCK)
            .arg(&*shared.node)
            .arg("NX")
            .arg("PX")
            .arg(LOCK_TTL_MS)
            .query_async(conn)
            .await?;
        if locked.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let result = repair_locked(conn, shared, store, metrics).await;
    let unlock = redis::Script::new(keys::UNLOCK_SCRIPT);
    if let Err(e) = unlock
        .key(keys::REPAIR_LOCK)
        .arg(&*shared.node)
        .invoke_async::<i64>(conn)
        .await
    {
        tracing::warn!(error = %e, "could not release the repair lock (it expires in 30 s)");
    }
    result
}

async fn repair_locked(
    conn: &mut ConnectionManager,
    shared: &Arc<Shared>,
    store: &Store,
    metrics: &Metrics,
) -> Result<(), BrokerError> {
    let current: Option<String> = redis::cmd("GET").arg(keys::EPOCH).query_async(conn).await?;
    let new = new_epoch();
    let fence = format!("repairing:{new}");
    let maxima = store.room_maxima().await?;
    let script = redis::Script::new(keys::repair_room_script());
    let (mut rooms_changed, mut copied) = (0u64, 0u64);
    for chunk in maxima.chunks(CHUNK) {
        let mut pipe = redis::pipe();
        for (room, _) in chunk {
            pipe.cmd("GET").arg(keys::seq(room));
            pipe.cmd("XREVRANGE")
                .arg(keys::log(room))
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1);
        }
        let replies: Vec<redis::Value> = pipe.query_async(conn).await?;
        for ((room, mine), pair) in chunk.iter().zip(replies.chunks(2)) {
            let seq: u64 = redis::from_redis_value_ref::<Option<u64>>(&pair[0])?.unwrap_or(0);
            let top: StreamRangeReply = redis::from_redis_value_ref(&pair[1])?;
            let last_id = top
                .ids
                .first()
                .and_then(|e| keys::offset_of_id(&e.id))
                .unwrap_or(0);
            if seq >= *mine && last_id >= *mine {
                continue;
            }
            let from = last_id.max(mine.saturating_sub(REPAIR_TAIL));
            let entries = store
                .read_stored(room.clone(), from, *mine, REPAIR_TAIL as usize)
                .await?;
            let mut call = script.prepare_invoke();
            call.key(keys::EPOCH)
                .key(keys::seq(room))
                .key(keys::log(room));
            call.arg(&**room)
                .arg(*mine)
                .arg(&fence)
                .arg(keys::STREAM_CAP);
            for r in &entries {
                let m = &r.message;
                call.arg(m.offset)
                    .arg(&*m.user.id)
                    .arg(&*m.user.name)
                    .arg(&*m.body)
                    .arg(m.ts)
                    .arg(r.key.as_deref().unwrap_or(""));
            }
            let changed: i64 = call.invoke_async(conn).await?;
            if changed == 1 {
                rooms_changed += 1;
                copied += entries.len() as u64;
            }
        }
    }
    let epoch = match current {
        Some(c) if rooms_changed == 0 && !c.starts_with("repairing:") => c,
        _ => {
            let _: () = redis::cmd("SET")
                .arg(keys::EPOCH)
                .arg(&new)
                .query_async(conn)
                .await?;
            new
        }
    };
    if rooms_changed > 0 || shared.epoch().as_deref() != Some(&epoch) {
        metrics.redis_repairs.inc();
        tracing::warn!(rooms = rooms_changed, messages = copied, %epoch,
            "redis was behind this node's log (lost data, or repaired by another node): re-seeded it");
    }
    adopt(shared, store, Some(epoch)).await
}
