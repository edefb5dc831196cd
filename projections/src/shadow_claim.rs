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

use std::path::{Path, PathBuf};

use anyhow::Context;
use sqlx::Connection;

use crate::Store;

/// The prefix of every shadow's name.
pub const PREFIX: &str = "replay_";

/// Whether `name` (a file or schema name, without its suffix) is a shadow's:
/// `replay_` and twelve hex digits.
fn is_shadow(name: &str) -> bool {
    name.strip_prefix(PREFIX)
        .is_some_and(|n| n.len() == 12 && n.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The advisory-lock class of shadows' claims (the first of PostgreSQL's two keys).
const LOCK_CLASS: i32 = 0x5742;

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
                let taken: bool = sqlx::query_scalar(
                    "SELECT CAST(pg_try_advisory_lock($1, hashtext($2)) AS BOOLEAN)",
                )
                .bind(LOCK_CLASS)
                .bind(name)
                .fetch_one(&mut conn)
                .await?;
                anyhow::ensure!(taken, "the rebuild's shadow {name} is claimed already");
                Ok(Claim::Postgres(std::sync::Mutex::new(conn)))
            }
        }
    }

    /// Lets go, once the shadow is removed.
    pub async fn release(self) {
        match self {
            Claim::Sqlite(file, path) => {
                drop(file);
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(file = %path.display(), error = %e, "removing the rebuild's lock file failed");
                }
            }
            Claim::Postgres(conn) => {
                let conn = conn.into_inner().unwrap_or_else(|e| e.into_inner());
                let _ = conn.close().await;
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

/// SQLite: removes the shadows in `dir` that no process claims (their files and
/// lock file). Files of a shadow without a lock file (a version before claims) are
/// left, and named in a warning.
pub fn remove_unclaimed_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(PREFIX))
        .collect();
    for lock in names.iter().filter(|n| n.ends_with(".lock")) {
        let shadow = lock.trim_end_matches(".lock");
        if !is_shadow(shadow) {
            continue;
        }
        let path = dir.join(lock);
        let Ok(file) = std::fs::OpenOptions::new().write(true).open(&path) else {
            continue;
        };
        if !lock_file(&file) {
            continue; // a rebuild is using it
        }
        for db in names.iter().filter(|n| is_file_of(n, shadow)) {
            let _ = std::fs::remove_file(dir.join(db));
        }
        let _ = std::fs::remove_file(&path);
        tracing::warn!(
            shadow,
            "removed the shadow of a rebuild that did not finish"
        );
    }
    for db in names
        .iter()
        .filter(|n| n.ends_with(".db") && n.len() > 19 && is_shadow(&n[..19]))
    {
        let claimed = names
            .iter()
            .any(|l| l.ends_with(".lock") && is_file_of(db, l.trim_end_matches(".lock")));
        if !claimed && dir.join(db).exists() {
            tracing::warn!(file = %dir.join(db).display(), "a rebuild's shadow file without a claim (left by an earlier version?): remove it if no rebuild runs");
        }
    }
}

/// Whether file `name` belongs to shadow `shadow` (`{shadow}_{lane}.db` and its
/// companions).
fn is_file_of(name: &str, shadow: &str) -> bool {
    name.strip_prefix(shadow)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|rest| rest.contains(".db"))
}

/// PostgreSQL: drops the shadows' schemas (`replay_…` and `replay_…_old`) that no
/// session claims.
pub async fn remove_unclaimed_schemas(live: &Store) -> anyhow::Result<()> {
    let schemas: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(nspname AS TEXT) FROM pg_namespace WHERE nspname ~ '^replay_[0-9a-f]{12}(_old)?$' ORDER BY 1",
    )
    .fetch_all(&live.pool)
    .await?;
    let mut shadows: Vec<&str> = schemas
        .iter()
        .map(|s| s.strip_suffix("_old").unwrap_or(s))
        .collect();
    shadows.dedup();
    if shadows.is_empty() {
        return Ok(());
    }
    let mut conn = live.pool.acquire().await?.detach();
    for shadow in shadows {
        let free: bool =
            sqlx::query_scalar("SELECT CAST(pg_try_advisory_lock($1, hashtext($2)) AS BOOLEAN)")
                .bind(LOCK_CLASS)
                .bind(shadow)
                .fetch_one(&mut conn)
                .await?;
        if !free {
            continue; // a rebuild is using it
        }
        for schema in [shadow.to_string(), format!("{shadow}_old")] {
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
    let _ = conn.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shadows_files_are_told_from_anothers() {
        assert!(is_file_of("replay_abc_0.db", "replay_abc"));
        assert!(is_file_of("replay_abc_1.db-journal", "replay_abc"));
        assert!(!is_file_of("replay_abcd_0.db", "replay_abc"));
        assert!(!is_file_of("replay_abc.lock", "replay_abc"));
        assert!(is_shadow("replay_0123456789ab"));
        assert!(!is_shadow("replay_0123456789a"));
        assert!(!is_shadow("replay_0123456789abc"));
        assert!(!is_shadow("replay_notahexname!"));
    }
}
