//! The consent projection's batch fold: opt-outs, opt-ins and the events that link
//! two identifiers of one person, folded in memory and written once per table.
//!
//! The aliases and contact states a run of such events touches are loaded with one
//! statement each; every event then decides as [`Consent::apply`] does (the same
//! `choose` and `next_state`), against what the run has made so far; at the end the
//! aliases, the contacts and the history rows are each written with one statement.
//! Anything else about consent (suspicions, keywords, settings, user-id changes, and
//! an event that merges two contacts) is rare: the run is written out, that event
//! is applied on its own, and a new run begins after it.

use std::collections::{BTreeMap, HashMap};

use sqlx::{AnyConnection, Row};
use wabridge_events::{types::ConsentSource, DomainEvent, StoredEvent};

use super::consent::{
    choose, history_labels, identifiers, next_state, relevant, Change, Consent, ConsentState,
};
use crate::{
    batch::{by_keys, insert_rows, Col},
    Projection,
};

/// A workspace and an identifier (or a contact id) in it.
type Key = (String, String);

/// An event the fold handles.
enum Item<'a> {
    /// An opt-out or opt-in of the contact these identifiers name.
    Change {
        event: &'a StoredEvent,
        ws: String,
        idents: Vec<String>,
        change: Change,
        source: &'a ConsentSource,
        reason: Option<&'a str>,
        at: String,
    },
    /// Two identifiers of one person, learned from a message or a preference.
    Link {
        event: &'a StoredEvent,
        ws: String,
        idents: Vec<String>,
    },
}

impl Item<'_> {
    fn ws_and_idents(&self) -> (&str, &[String]) {
        match self {
            Item::Change { ws, idents, .. } | Item::Link { ws, idents, .. } => (ws, idents),
        }
    }

    fn event(&self) -> &StoredEvent {
        match self {
            Item::Change { event, .. } | Item::Link { event, .. } => event,
        }
    }
}

/// What the fold does with an event: fold it, apply it alone, or nothing.
enum Step<'a> {
    Fold(Item<'a>),
    Alone,
    Nothing,
}

fn step(event: &StoredEvent) -> anyhow::Result<Step<'_>> {
    if super::skip(event, relevant) {
        return Ok(Step::Nothing);
    }
    let ws = super::ws_of(event);
    let change = |contact, change, source, reason, at: String| {
        let idents = identifiers(contact);
        if idents.is_empty() {
            return Step::Nothing;
        }
        Step::Fold(Item::Change {
            event,
            ws: ws.clone(),
            idents,
            change,
            source,
            reason,
            at,
        })
    };
    Ok(match super::decode(event)? {
        DomainEvent::ContactOptedOut(o) => change(
            &o.contact,
            Change::OptOut(o.scope),
            &o.source,
            o.reason.as_deref(),
            o.at.to_string(),
        ),
        DomainEvent::ContactOptedIn(o) => change(
            &o.contact,
            Change::OptIn(o.scope),
            &o.source,
            o.reason.as_deref(),
            o.at.to_string(),
        ),
        DomainEvent::MessageReceived(m) => link(event, ws, identifiers(&m.contact)),
        DomainEvent::ContactMarketingPreference(p) => link(event, ws, identifiers(&p.contact)),
        _ => Step::Alone,
    })
}

/// A message or a preference links identifiers only when it carries two.
fn link(event: &StoredEvent, ws: String, idents: Vec<String>) -> Step<'_> {
    if idents.len() > 1 {
        Step::Fold(Item::Link { event, ws, idents })
    } else {
        Step::Nothing
    }
}

/// Applies `events` (in log order) as one event at a time would, inside the
/// caller's transaction.
pub(super) async fn apply_batch(
    projection: &Consent,
    conn: &mut AnyConnection,
    events: &[StoredEvent],
) -> anyhow::Result<()> {
    let mut run: Vec<Item> = vec![];
    for event in events {
        match step(event)? {
            Step::Nothing => {}
            Step::Fold(item) => run.push(item),
            Step::Alone => {
                fold_run(projection, &mut *conn, std::mem::take(&mut run)).await?;
                alone(projection, &mut *conn, event).await?;
            }
        }
    }
    fold_run(projection, conn, run).await
}

/// One event applied on its own, as the default batch path would.
async fn alone(
    projection: &Consent,
    conn: &mut AnyConnection,
    event: &StoredEvent,
) -> anyhow::Result<()> {
    projection.apply(conn, event).await.map_err(|e| {
        e.context(format!(
            "consent: applying {} #{}",
            event.envelope.event_type, event.seq
        ))
    })
}

/// What a run has decided so far, and what it will write.
#[derive(Default)]
struct Fold {
    /// The contact each identifier names (`None`: none yet).
    aliases: HashMap<Key, Option<String>>,
    /// Each contact's state (absent: never written, so the default).
    states: HashMap<Key, ConsentState>,
    /// Aliases to write (workspace, identifier → contact).
    alias_rows: BTreeMap<Key, String>,
    /// Contacts to write (workspace, contact → state and when it changed).
    contact_rows: BTreeMap<Key, (ConsentState, String)>,
    /// History rows, in log order.
    history: Vec<serde_json::Value>,
}

/// Folds a run; an item that would merge two contacts ends it: what came before is
/// written, that item's event is applied alone, and the rest is a run of its own.
async fn fold_run(
    projection: &Consent,
    conn: &mut AnyConnection,
    mut run: Vec<Item<'_>>,
) -> anyhow::Result<()> {
    while !run.is_empty() {
        let mut fold = load(&mut *conn, &run).await?;
        let mut merge_at = None;
        for (i, item) in run.iter().enumerate() {
            if !fold.decide(item)? {
                merge_at = Some(i);
                break;
            }
        }
        fold.write(&mut *conn).await?;
        let Some(i) = merge_at else {
            return Ok(());
        };
        let rest = run.split_off(i + 1);
        alone(projection, &mut *conn, run[i].event()).await?;
        run = rest;
    }
    Ok(())
}

