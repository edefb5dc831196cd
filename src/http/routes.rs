//! The route table: every route with its access rule, summary, the answers it can
//! give beyond those its access rule implies, and its handler. The router, the
//! OpenAPI document (request and success schemas derived by aide from the handler's
//! types) and the permission test are all built from it, so a route cannot exist
//! without documentation or without an access rule.

use aide::axum::routing::{delete, get, patch, post, put, ApiMethodRouter};
use axum::http::Method;
use wabridge_handlers::access::Permission;

use super::api::{
    admin, audit, consent, endpoints, events, keys, media, messages, meta, numbers, onboarding,
    ops, tokens, workspaces,
};
pub use super::auth::Access;
use crate::app::App;

/// An answer a route can give beyond the ones implied by its access rule (400 for
/// malformed input; 401/403/404 and the fail-closed 503 for keyed routes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// `409 conflict`: the state does not allow it, or it changed concurrently.
    Conflict,
    /// `413 payload_too_large`: over `WABRIDGE_MAX_BODY`.
    TooLarge,
    /// `503 log_unavailable`: the event log could not take the event.
    LogUnavailable,
    /// `503 not_configured`: a secret the route needs is not set.
    NotConfigured,
    /// `422`: a rule refuses it (`contact_opted_out`, `outside_service_window`, ...).
    Unprocessable,
    /// `429 rate_limited`, with `Retry-After`, `RateLimit` and `RateLimit-Policy`.
    RateLimited,
    /// `502 meta_unavailable`: Meta refused or failed a call the route makes.
    Upstream,
    /// `403 forbidden`: Meta's verification handshake with a wrong token or mode.
    VerifyRefused,
}

/// One route.
pub struct RouteDef {
    /// HTTP method.
    pub method: Method,
    /// Path template (`{name}` parameters).
    pub path: &'static str,
    /// Access rule.
    pub access: Access,
    /// One-line summary.
    pub summary: &'static str,
    /// Further answers it can give.
    pub answers: &'static [Answer],
    /// The handler (aide's method router: it documents the handler's types).
    pub handler: ApiMethodRouter<App>,
}

fn r(
    method: Method,
    path: &'static str,
    access: Access,
    summary: &'static str,
    answers: &'static [Answer],
    handler: ApiMethodRouter<App>,
) -> RouteDef {
    RouteDef {
        method,
        path,
        access,
        summary,
        answers,
        handler,
    }
}

