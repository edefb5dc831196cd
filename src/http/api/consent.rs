//! Consent routes: a contact's consent and history, the opt-out list and the
//! suspected opt-outs, manual opt-out and opt-in, keywords and settings.

use axum::{extract::State, Json as AxumJson};
use serde::{Deserialize, Serialize};
use wabridge_events::types::{ConsentConfirmation, ConsentKeyword, ConsentScope};
use wabridge_handlers::{
    commands::consent::{self as cmd, Resolution},
    consent::detect,
};
use wabridge_projections::views::consent::{
    self as view, ConsentConfig, ContactConsent, HistoryEntry, HistorySource, OptOutItem, Suspicion,
};

use crate::{
    app::App,
    http::{
        auth::Authed,
        error::AppError,
        extract::{Json, Page, PageParams, Path, Query},
    },
};

/// Path of a contact.
#[derive(Deserialize, schemars::JsonSchema)]
pub struct ContactPath {
    /// Workspace.
    pub ws: String,
    /// The contact: a phone number's digits (with or without `+`) or a
    /// business-scoped user id (`US.1349…`).
    pub wa_id: String,
}

/// Path of a suspected opt-out.
#[derive(Deserialize, schemars::JsonSchema)]
pub struct SuspicionPath {
    /// Workspace.
    pub ws: String,
    /// The suspicion's id (the message's wamid).
    pub id: String,
}

/// A contact's consent.
#[derive(Serialize, schemars::JsonSchema)]
pub struct ContactConsentBody {
    /// The contact as asked for.
    pub wa_id: String,
    /// Every identifier known for the contact (wa_id, user ids), linked by Meta's
    /// webhooks.
    pub identifiers: Vec<String>,
    /// Every send is blocked.
    pub opted_out: bool,
    /// Marketing templates are blocked (utility and authentication still go).
    pub marketing_opted_out: bool,
    /// Since when `opted_out` holds.
    pub opted_out_since: Option<String>,
    /// What began the opt-out in effect (`opted_out`, else `marketing_opted_out`).
    pub source: Option<HistorySource>,
    /// Since when `marketing_opted_out` holds.
    pub marketing_opted_out_since: Option<String>,
    /// Every change, oldest first, each with the log sequence of its event.
    pub history: Vec<HistoryEntry>,
}

fn answer(asked: &str, c: ContactConsent, identifiers: Vec<String>) -> ContactConsentBody {
    let (all, marketing) = view::in_effect(&c.history);
    let source = all.or(marketing).map(|h| h.source.clone());
    ContactConsentBody {
        wa_id: asked.strip_prefix('+').unwrap_or(asked).to_owned(),
        identifiers,
        opted_out: c.state.opted_out,
        marketing_opted_out: c.state.marketing_opted_out,
        opted_out_since: all.map(|h| h.at.clone()),
        marketing_opted_out_since: marketing.map(|h| h.at.clone()),
        source,
        history: c.history,
    }
}

async fn identifiers(app: &App, ws: &str, c: &ContactConsent) -> Result<Vec<String>, AppError> {
    Ok(match &c.contact_id {
        Some(id) => view::identifiers_of(&app.ctx.store, ws, id).await?,
        None => vec![],
    })
}

/// Reads a contact's consent as of the log's head (unknown contacts are not opted
/// out and have an empty history).
pub async fn get(
    State(app): State<App>,
    auth: Authed,
    Path(p): Path<ContactPath>,
) -> Result<AxumJson<ContactConsentBody>, AppError> {
    let c = cmd::get(&app.ctx, auth.ws(), &p.wa_id).await?;
    let ids = identifiers(&app, auth.ws().as_str(), &c).await?;
    Ok(AxumJson(answer(&p.wa_id, c, ids)))
}

/// `POST …/opt-out` and `…/opt-in` body.
#[derive(Deserialize, schemars::JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ManualChange {
    /// `all` (default) or `marketing`.
    #[serde(default)]
    pub scope: Option<ConsentScope>,
    /// Why (kept in the history and the audit log; at most 500 characters).
    #[serde(default)]
    pub reason: Option<String>,
}

