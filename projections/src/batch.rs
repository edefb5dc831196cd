//! Multi-row statements for projections that fold a batch in memory and write each
//! table once: the placeholders of `rows` rows of `cols` values, and the values.

use sqlx::{any::AnyArguments, query::Query, Any};

/// A value of a multi-row statement.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(untagged)]
pub enum Value {
    /// TEXT.
    Text(String),
    /// BIGINT.
    Int(i64),
    /// BIGINT or NULL.
    OptInt(Option<i64>),
}

/// `($1, $2), ($3, $4)` for 2 rows of 2 columns, numbered from `$1`.
pub fn placeholders(rows: usize, cols: usize) -> String {
    let mut s = String::with_capacity(rows * cols * 5);
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        for c in 0..cols {
            if c > 0 {
                s.push_str(", ");
            }
            s.push('$');
            s.push_str(&(r * cols + c + 1).to_string());
        }
        s.push(')');
    }
    s
}

/// Binds the values in order.
pub fn bind_all<'q>(
    mut q: Query<'q, Any, AnyArguments<'q>>,
    values: impl IntoIterator<Item = Value>,
) -> Query<'q, Any, AnyArguments<'q>> {
    for v in values {
        q = match v {
            Value::Text(s) => q.bind(s),
            Value::Int(i) => q.bind(i),
            Value::OptInt(o) => q.bind(o),
        };
    }
    q
}

/// Values bound per statement at most. sqlx's SQLite driver looks each `$n` up by
/// name when binding, which grows with the statement's parameters: past about a
/// hundred, binding costs more than the round trips it saves.
pub const MAX_BINDS: usize = 120;

/// Rows per statement so that no statement binds more than [`MAX_BINDS`] values.
pub fn rows_per_statement(cols: usize) -> usize {
    (MAX_BINDS / cols.max(1)).max(1)
}

/// How a column is read from a row of [`insert_rows`]'s JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Col {
    /// TEXT (a JSON string or null).
    Text,
    /// BIGINT (a JSON number or null).
    Int,
}

/// Rows per [`insert_rows`] statement at most (one bound JSON document each).
pub const JSON_ROWS: usize = 5000;

/// Inserts rows given as one JSON array of arrays bound to a single parameter:
/// `{head} SELECT <col 0>, <col 1>, … FROM <the array's elements> WHERE true {tail}`.
/// `head` is `INSERT INTO t (a, b, …)` and `tail` an `ON CONFLICT …` clause (or
/// empty); `cols` says how to read each column. One statement and one bound value
/// for thousands of rows: on SQLite every statement is a round trip to its worker
/// thread and each bound value is looked up by name, so this is several times
/// faster than `VALUES` lists; on PostgreSQL it is one round trip. Rows are taken in
/// the order given (a conflict in the same statement resolves as one at a time).
pub async fn insert_rows<R: serde::Serialize>(
    conn: &mut sqlx::AnyConnection,
    head: &str,
    cols: &[Col],
    tail: &str,
    rows: &[R],
) -> anyhow::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let postgres = conn_is_postgres(conn);
    let select: Vec<String> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| match c {
            Col::Text => format!("j.value ->> {i}"),
            Col::Int => format!("CAST(j.value ->> {i} AS BIGINT)"),
        })
        .collect();
    let (from, order) = if postgres {
        (
            "jsonb_array_elements(CAST($1 AS jsonb)) WITH ORDINALITY AS j(value, n)",
            "j.n",
        )
    } else {
        ("json_each($1) AS j", "j.key")
    };
    // `WHERE true` keeps SQLite from reading the upsert's ON as a join's. Without
    // a conflict clause no row can depend on another's order (a duplicate fails
    // the statement), so PostgreSQL is spared the sort.
    let order = if tail.is_empty() {
        String::new()
    } else {
        format!("ORDER BY {order}")
    };
    let sql = format!(
        "{head} SELECT {} FROM {from} WHERE true {order} {tail}",
        select.join(", ")
    );
    for chunk in rows.chunks(JSON_ROWS) {
        let json = serde_json::to_string(chunk)?;
        sqlx::query(&sql).bind(json).execute(&mut *conn).await?;
    }
    Ok(())
}

