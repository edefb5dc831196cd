//! Consent keyword matching for inbound WhatsApp messages.
//!
//! [`KeywordSet::classify_text`] decides whether the body of an inbound `text` message is an
//! opt-out, an opt-in, a request for help, a *suspected* opt-out that a person should confirm, or
//! nothing consent-related. [`KeywordSet::classify_button`] does the same for a template
//! quick-reply button tap, and also recognises the "Stop promotions" buttons (an opt-out of
//! marketing only).
//!
//! # How a message is matched
//!
//! Matching is on the **whole message** after [`normalize`]:
//!
//! 1. lower-casing, and folding accents away (`ARRÊT` → `arret`, `PROMOÇÕES` → `promocoes`);
//!    a few letters without a canonical decomposition are folded too (`ß` → `ss`, `æ` → `ae`,
//!    `œ` → `oe`, `ø` → `o`, `ł` → `l`, `đ` → `d`, `ı` → `i`), full-width Latin is folded to
//!    ASCII and typographic apostrophes become `'`;
//! 2. removing invisible characters (zero-width spaces and joiners, soft hyphens, direction
//!    marks, emoji variation selectors);
//! 3. removing everything before the first and after the last letter or digit: punctuation,
//!    quotes, symbols and emoji around the text (`"STOP!"`, `¡Baja!`, `«arrêt»`, `*STOP*`,
//!    `Stop 🛑` all become the bare word);
//! 4. turning every run of whitespace, `-` and `_` (and the Unicode dashes) into one space, so
//!    `OPT-OUT`, `opt_out` and `opt   out` all read `opt out`. Other punctuation *inside* the
//!    text is kept, so `stop, please` is not the keyword `stop`.
//!
//! The normalised message is then looked up in a hash map of normalised keywords (one hash
//! look-up for the common case). Anything that is not a whole-message keyword is split into
//! tokens (runs of letters and digits) and scanned for opt-out words and phrases inside a
//! sentence, which gives at most a [`Classification::SuspectedOptOut`]: it is never acted upon
//! without a person confirming it.
//!
//! # Edge cases, decided
//!
//! | message | outcome | why |
//! |---|---|---|
//! | `STOP`, `stop.`, `"STOP!"`, `*STOP*`, `Stop 🛑`, `🛑 STOP 🛑` | opt-out | surrounding punctuation, quotes, symbols and emoji are dropped |
//! | `STOP STOP`, `stop, stop!` | opt-out | the same one-word opt-out keyword repeated is unambiguous |
//! | `STOP?`, `¿Baja?` | suspected | a keyword asked as a question ("stop? what do you mean?") is not a command |
//! | `YES?`, `START?` | none | an opt-in asked as a question is not consent |
//! | `HELP?` | help | asking for help is still asking for help |
//! | `stopwatch`, `nonstop`, `STOPS`, `unstoppable` | none | only whole tokens match, never substrings |
//! | `I can't stop laughing`, `don't stop`, `won't stop`, `never stop`, `non-stop` | none | a keyword right after an English negation (`not`, `never`, `can't`, `don't`, `won't`, …) is not flagged |
//! | `bus stop`, `one-stop shop`, `stop by tomorrow` | none | the common noun uses of "stop" are not flagged |
//! | `please stop sending me these`, `pls unsubscribe me`, `quiero darme de baja`, `je veux me désabonner` | suspected | an opt-out word or phrase inside a sentence |
//! | `cancel my appointment`, `see you at the end`, `I quit` | none | `CANCEL`, `END`, `QUIT` only count as whole messages (they are everyday words in a sentence) |
//! | `🛑`, `✋`, `!!!`, empty, whitespace only | none | normalises to empty text |
//! | `Stop promotions` as free text | suspected | the marketing button labels are only matched for button taps |
//!
//! # Built-in keyword lists
//!
//! Every list applies to every message, whatever the workspace's language: a Spanish speaker
//! typing `STOP` is opted out. A normalised form appears once, under its main language (e.g.
//! `PARAR` is listed under `pt` and matches Spanish speakers too); the English list is not
//! repeated under the other languages. Entries marked *(s)* also count inside a sentence for the
//! suspected detector; the others only as a whole message, because inside a sentence they are
//! everyday words.
//!
//! | lang | opt-out (scope: all) | opt-in | help |
//! |---|---|---|---|
//! | en | STOP *(s)*, STOPALL *(s)*, STOP ALL *(s)*, UNSUBSCRIBE *(s)*, CANCEL, END, QUIT, REVOKE *(s)*, OPTOUT *(s)*, OPT OUT *(s)*, OPT-OUT *(s)* | START, YES, UNSTOP | HELP, INFO |
//! | es | BAJA, DAR DE BAJA *(s)*, DARME DE BAJA *(s)*, DARSE DE BAJA *(s)*, DESUSCRIBIR *(s)*, DESUSCRIBIRME *(s)*, DESUSCRIBIRSE *(s)*, DETENER | COMENZAR, SUSCRIBIR, SUSCRIBIRME, DAR DE ALTA | AYUDA, INFORMACIÓN |
//! | pt | PARAR, SAIR, DESCADASTRAR *(s)*, DESCADASTRAR-ME *(s)*, DESINSCREVER *(s)* | COMEÇAR, INICIAR, INSCREVER | AJUDA, INFORMAÇÃO |
//! | fr | ARRÊT, ARRÊTER, ARRÊTEZ, DÉSABONNER *(s)*, ME DÉSABONNER *(s)*, DÉSABONNEMENT *(s)*, DÉSINSCRIRE *(s)*, ME DÉSINSCRIRE *(s)*, DÉSINSCRIPTION *(s)* | COMMENCER, DÉMARRER, M'ABONNER | AIDE |
//! | de | STOPP *(s)*, ABMELDEN *(s)*, ABMELDUNG *(s)*, ABBESTELLEN *(s)*, AUSTRAGEN, AUFHÖREN, AUFHOEREN | STARTEN, ABONNIEREN | HILFE |
//! | it | DISISCRIVI *(s)*, DISISCRIVIMI *(s)*, DISISCRIZIONE *(s)*, CANCELLAMI *(s)*, ANNULLA ISCRIZIONE *(s)* | INIZIA, ISCRIVIMI | AIUTO |
//! | id | BERHENTI, HENTIKAN *(s)*, UNREG *(s)*, BERHENTI BERLANGGANAN *(s)* | MULAI, BERLANGGANAN, REG | BANTUAN |
//!
//! Choices worth knowing:
//!
//! - **Plain "yes" words are not opt-ins outside English** (`SÍ`/`SI`, `SIM`, `OUI`, `JA`, `YA`):
//!   they are the most common answer to any question ("¿Confirma su cita?" — "Sí"), and a false
//!   opt-in re-subscribes someone who said stop. They also collide across languages: `si` is
//!   "if" in Spanish and Italian, `ya` is Indonesian "yes" but Spanish "enough!/already". English
//!   `YES` stays because it is the industry-standard opt-in keyword.
//! - **No "no" words**: `NO`, `NÃO`, `NON`, `NEIN`, `TIDAK` are never opt-outs, not even
//!   suspected ones.
//! - **"Cancel" equivalents are left out** (`CANCELAR`, `ANNULER`, `ANNULLA`, `ABBRECHEN`,
//!   `BATAL`): in WhatsApp business chats they are the usual answer to appointment and order
//!   flows ("Confirmar / Cancelar"), and opting such a customer out of *all* messages would
//!   also stop the confirmation they asked for. English `CANCEL` is kept only because it is in
//!   the standard carrier list. The unambiguous `ANNULLA ISCRIZIONE` ("cancel subscription") is
//!   kept, and a workspace that wants `ANNULLA` can add it as a custom keyword.
//! - **"End"/"exit" equivalents are left out** (`FIN`, `ENDE`, `SALIR`, `KELUAR`, `BEENDEN`) for
//!   the same reason (they end a chatbot menu, not a subscription), **except Portuguese `SAIR`**:
//!   "Responda SAIR para não receber mais mensagens" is the most common opt-out instruction in
//!   Brazil, an infinitive is not a natural conversational reply on its own, and it mirrors
//!   English `QUIT`. It only counts as the whole message ("vou sair agora" is nothing).
//! - `BAJA`, `PARAR`, `ARRÊT`, `BERHENTI`, `AUFHÖREN` are whole-message keywords but not
//!   sentence triggers ("la temperatura baja", "arrêt de bus", "não consigo parar"); their
//!   sentence forms are covered by curated phrases (`darme de baja`, `parar de receber`,
//!   `berhenti kirim`, …).
//! - `ALTO`, `BASTA`, `CHEGA`, `FERMA`, `PARE` are left out: each has a common unrelated
//!   meaning ("tall", "that's enough (thanks)", "arrives", "bus stop").
//! - German entries with umlauts are also listed with the `oe` spelling (`AUFHOEREN`), since
//!   accent folding turns `ö` into `o`, not `oe`.
//! - Opt-in verbs are explicit ("subscribe", "start"); `ANMELDEN` (also "log in", "register for an
//!   event") and `ALTA` ("high", "hospital discharge") are left out.
//!
//! # "Stop promotions" buttons
//!
//! Marketing templates can carry Meta's localised "Stop promotions" quick-reply button. Meta
//! does not publish the set of labels, so [`marketing_button_labels`] is **our curated list**;
//! a tap on one of them is an opt-out of marketing messages only. The labels are matched for
//! button taps only, never in free text.
//!
//! # Custom keywords
//!
//! A workspace can add its own entries ([`KeywordSet::with_custom`]). They are validated
//! ([`KeywordSet::validate`]): not empty, at most 64 characters, something left after
//! normalisation, a plausible language code, the marketing scope only for opt-outs, and no
//! collision with an existing keyword of another kind or scope (an opt-out equal to an opt-in
//! word, or the reverse). A custom opt-in may not equal a curated opt-out phrase either. Custom
//! opt-out keywords also count inside a sentence for the suspected detector.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use unicode_normalization::char::{decompose_canonical, is_combining_mark};
use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

