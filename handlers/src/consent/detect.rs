//! What an inbound item says about consent: the pure decision the webhook processor
//! applies to every item it routes (so a STOP becomes an opt-out in the same pass that
//! makes it a `message.received`, with no extra hop).
//!
//! - A text that is a keyword, whole: opt-out (`all`, or `marketing` for a workspace's
//!   marketing keywords), opt-in (every opt-out lifted), or help.
//! - A text that contains an opt-out inside a sentence: a suspected opt-out, for a
//!   person to confirm, unless the workspace makes those automatic.
//! - A template quick-reply tap on a "Stop promotions" label: a marketing opt-out; a
//!   button whose text is a keyword acts as that keyword.
//! - `user_preferences` stop/resume: a marketing opt-out/opt-in.
//! - A failed status with error 131050: a marketing opt-out.

use wabridge_events::{
    types::{
        ConsentKeyword, ConsentScope, ConsentSource, ConsentSourceKind, ContactHelpRequested,
        ContactOptedIn, ContactOptedOut, ContactOptoutSuspected, ContactRef,
    },
    DomainEvent,
};

use super::matcher::{Classification, Keyword, KeywordError, KeywordKind, KeywordSet, Scope};

/// Meta's error for "this recipient has chosen to stop receiving marketing messages".
pub const MARKETING_STOPPED: i64 = 131050;

/// A workspace's consent configuration, as the detection needs it.
#[derive(Clone, Debug, Default)]
pub struct Consent {
    /// Built-in keywords plus the workspace's own.
    pub keywords: KeywordSet,
    /// Suspected opt-outs opt the contact out at once.
    pub suspected_automatic: bool,
}

impl Consent {
    /// The configuration from the workspace's keywords (already validated when set;
    /// keywords that no longer validate are left out, never fatal).
    pub fn new(custom: &[ConsentKeyword], suspected_automatic: bool) -> Self {
        let custom = to_matcher(custom).unwrap_or_default();
        let keywords = KeywordSet::with_custom(&custom).unwrap_or_default();
        Consent {
            keywords,
            suspected_automatic,
        }
    }
}

/// The matcher's form of a workspace's keywords; an unknown kind is an error.
pub fn to_matcher(custom: &[ConsentKeyword]) -> Result<Vec<Keyword>, String> {
    custom
        .iter()
        .map(|k| {
            let kind = match k.kind.as_str() {
                "opt_out" => KeywordKind::OptOut,
                "opt_in" => KeywordKind::OptIn,
                "help" => KeywordKind::Help,
                other => return Err(format!("kind {other:?} is not opt_out, opt_in or help")),
            };
            Ok(Keyword {
                keyword: k.keyword.clone(),
                language: k.language.clone(),
                kind,
                scope: match k.scope {
                    ConsentScope::All => Scope::All,
                    ConsentScope::Marketing => Scope::Marketing,
                },
            })
        })
        .collect()
}

/// Validates a workspace's keywords (no empty keyword, no collision between an
/// opt-out and an opt-in word, ...).
pub fn validate(custom: &[ConsentKeyword]) -> Result<(), String> {
    let keywords = to_matcher(custom)?;
    KeywordSet::validate(&keywords).map_err(|e: KeywordError| e.to_string())
}

/// The built-in keywords every workspace has, in the API's form.
pub fn builtin() -> Vec<ConsentKeyword> {
    super::matcher::defaults()
        .into_iter()
        .map(|k| ConsentKeyword {
            keyword: k.keyword,
            language: k.language,
            kind: match k.kind {
                KeywordKind::OptOut => "opt_out",
                KeywordKind::OptIn => "opt_in",
                KeywordKind::Help => "help",
            }
            .into(),
            scope: scope_of(k.scope),
        })
        .collect()
}

/// The built-in "Stop promotions" button labels (a marketing opt-out), as
/// `(label, language)`.
pub fn marketing_buttons() -> Vec<(&'static str, &'static str)> {
    super::matcher::marketing_button_labels()
}

