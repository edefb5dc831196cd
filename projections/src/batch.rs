//! Multi-row statements for projections that fold a batch in memory and write each
//! table once: the placeholders of `rows` rows of `cols` values, and the values.

use sqlx::{any::AnyArguments, query::Query, Any};

/// A value of a multi-row statement.
#[derive(Clone, Debug)]
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

/// Rows of `table` whose `workspace` and `wamid` are among the given ones (the
/// index on both), as `SELECT {columns} …`, in statements of at most [`MAX_BINDS`]
/// values; the caller keeps the exact keys it wants.
pub async fn by_workspace_and_wamid(
    conn: &mut sqlx::AnyConnection,
    columns: &str,
    table: &str,
    workspaces: &[&String],
    wamids: &[&String],
) -> anyhow::Result<Vec<sqlx::any::AnyRow>> {
    let mut out = vec![];
    let per = rows_per_statement(1)
        .saturating_sub(workspaces.len())
        .max(1);
    for chunk in wamids.chunks(per) {
        let ws_list: Vec<String> = (1..=workspaces.len()).map(|i| format!("${i}")).collect();
        let wamid_list: Vec<String> = (1..=chunk.len())
            .map(|i| format!("${}", workspaces.len() + i))
            .collect();
        let sql = format!(
            "SELECT {columns} FROM {table} WHERE workspace IN ({}) AND wamid IN ({})",
            ws_list.join(", "),
            wamid_list.join(", ")
        );
        let values = workspaces
            .iter()
            .map(|w| Value::Text((*w).clone()))
            .chain(chunk.iter().map(|m| Value::Text((*m).clone())));
        out.extend(
            bind_all(sqlx::query(&sql), values)
                .fetch_all(&mut *conn)
                .await?,
        );
    }
    Ok(out)
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