/// Every route of the service (`/openapi.json` is mounted by the router itself).
pub fn routes() -> Vec<RouteDef> {
    use Access::*;
    use Answer::*;
    use Permission as P;
    vec![
        r(
            Method::GET,
            "/healthz",
            Public,
            "Process is up.",
            &[],
            get(ops::healthz),
        ),
        r(
            Method::GET,
            "/readyz",
            Public,
            "Log and store reachable, projections caught up (503 otherwise).",
            &[],
            get(ops::readyz),
        ),
        r(
            Method::GET,
            "/metrics",
            Public,
            "Prometheus metrics.",
            &[],
            get(ops::metrics),
        ),
        r(
            Method::GET,
            "/v1/permissions",
            Public,
            "The role × permission matrix.",
            &[],
            get(ops::permissions),
        ),
        r(
            Method::GET,
            "/webhooks/meta",
            Meta,
            "Meta's verification handshake.",
            &[NotConfigured, VerifyRefused],
            get(meta::verify),
        ),
        r(
            Method::POST,
            "/webhooks/meta",
            Meta,
            "A signed Meta webhook; 200 once durable.",
            &[TooLarge, LogUnavailable, NotConfigured],
            post(meta::receive),
        ),
        r(
            Method::POST,
            "/v1/workspaces",
            Operator,
            "Create a workspace.",
            &[Conflict, TooLarge],
            post(workspaces::create),
        ),
        r(
            Method::GET,
            "/v1/workspaces",
            Operator,
            "List workspaces.",
            &[],
            get(workspaces::list),
        ),
        r(
            Method::GET,
            "/v1/workspaces/{ws}",
            Workspace(P::WorkspaceRead),
            "Read a workspace.",
            &[],
            get(workspaces::get),
        ),
        r(
            Method::POST,
            "/v1/workspaces/{ws}/api-keys",
            Workspace(P::KeysManage),
            "Create an API key (shown once).",
            &[Conflict, TooLarge],
            post(keys::create),
        ),
        r(
            Method::GET,
            "/v1/workspaces/{ws}/api-keys",
            Workspace(P::KeysRead),
            "List API keys.",
            &[],
            get(keys::list),
        ),
        r(
            Method::DELETE,
            "/v1/workspaces/{ws}/api-keys/{id}",
            Workspace(P::KeysManage),
            "Revoke an API key (204 once the revocation is visible).",
            &[Conflict],
            delete(keys::revoke),
        ),
        r(
            Method::POST,
            "/v1/workspaces/{ws}/messages",
            Workspace(P::MessagesSend),
            "Send a message (202 once durable); Idempotency-Key makes retries safe.",
            &[Conflict, TooLarge, Unprocessable, RateLimited],
            post(messages::send),
        ),
        r(
            Method::GET,
            "/v1/workspaces/{ws}/messages",
            Workspace(P::MessagesRead),
            "List messages, newest first.",
            &[],
            get(messages::list),
        ),
        r(
            Method::GET,
            "/v1/workspaces/{ws}/messages/{id}",
            Workspace(P::MessagesRead),
            "A message's state, error and history.",
            &[],
            get(messages::get),
        ),
        r(
            Method::GET,
            "/v1/workspaces/{ws}/rate-limit",
            Workspace(P::RateLimitsRead),
            "The workspace's send rate limit and the ledger's recent minutes.",
            &[],
            get(messages::get_rate_limit),
        ),
        r(
            Method::PUT,
            "/v1/workspaces/{ws}/rate-limit",
            Workspace(P::RateLimitsManage),
            "Set the workspace's send rate limit (audited).",
            &[TooLarge],
            put(messages::put_rate_limit),
        ),
        r(
            Method::GET,
            "/v1/workspaces/{ws}/contacts/{wa_id}/consent",
            Workspace(P::ConsentRead),
            "A contact's consent and its full history, as of the log's head.",
            &[],
            get(consent::get),
        ),
        r(
            Method::POST,
            "/v1/workspaces/{ws}/contacts/{wa_id}/opt-out",
            Workspace(P::ConsentManage),
            "Opt a contact out manually (audited).",
            &[TooLarge],
            post(consent::opt_out),
        ),
        r(
            Method::POST,
            "/v1/workspaces/{ws}/contacts/{wa_id}/opt-in",
            Workspace(P::ConsentManage),
            "Opt a contact back in manually (audited).",
            &[TooLarge],
            post(consent::opt_in),
        ),
        r(
            Method::GET,
            "/v1/workspaces/{ws}/opt-outs",
            Workspace(P::ConsentRead),
            "Opted-out contacts, or suspected opt-outs (status=suspected).",
            &[],
            get(consent::list),
        ),
        r(
            Method::POST,
            "/v1/workspaces/{ws}/opt-outs/suspected/{id}/confirm",
            Workspace(P::ConsentManage),
            "Confirm a suspected opt-out: the contact is opted out (audited).",
            &[Conflict, TooLarge],
            post(consent::confirm),
        ),
        r(
            Method::POST,
            "/v1/workspaces/{ws}/opt-outs/suspected/{id}/dismiss",
            Workspace(P::ConsentManage),
            "Dismiss a suspected opt-out (audited).",
            &[Conflict, TooLarge],
            post(consent::dismiss),
        ),
        r(
            Method::GET,
            "/v1/workspaces/{ws}/consent/keywords",
            Workspace(P::KeywordsRead),
            "The workspace's own consent keywords and the built-in ones.",
            &[],
            get(consent::get_keywords),
        ),
        r(
            Method::PUT,
            "/v1/workspaces/{ws}/consent/keywords",
            Workspace(P::KeywordsManage),
            "Replace the workspace's own consent keywords (validated, audited).",
            &[TooLarge],
            put(consent::put_keywords),
        ),
        r(
            Method::GET,
            "/v1/workspaces/{ws}/consent/settings",
            Workspace(P::KeywordsRead),
            "The workspace's consent settings.",
            &[],
            get(consent::get_settings),
        ),
        r(
            Method::PUT,
            "/v1/workspaces/{ws}/consent/settings",
            Workspace(P::KeywordsManage),
            "Set the workspace's consent settings (audited).",
            &[TooLarge],
            put(consent::put_settings),
        ),
        r(
            Method::PUT,
            "/v1/workspaces/{ws}/phone-numbers/{phone_number_id}",
            Workspace(P::PhoneNumbersManage),
            "Claim a phone number.",
            &[Conflict, TooLarge],
            put(numbers::claim),
        ),
        r(
            Method::GET,
            "/v1/workspaces/{ws}/phone-numbers",
            Workspace(P::PhoneNumbersRead),
            "List phone numbers.",
            &[],
            get(numbers::list),
        ),
        r(
            Method::DELETE,
            "/v1/workspaces/{ws}/phone-numbers/{phone_number_id}",
            Workspace(P::PhoneNumbersManage),
            "Release a phone number.",
            &[Conflict],
            delete(numbers::release),
        ),
        r(
            Method::POST,
            "/v1/workspaces/{ws}/onboarding",
            Workspace(P::OnboardingRun),
            "Start Embedded Signup onboarding with the code, WABA, number and PIN from Meta's flow (202 at once; the same code gives the same id).",
            &[Conflict, TooLarge, NotConfigured],
            post(onboarding::start),
        ),
        r(
            Method::GET,
            "/v1/workspaces/{ws}/onboarding",
            Workspace(P::OnboardingRead),
            "List onboardings, newest first.",
            &[],
            get(onboarding::list),
        ),
        r(
            Method::GET,
            "/v1/workspaces/{ws}/onboarding/{id}",
            Workspace(P::OnboardingRead),
            "An onboarding's state, steps (with times and Meta's errors), webhooks_subscribed, partner events and token status.",
            &[],
            get(onboarding::get),
        ),
        r(
            Method::GET,
            "/v1/workspaces/{ws}/events",
            Workspace(P::EventsRead),
            "The workspace's events after a cursor, in log order (`wait` long-polls up to 30 s); `next_cursor` is always given.",
            &[LogUnavailable],
            get(events::list),
        ),
        r(
            Method::POST,
            "/v1/workspaces/{ws}/endpoints",
            Workspace(P::WebhooksManage),
            "Add an outbound webhook endpoint (201 with its signing secret, shown once).",
            &[Conflict, TooLarge, NotConfigured],
            post(endpoints::create),
        ),
        r(
            Method::GET,
            "/v1/workspaces/{ws}/endpoints",
            Workspace(P::WebhooksRead),
            "List outbound webhook endpoints.",
            &[],
            get(endpoints::list),
        ),
        r(
            Method::GET,
            "/v1/workspaces/{ws}/endpoints/{id}",
            Workspace(P::WebhooksRead),
            "An outbound webhook endpoint (status, why disabled, failing since).",
            &[],
            get(endpoints::get),
        ),
        r(
            Method::PATCH,
            "/v1/workspaces/{ws}/endpoints/{id}",
            Workspace(P::WebhooksManage),
            "Change an endpoint's url, types or description; pause it (`enabled: false`) or resume it.",
            &[TooLarge],
            patch(endpoints::patch),
        ),
        r(
            Method::DELETE,
            "/v1/workspaces/{ws}/endpoints/{id}",
            Workspace(P::WebhooksManage),
            "Delete an endpoint.",
            &[],
            delete(endpoints::delete),
        ),
        r(
            Method::POST,
            "/v1/workspaces/{ws}/endpoints/{id}/rotate-secret",
            Workspace(P::WebhooksManage),
            "Replace the signing secret (shown once); the previous one signs too for 24 h.",
            &[NotConfigured],
            post(endpoints::rotate_secret),
        ),
        r(
            Method::GET,
            "/v1/workspaces/{ws}/endpoints/{id}/deliveries",
            Workspace(P::DeliveriesRead),
            "An endpoint's deliveries with their attempts, newest first (`status` filters).",
            &[],
            get(endpoints::deliveries),
        ),
        r(
            Method::POST,
            "/v1/workspaces/{ws}/endpoints/{id}/deliveries/{delivery_id}/redeliver",
            Workspace(P::DeliveriesRedrive),
            "Send one delivery again (202; the same webhook-id).",
            &[],
            post(endpoints::redeliver),
        ),
        r(
            Method::POST,
            "/v1/workspaces/{ws}/endpoints/{id}/recover",
            Workspace(P::DeliveriesRedrive),
            "Deliver every matching event since a time again, in order (202).",
            &[TooLarge],
            post(endpoints::recover),
        ),
        r(
            Method::GET,
            "/v1/workspaces/{ws}/media/{media_id}",
            Workspace(P::MessagesRead),
            "Stream an inbound media object from Meta (404 for a media id this workspace has not received).",
            &[NotConfigured, Upstream],
            get(media::get),
        ),
        r(
            Method::PUT,
            "/v1/workspaces/{ws}/phone-numbers/{phone_number_id}/token",
            Workspace(P::TokensWrite),
            "Store a Meta access token (encrypted).",
            &[Conflict, TooLarge, NotConfigured],
            put(tokens::put),
        ),
        r(
            Method::GET,
            "/v1/workspaces/{ws}/phone-numbers/{phone_number_id}/token",
            Workspace(P::TokensReadMetadata),
            "Read token metadata.",
            &[],
            get(tokens::get),
        ),
        r(
            Method::DELETE,
            "/v1/workspaces/{ws}/phone-numbers/{phone_number_id}/token",
            Workspace(P::TokensRevoke),
            "Revoke a token.",
            &[Conflict],
            delete(tokens::revoke),
        ),
        r(
            Method::GET,
            "/v1/workspaces/{ws}/tokens",
            Workspace(P::TokensReadMetadata),
            "List tokens, e.g. expiring soon.",
            &[],
            get(tokens::list),
        ),
        r(
            Method::GET,
            "/v1/workspaces/{ws}/audit",
            Workspace(P::AuditRead),
            "Audit entries, newest first.",
            &[],
            get(audit::list),
        ),
        r(
            Method::GET,
            "/v1/workspaces/{ws}/audit/verify",
            Workspace(P::AuditVerify),
            "Verify the audit chain (keyed hashes, and against the log).",
            &[],
            get(audit::verify),
        ),
        r(
            Method::GET,
            "/v1/workspaces/{ws}/audit/export",
            Workspace(P::AuditExport),
            "Export audit entries as JSON lines.",
            &[],
            get(audit::export),
        ),
        r(
            Method::GET,
            "/v1/admin/api-keys",
            Operator,
            "List operator keys.",
            &[],
            get(keys::list_operators),
        ),
        r(
            Method::DELETE,
            "/v1/admin/api-keys/{id}",
            Operator,
            "Revoke any key (operator or workspace) by id.",
            &[Conflict],
            delete(keys::revoke_any),
        ),
        r(
            Method::GET,
            "/v1/admin/unrouted",
            Operator,
            "Numbers with webhooks nobody held.",
            &[],
            get(admin::unrouted),
        ),
        r(
            Method::POST,
            "/v1/admin/unrouted/{phone_number_id}/assign",
            Operator,
            "Attach a number's unrouted webhooks to a workspace.",
            &[TooLarge],
            post(admin::assign),
        ),
        r(
            Method::PUT,
            "/v1/admin/wabas/{waba_id}",
            Operator,
            "Place a WABA in a workspace (its account-level webhooks, and claims of its numbers).",
            &[TooLarge],
            put(admin::assign_waba),
        ),
        r(
            Method::GET,
            "/v1/admin/projections",
            Operator,
            "Each read model's checkpoint, the log head, lag in events and seconds, the workers lease holder, and rebuilds.",
            &[],
            get(admin::projections),
        ),
        r(
            Method::POST,
            "/v1/admin/projections/{name}/rebuild",
            Operator,
            "Rebuild a read model (or all) from the log beside the live one and swap it in atomically, or compare only (dry_run); for webhook_processor with since or from_seq, process the stored webhooks since then again (202; progress and outcome in GET /v1/admin/projections).",
            &[Conflict, TooLarge],
            post(admin::rebuild),
        ),
        r(
            Method::GET,
            "/v1/admin/dead-letters",
            Operator,
            "List dead letters.",
            &[],
            get(admin::dead_letters),
        ),
        r(
            Method::GET,
            "/v1/admin/dead-letters/{id}",
            Operator,
            "Show a dead letter.",
            &[],
            get(admin::dead_letter),
        ),
        r(
            Method::POST,
            "/v1/admin/dead-letters/{id}/redrive",
            Operator,
            "Process a dead letter again.",
            &[Conflict],
            post(admin::redrive),
        ),
        r(
            Method::POST,
            "/v1/admin/dead-letters/{id}/discard",
            Operator,
            "Give up on a dead letter.",
            &[Conflict, TooLarge],
            post(admin::discard),
        ),
    ]
}
