//! Authentication and authorisation for every route, driven by the route table: one
//! middleware checks the key (401), the workspace (404), then the permission (403).
//!
//! Key revocation is read-your-writes and fails closed: before trusting a key's row,
//! the middleware checks that the key projection has applied the last event on the
//! subject of the key's workspace, so a revocation made on any instance is effective
//! on the next request; when that cannot be confirmed (the read model lags, no
//! instance runs the workers) the request is refused with 503, never let through.

use std::net::{IpAddr, SocketAddr};

use axum::{
    extract::{ConnectInfo, FromRequestParts, RawPathParams, Request},
    http::{header, request::Parts},
};
use wabridge_events::{types::AccessDenied, Actor, ActorKind, Slug, Timestamp};
use wabridge_handlers::{
    access::{keys::parse as parse_key, KeyKind, Role},
    commands::{keys as key_cmds, workspaces, Caller},
};
use wabridge_projections::views::api_keys::{self, ApiKeyRow};

use super::error::AppError;
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
    Workspace(wabridge_handlers::access::Permission),
}

/// Who is calling.
#[derive(Clone, Debug)]
pub enum Principal {
    /// A workspace key with its role.
    Workspace {
        /// The key.
        key: ApiKeyRow,
        /// Its workspace.
        workspace: Slug,
        /// Its role.
        role: Role,
    },
    /// An operator key.
    Operator {
        /// The key.
        key: ApiKeyRow,
    },
}

impl Principal {
    /// The actor recorded on events.
    pub fn actor(&self) -> Actor {
        match self {
            Principal::Workspace { key, .. } => Actor {
                kind: ActorKind::ApiKey,
                id: key.id.clone(),
            },
            Principal::Operator { key } => Actor {
                kind: ActorKind::Operator,
                id: key.id.clone(),
            },
        }
    }

    /// The highest role this principal may grant or act on (`None`: operators).
    pub fn role_limit(&self) -> Option<Role> {
        match self {
            Principal::Workspace { role, .. } => Some(*role),
            Principal::Operator { .. } => None,
        }
    }
}

/// What handlers get after the middleware: the principal, the caller for commands,
/// and the route's workspace when it has one.
#[derive(Clone, Debug)]
pub struct Authed {
    /// The principal.
    pub principal: Principal,
    /// Actor and address.
    pub caller: Caller,
    /// The `{ws}` of the route, validated and existing.
    pub workspace: Option<Slug>,
}

impl Authed {
    /// The route's workspace (routes under `/v1/workspaces/{ws}` always have one).
    pub fn ws(&self) -> &Slug {
        self.workspace.as_ref().expect("workspace route")
    }
}

// The access rule, not the extractor, documents authentication (see `openapi`).
impl aide::OperationInput for Authed {}

impl<S: Send + Sync> FromRequestParts<S> for Authed {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AppError> {
        parts
            .extensions
            .get::<Authed>()
            .cloned()
            .ok_or_else(|| AppError::internal("route without authorisation"))
    }
}

/// The client address: the peer, or the first untrusted hop of X-Forwarded-For when
/// the peer is a trusted proxy.
pub fn client_ip(app: &App, parts: &Parts) -> Option<IpAddr> {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())?;
    if !app.cfg.trusted_proxies.contains(&peer) {
        return Some(peer);
    }
    let xff = parts
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let hops: Vec<IpAddr> = xff
        .split(',')
        .filter_map(|h| h.trim().parse().ok())
        .collect();
    hops.into_iter()
        .rev()
        .find(|ip| !app.cfg.trusted_proxies.contains(ip))
        .or(Some(peer))
}

fn ct_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Finds and checks the bearer key: 401 for missing, malformed, unknown, wrong,
/// expired or revoked keys.
async fn authenticate(app: &App, parts: &Parts, ip: Option<IpAddr>) -> Result<Principal, AppError> {
    let fail = |why: &str| {
        app.metrics.auth_failures.inc();
        app.auth_failures.record(ip, "api_key");
        AppError::unauthorized(why.to_string())
    };
    let header = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Some(text) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
        return Err(fail("missing Authorization: Bearer <api key>"));
    };
    let Some(parsed) = parse_key(text.trim()) else {
        return Err(fail("malformed API key"));
    };
    let mut row = api_keys::get(&app.ctx.store, &parsed.id).await?;
    if let Some(r) = &row {
        let ws = r
            .workspace
            .as_deref()
            .map(Slug::parse)
            .transpose()
            .map_err(AppError::internal)?;
        let subject = key_cmds::keys_subject(&app.ctx, ws.as_ref());
        let last = app
            .ctx
            .log
            .last_subject_seq(&subject)
            .await
            // The key's revocation cannot be confirmed: fail closed (503).
            .map_err(AppError::from)?;
        if last > r.log_seq {
            app.ctx.wait("api_keys", last).await?;
            row = api_keys::get(&app.ctx.store, &parsed.id).await?;
        }
    }
    let Some(row) = row else {
        return Err(fail("unknown API key"));
    };
    if !ct_eq(&row.secret_hash, &parsed.hash) {
        return Err(fail("unknown API key"));
    }
    let now = Timestamp::now();
    if !key_cmds::is_valid(&row, &now.to_string()) {
        return Err(fail("the API key is revoked or expired"));
    }
    note_use(app, &row, now);
    match (
        parsed.kind,
        row.workspace.as_deref(),
        Role::parse(&row.role),
    ) {
        (KeyKind::Operator, None, _) if row.role == "operator" => {
            Ok(Principal::Operator { key: row })
        }
        (KeyKind::Workspace, Some(ws), Some(role)) => {
            let workspace = Slug::parse(ws).map_err(AppError::internal)?;
            Ok(Principal::Workspace {
                key: row,
                workspace,
                role,
            })
        }
        _ => Err(fail("unknown API key")),
    }
}