fn scope_of(scope: Scope) -> ConsentScope {
    match scope {
        Scope::All => ConsentScope::All,
        Scope::Marketing => ConsentScope::Marketing,
    }
}

fn source(
    kind: ConsentSourceKind,
    keyword: Option<String>,
    language: Option<String>,
    message_id: &str,
) -> ConsentSource {
    ConsentSource {
        kind,
        keyword,
        language,
        message_id: Some(message_id.to_owned()),
        webhook_seq: None,
    }
}

/// The consent events an item implies (none for most items), each naming the raw
/// webhook that carried the item (the evidence that Meta sent it).
pub fn detect(consent: &Consent, item: &DomainEvent) -> Vec<DomainEvent> {
    let raw_seq = match item {
        DomainEvent::MessageReceived(m) => Some(m.source.raw_seq),
        DomainEvent::ContactMarketingPreference(p) => Some(p.source.raw_seq),
        DomainEvent::MessageStatusUpdated(s) => Some(s.source.raw_seq),
        _ => None,
    }
    .filter(|s| *s > 0);
    let mut events = derive(consent, item);
    for e in &mut events {
        match e {
            DomainEvent::ContactOptedOut(o) => o.source.webhook_seq = raw_seq,
            DomainEvent::ContactOptedIn(o) => o.source.webhook_seq = raw_seq,
            _ => {}
        }
    }
    events
}

fn derive(consent: &Consent, item: &DomainEvent) -> Vec<DomainEvent> {
    match item {
        DomainEvent::MessageReceived(m) => {
            let (classification, kind) = match (&m.button, m.message_type.as_str(), &m.text) {
                (Some(b), _, _) => (
                    consent
                        .keywords
                        .classify_button(b.payload.as_deref(), b.text.as_deref()),
                    ConsentSourceKind::Button,
                ),
                (None, "text", Some(text)) => (
                    consent.keywords.classify_text(text),
                    ConsentSourceKind::Keyword,
                ),
                _ => return vec![],
            };
            from_classification(
                consent,
                classification,
                kind,
                &m.contact,
                &m.wamid,
                m.text.as_deref(),
                m.timestamp,
            )
        }
        DomainEvent::ContactMarketingPreference(p) => {
            let source = ConsentSource {
                kind: ConsentSourceKind::Preference,
                keyword: Some(p.value.clone()),
                language: None,
                message_id: None,
                webhook_seq: None,
            };
            match p.value.as_str() {
                "stop" => vec![DomainEvent::ContactOptedOut(ContactOptedOut {
                    contact: p.contact.clone(),
                    scope: ConsentScope::Marketing,
                    source,
                    reason: p.detail.clone(),
                    at: p.timestamp,
                })],
                "resume" => vec![DomainEvent::ContactOptedIn(ContactOptedIn {
                    contact: p.contact.clone(),
                    scope: ConsentScope::Marketing,
                    source,
                    reason: p.detail.clone(),
                    at: p.timestamp,
                })],
                _ => vec![],
            }
        }
        DomainEvent::MessageStatusUpdated(s)
            if s.status == "failed" && s.errors.iter().any(|e| e.code == MARKETING_STOPPED) =>
        {
            let contact = ContactRef {
                wa_id: s.recipient_id.clone(),
                user_id: s.recipient_user_id.clone(),
                ..ContactRef::default()
            };
            if contact.wa_id.is_none() && contact.user_id.is_none() {
                return vec![];
            }
            vec![DomainEvent::ContactOptedOut(ContactOptedOut {
                contact,
                scope: ConsentScope::Marketing,
                source: source(
                    ConsentSourceKind::DeliveryError,
                    Some(MARKETING_STOPPED.to_string()),
                    None,
                    &s.wamid,
                ),
                reason: None,
                at: s.timestamp,
            })]
        }
        _ => vec![],
    }
}

