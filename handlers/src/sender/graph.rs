//! The Graph API client: the sender's `POST {base}/{version}/{phone_number_id}/messages`
//! with the number's token as `Authorization: Bearer`, and the calls of Embedded
//! Signup onboarding (the code exchange, `subscribed_apps`, `register`, the number's
//! details). Secrets are exposed only to build the header or the exchange's query;
//! no error text carries a URL (reqwest's would hold the query), and redirects are
//! never followed (they would carry it elsewhere).

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
    /// For media downloads: no deadline on the whole body (a large file streams for
    /// as long as it keeps coming), only on connecting and between reads.
    downloads: reqwest::Client,
}

impl Graph {
    /// A client with the call timeout.
    pub fn new(cfg: GraphConfig) -> anyhow::Result<Graph> {
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(64)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let downloads = reqwest::Client::builder()
            .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
            .read_timeout(cfg.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("wabridge/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Graph {
            cfg,
            http,
            downloads,
        })
    }

    /// Whether a media URL Meta gave may receive the number's token: https on Meta's
    /// media hosts (`lookaside.fbsbx.com`, `*.fbcdn.net`, `*.whatsapp.net`), or the
    /// configured Graph API's own host (a simulator).
    pub fn media_url_allowed(&self, url: &reqwest::Url) -> bool {
        let Some(host) = url.host_str() else {
            return false;
        };
        let own = reqwest::Url::parse(&self.cfg.base_url).ok();
        if own.as_ref().and_then(|u| u.host_str()) == Some(host)
            && own.as_ref().map(|u| u.scheme()) == Some(url.scheme())
        {
            return true;
        }
        url.scheme() == "https"
            && (host == "lookaside.fbsbx.com"
                || [".fbsbx.com", ".fbcdn.net", ".whatsapp.net"]
                    .iter()
                    .any(|s| host.ends_with(s)))
    }

    /// Starts downloading a media URL with the number's token; the answer's body is
    /// read by the caller as a stream.
    pub async fn download(
        &self,
        url: reqwest::Url,
        token: &SecretString,
    ) -> Result<reqwest::Response, String> {
        self.downloads
            .get(url)
            .header(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {}", token.expose_secret()),
            )
            .send()
            .await
            .map_err(|e| no_answer(&e))
    }

    /// The messages endpoint of a number.
    pub fn messages_url(&self, phone_number_id: &str) -> String {
        format!(
            "{}/{}/{}/messages",
            self.cfg.base_url, self.cfg.version, phone_number_id
        )
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{}/{}", self.cfg.base_url, self.cfg.version, path)
    }

    /// Exchanges an Embedded Signup code for a business token:
    /// `GET /oauth/access_token?client_id&client_secret&code`.
    pub async fn exchange_code(
        &self,
        app_id: &str,
        app_secret: &SecretString,
        code: &SecretString,
    ) -> Answer {
        let req = self.http.get(self.url("oauth/access_token")).query(&[
            ("client_id", app_id),
            ("client_secret", app_secret.expose_secret()),
            ("code", code.expose_secret()),
        ]);
        answer(req.send().await).await
    }

    /// `POST /{path}` with a bearer token and a JSON body.
    pub async fn post_json(
        &self,
        path: &str,
        token: &SecretString,
        body: &serde_json::Value,
    ) -> Answer {
        let req = self
            .http
            .post(self.url(path))
            .header(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {}", token.expose_secret()),
            )
            .json(body);
        answer(req.send().await).await
    }

    /// `GET /{path}?{query}` with a bearer token.
    pub async fn get_json(
        &self,
        path: &str,
        token: &SecretString,
        query: &[(&str, &str)],
    ) -> Answer {
        let req = self.http.get(self.url(path)).query(query).header(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {}", token.expose_secret()),
        );
        answer(req.send().await).await
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
                return CallOutcome::NoAnswer {
                    detail: no_answer(&e),
                }
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

/// What a call other than a send came to.
#[derive(Debug)]
pub enum Answer {
    /// 2xx with this JSON body (`Null` when it was not JSON).
    Ok(serde_json::Value),
    /// An answer that is not a success (Meta's error, when it sent its envelope).
    Rejected {
        /// HTTP status.
        status: u16,
        /// Meta's error.
        error: Option<MetaError>,
    },
    /// No answer in time, or no connection.
    NoAnswer {
        /// What happened (no secret, no URL in it).
        detail: String,
    },
}

/// What went wrong, in words without the URL (reqwest's error text holds the whole
/// URL, with its query; the headers never appear in it).
fn no_answer(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    format!("the Graph API call {what}")
}

async fn answer(res: Result<reqwest::Response, reqwest::Error>) -> Answer {
    let res = match res {
        Ok(r) => r,
        Err(e) => {
            return Answer::NoAnswer {
                detail: no_answer(&e),
            }
        }
    };
    let status = res.status().as_u16();
    let Ok(bytes) = res.bytes().await else {
        return Answer::NoAnswer {
            detail: "the Graph API answer was cut off".into(),
        };
    };
    if (200..300).contains(&status) {
        return Answer::Ok(serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null));
    }
    Answer::Rejected {
        status,
        error: parse_error(&bytes),
    }
}