/// The longest custom keyword accepted, in characters (after trimming).
pub const MAX_KEYWORD_CHARS: usize = 64;

/// The kind of a keyword.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeywordKind {
    /// Stops messages (all of them, or marketing only, see [`Scope`]).
    OptOut,
    /// Resumes messages after an opt-out.
    OptIn,
    /// Asks for the help text.
    Help,
}

impl fmt::Display for KeywordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeywordKind::OptOut => "opt-out",
            KeywordKind::OptIn => "opt-in",
            KeywordKind::Help => "help",
        })
    }
}

/// Which messages an opt-out blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Every business-initiated message.
    All,
    /// Marketing messages only.
    Marketing,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::All => "all",
            Scope::Marketing => "marketing",
        })
    }
}

/// One keyword entry.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Keyword {
    /// The keyword as written, e.g. `"ARRÊT"`; matched after [`normalize`].
    pub keyword: String,
    /// Language code, e.g. `"fr"` or `"pt-BR"`.
    pub language: String,
    /// What the keyword does.
    pub kind: KeywordKind,
    /// Which messages an opt-out blocks; always [`Scope::All`] for opt-in and help.
    pub scope: Scope,
}

/// What a message is, for consent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Classification {
    /// The whole message is an opt-out keyword.
    OptOut {
        /// Which messages the opt-out blocks.
        scope: Scope,
        /// The list entry as written, e.g. `"ARRÊT"`.
        keyword: String,
        /// The entry's language code.
        language: String,
    },
    /// The whole message is an opt-in keyword.
    OptIn {
        /// The list entry as written.
        keyword: String,
        /// The entry's language code.
        language: String,
    },
    /// HELP / INFO family.
    Help {
        /// The list entry as written.
        keyword: String,
        /// The entry's language code.
        language: String,
    },
    /// Looks like an opt-out inside a sentence; a person should confirm.
    SuspectedOptOut {
        /// The word or phrase found, normalised (e.g. `"stop sending"`).
        matched: String,
    },
    /// Nothing consent-related.
    None,
}

/// Why a custom keyword was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeywordError {
    /// The keyword is empty or only whitespace.
    #[error("keyword {keyword:?} is empty or only whitespace")]
    Empty {
        /// The keyword as given.
        keyword: String,
    },
    /// The keyword is longer than [`MAX_KEYWORD_CHARS`].
    #[error(
        "keyword {keyword:?} is {chars} characters long; at most {MAX_KEYWORD_CHARS} are allowed"
    )]
    TooLong {
        /// The keyword as given.
        keyword: String,
        /// Its length in characters, after trimming.
        chars: usize,
    },
    /// Nothing is left of the keyword after normalisation (only punctuation, symbols or emoji).
    #[error(
        "keyword {keyword:?} has no letters or digits (only punctuation, symbols or emoji), so it can never match"
    )]
    NormalizesToEmpty {
        /// The keyword as given.
        keyword: String,
    },
    /// The language code is not a plausible code such as `en` or `pt-BR`.
    #[error("keyword {keyword:?} has an invalid language code {language:?} (expected e.g. \"en\" or \"pt-BR\")")]
    InvalidLanguage {
        /// The keyword as given.
        keyword: String,
        /// The language code as given.
        language: String,
    },
    /// Only opt-out keywords can have the marketing scope.
    #[error("keyword {keyword:?} is an {kind} keyword; only opt-out keywords can have the marketing scope")]
    ScopeNotAllowed {
        /// The keyword as given.
        keyword: String,
        /// Its kind.
        kind: KeywordKind,
    },
    /// The keyword normalises to the same text as an existing keyword of another kind or scope.
    #[error(
        "keyword {keyword:?} ({kind}, scope {scope}) collides with the existing {existing_kind} keyword {existing:?} ({existing_language}, scope {existing_scope})"
    )]
    Collision {
        /// The keyword as given.
        keyword: String,
        /// Its kind.
        kind: KeywordKind,
        /// Its scope.
        scope: Scope,
        /// The existing keyword or phrase it collides with, as written.
        existing: String,
        /// The existing entry's kind.
        existing_kind: KeywordKind,
        /// The existing entry's scope.
        existing_scope: Scope,
        /// The existing entry's language.
        existing_language: String,
    },
}

// ---------------------------------------------------------------------------------------------
// Curated lists
// ---------------------------------------------------------------------------------------------

/// A built-in entry; `in_sentence` marks the opt-outs that also count inside a sentence.
struct Builtin {
    keyword: &'static str,
    language: &'static str,
    kind: KeywordKind,
    in_sentence: bool,
}

const fn opt_out(keyword: &'static str, language: &'static str, in_sentence: bool) -> Builtin {
    Builtin {
        keyword,
        language,
        kind: KeywordKind::OptOut,
        in_sentence,
    }
}

const fn opt_in(keyword: &'static str, language: &'static str) -> Builtin {
    Builtin {
        keyword,
        language,
        kind: KeywordKind::OptIn,
        in_sentence: false,
    }
}

const fn help(keyword: &'static str, language: &'static str) -> Builtin {
    Builtin {
        keyword,
        language,
        kind: KeywordKind::Help,
        in_sentence: false,
    }
}

