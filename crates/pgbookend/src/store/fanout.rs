//! Writing one bundle to several stores: built once (into the first local store that
//! takes it, or, with remote stores only, into a staging directory), then copied or
//! uploaded to every other store, `bundle.json` last everywhere; and how many stores
//! must take it (`--min-stores`). What the bundle holds is the caller's: it passes the
//! function that builds it into a directory.

use super::s3::Settings;
use super::Store;
use crate::bundle::manifest::Manifest;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// How many of `stores` stores must take the bundle (`--min-stores`, all by default;
/// at least one, at most all).
pub fn required_stores(min_stores: Option<usize>, stores: usize) -> usize {
    min_stores.unwrap_or(stores).clamp(1, stores.max(1))
}

/// What writing the bundle did: for each store URL as given, where the bundle is or why
/// it is not there; and the manifest as written (from the first build that succeeded).
pub struct Written {
    pub results: Vec<(String, Result<String>)>,
    pub manifest: Option<Manifest>,
}

/// Writes `id`'s bundle into every store of `stores` (S3 ones reached with `s3`): a store
/// that already holds it is left as it is; `build` writes it once into the first local
/// store's bundle directory (or into `stage/<id>` when no local store took it), and
/// every other store gets a copy of that.
pub fn write(
    id: &str,
    stores: &[String],
    s3: &Settings,
    stage: &Path,
    build: &mut dyn FnMut(&Path) -> Result<Manifest>,
) -> Written {
    let parsed: Vec<(String, Result<Store>)> = stores
        .iter()
        .map(|u| (u.clone(), Store::parse(u, s3)))
        .collect();
    let mut results: Vec<Option<Result<String>>> = vec![None; parsed.len()];
    let mut source: Option<(PathBuf, Manifest)> = None;
    for (i, (_, store)) in parsed.iter().enumerate() {
        match store {
            Err(e) => results[i] = Some(Err(e.clone())),
            Ok(s) if s.has_bundle(id) => {
                results[i] = Some(Ok(s.bundle_location(id)));
            }
            Ok(s) => {
                let Some(dir) = s.local_bundle_dir(id) else {
                    continue;
                };
                if source.is_some() {
                    continue;
                }
                let r = build(&dir);
                results[i] = Some(
                    r.as_ref()
                        .map(|_| dir.display().to_string())
                        .map_err(Clone::clone),
                );
                if let Ok(m) = r {
                    source = Some((dir, m));
                }
            }
        }
    }
    let mut stage_error: Option<Error> = None;
    if source.is_none() && results.iter().any(|r| r.is_none()) {
        let dir = stage.join(id);
        tracing::info!("staging the bundle in {} for upload", dir.display());
        match build(&dir) {
            Ok(m) => source = Some((dir, m)),
            Err(e) => stage_error = Some(e),
        }
    }
    for (i, (_, store)) in parsed.iter().enumerate() {
        if results[i].is_some() {
            continue;
        }
        results[i] = Some(match (store, &source) {
            (Ok(s), Some((from, m))) => s.copy_bundle_from(id, from, m),
            _ => Err(stage_error
                .clone()
                .unwrap_or_else(|| Error::env("the bundle could not be built locally for upload"))),
        });
    }
    Written {
        results: parsed
            .into_iter()
            .zip(results)
            .map(|((url, _), r)| {
                (
                    url,
                    r.unwrap_or_else(|| Err(Error::internal("store not attempted"))),
                )
            })
            .collect(),
        manifest: source.map(|s| s.1),
    }
}
