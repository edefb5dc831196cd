//! The one Graph API call the sender makes: `POST {base}/{version}/{phone_number_id}/messages`
//! with the number's token as `Authorization: Bearer`. The token is exposed only to
//! build that header.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::sending::meta_errors::{parse_error, MetaError};

/// Where and how to call Meta.
#[derive(Clone, Debug)]
pub struct GraphConfig {
    /// `META_GRAPH_URL` (no trailing slash).
    pub base_url: String,
    /// `META_GRAPH_VERSION`.
    pub version: String,
    /// One call's deadline.
    pub timeout: Duration,
}

/// What a call came to.
#[derive(Debug)]
pub enum CallOutcome {
    /// 2xx with a wamid.
    Accepted {
        /// Meta's message id.
        wamid: String,
    },
    /// An answer that is not a success (Meta's error, when it sent its envelope).
    Rejected {
        /// HTTP status.
        status: u16,
        /// Meta's error.
        error: Option<MetaError>,
    },
    /// No answer in time, or no connection.
    NoAnswer {
        /// What happened (no secret in it).
        detail: String,
    },
}

/// A Graph API client.
#[derive(Clone)]
pub struct Graph {
    cfg: GraphConfig,
    http: reqwest::Client,
}

impl Graph {
    /// A client with the call timeout.
    pub fn new(cfg: GraphConfig) -> anyhow::Result<Graph> {
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(64)
            .build()?;
        Ok(Graph { cfg, http })
    }

    /// The messages endpoint of a number.
    pub fn messages_url(&self, phone_number_id: &str) -> String {
        format!(
            "{}/{}/{}/messages",
            self.cfg.base_url, self.cfg.version, phone_number_id
        )
    }

    /// Posts a message body.
    pub async fn send(
        &self,
        phone_number_id: &str,
        token: &SecretString,
        body: &serde_json::Value,
    ) -> CallOutcome {
        let res = self
            .http
            .post(self.messages_url(phone_number_id))
            .header(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {}", token.expose_secret()),
            )
            .json(body)
            .send()
            .await;
        let res = match res {
            Ok(r) => r,
            Err(e) => {
                let what = if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "could not connect"
                } else {
                    "request failed"
                };
                // reqwest's error text can hold the URL, never the header.
                return CallOutcome::NoAnswer {
                    detail: format!("the Graph API call {what}"),
                };
            }
        };
        let status = res.status().as_u16();
        let bytes = match res.bytes().await {
            Ok(b) => b,
            Err(_) => {
                return CallOutcome::NoAnswer {
                    detail: "the Graph API answer was cut off".into(),
                }
            }
        };
        if (200..300).contains(&status) {
            let wamid = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.pointer("/messages/0/id")?.as_str().map(str::to_owned));
            return match wamid {
                Some(wamid) => CallOutcome::Accepted { wamid },
                None => CallOutcome::Rejected {
                    status,
                    error: None,
                },
            };
        }
        CallOutcome::Rejected {
            status,
            error: parse_error(&bytes),
        }
    }
}
