//! Suspect pages judged against the WAL of the backup's window, as the page check of
//! `prepare` does: a page whose checksum failed twice with the same bytes is repaired by
//! recovery when the window's WAL rewrites that block (a full-page image, or the
//! relation created or truncated in the window); otherwise it is corrupt in the backup,
//! as it is on the server. Judged after stop, from the bundle in the first store.

use super::pages::Suspect;
use crate::error::{Class, Error, Result};
use crate::store::Store;
use crate::verify::blockset::{read_window, Window};
use crate::verify::{CopyToCheck, PageCheckMode};
use std::path::Path;

/// What the WAL says of one suspect page.
pub const REPAIRED: &str = "repaired: the WAL of the window rewrites this block";
/// The page is corrupt in the backup (and on the server).
pub const CORRUPT: &str = "corrupt: the WAL of the window does not rewrite this block";

/// Fills each suspect's `wal` verdict (nothing to do without suspects).
pub fn judge(stores: &[Store], id: &str, suspects: &mut [Suspect]) {
    if suspects.is_empty() {
        return;
    }
    let window = match stores.first() {
        Some(s) => window_of(s, id),
        None => Ok(None),
    };
    for s in suspects.iter_mut() {
        s.wal = Some(match &window {
            Ok(Some(w)) => verdict(w, s).to_string(),
            Ok(None) => "not judged: the WAL of the window is not readable here (no WAL in the bundle and no archive directory)".to_string(),
            Err(e) => format!("not judged: {e}"),
        });
    }
}

/// The verdict on one page.
fn verdict(w: &Window, s: &Suspect) -> &'static str {
    match crate::verify::scan::parse_rel_path(&s.path) {
        Some(r) if w.touches(&r.rel, r.fork, s.block) => REPAIRED,
        _ => CORRUPT,
    }
}

/// The WAL of the window of backup `id`, read from its bundle in `store`.
fn window_of(store: &Store, id: &str) -> Result<Option<Window>> {
    let scratch = tempfile::Builder::new()
        .prefix("pgbookend-judge.")
        .tempdir()
        .map_err(|e| Error::env(format!("cannot create a scratch directory: {e}")))?;
    let dir = store.fetch_bundle(id, scratch.path())?;
    let loaded = crate::restore::load_bundle(&dir, Some(id), false).map_err(|problems| {
        let list: Vec<String> = problems.into_iter().map(|p| p.message).collect();
        Error::new(
            Class::Check,
            format!("the bundle of {id}: {}", list.join("; ")),
        )
    })?;
    read_window(&CopyToCheck {
        pgdata: Path::new("/"),
        remap: &[],
        archive: None,
        mode: PageCheckMode::Full,
        bundle_dir: &loaded.dir,
        manifest: &loaded.manifest,
        start: loaded.label.as_ref().map(|l| l.start_wal_location),
        control: loaded.control.as_ref(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgbookend_formats::walreader::{BlockRef, Detail, Record, RelFileLocator};
    use pgbookend_formats::Lsn;

    fn suspect(path: &str, block: u32) -> Suspect {
        Suspect {
            path: path.into(),
            block,
            problem: "BadChecksum".into(),
            wal: None,
        }
    }

    /// A window whose WAL rewrites block 3 of relation 16384 in database 5, in the
    /// default tablespace and in tablespace 16400.
    fn window() -> Window {
        let mut w = Window::new(Lsn(100), Lsn(1000));
        for spc in [1663, 16400] {
            w.add(&Record {
                lsn: Lsn(200),
                end: Lsn(250),
                prev: Lsn(0),
                xid: 0,
                rmid: 0,
                info: 0,
                total_len: 50,
                blocks: vec![BlockRef {
                    id: 0,
                    rel: RelFileLocator {
                        spc,
                        db: 5,
                        rel: 16384,
                    },
                    fork: 0,
                    block: 3,
                    will_init: false,
                    data_len: 0,
                    image: None,
                }],
                main_data_len: 0,
                origin: None,
                toplevel_xid: None,
                detail: Detail::Other,
            });
        }
        w
    }

    #[test]
    fn a_block_the_window_rewrites_is_repaired_any_other_is_corrupt() {
        let w = window();
        assert_eq!(verdict(&w, &suspect("base/5/16384", 3)), REPAIRED);
        assert_eq!(
            verdict(&w, &suspect("pg_tblspc/16400/PG_15_202209061/5/16384", 3)),
            REPAIRED
        );
        assert_eq!(verdict(&w, &suspect("base/5/16384", 4)), CORRUPT);
        assert_eq!(verdict(&w, &suspect("base/5/16384_fsm", 3)), CORRUPT);
        assert_eq!(verdict(&w, &suspect("base/6/16384", 3)), CORRUPT);
        assert_eq!(verdict(&w, &suspect("global/16384", 3)), CORRUPT);
    }
}