/// The built-in whole-message keywords. Keep in step with the table in the module docs.
static BUILTINS: &[Builtin] = &[
    // English (the standard carrier list).
    opt_out("STOP", "en", true),
    opt_out("STOPALL", "en", true),
    opt_out("STOP ALL", "en", true),
    opt_out("UNSUBSCRIBE", "en", true),
    opt_out("CANCEL", "en", false),
    opt_out("END", "en", false),
    opt_out("QUIT", "en", false),
    opt_out("REVOKE", "en", true),
    opt_out("OPTOUT", "en", true),
    opt_out("OPT OUT", "en", true),
    opt_out("OPT-OUT", "en", true),
    opt_in("START", "en"),
    opt_in("YES", "en"),
    opt_in("UNSTOP", "en"),
    help("HELP", "en"),
    help("INFO", "en"),
    // Spanish.
    opt_out("BAJA", "es", false),
    opt_out("DAR DE BAJA", "es", true),
    opt_out("DARME DE BAJA", "es", true),
    opt_out("DARSE DE BAJA", "es", true),
    opt_out("DESUSCRIBIR", "es", true),
    opt_out("DESUSCRIBIRME", "es", true),
    opt_out("DESUSCRIBIRSE", "es", true),
    opt_out("DETENER", "es", false),
    opt_in("COMENZAR", "es"),
    opt_in("SUSCRIBIR", "es"),
    opt_in("SUSCRIBIRME", "es"),
    opt_in("DAR DE ALTA", "es"),
    help("AYUDA", "es"),
    help("INFORMACIÓN", "es"),
    // Portuguese.
    opt_out("PARAR", "pt", false),
    opt_out("SAIR", "pt", false),
    opt_out("DESCADASTRAR", "pt", true),
    opt_out("DESCADASTRAR-ME", "pt", true),
    opt_out("DESINSCREVER", "pt", true),
    opt_in("COMEÇAR", "pt"),
    opt_in("INICIAR", "pt"),
    opt_in("INSCREVER", "pt"),
    help("AJUDA", "pt"),
    help("INFORMAÇÃO", "pt"),
    // French.
    opt_out("ARRÊT", "fr", false),
    opt_out("ARRÊTER", "fr", false),
    opt_out("ARRÊTEZ", "fr", false),
    opt_out("DÉSABONNER", "fr", true),
    opt_out("ME DÉSABONNER", "fr", true),
    opt_out("DÉSABONNEMENT", "fr", true),
    opt_out("DÉSINSCRIRE", "fr", true),
    opt_out("ME DÉSINSCRIRE", "fr", true),
    opt_out("DÉSINSCRIPTION", "fr", true),
    opt_in("COMMENCER", "fr"),
    opt_in("DÉMARRER", "fr"),
    opt_in("M'ABONNER", "fr"),
    help("AIDE", "fr"),
    // German.
    opt_out("STOPP", "de", true),
    opt_out("ABMELDEN", "de", true),
    opt_out("ABMELDUNG", "de", true),
    opt_out("ABBESTELLEN", "de", true),
    opt_out("AUSTRAGEN", "de", false),
    opt_out("AUFHÖREN", "de", false),
    opt_out("AUFHOEREN", "de", false),
    opt_in("STARTEN", "de"),
    opt_in("ABONNIEREN", "de"),
    help("HILFE", "de"),
    // Italian.
    opt_out("DISISCRIVI", "it", true),
    opt_out("DISISCRIVIMI", "it", true),
    opt_out("DISISCRIZIONE", "it", true),
    opt_out("CANCELLAMI", "it", true),
    opt_out("ANNULLA ISCRIZIONE", "it", true),
    opt_in("INIZIA", "it"),
    opt_in("ISCRIVIMI", "it"),
    help("AIUTO", "it"),
    // Indonesian.
    opt_out("BERHENTI", "id", false),
    opt_out("HENTIKAN", "id", true),
    opt_out("UNREG", "id", true),
    opt_out("BERHENTI BERLANGGANAN", "id", true),
    opt_in("MULAI", "id"),
    opt_in("BERLANGGANAN", "id"),
    opt_in("REG", "id"),
    help("BANTUAN", "id"),
];

/// Opt-out phrases that make a sentence a suspected opt-out (matched on whole tokens, after
/// normalisation). Whole-message keywords marked as sentence triggers are added to these.
static PHRASES: &[(&str, &str)] = &[
    ("stop sending", "en"),
    ("stop texting", "en"),
    ("stop messaging", "en"),
    ("stop contacting", "en"),
    ("stop receiving", "en"),
    ("unsubscribe me", "en"),
    ("remove me", "en"),
    ("take me off", "en"),
    ("opt me out", "en"),
    ("do not message me", "en"),
    ("do not text me", "en"),
    ("do not contact me", "en"),
    ("don't message me", "en"),
    ("don't text me", "en"),
    ("don't contact me", "en"),
    ("dont message me", "en"),
    ("dont text me", "en"),
    ("dont contact me", "en"),
    ("no more messages", "en"),
    ("leave me alone", "en"),
    ("cancel my subscription", "en"),
    ("delete my number", "en"),
    ("no quiero recibir", "es"),
    ("no me envien mas", "es"),
    ("no me manden mas", "es"),
    ("no me envien mensajes", "es"),
    ("no me manden mensajes", "es"),
    ("no mas mensajes", "es"),
    ("dejen de enviar", "es"),
    ("dejen de mandar", "es"),
    ("deja de enviar", "es"),
    ("deja de mandar", "es"),
    ("cancelar suscripcion", "es"),
    ("cancelar mi suscripcion", "es"),
    ("borrar mi numero", "es"),
    ("eliminar mi numero", "es"),
    ("sacarme de la lista", "es"),
    ("quitarme de la lista", "es"),
    ("nao quero mais", "pt"),
    ("nao quero receber", "pt"),
    ("parar de receber", "pt"),
    ("pare de enviar", "pt"),
    ("parem de enviar", "pt"),
    ("pare de mandar", "pt"),
    ("parem de mandar", "pt"),
    ("nao me enviem mais", "pt"),
    ("nao me mandem mais", "pt"),
    ("me tire da lista", "pt"),
    ("me tirem da lista", "pt"),
    ("sair da lista", "pt"),
    ("cancelar inscricao", "pt"),
    ("cancelar assinatura", "pt"),
    ("remover meu numero", "pt"),
    ("ne plus recevoir", "fr"),
    ("veux plus recevoir", "fr"),
    ("arretez de m'envoyer", "fr"),
    ("arretez d'envoyer", "fr"),
    ("arreter de recevoir", "fr"),
    ("plus de messages", "fr"),
    ("retirez moi", "fr"),
    ("supprimez mon numero", "fr"),
    ("keine nachrichten mehr", "de"),
    ("keine werbung", "de"),
    ("nicht mehr kontaktieren", "de"),
    ("nicht mehr anschreiben", "de"),
    ("nicht mehr schreiben", "de"),
    ("nummer loschen", "de"),
    ("nummer loeschen", "de"),
    ("non voglio piu ricevere", "it"),
    ("non inviatemi", "it"),
    ("non mandatemi", "it"),
    ("smettete di inviare", "it"),
    ("smetti di inviare", "it"),
    ("basta messaggi", "it"),
    ("cancellatemi", "it"),
    ("toglietemi", "it"),
    ("rimuovetemi", "it"),
    ("rimuovimi", "it"),
    ("eliminate il mio numero", "it"),
    ("berhenti kirim", "id"),
    ("berhenti mengirim", "id"),
    ("berhenti langganan", "id"),
    ("jangan kirim pesan", "id"),
    ("jangan kirimi saya", "id"),
    ("jangan hubungi saya", "id"),
    ("tidak mau menerima", "id"),
    ("tidak ingin menerima", "id"),
    ("hapus nomor saya", "id"),
];

/// Our curated list of Meta's localised "Stop promotions" quick-reply labels. Meta does not
/// publish the label set; these are the labels seen or expected per language.
static MARKETING_LABELS: &[(&str, &str)] = &[
    ("Stop promotions", "en"),
    ("Stop promotional messages", "en"),
    ("Parar promoções", "pt"),
    ("Parar de receber promoções", "pt"),
    ("Detener promociones", "es"),
    ("Dejar de recibir promociones", "es"),
    ("No recibir promociones", "es"),
    ("Arrêter les promotions", "fr"),
    ("Stop aux promotions", "fr"),
    ("Ne plus recevoir de promotions", "fr"),
    ("Werbung stoppen", "de"),
    ("Keine Werbung", "de"),
    ("Werbung abbestellen", "de"),
    ("Interrompi promozioni", "it"),
    ("Blocca promozioni", "it"),
    ("Stop alle promozioni", "it"),
    ("Hentikan promosi", "id"),
    ("Berhenti promosi", "id"),
    ("Stop promosi", "id"),
];

/// A match right after one of these tokens is not flagged ("never stop", "do not stop").
static NEGATORS: &[&str] = &[
    "not", "never", "cannot", "cant", "dont", "wont", "didnt", "doesnt", "couldnt", "wouldnt",
    "shouldnt", "isnt", "arent", "wasnt",
];

/// The stems of English contractions: "can't" is tokenised as `can`, `t`.
static CONTRACTION_STEMS: &[&str] = &[
    "can", "don", "won", "didn", "doesn", "couldn", "wouldn", "shouldn", "isn", "aren", "wasn",
];

/// Tokens before "stop" that make it the noun ("bus stop", "non-stop", "one-stop shop").
static STOP_NOUN_BEFORE: &[&str] = &[
    "bus", "non", "one", "full", "pit", "truck", "tram", "train", "last", "next", "first",
];

/// Tokens after a lone "stop" that make it another verb ("stop by").
static STOP_AFTER: &[&str] = &["by"];

// ---------------------------------------------------------------------------------------------
// Public functions
// ---------------------------------------------------------------------------------------------