fn from_classification(
    consent: &Consent,
    classification: Classification,
    kind: ConsentSourceKind,
    contact: &ContactRef,
    wamid: &str,
    text: Option<&str>,
    at: wabridge_events::Timestamp,
) -> Vec<DomainEvent> {
    let event = match classification {
        Classification::OptOut {
            scope,
            keyword,
            language,
        } => DomainEvent::ContactOptedOut(ContactOptedOut {
            contact: contact.clone(),
            scope: scope_of(scope),
            source: source(kind, Some(keyword), Some(language), wamid),
            reason: None,
            at,
        }),
        Classification::OptIn { keyword, language } => {
            DomainEvent::ContactOptedIn(ContactOptedIn {
                contact: contact.clone(),
                scope: ConsentScope::All,
                source: source(kind, Some(keyword), Some(language), wamid),
                reason: None,
                at,
            })
        }
        Classification::Help { keyword, language } => {
            DomainEvent::ContactHelpRequested(ContactHelpRequested {
                contact: contact.clone(),
                keyword,
                language,
                message_id: wamid.to_owned(),
                at,
            })
        }
        Classification::SuspectedOptOut { matched } if consent.suspected_automatic => {
            DomainEvent::ContactOptedOut(ContactOptedOut {
                contact: contact.clone(),
                scope: ConsentScope::All,
                source: source(kind, Some(matched), None, wamid),
                reason: Some("a message that looks like an opt-out (automatic)".into()),
                at,
            })
        }
        Classification::SuspectedOptOut { matched } => {
            DomainEvent::ContactOptoutSuspected(ContactOptoutSuspected {
                id: wamid.to_owned(),
                contact: contact.clone(),
                message_id: wamid.to_owned(),
                text: text.unwrap_or_default().chars().take(4096).collect(),
                matched,
                at,
            })
        }
        Classification::None => return vec![],
    };
    vec![event]
}

#[cfg(test)]
mod tests {
    use wabridge_events::{
        types::{
            ButtonReply, ContactMarketingPreference, MessageReceived, MessageStatusUpdated,
            MetaError, MetaSource,
        },
        Timestamp,
    };

    use super::*;

    fn source_meta() -> MetaSource {
        MetaSource {
            waba_id: "1".into(),
            phone_number_id: Some("2".into()),
            display_phone_number: None,
            field: "messages".into(),
            raw_seq: 1,
        }
    }

    fn text(t: &str) -> DomainEvent {
        DomainEvent::MessageReceived(MessageReceived {
            source: source_meta(),
            wamid: "wamid.A".into(),
            contact: ContactRef {
                wa_id: Some("447700900123".into()),
                ..Default::default()
            },
            message_type: "text".into(),
            text: Some(t.into()),
            button: None,
            interactive: None,
            reaction: None,
            media: None,
            system: None,
            referral: None,
            context_wamid: None,
            errors: vec![],
            timestamp: Timestamp::now(),
            raw: wabridge_events::types::RawJson::object(&Default::default()),
        })
    }

