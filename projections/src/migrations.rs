//! Schema migrations, portable between SQLite and PostgreSQL. Applied in order; each
//! version runs once (recorded in `schema_migrations`).

use anyhow::Context;

use crate::Store;

/// `(version, statements)`. Append only; never edit a landed version.
pub const MIGRATIONS: &[(i64, &[&str])] = &[
(
    1,
    &[
        "CREATE TABLE projection_checkpoints (name TEXT PRIMARY KEY, seq BIGINT NOT NULL)",
        "CREATE TABLE workspaces (slug TEXT PRIMARY KEY, name TEXT NOT NULL, created_at TEXT NOT NULL)",
        "CREATE TABLE api_keys (key_id TEXT PRIMARY KEY, workspace TEXT, name TEXT NOT NULL, role TEXT NOT NULL, secret_hash TEXT NOT NULL, created_at TEXT NOT NULL, expires_at TEXT, revoked_at TEXT, last_used_at TEXT, log_seq BIGINT NOT NULL)",
        "CREATE INDEX api_keys_workspace ON api_keys (workspace, key_id)",
        "CREATE TABLE phone_numbers (phone_number_id TEXT PRIMARY KEY, workspace TEXT NOT NULL, waba_id TEXT NOT NULL, display_phone_number TEXT NOT NULL, claimed_at TEXT NOT NULL)",
        "CREATE INDEX phone_numbers_waba ON phone_numbers (waba_id)",
        "CREATE TABLE audit_entries (workspace TEXT NOT NULL, seq BIGINT NOT NULL, at TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL, outcome TEXT NOT NULL, ip TEXT, prev_hash TEXT NOT NULL, hash TEXT NOT NULL, log_seq BIGINT NOT NULL, PRIMARY KEY (workspace, seq))",
        "CREATE TABLE audit_heads (workspace TEXT PRIMARY KEY, seq BIGINT NOT NULL, hash TEXT NOT NULL, cut_through BIGINT NOT NULL, cut_hash TEXT NOT NULL, cut_signature TEXT)",
        "CREATE TABLE dead_letters (id TEXT PRIMARY KEY, consumer TEXT NOT NULL, stream TEXT NOT NULL, seq BIGINT NOT NULL, event_type TEXT NOT NULL, reason TEXT NOT NULL, attempts BIGINT NOT NULL, status TEXT NOT NULL, recorded_at TEXT NOT NULL, updated_at TEXT NOT NULL)",
        "CREATE TABLE unrouted (dedup_key TEXT PRIMARY KEY, phone_number_id TEXT NOT NULL, waba_id TEXT NOT NULL, event_type TEXT NOT NULL, v BIGINT NOT NULL, data TEXT NOT NULL, occurred_at TEXT NOT NULL, recorded_at TEXT NOT NULL, assigned_to TEXT, log_seq BIGINT NOT NULL)",
        "CREATE INDEX unrouted_number ON unrouted (phone_number_id, log_seq)",
        "CREATE TABLE tokens (workspace TEXT NOT NULL, phone_number_id TEXT NOT NULL, key_version TEXT NOT NULL, nonce TEXT NOT NULL, ciphertext TEXT NOT NULL, fingerprint TEXT NOT NULL, status TEXT NOT NULL, stored_at TEXT NOT NULL, expires_at TEXT, log_seq BIGINT NOT NULL, PRIMARY KEY (workspace, phone_number_id))",
        "CREATE TABLE messages (workspace TEXT NOT NULL, wamid TEXT NOT NULL, direction TEXT NOT NULL, contact TEXT NOT NULL, message_type TEXT NOT NULL, status TEXT NOT NULL, occurred_at TEXT NOT NULL, updated_at TEXT NOT NULL, log_seq BIGINT NOT NULL, PRIMARY KEY (workspace, wamid))",
        "CREATE TABLE message_history (workspace TEXT NOT NULL, wamid TEXT NOT NULL, log_seq BIGINT NOT NULL, status TEXT NOT NULL, at TEXT NOT NULL, error_code BIGINT, PRIMARY KEY (workspace, wamid, log_seq))",
        "CREATE TABLE webhook_items (dedup_key TEXT PRIMARY KEY, raw_seq BIGINT NOT NULL)",
    ],
),
(
    2,
    &[
        // What a redrive applied, written in the transaction of the apply.
        "CREATE TABLE redrives_applied (consumer TEXT NOT NULL, stream TEXT NOT NULL, seq BIGINT NOT NULL, PRIMARY KEY (consumer, stream, seq))",
    ],
),
(
    3,
    &[
        // A WABA belongs to one workspace.
        "CREATE TABLE wabas (waba_id TEXT PRIMARY KEY, workspace TEXT NOT NULL)",
        "INSERT INTO wabas (waba_id, workspace) SELECT waba_id, MIN(workspace) FROM phone_numbers GROUP BY waba_id",
        // A wamid is unique per business number only: messages are keyed by number
        // too. Rebuilt from the log (the checkpoint goes back to the start).
        "DROP TABLE messages",
        "DROP TABLE message_history",
        "CREATE TABLE messages (workspace TEXT NOT NULL, phone_number_id TEXT NOT NULL, wamid TEXT NOT NULL, direction TEXT NOT NULL, contact TEXT NOT NULL, message_type TEXT NOT NULL, status TEXT NOT NULL, occurred_at TEXT NOT NULL, updated_at TEXT NOT NULL, log_seq BIGINT NOT NULL, PRIMARY KEY (workspace, phone_number_id, wamid))",
        "CREATE INDEX messages_wamid ON messages (workspace, wamid)",
        "CREATE TABLE message_history (workspace TEXT NOT NULL, phone_number_id TEXT NOT NULL, wamid TEXT NOT NULL, log_seq BIGINT NOT NULL, status TEXT NOT NULL, at TEXT NOT NULL, error_code BIGINT, PRIMARY KEY (workspace, phone_number_id, wamid, log_seq))",
        "DELETE FROM projection_checkpoints WHERE name = 'messages'",
    ],
),
(
    4,
    &[
        "CREATE TABLE consent_contacts (workspace TEXT NOT NULL, contact_id TEXT NOT NULL, opted_out BIGINT NOT NULL, marketing_opted_out BIGINT NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (workspace, contact_id))",
        "CREATE TABLE consent_aliases (workspace TEXT NOT NULL, ident TEXT NOT NULL, contact_id TEXT NOT NULL, PRIMARY KEY (workspace, ident))",
        "CREATE INDEX consent_aliases_contact ON consent_aliases (workspace, contact_id)",
        "CREATE TABLE consent_history (workspace TEXT NOT NULL, contact_id TEXT NOT NULL, log_seq BIGINT NOT NULL, at TEXT NOT NULL, scope TEXT NOT NULL, action TEXT NOT NULL, source_kind TEXT NOT NULL, keyword TEXT, language TEXT, message_id TEXT, webhook_seq BIGINT, reason TEXT, actor TEXT NOT NULL, PRIMARY KEY (workspace, log_seq))",
        "CREATE INDEX consent_history_contact ON consent_history (workspace, contact_id, log_seq)",
        "CREATE TABLE consent_suspected (workspace TEXT NOT NULL, id TEXT NOT NULL, contact_id TEXT NOT NULL, message_id TEXT NOT NULL, text TEXT NOT NULL, matched TEXT NOT NULL, status TEXT NOT NULL, at TEXT NOT NULL, log_seq BIGINT NOT NULL, PRIMARY KEY (workspace, id))",
        "CREATE TABLE consent_config (workspace TEXT PRIMARY KEY, keywords TEXT NOT NULL, suspected_automatic BIGINT NOT NULL, confirmations TEXT NOT NULL)",
    ],
),
(
    5,
    &[
        "CREATE TABLE sends (workspace TEXT NOT NULL, id TEXT NOT NULL, phone_number_id TEXT NOT NULL, recipient_to TEXT, recipient_user TEXT, message_type TEXT NOT NULL, category TEXT, status TEXT NOT NULL, phase TEXT NOT NULL, wamid TEXT, attempts BIGINT NOT NULL, reason TEXT, error_code BIGINT, error_title TEXT, retry_at TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL, requested_seq BIGINT NOT NULL, PRIMARY KEY (workspace, id))",
        "CREATE INDEX sends_order ON sends (workspace, requested_seq)",
        "CREATE INDEX sends_phase ON sends (phase)",
        "CREATE TABLE send_history (workspace TEXT NOT NULL, id TEXT NOT NULL, log_seq BIGINT NOT NULL, status TEXT NOT NULL, detail TEXT NOT NULL, at TEXT NOT NULL, error_code BIGINT, PRIMARY KEY (workspace, id, log_seq))",
        "CREATE TABLE send_wamids (workspace TEXT NOT NULL, phone_number_id TEXT NOT NULL, wamid TEXT NOT NULL, id TEXT NOT NULL, PRIMARY KEY (workspace, phone_number_id, wamid))",
        "CREATE TABLE last_inbound (workspace TEXT NOT NULL, ident TEXT NOT NULL, at TEXT NOT NULL, PRIMARY KEY (workspace, ident))",
        "CREATE TABLE template_categories (workspace TEXT NOT NULL, name TEXT NOT NULL, language TEXT NOT NULL, category TEXT NOT NULL, PRIMARY KEY (workspace, name, language))",
        "CREATE TABLE rate_limit_policies (workspace TEXT PRIMARY KEY, requests_per_second DOUBLE PRECISION NOT NULL, burst BIGINT NOT NULL, updated_at TEXT NOT NULL)",
        "CREATE TABLE rate_limit_usage (workspace TEXT NOT NULL, minute TEXT NOT NULL, admitted BIGINT NOT NULL, rejected BIGINT NOT NULL, requests_per_second DOUBLE PRECISION NOT NULL, burst BIGINT NOT NULL, PRIMARY KEY (workspace, minute))",
    ],
),
(
    6,
    &[
        // Embedded Signup sagas (the whole state as one JSON document) and the
        // partner events Meta sent about WABAs.
        "CREATE TABLE onboarding (workspace TEXT NOT NULL, id TEXT NOT NULL, waba_id TEXT NOT NULL, phone_number_id TEXT NOT NULL, state TEXT NOT NULL, started_seq BIGINT NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (workspace, id))",
        "CREATE INDEX onboarding_order ON onboarding (workspace, started_seq)",
        "CREATE INDEX onboarding_state ON onboarding (state)",
        "CREATE INDEX onboarding_waba ON onboarding (waba_id)",
        "CREATE TABLE onboarding_partner (waba_id TEXT NOT NULL, seq BIGINT NOT NULL, workspace TEXT NOT NULL, event TEXT NOT NULL, at TEXT NOT NULL, PRIMARY KEY (waba_id, seq))",
    ],
),
(
    7,
    &[
        // Outbound webhook endpoints and their deliveries (each state one JSON
        // document), and the media ids a workspace received.
        "CREATE TABLE endpoints (workspace TEXT NOT NULL, id TEXT NOT NULL, created_seq BIGINT NOT NULL, deleted BIGINT NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (workspace, id))",
        "CREATE TABLE deliveries (workspace TEXT NOT NULL, id TEXT NOT NULL, endpoint_id TEXT NOT NULL, event_seq BIGINT NOT NULL, status TEXT NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (workspace, id))",
        "CREATE INDEX deliveries_endpoint ON deliveries (workspace, endpoint_id, event_seq)",
        "CREATE TABLE inbound_media (workspace TEXT NOT NULL, media_id TEXT NOT NULL, phone_number_id TEXT NOT NULL, mime_type TEXT, log_seq BIGINT NOT NULL, PRIMARY KEY (workspace, media_id))",
    ],
)];

/// Applies pending migrations, each version in its own transaction.
pub async fn run(store: &Store) -> anyhow::Result<()> {
    sqlx::query("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY)")
        .execute(&store.pool)
        .await?;
    for (version, statements) in MIGRATIONS {
        let mut tx = store.pool.begin().await?;
        let done: Option<i64> =
            sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = $1")
                .bind(*version)
                .fetch_optional(&mut *tx)
                .await?;
        if done.is_some() {
            continue;
        }
        for stmt in *statements {
            sqlx::query(stmt)
                .execute(&mut *tx)
                .await
                .with_context(|| format!("migration {version}: {stmt}"))?;
        }
        sqlx::query("INSERT INTO schema_migrations (version) VALUES ($1)")
            .bind(*version)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    Ok(())
}
