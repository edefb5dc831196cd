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
///
/// Host commands read their configuration from the environment (the same variables
/// as `serve`, e.g. WABRIDGE_DATA_DIR, NATS_URL, DATABASE_URL).
#[derive(Parser, Debug)]
#[command(name = "wabridge", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands (parsed once per run: their size does not matter).
#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run the server (API and/or workers, per WABRIDGE_ROLES).
    Serve(ConfigArgs),
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
    /// Rebuild read models from the log beside the live ones (the server may keep
    /// serving), then swap them in atomically; prints a checksum per projection.
    ///
    /// `--projection webhook_processor --since TIME` (or `--from-seq N`) instead
    /// splits the webhooks stored since then again with this version's code and
    /// appends the domain events they should have given and did not.
    Replay {
        /// A projection's name (`wabridge projections list`), or `all`; or
        /// `webhook_processor` with `--since` / `--from-seq`.
        #[arg(long)]
        projection: String,
        /// Rebuild and compare with the live state; swap nothing (exit 1 when they
        /// differ). With `webhook_processor`: count what would be appended.
        #[arg(long)]
        dry_run: bool,
        /// With `webhook_processor`: the first raw-stream sequence to process again
        /// (not with `--since`).
        #[arg(long)]
        from_seq: Option<u64>,
        /// With `webhook_processor`: process again the webhooks received at or after
        /// this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
    },
    /// The read models.
    Projections {
        /// What to do.
        #[command(subcommand)]
        action: ProjectionsCommand,
    },
    /// The checked-in schemas.
    Schemas {
        #[command(subcommand)]
        /// What to do.
        action: SchemasCommand,
    },
    /// Try the whole loop without a Meta account: the Graph API simulator, and
    /// signed Meta webhooks.
    Dev {
        #[command(subcommand)]
        /// What to do.
        action: DevCommand,
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
        #[arg(long, value_enum)]
        role: RoleArg,
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
        /// Which ones.
        #[arg(long, value_enum, default_value_t = DeadLetterStatusArg::Open)]
        status: DeadLetterStatusArg,
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

/// `projections` subcommands.
#[derive(Subcommand, Debug)]
pub enum ProjectionsCommand {
    /// Print each projection's checksum over a canonical dump of its live state,
    /// with the checkpoint it is at (`name checkpoint checksum`).
    Checksum {
        /// A projection's name, or `all`.
        #[arg(long, default_value = "all")]
        projection: String,
    },
    /// Print each projection's checkpoint and lag.
    List,
}

/// `events` subcommands.
#[derive(Subcommand, Debug)]
pub enum EventsCommand {
    /// Follow new events.
    Tail(EventFilter),
    /// Print events from a time (or the start) up to now.
    Export(EventFilter),
    /// Re-prove a stored webhook: its bytes against the signature Meta sent, with
    /// the app secret(s) in META_APP_SECRET.
    VerifyWebhook {
        /// The raw stream sequence of the `webhook.received` event.
        #[arg(long)]
        seq: u64,
    },
}

/// A workspace role.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum RoleArg {
    /// Everything in the workspace.
    Owner,
    /// Everything but the owner-only operations.
    Admin,
    /// Reads, sends, manages consent.
    Agent,
    /// Reads.
    Viewer,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Owner => Role::Owner,
            RoleArg::Admin => Role::Admin,
            RoleArg::Agent => Role::Agent,
            RoleArg::Viewer => Role::Viewer,
        }
    }
}

/// A dead letter's state, or all of them.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadLetterStatusArg {
    /// Waiting for the operator.
    Open,
    /// A redrive was requested.
    Redriving,
    /// A redrive succeeded.
    Resolved,
    /// The operator gave up on it.
    Discarded,
    /// Every state.
    All,
}

