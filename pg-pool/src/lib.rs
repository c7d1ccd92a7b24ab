//! PostgreSQL access for Berth's scale-out stores (registry metadata, auth):
//! a connection pool, one PostgreSQL schema per store with its embedded
//! migrations, and [`transaction!`], which runs a block in one transaction
//! and runs it again when PostgreSQL reports a serialization failure or a
//! deadlock.
//!
//! Each store keeps its SQL to itself (the architecture's rule: only the
//! storage modules know a schema); this crate knows only its own bookkeeping
//! table, `schema_migrations`, inside each store's schema.
//!
//! The stores run every write at SERIALIZABLE isolation. That is what the
//! embedded SQLite stores give by construction (one writer at a time), so a
//! check and the write that depends on it (a manifest's references, GC's
//! "still unreferenced?") cannot interleave with another transaction on any
//! replica; the price is that a conflicting transaction fails and is retried
//! here, which is why the transaction body is a block that can run again.
//!
//! tokio-postgres (the rust-postgres project) with deadpool-postgres rather
//! than sqlx: the stores write plain SQL by hand, so sqlx's compile-time
//! query macros and multi-database layer would only add build time, and
//! deadpool-postgres is the maintained async pool made for tokio-postgres.

use std::time::Duration;

pub use deadpool_postgres;
pub use tokio_postgres;
use tokio_postgres::error::SqlState;
#[doc(hidden)]
pub use tracing as __tracing;

/// Failures of connecting and migrating.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("invalid PostgreSQL URL: {0}")]
    Url(String),
    #[error("PostgreSQL: {0}")]
    Db(String),
    #[error("PostgreSQL connection pool: {0}")]
    Pool(String),
    #[error(
        "the {schema} schema is at version {found}, newer than this berth-server knows ({known}): run the newer version"
    )]
    TooNew {
        schema: String,
        found: usize,
        known: usize,
    },
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        PgError::Db(describe(&e))
    }
}

/// The server's message and SQLSTATE when there is one: tokio-postgres's own
/// `Display` says only "db error".
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        ),
        None => e.to_string(),
    }
}

/// Whether running the transaction again may succeed: a serialization
/// failure or a deadlock (the other transaction went ahead).
pub fn retryable(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    )
}

/// Attempts of one transaction before its conflict is reported.
pub const MAX_ATTEMPTS: u32 = 20;

/// Waits before attempt `attempt + 1`: capped exponential backoff with full
/// jitter, so that two transactions that conflicted do not meet again.
pub async fn backoff(attempt: u32) {
    let cap_ms = (2u64 << attempt.min(7)).min(200);
    let ms = rand::random_range(0..=cap_ms);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// What a transaction body fails with: the database (retried when
/// [`retryable`]), the pool, or the store's own error.
#[derive(Debug)]
pub enum TxError<E> {
    Db(tokio_postgres::Error),
    Pool(String),
    Store(E),
}

impl<E> From<tokio_postgres::Error> for TxError<E> {
    fn from(e: tokio_postgres::Error) -> Self {
        TxError::Db(e)
    }
}

/// How to reach the database.
#[derive(Clone)]
pub struct ConnectOptions {
    /// `postgres://user@host:port/db?…` (or the key=value form).
    pub url: String,
    /// Overrides a password in the URL (kept out of it: from the
    /// environment or a file).
    pub password: Option<String>,
    /// Most connections this pool opens.
    pub max_connections: usize,
}

// By hand: the password (given, or inside the URL) must not reach logs.
impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = match self.url.split_once("://") {
            Some((scheme, rest)) => match rest.split_once('@') {
                Some((user, host)) => match user.split_once(':') {
                    Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
                    None => format!("{scheme}://{user}@{host}"),
                },
                None => self.url.clone(),
            },
            None => "***".to_owned(),
        };
        f.debug_struct("ConnectOptions")
            .field("url", &url)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// A pool of connections whose `search_path` is one store's schema.
/// Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    inner: deadpool_postgres::Pool,
    schema: &'static str,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("schema", &self.schema)
            .field("status", &self.inner.status())
            .finish()
    }
}

