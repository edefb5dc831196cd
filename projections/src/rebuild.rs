//! Rebuilding read models from the log beside the live ones, while the server keeps
//! serving, then swapping them in atomically.
//!
//! 1. A shadow store is created next to the live one (SQLite files beside the live
//!    database; a schema of its own in the same PostgreSQL database) and the
//!    projections are replayed into it from the start of the log, in large
//!    transactions, reporting progress. They are dealt into lanes of about equal
//!    weight ([`Projection::replay_weight`]), each lane with its own SQLite file or
//!    PostgreSQL connection: each page of the log is read and decoded once, and the
//!    lanes apply it side by side (SQLite has one writer per file).
//! 2. Once the shadow is close to the log's head, one transaction on the live store
//!    locks the projections' checkpoint rows (the live applier waits on them), reads
//!    where each live projection stands (`L`), and brings the shadow to exactly `L`.
//! 3. In that same transaction the rebuilt state replaces the live one, and the
//!    checkpoints stay at `L`: on SQLite the live tables are emptied and filled
//!    from the shadow's; on PostgreSQL the shadow's tables themselves are moved into
//!    the live schema (fully indexed before the lock, so the swap is a catalog
//!    change whatever their size) and the replaced ones out of it. On
//!    commit the live applier goes on from `L + 1` on the rebuilt state: no event
//!    is applied twice or missed. Readers see the old state until the commit and
//!    the new one after it, never a half-built one. A dry run compares the
//!    checksums at `L` instead, and swaps nothing.
//!
//! A rebuild claims its shadow while it exists, and removes the shadows of rebuilds
//! that died before removing theirs ([`crate::shadow_claim`]).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::Connection;
use wabridge_events::{EventLog, StreamKind};

use crate::{
    checkpoint,
    driver::{Driver, Follower},
    projection::{self, checksum, checksum_on, AsReactor},
    shadow_claim::{self, Claim},
    Backend, Progress, Projection, Reactor, Store,
};

/// Events per transaction while replaying into the shadow.
pub const REPLAY_BATCH: usize = 5000;

/// A PostgreSQL shadow's statistics are first refreshed at this many events, then
/// each time the position has grown [`ANALYZE_GROWTH`]-fold: the plans of a bulk
/// load change while its tables are small (scans become look-ups), hardly after.
const ANALYZE_FIRST: u64 = 10_000;

/// See [`ANALYZE_FIRST`].
const ANALYZE_GROWTH: u64 = 4;

/// How a rebuild is going.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct RebuildProgress {
    /// The log position the shadow has reached.
    pub position: u64,
    /// The log's head when last looked at.
    pub head: u64,
    /// Events applied so far.
    pub events: u64,
    /// Events per second so far.
    pub events_per_second: u64,
    /// Seconds left at this pace (an estimate).
    pub eta_seconds: u64,
}

/// One projection's outcome.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct RebuiltProjection {
    /// The projection.
    pub name: String,
    /// Where both states stood when compared or swapped.
    pub position: u64,
    /// SHA-256 of the rebuilt state's canonical dump.
    pub checksum: String,
    /// The live state's, at the same position: in a dry run taken from the live
    /// tables; after a swap the rebuilt state's, which the live tables now hold
    /// (SQLite: each table's copy checked by its row count in the swap's
    /// transaction; PostgreSQL: the rebuilt tables themselves, moved in).
    pub live_checksum: String,
}

/// What a rebuild did.
#[derive(Clone, Debug, PartialEq, serde::Serialize, schemars::JsonSchema)]
pub struct RebuildReport {
    /// Each projection.
    pub projections: Vec<RebuiltProjection>,
    /// Events replayed.
    pub events: u64,
    /// Seconds it took.
    pub seconds: f64,
    /// Whether the rebuilt state replaced the live one.
    pub swapped: bool,
    /// How long the live projections waited for it: the locked step (the last
    /// catch-up and the swap, or a dry run's comparison) up to its commit.
    pub locked_seconds: f64,
}

impl RebuildReport {
    /// Whether every rebuilt state equals the live one (before a swap).
    pub fn all_equal(&self) -> bool {
        self.projections
            .iter()
            .all(|p| p.checksum == p.live_checksum)
    }
}

/// The most lanes a rebuild replays in by default: each lane a store (SQLite: a
/// file) and a database connection of its own, applying its share of the
/// projections while the other lanes apply theirs (one page of the log, read once,
/// goes to all). `WABRIDGE_REPLAY_LANES` changes it (1: one lane, as before lanes).
pub const REPLAY_LANES: usize = 2;