/// Which stream(s) of the log.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamArg {
    /// Domain events.
    Domain,
    /// Meta's raw webhook bodies.
    Raw,
    /// Both, each in its own sequence order (domain first).
    All,
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
    /// Until this time (RFC 3339), for export.
    #[arg(long)]
    pub until: Option<String>,
    /// Which stream.
    #[arg(long, value_enum, default_value_t = StreamArg::Domain)]
    pub stream: StreamArg,
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
pub enum DevCommand {
    /// Run the project's Graph API simulator (messages, media, token exchange,
    /// subscribed_apps, register, with Meta's limits and error bodies).
    GraphSim {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: std::net::SocketAddr,
        /// Post status webhooks (sent, delivered, read) for accepted messages here,
        /// signed with META_APP_SECRET.
        #[arg(long)]
        webhook_url: Option<String>,
        /// Messages per second per phone number before error 130429 (0: unlimited).
        #[arg(long, default_value_t = 80)]
        per_number_mps: u32,
    },
    /// Build, sign (META_APP_SECRET) and post a realistic Meta webhook.
    Webhook {
        /// text, stop, button, status or user_preferences.
        kind: crate::dev::webhook::Kind,
        /// wabridge's webhook URL.
        #[arg(long, default_value = "http://127.0.0.1:8080/webhooks/meta")]
        to: String,
        /// The user's wa_id (sender of inbound messages, recipient of statuses).
        #[arg(long, default_value = "447700900123")]
        from: String,
        /// The text of a text or stop message.
        #[arg(long)]
        text: Option<String>,
        /// The business number's id (metadata.phone_number_id).
        #[arg(long, default_value = crate::dev::webhook::DEFAULT_PHONE_NUMBER_ID)]
        phone_number_id: String,
        /// The WABA id (entry.id).
        #[arg(long, default_value = crate::dev::webhook::DEFAULT_WABA_ID)]
        waba_id: String,
        /// For a status: the outbound message's wamid.
        #[arg(long)]
        wamid: Option<String>,
        /// For a status: sent, delivered, read or failed.
        #[arg(long)]
        status: Option<String>,
        /// For a failed status: Meta's error code (default 131050).
        #[arg(long)]
        error_code: Option<i64>,
        /// For user_preferences: stop or resume.
        #[arg(long)]
        preference: Option<String>,
        /// For a button: its label.
        #[arg(long)]
        button_text: Option<String>,
    },
}

/// Hidden `debug` subcommands.
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

/// Runs a host command (configured from the environment).
pub async fn run(command: Command) -> anyhow::Result<()> {
    let out = &mut std::io::stdout();
    let config = ConfigArgs::from_env();
    match command {
        Command::Serve(_) => unreachable!("serve is handled by main"),
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
        Command::Dev { action } => dev(action, out).await?,
        Command::Debug {
            action: DebugCommand::AppendLoop { count },
        } => {
            let cfg = Config::load(&config)?;
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
        Command::Projections { action } => {
            let mut cfg = Config::load(&config)?;
            cfg.ensure_dev_keys_quiet()?;
            cfg.roles.workers = false;
            let app = App::build(cfg).await?;
            projections_command(&app, action, out).await?;
        }
        command => {
            let (app, fresh) = host_app(&config).await?;
            let result = host_command(&app, command, out).await;
            fresh.abort();
            result?;
        }
    }
    Ok(())
}

async fn projections_command(
    app: &App,
    action: ProjectionsCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match action {
        ProjectionsCommand::Checksum { projection } => {
            let projections = crate::replay::select(app, &projection)
                .with_context(|| format!("no projection {projection:?}"))?;
            for p in projections {
                let (cp, sum) =
                    wabridge_projections::rebuild::live_checksum(&app.ctx.store, &*p).await?;
                writeln!(out, "{} {cp} {sum}", p.name())?;
            }
        }
        ProjectionsCommand::List => {
            let report = crate::replay::status(app).await?;
            for u in &report.units {
                writeln!(
                    out,
                    "{:<28} run by {}",
                    u.unit,
                    u.holder.as_deref().unwrap_or("NOBODY")
                )?;
            }
            for p in report.projections {
                writeln!(
                    out,
                    "{:<18} {:<6} checkpoint {:>9} head {:>9} lag {:>7} events {:>8.1} s",
                    p.name, p.stream, p.checkpoint, p.head, p.lag_events, p.lag_seconds
                )?;
            }
        }
    }
    Ok(())
}

/// Progress on stderr: one line rewritten in place on a terminal, else a line each.
fn print_progress(p: &wabridge_projections::rebuild::RebuildProgress) {
    let pct = if p.head == 0 {
        100.0
    } else {
        p.position as f64 * 100.0 / p.head as f64
    };
    progress_line(&format!(
        "replay: {}/{} events ({pct:.0} %), {} events/s, ETA {} s",
        p.position, p.head, p.events_per_second, p.eta_seconds
    ));
}

/// A progress line on stderr: redrawn in place on a terminal, one line per call
/// otherwise. Best effort: a progress line that cannot be written is not an error
/// of the command.
fn progress_line(line: &str) {
    use std::io::IsTerminal;
    let mut err = std::io::stderr();
    let _ = if err.is_terminal() {
        write!(err, "\r\x1b[2K{line}")
    } else {
        writeln!(err, "{line}")
    };
    let _ = err.flush();
}

/// `replay --projection webhook_processor --since|--from-seq`: one line on stdout,
/// `webhook_processor raw FROM..THROUGH: N bodies; appended N (type n, ...);
/// already derived N; skipped reason n, ...` (`skipped none` when nothing was).
async fn reprocess_webhooks(
    ctx: &commands::Ctx,
    from: ReadFrom,
    dry_run: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let caller = Caller::cli("replay");
    let name = wabridge_handlers::webhooks::processor::NAME;
    commands::rebuilds::requested(ctx, &caller, name, dry_run, Some(&from)).await?;
    let result =
        wabridge_handlers::webhooks::reprocess::reprocess(ctx, from, dry_run, |at, through| {
            progress_line(&format!("replay: raw webhook {at} of {through}"))
        })
        .await;
    let outcome = match &result {
        Ok(report) => commands::rebuilds::Outcome::reprocessed(report),
        Err(e) => commands::rebuilds::Outcome::failed(e),
    };
    commands::rebuilds::finished(ctx, &caller, name, dry_run, outcome).await?;
    let report = result?;
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!();
    }
    writeln!(
        out,
        "{} {}",
        wabridge_handlers::webhooks::processor::NAME,
        report.summary()
    )?;
    eprintln!(
        "replay: {} webhook bodies in {:.1} s; {}",
        report.bodies,
        started.elapsed().as_secs_f64(),
        if dry_run {
            "dry run, nothing appended"
        } else {
            "appended"
        }
    );
    Ok(())
}