/// A pooled connection.
pub type Client = deadpool_postgres::Object;

impl Pool {
    /// Connects, creates `schema` if needed and applies the `migrations`
    /// (SQL scripts, in order; append new ones, never edit a released one)
    /// that the database has not seen yet.
    pub async fn connect(
        options: &ConnectOptions,
        schema: &'static str,
        migrations: &[&str],
    ) -> Result<Pool, PgError> {
        // The schema name is spliced into SQL: only plain identifiers.
        if schema.is_empty()
            || !schema
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit())
        {
            return Err(PgError::Url(format!("bad schema name {schema:?}")));
        }
        let inner = build_pool(options, Some(schema), options.max_connections)?;
        let pool = Pool { inner, schema };
        pool.migrate(migrations).await?;
        Ok(pool)
    }

    /// The schema this pool's connections use.
    pub fn schema(&self) -> &'static str {
        self.schema
    }

    /// A connection from the pool.
    pub async fn client(&self) -> Result<Client, PgError> {
        self.inner.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => PgError::from(e),
            e => PgError::Pool(e.to_string()),
        })
    }

    async fn migrate(&self, migrations: &[&str]) -> Result<(), PgError> {
        let schema = self.schema;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // One migrator at a time, even with every replica starting at once;
        // the lock ends with the transaction.
        // "already exists, skipping" notices on every start are noise.
        tx.batch_execute("SET LOCAL client_min_messages = warning")
            .await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1::text))",
            &[&format!("berth-migrate:{schema}")],
        )
        .await?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
                 version    INTEGER PRIMARY KEY,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             );"
        ))
        .await?;
        let applied: i32 = tx
            .query_one(
                &format!("SELECT coalesce(max(version), 0) FROM {schema}.schema_migrations"),
                &[],
            )
            .await?
            .get(0);
        let applied = usize::try_from(applied).unwrap_or(0);
        if applied > migrations.len() {
            return Err(PgError::TooNew {
                schema: schema.to_owned(),
                found: applied,
                known: migrations.len(),
            });
        }
        for (i, sql) in migrations.iter().enumerate().skip(applied) {
            tx.batch_execute(sql).await?;
            let version = i32::try_from(i + 1).map_err(|e| PgError::Db(e.to_string()))?;
            tx.execute(
                &format!("INSERT INTO {schema}.schema_migrations (version) VALUES ($1)"),
                &[&version],
            )
            .await?;
            tracing::info!(schema, version, "applied a PostgreSQL migration");
        }
        tx.commit().await?;
        Ok(())
    }
}

/// A deadpool of connections to `options`' database, their `search_path`
/// set to `schema` when given.
fn build_pool(
    options: &ConnectOptions,
    schema: Option<&str>,
    max_size: usize,
) -> Result<deadpool_postgres::Pool, PgError> {
    let mut config: tokio_postgres::Config = options
        .url
        .parse()
        .map_err(|e: tokio_postgres::Error| PgError::Url(e.to_string()))?;
    if let Some(password) = &options.password {
        config.password(password);
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    if config.get_application_name().is_none() {
        config.application_name("berth-server");
    }
    if let Some(schema) = schema {
        // Every connection resolves the store's tables in its own schema, so
        // the registry and auth stores can share one database.
        let search_path = format!("-c search_path={schema}");
        let opts = match config.get_options() {
            Some(o) if !o.is_empty() => format!("{o} {search_path}"),
            _ => search_path,
        };
        config.options(&opts);
    }
    let manager = deadpool_postgres::Manager::from_config(
        config,
        tokio_postgres::NoTls,
        deadpool_postgres::ManagerConfig {
            // A connection broken by a server restart shows on its next
            // use; checking every checkout would cost a round trip each.
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    deadpool_postgres::Pool::builder(manager)
        .max_size(max_size.max(1))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(30)))
        .create_timeout(Some(Duration::from_secs(15)))
        .build()
        .map_err(|e| PgError::Pool(e.to_string()))
}

/// Advisory locks that every process connected to one database sees: what
/// keeps replicas from racing where a transaction cannot (work outside the
/// database, such as deleting a blob's bytes while another replica commits
/// the same digest).
///
/// Session-level locks, each held on a connection of this pool's own, so
/// that lock holders never wait for the connections their work needs from
/// the stores' pool (a holder needs one of those to finish; a shared pool
/// full of holders would deadlock). If a holder's connection breaks,
/// PostgreSQL releases its lock: the lock guards against a race, it is not
/// a lease that survives a network failure.
#[derive(Clone)]
pub struct Locks {
    inner: deadpool_postgres::Pool,
}

impl std::fmt::Debug for Locks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Locks")
            .field("status", &self.inner.status())
            .finish()
    }
}

