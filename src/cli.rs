//! The command line: `serve` and the host commands (bootstrap, keys, audit, dead
//! letters, events, schemas). Host commands work with or without a running server:
//! they keep the read models fresh themselves while they run.

use std::{io::Write, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;
use wabridge_events::{ReadFrom, Slug, StreamKind, Timestamp};
use wabridge_handlers::{
    access::Role,
    commands::{self, Caller},
};
use wabridge_projections::{views, Driver};

use crate::{
    app::App,
    config::{Config, ConfigArgs},
};

/// wabridge: between your apps and the WhatsApp Business Cloud API.
#[derive(Parser, Debug)]
#[command(name = "wabridge", version)]
pub struct Cli {
    /// Configuration (flags or environment).
    #[command(flatten)]
    pub config: ConfigArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server (API and/or workers, per WABRIDGE_ROLES).
    Serve,
    /// Create a workspace with its first owner key, or an operator key.
    Bootstrap {
        /// The workspace slug to create.
        #[arg(long, conflicts_with = "operator")]
        workspace: Option<String>,
        /// The workspace's display name (default: the slug).
        #[arg(long)]
        name: Option<String>,
        /// Create an operator key instead.
        #[arg(long)]
        operator: bool,
        /// Let the key expire after this long (e.g. `90d`).
        #[arg(long, value_parser = parse_expiry)]
        expires_in: Option<Duration>,
    },
    /// API keys and master keys.
    Keys {
        #[command(subcommand)]
        /// What to do.
        action: KeysCommand,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        /// What to do.
        action: AuditCommand,
    },
    /// Dead letters.
    DeadLetters {
        #[command(subcommand)]
        /// What to do.
        action: DeadLetterCommand,
    },
    /// The event log as JSON lines.
    Events {
        #[command(subcommand)]
        /// What to do.
        action: EventsCommand,
    },
    /// The checked-in schemas.
    Schemas {
        #[command(subcommand)]
        /// What to do.
        action: SchemasCommand,
    },
    /// Developer tools.
    #[command(hide = true)]
    Debug {
        #[command(subcommand)]
        /// What to do.
        action: DebugCommand,
    },
}

/// `keys` subcommands.
#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Create a workspace key locally (recovery when every owner key is lost).
    Create {
        /// Workspace.
        #[arg(long)]
        workspace: String,
        /// Role.
        #[arg(long)]
        role: String,
        /// Name.
        #[arg(long, default_value = "created on the host")]
        name: String,
    },
    /// Revoke any key by id (workspace or operator): the local recovery path.
    Revoke {
        /// The key id (the 16 hex digits after `wbk_`/`wbo_`).
        #[arg(long)]
        id: String,
    },
    /// Print a new random master key (64 hex characters).
    Generate,
    /// Re-encrypt every stored token under the newest master key.
    Rotate,
}

/// `audit` subcommands.
#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Verify hash chains (every workspace, or one).
    Verify {
        /// Only this workspace.
        #[arg(long)]
        workspace: Option<String>,
    },
    /// Export entries as JSON lines.
    Export {
        /// Workspace.
        #[arg(long)]
        workspace: String,
        /// Entries at or after (RFC 3339).
        #[arg(long)]
        since: Option<String>,
    },
}