/// Records `last_used_at` at most once a minute per key per process.
fn note_use(app: &App, key: &ApiKeyRow, now: Timestamp) {
    let minute = now.unix_micros() / 60_000_000;
    {
        let mut seen = app.key_use.lock().expect("key use lock");
        if seen.get(&key.id) == Some(&minute) {
            return;
        }
        seen.insert(key.id.clone(), minute);
    }
    let (ctx, key) = (app.ctx.clone(), key.clone());
    let at = Timestamp::from_unix_micros(minute * 60_000_000).unwrap_or(now);
    tokio::spawn(async move {
        if let Err(e) = key_cmds::record_use(&ctx, &key, at).await {
            tracing::warn!(error = %e, "recording key use failed");
        }
    });
}

/// Appends `access.denied` to the caller's workspace audit log (`path`: the path
/// tried, for a request on another workspace's resources).
async fn record_denial(
    app: &App,
    principal: &Principal,
    caller: &Caller,
    route: &str,
    permission: &str,
    path: Option<String>,
) {
    app.metrics.access_denied.inc();
    let ws = match principal {
        Principal::Workspace { workspace, .. } => Some(workspace.clone()),
        Principal::Operator { .. } => None,
    };
    let data = AccessDenied {
        route: route.to_string(),
        permission: permission.to_string(),
        ip: caller.ip.clone(),
        path,
    };
    if let Err(e) = app
        .ctx
        .log
        .append(app.ctx.event(ws.as_ref(), caller, &data))
        .await
    {
        tracing::error!(error = %e, "recording access.denied failed");
    }
}

/// Records the denial and answers 403.
async fn deny(
    app: &App,
    principal: &Principal,
    caller: &Caller,
    route: &str,
    permission: &str,
) -> AppError {
    record_denial(app, principal, caller, route, permission, None).await;
    AppError::forbidden(format!("this key lacks the {permission} permission"))
}

/// Checks the key, the workspace and the permission of a request to a route with
/// `access` (see [`Access`]); returns the request carrying [`Authed`].
pub async fn authorize(
    app: &App,
    access: Access,
    route: &'static str,
    req: Request,
) -> Result<Request, AppError> {
    if matches!(access, Access::Public | Access::Meta) {
        return Ok(req);
    }
    let app = app.clone();
    let (mut parts, body) = req.into_parts();
    let ip = client_ip(&app, &parts);
    let principal = authenticate(&app, &parts, ip).await?;
    let caller = Caller {
        actor: principal.actor(),
        ip: ip.map(|i| i.to_string()),
        role_limit: principal.role_limit(),
    };
    let params = RawPathParams::from_request_parts(&mut parts, &())
        .await
        .map_err(|e| AppError::validation(e.body_text()))?;
    let ws_param = params
        .iter()
        .find(|(k, _)| *k == "ws")
        .map(|(_, v)| v.to_string());
    let workspace = match ws_param {
        None => None,
        Some(s) => {
            let slug = Slug::parse(&s)
                .map_err(|_| AppError::not_found(format!("workspace {s} does not exist")))?;
            if let Principal::Workspace { workspace, .. } = &principal {
                if *workspace != slug {
                    // 404 (existence does not leak), and an entry in the caller's own
                    // audit chain naming what was tried.
                    let permission = match access {
                        Access::Workspace(p) => p.as_str(),
                        _ => "operator",
                    };
                    let path = parts.uri.path().chars().take(500).collect();
                    record_denial(&app, &principal, &caller, route, permission, Some(path)).await;
                    return Err(AppError::not_found(format!(
                        "workspace {slug} does not exist"
                    )));
                }
            }
            // Workspaces are never deleted: once seen, no need to look again.
            if !app
                .known_workspaces
                .read()
                .expect("workspace cache")
                .contains(&slug)
            {
                workspaces::require(&app.ctx, &slug).await?;
                app.known_workspaces
                    .write()
                    .expect("workspace cache")
                    .insert(slug.clone());
            }
            Some(slug)
        }
    };
    match (access, &principal) {
        (Access::Operator, Principal::Operator { .. }) => {}
        (Access::Operator, _) => {
            return Err(deny(&app, &principal, &caller, route, "operator").await)
        }
        (Access::Workspace(_), Principal::Operator { .. }) => {}
        (Access::Workspace(p), Principal::Workspace { role, .. }) => {
            if !role.allows(p) {
                return Err(deny(&app, &principal, &caller, route, p.as_str()).await);
            }
        }
        (Access::Public | Access::Meta, _) => {}
    }
    let mut req = Request::from_parts(parts, body);
    req.extensions_mut().insert(Authed {
        principal,
        caller,
        workspace,
    });
    Ok(req)
}
