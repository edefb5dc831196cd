//! Workspaces.

use serde::Serialize;
use sqlx::{AnyConnection, Row};
use wabridge_events::{DomainEvent, StoredEvent};

use super::EventMeta;
use crate::{Projection, Store};

/// The `workspaces` projection.
pub struct Workspaces;

/// One workspace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Workspace {
    /// Slug.
    pub slug: String,
    /// Name.
    pub name: String,
    /// Creation time.
    pub created_at: String,
}

/// A workspace after an event (the projection's decision, pure): `None` when the
/// event changes nothing. `current` is the stored workspace with the slug the event
/// names.
///
/// `workspace.created` adds the workspace, created at the log time; a slug already
/// stored keeps its name and time (the first creation wins).
pub fn next_workspace(
    current: Option<&Workspace>,
    event: &DomainEvent,
    meta: &EventMeta,
) -> Option<Workspace> {
    match (event, current) {
        (DomainEvent::WorkspaceCreated(w), None) => Some(Workspace {
            slug: w.slug.to_string(),
            name: w.name.clone(),
            created_at: meta.recorded_at.clone(),
        }),
        _ => None,
    }
}

#[async_trait::async_trait]
impl Projection for Workspaces {
    fn name(&self) -> &'static str {
        "workspaces"
    }
    fn tables(&self) -> &'static [&'static str] {
        &["workspaces"]
    }
    fn dump_sql(&self) -> &'static str {
        "SELECT slug || '|' || name || '|' || created_at FROM workspaces ORDER BY 1"
    }
    async fn apply(&self, conn: &mut AnyConnection, event: &StoredEvent) -> anyhow::Result<()> {
        if super::skip(event, |t| t == "workspace.created") {
            return Ok(());
        }
        let decoded = super::decode(event)?;
        let DomainEvent::WorkspaceCreated(w) = &decoded else {
            return Ok(());
        };
        let current = load(&mut *conn, w.slug.as_str()).await?;
        if let Some(next) = next_workspace(current.as_ref(), decoded, &EventMeta::of(event)) {
            put(conn, &next).await?;
        }
        Ok(())
    }
}

const COLUMNS: &str = "slug, name, created_at";

fn row(r: sqlx::any::AnyRow) -> Workspace {
    Workspace {
        slug: r.get(0),
        name: r.get(1),
        created_at: r.get(2),
    }
}

/// The stored workspace, in the projection's transaction.
async fn load(conn: &mut AnyConnection, slug: &str) -> anyhow::Result<Option<Workspace>> {
    let sql = format!("SELECT {COLUMNS} FROM workspaces WHERE slug = $1");
    Ok(sqlx::query(&sql)
        .bind(slug)
        .fetch_optional(conn)
        .await?
        .map(row))
}

/// Writes a workspace (inserted, or replacing the stored one).
async fn put(conn: &mut AnyConnection, w: &Workspace) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO workspaces (slug, name, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (slug) DO UPDATE SET name = excluded.name, created_at = excluded.created_at",
    )
    .bind(&w.slug)
    .bind(&w.name)
    .bind(&w.created_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Looks a workspace up.
pub async fn get(store: &Store, slug: &str) -> anyhow::Result<Option<Workspace>> {
    let mut conn = store.reads.acquire().await?;
    load(&mut conn, slug).await
}

/// Lists workspaces after a cursor (slug order).
pub async fn list(
    store: &Store,
    after: Option<&str>,
    limit: i64,
) -> anyhow::Result<Vec<Workspace>> {
    let sql = format!("SELECT {COLUMNS} FROM workspaces WHERE slug > $1 ORDER BY slug LIMIT $2");
    let rows = sqlx::query(&sql)
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(&store.reads)
        .await?;
    Ok(rows.into_iter().map(row).collect())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use wabridge_events::{
        types::{ApiKeyRevoked, EventData, WorkspaceCreated},
        Slug,
    };

    use super::*;
    use crate::views::spec::{at, fold_row, given, Model};

    /// The `workspaces` table by slug.
    #[derive(Clone, Debug, Default, PartialEq)]
    struct Table(BTreeMap<String, Workspace>);

    impl Model for Table {
        fn fold(&mut self, event: &DomainEvent, meta: &EventMeta) {
            if let DomainEvent::WorkspaceCreated(w) = event {
                fold_row(&mut self.0, w.slug.to_string(), |cur| {
                    next_workspace(cur, event, meta)
                });
            }
        }
    }

    fn created(slug: &str, name: &str) -> DomainEvent {
        WorkspaceCreated {
            slug: Slug::parse(slug).unwrap(),
            name: name.into(),
        }
        .into_event()
    }

    #[test]
    fn a_creation_adds_the_workspace_at_the_log_time() {
        given::<Table>(&[created("globex", "Globex")])
            .when(created("acme", "Acme"))
            .then_expect(Table(BTreeMap::from([
                (
                    "acme".to_string(),
                    Workspace {
                        slug: "acme".into(),
                        name: "Acme".into(),
                        created_at: at(2),
                    },
                ),
                (
                    "globex".to_string(),
                    Workspace {
                        slug: "globex".into(),
                        name: "Globex".into(),
                        created_at: at(1),
                    },
                ),
            ])))
            .then_replay_changes_nothing();
    }

    #[test]
    fn the_first_creation_wins() {
        given::<Table>(&[created("acme", "Acme")])
            .when(created("acme", "Acme Again"))
            .then_unchanged();
    }

    #[test]
    fn other_events_are_ignored() {
        given::<Table>(&[created("acme", "Acme")])
            .when(ApiKeyRevoked { key_id: "k".into() }.into_event())
            .then_unchanged();
    }
}
