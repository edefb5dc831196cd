//! Hostile input (property tests, a bounded run on every `cargo test`): the webhook
//! splitter, the signature header check and the keyword matcher never panic,
//! whatever they are given — arbitrary bytes, and the realistic webhook bodies of
//! `../shared/fixtures/` (Meta's, library fixtures) mutated structurally (values
//! swapped for other types, huge numbers, odd strings, keys dropped, arrays
//! emptied or repeated) and byte-wise. `PROPTEST_CASES` runs more.

use proptest::prelude::*;
use rand::{rngs::StdRng, Rng, SeedableRng};
use secrecy::SecretString;
use serde_json::Value;

use crate::{
    consent::matcher::KeywordSet,
    webhooks::{signature::verify_signature, split::split_webhook},
};

/// Every fixture body: our Meta fixtures and the real-world corpus.
fn corpus() -> &'static [Vec<u8>] {
    static CORPUS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    CORPUS.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures");
        let mut out = vec![];
        for dir in ["meta", "realworld/payloads"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
                continue;
            };
            let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
            paths.sort();
            for p in paths {
                if p.extension().is_some_and(|e| e == "json") {
                    out.push(std::fs::read(&p).unwrap());
                }
            }
        }
        assert!(
            out.len() > 100,
            "the fixture corpus is missing ({} bodies)",
            out.len()
        );
        out
    })
}

fn odd_value(rng: &mut StdRng) -> Value {
    match rng.gen_range(0..12) {
        0 => Value::Null,
        1 => Value::Bool(rng.gen()),
        2 => serde_json::json!(u64::MAX),
        3 => serde_json::json!(-1e308),
        4 => serde_json::json!(i64::MIN),
        5 => Value::String(String::new()),
        6 => Value::String("\u{0}\u{202e}\u{feff}🙂\u{10ffff}".into()),
        7 => Value::String("x".repeat(rng.gen_range(1..5000))),
        8 => Value::Array(vec![]),
        9 => serde_json::json!({}),
        10 => serde_json::json!([[[[[[[[{"a": [1, {"b": null}]}]]]]]]]]),
        _ => Value::String(format!("{}", rng.gen::<u64>())),
    }
}

/// Changes one random node of the tree.
fn mutate(v: &mut Value, rng: &mut StdRng, depth: usize) {
    let descend = depth < 12 && rng.gen_bool(0.8);
    match v {
        Value::Object(map) if !map.is_empty() && descend => {
            let i = rng.gen_range(0..map.len());
            let key = map.keys().nth(i).cloned().unwrap();
            match rng.gen_range(0..10) {
                0 => {
                    map.remove(&key);
                }
                1 => {
                    map.insert(format!("{key}_extra"), odd_value(rng));
                }
                _ => mutate(map.get_mut(&key).unwrap(), rng, depth + 1),
            }
        }
        Value::Array(items) if !items.is_empty() && descend => match rng.gen_range(0..10) {
            0 => items.clear(),
            1 => {
                let first = items[0].clone();
                items.extend(std::iter::repeat_n(first, rng.gen_range(1..50)));
            }
            _ => {
                let i = rng.gen_range(0..items.len());
                mutate(&mut items[i], rng, depth + 1)
            }
        },
        _ => *v = odd_value(rng),
    }
}

fn mutate_bytes(bytes: &mut Vec<u8>, rng: &mut StdRng) {
    if bytes.is_empty() {
        return;
    }
    let i = rng.gen_range(0..bytes.len());
    match rng.gen_range(0..4) {
        0 => bytes[i] ^= 1 << rng.gen_range(0..8),
        1 => bytes.truncate(i),
        2 => bytes.insert(i, [b'"', b'{', b'[', b'\\', 0, 0xff][rng.gen_range(0..6)]),
        _ => {
            let end = (i + rng.gen_range(1..64)).min(bytes.len());
            bytes.drain(i..end);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20_000, ..ProptestConfig::default() })]

    #[test]
    fn the_splitter_never_panics_on_arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = split_webhook(&body, 1);
    }

    #[test]
    fn the_splitter_never_panics_on_mutated_real_bodies(seed in 0usize..10_000, rng_seed in any::<u64>(), mutations in 1usize..8) {
        let corpus = corpus();
        let mut rng = StdRng::seed_from_u64(rng_seed);
        let body = &corpus[seed % corpus.len()];
        // (A few corpus files are not one JSON document: byte mutations only.)
        if let Ok(mut tree) = serde_json::from_slice::<Value>(body) {
            for _ in 0..mutations {
                mutate(&mut tree, &mut rng, 0);
            }
            let text = serde_json::to_vec(&tree).unwrap();
            let _ = split_webhook(&text, 7);
        }
        let mut raw = body.clone();
        for _ in 0..mutations {
            mutate_bytes(&mut raw, &mut rng);
        }
        let _ = split_webhook(&raw, 7);
    }

    #[test]
    fn the_signature_check_never_panics_and_accepts_only_the_signature(header in proptest::collection::vec(any::<u8>(), 0..100), body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let secrets = [SecretString::from("test_app_secret".to_string())];
        let good = crate::webhooks::signature::sign("test_app_secret", &body);
        let accepted = verify_signature(&secrets, Some(&header), &body).is_ok();
        prop_assert_eq!(accepted, header == good.as_bytes());
    }

    #[test]
    fn the_matcher_never_panics(text in any::<String>(), payload in proptest::option::of(any::<String>())) {
        let set = KeywordSet::defaults();
        let _ = set.classify_text(&text);
        let _ = set.classify_button(payload.as_deref(), Some(&text));
        let _ = crate::consent::matcher::normalize(&text);
    }
}
