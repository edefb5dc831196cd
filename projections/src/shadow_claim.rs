//! A rebuild's claim on its shadow, and the removal of shadows whose rebuild is gone.
//!
//! A rebuild that crashes (a SIGKILL, a power loss) leaves its shadow behind: SQLite
//! files beside the database, or PostgreSQL schemas — after a swap on PostgreSQL,
//! the replaced live tables too, as large as the read models. Each rebuild holds a
//! claim on its shadow for as long as it exists, which the operating system or the
//! database lets go of when the process dies: on SQLite an exclusive `flock` on a
//! lock file named after the shadow (taken before any shadow file is made), on
//! PostgreSQL a session advisory lock on its name (taken before its schemas are
//! created). The next rebuild removes every shadow whose claim it can take: no
//! process holds it, so no rebuild is using it.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::Context;
use sqlx::Connection;

use crate::Store;

/// The prefix of every shadow's name.
pub const PREFIX: &str = "replay_";

/// A new shadow's name: [`PREFIX`] and twelve hex digits.
pub fn new_name() -> String {
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    format!("{PREFIX}{}", &nonce[..12])
}

/// PostgreSQL: the schema a swap moves shadow `schema`'s replaced live tables into
/// (dropped with the shadow).
pub fn retired(schema: &str) -> String {
    format!("{schema}_old")
}

/// Splits a file or schema name into the shadow it belongs to and the rest
/// (`replay_0123456789ab_0.db` → `replay_0123456789ab`, `_0.db`); `None` for a
/// name that is no shadow's.
fn shadow_of(name: &str) -> Option<(&str, &str)> {
    let nonce = name.strip_prefix(PREFIX)?.get(..12)?;
    nonce
        .bytes()
        .all(|b| b.is_ascii_hexdigit())
        .then(|| name.split_at(PREFIX.len() + 12))
}

/// The advisory-lock class of shadows' claims (the first of PostgreSQL's two keys).
const LOCK_CLASS: i32 = 0x5742;

/// PostgreSQL: takes the claim on shadow `name` for `conn`'s session, unless a
/// session holds it; whether it was taken.
async fn try_lock(conn: &mut sqlx::AnyConnection, name: &str) -> anyhow::Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT CAST(pg_try_advisory_lock($1, hashtext($2)) AS BOOLEAN)")
            .bind(LOCK_CLASS)
            .bind(name)
            .fetch_one(conn)
            .await?,
    )
}

/// Closes a connection of claims: the server ends its session, and so its locks,
/// whether the goodbye arrives or not.
async fn close(conn: sqlx::AnyConnection) {
    if let Err(e) = conn.close().await {
        tracing::debug!(error = %e, "closing a claim's connection failed (its session ends anyway)");
    }
}

/// Held for as long as a shadow exists; dropping (or [`Claim::release`]) lets go.
pub enum Claim {
    /// The locked lock file and its path.
    Sqlite(std::fs::File, PathBuf),
    /// A connection of its own holding the advisory lock (in a mutex only so that
    /// the claim is `Sync`: it is never used, only closed).
    Postgres(std::sync::Mutex<sqlx::AnyConnection>),
}

impl Claim {
    /// Claims shadow `name` (in `dir` on SQLite).
    pub async fn take(live: &Store, name: &str, dir: Option<&Path>) -> anyhow::Result<Claim> {
        match dir {
            Some(dir) => {
                let path = dir.join(format!("{name}.lock"));
                let file = std::fs::File::create(&path)
                    .with_context(|| format!("creating {}", path.display()))?;
                anyhow::ensure!(lock_file(&file), "locking {}", path.display());
                Ok(Claim::Sqlite(file, path))
            }
            None => {
                // Not a pooled connection: the lock lasts as long as the connection.
                let mut conn = live.pool.acquire().await?.detach();
                anyhow::ensure!(
                    try_lock(&mut conn, name).await?,
                    "the rebuild's shadow {name} is claimed already"
                );
                Ok(Claim::Postgres(std::sync::Mutex::new(conn)))
            }
        }
    }