async fn host_command(app: &App, command: Command, out: &mut impl Write) -> anyhow::Result<()> {
    let ctx = &app.ctx;
    match command {
        Command::Replay {
            projection,
            dry_run,
            from_seq,
            since,
        } => {
            let spelling = crate::replay::Spelling {
                since: "--since",
                from_seq: "--from-seq",
            };
            let projections = match crate::replay::job(
                app,
                &projection,
                since.as_deref(),
                from_seq,
                dry_run,
                &spelling,
            ) {
                Ok(crate::replay::Job::Reprocess { from, .. }) => {
                    return reprocess_webhooks(ctx, from, dry_run, out).await
                }
                Ok(crate::replay::Job::Rebuild { projections, .. }) => projections,
                Err(crate::replay::BadRequest::Unknown) => {
                    anyhow::bail!("no projection {projection:?}; see `wabridge projections list`")
                }
                Err(crate::replay::BadRequest::Invalid(why)) => anyhow::bail!(why),
            };
            let caller = Caller::cli("replay");
            commands::rebuilds::requested(ctx, &caller, &projection, dry_run, None).await?;
            let result = wabridge_projections::rebuild::rebuild(
                ctx.log.clone(),
                &ctx.store,
                projections,
                dry_run,
                print_progress,
            )
            .await;
            // A failure is recorded (a success is not: see `ProjectionRebuildFinished`).
            if let Err(e) = &result {
                let outcome = commands::rebuilds::Outcome::failed(e);
                if let Err(e) =
                    commands::rebuilds::finished(ctx, &caller, &projection, dry_run, outcome).await
                {
                    tracing::warn!(projection = %projection, error = %e, "recording the end of a replay failed");
                }
            }
            let report = result?;
            if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                eprintln!();
            }
            for p in &report.projections {
                if dry_run {
                    let verdict = if p.checksum == p.live_checksum {
                        "equal".to_string()
                    } else {
                        format!("DIFFERS from live {}", p.live_checksum)
                    };
                    writeln!(out, "{} {} {} {verdict}", p.name, p.position, p.checksum)?;
                } else {
                    writeln!(out, "{} {} {}", p.name, p.position, p.checksum)?;
                }
            }
            eprintln!(
                "replay: {} events in {:.1} s; {} (the live projections waited {:.1} s)",
                report.events,
                report.seconds,
                if dry_run {
                    "dry run, nothing swapped"
                } else {
                    "swapped in"
                },
                report.locked_seconds
            );
            if dry_run && !report.all_equal() {
                anyhow::bail!("the rebuilt state differs from the live one");
            }
        }
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
            let role = Role::from(role);
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
            let endpoints = commands::endpoints::rewrap_all(
                ctx,
                app.cfg.token_keys.as_ref(),
                &Caller::cli("keys rotate"),
            )
            .await?;
            writeln!(
                out,
                "endpoint secrets: rewrapped {}; skipped (changed meanwhile) {}; failed {}",
                endpoints.rewrapped,
                endpoints.skipped_concurrent,
                endpoints.failed.len()
            )?;
            for f in &endpoints.failed {
                writeln!(out, "failed: {f}")?;
            }
            anyhow::ensure!(
                report.failed.is_empty() && endpoints.failed.is_empty(),
                "some tokens or endpoint secrets could not be decrypted"
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
        Command::Serve(_)
        | Command::Schemas { .. }
        | Command::Projections { .. }
        | Command::Debug { .. }
        | Command::Dev { .. }
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
            let status = match status {
                DeadLetterStatusArg::All => None,
                DeadLetterStatusArg::Open => Some("open"),
                DeadLetterStatusArg::Redriving => Some("redriving"),
                DeadLetterStatusArg::Resolved => Some("resolved"),
                DeadLetterStatusArg::Discarded => Some("discarded"),
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

/// One event as a JSON line: stream, seq, subject, envelope, and the payload
/// exactly as stored — `data` (the JSON text as it was written) for domain events,
/// `body` (the exact text) or `body_base64` (bytes that are not UTF-8) for raw
/// webhooks, so an exported webhook can be verified against its signature again.
pub fn event_json(ev: &wabridge_events::StoredEvent) -> String {
    use serde_json::value::RawValue;
    #[derive(serde::Serialize)]
    struct Line<'a> {
        stream: &'a str,
        seq: u64,
        subject: &'a str,
        envelope: &'a wabridge_events::Envelope,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<Box<RawValue>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        body: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        body_base64: Option<String>,
    }
    let text = std::str::from_utf8(&ev.payload).ok();
    // Domain data is our own one-line JSON: spliced in verbatim.
    let data = match (ev.stream, text) {
        (StreamKind::Domain, Some(t)) if !t.contains('\n') => {
            RawValue::from_string(t.to_string()).ok()
        }
        _ => None,
    };
    let body_base64 = text.is_none().then(|| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(&ev.payload)
    });
    let line = Line {
        stream: ev.stream.as_str(),
        seq: ev.seq,
        subject: &ev.subject,
        envelope: &ev.envelope,
        body: if data.is_none() { text } else { None },
        data,
        body_base64,
    };
    serde_json::to_string(&line).expect("an event line serialises")
}

async fn events(app: &App, action: EventsCommand, out: &mut impl Write) -> anyhow::Result<()> {
    let log = &app.ctx.log;
    let (filter, tail) = match action {
        EventsCommand::Tail(f) => (f, true),
        EventsCommand::Export(f) => (f, false),
        EventsCommand::VerifyWebhook { seq } => return verify_webhook(app, seq, out).await,
    };
    let streams = match filter.stream {
        StreamArg::Domain => vec![StreamKind::Domain],
        StreamArg::Raw => vec![StreamKind::Raw],
        StreamArg::All if tail => {
            anyhow::bail!("`events tail` follows one stream; give --stream domain or raw")
        }
        StreamArg::All => vec![StreamKind::Domain, StreamKind::Raw],
    };
    let workspace = filter.workspace.as_deref().map(slug).transpose()?;
    let until = filter
        .until
        .as_deref()
        .map(Timestamp::parse)
        .transpose()
        .context("--until must be RFC 3339")?;
    let since = filter
        .since
        .as_deref()
        .map(Timestamp::parse)
        .transpose()
        .context("--since must be RFC 3339")?;
    // By the envelope (a claim's subject is the global routing table, yet it is the
    // workspace's event), in constant memory: one page at a time.
    let keep = |ev: &wabridge_events::StoredEvent| {
        filter
            .event_type
            .as_deref()
            .is_none_or(|t| t == ev.envelope.event_type)
            && workspace
                .as_ref()
                .is_none_or(|w| ev.envelope.workspace.as_ref() == Some(w))
            && until.is_none_or(|u| ev.envelope.recorded_at < u)
    };
    for stream in streams {
        let mut from = match since {
            Some(t) => ReadFrom::Time(t),
            None if tail => ReadFrom::Seq(log.last_seq(stream).await? + 1),
            None => ReadFrom::Seq(1),
        };
        let head = log.last_seq(stream).await?;
        loop {
            let page = log.read(stream, from, None, 500).await?;
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
            let past_until =
                until.is_some_and(|u| page.last().is_some_and(|e| e.envelope.recorded_at >= u));
            if !tail && (last.is_some_and(|s| s >= head) || past_until) {
                break;
            }
        }
    }
    Ok(())
}

/// `events verify-webhook --seq N`: the stored bytes against the stored signature,
/// with every app secret configured.
async fn verify_webhook(app: &App, seq: u64, out: &mut impl Write) -> anyhow::Result<()> {
    let ev = app
        .ctx
        .log
        .read(StreamKind::Raw, ReadFrom::Seq(seq), None, 1)
        .await?
        .into_iter()
        .find(|e| e.seq == seq)
        .with_context(|| {
            format!("raw event {seq} is not in the log (retention may have removed it)")
        })?;
    anyhow::ensure!(
        !app.cfg.meta_app_secrets.is_empty(),
        "META_APP_SECRET is not set: nothing to verify with"
    );
    let signature = ev.envelope.signature.clone();
    let ok = wabridge_handlers::webhooks::verify_signature(
        &app.cfg.meta_app_secrets,
        signature.as_deref().map(str::as_bytes),
        &ev.payload,
    )
    .is_ok();
    let sha256 = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&ev.payload))
    };
    writeln!(
        out,
        "{}",
        serde_json::json!({"seq": seq, "verified": ok, "signature": signature, "body_sha256": sha256, "received_at": ev.envelope.recorded_at})
    )?;
    anyhow::ensure!(
        ok,
        "raw event {seq} does not match its signature with any configured app secret"
    );
    Ok(())
}

