//! The route table: every route with its access rule, documentation and handler.
//! The router and the OpenAPI document are both built from it, so a route cannot
//! exist without documentation or without an access rule.

use axum::{
    http::Method,
    routing::{delete, get, post, put, MethodRouter},
};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use wabridge_handlers::access::Permission;

use super::api::{admin, audit, keys, meta, numbers, ops, tokens, workspaces};
use crate::app::App;

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone.
    Public,
    /// Meta (authenticated by signature or verify token, not by key).
    Meta,
    /// Operator keys only.
    Operator,
    /// Keys of the route's workspace holding the permission (and operator keys).
    Workspace(Permission),
}

/// A schema producer for the OpenAPI document.
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// Schema of `T` (registered in the components).
pub fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
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
    /// Request body schema.
    pub request: Option<SchemaFn>,
    /// Success status and body schema.
    pub response: (u16, Option<SchemaFn>),
    /// Query parameters schema.
    pub query: Option<SchemaFn>,
    /// The handler.
    pub handler: MethodRouter<App>,
}

#[allow(clippy::too_many_arguments)]
fn r(
    method: Method,
    path: &'static str,
    access: Access,
    summary: &'static str,
    request: Option<SchemaFn>,
    query: Option<SchemaFn>,
    response: (u16, Option<SchemaFn>),
    handler: MethodRouter<App>,
) -> RouteDef {
    RouteDef {
        method,
        path,
        access,
        summary,
        request,
        response,
        query,
        handler,
    }
}