    fn kinds(events: &[DomainEvent]) -> Vec<&'static str> {
        events.iter().map(|e| e.event_type()).collect()
    }

    #[test]
    fn keywords_suspicions_and_help() {
        let c = Consent::default();
        assert_eq!(kinds(&detect(&c, &text("STOP"))), ["contact.opted_out"]);
        assert_eq!(
            kinds(&detect(&c, &text("  arrêt! "))),
            ["contact.opted_out"]
        );
        assert_eq!(kinds(&detect(&c, &text("start"))), ["contact.opted_in"]);
        assert_eq!(
            kinds(&detect(&c, &text("HELP"))),
            ["contact.help_requested"]
        );
        assert_eq!(
            kinds(&detect(&c, &text("please stop sending me these"))),
            ["contact.optout_suspected"]
        );
        assert!(detect(&c, &text("stopwatch")).is_empty());
        let DomainEvent::ContactOptedOut(o) = &detect(&c, &text("STOP"))[0] else {
            panic!()
        };
        assert_eq!(o.scope, ConsentScope::All);
        assert_eq!(o.source.kind, ConsentSourceKind::Keyword);
        assert_eq!(o.source.message_id.as_deref(), Some("wamid.A"));
        // A workspace may make suspected opt-outs automatic.
        let automatic = Consent {
            suspected_automatic: true,
            ..Consent::default()
        };
        assert_eq!(
            kinds(&detect(&automatic, &text("please stop sending me these"))),
            ["contact.opted_out"]
        );
    }

    #[test]
    fn the_promotions_button_preferences_and_delivery_errors_are_marketing() {
        let c = Consent::default();
        let DomainEvent::MessageReceived(mut m) = text("") else {
            panic!()
        };
        m.message_type = "button".into();
        m.text = None;
        m.button = Some(ButtonReply {
            payload: Some("Parar promoções".into()),
            text: Some("Parar promoções".into()),
        });
        let DomainEvent::ContactOptedOut(o) = &detect(&c, &DomainEvent::MessageReceived(m))[0]
        else {
            panic!()
        };
        assert_eq!(
            (o.scope, o.source.kind),
            (ConsentScope::Marketing, ConsentSourceKind::Button)
        );
        let pref = |value: &str| {
            DomainEvent::ContactMarketingPreference(ContactMarketingPreference {
                source: source_meta(),
                contact: ContactRef {
                    user_id: Some("US.1".into()),
                    ..Default::default()
                },
                category: "marketing_messages".into(),
                value: value.into(),
                detail: None,
                timestamp: Timestamp::now(),
            })
        };
        assert_eq!(kinds(&detect(&c, &pref("stop"))), ["contact.opted_out"]);
        assert_eq!(kinds(&detect(&c, &pref("resume"))), ["contact.opted_in"]);
        let failed = |code: i64| {
            DomainEvent::MessageStatusUpdated(MessageStatusUpdated {
                source: source_meta(),
                wamid: "wamid.O".into(),
                status: "failed".into(),
                recipient_id: Some("447700900124".into()),
                recipient_user_id: None,
                recipient_parent_user_id: None,
                timestamp: Timestamp::now(),
                biz_opaque_callback_data: None,
                pricing_category: None,
                pricing: None,
                conversation: None,
                errors: vec![MetaError {
                    code,
                    title: None,
                    message: None,
                    details: None,
                }],
            })
        };
        let DomainEvent::ContactOptedOut(o) = &detect(&c, &failed(131050))[0] else {
            panic!()
        };
        assert_eq!(
            (o.scope, o.source.kind),
            (ConsentScope::Marketing, ConsentSourceKind::DeliveryError)
        );
        assert!(detect(&c, &failed(131026)).is_empty());
    }

    #[test]
    fn custom_keywords_are_validated_and_used() {
        let bad = [ConsentKeyword {
            keyword: "START".into(),
            language: "en".into(),
            kind: "opt_out".into(),
            scope: ConsentScope::All,
        }];
        assert!(
            validate(&bad).is_err(),
            "an opt-out colliding with an opt-in word"
        );
        let odd = [ConsentKeyword {
            keyword: "X".into(),
            language: "en".into(),
            kind: "maybe".into(),
            scope: ConsentScope::All,
        }];
        assert!(validate(&odd).is_err());
        let mine = [ConsentKeyword {
            keyword: "NO MORE DEALS".into(),
            language: "en".into(),
            kind: "opt_out".into(),
            scope: ConsentScope::Marketing,
        }];
        validate(&mine).unwrap();
        let c = Consent::new(&mine, false);
        let DomainEvent::ContactOptedOut(o) = &detect(&c, &text("no more deals!"))[0] else {
            panic!()
        };
        assert_eq!(o.scope, ConsentScope::Marketing);
    }
}
