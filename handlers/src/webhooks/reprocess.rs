//! Processing stored webhooks again with the code as it is now, from a position of
//! the raw stream: `wabridge replay --projection webhook_processor --since T`.
//!
//! For the incident "a bad deploy mis-processed webhooks since T" when the bad
//! processor left out what it should have derived (an item kind it did not know, a
//! field it misread into nothing, a checkpoint moved past bodies it never split):
//! the fixed code splits those bodies again and appends what is missing. It only
//! adds. An item whose natural key is recorded was derived before and stays as it
//! is (domain events are immutable; a wrong one is corrected by a later event). It
//! stops where the live processor stood when it began: past that, the live
//! processor runs the same code.
//!
//! Attributing an old body with today's state is unsafe where that state changed
//! since, so an item is appended only when it routes by phone number to a number
//! claimed at or before the body arrived — not to a number claimed since (it may have
//! changed hands), nor by WABA, nor to nobody — and a consent signal it carries
//! (STOP, START, HELP, a suspected opt-out) only when the contact's consent has not
//! changed since the item: the contact's later word wins. Token invalidations a
//! `PARTNER_APP_UNINSTALLED` would derive are not replayed (a token stored since is
//! not the one the business took away). What is left out is counted by reason.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::Context;
use wabridge_events::{DomainEvent, NewEvent, ReadFrom, Slug, StoredEvent, StreamKind, Timestamp};
use wabridge_projections::{
    checkpoint,
    views::{consent, phone_numbers, webhook_items},
};

use super::{
    processor::{
        append_in_order, consent_contacts, is_uninstall, routed_item, target, with_number,
        Consents, NAME,
    },
    split::{split_webhook, Route},
};
use crate::commands::Ctx;

/// Raw events per page.
const PAGE: usize = 500;

/// What a reprocessing did (or, in a dry run, would do).
#[derive(
    Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct Reprocessed {
    /// The first raw sequence looked at (0: none).
    pub from: u64,
    /// The last one: where the live processor stood when this began.
    pub through: u64,
    /// Webhook bodies split again.
    pub bodies: u64,
    /// Domain events appended (a dry run: that would be), by event type.
    pub appended: BTreeMap<String, u64>,
    /// Items derived before (their natural key is recorded): left as they are.
    pub already_derived: u64,
    /// Items left out, by reason: `unrouted`, `waba_level`, `number_claimed_since`,
    /// `consent_changed_since`, `token_invalidation`, `unparsable_body`,
    /// `unparsable_item`.
    pub skipped: BTreeMap<String, u64>,
    /// Whether nothing was appended.
    pub dry_run: bool,
}

impl Reprocessed {
    /// Domain events appended in all.
    pub fn appended_total(&self) -> u64 {
        self.appended.values().sum()
    }

    /// One line: `raw FROM..THROUGH: N bodies; appended N (type n, ...); already
    /// derived N; skipped reason n, ...` (`skipped none` when nothing was).
    pub fn summary(&self) -> String {
        let list = |m: &BTreeMap<String, u64>| {
            m.iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "raw {}..{}: {} bodies; appended {}{}; already derived {}; skipped {}",
            self.from,
            self.through,
            self.bodies,
            self.appended_total(),
            if self.appended.is_empty() {
                String::new()
            } else {
                format!(" ({})", list(&self.appended))
            },
            self.already_derived,
            if self.skipped.is_empty() {
                "none".to_string()
            } else {
                list(&self.skipped)
            },
        )
    }

    fn skip(&mut self, reason: &str) {
        *self.skipped.entry(reason.to_string()).or_default() += 1;
    }
}

/// Splits the raw webhooks from `from` up to the live processor's checkpoint again
/// and appends the domain events they should have given and did not (nothing when
/// `dry_run`). `on_progress(position, through)` is called after each page.
pub async fn reprocess(
    ctx: &Ctx,
    from: ReadFrom,
    dry_run: bool,
    mut on_progress: impl FnMut(u64, u64) + Send,
) -> anyhow::Result<Reprocessed> {
    let through = {
        let mut conn = ctx.store.reads.acquire().await?;
        checkpoint::get(&mut conn, NAME).await?
    };
    // Route against every claim made up to now.
    ctx.fresh(
        "phone_numbers",
        &phone_numbers::routing_subject(ctx.log.namespace()),
    )
    .await?;
    let mut report = Reprocessed {
        through,
        dry_run,
        ..Reprocessed::default()
    };
    let mut at = from;
    loop {
        let page = ctx
            .log
            .read(StreamKind::Raw, at, None, PAGE)
            .await
            .context("reading the raw stream")?;
        let page: Vec<StoredEvent> = page.into_iter().filter(|e| e.seq <= through).collect();
        let Some(last) = page.last().map(|e| e.seq) else {
            break;
        };
        if report.from == 0 {
            report.from = page[0].seq;
        }
        reprocess_page(ctx, &page, &mut report).await?;
        on_progress(last, through);
        if last >= through {
            break;
        }
        at = ReadFrom::Seq(last + 1);
    }
    Ok(report)
}