/// Every route of the service.
pub fn routes() -> Vec<RouteDef> {
    use crate::http::extract::{Page, PageParams};
    use wabridge_projections::views;
    use Access::*;
    use Permission as P;
    vec![
        r(
            Method::GET,
            "/healthz",
            Public,
            "Process is up.",
            None,
            None,
            (200, None),
            get(ops::healthz),
        ),
        r(
            Method::GET,
            "/readyz",
            Public,
            "Log and store reachable, projections caught up.",
            None,
            None,
            (200, Some(schema::<ops::Readiness>)),
            get(ops::readyz),
        ),
        r(
            Method::GET,
            "/metrics",
            Public,
            "Prometheus metrics.",
            None,
            None,
            (200, None),
            get(ops::metrics),
        ),
        r(
            Method::GET,
            "/openapi.json",
            Public,
            "This document.",
            None,
            None,
            (200, None),
            get(ops::openapi),
        ),
        r(
            Method::GET,
            "/v1/permissions",
            Public,
            "The role × permission matrix.",
            None,
            None,
            (
                200,
                Some(schema::<Vec<wabridge_handlers::access::permissions::MatrixRow>>),
            ),
            get(ops::permissions),
        ),
        r(
            Method::GET,
            "/webhooks/meta",
            Meta,
            "Meta's verification handshake.",
            None,
            Some(schema::<meta::Handshake>),
            (200, None),
            get(meta::verify),
        ),
        r(
            Method::POST,
            "/webhooks/meta",
            Meta,
            "A signed Meta webhook; 200 once durable.",
            None,
            None,
            (200, None),
            post(meta::receive),
        ),
        r(
            Method::POST,
            "/v1/workspaces",
            Operator,
            "Create a workspace.",
            Some(schema::<workspaces::CreateWorkspace>),
            None,
            (201, Some(schema::<views::workspaces::Workspace>)),
            post(workspaces::create),
        ),
        r(
            Method::GET,
            "/v1/workspaces",
            Operator,
            "List workspaces.",
            None,
            Some(schema::<PageParams>),
            (200, Some(schema::<Page<views::workspaces::Workspace>>)),
            get(workspaces::list),
        ),
        r(
            Method::GET,
            "/v1/workspaces/{ws}",
            Workspace(P::WorkspaceRead),
            "Read a workspace.",
            None,
            None,
            (200, Some(schema::<views::workspaces::Workspace>)),
            get(workspaces::get),
        ),
        r(
            Method::POST,
            "/v1/workspaces/{ws}/api-keys",
            Workspace(P::KeysManage),
            "Create an API key (shown once).",
            Some(schema::<keys::CreateKey>),
            None,
            (201, Some(schema::<keys::CreatedKey>)),
            post(keys::create),
        ),
        r(
            Method::GET,
            "/v1/workspaces/{ws}/api-keys",
            Workspace(P::KeysRead),
            "List API keys.",
            None,
            Some(schema::<PageParams>),
            (200, Some(schema::<Page<keys::ApiKey>>)),
            get(keys::list),
        ),
        r(
            Method::DELETE,
            "/v1/workspaces/{ws}/api-keys/{id}",
            Workspace(P::KeysManage),
            "Revoke an API key.",
            None,
            None,
            (204, None),
            delete(keys::revoke),
        ),
        r(
            Method::PUT,
            "/v1/workspaces/{ws}/phone-numbers/{phone_number_id}",
            Workspace(P::PhoneNumbersManage),
            "Claim a phone number.",
            Some(schema::<numbers::ClaimNumber>),
            None,
            (200, Some(schema::<views::phone_numbers::PhoneNumber>)),
            put(numbers::claim),
        ),
        r(
            Method::GET,
            "/v1/workspaces/{ws}/phone-numbers",
            Workspace(P::PhoneNumbersRead),
            "List phone numbers.",
            None,
            Some(schema::<PageParams>),
            (200, Some(schema::<Page<views::phone_numbers::PhoneNumber>>)),
            get(numbers::list),
        ),
        r(
            Method::DELETE,
            "/v1/workspaces/{ws}/phone-numbers/{phone_number_id}",
            Workspace(P::PhoneNumbersManage),
            "Release a phone number.",
            None,
            None,
            (204, None),
            delete(numbers::release),
        ),
        r(
            Method::PUT,
            "/v1/workspaces/{ws}/phone-numbers/{phone_number_id}/token",
            Workspace(P::TokensWrite),
            "Store a Meta access token (encrypted).",
            Some(schema::<tokens::PutToken>),
            None,
            (204, None),
            put(tokens::put),
        ),
        r(
            Method::GET,
            "/v1/workspaces/{ws}/phone-numbers/{phone_number_id}/token",
            Workspace(P::TokensReadMetadata),
            "Read token metadata.",
            None,
            None,
            (200, Some(schema::<tokens::TokenMetadata>)),
            get(tokens::get),
        ),
        r(
            Method::DELETE,
            "/v1/workspaces/{ws}/phone-numbers/{phone_number_id}/token",
            Workspace(P::TokensRevoke),
            "Revoke a token.",
            None,
            None,
            (204, None),
            delete(tokens::revoke),
        ),
        r(
            Method::GET,
            "/v1/workspaces/{ws}/tokens",
            Workspace(P::TokensReadMetadata),
            "List tokens, e.g. expiring soon.",
            None,
            Some(schema::<tokens::ListTokens>),
            (200, Some(schema::<Page<tokens::TokenListItem>>)),
            get(tokens::list),
        ),
        r(
            Method::GET,
            "/v1/workspaces/{ws}/audit",
            Workspace(P::AuditRead),
            "Audit entries, newest first.",
            None,
            Some(schema::<audit::AuditParams>),
            (200, Some(schema::<Page<views::audit::AuditEntry>>)),
            get(audit::list),
        ),
        r(
            Method::GET,
            "/v1/workspaces/{ws}/audit/verify",
            Workspace(P::AuditVerify),
            "Verify the audit hash chain.",
            None,
            None,
            (200, Some(schema::<views::audit::Verification>)),
            get(audit::verify),
        ),
        r(
            Method::GET,
            "/v1/workspaces/{ws}/audit/export",
            Workspace(P::AuditExport),
            "Export audit entries as JSON lines.",
            None,
            Some(schema::<audit::ExportParams>),
            (200, None),
            get(audit::export),
        ),
        r(
            Method::GET,
            "/v1/admin/api-keys",
            Operator,
            "List operator keys.",
            None,
            Some(schema::<PageParams>),
            (200, Some(schema::<Page<keys::ApiKey>>)),
            get(keys::list_operators),
        ),
        r(
            Method::DELETE,
            "/v1/admin/api-keys/{id}",
            Operator,
            "Revoke any key (operator or workspace) by id.",
            None,
            None,
            (204, None),
            delete(keys::revoke_any),
        ),
        r(
            Method::GET,
            "/v1/admin/unrouted",
            Operator,
            "Numbers with webhooks nobody held.",
            None,
            Some(schema::<PageParams>),
            (200, Some(schema::<Page<views::unrouted::UnroutedNumber>>)),
            get(admin::unrouted),
        ),
        r(
            Method::POST,
            "/v1/admin/unrouted/{phone_number_id}/assign",
            Operator,
            "Attach a number's unrouted webhooks to a workspace.",
            Some(schema::<admin::Assign>),
            None,
            (200, Some(schema::<admin::Assigned>)),
            post(admin::assign),
        ),
        r(
            Method::GET,
            "/v1/admin/dead-letters",
            Operator,
            "List dead letters.",
            None,
            Some(schema::<admin::DeadLetterParams>),
            (200, Some(schema::<Page<views::dead_letters::DeadLetter>>)),
            get(admin::dead_letters),
        ),
        r(
            Method::GET,
            "/v1/admin/dead-letters/{id}",
            Operator,
            "Show a dead letter.",
            None,
            None,
            (200, Some(schema::<views::dead_letters::DeadLetter>)),
            get(admin::dead_letter),
        ),
        r(
            Method::POST,
            "/v1/admin/dead-letters/{id}/redrive",
            Operator,
            "Process a dead letter again.",
            None,
            None,
            (202, None),
            post(admin::redrive),
        ),
        r(
            Method::POST,
            "/v1/admin/dead-letters/{id}/discard",
            Operator,
            "Give up on a dead letter.",
            Some(schema::<admin::Discard>),
            None,
            (204, None),
            post(admin::discard),
        ),
    ]
}
