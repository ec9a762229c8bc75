//! The one line each reliability test prints for `scripts/reliability-report`.

use serde_json::{Value, json};

/// Prints `RELIABILITY` and a JSON object: the common keys in the documented order
/// (`test`, `fault`, `runs`, `outcome`, `lost`, `duplicated`), then those of `extra` (an
/// object, or `Value::Null` for none). Every value is JSON-escaped.
pub fn report(test: &str, fault: &str, runs: u64, outcome: &str, lost: u64, duplicated: u64, extra: Value) {
    let common = [
        ("test", json!(test)),
        ("fault", json!(fault)),
        ("runs", json!(runs)),
        ("outcome", json!(outcome)),
        ("lost", json!(lost)),
        ("duplicated", json!(duplicated)),
    ];
    let mut fields: Vec<(String, Value)> = common.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    if let Value::Object(extra) = extra {
        fields.extend(extra);
    }
    // serde_json's own maps sort their keys; the line keeps the documented order.
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("{}: {v}", json!(k))).collect();
    println!("RELIABILITY {{{}}}", body.join(", "));
}
