//! The workspace's event feed, shared by the pull API and the outbound webhooks:
//! which event types are public, their stable shape, opaque cursors, and the
//! [`Hub`] that follows the log once per process to wake long-polls and delivery
//! workers (with a short per-workspace cache of recent events, so a caught-up
//! reader never reads the log).

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::Engine;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use wabridge_events::{EventLog, LogError, ReadFrom, Slug, StoredEvent, StreamKind};

/// The event types a business's apps receive: what their customers and Meta said,
/// what happened to their sends, consent, onboarding results, and their endpoints
/// being disabled. Internal events (keys, tokens, audit, attempts) are not public,
/// and neither is anything carrying sealed material.
pub const PUBLIC_TYPES: &[&str] = &[
    "message.received",
    "message.status_updated",
    "message.send_requested",
    "message.send_blocked",
    "message.sent",
    "message.send_retrying",
    "message.send_failed",
    "message.send_unknown",
    "contact.marketing_preference",
    "contact.user_id_changed",
    "contact.opted_out",
    "contact.opted_in",
    "contact.help_requested",
    "contact.optout_suspected",
    "contact.optout_suspicion_resolved",
    "template.status_updated",
    "template.quality_updated",
    "number.updated",
    "account.updated",
    "onboarding.completed",
    "onboarding.failed",
    "token.invalidated",
    "endpoint.disabled",
];

/// Whether an event type is in the feed.
pub fn is_public(event_type: &str) -> bool {
    PUBLIC_TYPES.contains(&event_type)
}

/// One event as a business's app sees it, in the feed and as a webhook's body.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FeedItem {
    /// The event's id (a UUIDv7; also the `webhook-id` of its deliveries).
    pub id: String,
    /// Its type, e.g. `message.received`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// When it happened (for what Meta sent: Meta's time), RFC 3339.
    pub occurred_at: String,
    /// The event's data, as its JSON Schema (`schemas/events/`) describes it: the
    /// JSON text as it was logged, never parsed and written again.
    #[schemars(with = "serde_json::Value")]
    pub data: Box<serde_json::value::RawValue>,
}

impl FeedItem {
    /// The public shape of a stored domain event.
    pub fn of(event: &StoredEvent) -> anyhow::Result<FeedItem> {
        let data = String::from_utf8(event.payload.to_vec())?;
        Ok(FeedItem {
            id: event.envelope.id.to_string(),
            event_type: event.envelope.event_type.clone(),
            occurred_at: event.envelope.occurred_at.to_string(),
            data: serde_json::value::RawValue::from_string(data)?,
        })
    }

    /// The item as JSON bytes (what an endpoint receives).
    pub fn json(event: &StoredEvent) -> anyhow::Result<Vec<u8>> {
        Ok(serde_json::to_vec(&FeedItem::of(event)?)?)
    }
}

/// An opaque cursor: a position in the domain log (stable across restarts and
/// rebuilds, which never change the log).
pub fn encode_cursor(seq: u64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("wbc1:{seq}"))
}

/// The position a cursor names; `None` when it is not one this API gave.
pub fn decode_cursor(cursor: &str) -> Option<u64> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    std::str::from_utf8(&bytes)
        .ok()?
        .strip_prefix("wbc1:")?
        .parse()
        .ok()
}

/// A page of a workspace's events.
#[derive(Debug, Default)]
pub struct Page {
    /// Accepted events, in log order.
    pub events: Vec<Arc<StoredEvent>>,
    /// Every event of the workspace up to this position was looked at: read on
    /// from here.
    pub through: u64,
}

/// Most events one read of the log looks at (a page of a sparse filter may read
/// several, up to [`SCAN_BUDGET`]).
const LOG_PAGE: usize = 500;
/// Most events one page request looks at before answering with what it has.
const SCAN_BUDGET: usize = 5_000;
/// Recent public events kept per watched workspace.
const RECENT: usize = 1_024;