async fn reprocess_page(
    ctx: &Ctx,
    page: &[StoredEvent],
    report: &mut Reprocessed,
) -> anyhow::Result<()> {
    let mut routes = HashMap::new();
    let mut claims: HashMap<String, Option<Timestamp>> = HashMap::new();
    let mut consents = Consents::new();
    // Per raw event, the (key, event) pairs that may be appended.
    // Each with the contacts it decides consent for (see `append_in_order`).
    let mut planned: Vec<(u64, String, NewEvent, Vec<String>)> = vec![];
    for raw in page {
        report.bodies += 1;
        let split = match split_webhook(&raw.payload, raw.seq) {
            Ok(split) => split,
            Err(_) => {
                report.skip("unparsable_body");
                continue;
            }
        };
        for _ in &split.failures {
            report.skip("unparsable_item");
        }
        for mut item in split.items {
            let (ws, key, number) = target(ctx, &item, &mut routes).await?;
            if is_uninstall(&item.event) {
                report.skip("token_invalidation");
            }
            let Some(ws) = ws else {
                report.skip("unrouted");
                continue;
            };
            let number_id = match &item.route {
                Route::PhoneNumber(id) => Some(id.clone()),
                Route::DisplayNumber { .. } => number.clone(),
                Route::Waba(_) => None,
            };
            let Some(number_id) = number_id else {
                report.skip("waba_level");
                continue;
            };
            if !claims.contains_key(&number_id) {
                let claimed = phone_numbers::get(&ctx.store, &number_id)
                    .await?
                    .and_then(|n| Timestamp::parse(&n.claimed_at).ok());
                claims.insert(number_id.clone(), claimed);
            }
            match claims[&number_id] {
                Some(claimed) if claimed <= raw.envelope.recorded_at => {}
                _ => {
                    report.skip("number_claimed_since");
                    continue;
                }
            }
            item.event = with_number(&item.event, number);
            let (own, derived) = routed_item(ctx, raw, &item, &ws, &key, &mut consents).await?;
            planned.push((raw.seq, key, own, vec![]));
            for (derived_key, event, new) in derived {
                if consent_changed_since(ctx, &ws, &event, item.occurred_at).await? {
                    report.skip("consent_changed_since");
                    continue;
                }
                let contacts = consent_contacts(&ws, &event);
                planned.push((raw.seq, derived_key, new, contacts));
            }
        }
    }
    let keys: Vec<&str> = planned.iter().map(|(_, k, ..)| k.as_str()).collect();
    let mut done: HashSet<String> = webhook_items::processed(&ctx.store, &keys).await?;
    let mut appends = vec![];
    let mut recorded: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for (raw_seq, key, new, contacts) in &planned {
        if !done.insert(key.clone()) {
            report.already_derived += 1;
            continue;
        }
        *report
            .appended
            .entry(new.envelope.event_type.clone())
            .or_default() += 1;
        if !report.dry_run {
            appends.push((new, contacts.as_slice()));
            recorded.entry(*raw_seq).or_default().push(key.clone());
        }
    }
    // In order, as the processor appends (a contact's later decision never stored
    // ahead of an earlier one).
    append_in_order(ctx, appends)
        .await
        .context("appending reprocessed webhook items")?;
    if !recorded.is_empty() {
        // Recorded after the appends (each with its key as the dedup id), without
        // moving the processor's checkpoint: a crash in between appends nothing twice
        // within the duplicate window, and a rerun finds the keys.
        let mut conn = ctx.store.pool.acquire().await?;
        for (raw_seq, keys) in &recorded {
            webhook_items::record(&mut conn, keys, *raw_seq).await?;
        }
    }
    Ok(())
}

/// Whether the contact a derived consent event is about changed its consent after
/// `at` (the item's time).
async fn consent_changed_since(
    ctx: &Ctx,
    ws: &Slug,
    event: &DomainEvent,
    at: Timestamp,
) -> anyhow::Result<bool> {
    let contact = match event {
        DomainEvent::ContactOptedOut(e) => &e.contact,
        DomainEvent::ContactOptedIn(e) => &e.contact,
        DomainEvent::ContactHelpRequested(e) => &e.contact,
        DomainEvent::ContactOptoutSuspected(e) => &e.contact,
        _ => return Ok(false),
    };
    let history = consent::get(&ctx.store, ws.as_str(), &contact.key())
        .await?
        .history;
    Ok(history
        .iter()
        .filter_map(|h| Timestamp::parse(&h.at).ok())
        .any(|changed| changed > at))
}
