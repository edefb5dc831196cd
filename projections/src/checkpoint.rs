//! Checkpoints: the last log sequence a projection (or reactor) applied, stored in the
//! read-model database and written in the same transaction as the view update.

use sqlx::AnyConnection;

/// The checkpoint of `name` (0 = nothing applied).
pub async fn get(conn: &mut AnyConnection, name: &str) -> sqlx::Result<u64> {
    let seq: Option<i64> =
        sqlx::query_scalar("SELECT seq FROM projection_checkpoints WHERE name = $1")
            .bind(name)
            .fetch_optional(conn)
            .await?;
    Ok(seq.unwrap_or(0) as u64)
}

/// Moves the checkpoint of `name` forward to `seq` (never backwards). Returns false
/// when it already was at or past `seq` (someone applied it: skip). On PostgreSQL
/// the row lock taken here serialises two appliers of the same event.
pub async fn advance(conn: &mut AnyConnection, name: &str, seq: u64) -> sqlx::Result<bool> {
    let res = sqlx::query(
        "INSERT INTO projection_checkpoints (name, seq) VALUES ($1, $2) \
         ON CONFLICT (name) DO UPDATE SET seq = excluded.seq WHERE projection_checkpoints.seq < excluded.seq",
    )
    .bind(name)
    .bind(seq as i64)
    .execute(conn)
    .await?;
    Ok(res.rows_affected() > 0)
}

/// Moves the checkpoint of `name` from exactly `expected` to `seq`; false when it is
/// not at `expected` any more (another applier moved it: roll back). Conditional on
/// the expected value, not only on "forward": on PostgreSQL two appliers that both
/// read `expected` and hold batches of different lengths would otherwise both commit
/// (the second re-checks `seq < new` after the first commits, which still holds),
/// applying the shorter batch's events twice.
pub async fn advance_from(
    conn: &mut AnyConnection,
    name: &str,
    expected: u64,
    seq: u64,
) -> sqlx::Result<bool> {
    let res = if expected == 0 {
        sqlx::query(
            "INSERT INTO projection_checkpoints (name, seq) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET seq = excluded.seq WHERE projection_checkpoints.seq = 0",
        )
        .bind(name)
        .bind(seq as i64)
        .execute(conn)
        .await?
    } else {
        sqlx::query("UPDATE projection_checkpoints SET seq = $1 WHERE name = $2 AND seq = $3")
            .bind(seq as i64)
            .bind(name)
            .bind(expected as i64)
            .execute(conn)
            .await?
    };
    Ok(res.rows_affected() > 0)
}