struct Watched {
    tx: watch::Sender<u64>,
    /// Every public event of the workspace with a sequence above `covered_from`
    /// (and up to the hub's position) is in `recent`.
    covered_from: u64,
    recent: VecDeque<Arc<StoredEvent>>,
}

struct State {
    /// The last domain sequence the hub has seen.
    position: u64,
    watched: HashMap<String, Watched>,
}

/// Follows the domain log for this process; readers of a workspace subscribe to be
/// woken when one of its events arrives.
pub struct Hub {
    log: Arc<dyn EventLog>,
    state: Mutex<State>,
}

impl Hub {
    /// A hub over the log (start [`Hub::run`] to make it follow).
    pub fn new(log: Arc<dyn EventLog>) -> Arc<Hub> {
        Arc::new(Hub {
            log,
            state: Mutex::new(State {
                position: 0,
                watched: HashMap::new(),
            }),
        })
    }

    /// A receiver that changes whenever an event of the workspace arrives (its value
    /// is the event's sequence). Subscribe before reading, so nothing is missed.
    pub fn subscribe(&self, ws: &Slug) -> watch::Receiver<u64> {
        let mut st = self.state.lock().expect("hub lock");
        let position = st.position;
        st.watched
            .entry(ws.to_string())
            .or_insert_with(|| Watched {
                tx: watch::channel(position).0,
                covered_from: position,
                recent: VecDeque::new(),
            })
            .tx
            .subscribe()
    }

    /// Follows the log for ever from its head (after a read failure, from the head
    /// again: the caches restart empty, readers fall back to the log).
    pub async fn run(self: Arc<Self>) -> anyhow::Result<()> {
        loop {
            let head = self.log.last_seq(StreamKind::Domain).await?;
            {
                let mut st = self.state.lock().expect("hub lock");
                st.position = head;
                for w in st.watched.values_mut() {
                    w.recent.clear();
                    w.covered_from = head;
                    w.tx.send_replace(head);
                }
            }
            let mut events = self
                .log
                .follow_ephemeral(StreamKind::Domain, head + 1)
                .await?;
            while let Some(item) = events.next().await {
                match item {
                    Ok(e) => self.observe(e),
                    Err(e) => {
                        tracing::warn!(error = %e, "event hub: log read failed; following again");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        break;
                    }
                }
            }
        }
    }

    fn observe(&self, event: StoredEvent) {
        let mut st = self.state.lock().expect("hub lock");
        st.position = st.position.max(event.seq);
        let Some(ws) = event.envelope.workspace.as_ref() else {
            return;
        };
        let Some(w) = st.watched.get_mut(ws.as_str()) else {
            return;
        };
        if w.tx.receiver_count() == 0 {
            st.watched.remove(ws.as_str());
            return;
        }
        let seq = event.seq;
        if is_public(&event.envelope.event_type) {
            w.recent.push_back(Arc::new(event));
            while w.recent.len() > RECENT {
                if let Some(old) = w.recent.pop_front() {
                    w.covered_from = old.seq;
                }
            }
        }
        w.tx.send_replace(seq);
    }

