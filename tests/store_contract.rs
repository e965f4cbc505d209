//! The store contract: one test function, run against every store implementation (today the
//! SQLite room log; an implementation added later must pass the same function).

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use nebula::auth::User;
use nebula::config::Fsync;
use nebula::protocol::Message;
use nebula::store::{Append, AppendOutcome, Store, StoreOptions, WriteOp};
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

type Open = fn(&Path, &TaskTracker) -> Store;

fn open_sqlite(dir: &Path, tracker: &TaskTracker) -> Store {
    Store::open(
        StoreOptions {
            dir: dir.to_path_buf(),
            fsync: Fsync::Normal,
            queue: 1000,
        },
        tracker,
    )
    .expect("opens")
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn user(id: &str) -> User {
    User {
        id: id.into(),
        name: format!("name-{id}").into(),
    }
}

/// Appends and waits for the outcome.
async fn append(
    store: &Store,
    room: &str,
    who: &str,
    body: &str,
    key: Option<&str>,
) -> Result<AppendOutcome, ()> {
    append_at(store, room, who, body, key, now_ms()).await
}

async fn append_at(
    store: &Store,
    room: &str,
    who: &str,
    body: &str,
    key: Option<&str>,
    ts: u64,
) -> Result<AppendOutcome, ()> {
    let (tx, rx) = oneshot::channel();
    let op = WriteOp::Append(Append {
        room: room.into(),
        user: user(who),
        body: body.into(),
        key: key.map(Arc::from),
        ts,
        done: Box::new(move |r| {
            let _ = tx.send(r);
        }),
    });
    assert!(store.try_write(op).is_ok());
    rx.await.expect("completed")
}

fn stored_offset(o: Result<AppendOutcome, ()>) -> u64 {
    match o {
        Ok(AppendOutcome::Stored(m)) => m.offset,
        other => panic!("expected a stored message, got {other:?}"),
    }
}

async fn contract(open: Open) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let tracker = TaskTracker::new();
    let store = open(dir.path(), &tracker);

    // Offsets are per room, from 1, by exactly 1.
    for i in 1..=5u64 {
        assert_eq!(
            stored_offset(append(&store, "a", "u1", &format!("a{i}"), None).await),
            i
        );
    }
    assert_eq!(
        stored_offset(append(&store, "b", "u1", "b1", None).await),
        1
    );

    // A repeated key of the same user in the same room is not stored again.
    let first = stored_offset(append(&store, "a", "u1", "keyed", Some("k")).await);
    assert_eq!(first, 6);
    assert_eq!(
        append(&store, "a", "u1", "keyed again", Some("k")).await,
        Ok(AppendOutcome::Duplicate { offset: 6 })
    );
    // Another user, or another room, with the same key is a new message.
    assert_eq!(
        stored_offset(append(&store, "a", "u2", "other user", Some("k")).await),
        7
    );
    assert_eq!(
        stored_offset(append(&store, "b", "u1", "other room", Some("k")).await),
        2
    );

    // A key is remembered for 10 minutes: one stored 11 minutes ago no longer counts.
    let old = now_ms() - 11 * 60 * 1000;
    assert_eq!(
        stored_offset(append_at(&store, "b", "u9", "old", Some("old-key"), old).await),
        3
    );
    assert_eq!(
        stored_offset(append(&store, "b", "u9", "new", Some("old-key")).await),
        4
    );

    // Replicated inserts keep their offsets and ignore repeats.
    let m = Message {
        room: "c".into(),
        offset: 1,
        user: user("u3"),
        body: "c1".into(),
        ts: 5,
    };
    assert!(store.try_write(WriteOp::Insert(m.clone())).is_ok());
    assert!(
        store
            .try_write(WriteOp::Insert(Message {
                body: "dup".into(),
                ..m.clone()
            }))
            .is_ok()
    );
    // A barrier: an append after them completes after their commit.
    append(&store, "z", "u1", "barrier", None).await.unwrap();
    let c = store.read_after("c".into(), 0, 10).await?;
    assert_eq!(c, vec![m]);

    // Reads.
    let after = store.read_after("a".into(), 2, 3).await?;
    assert_eq!(
        after.iter().map(|m| m.offset).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    assert_eq!(after[0].body.as_ref(), "a3");
    assert_eq!(after[0].user, user("u1"));
    let before = store.read_before("a".into(), Some(5), 2).await?;
    assert_eq!(
        before.iter().map(|m| m.offset).collect::<Vec<_>>(),
        vec![3, 4]
    );
    let latest = store.read_before("a".into(), None, 3).await?;
    assert_eq!(
        latest.iter().map(|m| m.offset).collect::<Vec<_>>(),
        vec![5, 6, 7]
    );
    assert!(store.read_after("none".into(), 0, 10).await?.is_empty());
    assert_eq!(store.latest_offset("a".into()).await?, 7);
    assert_eq!(store.latest_offset("none".into()).await?, 0);

    // Close commits and stops the writer; a reopened store continues where it was.
    store.close().await;
    tracker.close();
    tracker.wait().await;
    let tracker = TaskTracker::new();
    let store = open(dir.path(), &tracker);
    assert_eq!(store.initial_offsets().get("a").copied(), Some(7));
    assert_eq!(store.initial_offsets().get("c").copied(), Some(1));
    assert_eq!(
        stored_offset(append(&store, "a", "u1", "a8", None).await),
        8
    );
    assert_eq!(
        append(&store, "a", "u1", "keyed once more", Some("k")).await,
        Ok(AppendOutcome::Duplicate { offset: 6 })
    );
    store.close().await;
    // After close, writes are refused rather than lost silently.
    assert!(append_refused(&store));
    tracker.close();
    tracker.wait().await;
    Ok(())
}

fn append_refused(store: &Store) -> bool {
    let op = WriteOp::Append(Append {
        room: "a".into(),
        user: user("u1"),
        body: "late".into(),
        key: None,
        ts: 0,
        done: Box::new(|_| {}),
    });
    store.try_write(op).is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_meets_the_contract() -> Result<()> {
    contract(open_sqlite).await
}
