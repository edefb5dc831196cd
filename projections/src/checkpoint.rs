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

/// Moves several checkpoints, each `(name, expected, seq)` from exactly `expected`
/// to `seq`, as [`advance_from`] does one; false when any was not at `expected`
/// (the caller rolls back). Those moving from the same position to the same one —
/// every projection of a batch, usually — move in one statement.
pub async fn advance_all_from(
    conn: &mut AnyConnection,
    moves: &[(&str, u64, u64)],
) -> sqlx::Result<bool> {
    let mut groups: Vec<((u64, u64), Vec<&str>)> = vec![];
    for &(name, expected, seq) in moves {
        if expected == 0 {
            if !advance_from(&mut *conn, name, expected, seq).await? {
                return Ok(false);
            }
            continue;
        }
        match groups.iter_mut().find(|(k, _)| *k == (expected, seq)) {
            Some((_, names)) => names.push(name),
            None => groups.push(((expected, seq), vec![name])),
        }
    }
    for ((expected, seq), names) in groups {
        let list = (0..names.len())
            .map(|i| format!("${}", i + 3))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "UPDATE projection_checkpoints SET seq = $1 WHERE seq = $2 AND name IN ({list})"
        );
        let mut q = sqlx::query(&sql).bind(seq as i64).bind(expected as i64);
        for n in &names {
            q = q.bind(*n);
        }
        if q.execute(&mut *conn).await?.rows_affected() != names.len() as u64 {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn several_move_together_only_from_where_they_were() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            crate::Store::connect(&format!("sqlite://{}", dir.path().join("c.db").display()))
                .await
                .unwrap();
        let mut conn = store.pool.acquire().await.unwrap();
        // From nothing, and from 5 to 9 together.
        assert!(
            advance_all_from(&mut conn, &[("a", 0, 5), ("b", 0, 5), ("c", 0, 7)])
                .await
                .unwrap()
        );
        assert!(
            advance_all_from(&mut conn, &[("a", 5, 9), ("b", 5, 9), ("c", 7, 9)])
                .await
                .unwrap()
        );
        for n in ["a", "b", "c"] {
            assert_eq!(get(&mut conn, n).await.unwrap(), 9);
        }
        // One of them is not where the caller thinks: refused.
        assert!(!advance_all_from(&mut conn, &[("a", 9, 12), ("b", 8, 12)])
            .await
            .unwrap());
    }
}