/// [`REPLAY_LANES`], or `WABRIDGE_REPLAY_LANES` when set to a number from 1 to 16.
fn replay_lanes() -> usize {
    std::env::var("WABRIDGE_REPLAY_LANES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|n| (1..=16).contains(n))
        .unwrap_or(REPLAY_LANES)
}

/// Some of the projections, replayed into a store of their own.
struct Lane {
    store: Store,
    /// How the live connection names the lane's tables (SQLite: the attached alias).
    qualifier: String,
    /// The lane's SQLite file (PostgreSQL lanes share the shadow's schema).
    file: Option<std::path::PathBuf>,
    projections: Vec<Arc<dyn Projection>>,
}

/// Stores beside the live one, with the same tables.
struct Shadow {
    lanes: Vec<Lane>,
    /// The PostgreSQL schema all lanes write in (the swap moves the replaced live
    /// tables into its [`shadow_claim::retired`] one).
    schema: Option<String>,
    /// Its claim, released once it is removed (see [`crate::shadow_claim`]).
    claim: Option<Claim>,
    /// PostgreSQL: each projection's `CREATE INDEX` statements of the indexes
    /// dropped for the replay ([`Projection::rebuild_without_indexes`]), run again
    /// before the swap.
    dropped_indexes: Vec<(&'static str, String)>,
}

/// Deals projections into at most `lanes` lanes of about equal weight (heaviest
/// first, each to the lightest lane so far).
fn deal(projections: &[Arc<dyn Projection>], lanes: usize) -> Vec<Vec<Arc<dyn Projection>>> {
    let mut sorted: Vec<_> = projections.to_vec();
    sorted.sort_by_key(|p| std::cmp::Reverse(p.replay_weight()));
    let mut lanes: Vec<(u32, Vec<Arc<dyn Projection>>)> =
        vec![(0, vec![]); lanes.min(projections.len()).max(1)];
    for p in sorted {
        let lightest = lanes
            .iter_mut()
            .min_by_key(|(w, _)| *w)
            .expect("at least one lane");
        lightest.0 += p.replay_weight();
        lightest.1.push(p);
    }
    lanes.into_iter().map(|(_, ps)| ps).collect()
}

impl Shadow {
    async fn create(live: &Store, projections: &[Arc<dyn Projection>]) -> anyhow::Result<Shadow> {
        let name = shadow_claim::new_name();
        let dealt = deal(projections, replay_lanes());
        match live.backend {
            Backend::Sqlite => {
                let dir = sqlite_dir(live)?;
                shadow_claim::remove_unclaimed_files(&dir);
                let mut shadow = Shadow {
                    lanes: vec![],
                    schema: None,
                    claim: Some(Claim::take(live, &name, Some(&dir)).await?),
                    dropped_indexes: vec![],
                };
                for (i, projections) in dealt.into_iter().enumerate() {
                    let path = dir.join(format!("{name}_{i}.db"));
                    let store =
                        match Store::connect_shadow(&format!("sqlite://{}", path.display()), None)
                            .await
                        {
                            Ok(store) => store,
                            Err(e) => {
                                shadow.remove(live).await;
                                remove_files(&path);
                                return Err(e);
                            }
                        };
                    shadow.lanes.push(Lane {
                        store,
                        qualifier: format!("shadow{i}"),
                        file: Some(path),
                        projections,
                    });
                }
                Ok(shadow)
            }
            Backend::Postgres => {
                if let Err(e) = shadow_claim::remove_unclaimed_schemas(live).await {
                    tracing::warn!(error = %format!("{e:#}"), "removing the shadows of rebuilds that did not finish failed");
                }
                let claim = Claim::take(live, &name, None).await?;
                if let Err(e) = sqlx::query(&format!("CREATE SCHEMA {name}"))
                    .execute(&live.pool)
                    .await
                {
                    claim.release().await;
                    return Err(anyhow::Error::new(e).context("creating the rebuild's schema"));
                }
                let mut shadow = Shadow {
                    lanes: vec![],
                    schema: Some(name.clone()),
                    claim: Some(claim),
                    dropped_indexes: vec![],
                };
                let retired = shadow_claim::retired(&name);
                if let Err(e) = sqlx::query(&format!("CREATE SCHEMA {retired}"))
                    .execute(&live.pool)
                    .await
                {
                    shadow.remove(live).await;
                    return Err(anyhow::Error::new(e).context("creating the rebuild's schema"));
                }
                let store = match Store::connect_shadow(live.url.expose_secret(), Some(&name)).await
                {
                    Ok(store) => store,
                    Err(e) => {
                        shadow.remove(live).await;
                        return Err(e);
                    }
                };
                // One schema, one pool: each lane's transactions take a connection
                // of their own from it.
                shadow.lanes = dealt
                    .into_iter()
                    .map(|projections| Lane {
                        store: store.clone(),
                        qualifier: name.clone(),
                        file: None,
                        projections,
                    })
                    .collect();
                Ok(shadow)
            }
        }
    }

    /// The lane replaying `projection`.
    fn lane_of(&self, projection: &dyn Projection) -> usize {
        self.lanes
            .iter()
            .position(|l| l.projections.iter().any(|p| p.name() == projection.name()))
            .expect("every projection rebuilt is in a lane")
    }

    async fn remove(self, live: &Store) {
        for lane in &self.lanes {
            lane.store.pool.close().await;
            lane.store.reads.close().await;
            if let Some(path) = &lane.file {
                remove_files(path);
            }
        }
        let schemas = self
            .schema
            .iter()
            .flat_map(|s| [s.clone(), shadow_claim::retired(s)]);
        for name in schemas {
            if let Err(e) = sqlx::query(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                .execute(&live.pool)
                .await
            {
                tracing::warn!(schema = %name, error = %e, "dropping the rebuild's schema failed");
            }
        }
        if let Some(claim) = self.claim {
            claim.release().await;
        }
    }
}

/// The directory of a SQLite live store's file, where its shadows go.
fn sqlite_dir(live: &Store) -> anyhow::Result<std::path::PathBuf> {
    let url = live.url.expose_secret();
    let live_path = url
        .strip_prefix("sqlite://")
        .and_then(|p| p.split('?').next())
        .filter(|p| !p.is_empty() && !p.contains(":memory:"))
        .context("a rebuild needs a SQLite database file")?;
    Ok(std::path::Path::new(live_path)
        .parent()
        .map(|d| d.to_path_buf())
        .unwrap_or_default())
}

/// Removes the shadows of rebuilds that died before removing theirs (every rebuild
/// does this first too; a server does it as it starts): those no running rebuild
/// claims (see [`crate::shadow_claim`]).
pub async fn remove_leftovers(live: &Store) -> anyhow::Result<()> {
    match live.backend {
        // (A database in memory has no shadows.)
        Backend::Sqlite => {
            if let Ok(dir) = sqlite_dir(live) {
                shadow_claim::remove_unclaimed_files(&dir);
            }
        }
        Backend::Postgres => shadow_claim::remove_unclaimed_schemas(live).await?,
    }
    Ok(())
}

/// Removes a SQLite database file and its companions (those that exist: the
/// shadow keeps its journal in memory, so most do not).
fn remove_files(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = path.to_path_buf().into_os_string();
        p.push(suffix);
        shadow_claim::remove_logged(std::path::Path::new(&p));
    }
}

/// Rebuilds `projections` from the log beside the live store; swaps the rebuilt
/// state in unless `dry_run`. `on_progress` is called as the replay goes.
pub async fn rebuild(
    log: Arc<dyn EventLog>,
    live: &Store,
    projections: Vec<Arc<dyn Projection>>,
    dry_run: bool,
    mut on_progress: impl FnMut(&RebuildProgress) + Send,
) -> anyhow::Result<RebuildReport> {
    anyhow::ensure!(!projections.is_empty(), "no projection to rebuild");
    anyhow::ensure!(
        projections.iter().all(|p| p.stream() == StreamKind::Domain),
        "only projections of the domain stream can be rebuilt"
    );
    let mut shadow = Shadow::create(live, &projections).await?;
    for p in &projections {
        let store = &shadow.lanes[shadow.lane_of(&**p)].store;
        for index in p.rebuild_without_indexes() {
            if live.backend == Backend::Postgres {
                // Its definition, schema-qualified: the shadow's, to build again
                // before the swap moves the shadow's tables in.
                match sqlx::query_scalar::<_, String>(
                    "SELECT CAST(indexdef AS TEXT) FROM pg_indexes WHERE schemaname = current_schema() AND indexname = $1",
                )
                .bind(*index)
                .fetch_one(&store.pool)
                .await
                {
                    Ok(def) => shadow.dropped_indexes.push((p.name(), def)),
                    Err(e) => {
                        shadow.remove(live).await;
                        return Err(anyhow::Error::new(e)
                            .context(format!("reading {index}'s definition in the shadow")));
                    }
                }
            }
            // On the lane's own connection: its file, or the schema first in the
            // search path.
            if let Err(e) = sqlx::query(&format!("DROP INDEX {index}"))
                .execute(&store.pool)
                .await
            {
                shadow.remove(live).await;
                return Err(
                    anyhow::Error::new(e).context(format!("dropping {index} in the shadow"))
                );
            }
        }
    }
    let result = run(log, live, &shadow, projections, dry_run, &mut on_progress).await;
    shadow.remove(live).await;
    return_freed_memory();
    result
}

/// Hands the memory SQLite freed back to the system. SQLite allocates through the C
/// library's `malloc`, not Rust's allocator, and each SQLite connection runs on a
/// thread of its own, so the shadow's page caches and journals were freed into
/// per-thread arenas that glibc keeps: a rebuild of 300,000 events left the process
/// at 336 MiB after it, of 16 MiB before, and a ten-minute soak at 1.06 GiB after a
/// rebuild of 1.2M events.
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's arenas; it
    // takes no pointers and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

async fn run(
    log: Arc<dyn EventLog>,
    live: &Store,
    shadow: &Shadow,
    projections: Vec<Arc<dyn Projection>>,
    dry_run: bool,
    on_progress: &mut (impl FnMut(&RebuildProgress) + Send),
) -> anyhow::Result<RebuildReport> {
    let started = Instant::now();
    let lanes: Vec<Arc<(Driver, Follower)>> = shadow
        .lanes
        .iter()
        .map(|lane| {
            Arc::new((
                Driver {
                    log: log.clone(),
                    store: lane.store.clone(),
                    progress: Progress::default(),
                },
                Follower {
                    consumer: "replay",
                    stream: StreamKind::Domain,
                    reactors: projection::reactors(lane.projections.clone()),
                },
            ))
        })
        .collect();
    // 1. Replay into the shadow until close to the head: in one pass, with a stop
    // only where PostgreSQL's statistics are refreshed (each stop waits for the
    // slowest lane and starts the read-ahead again).
    let mut position = 0;
    let mut next_analyze = ANALYZE_FIRST;
    loop {
        let head = log.last_seq(StreamKind::Domain).await?;
        if head.saturating_sub(position) <= REPLAY_BATCH as u64 {
            break;
        }
        // A refresh close to the end is left to the one before the swap.
        let refresh = shadow.schema.is_some() && next_analyze.saturating_mul(2) <= head;
        let target = if refresh { next_analyze } else { head };
        let catch_up = Driver::catch_up_lanes(&lanes, target, REPLAY_BATCH);
        tokio::pin!(catch_up);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        position = loop {
            tokio::select! {
                reached = &mut catch_up => break reached?,
                _ = tick.tick() => {
                    let at = applied(&lanes);
                    on_progress(&RebuildProgress::at(at, head, at, started));
                }
            }
        };
        on_progress(&RebuildProgress::at(position, head, position, started));
        // PostgreSQL plans from table statistics, which a bulk load outgrows at
        // once (a table planned as empty is scanned, not looked up): refresh them
        // as the shadow grows.
        if refresh && position >= next_analyze {
            let t = Instant::now();
            // Each lane its own tables, on a connection of its own.
            futures_util::future::try_join_all(shadow.lanes.iter().map(analyze)).await?;
            tracing::debug!(
                position,
                seconds = t.elapsed().as_secs_f64(),
                "rebuild: the shadow's statistics refreshed"
            );
            next_analyze = position.saturating_mul(ANALYZE_GROWTH);
        }
    }
    tracing::info!(
        position,
        seconds = started.elapsed().as_secs_f64(),
        "rebuild: replayed into the shadow"
    );
    if shadow.schema.is_some() && !dry_run {
        let t = Instant::now();
        prepare_to_move(shadow).await?;
        tracing::info!(
            seconds = t.elapsed().as_secs_f64(),
            "rebuild: the shadow's tables indexed"
        );
    }
    // 2. and 3. Lock the live checkpoints, meet them exactly, swap or compare.
    for attempt in 0.. {
        let head = log.last_seq(StreamKind::Domain).await?;
        position = Driver::catch_up_lanes(&lanes, head, REPLAY_BATCH).await?;
        on_progress(&RebuildProgress::at(position, head, position, started));
        match finish(&lanes, live, shadow, &projections, dry_run).await? {
            Some((projections, locked_seconds)) => {
                return Ok(RebuildReport {
                    events: projections.iter().map(|p| p.position).max().unwrap_or(0),
                    projections,
                    seconds: started.elapsed().as_secs_f64(),
                    swapped: !dry_run,
                    locked_seconds,
                });
            }
            // A dry run found the live state behind the shadow: let it catch up. Or
            // a swap on PostgreSQL could not lock a live table at once: try again
            // (its lock wait holds up the table's readers, so it waits briefly).
            None if attempt < 600 => tokio::time::sleep(Duration::from_millis(100)).await,
            None if dry_run => anyhow::bail!(
                "the live read models did not reach the rebuilt position within a minute"
            ),
            None => anyhow::bail!(
                "the swap could not lock the live tables in 600 attempts (a long query holds them)"
            ),
        }
    }
    unreachable!()
}

impl RebuildProgress {
    /// At `position` of `head`, `events` done since `started`: the pace so far and
    /// the time left at that pace.
    pub fn at(position: u64, head: u64, events: u64, started: Instant) -> Self {
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        let rate = (events as f64 / secs) as u64;
        RebuildProgress {
            position,
            head,
            events,
            events_per_second: rate,
            eta_seconds: head.saturating_sub(position) / rate.max(1),
        }
    }
}

/// Refreshes the statistics of the lane's tables.
async fn analyze(lane: &Lane) -> anyhow::Result<()> {
    for p in &lane.projections {
        for table in p.tables() {
            sqlx::query(&format!("ANALYZE {table}"))
                .execute(&lane.store.pool)
                .await
                .with_context(|| format!("refreshing the statistics of the rebuilt {table}"))?;
        }
    }
    Ok(())
}

/// The lowest position the lanes have applied, as their drivers publish it while
/// they work.
fn applied(lanes: &[Arc<(Driver, Follower)>]) -> u64 {
    lanes
        .iter()
        .flat_map(|lane| {
            lane.1
                .reactors
                .iter()
                .map(|r| lane.0.progress.get(r.name()))
        })
        .min()
        .unwrap_or(0)
}

/// Runs [`locked`] on a live connection (on SQLite with the shadow's files
/// attached to it).
async fn finish(
    lanes: &[Arc<(Driver, Follower)>],
    live: &Store,
    shadow: &Shadow,
    projections: &[Arc<dyn Projection>],
    dry_run: bool,
) -> anyhow::Result<Option<(Vec<RebuiltProjection>, f64)>> {
    let mut conn = live.pool.acquire().await?;
    // SQLite: the connection's automatic checkpoint, restored after a swap.
    let mut autocheckpoint = None;
    if live.backend == Backend::Sqlite {
        // The swap's index builds sort whole tables and its copy journals reused
        // pages: in files, not in memory (the live connections keep temporary data
        // in memory for their small batches). In memory, a rebuild of ~240,000
        // events under load left the process at 420 MiB instead of 340 MiB, and the
        // swap of 300,000 events took 3.1 s instead of 2.7 s.
        sqlx::query("PRAGMA temp_store = FILE")
            .execute(&mut *conn)
            .await?;
        let prepared = async {
            for lane in &shadow.lanes {
                let path = lane.file.as_ref().expect("a SQLite lane is a file");
                sqlx::query(&format!("ATTACH DATABASE $1 AS {}", lane.qualifier))
                    .bind(path.display().to_string())
                    .execute(&mut *conn)
                    .await
                    .context("attaching the rebuilt database")?;
            }
            if !dry_run {
                // The swap's commit would copy its whole WAL into the database file
                // (the automatic checkpoint, about a second at 1,000,000 events)
                // while the live applier waits for this, the store's one writing
                // connection: it is run beside instead, after the commit (below).
                let pages: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint")
                    .fetch_one(&mut *conn)
                    .await?;
                sqlx::query("PRAGMA wal_autocheckpoint = 0")
                    .execute(&mut *conn)
                    .await?;
                autocheckpoint = Some(pages);
            }
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = prepared {
            // Not back to the pool half set up (a shadow attached, or no automatic
            // checkpoints).
            let _ = conn.detach().close().await;
            return Err(e);
        }
    }
    let outcome = locked(lanes, live, &mut conn, shadow, projections, dry_run).await;
    if live.backend == Backend::Sqlite {
        let restored = async {
            for lane in &shadow.lanes {
                sqlx::query(&format!("DETACH DATABASE {}", lane.qualifier))
                    .execute(&mut *conn)
                    .await?;
            }
            if let Some(pages) = autocheckpoint {
                sqlx::query(&format!("PRAGMA wal_autocheckpoint = {pages}"))
                    .execute(&mut *conn)
                    .await?;
            }
            sqlx::query("PRAGMA temp_store = MEMORY")
                .execute(&mut *conn)
                .await
        }
        .await;
        if let Err(e) = restored {
            // Do not hand a connection with the shadow attached (or without its
            // automatic checkpoints) back to the pool.
            tracing::warn!(error = %e, "detaching the rebuilt database failed");
            let _ = conn.detach().close().await;
        }
        if autocheckpoint.is_some() {
            checkpoint_aside(live);
            tokio::task::yield_now().await;
        }
    }
    outcome
}

/// Copies the WAL into the SQLite database file on a reading connection, beside
/// the live applier: started before the writing connection goes back to the pool,
/// so it holds the checkpoint lock by the applier's next commit, whose own
/// automatic checkpoint then skips (a passive checkpoint never waits for that
/// lock). Should the applier commit first, it checkpoints itself, as before.
fn checkpoint_aside(live: &Store) {
    let reads = live.reads.clone();
    tokio::spawn(async move {
        let t = Instant::now();
        match sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&reads)
            .await
        {
            Ok(_) => tracing::debug!(
                seconds = t.elapsed().as_secs_f64(),
                "rebuild: the swap's WAL checkpointed beside the live applier"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "checkpointing the swap's WAL failed (the next commit does it)")
            }
        }
    });
}

/// The locked step: `None` when it must be tried again (a dry run waiting for the
/// live state; a swap on PostgreSQL that could not lock a live table in time).
async fn locked(
    lanes: &[Arc<(Driver, Follower)>],
    live: &Store,
    conn: &mut sqlx::AnyConnection,
    shadow: &Shadow,
    projections: &[Arc<dyn Projection>],
    dry_run: bool,
) -> anyhow::Result<Option<(Vec<RebuiltProjection>, f64)>> {
    let sqlite = conn.backend_name() == "SQLite";
    let locked_at = Instant::now();
    let mut tx = conn.begin().await?;
    let mut at = Vec::with_capacity(projections.len());
    for p in projections {
        // Take the checkpoint row's lock (the live applier's advance waits on it).
        sqlx::query("INSERT INTO projection_checkpoints (name, seq) VALUES ($1, 0) ON CONFLICT (name) DO UPDATE SET seq = projection_checkpoints.seq")
            .bind(p.name())
            .execute(&mut *tx)
            .await?;
        let live_cp = checkpoint::get(&mut tx, p.name()).await?;
        // Bring the shadow to exactly where the live projection stands (it is at or
        // near the head already: a few events at most).
        let one = Follower {
            consumer: "replay",
            stream: StreamKind::Domain,
            reactors: vec![Arc::new(AsReactor(p.clone())) as Arc<dyn Reactor>],
        };
        let lane = shadow.lane_of(&**p);
        let shadow_cp = lanes[lane]
            .0
            .catch_up_to(&one, live_cp, REPLAY_BATCH)
            .await?;
        if shadow_cp != live_cp && dry_run {
            return Ok(None);
        }
        at.push((p, lane, live_cp, shadow_cp));
    }
    if !dry_run && !sqlite {
        return move_in(tx, live, shadow, at, locked_at).await;
    }
    if !dry_run {
        return swap(tx, shadow, at, locked_at).await.map(Some);
    }
    // A dry run compares each rebuilt state with the live one as it is, under the
    // lock; the two checksums run side by side (another connection, another file or
    // schema: the two cores).
    let mut out = Vec::with_capacity(at.len());
    for (p, lane, _, shadow_cp) in at {
        let lane = &shadow.lanes[lane];
        let t0 = Instant::now();
        let (rebuilt, live_checksum) =
            tokio::join!(checksum(&lane.store, &**p), checksum_on(&mut tx, &**p));
        tracing::debug!(
            projection = p.name(),
            seconds = t0.elapsed().as_secs_f64(),
            "rebuild: compared"
        );
        out.push(RebuiltProjection {
            name: p.name().to_string(),
            position: shadow_cp,
            checksum: rebuilt?,
            live_checksum: live_checksum?,
        });
    }
    tx.commit().await?;
    Ok(Some((out, locked_at.elapsed().as_secs_f64())))
}

/// Aborts a task when dropped (an early return stops its work).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// SQLite's swap, under the lock `tx` holds: every live table is replaced by its
/// rebuilt copy, each copy's row count checked against the rebuilt table's, and
/// the checkpoints stay at (or move to) the rebuilt positions; then the commit
/// releases the live applier. The rebuilt states' checksums — what the report
/// shows — are taken beside the copy and may end after the commit: once every
/// shadow has reached its position nothing writes to it again, so the lock is held
/// only for the copy and the commit (at 1,000,000 events the checksums were most
/// of a swap that held the live applier for about ten seconds).
async fn swap(
    mut tx: sqlx::Transaction<'_, sqlx::Any>,
    shadow: &Shadow,
    at: Vec<(&Arc<dyn Projection>, usize, u64, u64)>,
    locked_at: Instant,
) -> anyhow::Result<(Vec<RebuiltProjection>, f64)> {
    let work: Vec<(Store, Arc<dyn Projection>)> = at
        .iter()
        .map(|(p, lane, ..)| (shadow.lanes[*lane].store.clone(), Arc::clone(p)))
        .collect();
    let mut sums = AbortOnDrop(tokio::spawn(async move {
        let mut sums = Vec::with_capacity(work.len());
        for (store, p) in work {
            sums.push(checksum(&store, &*p).await?);
        }
        anyhow::Ok(sums)
    }));
    let t0 = Instant::now();
    for (p, lane, live_cp, shadow_cp) in &at {
        let qualifier = &shadow.lanes[*lane].qualifier;
        for table in p.tables() {
            let t = Instant::now();
            copy_table(&mut tx, table, qualifier).await?;
            let (copied, rebuilt): (i64, i64) = sqlx::query_as(&format!(
                "SELECT (SELECT COUNT(*) FROM main.{table}), (SELECT COUNT(*) FROM {qualifier}.{table})"
            ))
            .fetch_one(&mut *tx)
            .await?;
            anyhow::ensure!(
                copied == rebuilt,
                "the copy of {table} holds {copied} rows, the rebuilt table {rebuilt}"
            );
            tracing::debug!(
                table,
                rows = copied,
                seconds = t.elapsed().as_secs_f64(),
                "rebuild: copied"
            );
        }
        set_checkpoint(&mut tx, p.name(), *live_cp, *shadow_cp).await?;
    }
    tx.commit().await?;
    let locked = locked_at.elapsed().as_secs_f64();
    tracing::debug!(
        copy_seconds = t0.elapsed().as_secs_f64(),
        locked_seconds = locked,
        "rebuild: swapped in; the live applier goes on"
    );
    let sums = (&mut sums.0)
        .await
        .context("the rebuilt checksums' task")?
        .context(SWAPPED_UNSUMMED)?;
    Ok((report(at, sums), locked))
}

/// The context of a checksum that failed after the swap committed: the rebuilt
/// state is live, only its report is missing.
const SWAPPED_UNSUMMED: &str =
    "the rebuilt state is swapped in; taking its checksums failed (`wabridge projections checksum` takes them from the live state)";

/// Moves the live checkpoint to the rebuilt position when the live projection was
/// behind it (its pending batch skips what the rebuilt state covers).
async fn set_checkpoint(
    tx: &mut sqlx::AnyConnection,
    name: &str,
    live_cp: u64,
    shadow_cp: u64,
) -> anyhow::Result<()> {
    if shadow_cp != live_cp {
        sqlx::query("UPDATE projection_checkpoints SET seq = $1 WHERE name = $2")
            .bind(shadow_cp as i64)
            .bind(name)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// A swap's report: each rebuilt state's checksum, which the live tables now hold.
fn report(
    at: Vec<(&Arc<dyn Projection>, usize, u64, u64)>,
    sums: Vec<String>,
) -> Vec<RebuiltProjection> {
    at.into_iter()
        .zip(sums)
        .map(|((p, _, _, shadow_cp), sum)| RebuiltProjection {
            name: p.name().to_string(),
            position: shadow_cp,
            live_checksum: sum.clone(),
            checksum: sum,
        })
        .collect()
}

/// Replaces the live `table`'s rows with the shadow's (`qualifier.table`), inside
/// the caller's transaction on SQLite.
///
/// The table's secondary indexes are dropped and built again after the copy, in
/// the same transaction (readers keep their snapshot, with its indexes, until the
/// commit): building an index from the copied rows sorts once, where keeping it up
/// row by row inserts at random places in a large tree.
async fn copy_table(
    tx: &mut sqlx::AnyConnection,
    table: &str,
    qualifier: &str,
) -> anyhow::Result<()> {
    let indexes: Vec<(String, String)> =
        sqlx::query_as("SELECT name, sql FROM main.sqlite_master WHERE type = 'index' AND tbl_name = $1 AND sql IS NOT NULL")
            .bind(table)
            .fetch_all(&mut *tx)
            .await?;
    for (name, _) in &indexes {
        sqlx::query(&format!("DROP INDEX main.{name}"))
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(&format!("DELETE FROM main.{table}"))
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!(
        "INSERT INTO main.{table} SELECT * FROM {qualifier}.{table}"
    ))
    .execute(&mut *tx)
    .await
    .with_context(|| format!("copying the rebuilt {table}"))?;
    for (name, sql) in &indexes {
        sqlx::query(sql)
            .execute(&mut *tx)
            .await
            .with_context(|| format!("building {name} again"))?;
    }
    Ok(())
}

/// How long PostgreSQL's swap waits for a live table's lock before it lets go and
/// tries again: while it waits, the table's new readers queue behind it.
const MOVE_LOCK_TIMEOUT: &str = "500ms";

/// PostgreSQL, before its swap, outside the lock: gives the shadow's tables every
/// index the live ones have (those dropped for the replay built again) and fresh
/// statistics, so that the swap only has to move them in. The lanes do their own
/// projections' tables side by side. (The shadow's tables are logged from the
/// start: loading them `UNLOGGED` and writing each to the WAL whole here with `SET
/// LOGGED` was about a second slower at 1,000,000 events, 25.4 s against 24.2 s.)
async fn prepare_to_move(shadow: &Shadow) -> anyhow::Result<()> {
    futures_util::future::try_join_all(shadow.lanes.iter().map(|lane| async move {
        for p in &lane.projections {
            for (_, def) in shadow
                .dropped_indexes
                .iter()
                .filter(|(n, _)| *n == p.name())
            {
                sqlx::query(def)
                    .execute(&lane.store.pool)
                    .await
                    .with_context(|| format!("building again in the shadow: {def}"))?;
            }
        }
        analyze(lane).await
    }))
    .await?;
    Ok(())
}

/// PostgreSQL's swap, under the lock `tx` holds: each live table is moved into the
/// retired schema and the shadow's table of that name into the live schema, with
/// its indexes and statistics (a catalog change: no row is copied, whatever the
/// size); the checkpoints stay at (or move to) the rebuilt positions; the commit
/// releases the live applier. A reader sees the old table until the commit and the
/// new one after it: a query that reached the table first holds it until it ends
/// (the move waits for it, up to [`MOVE_LOCK_TIMEOUT`], then the swap is tried
/// again), a later one waits for the commit and then reads the new table.
///
/// The rebuilt states' checksums are read after the commit, from a snapshot taken
/// before it: the rebuilt tables as the shadow left them, before the live applier
/// writes to them again.
async fn move_in(
    mut tx: sqlx::Transaction<'_, sqlx::Any>,
    live: &Store,
    shadow: &Shadow,
    at: Vec<(&Arc<dyn Projection>, usize, u64, u64)>,
    locked_at: Instant,
) -> anyhow::Result<Option<(Vec<RebuiltProjection>, f64)>> {
    let from = shadow
        .schema
        .as_deref()
        .expect("a PostgreSQL shadow has a schema");
    let retired = shadow_claim::retired(from);
    let live_schema: String = sqlx::query_scalar("SELECT CAST(current_schema() AS TEXT)")
        .fetch_one(&mut *tx)
        .await?;
    let live_schema = format!("\"{}\"", live_schema.replace('"', "\"\""));
    let mut snapshot = live.reads.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *snapshot)
        .await?;
    // The first query fixes the snapshot; it reads no table (the move would wait
    // for its lock). Exported, so that a second session reads the same rows: the
    // checksums are taken on both, the heaviest projection's beside the others'.
    let snapshot_id: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
        .fetch_one(&mut *snapshot)
        .await?;
    let mut beside = live.reads.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *beside)
        .await?;
    sqlx::query(&format!("SET TRANSACTION SNAPSHOT '{snapshot_id}'"))
        .execute(&mut *beside)
        .await?;
    sqlx::query(&format!("SET LOCAL lock_timeout = '{MOVE_LOCK_TIMEOUT}'"))
        .execute(&mut *tx)
        .await?;
    for (p, _, live_cp, shadow_cp) in &at {
        for table in p.tables() {
            for statement in [
                format!("ALTER TABLE {live_schema}.{table} SET SCHEMA {retired}"),
                format!("ALTER TABLE {from}.{table} SET SCHEMA {live_schema}"),
            ] {
                match sqlx::query(&statement).execute(&mut *tx).await {
                    Ok(_) => {}
                    Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => {
                        tracing::info!(
                            table,
                            "rebuild: a live table is in use; the swap tries again"
                        );
                        return Ok(None);
                    }
                    Err(e) => {
                        return Err(
                            anyhow::Error::new(e).context(format!("moving in the rebuilt {table}"))
                        )
                    }
                }
            }
        }
        set_checkpoint(&mut tx, p.name(), *live_cp, *shadow_cp).await?;
    }
    tx.commit().await?;
    let locked = locked_at.elapsed().as_secs_f64();
    tracing::debug!(
        locked_seconds = locked,
        "rebuild: moved in; the live applier goes on"
    );
    let projections: Vec<&dyn Projection> = at.iter().map(|(p, ..)| &***p).collect();
    let heaviest = (0..projections.len())
        .max_by_key(|&i| projections[i].replay_weight())
        .unwrap_or(0);
    let others: Vec<&dyn Projection> = projections
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != heaviest)
        .map(|(_, p)| *p)
        .collect();
    let (alone, others) = futures_util::future::join(
        checksums(
            &mut snapshot,
            projections.get(heaviest..=heaviest).unwrap_or_default(),
        ),
        checksums(&mut beside, &others),
    )
    .await;
    let (alone, others) = (
        alone.context(SWAPPED_UNSUMMED)?,
        others.context(SWAPPED_UNSUMMED)?,
    );
    let mut sums = others;
    sums.splice(heaviest..heaviest, alone);
    snapshot.commit().await?;
    beside.commit().await?;
    Ok(Some((report(at, sums), locked)))
}

