//! The stop verdict: from what writing the stores did and what the wait for the archive
//! found to what `stop` concludes — safe, WAL not safe (exit 5) or rescuable (exit 7).
//! A pure function of its inputs; the agent carries out what follows from it.

use crate::agent::rescue::Written;
use crate::bundle::manifest::WalArchive;
use crate::error::{Class, Error};
use crate::store::fanout::required_stores;
use std::path::Path;
use std::time::Duration;

/// The facts of one stop the verdict is drawn from, beside the stores' outcomes.
pub struct StopFacts<'a> {
    pub id: &'a str,
    pub min_stores: Option<usize>,
    /// Where the label is saved (the rescue copy).
    pub saved: &'a Path,
    pub stop_wal_file: &'a str,
    pub wal_archive: WalArchive,
    pub wal_detail: Option<&'a str>,
    pub archive_timeout: Duration,
}

/// What `stop` concludes.
#[derive(Debug)]
pub struct Verdict {
    /// The bundle is in at least the required number of stores: the rescue copy can go.
    pub in_enough_stores: bool,
    /// The error `stop` reports (`None`: done and safe).
    pub error: Option<Error>,
}

/// The verdict of a stop whose stores did `w`.
pub fn stop(f: &StopFacts<'_>, w: &Written) -> Verdict {
    let outcomes = &w.outcomes;
    let written = outcomes.iter().filter(|o| o.ok).count();
    let required = required_stores(f.min_stores, outcomes.len());
    if written >= required {
        let error = (f.wal_archive == WalArchive::NotConfirmed).then(|| {
            Error::new(
                Class::WalNotSafe,
                format!(
                    "the bundle is written, but WAL segment {} was not archived within --archive-timeout ({}); the backup is not restorable until it is",
                    f.stop_wal_file,
                    crate::timefmt::human_duration(f.archive_timeout)
                ),
            )
            .hint("check archive_command and the server log; pg_stat_archiver shows the last failure")
            .hint(f.wal_detail.unwrap_or_default())
        });
        return Verdict {
            in_enough_stores: true,
            error,
        };
    }
    let names: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.ok)
        .map(|o| format!("{} ({})", o.store, o.error.as_deref().unwrap_or("?")))
        .collect();
    let mut e = Error::new(
        Class::Rescuable,
        format!(
            "the bundle could not be written to: {}; the label is saved in {} and the bundle is rescuable",
            names.join("; "),
            f.saved.display()
        ),
    );
    if written > 0 {
        let good: Vec<&str> = outcomes
            .iter()
            .filter_map(|o| o.location.as_deref())
            .collect();
        e.message.push_str(&format!(
            "; it is in {written} of {} stores, fewer than --min-stores {required}",
            outcomes.len()
        ));
        e = e.hint(format!("the bundle is complete in {}", good.join(", ")));
    }
    for h in &w.hints {
        e = e.hint(h.clone());
    }
    let e = e.hint(format!(
        "once the cause is fixed (e.g. space freed), run `pgbookend rescue --id {}`",
        f.id
    ));
    Verdict {
        in_enough_stores: false,
        error: Some(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::state::StoreOutcome;

    fn ok(store: &str) -> StoreOutcome {
        StoreOutcome {
            store: store.into(),
            ok: true,
            location: Some(format!("{store}/b1")),
            error: None,
        }
    }

    fn failed(store: &str, why: &str) -> StoreOutcome {
        StoreOutcome {
            store: store.into(),
            ok: false,
            location: None,
            error: Some(why.into()),
        }
    }

    fn written(outcomes: Vec<StoreOutcome>) -> Written {
        Written {
            outcomes,
            hints: vec!["free space in /srv/full".into()],
            manifest: None,
        }
    }

    /// The verdict of each case, one block per case: whether the rescue copy goes, and
    /// the error's class, message and hints.
    #[test]
    fn stop_verdicts() {
        let facts = |min_stores, wal_archive| StopFacts {
            id: "b1",
            min_stores,
            saved: Path::new("/var/lib/pgbookend/rescue/b1"),
            stop_wal_file: "000000010000000000000003",
            wal_archive,
            wal_detail: Some("last failed: 000000010000000000000003 at 12:00"),
            archive_timeout: Duration::from_secs(300),
        };
        let two_ok = || written(vec![ok("/srv/a"), ok("/srv/b")]);
        let one_failed = || written(vec![ok("/srv/a"), failed("/srv/full", "No space left")]);
        let all_failed = || {
            written(vec![
                failed("/srv/full", "No space left"),
                failed("s3://b/p", "connection refused"),
            ])
        };
        let cases = [
            (
                "all stores, archived",
                facts(None, WalArchive::Archived),
                two_ok(),
            ),
            (
                "all stores, archive not confirmed",
                facts(None, WalArchive::NotConfirmed),
                two_ok(),
            ),
            (
                "one of two, default min-stores",
                facts(None, WalArchive::Archived),
                one_failed(),
            ),
            (
                "one of two, --min-stores 1",
                facts(Some(1), WalArchive::NotWaited),
                one_failed(),
            ),
            (
                "none of two, --min-stores 1",
                facts(Some(1), WalArchive::Archived),
                all_failed(),
            ),
            (
                "--min-stores 5 of two",
                facts(Some(5), WalArchive::Archived),
                two_ok(),
            ),
        ];
        let mut out = String::new();
        for (name, f, w) in cases {
            let v = stop(&f, &w);
            out.push_str(&format!(
                "== {name}\nin enough stores: {}\n",
                v.in_enough_stores
            ));
            match v.error {
                None => out.push_str("error: none\n"),
                Some(e) => {
                    out.push_str(&format!("error ({:?}): {}\n", e.class(), e.message));
                    for h in e.hints {
                        out.push_str(&format!("  hint: {h}\n"));
                    }
                }
            }
        }
        insta::assert_snapshot!("stop_verdicts", out);
        assert_eq!(required_stores(None, 0), 1);
        assert_eq!(required_stores(Some(0), 3), 1);
    }
}