/// The developer tools: they need no log, database or key.
async fn dev(action: DevCommand, out: &mut impl Write) -> anyhow::Result<()> {
    let secret = || {
        std::env::var("META_APP_SECRET")
            .ok()
            .and_then(|s| s.split(',').next().map(|s| s.trim().to_string()))
            .filter(|s| !s.is_empty())
    };
    match action {
        DevCommand::GraphSim {
            listen,
            webhook_url,
            per_number_mps,
        } => {
            let app_secret = secret();
            if webhook_url.is_some() && app_secret.is_none() {
                anyhow::bail!("--webhook-url needs META_APP_SECRET to sign the status webhooks");
            }
            let cfg = crate::dev::graph_sim::SimConfig {
                app_secret,
                webhook_url,
                per_number_mps,
                ..Default::default()
            };
            crate::dev::graph_sim::run(listen, cfg).await?;
        }
        DevCommand::Webhook {
            kind,
            to,
            from,
            text,
            phone_number_id,
            waba_id,
            wamid,
            status,
            error_code,
            preference,
            button_text,
        } => {
            let secret = secret().ok_or_else(|| {
                anyhow::anyhow!("META_APP_SECRET is not set: it signs the webhook")
            })?;
            let spec = crate::dev::webhook::WebhookSpec {
                kind,
                phone_number_id,
                waba_id,
                from,
                text,
                wamid,
                status,
                error_code,
                preference,
                button_text,
                ..Default::default()
            };
            let code = crate::dev::webhook::post(&to, &secret, &spec).await?;
            writeln!(out, "{to} answered {code}")?;
            if !(200..300).contains(&code) {
                anyhow::bail!("{to} answered {code}");
            }
        }
    }
    Ok(())
}