/// As [`insert_rows`], for rows the caller believes are not in the table yet (its
/// fold loaded their keys and found none, or they are new by construction): a plain
/// `INSERT` inside a savepoint, and only when one of them is there after all (a
/// unique violation) the statement is undone and run again with `fallback` (the
/// conflict clause [`insert_rows`] would have taken). On PostgreSQL a plain insert
/// skips the speculative insertion an `ON CONFLICT` clause makes for every row:
/// 970,000 message rows took 4.9 s so, 7.8 s with `ON CONFLICT DO NOTHING`.
/// Fewer than [`PLAIN_INSERT_MIN_ROWS`] rows (a live batch, mostly) go in with
/// `fallback` at once. Must run inside a transaction.
pub async fn insert_new_rows<R: serde::Serialize>(
    conn: &mut sqlx::AnyConnection,
    head: &str,
    cols: &[Col],
    fallback: &str,
    rows: &[R],
) -> anyhow::Result<()> {
    if rows.len() < PLAIN_INSERT_MIN_ROWS {
        return insert_rows(conn, head, cols, fallback, rows).await;
    }
    sqlx::query("SAVEPOINT new_rows")
        .execute(&mut *conn)
        .await?;
    match insert_rows(&mut *conn, head, cols, "", rows).await {
        Ok(()) => {
            sqlx::query("RELEASE SAVEPOINT new_rows")
                .execute(&mut *conn)
                .await?;
            Ok(())
        }
        Err(e) if is_unique_violation(&e) => {
            sqlx::query("ROLLBACK TO SAVEPOINT new_rows")
                .execute(&mut *conn)
                .await?;
            sqlx::query("RELEASE SAVEPOINT new_rows")
                .execute(&mut *conn)
                .await?;
            insert_rows(conn, head, cols, fallback, rows).await
        }
        Err(e) => Err(e),
    }
}

/// Below this many rows [`insert_new_rows`] takes the conflict clause at once: the
/// savepoint's two extra round trips would cost more than the clause does on a few
/// rows (a live batch), and a replay's batches hold thousands.
pub const PLAIN_INSERT_MIN_ROWS: usize = 64;

fn is_unique_violation(e: &anyhow::Error) -> bool {
    e.downcast_ref::<sqlx::Error>()
        .and_then(|e| e.as_database_error())
        .is_some_and(|d| d.is_unique_violation())
}

/// Rows of `table` whose key columns `key_columns` (its primary key, so a rebuild's
/// shadow needs no other index for it) equal one of `keys` (each serialised as a
/// JSON array of those strings), as `SELECT {columns} …`: one statement per
/// [`JSON_ROWS`] keys, bound as one JSON array.
pub async fn by_keys<K: serde::Serialize>(
    conn: &mut sqlx::AnyConnection,
    columns: &str,
    table: &str,
    key_columns: &[&str],
    keys: &[K],
) -> anyhow::Result<Vec<sqlx::any::AnyRow>> {
    if keys.is_empty() {
        return Ok(vec![]);
    }
    let from = if conn_is_postgres(conn) {
        "jsonb_array_elements(CAST($1 AS jsonb)) AS j(value)"
    } else {
        "json_each($1) AS j"
    };
    let values: Vec<String> = (0..key_columns.len())
        .map(|i| format!("j.value ->> {i}"))
        .collect();
    let sql = format!(
        "SELECT {columns} FROM {table} WHERE ({}) IN (SELECT {} FROM {from})",
        key_columns.join(", "),
        values.join(", ")
    );
    let mut out = vec![];
    for chunk in keys.chunks(JSON_ROWS) {
        out.extend(
            sqlx::query(&sql)
                .bind(serde_json::to_string(chunk)?)
                .fetch_all(&mut *conn)
                .await?,
        );
    }
    Ok(out)
}

/// [`by_keys`] on a message table's primary key `(workspace, phone_number_id, wamid)`.
pub async fn by_message_keys<K: serde::Serialize>(
    conn: &mut sqlx::AnyConnection,
    columns: &str,
    table: &str,
    keys: &[K],
) -> anyhow::Result<Vec<sqlx::any::AnyRow>> {
    by_keys(
        conn,
        columns,
        table,
        &["workspace", "phone_number_id", "wamid"],
        keys,
    )
    .await
}

fn conn_is_postgres(conn: &sqlx::AnyConnection) -> bool {
    conn.backend_name() == "PostgreSQL"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_number_row_by_row() {
        assert_eq!(placeholders(2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(placeholders(1, 1), "($1)");
        assert_eq!(rows_per_statement(10), 12);
    }
}