    /// Lets go, once the shadow is removed.
    pub async fn release(self) {
        match self {
            Claim::Sqlite(file, path) => {
                drop(file);
                remove_logged(&path);
            }
            Claim::Postgres(conn) => {
                close(conn.into_inner().unwrap_or_else(|e| e.into_inner())).await
            }
        }
    }
}

/// An exclusive `flock`, not waiting: whether it was taken.
fn lock_file(file: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: flock takes a file descriptor this `File` owns, open for its lifetime.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Removes a shadow's file; a failure (other than the file being gone already) is
/// logged, naming it.
pub(crate) fn remove_logged(path: &Path) {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(file = %path.display(), error = %e, "removing the rebuild's shadow file failed");
        }
        _ => {}
    }
}

/// SQLite: removes the shadows in `dir` that no process claims (their files and
/// lock file). Files of a shadow without a lock file (a version before claims) are
/// left, and named in a warning.
pub fn remove_unclaimed_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    // Each shadow: whether it has a lock file, and its other files.
    let mut shadows: BTreeMap<String, (bool, Vec<String>)> = BTreeMap::new();
    for name in entries.filter_map(|e| e.ok()?.file_name().into_string().ok()) {
        let Some((shadow, rest)) = shadow_of(&name) else {
            continue;
        };
        let entry = shadows.entry(shadow.to_string()).or_default();
        match rest {
            ".lock" => entry.0 = true,
            _ if rest.starts_with('_') => entry.1.push(name.clone()),
            _ => {}
        }
    }
    for (shadow, (has_lock, files)) in shadows {
        if !has_lock {
            tracing::warn!(shadow, ?files, "a rebuild's shadow files without a claim (left by an earlier version?): remove them if no rebuild runs");
            continue;
        }
        let lock = dir.join(format!("{shadow}.lock"));
        let Ok(file) = std::fs::OpenOptions::new().write(true).open(&lock) else {
            continue;
        };
        if !lock_file(&file) {
            continue; // a rebuild is using it
        }
        for f in &files {
            remove_logged(&dir.join(f));
        }
        remove_logged(&lock);
        tracing::warn!(
            shadow,
            "removed the shadow of a rebuild that did not finish"
        );
    }
}

/// PostgreSQL: drops the shadows' schemas (theirs and their [`retired`] ones) that
/// no session claims.
pub async fn remove_unclaimed_schemas(live: &Store) -> anyhow::Result<()> {
    let schemas: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(nspname AS TEXT) FROM pg_namespace WHERE nspname LIKE $1 ORDER BY 1",
    )
    // (`_` matches any character in LIKE: `shadow_of` tells them apart exactly.)
    .bind(format!("{PREFIX}%"))
    .fetch_all(&live.pool)
    .await?;
    let shadows: BTreeSet<&str> = schemas
        .iter()
        .filter_map(|s| {
            let (shadow, rest) = shadow_of(s)?;
            (rest.is_empty() || *s == retired(shadow)).then_some(shadow)
        })
        .collect();
    if shadows.is_empty() {
        return Ok(());
    }
    let mut conn = live.pool.acquire().await?.detach();
    for shadow in shadows {
        if !try_lock(&mut conn, shadow).await? {
            continue; // a rebuild is using it
        }
        for schema in [shadow.to_string(), retired(shadow)] {
            sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .execute(&mut conn)
                .await
                .with_context(|| format!("dropping the leftover schema {schema}"))?;
        }
        tracing::warn!(
            shadow,
            "removed the shadow of a rebuild that did not finish"
        );
    }
    close(conn).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shadows_names_are_told_from_others() {
        let name = new_name();
        assert_eq!(shadow_of(&name), Some((name.as_str(), "")));
        let lane = format!("{name}_1.db-journal");
        assert_eq!(shadow_of(&lane), Some((name.as_str(), "_1.db-journal")));
        let old = retired(&name);
        assert_eq!(shadow_of(&old), Some((name.as_str(), "_old")));
        assert_eq!(shadow_of("replay_0123456789a"), None);
        assert_eq!(shadow_of("replay_notahexname!"), None);
        assert_eq!(shadow_of("readmodels.db"), None);
    }
}
