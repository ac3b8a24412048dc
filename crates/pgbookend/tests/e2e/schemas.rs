//! The published JSON Schemas (`docs/schema/`): each is a valid schema, and the files
//! pgbookend writes (`bundle.json`, the marker in PGDATA) match theirs. Every `--json`
//! output of the other tests is checked by `common::schema` as they run.

use crate::common::schema::{schema_dir, validate};
use crate::common::{newest_major, Tool};
use pgbookend_testkit::{Cluster, ClusterOptions};
use serde_json::Value;

fn read(p: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn every_schema_compiles_and_names_its_version() {
    let mut n = 0;
    for e in std::fs::read_dir(schema_dir()).unwrap() {
        let p = e.unwrap().path();
        let Some(name) = p
            .file_name()
            .and_then(|f| f.to_str())
            .and_then(|f| f.strip_suffix(".schema.json"))
        else {
            continue;
        };
        let s = read(&p);
        assert_eq!(
            s["$id"],
            format!("https://pgbookend.org/schema/v1/{name}.schema.json"),
            "{}",
            p.display()
        );
        jsonschema::validator_for(&s).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        n += 1;
    }
    assert!(
        n >= 18,
        "a schema per command report, bundle.json and the marker: {n}"
    );
}

#[test]
fn bundle_and_marker_match_their_schemas() {
    let Some(major) = newest_major() else { return };
    let c = Cluster::start(ClusterOptions::new(major).data_checksums(true));
    let tool = Tool::new(&c);
    tool.start("s-1", &[]).ok();
    let marker = read(&c.pgdata().join("pg_backup_metadata/s-1/backup.json"));
    validate("marker", &marker);
    tool.stop("s-1", &[]).ok();
    let bundle = read(&tool.bundle_dir("s-1").join("bundle.json"));
    validate("bundle", &bundle);
    // And a schema that could not fail would prove nothing: a bundle without its WAL
    // range is refused.
    let mut broken = bundle.clone();
    broken.as_object_mut().unwrap().remove("stop_lsn");
    let v = jsonschema::validator_for(&read(&schema_dir().join("bundle.schema.json"))).unwrap();
    assert!(!v.is_valid(&broken));
}
