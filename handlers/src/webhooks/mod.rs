//! Meta webhooks: signature verification ([`signature`]) and splitting a verified body
//! into domain items ([`split`]).

pub mod node;
pub mod processor;
mod remembered;
pub mod reprocess;
pub mod signature;
pub mod split;

pub use signature::{sign, verify_signature, SignatureError};
pub use split::{split_webhook, ItemFailure, Route, Split, SplitError, WebhookItem};

/// The shared Meta webhook fixtures (`shared/fixtures/meta`, beside the workspace), for tests.
#[cfg(test)]
pub(crate) mod fixtures {
    macro_rules! fixture {
        ($name:literal) => {
            (
                $name,
                include_bytes!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../../shared/fixtures/meta/",
                    $name
                ))
                .as_slice(),
            )
        };
    }

    /// `SIGNATURES.tsv`: each fixture with its header value (app secret `test_app_secret`).
    pub(crate) const SIGNATURES_TSV: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/fixtures/meta/SIGNATURES.tsv"
    ));

    /// Every fixture body, by file name.
    pub(crate) const ALL: &[(&str, &[u8])] = &[
        fixture!("account_update_app_installed.json"),
        fixture!("batch_two_numbers.json"),
        fixture!("escaped_unicode.json"),
        fixture!("inbound_button_stop_promotions.json"),
        fixture!("inbound_interactive_reply.json"),
        fixture!("inbound_start.json"),
        fixture!("inbound_stop.json"),
        fixture!("inbound_stop_sentence.json"),
        fixture!("inbound_text.json"),
        fixture!("statuses_delivered_and_failed.json"),
        fixture!("template_status_paused.json"),
        fixture!("user_preferences_stop.json"),
    ];

    /// The bytes of one fixture; panics on an unknown name.
    pub(crate) fn get(name: &str) -> &'static [u8] {
        ALL.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, body)| *body)
            .unwrap_or_else(|| panic!("no fixture named {name}"))
    }
}