impl Locks {
    /// Locks over at most `max_held` connections (as many locks may be held
    /// at once; more holders wait for a connection).
    pub fn new(options: &ConnectOptions, max_held: usize) -> Result<Locks, PgError> {
        Ok(Locks {
            inner: build_pool(options, None, max_held)?,
        })
    }

    async fn client(&self) -> Result<Client, PgError> {
        self.inner.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => PgError::from(e),
            e => PgError::Pool(e.to_string()),
        })
    }

    /// Waits for the lock `(class, key)` (PostgreSQL's two-`int4` advisory
    /// key space: `class` names what is locked, `key` which one).
    pub async fn lock(&self, class: i32, key: i32) -> Result<AdvisoryLock, PgError> {
        let client = self.client().await?;
        client
            .execute("SELECT pg_advisory_lock($1, $2)", &[&class, &key])
            .await?;
        Ok(AdvisoryLock {
            client: Some(client),
            class,
            key,
        })
    }

    /// The lock `(class, key)` if nobody holds it, at once.
    pub async fn try_lock(&self, class: i32, key: i32) -> Result<Option<AdvisoryLock>, PgError> {
        let client = self.client().await?;
        let got: bool = client
            .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&class, &key])
            .await?
            .get(0);
        Ok(got.then_some(AdvisoryLock {
            client: Some(client),
            class,
            key,
        }))
    }
}

/// A held advisory lock. [`AdvisoryLock::release`] unlocks it and returns
/// the connection; dropping it unlocks in the background (or, outside a
/// runtime, closes the connection, which unlocks too).
pub struct AdvisoryLock {
    client: Option<Client>,
    class: i32,
    key: i32,
}

impl std::fmt::Debug for AdvisoryLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdvisoryLock")
            .field("class", &self.class)
            .field("key", &self.key)
            .finish()
    }
}

async fn unlock(client: Client, class: i32, key: i32) -> Result<(), PgError> {
    match client
        .query_one("SELECT pg_advisory_unlock($1, $2)", &[&class, &key])
        .await
    {
        Ok(row) if row.get::<_, bool>(0) => Ok(()),
        Ok(_) => {
            // Not held any more: the connection was reset under us. Do not
            // hand it out again.
            drop(deadpool_postgres::Object::take(client));
            Err(PgError::Db(format!(
                "advisory lock ({class}, {key}) was lost before its release"
            )))
        }
        Err(e) => {
            drop(deadpool_postgres::Object::take(client));
            Err(e.into())
        }
    }
}

impl AdvisoryLock {
    /// Unlocks. An error means the lock had already been lost (its
    /// connection broke), which the caller may want to log.
    pub async fn release(mut self) -> Result<(), PgError> {
        match self.client.take() {
            Some(client) => unlock(client, self.class, self.key).await,
            None => Ok(()),
        }
    }
}

impl Drop for AdvisoryLock {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let (class, key) = (self.class, self.key);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(e) = unlock(client, class, key).await {
                        tracing::warn!(error = %e, "releasing a dropped advisory lock");
                    }
                });
            }
            // Closing the connection releases its locks.
            Err(_) => drop(deadpool_postgres::Object::take(client)),
        }
    }
}