/// The checksums of `projections`, in order, on one connection.
async fn checksums(
    conn: &mut sqlx::AnyConnection,
    projections: &[&dyn Projection],
) -> anyhow::Result<Vec<String>> {
    let mut sums = Vec::with_capacity(projections.len());
    for p in projections {
        let t = Instant::now();
        sums.push(checksum_on(&mut *conn, *p).await?);
        tracing::debug!(
            projection = p.name(),
            seconds = t.elapsed().as_secs_f64(),
            "rebuild: checksum of the rebuilt state"
        );
    }
    Ok(sums)
}

/// The live state's checksum and the checkpoint it is at, read in one snapshot.
pub async fn live_checksum(
    store: &Store,
    projection: &dyn Projection,
) -> anyhow::Result<(u64, String)> {
    let mut conn = store.reads.acquire().await?;
    let begin = match store.backend {
        Backend::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ",
        Backend::Sqlite => "BEGIN",
    };
    sqlx::query(begin).execute(&mut *conn).await?;
    let result = async {
        if store.backend == Backend::Postgres {
            // Before the snapshot is fixed (by the first query): a swap moves whole
            // tables in, so a snapshot taken before it would read the checkpoint of
            // the replaced table and the rows of the new one.
            sqlx::query(&format!(
                "LOCK TABLE {} IN ACCESS SHARE MODE",
                projection.tables().join(", ")
            ))
            .execute(&mut *conn)
            .await?;
        }
        let cp = checkpoint::get(&mut conn, projection.name()).await?;
        let sum = checksum_on(&mut conn, projection).await?;
        anyhow::Ok((cp, sum))
    }
    .await;
    let _ = sqlx::query("COMMIT").execute(&mut *conn).await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Weighted(&'static str, u32);

    #[async_trait::async_trait]
    impl Projection for Weighted {
        fn name(&self) -> &'static str {
            self.0
        }
        fn tables(&self) -> &'static [&'static str] {
            &[]
        }
        fn dump_sql(&self) -> &'static str {
            ""
        }
        fn replay_weight(&self) -> u32 {
            self.1
        }
        async fn apply(
            &self,
            _conn: &mut sqlx::AnyConnection,
            _event: &wabridge_events::StoredEvent,
        ) -> anyhow::Result<()> {
            Ok(())
        }
    }

    fn names(lane: &[Arc<dyn Projection>]) -> Vec<&'static str> {
        lane.iter().map(|p| p.name()).collect()
    }

    #[test]
    fn lanes_get_every_projection_once_and_about_equal_weight() {
        let ps: Vec<Arc<dyn Projection>> = vec![
            Arc::new(Weighted("a", 1)),
            Arc::new(Weighted("messages", 8)),
            Arc::new(Weighted("b", 1)),
            Arc::new(Weighted("send_context", 4)),
            Arc::new(Weighted("c", 1)),
            Arc::new(Weighted("d", 1)),
            Arc::new(Weighted("e", 1)),
        ];
        let lanes = deal(&ps, 2);
        assert_eq!(names(&lanes[0]), ["messages", "e"]);
        assert_eq!(names(&lanes[1]), ["send_context", "a", "b", "c", "d"]);
        let lanes = deal(&ps, 3);
        let mut all: Vec<_> = lanes.iter().flat_map(|l| names(l)).collect();
        all.sort();
        assert_eq!(all, ["a", "b", "c", "d", "e", "messages", "send_context"]);
        let weights: Vec<u32> = lanes
            .iter()
            .map(|l| l.iter().map(|p| p.replay_weight()).sum())
            .collect();
        assert_eq!(weights, [8, 5, 4]);
        // No empty lane: one projection, one lane; one lane asked, one lane.
        assert_eq!(deal(&ps[..1], 2).len(), 1);
        assert_eq!(names(&deal(&ps, 1)[0]).len(), 7);
    }
}
