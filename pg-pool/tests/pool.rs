//! pg-pool against a real PostgreSQL (test_support::Postgres): migrations
//! applied once and in order, conflicting SERIALIZABLE transactions run
//! again until each has its effect, refused outcomes rolled back, and
//! passwords kept out of `Debug`.

#![allow(clippy::unwrap_used)]

use std::convert::Infallible;

use pg_pool::{ConnectOptions, PgError, Pool, TxError, transaction};
use test_support::Postgres;

fn options() -> ConnectOptions {
    let pg = Postgres::shared();
    ConnectOptions {
        url: pg.url(&pg.create_database()),
        password: Some(pg.password().to_owned()),
        max_connections: 8,
    }
}

const V1: &str = "CREATE TABLE counter (id INTEGER PRIMARY KEY, n BIGINT NOT NULL);
                  INSERT INTO counter VALUES (1, 0);";
const V2: &str = "ALTER TABLE counter ADD COLUMN note TEXT;";

async fn count(pool: &Pool) -> i64 {
    let c = pool.client().await.unwrap();
    c.query_one("SELECT n FROM counter WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn migrations_apply_once_in_order_and_refuse_a_newer_schema() {
    let opts = options();
    let (a, b) = tokio::join!(
        Pool::connect(&opts, "store", &[V1]),
        Pool::connect(&opts, "store", &[V1])
    );
    let (a, _b) = (a.unwrap(), b.unwrap());
    assert_eq!(count(&a).await, 0, "V1 ran once: one row");
    let a2 = Pool::connect(&opts, "store", &[V1, V2]).await.unwrap();
    let c = a2.client().await.unwrap();
    let versions: Vec<i32> = c
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, [1, 2]);
    // Another store's schema is separate.
    let other = Pool::connect(&opts, "other", &[V1]).await.unwrap();
    assert_eq!(count(&other).await, 0);
    // An older binary on a newer schema stops instead of guessing.
    match Pool::connect(&opts, "store", &[V1]).await {
        Err(PgError::TooNew {
            found: 2, known: 1, ..
        }) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conflicting_serializable_transactions_run_again_until_each_counts() {
    let pool = Pool::connect(&options(), "store", &[V1]).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                // Read, then write what was read plus one: a lost update
                // unless the transactions are serialised.
                transaction!(pool, Serializable, Infallible, |tx| {
                    let n: i64 = tx
                        .query_one("SELECT n FROM counter WHERE id = 1", &[])
                        .await?
                        .get(0);
                    tx.execute("UPDATE counter SET n = $1 WHERE id = 1", &[&(n + 1)])
                        .await?;
                    Ok(())
                })
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(count(&pool).await, 40);
}

#[tokio::test]
async fn a_refused_outcome_is_rolled_back_and_store_errors_pass_through() {
    let pool = Pool::connect(&options(), "store", &[V1]).await.unwrap();
    let out = transaction!(
        pool,
        Serializable,
        Infallible,
        |tx| {
            tx.execute("UPDATE counter SET n = 99 WHERE id = 1", &[])
                .await?;
            Ok("refused")
        },
        keep | o | *o != "refused"
    )
    .unwrap();
    assert_eq!(out, "refused");
    assert_eq!(count(&pool).await, 0);
    let err = transaction!(pool, Serializable, String, |tx| {
        tx.execute("UPDATE counter SET n = 7 WHERE id = 1", &[])
            .await?;
        Err::<(), _>(TxError::Store("no".to_owned()))
    });
    assert!(
        matches!(err, Err(TxError::Store(ref s)) if s == "no"),
        "{err:?}"
    );
    assert_eq!(count(&pool).await, 0);
}

#[tokio::test]
async fn a_wrong_password_is_refused_and_passwords_stay_out_of_debug() {
    let mut opts = options();
    opts.password = Some("wrong".into());
    let err = Pool::connect(&opts, "store", &[V1]).await.unwrap_err();
    assert!(err.to_string().contains("password"), "{err}");
    let shown = format!(
        "{:?}",
        ConnectOptions {
            url: "postgres://berth:in-url@db:5432/berth".into(),
            password: Some("given".into()),
            max_connections: 1,
        }
    );
    assert!(
        !shown.contains("in-url") && !shown.contains("given"),
        "{shown}"
    );
    assert!(shown.contains("berth:***@db:5432/berth"), "{shown}");
}

#[tokio::test]
async fn advisory_locks_exclude_other_processes_and_come_back_after_a_drop() {
    use pg_pool::Locks;
    use std::time::Duration;
    let opts = options();
    // Two `Locks` stand for two replicas: separate connection pools.
    let (a, b) = (Locks::new(&opts, 2).unwrap(), Locks::new(&opts, 2).unwrap());
    let held = a.lock(7, 1).await.unwrap();
    assert!(b.try_lock(7, 1).await.unwrap().is_none(), "held elsewhere");
    let other = b.try_lock(7, 2).await.unwrap();
    assert!(other.is_some(), "another key is free");
    assert!(
        b.try_lock(8, 1).await.unwrap().is_some(),
        "another class is free"
    );

    // A waiter gets the lock once the holder releases it, not before.
    let waiter = tokio::spawn({
        let b = b.clone();
        async move { b.lock(7, 1).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiter.is_finished(),
        "the waiter waits while the lock is held"
    );
    held.release().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter gets the lock after the release")
        .unwrap();

    // Dropped without release: unlocked in the background all the same.
    drop(got);
    let mut again = None;
    for _ in 0..50 {
        again = a.try_lock(7, 1).await.unwrap();
        if again.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "a dropped lock is released");
}