/// Query parameters, as tokio-postgres takes them.
pub type Params<'a> = &'a [&'a (dyn tokio_postgres::types::ToSql + Sync)];

/// The row `sql` returns, if any (the statement prepared once per
/// connection and cached).
pub async fn opt<C: deadpool_postgres::GenericClient + Sync>(
    c: &C,
    sql: &str,
    params: Params<'_>,
) -> Result<Option<tokio_postgres::Row>, tokio_postgres::Error> {
    let st = c.prepare_cached(sql).await?;
    c.query_opt(&st, params).await
}

/// Every row `sql` returns (prepared and cached as [`opt`]).
pub async fn all<C: deadpool_postgres::GenericClient + Sync>(
    c: &C,
    sql: &str,
    params: Params<'_>,
) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    let st = c.prepare_cached(sql).await?;
    c.query(&st, params).await
}

/// Runs `sql`; the rows it changed (prepared and cached as [`opt`]).
pub async fn exec<C: deadpool_postgres::GenericClient + Sync>(
    c: &C,
    sql: &str,
    params: Params<'_>,
) -> Result<u64, tokio_postgres::Error> {
    let st = c.prepare_cached(sql).await?;
    c.execute(&st, params).await
}

/// Runs `$body` (a block evaluating to `Result<T, TxError<$err>>`, with the
/// transaction bound to `$tx`) in one transaction at isolation `$iso`
/// (`Serializable`, `RepeatableRead`, …) and commits it; runs it again
/// from the start, on a fresh transaction, after a serialization failure or
/// deadlock (up to [`MAX_ATTEMPTS`]). With `keep |out| cond`, an outcome for
/// which `cond` is false is rolled back instead of committed (and returned).
///
/// A macro rather than a function taking a closure: the body borrows the
/// caller's arguments and the transaction, which an async closure cannot
/// return a `Send` future for (what `async_trait` methods need).
#[macro_export]
macro_rules! transaction {
    ($pool:expr, $iso:ident, $err:ty, |$tx:ident| $body:block) => {
        $crate::transaction!($pool, $iso, $err, |$tx| $body, keep |_out| true)
    };
    ($pool:expr, $iso:ident, $err:ty, |$tx:ident| $body:block, keep |$out:ident| $keep:expr) => {{
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let mut client = match $pool.client().await {
                Ok(c) => c,
                Err(e) => break Err($crate::TxError::<$err>::Pool(e.to_string())),
            };
            let started = client
                .build_transaction()
                .isolation_level($crate::tokio_postgres::IsolationLevel::$iso)
                .start()
                .await;
            let $tx = match started {
                Ok(t) => t,
                Err(e) => break Err($crate::TxError::<$err>::Db(e)),
            };
            let result: ::std::result::Result<_, $crate::TxError<$err>> = async { $body }.await;
            let conflict = match result {
                Ok(value) => {
                    let keep = {
                        let $out = &value;
                        $keep
                    };
                    if !keep {
                        // Nothing of it may stay; a failed rollback ends
                        // with the connection (the server rolls back).
                        let _ = $tx.rollback().await;
                        break Ok(value);
                    }
                    match $tx.commit().await {
                        Ok(()) => break Ok(value),
                        Err(e) if $crate::retryable(&e) && attempt < $crate::MAX_ATTEMPTS => e,
                        Err(e) => break Err($crate::TxError::Db(e)),
                    }
                }
                Err($crate::TxError::Db(e))
                    if $crate::retryable(&e) && attempt < $crate::MAX_ATTEMPTS =>
                {
                    // Dropping the transaction rolls it back.
                    drop($tx);
                    e
                }
                Err(e) => break Err(e),
            };
            $crate::__tracing::debug!(attempt, error = %$crate::describe(&conflict), "transaction conflicted; running it again");
            $crate::backoff(attempt).await;
        }
    }};
}