/// `dead-letters` subcommands.
#[derive(Subcommand, Debug)]
pub enum DeadLetterCommand {
    /// List (open ones by default).
    List {
        /// `open`, `redriving`, `resolved`, `discarded` or `all`.
        #[arg(long, default_value = "open")]
        status: String,
    },
    /// Show one, with the failed event.
    Show {
        /// Its id.
        id: String,
    },
    /// Process it again.
    Redrive {
        /// Its id.
        id: String,
    },
    /// Give up on it.
    Discard {
        /// Its id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
}

/// `events` subcommands.
#[derive(Subcommand, Debug)]
pub enum EventsCommand {
    /// Follow new events.
    Tail(EventFilter),
    /// Print events from a time (or the start) up to now.
    Export(EventFilter),
}

/// Filters for `events`.
#[derive(clap::Args, Debug)]
pub struct EventFilter {
    /// Only this workspace.
    #[arg(long)]
    pub workspace: Option<String>,
    /// Only this event type.
    #[arg(long = "type")]
    pub event_type: Option<String>,
    /// From this time (RFC 3339).
    #[arg(long)]
    pub since: Option<String>,
    /// `domain` (default) or `raw`.
    #[arg(long, default_value = "domain")]
    pub stream: String,
}

/// `schemas` subcommands.
#[derive(Subcommand, Debug)]
pub enum SchemasCommand {
    /// Regenerate `schemas/`.
    Write,
    /// Fail when `schemas/` differs from the code.
    Check,
}

/// `debug` subcommands.
#[derive(Subcommand, Debug)]
pub enum DebugCommand {
    /// Append N events, printing `acked <seq> <i>` after each ack (durability tests).
    AppendLoop {
        /// How many.
        #[arg(long)]
        count: u64,
    },
}

/// `--expires-in`: a duration within ten years.
fn parse_expiry(s: &str) -> Result<Duration, String> {
    crate::config::parse_duration(s)
        .filter(|d| *d <= Duration::from_secs(3650 * 86_400))
        .ok_or_else(|| "a duration like 90d or 12h, at most 3650d".to_string())
}

/// Keeps the read models fresh while a host command runs (no server needed).
fn keep_fresh(app: &App) -> tokio::task::JoinHandle<()> {
    let driver = Driver {
        log: app.ctx.log.clone(),
        store: app.ctx.store.clone(),
        progress: app.ctx.progress.clone(),
    };
    let follower = views::follower(&app.projection_keys());
    tokio::spawn(async move {
        loop {
            if let Err(e) = driver.catch_up(&follower).await {
                tracing::warn!(error = %format!("{e:#}"), "catch-up failed");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

async fn host_app(args: &ConfigArgs) -> anyhow::Result<(App, tokio::task::JoinHandle<()>)> {
    let mut cfg = Config::load(args)?;
    cfg.ensure_dev_keys_quiet()?;
    cfg.roles.workers = false;
    let mut app = App::build(cfg).await?;
    // This command keeps the projections fresh itself.
    app.set_projections_local();
    let fresh = keep_fresh(&app);
    Ok((app, fresh))
}

fn slug(s: &str) -> anyhow::Result<Slug> {
    Slug::parse(s).with_context(|| format!("--workspace {s:?}"))
}

/// Runs a host command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let out = &mut std::io::stdout();
    match cli.command {
        Command::Serve => unreachable!("serve is handled by main"),
        Command::Keys {
            action: KeysCommand::Generate,
        } => {
            writeln!(out, "{}", wabridge_handlers::vault::generate_key_hex())?;
        }
        Command::Schemas { action } => {
            let dir = std::path::Path::new("schemas");
            match action {
                SchemasCommand::Write => {
                    crate::schemas::write(dir)?;
                    crate::schemas::write_readme(std::path::Path::new("README.md"))?;
                }
                SchemasCommand::Check => {
                    let drift = crate::schemas::check(dir);
                    anyhow::ensure!(drift.is_empty(), "schemas/ drifted from the code: {drift:?}; run `cargo run -- schemas write`");
                    anyhow::ensure!(
                        crate::schemas::readme_current(std::path::Path::new("README.md")),
                        "README.md's permission table drifted; run `cargo run -- schemas write`"
                    );
                }
            }
        }
        Command::Debug {
            action: DebugCommand::AppendLoop { count },
        } => {
            let cfg = Config::load(&cli.config)?;
            let log = crate::app::open_log(&cfg).await?;
            for i in 0..count {
                let ev = wabridge_events::types::new_event(
                    log.namespace(),
                    None,
                    wabridge_events::Actor::cli("debug"),
                    &wabridge_events::types::DebugAppended { i },
                );
                let a = log.append(ev).await?;
                writeln!(out, "acked {} {i}", a.seq)?;
                out.flush()?;
            }
        }
        command => {
            let (app, fresh) = host_app(&cli.config).await?;
            let result = host_command(&app, command, out).await;
            fresh.abort();
            result?;
        }
    }
    Ok(())
}

async fn host_command(app: &App, command: Command, out: &mut impl Write) -> anyhow::Result<()> {
    let ctx = &app.ctx;
    match command {
        Command::Bootstrap {
            workspace: Some(ws),
            name,
            expires_in,
            ..
        } => {
            let ws = slug(&ws)?;
            let caller = Caller::cli("bootstrap");
            commands::workspaces::create(ctx, &caller, &ws, name.as_deref().unwrap_or(ws.as_str()))
                .await?;
            let key = commands::keys::create(
                ctx,
                &caller,
                Some(&ws),
                "bootstrap owner",
                Some(Role::Owner),
                expires_in.map(|d| Timestamp::now().plus(d)),
            )
            .await?;
            writeln!(
                out,
                "workspace {ws} created; its owner key (shown once, store it now):\n{}",
                key.key.expose_secret()
            )?;
        }
        Command::Bootstrap {
            operator: true,
            expires_in,
            ..
        } => {
            let key = commands::keys::create(
                ctx,
                &Caller::cli("bootstrap"),
                None,
                "bootstrap operator",
                None,
                expires_in.map(|d| Timestamp::now().plus(d)),
            )
            .await?;
            writeln!(
                out,
                "operator key (shown once, store it now):\n{}",
                key.key.expose_secret()
            )?;
        }
        Command::Bootstrap { .. } => anyhow::bail!("give --workspace SLUG or --operator"),
        Command::Keys {
            action:
                KeysCommand::Create {
                    workspace,
                    role,
                    name,
                },
        } => {
            let role =
                Role::parse(&role).context("--role must be owner, admin, agent or viewer")?;
            let key = commands::keys::create(
                ctx,
                &Caller::cli("keys create"),
                Some(&slug(&workspace)?),
                &name,
                Some(role),
                None,
            )
            .await?;
            writeln!(
                out,
                "{} key {} (shown once):\n{}",
                key.role,
                key.id,
                key.key.expose_secret()
            )?;
        }
        Command::Keys {
            action: KeysCommand::Revoke { id },
        } => {
            commands::keys::revoke_any(ctx, &Caller::cli("keys revoke"), &id).await?;
            writeln!(out, "key {id} revoked")?;
        }
        Command::Keys {
            action: KeysCommand::Rotate,
        } => {
            let report = commands::tokens::rotate(
                ctx,
                app.cfg.token_keys.as_ref(),
                &Caller::cli("keys rotate"),
                |done, total| {
                    eprintln!("rewrapping {done}/{total}");
                },
            )
            .await?;
            writeln!(
                out,
                "rewrapped {}; skipped (changed meanwhile) {}; failed {}; still on old keys {}",
                report.rewrapped,
                report.skipped_concurrent,
                report.failed.len(),
                report.remaining
            )?;
            for f in &report.failed {
                writeln!(out, "failed: {f}")?;
            }
            anyhow::ensure!(
                report.failed.is_empty(),
                "some tokens could not be decrypted"
            );
        }
        Command::Audit {
            action: AuditCommand::Verify { workspace },
        } => {
            let chains = match workspace {
                Some(ws) => vec![slug(&ws)?.to_string()],
                None => views::audit::chains(&ctx.store).await?,
            };
            let mut ok = true;
            for ws in chains {
                let v =
                    commands::audit::verify(ctx, app.cfg.audit_signing_key.as_ref(), &ws).await?;
                ok &= v.ok;
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({"workspace": ws, "ok": v.ok, "entries_checked": v.entries_checked, "first_bad_seq": v.first_bad_seq})
                )?;
            }
            anyhow::ensure!(ok, "audit chain verification failed");
        }
        Command::Audit {
            action: AuditCommand::Export { workspace, since },
        } => {
            let ws = slug(&workspace)?;
            let since = since
                .as_deref()
                .map(Timestamp::parse)
                .transpose()
                .context("--since must be RFC 3339")?
                .map(|t| t.to_string())
                .unwrap_or_default();
            let head = ctx.log.last_seq(StreamKind::Domain).await?;
            ctx.wait("audit", head).await?;
            let mut after = 0;
            loop {
                let page =
                    views::audit::export(&ctx.store, ws.as_str(), &since, after, 1000).await?;
                let Some(last) = page.last() else { break };
                after = last.seq;
                for e in &page {
                    writeln!(out, "{}", serde_json::to_string(e)?)?;
                }
            }
        }
        Command::DeadLetters { action } => dead_letters(app, action, out).await?,
        Command::Events { action } => events(app, action, out).await?,
        Command::Serve
        | Command::Schemas { .. }
        | Command::Debug { .. }
        | Command::Keys {
            action: KeysCommand::Generate,
        } => unreachable!(),
    }
    Ok(())
}

async fn dead_letters(
    app: &App,
    action: DeadLetterCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let ctx = &app.ctx;
    let head = ctx.log.last_seq(StreamKind::Domain).await?;
    ctx.wait("dead_letters", head).await?;
    let caller = Caller::cli("dead-letters");
    match action {
        DeadLetterCommand::List { status } => {
            let status = if status == "all" {
                None
            } else {
                Some(status.as_str())
            };
            let mut after: Option<String> = None;
            loop {
                let page =
                    views::dead_letters::list(&ctx.store, status, after.as_deref(), 500).await?;
                let Some(last) = page.last() else { break };
                after = Some(last.id.clone());
                for d in &page {
                    writeln!(out, "{}", serde_json::to_string(d)?)?;
                }
            }
        }
        DeadLetterCommand::Show { id } => {
            let d = views::dead_letters::get(&ctx.store, &id)
                .await?
                .context("no such dead letter")?;
            writeln!(out, "{}", serde_json::to_string_pretty(&d)?)?;
            let stream = StreamKind::parse(&d.stream).context("bad stream")?;
            if let Some(ev) = ctx
                .log
                .read(stream, ReadFrom::Seq(d.seq as u64), None, 1)
                .await?
                .into_iter()
                .find(|e| e.seq == d.seq as u64)
            {
                writeln!(out, "{}", event_json(&ev))?;
            }
        }
        DeadLetterCommand::Redrive { id } => {
            commands::dead_letters::redrive(ctx, &caller, &id).await?;
            writeln!(out, "redrive of {id} requested")?;
        }
        DeadLetterCommand::Discard { id, reason } => {
            commands::dead_letters::discard(ctx, &caller, &id, reason).await?;
            writeln!(out, "{id} discarded")?;
        }
    }
    Ok(())
}

/// One event as a JSON line: stream, seq, subject, envelope and data (JSON when the
/// payload is JSON, else hex).
pub fn event_json(ev: &wabridge_events::StoredEvent) -> String {
    let mut v = serde_json::json!({"stream": ev.stream.as_str(), "seq": ev.seq, "subject": ev.subject, "envelope": ev.envelope});
    match serde_json::from_slice::<serde_json::Value>(&ev.payload) {
        Ok(data) => v["data"] = data,
        Err(_) => v["payload_hex"] = serde_json::json!(hex::encode(&ev.payload)),
    }
    v.to_string()
}

async fn events(app: &App, action: EventsCommand, out: &mut impl Write) -> anyhow::Result<()> {
    let log = &app.ctx.log;
    let (filter, tail) = match action {
        EventsCommand::Tail(f) => (f, true),
        EventsCommand::Export(f) => (f, false),
    };
    let stream = StreamKind::parse(&filter.stream).context("--stream must be domain or raw")?;
    let subject = match &filter.workspace {
        Some(ws) => Some(log.namespace().workspace_filter(&slug(ws)?)),
        None => None,
    };
    let keep = |ev: &wabridge_events::StoredEvent| {
        filter
            .event_type
            .as_deref()
            .is_none_or(|t| t == ev.envelope.event_type)
    };
    let mut from = match &filter.since {
        Some(s) => ReadFrom::Time(Timestamp::parse(s).context("--since must be RFC 3339")?),
        None if tail => ReadFrom::Seq(log.last_seq(stream).await? + 1),
        None => ReadFrom::Seq(1),
    };
    let head = log.last_seq(stream).await?;
    loop {
        let page = log.read(stream, from, subject.as_deref(), 500).await?;
        let last = page.last().map(|e| e.seq);
        for ev in page.iter().filter(|e| keep(e)) {
            writeln!(out, "{}", event_json(ev))?;
        }
        out.flush()?;
        match last {
            Some(seq) => from = ReadFrom::Seq(seq + 1),
            None if tail => tokio::time::sleep(Duration::from_millis(200)).await,
            None => break,
        }
        if !tail && last.is_some_and(|s| s >= head) {
            break;
        }
    }
    Ok(())
}