/// The aliases and states the run's identifiers name, loaded in two statements.
async fn load(conn: &mut AnyConnection, run: &[Item<'_>]) -> anyhow::Result<Fold> {
    let mut keys: Vec<[&str; 2]> = run
        .iter()
        .flat_map(|item| {
            let (ws, idents) = item.ws_and_idents();
            idents.iter().map(move |i| [ws, i.as_str()])
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let mut fold = Fold::default();
    for r in by_keys(
        &mut *conn,
        "workspace, ident, contact_id",
        "consent_aliases",
        &["workspace", "ident"],
        &keys,
    )
    .await?
    {
        fold.aliases.insert((r.get(0), r.get(1)), Some(r.get(2)));
    }
    // A contact is named by an alias, or (new) by its first identifier.
    let mut contacts: Vec<[&str; 2]> = keys.clone();
    for ((ws, _), id) in &fold.aliases {
        if let Some(id) = id {
            contacts.push([ws.as_str(), id.as_str()]);
        }
    }
    contacts.sort_unstable();
    contacts.dedup();
    let rows = by_keys(
        &mut *conn,
        "workspace, contact_id, opted_out, marketing_opted_out",
        "consent_contacts",
        &["workspace", "contact_id"],
        &contacts,
    )
    .await?;
    for r in rows {
        fold.states.insert(
            (r.get(0), r.get(1)),
            ConsentState {
                opted_out: r.get::<i64, _>(2) != 0,
                marketing_opted_out: r.get::<i64, _>(3) != 0,
            },
        );
    }
    Ok(fold)
}

impl Fold {
    /// Decides one item against the run so far; `false` (and nothing changed) when
    /// it would merge two contacts.
    fn decide(&mut self, item: &Item<'_>) -> anyhow::Result<bool> {
        let (ws, idents) = item.ws_and_idents();
        let found: Vec<Option<String>> = idents
            .iter()
            .map(|i| {
                self.aliases
                    .get(&(ws.to_string(), i.clone()))
                    .cloned()
                    .flatten()
            })
            .collect();
        let (id, merged) = choose(&found, idents);
        if !merged.is_empty() {
            return Ok(false);
        }
        for (ident, f) in idents.iter().zip(&found) {
            if f.as_deref() != Some(id.as_str()) {
                let key = (ws.to_string(), ident.clone());
                self.aliases.insert(key.clone(), Some(id.clone()));
                self.alias_rows.insert(key, id.clone());
            }
        }
        let Item::Change {
            event,
            change,
            source,
            reason,
            at,
            ..
        } = item
        else {
            return Ok(true);
        };
        let key = (ws.to_string(), id.clone());
        let state = next_state(self.states.get(&key).copied().unwrap_or_default(), *change);
        self.states.insert(key.clone(), state);
        self.contact_rows.insert(key, (state, at.clone()));
        let (action, scope, kind) = history_labels(*change, source)?;
        self.history.push(serde_json::json!([
            ws,
            id,
            event.seq as i64,
            at,
            scope.as_str(),
            action,
            kind,
            source.keyword,
            source.language,
            source.message_id,
            source.webhook_seq.map(|s| s as i64),
            reason,
            event.envelope.actor.render(),
        ]));
        Ok(true)
    }

    /// Writes what the run decided: one statement per table.
    async fn write(self, conn: &mut AnyConnection) -> anyhow::Result<()> {
        let aliases: Vec<[&str; 3]> = self
            .alias_rows
            .iter()
            .map(|((ws, ident), id)| [ws.as_str(), ident.as_str(), id.as_str()])
            .collect();
        insert_rows(
            &mut *conn,
            "INSERT INTO consent_aliases (workspace, ident, contact_id)",
            &[Col::Text, Col::Text, Col::Text],
            "ON CONFLICT (workspace, ident) DO UPDATE SET contact_id = excluded.contact_id",
            &aliases,
        )
        .await?;
        let contacts: Vec<serde_json::Value> = self
            .contact_rows
            .iter()
            .map(|((ws, id), (state, at))| {
                serde_json::json!([
                    ws,
                    id,
                    state.opted_out as i64,
                    state.marketing_opted_out as i64,
                    at
                ])
            })
            .collect();
        insert_rows(
            &mut *conn,
            "INSERT INTO consent_contacts (workspace, contact_id, opted_out, marketing_opted_out, updated_at)",
            &[Col::Text, Col::Text, Col::Int, Col::Int, Col::Text],
            "ON CONFLICT (workspace, contact_id) DO UPDATE SET opted_out = excluded.opted_out, marketing_opted_out = excluded.marketing_opted_out, updated_at = CASE WHEN excluded.updated_at = '' THEN consent_contacts.updated_at ELSE excluded.updated_at END",
            &contacts,
        )
        .await?;
        insert_rows(
            &mut *conn,
            "INSERT INTO consent_history (workspace, contact_id, log_seq, at, scope, action, source_kind, keyword, language, message_id, webhook_seq, reason, actor)",
            &[
                Col::Text,
                Col::Text,
                Col::Int,
                Col::Text,
                Col::Text,
                Col::Text,
                Col::Text,
                Col::Text,
                Col::Text,
                Col::Text,
                Col::Int,
                Col::Text,
                Col::Text,
            ],
            "ON CONFLICT DO NOTHING",
            &self.history,
        )
        .await
    }
}
