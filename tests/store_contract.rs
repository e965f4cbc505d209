//! The store contract: one test function, run against every store implementation (today the
//! SQLite room log; an implementation added later must pass the same function).

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use nebula::auth::User;
use nebula::config::Fsync;
use nebula::metrics::Metrics;
use nebula::protocol::{Message, Page};
use nebula::store::{
    Append, AppendOutcome, Insert, Replicated, Store, StoreOptions, WriteFailure, WriteOp,
};
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
        Arc::new(Metrics::new()),
        tracker,
    )
    .expect("opens")
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
) -> Result<AppendOutcome, WriteFailure> {
    append_at(store, room, who, body, key, nebula::protocol::now_ms()).await
}

async fn append_at(
    store: &Store,
    room: &str,
    who: &str,
    body: &str,
    key: Option<&str>,
    ts: u64,
) -> Result<AppendOutcome, WriteFailure> {
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

/// Inserts replicated messages and waits for their commit.
async fn insert(store: &Store, messages: Vec<Message>) {
    let (tx, rx) = oneshot::channel();
    let op = WriteOp::Insert(Insert {
        messages: messages
            .into_iter()
            .map(|message| Replicated { message, key: None })
            .collect(),
        done: Some(Box::new(move |r| {
            let _ = tx.send(r);
        })),
    });
    assert!(store.write(op).await.is_ok());
    rx.await.expect("completed").expect("committed");
}

fn stored_offset(o: Result<AppendOutcome, WriteFailure>) -> u64 {
    match o {
        Ok(AppendOutcome::Stored(m)) => m.offset,
        other => panic!("expected a stored message, got {other:?}"),
    }
}

fn msg(room: &str, offset: u64) -> Message {
    Message {
        room: room.into(),
        offset,
        user: user("u3"),
        body: format!("{room}{offset}").into(),
        ts: 5,
    }
}

fn offsets(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|m| m.offset).collect()
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
    let old = nebula::protocol::now_ms() - 11 * 60 * 1000;
    assert_eq!(
        stored_offset(append_at(&store, "b", "u9", "old", Some("old-key"), old).await),
        3
    );
    assert_eq!(
        stored_offset(append(&store, "b", "u9", "new", Some("old-key")).await),
        4
    );

    // Replicated inserts keep their offsets and ignore repeats; reads stop at the contiguous
    // prefix: offset 3 arriving before 2 is stored but not read until 2 is there.
    insert(&store, vec![msg("c", 1)]).await;
    insert(
        &store,
        vec![Message {
            body: "dup".into(),
            ..msg("c", 1)
        }],
    )
    .await;
    insert(&store, vec![msg("c", 3)]).await;
    let c = store.read_page("c".into(), Page::After(0), 10).await?;
    assert_eq!(
        c.messages,
        vec![msg("c", 1)],
        "a repeat changes nothing; 3 waits for 2"
    );
    let joined = store.read_join("c".into(), Some(0), 100, None).await?;
    assert_eq!((joined.last, joined.recovered), (1, true));
    assert!(store.rooms_contiguous().await?.contains(&("c".into(), 1)));
    assert!(store.room_maxima().await?.contains(&("c".into(), 3)));
    insert(&store, vec![msg("c", 2)]).await;
    let c = store.read_page("c".into(), Page::After(0), 10).await?;
    assert_eq!(offsets(&c.messages), vec![1, 2, 3]);
    assert_eq!(store.read_stored("c".into(), 0, 3, 10).await?.len(), 3);

    // Pages: after (oldest first, with `more`), before (the newest below an offset).
    let after = store.read_page("a".into(), Page::After(2), 3).await?;
    assert_eq!(
        (offsets(&after.messages), after.more),
        (vec![3, 4, 5], true)
    );
    assert_eq!(after.messages[0].body.as_ref(), "a3");
    assert_eq!(after.messages[0].user, user("u1"));
    let tail = store.read_page("a".into(), Page::After(5), 3).await?;
    assert_eq!((offsets(&tail.messages), tail.more), (vec![6, 7], false));
    let before = store
        .read_page("a".into(), Page::Before(Some(5)), 2)
        .await?;
    assert_eq!(offsets(&before.messages), vec![3, 4]);
    let latest = store.read_page("a".into(), Page::Before(None), 3).await?;
    assert_eq!(offsets(&latest.messages), vec![5, 6, 7]);
    assert!(
        store
            .read_page("none".into(), Page::After(0), 10)
            .await?
            .messages
            .is_empty()
    );

    // Joins: the last 50, or everything after `since` with `recovered`.
    let plain = store.read_join("a".into(), None, 100, None).await?;
    assert_eq!(
        (plain.last, offsets(&plain.messages)),
        (7, (1..=7).collect())
    );
    let since = store.read_join("a".into(), Some(4), 100, None).await?;
    assert_eq!(
        (offsets(&since.messages), since.recovered),
        (vec![5, 6, 7], true)
    );
    let upto = store.read_join("a".into(), Some(4), 100, Some(6)).await?;
    assert_eq!((upto.last, offsets(&upto.messages)), (6, vec![5, 6]));
    let window = store.read_join("a".into(), Some(1), 2, None).await?;
    assert_eq!(
        (offsets(&window.messages), window.recovered),
        (vec![6, 7], false)
    );
    let ahead = store.read_join("a".into(), Some(9), 100, None).await?;
    assert_eq!((ahead.messages.len(), ahead.recovered), (0, false));
    let empty = store.read_join("none".into(), None, 100, None).await?;
    assert_eq!((empty.last, empty.messages.len()), (0, 0));

    // Meta values and logouts are kept.
    store
        .write(WriteOp::Meta {
            key: "epoch",
            value: "e1".into(),
        })
        .await
        .ok();
    store
        .write(WriteOp::Revoke {
            user: "u1".into(),
            generation: 2,
            at: 1,
        })
        .await
        .ok();
    append(&store, "z", "u1", "barrier", None).await.unwrap();
    assert_eq!(store.meta("epoch").await?.as_deref(), Some("e1"));
    assert_eq!(store.revocations().await?.get("u1").copied(), Some(2));

    // Close commits and stops the writer; a reopened store continues where it was.
    store.close().await;
    tracker.close();
    tracker.wait().await;
    let tracker = TaskTracker::new();
    let store = open(dir.path(), &tracker);
    assert!(store.rooms_contiguous().await?.contains(&("a".into(), 7)));
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

/// A new store has 1 KiB pages: a message committed alone writes a few KiB to the WAL instead
/// of about 12 (docs/PERFORMANCE.md). A store made with SQLite's default 4 KiB pages keeps
/// them and serves as before.
#[tokio::test]
async fn a_new_store_has_small_pages_and_an_older_one_keeps_its_own() -> Result<()> {
    let page_size = |dir: &Path| -> Result<i64> {
        let conn = rusqlite::Connection::open(dir.join("nebula.db"))?;
        Ok(conn.query_row("PRAGMA page_size", [], |r| r.get(0))?)
    };
    let tracker = TaskTracker::new();
    let new = tempfile::tempdir()?;
    let store = open_sqlite(new.path(), &tracker);
    assert_eq!(stored_offset(append(&store, "r", "a", "hi", None).await), 1);
    store.close().await;
    assert_eq!(page_size(new.path())?, 1024);

    let old = tempfile::tempdir()?;
    rusqlite::Connection::open(old.path().join("nebula.db"))?.execute_batch(
        "PRAGMA page_size = 4096; PRAGMA journal_mode = WAL; CREATE TABLE before (x);",
    )?;
    let store = open_sqlite(old.path(), &tracker);
    assert_eq!(stored_offset(append(&store, "r", "a", "hi", None).await), 1);
    store.close().await;
    assert_eq!(page_size(old.path())?, 4096);
    let store = open_sqlite(old.path(), &tracker);
    let page = store.read_page("r".into(), Page::After(0), 10).await?;
    assert_eq!(offsets(&page.messages), vec![1]);
    store.close().await;
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// Completions run in commit order whichever thread runs them: a small commit runs its own on
/// the writer thread only when the completion thread has nothing left, so a single append
/// committed while a large batch's slow completions are still running waits behind them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_run_in_commit_order_on_either_thread() -> Result<()> {
    let tracker = TaskTracker::new();
    let dir = tempfile::tempdir()?;
    let store = open_sqlite(dir.path(), &tracker);
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let queue = |slow: bool| {
        let seen = seen.clone();
        let (tx, rx) = oneshot::channel();
        let op = WriteOp::Append(Append {
            room: "r".into(),
            user: user("a"),
            body: "x".into(),
            key: None,
            ts: nebula::protocol::now_ms(),
            done: Box::new(move |r| {
                if slow {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                seen.lock().expect("seen").push(stored_offset(r));
                let _ = tx.send(());
            }),
        });
        assert!(store.try_write(op).is_ok(), "the queue has room");
        rx
    };
    let mut waits = Vec::new();
    for _ in 0..20 {
        // A burst (large batches, handed to the completion thread; its first completion is
        // slow), then one append alone, committed while that thread is still busy.
        for i in 0..300 {
            waits.push(queue(i == 0));
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        waits.push(queue(false));
        // And one alone when all is quiet (run on the writer thread).
        for w in waits.drain(..) {
            w.await?;
        }
        queue(false).await?;
    }
    let seen = seen.lock().expect("seen").clone();
    let expected: Vec<u64> = (1..=seen.len() as u64).collect();
    assert_eq!(seen.len(), 20 * 302);
    assert!(seen == expected, "completions out of commit order");
    store.close().await;
    tracker.close();
    tracker.wait().await;
    Ok(())
}
