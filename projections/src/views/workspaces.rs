//! Workspaces.

use serde::Serialize;
use sqlx::{AnyConnection, Row};
use wabridge_events::{DomainEvent, StoredEvent};

use crate::{Projection, Store};

/// The `workspaces` projection.
pub struct Workspaces;

/// One workspace.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Workspace {
    /// Slug.
    pub slug: String,
    /// Name.
    pub name: String,
    /// Creation time.
    pub created_at: String,
}

#[async_trait::async_trait]
impl Projection for Workspaces {
    fn name(&self) -> &'static str {
        "workspaces"
    }
    fn dump_sql(&self) -> &'static str {
        "SELECT slug || '|' || name || '|' || created_at FROM workspaces ORDER BY slug"
    }
    async fn apply(&self, conn: &mut AnyConnection, event: &StoredEvent) -> anyhow::Result<()> {
        if let DomainEvent::WorkspaceCreated(w) = super::decode(event)? {
            sqlx::query("INSERT INTO workspaces (slug, name, created_at) VALUES ($1, $2, $3) ON CONFLICT (slug) DO NOTHING")
                .bind(w.slug.as_str())
                .bind(&w.name)
                .bind(event.envelope.recorded_at.to_string())
                .execute(conn)
                .await?;
        }
        Ok(())
    }
}

/// Looks a workspace up.
pub async fn get(store: &Store, slug: &str) -> anyhow::Result<Option<Workspace>> {
    let row = sqlx::query("SELECT slug, name, created_at FROM workspaces WHERE slug = $1")
        .bind(slug)
        .fetch_optional(&store.reads)
        .await?;
    Ok(row.map(|r| Workspace {
        slug: r.get(0),
        name: r.get(1),
        created_at: r.get(2),
    }))
}

/// Lists workspaces after a cursor (slug order).
pub async fn list(
    store: &Store,
    after: Option<&str>,
    limit: i64,
) -> anyhow::Result<Vec<Workspace>> {
    let rows = sqlx::query(
        "SELECT slug, name, created_at FROM workspaces WHERE slug > $1 ORDER BY slug LIMIT $2",
    )
    .bind(after.unwrap_or(""))
    .bind(limit)
    .fetch_all(&store.reads)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Workspace {
            slug: r.get(0),
            name: r.get(1),
            created_at: r.get(2),
        })
        .collect())
}