async fn manual(
    app: &App,
    auth: &Authed,
    p: &ContactPath,
    body: ManualChange,
    change: cmd::Manual,
) -> Result<AxumJson<ContactConsentBody>, AppError> {
    let scope = body.scope.unwrap_or(ConsentScope::All);
    let c = cmd::change(
        &app.ctx,
        &auth.caller,
        auth.ws(),
        &p.wa_id,
        change,
        scope,
        body.reason.as_deref(),
    )
    .await?;
    let ids = identifiers(app, auth.ws().as_str(), &c).await?;
    Ok(AxumJson(answer(&p.wa_id, c, ids)))
}

/// Opts a contact out on a person's word (audited).
pub async fn opt_out(
    State(app): State<App>,
    auth: Authed,
    Path(p): Path<ContactPath>,
    Json(body): Json<ManualChange>,
) -> Result<AxumJson<ContactConsentBody>, AppError> {
    manual(&app, &auth, &p, body, cmd::Manual::OptOut).await
}

/// Opts a contact back in (audited).
pub async fn opt_in(
    State(app): State<App>,
    auth: Authed,
    Path(p): Path<ContactPath>,
    Json(body): Json<ManualChange>,
) -> Result<AxumJson<ContactConsentBody>, AppError> {
    manual(&app, &auth, &p, body, cmd::Manual::OptIn).await
}

/// Which list `GET …/opt-outs` gives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OptOutStatus {
    /// Contacts opted out now (default).
    #[default]
    OptedOut,
    /// Messages that look like an opt-out, waiting for a person.
    Suspected,
    /// Suspicions a person confirmed.
    Confirmed,
    /// Suspicions a person dismissed.
    Dismissed,
}

/// `GET …/opt-outs` parameters.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListOptOuts {
    /// Only opt-outs of this scope (`status=opted_out`).
    pub scope: Option<ConsentScope>,
    /// Which list.
    pub status: Option<OptOutStatus>,
    /// Cursor.
    pub cursor: Option<String>,
    /// Page size (default 50, at most 500).
    pub limit: Option<i64>,
}

/// An entry of `GET …/opt-outs`: an opted-out contact, or a suspicion.
#[derive(Serialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum OptOutEntry {
    /// An opted-out contact.
    Contact(OptOutItem),
    /// A suspected opt-out.
    Suspicion(Suspicion),
}

/// Lists opted-out contacts, or suspected opt-outs (`status=suspected`).
pub async fn list(
    State(app): State<App>,
    auth: Authed,
    Query(q): Query<ListOptOuts>,
) -> Result<AxumJson<Page<OptOutEntry>>, AppError> {
    let limit = PageParams {
        cursor: None,
        limit: q.limit,
    }
    .limit()?;
    let status = q.status.unwrap_or_default();
    if q.scope.is_some() && status != OptOutStatus::OptedOut {
        return Err(AppError::validation(
            "scope filters opted-out contacts; it does not apply to suspicions",
        ));
    }
    wabridge_handlers::commands::workspaces::require(&app.ctx, auth.ws()).await?;
    cmd::fresh_consent(&app.ctx, auth.ws()).await?;
    let ws = auth.ws().as_str();
    let store = &app.ctx.store;
    let cursor = q.cursor.as_deref();
    let (items, next): (Vec<OptOutEntry>, Option<String>) = match status {
        OptOutStatus::OptedOut => {
            let items = view::opted_out(store, ws, q.scope, cursor, limit).await?;
            let page = Page::new(items, limit, |i| i.contact_id.clone());
            (
                page.items.into_iter().map(OptOutEntry::Contact).collect(),
                page.next_cursor,
            )
        }
        other => {
            let status = match other {
                OptOutStatus::Suspected => "open",
                OptOutStatus::Confirmed => "confirmed",
                _ => "dismissed",
            };
            let items = view::suspicions(store, ws, status, cursor, limit).await?;
            let page = Page::new(items, limit, |i| i.id.clone());
            (
                page.items.into_iter().map(OptOutEntry::Suspicion).collect(),
                page.next_cursor,
            )
        }
    };
    Ok(AxumJson(Page {
        items,
        next_cursor: next,
    }))
}

/// `POST …/confirm` and `…/dismiss` body.
#[derive(Deserialize, schemars::JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct Resolve {
    /// Why (kept in the audit log; at most 500 characters).
    #[serde(default)]
    pub reason: Option<String>,
}