    /// Up to `limit` public events of the workspace after `after` that `accept`
    /// takes (by type), in log order: from the cache when it covers the position,
    /// else from the log.
    pub async fn page(
        &self,
        ws: &Slug,
        after: u64,
        limit: usize,
        accept: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Page, LogError> {
        if let Some(page) = self.cached(ws, after, limit, accept) {
            return Ok(page);
        }
        let filter = self.log.namespace().workspace_filter(ws);
        let mut page = Page {
            events: vec![],
            through: after,
        };
        let mut scanned = 0;
        while page.events.len() < limit && scanned < SCAN_BUDGET {
            let batch = self
                .log
                .read(
                    StreamKind::Domain,
                    ReadFrom::Seq(page.through + 1),
                    Some(&filter),
                    LOG_PAGE,
                )
                .await?;
            if batch.is_empty() {
                break;
            }
            scanned += batch.len();
            for ev in batch {
                if page.events.len() == limit {
                    break;
                }
                page.through = ev.seq;
                let t = ev.envelope.event_type.as_str();
                if is_public(t) && accept(t) {
                    page.events.push(Arc::new(ev));
                }
            }
        }
        Ok(page)
    }

    fn cached(
        &self,
        ws: &Slug,
        after: u64,
        limit: usize,
        accept: &(dyn Fn(&str) -> bool + Sync),
    ) -> Option<Page> {
        let st = self.state.lock().expect("hub lock");
        let w = st.watched.get(ws.as_str())?;
        if after < w.covered_from || after > st.position {
            return None;
        }
        let mut page = Page {
            events: vec![],
            through: st.position,
        };
        for ev in w.recent.iter().filter(|e| e.seq > after) {
            if page.events.len() == limit {
                // More are waiting: the page ends at the last one it holds.
                page.through = page.events.last().map(|e| e.seq).unwrap_or(after);
                break;
            }
            if accept(&ev.envelope.event_type) {
                page.events.push(ev.clone());
            }
        }
        Some(page)
    }

    /// As [`Hub::page`], waiting up to `wait` for an event when there is none yet
    /// (a long-poll): answers as soon as one arrives.
    pub async fn wait_page(
        &self,
        ws: &Slug,
        after: u64,
        limit: usize,
        accept: &(dyn Fn(&str) -> bool + Sync),
        wait: Duration,
    ) -> Result<Page, LogError> {
        let mut rx = self.subscribe(ws);
        let deadline = tokio::time::Instant::now() + wait;
        let mut after = after;
        loop {
            let page = self.page(ws, after, limit, accept).await?;
            if !page.events.is_empty() || wait.is_zero() {
                return Ok(page);
            }
            after = page.through.max(after);
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => {
                    return Ok(Page {
                        events: vec![],
                        through: after,
                    })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_what_we_did_not_give() {
        for seq in [0, 1, 42, u64::MAX] {
            assert_eq!(decode_cursor(&encode_cursor(seq)), Some(seq));
        }
        assert_eq!(decode_cursor("42"), None);
        assert_eq!(decode_cursor(""), None);
        assert_eq!(decode_cursor("d2JjMTp4"), None); // "wbc1:x"
    }

    #[test]
    fn the_item_carries_the_logged_data_as_it_was_written() {
        use wabridge_events::{types::new_event, Actor, Namespace};
        let ev = new_event(
            &Namespace::default(),
            Some(Slug::parse("acme").unwrap()),
            Actor::system("t"),
            &wabridge_events::types::EndpointDeleted {
                endpoint_id: "ep_\"1".into(),
            },
        );
        let stored = StoredEvent {
            stream: StreamKind::Domain,
            seq: 7,
            subject: ev.subject.clone(),
            envelope: ev.envelope.clone(),
            payload: ev.payload.clone(),
            decoded: Default::default(),
        };
        let bytes = FeedItem::json(&stored).unwrap();
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(
            text.ends_with(&format!(
                ",\"data\":{}}}",
                std::str::from_utf8(&ev.payload).unwrap()
            )),
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["id"], ev.envelope.id.to_string());
        assert_eq!(v["type"], "endpoint.deleted");
        assert_eq!(v["data"]["endpoint_id"], "ep_\"1");
    }

    #[test]
    fn nothing_sealed_or_internal_is_public() {
        for t in [
            "token.stored",
            "onboarding.started",
            "endpoint.created",
            "endpoint.secret_rotated",
            "delivery.attempted",
            "api_key.created",
            "access.denied",
        ] {
            assert!(!is_public(t), "{t}");
        }
        for t in PUBLIC_TYPES {
            assert!(
                wabridge_events::types::ALL.iter().any(|e| e.name == *t),
                "{t} is a type"
            );
        }
    }
}
