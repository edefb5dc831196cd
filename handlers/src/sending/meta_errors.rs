//! What to do with Meta's answer to a send: parse the Graph API error envelope
//! ([`parse_error`]), decide between retrying and giving up ([`classify`]), and how long to
//! wait before the next attempt ([`backoff`]). Pure: the caller supplies the HTTP status, the
//! body and the randomness.
//!
//! Meta recommends branching on the numeric `code` (and `details`), never on titles, and
//! `error_subcode` is not returned from v16.0 (whatsapp-cloud-api.md §2.2), so only `code`
//! (and, for codes not in the table, the HTTP status) decides.
//!
//! # Classification
//!
//! `REF` is `shared/reference/whatsapp-cloud-api.md` §2.3, `R2` is
//! `shared/reference/round2-facts.md`, `[M]` is Meta's error codes page
//! (MD/support/error-codes, read from a mirror fetched 2026-09-11), `[C]` pywa's `errors.py`.
//!
//! | code | meaning | verdict | reason | source |
//! |---|---|---|---|---|
//! | 130429 | Cloud API throughput reached (per-number mps) | retry, number | `throughput_limited` | REF |
//! | 131057 | account in maintenance mode (e.g. throughput upgrade, ≤ 1 min) | retry, number | `maintenance_mode` | REF |
//! | 4 | app reached its API call rate limit | retry, number | `app_rate_limited` | REF |
//! | 80007 | WABA reached its rate limit | retry, number | `waba_rate_limited` | REF |
//! | 131056 | pair rate limit: too many messages to the same recipient | retry, recipient | `pair_rate_limited` | REF |
//! | 1, 131000 | unknown error / possible server error | retry, once | `meta_unknown_error` | REF |
//! | 2, 131016, 133004 | service temporarily unavailable or overloaded | retry, once | `meta_service_unavailable` | REF (133004: [M]) |
//! | 190, 0 | access token expired or invalidated | token invalid | `token_invalid` | REF |
//! | 131050 | recipient stopped marketing messages | marketing opt-out | `marketing_opted_out` | REF |
//! | 3, 10, 200–299, 131005 | permission not granted or removed | permanent | `permission_denied` | [M] |
//! | 131026, 131021, 131030 | undeliverable: not on WhatsApp, old client, ToS; sender = recipient; not in a test number's allowed list | permanent | `invalid_recipient` | REF; [M]; [C] |
//! | 130403 | the business has blocked this user | permanent | `recipient_blocked` | REF |
//! | 131047 | more than 24 h since the recipient last replied | permanent | `outside_service_window` | REF |
//! | 131049 | not delivered "to maintain healthy ecosystem engagement" (per-user marketing limit) | permanent | `per_user_marketing_limit` | REF, [M] ("retrying … will only result in another error") |
//! | 131048 | spam rate limit (earlier messages blocked or flagged) | permanent | `spam_rate_limited` | REF |
//! | 131064 | messaging limit for template classification violations | permanent | `template_classification_limit` | REF |
//! | 131063 | marketing templates disabled on Cloud API for this WABA | permanent | `marketing_disabled` | [M] |
//! | 130472 | not sent as part of an experiment | permanent | `experiment_holdout` | [M] |
//! | 100, 131008, 131009, 135000 | invalid, missing or misspelled parameter | permanent | `invalid_parameter` | [M] |
//! | 131051 | unsupported message type | permanent | `unsupported_message_type` | [M] |
//! | 131052, 131053 | media could not be downloaded / uploaded (e.g. MIME mismatch) | permanent | `media_error` | [M], R2 §3 |
//! | 132000–132016, 132018 | template errors: parameter count or format, missing or unapproved in that language, text too long, policy, paused, disabled | permanent | `template_error` | REF, [M] |
//! | 132068, 132069 | flow blocked / throttled | permanent | `flow_error` | [M] |
//! | 368 | WABA restricted or disabled for a policy violation | permanent | `policy_violation` | REF |
//! | 131031 | WABA restricted or disabled, or data (e.g. 2-step PIN) did not verify | permanent | `account_restricted` | REF |
//! | 130497 | WABA may not message users in that country | permanent | `country_restricted` | [M] |
//! | 131042, 134011 | payment method problem / Payments terms not accepted | permanent | `payment_issue` | REF, [M] |
//! | 131045, 133010, 33 | number not registered (or deleted) | permanent | `number_not_registered` | REF, [M] |
//! | 133016 | too many register/deregister attempts (blocked 72 h) | permanent | `registration_rate_limited` | REF |
//! | 131037 | 555 number without an approved display name | permanent | `display_name_not_approved` | [M] |
//! | 131062 | business-scoped user id recipients not supported for this message | permanent | `bsuid_not_supported` | R2 §1.4 |
//!
//! A code not in the table is decided by the HTTP status:
//!
//! | status | verdict | reason |
//! |---|---|---|
//! | none (timeout, connection failed) | retry, once | `no_response` |
//! | 429 | retry, number | `http_429` |
//! | 5xx | retry, once | `http_5xx` |
//! | any other (4xx; an error body with 1xx–3xx) | permanent | `meta_rejected` |
//!
//! A code in the table wins over the status: a known permanent code is not retried on a 5xx,
//! and 130429 is retried whatever the status.
//!
//! Retrying after a timeout can send a message twice: Meta may have accepted the first request
//! before the connection failed, and the Cloud API takes no idempotency key.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An error Meta returned, from the Graph API envelope or a status webhook's `errors[]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct MetaError {
    /// Meta's numeric error code (`error.code`), the field to branch on.
    pub code: i64,
    /// The Graph API subcode (`error.error_subcode`); deprecated, not returned from v16.0.
    pub subcode: Option<i64>,
    /// A short title: `error_user_title`, else the webhook error's `title`, else the title
    /// part of a `message` of the form `(#130429) Rate limit hit`.
    pub title: Option<String>,
    /// `error.message`, e.g. `(#130429) Rate limit hit`.
    pub message: Option<String>,
    /// `error.error_data.details`, Meta's description of the likely cause.
    pub details: Option<String>,
    /// `error.fbtrace_id`, for Meta support.
    pub fbtrace_id: Option<String>,
}