async fn resolve(
    app: &App,
    auth: &Authed,
    p: &SuspicionPath,
    body: Resolve,
    resolution: Resolution,
) -> Result<AxumJson<Suspicion>, AppError> {
    let s = cmd::resolve(
        &app.ctx,
        &auth.caller,
        auth.ws(),
        &p.id,
        resolution,
        body.reason.as_deref(),
    )
    .await?;
    Ok(AxumJson(s))
}

/// Confirms a suspected opt-out: the contact is opted out of everything (audited).
pub async fn confirm(
    State(app): State<App>,
    auth: Authed,
    Path(p): Path<SuspicionPath>,
    Json(body): Json<Resolve>,
) -> Result<AxumJson<Suspicion>, AppError> {
    resolve(&app, &auth, &p, body, Resolution::Confirm).await
}

/// Dismisses a suspected opt-out (audited).
pub async fn dismiss(
    State(app): State<App>,
    auth: Authed,
    Path(p): Path<SuspicionPath>,
    Json(body): Json<Resolve>,
) -> Result<AxumJson<Suspicion>, AppError> {
    resolve(&app, &auth, &p, body, Resolution::Dismiss).await
}

/// A marketing-opt-out button label.
#[derive(Serialize, schemars::JsonSchema)]
pub struct ButtonLabel {
    /// The label as Meta shows it.
    pub label: String,
    /// Its language.
    pub language: String,
}

/// The workspace's keywords.
#[derive(Serialize, schemars::JsonSchema)]
pub struct Keywords {
    /// The workspace's own keywords (what `PUT` sets).
    pub keywords: Vec<ConsentKeyword>,
    /// The built-in keywords every workspace has.
    pub builtin: Vec<ConsentKeyword>,
    /// The built-in "Stop promotions" button labels (marketing opt-outs).
    pub marketing_buttons: Vec<ButtonLabel>,
}

fn keywords_of(c: ConsentConfig) -> Keywords {
    Keywords {
        keywords: c.keywords,
        builtin: detect::builtin(),
        marketing_buttons: detect::marketing_buttons()
            .into_iter()
            .map(|(label, language)| ButtonLabel {
                label: label.into(),
                language: language.into(),
            })
            .collect(),
    }
}

/// Reads the workspace's keywords and the built-in ones.
pub async fn get_keywords(
    State(app): State<App>,
    auth: Authed,
) -> Result<AxumJson<Keywords>, AppError> {
    Ok(AxumJson(keywords_of(
        cmd::config(&app.ctx, auth.ws()).await?,
    )))
}

/// `PUT …/consent/keywords` body.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PutKeywords {
    /// The workspace's own keywords, replacing the previous list (at most 500).
    pub keywords: Vec<ConsentKeyword>,
}

/// Replaces the workspace's own keywords (validated, audited).
pub async fn put_keywords(
    State(app): State<App>,
    auth: Authed,
    Json(body): Json<PutKeywords>,
) -> Result<AxumJson<Keywords>, AppError> {
    Ok(AxumJson(keywords_of(
        cmd::set_keywords(&app.ctx, &auth.caller, auth.ws(), body.keywords).await?,
    )))
}

/// The workspace's consent settings.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Messages that look like an opt-out ("please stop sending me these") opt the
    /// contact out at once instead of waiting for a person (default false).
    #[serde(default)]
    pub suspected_automatic: bool,
    /// A reply after an opt-out, per language (none by default: no reply).
    #[serde(default)]
    pub confirmations: Vec<ConsentConfirmation>,
}

fn settings_of(c: ConsentConfig) -> Settings {
    Settings {
        suspected_automatic: c.suspected_automatic,
        confirmations: serde_json::from_value(c.confirmations).unwrap_or_default(),
    }
}

/// Reads the workspace's consent settings.
pub async fn get_settings(
    State(app): State<App>,
    auth: Authed,
) -> Result<AxumJson<Settings>, AppError> {
    Ok(AxumJson(settings_of(
        cmd::config(&app.ctx, auth.ws()).await?,
    )))
}

/// Sets the workspace's consent settings (audited).
pub async fn put_settings(
    State(app): State<App>,
    auth: Authed,
    Json(body): Json<Settings>,
) -> Result<AxumJson<Settings>, AppError> {
    Ok(AxumJson(settings_of(
        cmd::set_settings(
            &app.ctx,
            &auth.caller,
            auth.ws(),
            body.suspected_automatic,
            body.confirmations,
        )
        .await?,
    )))
}