/// The built-in lists (every language), as entries. All have [`Scope::All`].
pub fn defaults() -> Vec<Keyword> {
    BUILTINS
        .iter()
        .map(|b| Keyword {
            keyword: b.keyword.to_owned(),
            language: b.language.to_owned(),
            kind: b.kind,
            scope: Scope::All,
        })
        .collect()
}

/// The curated "Stop promotions" button labels per language, as `(label, language)`.
///
/// Meta does not publish the set of localised labels: this is our curated list.
pub fn marketing_button_labels() -> Vec<(&'static str, &'static str)> {
    MARKETING_LABELS.to_vec()
}

/// Normalises a text for matching: lower-cased, accents folded, invisible characters removed,
/// surrounding punctuation, quotes, symbols and emoji removed, and runs of whitespace, `-` and
/// `_` collapsed to one space. See the module docs for the details.
///
/// ```text
/// "  ¡Baja! "      -> "baja"
/// "«ARRÊT»"        -> "arret"
/// "OPT-OUT"        -> "opt out"
/// "Stop 🛑"        -> "stop"
/// "🛑"             -> ""
/// ```
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    normalize_into(text, &mut out);
    out
}

/// Normalises `text` into `out` (cleared first).
fn normalize_into(text: &str, out: &mut String) {
    out.clear();
    if text.is_ascii() {
        clean_into(
            text.bytes().map(|b| char::from(b.to_ascii_lowercase())),
            out,
        );
    } else {
        let folded = fold(text);
        clean_into(folded.chars(), out);
    }
}

/// Lower-cases and folds accents of a non-ASCII text: canonical decomposition, diacritics
/// dropped, and whatever is left recomposed (so that e.g. Hangul and Indic text stay intact).
fn fold(text: &str) -> String {
    let mut s = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_ascii() {
            s.push(c.to_ascii_lowercase());
        } else {
            decompose_canonical(c, |d| push_folded(d, &mut s));
        }
    }
    // Decomposing char by char skips the canonical reordering of the marks that remain; the
    // quick check flags that (and any decomposed Hangul), and full NFC then fixes it.
    if is_nfc_quick(s.chars()) == IsNormalized::Yes {
        s
    } else {
        s.nfc().collect()
    }
}

/// Pushes one decomposed character, lower-cased, without diacritics, with the extra folds.
fn push_folded(c: char, s: &mut String) {
    if is_diacritic(c) {
        return;
    }
    for l in c.to_lowercase() {
        match l {
            // `İ` lower-cases to `i` + U+0307.
            l if is_diacritic(l) => {}
            'ß' => s.push_str("ss"),
            'æ' => s.push_str("ae"),
            'œ' => s.push_str("oe"),
            'þ' => s.push_str("th"),
            'ø' => s.push('o'),
            'ł' => s.push('l'),
            'đ' | 'ð' => s.push('d'),
            'ı' => s.push('i'),
            'ħ' => s.push('h'),
            'ς' => s.push('σ'),
            '\u{2018}' | '\u{2019}' | '\u{02BC}' => s.push('\''),
            // Full-width ASCII (Ｓ Ｔ Ｏ Ｐ, ！).
            '\u{FF01}'..='\u{FF5E}' => {
                s.push(char::from_u32(u32::from(l) - 0xFEE0).unwrap_or(l));
            }
            l => s.push(l),
        }
    }
}

/// Combining diacritical marks that accent folding removes.
fn is_diacritic(c: char) -> bool {
    matches!(
        c,
        '\u{0300}'..='\u{036F}'
            | '\u{1AB0}'..='\u{1AFF}'
            | '\u{1DC0}'..='\u{1DFF}'
            | '\u{20D0}'..='\u{20FF}'
            | '\u{FE20}'..='\u{FE2F}'
    )
}

/// Invisible characters that are removed outright.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{E0100}'..='\u{E01EF}'
    )
}

/// Characters that separate words: whitespace, `-`, `_` and the Unicode dashes.
fn is_separator(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '-' | '_' | '\u{2010}'..='\u{2015}' | '\u{2212}' | '\u{FE58}' | '\u{FE63}'
        )
}

/// A letter or digit, or a (non-diacritic) combining mark, which belongs to the word before it.
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || (!c.is_ascii() && is_combining_mark(c))
}

/// Drops invisible characters and surrounding non-word characters, and collapses separators.
fn clean_into(chars: impl Iterator<Item = char>, out: &mut String) {
    let mut pending_space = false;
    let mut prev_word = false;
    // Length of `out` up to the end of the last word character.
    let mut keep = 0;
    for c in chars {
        if is_invisible(c) {
            continue;
        }
        if is_separator(c) {
            pending_space = true;
            prev_word = false;
            continue;
        }
        let word = c.is_alphanumeric() || (prev_word && !c.is_ascii() && is_combining_mark(c));
        if out.is_empty() && !word {
            continue;
        }
        if pending_space && !out.is_empty() {
            out.push(' ');
        }
        pending_space = false;
        out.push(c);
        prev_word = word;
        if word {
            keep = out.len();
        }
    }
    out.truncate(keep);
}

/// The word tokens of a normalised text.
fn tokens(normalized: &str) -> impl Iterator<Item = &str> {
    normalized
        .split(|c: char| !is_word_char(c))
        .filter(|t| !t.is_empty())
}

/// Whether the raw message is asked as a question (`stop?`, `¿baja?`).
fn is_question(text: &str) -> bool {
    let body_end = text.trim_end_matches(|c: char| !c.is_alphanumeric()).len();
    let body_start = text.len()
        - text
            .trim_start_matches(|c: char| !c.is_alphanumeric())
            .len();
    text[body_end..].contains(['?', '\u{FF1F}', '\u{061F}'])
        || text[..body_start.min(body_end)].contains('¿')
}