/// Parses Meta's error envelope `{"error": {"message", "type", "code", "error_subcode",
/// "error_data": {"details"}, "fbtrace_id", "error_user_title", …}}` (whatsapp-cloud-api.md
/// §2.2). `None` when the body is not JSON, has no `error` object, or the error has no
/// integer `code`.
pub fn parse_error(body: &[u8]) -> Option<MetaError> {
    let v: Value = serde_json::from_slice(body).ok()?;
    from_error_object(v.get("error")?)
}

/// Reads one error object: the `error` of a Graph API response, or an element of a status
/// webhook's `errors[]` (`{code, title, message, error_data: {details}}`,
/// whatsapp-cloud-api.md §1.8). `None` without an integer `code` (a numeric string is
/// accepted too).
pub fn from_error_object(e: &Value) -> Option<MetaError> {
    let obj = e.as_object()?;
    let code = int(obj.get("code")?)?;
    let text = |key: &str| {
        obj.get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let message = text("message");
    let title = text("error_user_title")
        .or_else(|| text("title"))
        .or_else(|| message.as_deref().and_then(|m| title_from_message(m, code)));
    Some(MetaError {
        code,
        subcode: obj.get("error_subcode").and_then(int),
        title,
        message,
        details: obj
            .get("error_data")
            .and_then(|d| d.get("details"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
        fbtrace_id: text("fbtrace_id"),
    })
}

fn int(v: &Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

/// `(#130429) Rate limit hit` → `Rate limit hit` (Meta: the message is "combination of the
/// error code and its title").
fn title_from_message(message: &str, code: i64) -> Option<String> {
    let rest = message.strip_prefix(&format!("(#{code})"))?.trim();
    (!rest.is_empty()).then(|| rest.to_owned())
}

/// What to do with a failed send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Try again after [`backoff`]; `scope` says what to pace.
    Retry {
        /// What the pause applies to.
        scope: RetryScope,
        /// A stable snake_case reason (see the module's table).
        reason: &'static str,
    },
    /// Give up: the message fails with this stable snake_case reason.
    Permanent {
        /// A stable snake_case reason (see the module's table).
        reason: &'static str,
    },
    /// The access token is expired or invalid: mark it invalid and stop sending from the
    /// number until a new token is stored.
    TokenInvalid,
    /// The recipient stopped marketing messages (131050): record the marketing opt-out; do not
    /// retry.
    MarketingOptOut,
}

impl Verdict {
    /// The stable reason: the variant's `reason`, `token_invalid` or `marketing_opted_out`.
    pub fn reason(&self) -> &'static str {
        match self {
            Verdict::Retry { reason, .. } | Verdict::Permanent { reason } => reason,
            Verdict::TokenInvalid => "token_invalid",
            Verdict::MarketingOptOut => "marketing_opted_out",
        }
    }

    /// Whether the send should be tried again.
    pub fn is_retry(&self) -> bool {
        matches!(self, Verdict::Retry { .. })
    }
}

/// What a retry pauses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RetryScope {
    /// Pace the whole sending number (throughput 130429, maintenance 131057, and the app and
    /// WABA rate limits 4 and 80007): every message from it waits.
    Number,
    /// Only this recipient waits (pair rate limit 131056); other recipients are unaffected.
    Recipient,
    /// A transient failure of this one request (1, 2, 131000, 131016, 5xx, timeouts).
    Once,
}

/// The verdict for a known code, or `None` for a code not in the table.
fn by_code(code: i64) -> Option<Verdict> {
    use RetryScope::*;
    let retry = |scope, reason| Some(Verdict::Retry { scope, reason });
    let permanent = |reason| Some(Verdict::Permanent { reason });
    match code {
        130429 => retry(Number, "throughput_limited"),
        131057 => retry(Number, "maintenance_mode"),
        4 => retry(Number, "app_rate_limited"),
        80007 => retry(Number, "waba_rate_limited"),
        131056 => retry(Recipient, "pair_rate_limited"),
        1 | 131000 => retry(Once, "meta_unknown_error"),
        2 | 131016 | 133004 => retry(Once, "meta_service_unavailable"),

        190 | 0 => Some(Verdict::TokenInvalid),
        131050 => Some(Verdict::MarketingOptOut),

        3 | 10 | 200..=299 | 131005 => permanent("permission_denied"),
        131026 | 131021 | 131030 => permanent("invalid_recipient"),
        130403 => permanent("recipient_blocked"),
        131047 => permanent("outside_service_window"),
        131049 => permanent("per_user_marketing_limit"),
        131048 => permanent("spam_rate_limited"),
        131064 => permanent("template_classification_limit"),
        131063 => permanent("marketing_disabled"),
        130472 => permanent("experiment_holdout"),
        100 | 131008 | 131009 | 135000 => permanent("invalid_parameter"),
        131051 => permanent("unsupported_message_type"),
        131052 | 131053 => permanent("media_error"),
        132000..=132016 | 132018 => permanent("template_error"),
        132068 | 132069 => permanent("flow_error"),
        368 => permanent("policy_violation"),
        131031 => permanent("account_restricted"),
        130497 => permanent("country_restricted"),
        131042 | 134011 => permanent("payment_issue"),
        131045 | 133010 | 33 => permanent("number_not_registered"),
        133016 => permanent("registration_rate_limited"),
        131037 => permanent("display_name_not_approved"),
        131062 => permanent("bsuid_not_supported"),
        _ => None,
    }
}

/// Decides what to do with a failed send. `http_status` is `None` when the request timed out
/// or the connection failed; `error` is Meta's parsed error, when the body had one. See the
/// module's tables.
pub fn classify(http_status: Option<u16>, error: Option<&MetaError>) -> Verdict {
    if let Some(verdict) = error.and_then(|e| by_code(e.code)) {
        return verdict;
    }
    match http_status {
        None => Verdict::Retry {
            scope: RetryScope::Once,
            reason: "no_response",
        },
        Some(429) => Verdict::Retry {
            scope: RetryScope::Number,
            reason: "http_429",
        },
        Some(500..=599) => Verdict::Retry {
            scope: RetryScope::Once,
            reason: "http_5xx",
        },
        Some(_) => Verdict::Permanent {
            reason: "meta_rejected",
        },
    }
}

/// How many attempts a message gets in all (the first try and 7 retries). When the last one
/// fails with a retryable verdict too, the message is failed with that verdict's reason; with
/// full-jitter waits of at most 1, 2, 4 … 64 s between them, that is at most about 2 minutes
/// of waiting (plus any pacing the number or the recipient imposes).
pub const MAX_ATTEMPTS: u32 = 8;

/// The first wait's ceiling.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);

/// No wait is longer than this.
pub const BACKOFF_CAP: Duration = Duration::from_secs(300);

/// The wait after a failed attempt: exponential from [`BACKOFF_BASE`] (1 s), doubling, capped
/// at [`BACKOFF_CAP`] (5 minutes), with "full jitter": the wait is `ceiling × jitter`, where the
/// caller supplies `jitter` uniformly from `0.0..1.0` (values outside are clamped; NaN counts
/// as 1.0).
///
/// `attempt` is the zero-based index of the attempt that just failed: 0 after the first try
/// (a wait of at most 1 s), 1 after the first retry (at most 2 s), and so on.
pub fn backoff(attempt: u32, jitter: f64) -> Duration {
    let ceiling = match 1u64.checked_shl(attempt) {
        Some(factor) if factor <= BACKOFF_CAP.as_secs() => {
            BACKOFF_BASE.saturating_mul(factor as u32).min(BACKOFF_CAP)
        }
        _ => BACKOFF_CAP,
    };
    let jitter = if jitter.is_nan() {
        1.0
    } else {
        jitter.clamp(0.0, 1.0)
    };
    ceiling.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(code: i64) -> MetaError {
        MetaError {
            code,
            subcode: None,
            title: None,
            message: None,
            details: None,
            fbtrace_id: None,
        }
    }

    fn verdict(code: i64) -> Verdict {
        classify(Some(400), Some(&err(code)))
    }

    fn retry(scope: RetryScope, reason: &'static str) -> Verdict {
        Verdict::Retry { scope, reason }
    }

    fn permanent(reason: &'static str) -> Verdict {
        Verdict::Permanent { reason }
    }

    #[test]
    fn parses_the_reference_envelope() {
        // whatsapp-cloud-api.md §2.2.
        let body = br#"{ "error": { "message": "(#130429) Rate limit hit", "type": "OAuthException", "code": 130429,
            "error_data": { "messaging_product": "whatsapp", "details": "Cloud API message throughput has been reached." },
            "fbtrace_id": "AbCdEf123" } }"#;
        let e = parse_error(body).expect("parses");
        assert_eq!(
            e,
            MetaError {
                code: 130429,
                subcode: None,
                title: Some("Rate limit hit".into()),
                message: Some("(#130429) Rate limit hit".into()),
                details: Some("Cloud API message throughput has been reached.".into()),
                fbtrace_id: Some("AbCdEf123".into()),
            }
        );
        assert_eq!(
            classify(Some(400), Some(&e)),
            retry(RetryScope::Number, "throughput_limited")
        );
    }

    #[test]
    fn parses_subcode_user_title_and_webhook_errors() {
        let body = json!({"error": {"message": "(#100) Invalid parameter", "code": 100,
            "error_subcode": 2494055, "error_user_title": "Bad param", "fbtrace_id": "X"}});
        let e = parse_error(body.to_string().as_bytes()).unwrap();
        assert_eq!(e.subcode, Some(2494055));
        assert_eq!(e.title.as_deref(), Some("Bad param"));
        assert_eq!(e.details, None);

        // A status webhook's errors[] element (whatsapp-cloud-api.md §1.8).
        let w = json!({ "code": 131050, "title": "Unable to deliver the message.", "message": "Unable to deliver the message.",
            "error_data": { "details": "<details text>" }, "href": "/documentation/business-messaging/whatsapp/support/error-codes" });
        let e = from_error_object(&w).unwrap();
        assert_eq!(e.code, 131050);
        assert_eq!(e.title.as_deref(), Some("Unable to deliver the message."));
        assert_eq!(e.details.as_deref(), Some("<details text>"));
        assert_eq!(classify(None, Some(&e)), Verdict::MarketingOptOut);

        // A numeric string code is accepted.
        assert_eq!(
            parse_error(br#"{"error":{"code":"190"}}"#).unwrap().code,
            190
        );
    }

    #[test]
    fn unparseable_bodies() {
        assert_eq!(parse_error(b""), None);
        assert_eq!(parse_error(b"<html>502 Bad Gateway</html>"), None);
        assert_eq!(parse_error(br#"{"messages":[{"id":"wamid.X"}]}"#), None);
        assert_eq!(parse_error(br#"{"error":"nope"}"#), None);
        assert_eq!(parse_error(br#"{"error":{"message":"no code"}}"#), None);
        assert_eq!(parse_error(br#"{"error":{"code":1.5}}"#), None);
    }

    #[test]
    fn retried_codes() {
        use RetryScope::*;
        assert_eq!(verdict(130429), retry(Number, "throughput_limited"));
        assert_eq!(verdict(131057), retry(Number, "maintenance_mode"));
        assert_eq!(verdict(4), retry(Number, "app_rate_limited"));
        assert_eq!(verdict(80007), retry(Number, "waba_rate_limited"));
        assert_eq!(verdict(131056), retry(Recipient, "pair_rate_limited"));
        assert_eq!(verdict(1), retry(Once, "meta_unknown_error"));
        assert_eq!(verdict(131000), retry(Once, "meta_unknown_error"));
        assert_eq!(verdict(2), retry(Once, "meta_service_unavailable"));
        assert_eq!(verdict(131016), retry(Once, "meta_service_unavailable"));
        assert_eq!(verdict(133004), retry(Once, "meta_service_unavailable"));
        // A retryable code is retried whatever the status.
        assert!(classify(Some(200), Some(&err(131056))).is_retry());
        assert!(classify(None, Some(&err(130429))).is_retry());
    }

    #[test]
    fn token_and_opt_out_codes() {
        assert_eq!(verdict(190), Verdict::TokenInvalid);
        assert_eq!(verdict(0), Verdict::TokenInvalid);
        assert_eq!(classify(Some(401), Some(&err(190))), Verdict::TokenInvalid);
        assert_eq!(verdict(131050), Verdict::MarketingOptOut);
        assert_eq!(Verdict::TokenInvalid.reason(), "token_invalid");
        assert_eq!(Verdict::MarketingOptOut.reason(), "marketing_opted_out");
        assert!(!Verdict::MarketingOptOut.is_retry());
    }

    #[test]
    fn permanent_codes() {
        let table: &[(&[i64], &str)] = &[
            (&[3, 10, 200, 250, 299, 131005], "permission_denied"),
            (&[131026, 131021, 131030], "invalid_recipient"),
            (&[130403], "recipient_blocked"),
            (&[131047], "outside_service_window"),
            (&[131049], "per_user_marketing_limit"),
            (&[131048], "spam_rate_limited"),
            (&[131064], "template_classification_limit"),
            (&[131063], "marketing_disabled"),
            (&[130472], "experiment_holdout"),
            (&[100, 131008, 131009, 135000], "invalid_parameter"),
            (&[131051], "unsupported_message_type"),
            (&[131052, 131053], "media_error"),
            (
                &[
                    132000, 132001, 132005, 132007, 132008, 132012, 132015, 132016, 132018,
                ],
                "template_error",
            ),
            (&[132068, 132069], "flow_error"),
            (&[368], "policy_violation"),
            (&[131031], "account_restricted"),
            (&[130497], "country_restricted"),
            (&[131042, 134011], "payment_issue"),
            (&[131045, 133010, 33], "number_not_registered"),
            (&[133016], "registration_rate_limited"),
            (&[131037], "display_name_not_approved"),
            (&[131062], "bsuid_not_supported"),
        ];
        for (codes, reason) in table {
            for &code in *codes {
                assert_eq!(verdict(code), permanent(reason), "code {code}");
                // A known permanent code is not retried on a 5xx, nor after a timeout.
                assert_eq!(
                    classify(Some(503), Some(&err(code))),
                    permanent(reason),
                    "code {code} on 503"
                );
                assert_eq!(
                    classify(None, Some(&err(code))),
                    permanent(reason),
                    "code {code} without status"
                );
            }
        }
    }

    #[test]
    fn unknown_codes_and_bare_statuses() {
        use RetryScope::*;
        // Unknown code: decided by the status.
        assert_eq!(
            classify(Some(400), Some(&err(999_999))),
            permanent("meta_rejected")
        );
        assert_eq!(
            classify(Some(404), Some(&err(132017))),
            permanent("meta_rejected")
        );
        assert_eq!(
            classify(Some(500), Some(&err(999_999))),
            retry(Once, "http_5xx")
        );
        assert_eq!(
            classify(Some(429), Some(&err(999_999))),
            retry(Number, "http_429")
        );
        assert_eq!(
            classify(None, Some(&err(999_999))),
            retry(Once, "no_response")
        );
        // No error body at all.
        assert_eq!(classify(None, None), retry(Once, "no_response"));
        assert_eq!(classify(Some(429), None), retry(Number, "http_429"));
        assert_eq!(classify(Some(502), None), retry(Once, "http_5xx"));
        assert_eq!(classify(Some(504), None), retry(Once, "http_5xx"));
        assert_eq!(classify(Some(400), None), permanent("meta_rejected"));
        assert_eq!(classify(Some(401), None), permanent("meta_rejected"));
        assert_eq!(classify(Some(200), None), permanent("meta_rejected"));
        assert_eq!(permanent("meta_rejected").reason(), "meta_rejected");
    }

    #[test]
    fn backoff_ceilings() {
        let secs = |n: u64| Duration::from_secs(n);
        assert_eq!(backoff(0, 1.0), secs(1));
        assert_eq!(backoff(1, 1.0), secs(2));
        assert_eq!(backoff(2, 1.0), secs(4));
        assert_eq!(backoff(6, 1.0), secs(64));
        assert_eq!(backoff(8, 1.0), secs(256));
        assert_eq!(backoff(9, 1.0), secs(300));
        assert_eq!(backoff(10, 1.0), secs(300));
        assert_eq!(backoff(63, 1.0), secs(300));
        assert_eq!(backoff(64, 1.0), secs(300));
        assert_eq!(backoff(u32::MAX, 1.0), secs(300));
    }

    #[test]
    fn backoff_full_jitter() {
        assert_eq!(backoff(3, 0.0), Duration::ZERO);
        assert_eq!(backoff(3, 0.5), Duration::from_secs(4));
        assert_eq!(backoff(0, 0.25), Duration::from_millis(250));
        assert_eq!(backoff(20, 0.5), Duration::from_secs(150));
        // Out-of-range jitter is clamped.
        assert_eq!(backoff(2, -1.0), Duration::ZERO);
        assert_eq!(backoff(2, 7.0), Duration::from_secs(4));
        assert_eq!(backoff(2, f64::NAN), Duration::from_secs(4));
        assert_eq!(backoff(2, f64::INFINITY), Duration::from_secs(4));
        // Every wait stays within [0, ceiling] and the ceiling never decreases.
        let mut last = Duration::ZERO;
        for attempt in 0..40 {
            let ceiling = backoff(attempt, 1.0);
            assert!(ceiling >= last && ceiling <= BACKOFF_CAP);
            for j in [0.0, 0.1, 0.5, 0.9, 0.999_999] {
                assert!(backoff(attempt, j) <= ceiling);
            }
            last = ceiling;
        }
        // The whole retry budget waits at most about two minutes.
        let total: Duration = (0..MAX_ATTEMPTS - 1).map(|a| backoff(a, 1.0)).sum();
        assert_eq!(total, Duration::from_secs(127));
    }
}
