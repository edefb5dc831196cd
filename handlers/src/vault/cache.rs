//! An in-memory map of sealed tokens (ciphertext only, never plaintext), loaded from
//! the `tokens` read model and kept fresh from the log, so retrieval is a map
//! look-up plus one decryption.

use std::{collections::HashMap, sync::RwLock, time::Duration};

use futures_util::StreamExt;
use wabridge_events::{types::SealedToken, DomainEvent, EventLog, StoredEvent, StreamKind};
use wabridge_projections::{views::tokens, Store};

/// A cached token: its sealed form and status.
#[derive(Clone, Debug)]
pub struct CachedToken {
    /// Ciphertext.
    pub sealed: SealedToken,
    /// `valid`, `invalid` or `revoked`.
    pub status: String,
    /// Sequence of the last event applied to it (events apply in order per token).
    pub seq: u64,
}

/// The cache.
#[derive(Default)]
pub struct TokenCache {
    map: RwLock<HashMap<(String, String), CachedToken>>,
    applied: std::sync::atomic::AtomicU64,
}

impl TokenCache {
    /// Loads every token from the read model; returns the sequence to follow from.
    pub async fn load(&self, store: &Store) -> anyhow::Result<u64> {
        let seq = store.checkpoint("tokens").await?;
        let rows = tokens::all(store).await?;
        let mut map = self.map.write().expect("token cache lock");
        map.clear();
        for r in rows {
            map.insert(
                (r.workspace.clone(), r.phone_number_id.clone()),
                CachedToken {
                    sealed: r.sealed,
                    status: r.status,
                    seq: r.log_seq,
                },
            );
        }
        self.applied
            .store(seq, std::sync::atomic::Ordering::Release);
        Ok(seq)
    }

    /// The sealed token of a number, when cached.
    pub fn get(&self, workspace: &str, phone_number_id: &str) -> Option<CachedToken> {
        self.map
            .read()
            .expect("token cache lock")
            .get(&(workspace.to_string(), phone_number_id.to_string()))
            .cloned()
    }

    /// Folds one event (token events only).
    pub fn apply(&self, event: &StoredEvent) {
        if !event.envelope.event_type.starts_with("token.") {
            self.applied
                .fetch_max(event.seq, std::sync::atomic::Ordering::AcqRel);
            return;
        }
        let ws = event
            .envelope
            .workspace
            .as_ref()
            .map(|w| w.to_string())
            .unwrap_or_default();
        let Ok(decoded) = DomainEvent::decode(&event.envelope, &event.payload) else {
            return;
        };
        let mut map = self.map.write().expect("token cache lock");
        let seq = event.seq;
        let newer = |c: &CachedToken| c.seq < seq;
        match decoded {
            DomainEvent::TokenStored(t) => {
                let key = (ws, t.phone_number_id);
                if map.get(&key).is_none_or(newer) {
                    map.insert(
                        key,
                        CachedToken {
                            sealed: t.sealed,
                            status: "valid".into(),
                            seq,
                        },
                    );
                }
            }
            DomainEvent::TokenRewrapped(t) => {
                if let Some(c) = map.get_mut(&(ws, t.phone_number_id)).filter(|c| newer(c)) {
                    c.sealed = t.sealed;
                    c.seq = seq;
                }
            }
            DomainEvent::TokenRevoked(t) => {
                if let Some(c) = map.get_mut(&(ws, t.phone_number_id)).filter(|c| newer(c)) {
                    c.status = "revoked".into();
                    c.seq = seq;
                }
            }
            DomainEvent::TokenInvalidated(t) => {
                if let Some(c) = map.get_mut(&(ws, t.phone_number_id)).filter(|c| newer(c)) {
                    c.status = "invalid".into();
                    c.seq = seq;
                }
            }
            _ => {}
        }
        drop(map);
        self.applied
            .fetch_max(event.seq, std::sync::atomic::Ordering::AcqRel);
    }

    /// Loads, then follows the log for ever (reloading after a read failure).
    pub async fn run(&self, store: Store, log: std::sync::Arc<dyn EventLog>) -> anyhow::Result<()> {
        loop {
            let from = self.load(&store).await? + 1;
            let mut events = log.follow_ephemeral(StreamKind::Domain, from).await?;
            while let Some(item) = events.next().await {
                match item {
                    Ok(e) => self.apply(&e),
                    Err(e) => {
                        tracing::warn!(error = %e, "token cache: log read failed; reloading");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use wabridge_events::{
        types::{new_event, TokenRevoked, TokenStored},
        Actor, Namespace, Slug,
    };

    use super::*;

    fn stored<T: wabridge_events::types::EventData>(seq: u64, data: &T) -> StoredEvent {
        let ev = new_event(
            &Namespace::default(),
            Some(Slug::parse("acme").unwrap()),
            Actor::system("t"),
            data,
        );
        StoredEvent {
            stream: StreamKind::Domain,
            seq,
            subject: ev.subject,
            envelope: ev.envelope,
            payload: ev.payload,
            decoded: Default::default(),
        }
    }

    fn token(version: &str) -> TokenStored {
        TokenStored {
            phone_number_id: "1".into(),
            sealed: SealedToken {
                key_version: version.into(),
                nonce: "00".into(),
                ciphertext: "00".into(),
            },
            fingerprint: "f".into(),
            expires_at: None,
        }
    }

    #[test]
    fn applies_in_order_and_never_goes_back() {
        let cache = TokenCache::default();
        cache.apply(&stored(5, &token("v2")));
        // an older event arriving late (the follower after a direct apply) is ignored
        cache.apply(&stored(3, &token("v1")));
        assert_eq!(cache.get("acme", "1").unwrap().sealed.key_version, "v2");
        cache.apply(&stored(
            6,
            &TokenRevoked {
                phone_number_id: "1".into(),
            },
        ));
        assert_eq!(cache.get("acme", "1").unwrap().status, "revoked");
        cache.apply(&stored(7, &token("v3")));
        let c = cache.get("acme", "1").unwrap();
        assert_eq!(
            (c.status.as_str(), c.sealed.key_version.as_str(), c.seq),
            ("valid", "v3", 7)
        );
        assert!(cache.get("other", "1").is_none());
    }
}