/// Whether a language code looks like `en`, `pt-BR` or `zh-Hant`.
fn is_valid_language(code: &str) -> bool {
    let mut parts = code.split('-');
    let primary = parts.next().unwrap_or_default();
    (2..=3).contains(&primary.len())
        && primary.bytes().all(|b| b.is_ascii_alphabetic())
        && parts.all(|p| (2..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

// ---------------------------------------------------------------------------------------------
// The compiled set
// ---------------------------------------------------------------------------------------------

/// A small, fast, non-keyed hasher for the keyword maps (FxHash). The maps hold only curated and
/// workspace keywords; message text is only ever looked up, never inserted.
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.0 = (self.0.rotate_left(5) ^ u64::from(i)).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// A whole-message keyword.
#[derive(Clone, Debug)]
struct Entry {
    keyword: String,
    language: String,
    kind: KeywordKind,
    scope: Scope,
}

/// A word or phrase that makes a sentence a suspected opt-out, keyed by its first token.
#[derive(Clone, Debug)]
struct Pattern {
    /// The tokens after the first one.
    rest: Box<[String]>,
    /// The normalised word or phrase, reported as `matched`.
    matched: String,
}

#[derive(Clone, Debug, Default)]
struct Inner {
    /// Normalised keyword → entry.
    whole: FastMap<String, Entry>,
    /// First token → patterns starting with it, longest first.
    triggers: FastMap<String, Vec<Pattern>>,
    /// Normalised curated phrase → language (for custom opt-in validation).
    phrases: FastMap<String, &'static str>,
    /// Normalised "Stop promotions" label → (label, language).
    labels: FastMap<String, (&'static str, &'static str)>,
}

impl Inner {
    fn built_in() -> Inner {
        let mut inner = Inner::default();
        for b in BUILTINS {
            let key = normalize(b.keyword);
            debug_assert!(
                !key.is_empty(),
                "built-in {:?} normalises to empty",
                b.keyword
            );
            if b.kind == KeywordKind::OptOut && b.in_sentence {
                inner.add_trigger(&key);
            }
            match inner.whole.get(&key) {
                Some(existing) => debug_assert_eq!(existing.kind, b.kind, "{:?}", b.keyword),
                None => {
                    inner.whole.insert(
                        key,
                        Entry {
                            keyword: b.keyword.to_owned(),
                            language: b.language.to_owned(),
                            kind: b.kind,
                            scope: Scope::All,
                        },
                    );
                }
            }
        }
        for &(phrase, language) in PHRASES {
            let key = normalize(phrase);
            inner.add_trigger(&key);
            inner.phrases.entry(key).or_insert(language);
        }
        for &(label, language) in MARKETING_LABELS {
            inner
                .labels
                .entry(normalize(label))
                .or_insert((label, language));
        }
        inner.sort_triggers();
        inner
    }

    /// Adds a normalised word or phrase to the suspected detector (once).
    fn add_trigger(&mut self, normalized: &str) {
        let mut toks = tokens(normalized);
        let Some(first) = toks.next() else { return };
        let rest: Box<[String]> = toks.map(str::to_owned).collect();
        let patterns = self.triggers.entry(first.to_owned()).or_default();
        if !patterns.iter().any(|p| p.rest == rest) {
            patterns.push(Pattern {
                rest,
                matched: normalized.to_owned(),
            });
        }
    }

    fn sort_triggers(&mut self) {
        for patterns in self.triggers.values_mut() {
            patterns.sort_by_key(|p| std::cmp::Reverse(p.rest.len()));
        }
    }

    /// Validates custom entries against this set and each other; returns the new entries.
    fn check(&self, custom: &[Keyword]) -> Result<Vec<(String, Entry)>, KeywordError> {
        let mut seen: FastMap<String, Entry> = FastMap::default();
        let mut added = Vec::new();
        for k in custom {
            let trimmed = k.keyword.trim();
            if trimmed.is_empty() {
                return Err(KeywordError::Empty {
                    keyword: k.keyword.clone(),
                });
            }
            let chars = trimmed.chars().count();
            if chars > MAX_KEYWORD_CHARS {
                return Err(KeywordError::TooLong {
                    keyword: k.keyword.clone(),
                    chars,
                });
            }
            if !is_valid_language(&k.language) {
                return Err(KeywordError::InvalidLanguage {
                    keyword: k.keyword.clone(),
                    language: k.language.clone(),
                });
            }
            if k.scope == Scope::Marketing && k.kind != KeywordKind::OptOut {
                return Err(KeywordError::ScopeNotAllowed {
                    keyword: k.keyword.clone(),
                    kind: k.kind,
                });
            }
            let key = normalize(trimmed);
            if key.is_empty() {
                return Err(KeywordError::NormalizesToEmpty {
                    keyword: k.keyword.clone(),
                });
            }
            let collision = |existing: &str, kind, scope, language: &str| KeywordError::Collision {
                keyword: k.keyword.clone(),
                kind: k.kind,
                scope: k.scope,
                existing: existing.to_owned(),
                existing_kind: kind,
                existing_scope: scope,
                existing_language: language.to_owned(),
            };
            if let Some(e) = self.whole.get(&key).or_else(|| seen.get(&key)) {
                if e.kind != k.kind || e.scope != k.scope {
                    return Err(collision(&e.keyword, e.kind, e.scope, &e.language));
                }
                // The same keyword again: nothing to add.
                continue;
            }
            if k.kind == KeywordKind::OptIn {
                if let Some(language) = self.phrases.get(&key) {
                    return Err(collision(&key, KeywordKind::OptOut, Scope::All, language));
                }
            }
            let entry = Entry {
                keyword: trimmed.to_owned(),
                language: k.language.clone(),
                kind: k.kind,
                scope: k.scope,
            };
            seen.insert(key.clone(), entry.clone());
            added.push((key, entry));
        }
        Ok(added)
    }
}

/// A compiled keyword set: defaults plus a workspace's custom keywords.
///
/// Build it once (per workspace) and share it: cloning is a reference-count increment.
#[derive(Clone)]
pub struct KeywordSet {
    inner: Arc<Inner>,
}

impl fmt::Debug for KeywordSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeywordSet")
            .field("keywords", &self.inner.whole.len())
            .field("sentence_triggers", &self.inner.triggers.len())
            .field("button_labels", &self.inner.labels.len())
            .finish()
    }
}

impl Default for KeywordSet {
    fn default() -> Self {
        KeywordSet::defaults()
    }
}

impl KeywordSet {
    /// The built-in lists only. Compiled once per process; cheap to call and to clone.
    pub fn defaults() -> KeywordSet {
        static DEFAULTS: OnceLock<KeywordSet> = OnceLock::new();
        DEFAULTS
            .get_or_init(|| KeywordSet {
                inner: Arc::new(Inner::built_in()),
            })
            .clone()
    }

    /// Validates and adds custom entries to the defaults; all-or-nothing.
    ///
    /// An entry equal (after normalisation) to an existing one of the same kind and scope is
    /// accepted and changes nothing.
    pub fn with_custom(custom: &[Keyword]) -> Result<KeywordSet, KeywordError> {
        let base = KeywordSet::defaults();
        let added = base.inner.check(custom)?;
        if added.is_empty() {
            return Ok(base);
        }
        let mut inner = (*base.inner).clone();
        for (key, entry) in added {
            if entry.kind == KeywordKind::OptOut {
                inner.add_trigger(&key);
            }
            inner.whole.insert(key, entry);
        }
        inner.sort_triggers();
        Ok(KeywordSet {
            inner: Arc::new(inner),
        })
    }

    /// Validates a list of custom entries against the defaults and each other (no set built).
    pub fn validate(custom: &[Keyword]) -> Result<(), KeywordError> {
        KeywordSet::defaults().inner.check(custom).map(|_| ())
    }

    /// Classifies free text (a `text` message body).
    pub fn classify_text(&self, text: &str) -> Classification {
        let normalized = normalize(text);
        if normalized.is_empty() {
            return Classification::None;
        }
        if let Some(entry) = self.inner.whole.get(normalized.as_str()) {
            return self.whole_message(entry, text, normalized);
        }
        let toks: Vec<&str> = tokens(&normalized).collect();
        // The same one-word opt-out repeated: "STOP STOP", "stop, stop!".
        if toks.len() > 1 && toks.iter().all(|t| *t == toks[0]) {
            if let Some(entry) = self.inner.whole.get(toks[0]) {
                if entry.kind == KeywordKind::OptOut {
                    return self.whole_message(entry, text, toks[0].to_owned());
                }
            }
        }
        match self.find_suspected(&toks) {
            Some(matched) => Classification::SuspectedOptOut {
                matched: matched.to_owned(),
            },
            None => Classification::None,
        }
    }

    /// Classifies a template quick-reply button tap (payload and text as Meta sent them).
    ///
    /// A known "Stop promotions" label (in the text, or else the payload) is an opt-out of
    /// marketing. Otherwise the button text is classified like free text (a button labelled
    /// "STOP" is an opt-out of all), except that a button is never a suspected opt-out.
    pub fn classify_button(&self, payload: Option<&str>, text: Option<&str>) -> Classification {
        for candidate in [text, payload].into_iter().flatten() {
            if let Some(&(label, language)) = self.inner.labels.get(normalize(candidate).as_str()) {
                return Classification::OptOut {
                    scope: Scope::Marketing,
                    keyword: label.to_owned(),
                    language: language.to_owned(),
                };
            }
        }
        match text.map(|t| self.classify_text(t)) {
            None | Some(Classification::SuspectedOptOut { .. }) => Classification::None,
            Some(other) => other,
        }
    }

    /// The outcome for a message that is (a repetition of) a whole keyword.
    fn whole_message(&self, entry: &Entry, text: &str, normalized: String) -> Classification {
        match entry.kind {
            KeywordKind::OptOut if is_question(text) => Classification::SuspectedOptOut {
                matched: normalized,
            },
            KeywordKind::OptOut => Classification::OptOut {
                scope: entry.scope,
                keyword: entry.keyword.clone(),
                language: entry.language.clone(),
            },
            KeywordKind::OptIn if is_question(text) => Classification::None,
            KeywordKind::OptIn => Classification::OptIn {
                keyword: entry.keyword.clone(),
                language: entry.language.clone(),
            },
            KeywordKind::Help => Classification::Help {
                keyword: entry.keyword.clone(),
                language: entry.language.clone(),
            },
        }
    }

    /// The first opt-out word or phrase in the tokens that is not negated or a noun use.
    fn find_suspected(&self, toks: &[&str]) -> Option<&str> {
        for (i, tok) in toks.iter().enumerate() {
            let Some(patterns) = self.inner.triggers.get(*tok) else {
                continue;
            };
            let after = &toks[i + 1..];
            for p in patterns {
                let matches = p.rest.len() <= after.len()
                    && p.rest.iter().zip(after).all(|(want, got)| want == got);
                if matches && !is_excluded(toks, i, p.rest.len()) {
                    return Some(&p.matched);
                }
            }
        }
        None
    }
}

/// Whether a match of `len` extra tokens starting at `toks[i]` is a negated or noun use.
fn is_excluded(toks: &[&str], i: usize, len: usize) -> bool {
    let prev = i.checked_sub(1).map(|j| toks[j]);
    let prev2 = i.checked_sub(2).map(|j| toks[j]);
    let negated = match prev {
        Some("t") => prev2.is_some_and(|p| CONTRACTION_STEMS.contains(&p)),
        Some(p) => NEGATORS.contains(&p),
        None => false,
    };
    if negated {
        return true;
    }
    if toks[i] == "stop" {
        if prev.is_some_and(|p| STOP_NOUN_BEFORE.contains(&p)) {
            return true;
        }
        if len == 0 && toks.get(i + 1).is_some_and(|n| STOP_AFTER.contains(n)) {
            return true;
        }
    }
    false
}

/// Typical short inbound messages, for [`bench_classify`].
static BENCH_MESSAGES: &[&str] = &[
    "STOP",
    "Hi, what time do you open tomorrow?",
    "ok",
    "Thanks!",
    "yes",
    "Stop 🛑",
    "Can I change my order to 2 boxes please",
    "👍",
    "¡Baja!",
    "please stop sending me these",
    "Where is my parcel? Tracking says delivered",
    "Olá, tudo bem?",
    "ARRÊT",
    "I can't stop laughing 😂",
    "See you at 5",
    "HELP",
    "quiero darme de baja",
    "Terima kasih banyak",
    "Is this still available?",
    "unsubscribe",
    "Bonjour, je voudrais un rendez-vous",
    "no",
    "Parar promoções",
    "sounds good",
];

/// Micro benchmark: classifies `n` typical short messages with the default set and returns
/// classifications per second (build the binary in release mode to get a meaningful figure).
pub fn bench_classify(n: usize) -> f64 {
    let set = KeywordSet::defaults();
    // Warm up caches and the branch predictor.
    for text in BENCH_MESSAGES
        .iter()
        .cycle()
        .take(BENCH_MESSAGES.len() * 100)
    {
        std::hint::black_box(set.classify_text(std::hint::black_box(text)));
    }
    let start = Instant::now();
    for text in BENCH_MESSAGES.iter().cycle().take(n) {
        std::hint::black_box(set.classify_text(std::hint::black_box(text)));
    }
    let secs = start.elapsed().as_secs_f64();
    if secs > 0.0 {
        n as f64 / secs
    } else {
        f64::INFINITY
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected outcome in the table: kind, and the keyword/matched text where relevant.
    #[derive(Debug)]
    enum Want {
        Out(&'static str, &'static str),
        OutMarketing(&'static str),
        In(&'static str, &'static str),
        Help(&'static str, &'static str),
        Suspected(&'static str),
        Nothing,
    }
    use Want::*;

    fn check(set: &KeywordSet, text: &str, want: &Want) {
        let got = set.classify_text(text);
        let ok = match (want, &got) {
            (
                Out(k, l),
                Classification::OptOut {
                    scope: Scope::All,
                    keyword,
                    language,
                },
            ) => keyword == k && language == l,
            (
                OutMarketing(k),
                Classification::OptOut {
                    scope: Scope::Marketing,
                    keyword,
                    ..
                },
            ) => keyword == k,
            (In(k, l), Classification::OptIn { keyword, language }) => {
                keyword == k && language == l
            }
            (Help(k, l), Classification::Help { keyword, language }) => {
                keyword == k && language == l
            }
            (Suspected(m), Classification::SuspectedOptOut { matched }) => matched == m,
            (Nothing, Classification::None) => true,
            _ => false,
        };
        assert!(ok, "{text:?}: expected {want:?}, got {got:?}");
    }

    const TABLE: &[(&str, Want)] = &[
        // English opt-out, case and surroundings.
        ("STOP", Out("STOP", "en")),
        ("stop", Out("STOP", "en")),
        ("Stop.", Out("STOP", "en")),
        ("\"STOP!\"", Out("STOP", "en")),
        ("*STOP*", Out("STOP", "en")),
        ("  stop \n", Out("STOP", "en")),
        ("Stop 🛑", Out("STOP", "en")),
        ("🛑 STOP 🛑", Out("STOP", "en")),
        ("✋️STOP✋🏽", Out("STOP", "en")),
        ("ＳＴＯＰ", Out("STOP", "en")),
        ("S\u{200B}TOP", Out("STOP", "en")),
        ("STOP STOP", Out("STOP", "en")),
        ("stop, stop!", Out("STOP", "en")),
        ("stopall", Out("STOPALL", "en")),
        ("Stop all", Out("STOP ALL", "en")),
        ("STOP-ALL", Out("STOP ALL", "en")),
        ("Unsubscribe", Out("UNSUBSCRIBE", "en")),
        ("cancel", Out("CANCEL", "en")),
        ("END", Out("END", "en")),
        ("Quit!", Out("QUIT", "en")),
        ("revoke", Out("REVOKE", "en")),
        ("OPTOUT", Out("OPTOUT", "en")),
        ("OPT-OUT", Out("OPT OUT", "en")),
        ("opt out", Out("OPT OUT", "en")),
        ("opt_out", Out("OPT OUT", "en")),
        ("opt \t -- out", Out("OPT OUT", "en")),
        ("opt–out", Out("OPT OUT", "en")),
        // English opt-in and help.
        ("START", In("START", "en")),
        ("Yes!", In("YES", "en")),
        ("unstop", In("UNSTOP", "en")),
        ("HELP", Help("HELP", "en")),
        ("help?", Help("HELP", "en")),
        ("Info", Help("INFO", "en")),
        // Spanish.
        ("¡Baja!", Out("BAJA", "es")),
        ("BAJA", Out("BAJA", "es")),
        ("dar de baja", Out("DAR DE BAJA", "es")),
        ("Darme de baja.", Out("DARME DE BAJA", "es")),
        ("darse de baja", Out("DARSE DE BAJA", "es")),
        ("desuscribir", Out("DESUSCRIBIR", "es")),
        ("Desuscribirme", Out("DESUSCRIBIRME", "es")),
        ("desuscribirse", Out("DESUSCRIBIRSE", "es")),
        ("Detener", Out("DETENER", "es")),
        ("comenzar", In("COMENZAR", "es")),
        ("SUSCRIBIR", In("SUSCRIBIR", "es")),
        ("suscribirme", In("SUSCRIBIRME", "es")),
        ("Dar de alta", In("DAR DE ALTA", "es")),
        ("AYUDA", Help("AYUDA", "es")),
        ("información", Help("INFORMACIÓN", "es")),
        ("INFORMACION", Help("INFORMACIÓN", "es")),
        // Portuguese.
        ("PARAR", Out("PARAR", "pt")),
        ("Sair", Out("SAIR", "pt")),
        ("descadastrar", Out("DESCADASTRAR", "pt")),
        ("Descadastrar-me", Out("DESCADASTRAR-ME", "pt")),
        ("desinscrever", Out("DESINSCREVER", "pt")),
        ("Começar", In("COMEÇAR", "pt")),
        ("COMECAR", In("COMEÇAR", "pt")),
        ("iniciar", In("INICIAR", "pt")),
        ("inscrever", In("INSCREVER", "pt")),
        ("Ajuda", Help("AJUDA", "pt")),
        ("INFORMAÇÃO", Help("INFORMAÇÃO", "pt")),
        // French.
        ("ARRÊT", Out("ARRÊT", "fr")),
        ("ARRET", Out("ARRÊT", "fr")),
        ("«arrêt»", Out("ARRÊT", "fr")),
        ("arrêter", Out("ARRÊTER", "fr")),
        ("Arrêtez !", Out("ARRÊTEZ", "fr")),
        ("désabonner", Out("DÉSABONNER", "fr")),
        ("Me désabonner", Out("ME DÉSABONNER", "fr")),
        ("desabonnement", Out("DÉSABONNEMENT", "fr")),
        ("DÉSINSCRIRE", Out("DÉSINSCRIRE", "fr")),
        ("me desinscrire", Out("ME DÉSINSCRIRE", "fr")),
        ("désinscription", Out("DÉSINSCRIPTION", "fr")),
        ("Commencer", In("COMMENCER", "fr")),
        ("demarrer", In("DÉMARRER", "fr")),
        ("M’abonner", In("M'ABONNER", "fr")),
        ("aide", Help("AIDE", "fr")),
        // German.
        ("STOPP", Out("STOPP", "de")),
        ("abmelden", Out("ABMELDEN", "de")),
        ("Abmeldung", Out("ABMELDUNG", "de")),
        ("abbestellen", Out("ABBESTELLEN", "de")),
        ("austragen", Out("AUSTRAGEN", "de")),
        ("AUFHÖREN", Out("AUFHÖREN", "de")),
        ("aufhoeren", Out("AUFHOEREN", "de")),
        ("Starten", In("STARTEN", "de")),
        ("abonnieren", In("ABONNIEREN", "de")),
        ("Hilfe", Help("HILFE", "de")),
        // Italian.
        ("disiscrivi", Out("DISISCRIVI", "it")),
        ("DISISCRIVIMI", Out("DISISCRIVIMI", "it")),
        ("disiscrizione", Out("DISISCRIZIONE", "it")),
        ("cancellami", Out("CANCELLAMI", "it")),
        ("Annulla iscrizione", Out("ANNULLA ISCRIZIONE", "it")),
        ("inizia", In("INIZIA", "it")),
        ("Iscrivimi", In("ISCRIVIMI", "it")),
        ("AIUTO", Help("AIUTO", "it")),
        // Indonesian.
        ("BERHENTI", Out("BERHENTI", "id")),
        ("hentikan", Out("HENTIKAN", "id")),
        ("UNREG", Out("UNREG", "id")),
        ("berhenti berlangganan", Out("BERHENTI BERLANGGANAN", "id")),
        ("mulai", In("MULAI", "id")),
        ("Berlangganan", In("BERLANGGANAN", "id")),
        ("REG", In("REG", "id")),
        ("bantuan", Help("BANTUAN", "id")),
        // Questions.
        ("stop?", Suspected("stop")),
        ("STOP ?!", Suspected("stop")),
        ("¿Baja?", Suspected("baja")),
        ("yes?", Nothing),
        // Near misses.
        ("stopwatch", Nothing),
        ("nonstop", Nothing),
        ("non-stop flights", Nothing),
        ("STOPS", Nothing),
        ("unstoppable", Nothing),
        ("I can't stop laughing", Nothing),
        ("I can’t stop laughing 😂", Nothing),
        ("don't stop", Nothing),
        ("Please don't stop sending these!", Nothing),
        ("won't stop", Nothing),
        ("never stop", Nothing),
        ("I'll wait at the bus stop", Nothing),
        ("I'll stop by tomorrow", Nothing),
        ("cancel my appointment please", Nothing),
        ("see you at the end of the week", Nothing),
        ("la temperatura baja mucho", Nothing),
        ("não consigo parar de rir", Nothing),
        ("vou sair agora", Nothing),
        ("sí", Nothing),
        ("si", Nothing),
        ("oui", Nothing),
        ("ya", Nothing),
        ("no", Nothing),
        ("não", Nothing),
        ("🛑", Nothing),
        ("✋", Nothing),
        ("!!!", Nothing),
        ("", Nothing),
        ("   ", Nothing),
        ("stop promotions? what promotions", Suspected("stop")),
        // Suspected opt-outs inside sentences.
        ("please stop sending me these", Suspected("stop sending")),
        ("pls unsubscribe me", Suspected("unsubscribe me")),
        ("Can you unsubscribe me?", Suspected("unsubscribe me")),
        ("stop please", Suspected("stop")),
        ("I want to opt out of this", Suspected("opt out")),
        ("remove me from your list", Suspected("remove me")),
        ("quiero darme de baja", Suspected("darme de baja")),
        (
            "Por favor, no me envíen más mensajes",
            Suspected("no me envien mas"),
        ),
        ("Não quero mais receber isso", Suspected("nao quero mais")),
        ("je veux me désabonner", Suspected("me desabonner")),
        (
            "Je ne veux plus recevoir vos messages",
            Suspected("veux plus recevoir"),
        ),
        ("Bitte keine Werbung mehr", Suspected("keine werbung")),
        ("ich möchte mich abmelden", Suspected("abmelden")),
        (
            "Non voglio più ricevere messaggi",
            Suspected("non voglio piu ricevere"),
        ),
        ("tolong berhenti kirim pesan", Suspected("berhenti kirim")),
    ];

    #[test]
    fn table() {
        let set = KeywordSet::defaults();
        assert!(TABLE.len() >= 70);
        for (text, want) in TABLE {
            check(&set, text, want);
        }
    }

    #[test]
    fn every_default_keyword_matches_itself_in_many_spellings() {
        let set = KeywordSet::defaults();
        for k in defaults() {
            let spellings = [
                k.keyword.clone(),
                k.keyword.to_lowercase(),
                format!("  \"{}!\" ", k.keyword),
                format!("*{}* 🙏", k.keyword.to_lowercase()),
                k.keyword.replace(' ', "_"),
            ];
            for s in spellings {
                let got = set.classify_text(&s);
                let (keyword, language) = match &got {
                    Classification::OptOut {
                        scope: Scope::All,
                        keyword,
                        language,
                    } if k.kind == KeywordKind::OptOut => (keyword, language),
                    Classification::OptIn { keyword, language } if k.kind == KeywordKind::OptIn => {
                        (keyword, language)
                    }
                    Classification::Help { keyword, language } if k.kind == KeywordKind::Help => {
                        (keyword, language)
                    }
                    _ => panic!("{s:?} ({:?}): got {got:?}", k.kind),
                };
                assert_eq!(normalize(keyword), normalize(&k.keyword), "{s:?}");
                assert_eq!(language, &k.language, "{s:?}");
            }
        }
    }

    #[test]
    fn defaults_have_no_cross_kind_collisions() {
        let mut seen: HashMap<String, (KeywordKind, String)> = HashMap::new();
        for k in defaults() {
            let key = normalize(&k.keyword);
            assert!(!key.is_empty());
            assert!(is_valid_language(&k.language));
            if let Some((kind, first)) = seen.get(&key) {
                assert_eq!(*kind, k.kind, "{} vs {}", k.keyword, first);
            } else {
                seen.insert(key, (k.kind, k.keyword));
            }
        }
        // No curated phrase is an opt-in or help keyword, and no "no"/"yes" word sneaks in.
        for (phrase, _) in PHRASES {
            if let Some((kind, _)) = seen.get(&normalize(phrase)) {
                assert_eq!(*kind, KeywordKind::OptOut, "{phrase}");
            }
        }
        for word in [
            "no", "nao", "non", "nein", "tidak", "si", "sim", "oui", "ja", "ya",
        ] {
            assert!(!seen.contains_key(word), "{word}");
        }
        for lang in ["en", "es", "pt", "fr", "de", "it", "id"] {
            for kind in [KeywordKind::OptOut, KeywordKind::OptIn, KeywordKind::Help] {
                assert!(
                    defaults()
                        .iter()
                        .any(|k| k.language == lang && k.kind == kind),
                    "{lang} has no {kind}"
                );
            }
            assert!(MARKETING_LABELS.iter().any(|(_, l)| *l == lang), "{lang}");
        }
    }

    #[test]
    fn normalize_examples() {
        assert_eq!(normalize("  ¡Baja! "), "baja");
        assert_eq!(normalize("«ARRÊT»"), "arret");
        assert_eq!(normalize("PARAR PROMOÇÕES"), "parar promocoes");
        assert_eq!(normalize("OPT-OUT"), "opt out");
        assert_eq!(normalize("opt_out"), "opt out");
        assert_eq!(normalize("Stop   all"), "stop all");
        assert_eq!(normalize("stop, please"), "stop, please");
        assert_eq!(normalize("Straße"), "strasse");
        assert_eq!(normalize("İSTANBUL"), "istanbul");
        // Already decomposed input folds the same way.
        assert_eq!(normalize("ARRE\u{0302}T"), "arret");
        // Non-Latin scripts keep their letters and marks.
        assert_eq!(normalize("안녕하세요!"), "안녕하세요");
        assert_eq!(normalize("नमस्ते"), "नमस्ते");
        assert_eq!(normalize("Tiếng Việt"), "tieng viet");
        // Composed and decomposed (in any mark order) input give the same result.
        for text in ["Tiếng Việt", "PROMOÇÕES", "안녕", "שָׁלוֹם", "ệ", "Ǆ"] {
            let nfd: String = text.nfd().collect();
            assert_eq!(normalize(&nfd), normalize(text), "{text}");
        }
        assert_eq!(
            normalize("e\u{0323}\u{0302}"),
            normalize("e\u{0302}\u{0323}")
        );
        assert_eq!(
            normalize("\u{05E9}\u{05C1}\u{05B8}"),
            normalize("\u{05E9}\u{05B8}\u{05C1}")
        );
        assert_eq!(normalize("🛑"), "");
        assert_eq!(normalize("✋🏽"), "");
        assert_eq!(normalize(""), "");
    }

    fn kw(keyword: &str, language: &str, kind: KeywordKind, scope: Scope) -> Keyword {
        Keyword {
            keyword: keyword.to_owned(),
            language: language.to_owned(),
            kind,
            scope,
        }
    }

    #[test]
    fn custom_keywords() {
        let set = KeywordSet::with_custom(&[
            kw("BASTA", "it", KeywordKind::OptOut, Scope::All),
            kw("No ofertas", "es", KeywordKind::OptOut, Scope::Marketing),
            kw("VOLTAR", "pt", KeywordKind::OptIn, Scope::All),
            kw("Suporte", "pt", KeywordKind::Help, Scope::All),
            // Duplicate of a default, same kind and scope: accepted, no change.
            kw("stop", "en", KeywordKind::OptOut, Scope::All),
        ])
        .unwrap();
        check(&set, "Basta!", &Out("BASTA", "it"));
        check(&set, "no ofertas", &OutMarketing("No ofertas"));
        check(&set, "voltar", &In("VOLTAR", "pt"));
        check(&set, "SUPORTE", &Help("Suporte", "pt"));
        check(&set, "STOP", &Out("STOP", "en"));
        check(&set, "ora basta davvero", &Suspected("basta"));
        check(&set, "por favor no ofertas", &Suspected("no ofertas"));
        // The defaults are untouched.
        check(&KeywordSet::defaults(), "basta", &Nothing);
        assert_eq!(
            set.classify_button(None, Some("No ofertas")),
            Classification::OptOut {
                scope: Scope::Marketing,
                keyword: "No ofertas".into(),
                language: "es".into()
            }
        );
    }

    #[test]
    fn validation_errors() {
        let err = |k: Keyword| KeywordSet::validate(&[k]).unwrap_err();
        assert_eq!(
            err(kw("", "en", KeywordKind::OptOut, Scope::All)),
            KeywordError::Empty {
                keyword: String::new()
            }
        );
        assert!(matches!(
            err(kw("  \t ", "en", KeywordKind::OptOut, Scope::All)),
            KeywordError::Empty { .. }
        ));
        let long = "a".repeat(65);
        assert_eq!(
            err(kw(&long, "en", KeywordKind::OptOut, Scope::All)),
            KeywordError::TooLong {
                keyword: long.clone(),
                chars: 65
            }
        );
        assert!(KeywordSet::validate(&[kw(
            &"é".repeat(64),
            "fr",
            KeywordKind::OptOut,
            Scope::All
        )])
        .is_ok());
        assert!(matches!(
            err(kw("🛑!!", "en", KeywordKind::OptOut, Scope::All)),
            KeywordError::NormalizesToEmpty { .. }
        ));
        assert!(matches!(
            err(kw("halt", "english", KeywordKind::OptOut, Scope::All)),
            KeywordError::InvalidLanguage { .. }
        ));
        assert!(matches!(
            err(kw("more", "en", KeywordKind::OptIn, Scope::Marketing)),
            KeywordError::ScopeNotAllowed { .. }
        ));
        // Opt-out colliding with an opt-in word, and the reverse.
        let e = err(kw("Start!", "en", KeywordKind::OptOut, Scope::All));
        assert!(
            matches!(&e, KeywordError::Collision { existing, existing_kind: KeywordKind::OptIn, .. } if existing == "START"),
            "{e:?}"
        );
        assert!(e.to_string().contains("\"Start!\""), "{e}");
        let e = err(kw("arret", "fr", KeywordKind::OptIn, Scope::All));
        assert!(matches!(
            &e,
            KeywordError::Collision {
                existing_kind: KeywordKind::OptOut,
                ..
            }
        ));
        assert!(e.to_string().contains("\"arret\""), "{e}");
        // An opt-in equal to a curated opt-out phrase.
        assert!(matches!(
            err(kw("remove me", "en", KeywordKind::OptIn, Scope::All)),
            KeywordError::Collision { .. }
        ));
        // Same word with another scope.
        assert!(matches!(
            err(kw("STOP", "en", KeywordKind::OptOut, Scope::Marketing)),
            KeywordError::Collision { .. }
        ));
        // Collisions among the custom entries themselves; all-or-nothing.
        let batch = [
            kw("halt", "en", KeywordKind::OptOut, Scope::All),
            kw("HALT", "en", KeywordKind::OptIn, Scope::All),
        ];
        assert!(matches!(
            KeywordSet::validate(&batch),
            Err(KeywordError::Collision { .. })
        ));
        assert!(KeywordSet::with_custom(&batch).is_err());
        assert!(
            KeywordSet::validate(&[kw("halt", "en-GB", KeywordKind::OptOut, Scope::All)]).is_ok()
        );
    }

    #[test]
    fn buttons() {
        let set = KeywordSet::defaults();
        for (label, language) in marketing_button_labels() {
            assert_eq!(
                set.classify_button(Some("payload-123"), Some(label)),
                Classification::OptOut {
                    scope: Scope::Marketing,
                    keyword: label.to_owned(),
                    language: language.to_owned()
                },
                "{label}"
            );
            // As free text the label is not a marketing opt-out.
            assert!(!matches!(
                set.classify_text(label),
                Classification::OptOut { .. }
            ));
        }
        assert!(matches!(
            set.classify_button(None, Some("PARAR PROMOCOES")),
            Classification::OptOut {
                scope: Scope::Marketing,
                ..
            }
        ));
        assert!(matches!(
            set.classify_button(Some("STOP_PROMOTIONS"), None),
            Classification::OptOut {
                scope: Scope::Marketing,
                ..
            }
        ));
        check_button(&set, Some("x"), Some("STOP"), &Out("STOP", "en"));
        check_button(&set, Some("x"), Some("Baja"), &Out("BAJA", "es"));
        check_button(&set, None, Some("Start"), &In("START", "en"));
        // Never suspected for buttons.
        check_button(&set, Some("x"), Some("Stop sending"), &Nothing);
        check_button(&set, Some("STOP"), Some("Confirm"), &Nothing);
        check_button(&set, None, None, &Nothing);
    }

    fn check_button(set: &KeywordSet, payload: Option<&str>, text: Option<&str>, want: &Want) {
        let got = set.classify_button(payload, text);
        let expected = match want {
            Out(k, l) => Classification::OptOut {
                scope: Scope::All,
                keyword: (*k).into(),
                language: (*l).into(),
            },
            In(k, l) => Classification::OptIn {
                keyword: (*k).into(),
                language: (*l).into(),
            },
            Nothing => Classification::None,
            other => unreachable!("{other:?}"),
        };
        assert_eq!(got, expected, "{payload:?} {text:?}");
    }

    #[test]
    fn serde_names() {
        let k = kw("No ofertas", "es", KeywordKind::OptOut, Scope::Marketing);
        let json = serde_json::to_string(&k).unwrap();
        assert_eq!(
            json,
            r#"{"keyword":"No ofertas","language":"es","kind":"opt_out","scope":"marketing"}"#
        );
        assert_eq!(serde_json::from_str::<Keyword>(&json).unwrap(), k);
        assert_eq!(
            serde_json::to_string(&KeywordKind::OptIn).unwrap(),
            "\"opt_in\""
        );
    }

    #[test]
    fn classifies_100k_messages() {
        let set = KeywordSet::defaults();
        let mut opt_outs = 0usize;
        let mut total = 0usize;
        for text in TABLE
            .iter()
            .map(|(t, _)| *t)
            .chain(BENCH_MESSAGES.iter().copied())
            .cycle()
            .take(100_000)
        {
            total += 1;
            if matches!(set.classify_text(text), Classification::OptOut { .. }) {
                opt_outs += 1;
            }
        }
        assert_eq!(total, 100_000);
        assert!(opt_outs > 0);
        assert!(bench_classify(1_000) > 0.0);
    }
}
