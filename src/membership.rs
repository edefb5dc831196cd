//! The instances running workers on one log, and which of them each unit of work
//! belongs to.
//!
//! Every workers instance renews its membership each lease round: one map
//! `holder → expires at` in the log's key-value store, written by compare-and-set,
//! so two instances renewing at once never lose each other's entry. A member that
//! stops renewing (it died, or lost the log) drops out once its entry expires. The
//! units are dealt round-robin over the live members in a fixed order, so with two
//! instances each runs about half of them; a unit's lease still decides who runs it
//! (a member hands a unit over by releasing its lease, and the owner takes it).

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use wabridge_events::EventLog;

const BUCKET: &str = "workers";
const KEY: &str = "members";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn decode(value: &[u8]) -> BTreeMap<String, u64> {
    // An unreadable map is rebuilt by the members' next renewals.
    serde_json::from_slice(value).unwrap_or_default()
}

/// Renews `me` for `ttl`, drops the members whose entry expired or that `dead`
/// says died, and returns the live members (sorted, `me` among them).
pub async fn renew(
    log: &dyn EventLog,
    me: &str,
    ttl: Duration,
    dead: impl Fn(&str) -> bool,
) -> anyhow::Result<Vec<String>> {
    for _ in 0..20 {
        let current = log
            .kv_get(BUCKET, KEY)
            .await
            .context("reading the workers' members")?;
        let (mut members, revision) = match current {
            Some(e) => (decode(&e.value), e.revision),
            None => (BTreeMap::new(), 0),
        };
        let now = now_ms();
        members.retain(|m, expires| m != me && *expires > now && !dead(m));
        members.insert(me.to_string(), now + ttl.as_millis() as u64);
        let value = serde_json::to_vec(&members)?;
        if log
            .kv_cas(BUCKET, KEY, value.into(), revision)
            .await
            .context("renewing this instance's membership")?
            .is_some()
        {
            return Ok(members.into_keys().collect());
        }
    }
    anyhow::bail!("the workers' members kept changing while renewing")
}

/// Removes `me` (on a graceful stop: its units move at once, not after its entry
/// expires). Best effort.
pub async fn leave(log: &dyn EventLog, me: &str) {
    for _ in 0..5 {
        let Ok(Some(current)) = log.kv_get(BUCKET, KEY).await else {
            return;
        };
        let mut members = decode(&current.value);
        if members.remove(me).is_none() {
            return;
        }
        let Ok(value) = serde_json::to_vec(&members) else {
            return;
        };
        if let Ok(Some(_)) = log
            .kv_cas(BUCKET, KEY, value.into(), current.revision)
            .await
        {
            return;
        }
    }
}

/// The member unit `index` (of the fixed list of units) belongs to: dealt
/// round-robin over the sorted members. `None` when there is none.
pub fn owner(index: usize, members: &[String]) -> Option<&str> {
    if members.is_empty() {
        return None;
    }
    Some(members[index % members.len()].as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_dealt_evenly_and_all_to_a_lone_member() {
        let two = vec!["a".to_string(), "b".to_string()];
        let owners: Vec<_> = (0..7).map(|i| owner(i, &two).unwrap()).collect();
        assert_eq!(owners.iter().filter(|o| **o == "a").count(), 4);
        assert_eq!(owners.iter().filter(|o| **o == "b").count(), 3);
        let one = vec!["b".to_string()];
        assert!((0..7).all(|i| owner(i, &one) == Some("b")));
        assert_eq!(owner(0, &[]), None);
    }
}
