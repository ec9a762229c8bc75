//! The one line each reliability test prints for `scripts/reliability-report`.
//!
//! The line goes straight to the process's standard output, past libtest's capture, so
//! that the README's plain `cargo test` shows it too and CI collects the rows from the
//! run it makes anyway, instead of running the reliability suites a second time.

use std::io::Write;

use serde_json::{Value, json};

use crate::ledger::Figures;

/// Prints `RELIABILITY` and a JSON object: the common keys in the documented order
/// (`test`, `fault`, `runs`, `outcome`, then the figure columns of `figures`: `lost`,
/// `duplicated`, `acknowledged`, `delivered`, `ledger`, `reader`), then those of `extra`
/// (an object, or `Value::Null` for none). Every value is JSON-escaped.
pub fn report(test: &str, fault: &str, runs: u64, outcome: &str, figures: &Figures, extra: Value) {
    let common = [("test", json!(test)), ("fault", json!(fault)), ("runs", json!(runs)), ("outcome", json!(outcome))];
    let mut fields: Vec<(String, Value)> =
        common.into_iter().chain(figures.columns()).map(|(k, v)| (k.to_owned(), v)).collect();
    if let Value::Object(extra) = extra {
        fields.extend(extra);
    }
    // serde_json's own maps sort their keys; the line keeps the documented order.
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("{}: {v}", json!(k))).collect();
    // One write of the whole line, so that lines of tests running in parallel never mix.
    let line = format!("RELIABILITY {{{}}}\n", body.join(", "));
    let _ = std::io::stdout().lock().write_all(line.as_bytes());
}
