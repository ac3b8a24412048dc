//! Every `--json` output the tests see through [`super::Tool::run`] is validated against its
//! published schema, `docs/schema/<command>.schema.json` (errors: `error.schema.json`).
//! `PGBOOKEND_TEST_JSON_SAMPLES=DIR` also saves each output there, for writing schemas.

use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The schema directory of the repository.
pub fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/schema")
}

fn compiled(name: &str) -> Option<std::sync::Arc<jsonschema::Validator>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Option<std::sync::Arc<jsonschema::Validator>>>>> =
        OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
    map.entry(name.to_string())
        .or_insert_with(|| {
            let path = schema_dir().join(format!("{name}.schema.json"));
            let text = std::fs::read_to_string(&path).ok()?;
            let schema: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
            let v = jsonschema::validator_for(&schema)
                .unwrap_or_else(|e| panic!("{}: not a valid schema: {e}", path.display()));
            Some(std::sync::Arc::new(v))
        })
        .clone()
}

/// Validates `doc` against the schema `name`; panics with every violation. A name without
/// a schema file panics too: every command's report has one.
#[track_caller]
pub fn validate(name: &str, doc: &Value) {
    let Some(v) = compiled(name) else {
        panic!(
            "no schema {}/{name}.schema.json for this JSON output",
            schema_dir().display()
        );
    };
    let errors: Vec<String> = v
        .iter_errors(doc)
        .map(|e| format!("  at {}: {e}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{name}: output does not match docs/schema/{name}.schema.json:\n{}\n{}",
        errors.join("\n"),
        serde_json::to_string_pretty(doc).unwrap_or_default()
    );
}

/// Called for each `pgbookend ... --json` run: saves a sample when asked, then validates.
pub fn check_output(args: &[&str], stdout: &str) {
    if !args.contains(&"--json") {
        return;
    }
    // The subcommand: the first word with a schema (a global flag's value, as in
    // `--on-success CMD stop`, is skipped), else the first word (which then fails).
    let words = || args.iter().filter(|a| !a.starts_with('-'));
    let Some(command) = words()
        .find(|a| schema_dir().join(format!("{a}.schema.json")).is_file())
        .or_else(|| words().next())
    else {
        return;
    };
    let Ok(doc) = serde_json::from_str::<Value>(stdout) else {
        return;
    };
    let name = if doc.get("error").is_some() && doc.as_object().is_some_and(|o| o.len() == 1) {
        "error".to_string()
    } else {
        command.to_string()
    };
    if let Some(dir) = std::env::var_os("PGBOOKEND_TEST_JSON_SAMPLES") {
        let dir = PathBuf::from(dir).join(&name);
        let _ = std::fs::create_dir_all(&dir);
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let _ = std::fs::write(dir.join(format!("{n}-{}.json", std::process::id())), stdout);
        if std::env::var_os("PGBOOKEND_TEST_JSON_NO_VALIDATE").is_some() {
            return;
        }
    }
    validate(&name, &doc);
}
