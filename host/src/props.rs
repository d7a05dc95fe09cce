//! Strategies shared by the property tests (the `mod props` beside the code each tests).

use proptest::prelude::*;
use serde_json::Value;

/// A string: mostly one of `words` (what a decoder looks for), else any text.
fn word(words: &'static [&'static str]) -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        2 => proptest::sample::select(words).prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

/// Any JSON value, its object keys mostly from `keys` and its strings mostly from `words`, so
/// that generated documents get past a decoder's first checks.
pub fn json(
    keys: &'static [&'static str],
    words: &'static [&'static str],
) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        word(words).prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(word(keys), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Bytes to decode: arbitrary ones, or the text of a [`json`] value.
pub fn bytes_or_json(
    keys: &'static [&'static str],
    words: &'static [&'static str],
) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        json(keys, words).prop_map(|v| serde_json::to_vec(&v).expect("JSON serializes")),
    ]
}
