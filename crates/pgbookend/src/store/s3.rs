//! S3-compatible object storage as a bundle store (`s3://bucket/prefix`).
//!
//! A bundle lives under `<prefix>/<id>/` exactly as in a local store: one object per file,
//! `bundle.json` last, so a bundle is visible (complete) only once every other object is
//! uploaded and verified.
//!
//! Settings, strongest first: the `--s3-endpoint`/`--s3-region`/`--s3-path-style` flags,
//! the config file's `s3_endpoint`/`s3_region`/`s3_path_style`, the standard AWS
//! environment (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, `AWS_REGION`,
//! `AWS_DEFAULT_REGION`), the AWS shared files (`~/.aws/config`, `~/.aws/credentials`,
//! or `AWS_CONFIG_FILE`/`AWS_SHARED_CREDENTIALS_FILE`, profile `AWS_PROFILE`). Credentials
//! come only from the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`), the shared files, or the providers `object_store` knows (web
//! identity, ECS container, instance metadata). They are never written anywhere: the agent
//! inherits the environment, and every message from the object store is scrubbed of their
//! values before it can reach a log, an error or JSON.
//!
//! The agent is synchronous and must stay small while it holds a backup: a current-thread
//! tokio runtime is built inside each [`Client`], only when an S3 store is used.

use crate::bundle::manifest::{FileEntry, Manifest, MANIFEST};
use crate::error::{io_err, Class, Error, Result};
use crate::fsutil::{self, Ownership};
use futures_util::StreamExt;
use md5::{Digest as _, Md5};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Objects larger than this are uploaded in parts of this size (S3 needs at least 5 MiB
/// per part but the last).
pub const PART_SIZE: usize = 8 << 20;
/// Parts uploaded at once: with [`PART_SIZE`], what an upload may hold in memory.
const PARTS_IN_FLIGHT: usize = 2;
/// How long a request may be retried after its first attempt (transient errors: 5xx,
/// throttling, lost connections), unless `s3_retry_timeout` says otherwise.
pub const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(120);

/// A parsed `s3://bucket/prefix` location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    /// Without leading or trailing `/`; empty for the bucket's root.
    pub prefix: String,
}

impl S3Url {
    /// Parses `s3://bucket[/prefix]`. Credentials in the URL are refused: store URLs are
    /// recorded in markers, state and output.
    pub fn parse(url: &str) -> Result<S3Url> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| Error::usage(format!("store {url:?} is not an s3:// URL")))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.contains('@') || bucket.contains(':') {
            return Err(Error::usage(format!(
                "store {:?}: credentials or ports do not belong in an s3:// URL",
                redact_userinfo(url)
            ))
            .hint("give s3://bucket/prefix; credentials come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, the endpoint from --s3-endpoint or AWS_ENDPOINT_URL"));
        }
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if !valid_bucket {
            return Err(Error::usage(format!(
                "store {url:?}: {bucket:?} is not a bucket name (3 to 63 letters, digits, '.', '-')"
            ))
            .hint("give s3://bucket/prefix"));
        }
        let prefix = prefix.trim_matches('/');
        if !prefix.is_empty() {
            let ok = prefix
                .split('/')
                .all(|p| !p.is_empty() && p != "." && p != "..")
                && ObjPath::parse(prefix).is_ok();
            if !ok {
                return Err(Error::usage(format!(
                    "store {url:?}: the prefix {prefix:?} has an empty, '.' or '..' component"
                )));
            }
        }
        Ok(S3Url {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }

    /// The canonical form, as recorded in markers and state.
    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    /// Where `id`'s bundle lives: `s3://bucket/prefix/id/`.
    pub fn bundle_location(&self, id: &str) -> String {
        format!("{}/{id}/", self.url())
    }

    /// The object key of `rel` (a path relative to the prefix).
    fn key(&self, rel: &str) -> String {
        if self.prefix.is_empty() {
            rel.to_string()
        } else {
            format!("{}/{rel}", self.prefix)
        }
    }
}

fn redact_userinfo(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// The non-secret S3 settings given by flags or the config file. Carried to the agent in
/// its settings (stdin); credentials never are.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Settings {
    /// `https://host[:port]` or `http://...` of an S3-compatible service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`) instead of virtual-hosted
    /// (`bucket.endpoint/key`). Default: path style with an endpoint, virtual-hosted on AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_style: Option<bool>,
    /// How long a failing request is retried (default [`DEFAULT_RETRY_TIMEOUT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_timeout_ms: Option<u64>,
}

impl Settings {
    /// `self` where set, else `weaker`.
    pub fn or(self, weaker: Settings) -> Settings {
        Settings {
            endpoint: self.endpoint.or(weaker.endpoint),
            region: self.region.or(weaker.region),
            path_style: self.path_style.or(weaker.path_style),
            retry_timeout_ms: self.retry_timeout_ms.or(weaker.retry_timeout_ms),
        }
    }
}

/// One S3 store: where it is and the settings to reach it. The settings travel with the
/// store (resolved by whoever parses its URL: flags, then the config file; in the agent,
/// its settings on stdin), so nothing reads process-wide state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Store {
    pub url: S3Url,
    pub settings: Settings,
}

impl S3Store {
    /// Parses `s3://bucket[/prefix]` (see [`S3Url::parse`]) with `settings`.
    pub fn parse(url: &str, settings: &Settings) -> Result<S3Store> {
        Ok(S3Store {
            url: S3Url::parse(url)?,
            settings: settings.clone(),
        })
    }
}

/// Static credentials. `Debug` never shows them.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(redacted)")
    }
}

/// Everything needed to talk to a bucket, resolved from settings, environment and files.
struct Resolved {
    endpoint: Option<String>,
    region: String,
    path_style: bool,
    credentials: Option<Credentials>,
    retry_timeout: Duration,
    /// Every secret value known to this process, to scrub from messages.
    secrets: Vec<String>,
}

/// The environment variables whose values are secrets.
const SECRET_VARS: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_SSE_CUSTOMER_KEY_BASE64",
];
/// The shared-file keys whose values are secrets.
const SECRET_KEYS: &[&str] = &[
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "aws_security_token",
];

/// One profile of the AWS shared files: its keys, with nested `s3 =` settings as `s3.key`.
type Profile = HashMap<String, String>;

/// Parses an AWS shared file (INI with nested sub-sections) into sections.
fn parse_ini(text: &str) -> HashMap<String, Profile> {
    let mut out: HashMap<String, Profile> = HashMap::new();
    let mut section: Option<String> = None;
    let mut nested: Option<String> = None;
    for raw in text.lines() {
        let line = raw.split([';', '#']).next().unwrap_or("");
        if line.trim().is_empty() {
            continue;
        }
        let indented = line.starts_with([' ', '\t']);
        let line = line.trim();
        if line.starts_with('[') && line.ends_with(']') {
            section = Some(line[1..line.len() - 1].trim().to_string());
            nested = None;
            continue;
        }
        let Some(sec) = &section else { continue };
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
        let map = out.entry(sec.clone()).or_default();
        if indented {
            if let Some(n) = &nested {
                map.insert(format!("{n}.{k}"), v);
            }
            continue;
        }
        if v.is_empty() {
            nested = Some(k);
        } else {
            nested = None;
            map.insert(k, v);
        }
    }
    out
}

/// The selected profile of the AWS shared files (`AWS_PROFILE`, else `default`), merged
/// from the config file and the credentials file (whose values win). `None` if neither
/// file holds it; an error if `AWS_PROFILE` names a profile that does not exist.
fn load_profile(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Profile>> {
    let home = env("HOME").map(PathBuf::from);
    let named = env("AWS_PROFILE").or_else(|| env("AWS_DEFAULT_PROFILE"));
    let name = named.clone().unwrap_or_else(|| "default".into());
    let config_path = env("AWS_CONFIG_FILE")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".aws/config")));
    let creds_path = env("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".aws/credentials")));
    let read = |p: &Option<PathBuf>| -> Result<HashMap<String, Profile>> {
        let Some(p) = p else {
            return Ok(HashMap::new());
        };
        match std::fs::read_to_string(p) {
            Ok(t) => Ok(parse_ini(&t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashMap::new()),
            Err(e) => Err(io_err("cannot read the AWS shared file", p, e)),
        }
    };
    let config = read(&config_path)?;
    let creds = read(&creds_path)?;
    let config_section = if name == "default" {
        config
            .get("default")
            .or_else(|| config.get("profile default"))
    } else {
        config.get(&format!("profile {name}"))
    };
    let creds_section = creds.get(&name);
    if config_section.is_none() && creds_section.is_none() {
        if named.is_some() {
            return Err(Error::env(format!(
                "AWS_PROFILE names the profile {name:?}, which neither the AWS config file nor the credentials file holds"
            ))
            .hint("check AWS_PROFILE, ~/.aws/config ([profile NAME]) and ~/.aws/credentials ([NAME])"));
        }
        return Ok(None);
    }
    let mut p = config_section.cloned().unwrap_or_default();
    for (k, v) in creds_section.cloned().unwrap_or_default() {
        p.insert(k, v);
    }
    Ok(Some(p))
}

/// The endpoint: the flag, the AWS environment, then the profile; an http(s) URL
/// without credentials in it.
fn resolve_endpoint(
    settings: &Settings,
    env_nonempty: &dyn Fn(&str) -> Option<String>,
    profile: &Profile,
) -> Result<Option<String>> {
    let endpoint = settings
        .endpoint
        .clone()
        .or_else(|| env_nonempty("AWS_ENDPOINT_URL_S3"))
        .or_else(|| env_nonempty("AWS_ENDPOINT_URL"))
        .or_else(|| env_nonempty("AWS_ENDPOINT"))
        .or_else(|| profile.get("s3.endpoint_url").cloned())
        .or_else(|| profile.get("endpoint_url").cloned())
        .map(|e| e.trim_end_matches('/').to_string());
    if let Some(e) = &endpoint {
        let ok = (e.starts_with("http://") || e.starts_with("https://"))
            && !e
                .split_once("://")
                .map(|x| x.1)
                .unwrap_or("")
                .split('/')
                .next()
                .unwrap_or("")
                .contains('@');
        if !ok {
            return Err(Error::usage(format!(
                "S3 endpoint {:?} is not an http:// or https:// URL without credentials",
                redact_userinfo(e)
            ))
            .hint("give --s3-endpoint https://host[:port] (or AWS_ENDPOINT_URL)"));
        }
    }
    Ok(endpoint)
}

/// The credentials: explicit, the environment's pair, then the profile's (none:
/// anonymous). Every secret met is added to `secrets` for scrubbing.
fn resolve_credentials(
    explicit: Option<&Credentials>,
    env_nonempty: &dyn Fn(&str) -> Option<String>,
    profile: &Profile,
    secrets: &mut Vec<String>,
) -> Result<Option<Credentials>> {
    Ok(if let Some(c) = explicit {
        secrets.push(c.access_key_id.clone());
        secrets.push(c.secret_access_key.clone());
        secrets.extend(c.session_token.clone());
        Some(c.clone())
    } else if let (Some(id), Some(secret)) = (
        env_nonempty("AWS_ACCESS_KEY_ID"),
        env_nonempty("AWS_SECRET_ACCESS_KEY"),
    ) {
        Some(Credentials {
            access_key_id: id,
            secret_access_key: secret,
            session_token: env_nonempty("AWS_SESSION_TOKEN")
                .or_else(|| env_nonempty("AWS_SECURITY_TOKEN")),
        })
    } else if env_nonempty("AWS_ACCESS_KEY_ID").is_some()
        || env_nonempty("AWS_SECRET_ACCESS_KEY").is_some()
    {
        return Err(
            Error::env("only one of AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY is set")
                .hint("set both, or neither (to use AWS_PROFILE and ~/.aws/credentials)"),
        );
    } else if let (Some(id), Some(secret)) = (
        profile.get("aws_access_key_id"),
        profile.get("aws_secret_access_key"),
    ) {
        Some(Credentials {
            access_key_id: id.clone(),
            secret_access_key: secret.clone(),
            session_token: profile.get("aws_session_token").cloned(),
        })
    } else {
        None
    })
}

/// Resolves the connection settings (see the module documentation for the order).
fn resolve(
    settings: &Settings,
    explicit: Option<&Credentials>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Resolved> {
    let env_nonempty = |k: &str| env(k).filter(|v| !v.is_empty());
    let profile = load_profile(&env_nonempty)?.unwrap_or_default();
    let mut secrets: Vec<String> = SECRET_VARS.iter().filter_map(|k| env_nonempty(k)).collect();
    secrets.extend(
        SECRET_KEYS
            .iter()
            .filter_map(|k| profile.get(*k).filter(|v| !v.is_empty()).cloned()),
    );
    let endpoint = resolve_endpoint(settings, &env_nonempty, &profile)?;
    let region = settings
        .region
        .clone()
        .or_else(|| env_nonempty("AWS_REGION"))
        .or_else(|| env_nonempty("AWS_DEFAULT_REGION"))
        .or_else(|| profile.get("region").cloned())
        .unwrap_or_else(|| "us-east-1".into());
    let path_style = settings
        .path_style
        .or_else(
            || match profile.get("s3.addressing_style").map(|s| s.as_str()) {
                Some("path") => Some(true),
                Some("virtual") => Some(false),
                _ => None,
            },
        )
        .unwrap_or(endpoint.is_some());
    let credentials = resolve_credentials(explicit, &env_nonempty, &profile, &mut secrets)?;
    secrets.retain(|s| s.len() >= 4);
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets.dedup();
    let retry_timeout = settings
        .retry_timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_RETRY_TIMEOUT);
    Ok(Resolved {
        endpoint,
        region,
        path_style,
        credentials,
        retry_timeout,
        secrets,
    })
}

/// Replaces every known secret value in `text`.
fn scrub(secrets: &[String], text: &str) -> String {
    let mut t = text.to_string();
    for s in secrets {
        if t.contains(s.as_str()) {
            t = t.replace(s.as_str(), "[redacted]");
        }
    }
    t
}

/// Makes rustls use ring (the only provider compiled in); once per process.
fn install_crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A connection to one S3 store, with its own current-thread runtime.
pub struct Client {
    rt: tokio::runtime::Runtime,
    store: AmazonS3,
    pub url: S3Url,
    secrets: Vec<String>,
}

/// One object of a store, with its key relative to the store's prefix.
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// Unix seconds.
    pub modified: i64,
}

impl Client {
    /// Connects to `store` with its settings and the standard AWS credentials.
    pub fn open(store: &S3Store) -> Result<Client> {
        Self::open_with(&store.url, &store.settings, None)
    }

    /// Connects with explicit settings and (for library users) explicit credentials.
    pub fn open_with(
        url: &S3Url,
        settings: &Settings,
        credentials: Option<&Credentials>,
    ) -> Result<Client> {
        let env = |k: &str| std::env::var(k).ok();
        let r = resolve(settings, credentials, &env)?;
        install_crypto();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::internal(format!("cannot start the S3 client runtime: {e}")))?;
        let allow_http = r
            .endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"));
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&url.bucket)
            .with_region(&r.region)
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(allow_http)
                    .with_connect_timeout(Duration::from_secs(10))
                    .with_timeout(Duration::from_secs(300)),
            )
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(200),
                    max_backoff: Duration::from_secs(10),
                    base: 2.0,
                },
                max_retries: 10,
                retry_timeout: r.retry_timeout,
            });
        match &r.endpoint {
            Some(ep) if r.path_style => {
                b = b.with_endpoint(ep).with_virtual_hosted_style_request(false)
            }
            Some(ep) => {
                // Virtual-hosted with a custom endpoint: the bucket is part of the host.
                let (scheme, host) = ep.split_once("://").unwrap_or(("https", ep));
                b = b
                    .with_endpoint(format!("{scheme}://{}.{host}", url.bucket))
                    .with_virtual_hosted_style_request(true)
            }
            None => b = b.with_virtual_hosted_style_request(!r.path_style),
        }
        if let Some(c) = &r.credentials {
            b = b
                .with_access_key_id(&c.access_key_id)
                .with_secret_access_key(&c.secret_access_key);
            if let Some(t) = &c.session_token {
                b = b.with_token(t);
            }
        }
        let store = b.build().map_err(|e| {
            Error::env(format!(
                "S3 store {}: invalid settings: {}",
                url.url(),
                scrub(&r.secrets, &e.to_string())
            ))
            .hint("check --s3-endpoint/--s3-region and the AWS_* environment")
        })?;
        Ok(Client {
            rt,
            store,
            url: url.clone(),
            secrets: r.secrets,
        })
    }

    /// Runs `f` on this client's runtime, from a thread that does not otherwise use it.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    fn path(&self, rel: &str) -> Result<ObjPath> {
        let key = self.url.key(rel);
        ObjPath::parse(&key)
            .map_err(|e| Error::internal(format!("invalid object key {key:?}: {e}")))
    }

    /// An environment error for a failed operation, scrubbed of secrets, with a hint that
    /// matches the cause.
    fn fail(&self, what: &str, e: &object_store::Error) -> Error {
        let text = scrub(&self.secrets, &e.to_string());
        let mut err = Error::env(format!("S3 store {}: {what}: {text}", self.url.url()));
        let t = text.to_ascii_lowercase();
        if t.contains("nosuchbucket") {
            err = err.hint(format!(
                "the bucket {} does not exist at this endpoint: create it, or check --s3-endpoint/--s3-region",
                self.url.bucket
            ));
        } else if matches!(
            e,
            object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }
        ) || [
            "accessdenied",
            "invalidaccesskeyid",
            "signaturedoesnotmatch",
            "expiredtoken",
            "invalidtoken",
            "status code: 401",
            "status code: 403",
        ]
        .iter()
        .any(|k| t.contains(k))
        {
            err = err.hint("check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE and ~/.aws/credentials) and the bucket's policy");
        } else if [
            "error sending request",
            "connect",
            "dns error",
            "timed out",
            "timeout",
        ]
        .iter()
        .any(|k| t.contains(k))
        {
            err = err.hint(
                "check that the S3 endpoint is reachable (--s3-endpoint, AWS_ENDPOINT_URL) and up",
            );
        }
        err
    }

    /// Size and ETag of an object; `None` if it does not exist.
    pub fn head(&self, rel: &str) -> Result<Option<(u64, Option<String>)>> {
        let p = self.path(rel)?;
        match self.rt.block_on(self.store.head(&p)) {
            Ok(m) => Ok(Some((m.size, m.e_tag))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.fail(&format!("cannot read {rel}"), &e)),
        }
    }

    /// The whole content of a small object; `None` if it does not exist.
    /// Refuses an object larger than `cap` bytes (from its size, before reading it): a
    /// store's objects are hostile and must not decide how much memory is used.
    pub fn get_small(&self, rel: &str, cap: u64) -> Result<Option<Vec<u8>>> {
        let p = self.path(rel)?;
        let r = self.rt.block_on(async {
            let g = self.store.get(&p).await?;
            if g.meta.size > cap {
                return Ok(Err(g.meta.size));
            }
            g.bytes().await.map(Ok)
        });
        match r {
            Ok(Err(size)) => Err(Error::new(
                Class::Check,
                format!(
                    "{} has {size} bytes, more than the {cap} allowed",
                    self.url.key(rel)
                ),
            )
            .hint("the store holds a damaged or hostile object; use another store")),
            Ok(Ok(b)) => Ok(Some(b.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.fail(&format!("cannot read {rel}"), &e)),
        }
    }

    /// Every object below the store's prefix (recursively), keys relative to the prefix.
    pub fn list(&self) -> Result<Vec<ObjectInfo>> {
        self.list_below("")
    }

    /// Every object below `<prefix>/<sub>/` (all of the store for an empty `sub`), keys
    /// relative to the store's prefix.
    pub fn list_below(&self, sub: &str) -> Result<Vec<ObjectInfo>> {
        let prefix = if self.url.prefix.is_empty() && sub.is_empty() {
            None
        } else if sub.is_empty() {
            Some(self.path("")?)
        } else {
            Some(self.path(sub)?)
        };
        let strip = if self.url.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.url.prefix)
        };
        let r: std::result::Result<Vec<_>, _> = self.rt.block_on(async {
            let mut s = self.store.list(prefix.as_ref());
            let mut out = Vec::new();
            while let Some(m) = s.next().await {
                let m = m?;
                let key = m.location.as_ref().to_string();
                if let Some(rel) = key.strip_prefix(&strip) {
                    out.push(ObjectInfo {
                        key: rel.to_string(),
                        size: m.size,
                        modified: m.last_modified.timestamp(),
                    });
                }
            }
            Ok::<_, object_store::Error>(out)
        });
        r.map_err(|e| self.fail("cannot list the store", &e))
    }

    /// Removes objects (relative keys), in order; missing objects are fine.
    pub fn delete(&self, rels: &[String]) -> Result<()> {
        let paths: Vec<ObjPath> = rels.iter().map(|r| self.path(r)).collect::<Result<_>>()?;
        let r: std::result::Result<(), _> = self.rt.block_on(async {
            let input = futures_util::stream::iter(paths.into_iter().map(Ok)).boxed();
            let mut out = self.store.delete_stream(input);
            while let Some(res) = out.next().await {
                match res {
                    Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        });
        r.map_err(|e| self.fail("cannot remove objects", &e))
    }

    /// Uploads a local file to `rel`, streaming (multipart above [`PART_SIZE`]), and
    /// verifies the stored object against `expect` (size, and content via ETag or a
    /// re-read). The file's own bytes are checked against `expect` on the way.
    pub fn upload_file(&self, rel: &str, src: &Path, expect: &FileEntry) -> Result<()> {
        let mut f = std::fs::File::open(src).map_err(|e| io_err("cannot open", src, e))?;
        let len = f
            .metadata()
            .map_err(|e| io_err("cannot stat", src, e))?
            .len();
        if len != expect.size {
            return Err(Error::internal(format!(
                "{} changed since it was checksummed ({len} bytes, bundle.json says {})",
                src.display(),
                expect.size
            )));
        }
        let p = self.path(rel)?;
        let etag = if len as usize <= PART_SIZE {
            let mut buf = Vec::with_capacity(len as usize);
            f.read_to_end(&mut buf)
                .map_err(|e| io_err("cannot read", src, e))?;
            check_local(src, &buf, expect)?;
            let md5 = hex::encode(Md5::digest(&buf));
            let put = self
                .rt
                .block_on(self.store.put(&p, PutPayload::from(buf)))
                .map_err(|e| self.fail(&format!("cannot upload {rel}"), &e))?;
            (md5, put.e_tag)
        } else {
            self.rt
                .block_on(self.multipart(rel, &p, src, &mut f, expect))?
        };
        self.rt
            .block_on(self.verify(rel, &p, expect, &etag.0, etag.1.as_deref()))
    }

    /// Uploads in parts of [`PART_SIZE`], at most [`PARTS_IN_FLIGHT`] at a time; returns
    /// the ETag S3 computes for such an upload (MD5 of the parts' MD5s, `-N`) and the one
    /// the server answered.
    async fn multipart(
        &self,
        rel: &str,
        p: &ObjPath,
        src: &Path,
        f: &mut std::fs::File,
        expect: &FileEntry,
    ) -> Result<(String, Option<String>)> {
        let mut up = self
            .store
            .put_multipart(p)
            .await
            .map_err(|e| self.fail(&format!("cannot start the upload of {rel}"), &e))?;
        let res: Result<(String, Option<String>)> = async {
            let mut inflight = VecDeque::new();
            let mut md5s = Vec::new();
            let mut sha = Sha256::new();
            let mut total = 0u64;
            let mut parts = 0usize;
            loop {
                let buf = read_chunk(f, PART_SIZE).map_err(|e| io_err("cannot read", src, e))?;
                if buf.is_empty() {
                    break;
                }
                md5s.extend_from_slice(&Md5::digest(&buf));
                sha2::Digest::update(&mut sha, &buf);
                total += buf.len() as u64;
                parts += 1;
                inflight.push_back(tokio::spawn(up.put_part(PutPayload::from(buf))));
                while inflight.len() >= PARTS_IN_FLIGHT {
                    self.join_part(rel, inflight.pop_front()).await?;
                }
            }
            while let Some(h) = inflight.pop_front() {
                self.join_part(rel, Some(h)).await?;
            }
            let sha = hex::encode(sha2::Digest::finalize(sha));
            if total != expect.size || sha != expect.sha256 {
                return Err(Error::internal(format!(
                    "{} changed while it was uploaded (its SHA-256 no longer matches bundle.json)",
                    src.display()
                )));
            }
            let put = up
                .complete()
                .await
                .map_err(|e| self.fail(&format!("cannot complete the upload of {rel}"), &e))?;
            Ok((
                format!("{}-{parts}", hex::encode(Md5::digest(&md5s))),
                put.e_tag,
            ))
        }
        .await;
        if res.is_err() {
            // Do not leave invisible parts behind (they cost money); bounded, best effort.
            let _ = tokio::time::timeout(Duration::from_secs(10), up.abort()).await;
        }
        res
    }

    async fn join_part(
        &self,
        rel: &str,
        h: Option<tokio::task::JoinHandle<object_store::Result<()>>>,
    ) -> Result<()> {
        let Some(h) = h else { return Ok(()) };
        match h.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.fail(&format!("cannot upload a part of {rel}"), &e)),
            Err(e) => Err(Error::internal(format!(
                "an upload task of {rel} failed: {e}"
            ))),
        }
    }

    /// Uploads bytes held in memory (`bundle.json`) and verifies them.
    pub fn put_bytes(&self, rel: &str, data: Vec<u8>) -> Result<()> {
        self.rt.block_on(self.put_checked(rel, data))
    }

    /// Uploads bytes held in memory and verifies them (see [`Client::verify`]); runs on
    /// this client's runtime (`put_bytes`, or the backup's uploader thread).
    pub async fn put_checked(&self, rel: &str, data: Vec<u8>) -> Result<()> {
        let md5 = hex::encode(Md5::digest(&data));
        let size = data.len() as u64;
        let p = self.path(rel)?;
        let payload = PutPayload::from(data);
        let put = self
            .store
            .put(&p, payload.clone())
            .await
            .map_err(|e| self.fail(&format!("cannot upload {rel}"), &e))?;
        if etag_is(put.e_tag.as_deref(), &md5) {
            return Ok(());
        }
        // The slow path needs the SHA-256 of what was sent.
        let mut sha = Sha256::new();
        for b in payload.iter() {
            sha2::Digest::update(&mut sha, b);
        }
        let expect = FileEntry {
            size,
            sha256: hex::encode(sha2::Digest::finalize(sha)),
        };
        self.verify(rel, &p, &expect, &md5, None).await
    }

    /// Checks a stored object. The ETag the upload answered, when it is the MD5 the
    /// client computed (`etag`: plain S3 without KMS, most S3-compatibles), proves what
    /// the server stored. Otherwise the object's size and ETag are asked for, and where
    /// the ETag is still not the expected one (SSE-KMS, some S3-compatibles) the object is
    /// read back and its SHA-256 compared.
    async fn verify(
        &self,
        rel: &str,
        p: &ObjPath,
        expect: &FileEntry,
        etag: &str,
        answered: Option<&str>,
    ) -> Result<()> {
        if etag_is(answered, etag) {
            return Ok(());
        }
        let meta = self
            .store
            .head(p)
            .await
            .map_err(|e| self.fail(&format!("cannot check the uploaded {rel}"), &e))?;
        if meta.size != expect.size {
            return Err(Error::env(format!(
                "S3 store {}: the uploaded {rel} has {} bytes, {} were sent",
                self.url.url(),
                meta.size,
                expect.size
            )));
        }
        if etag_is(meta.e_tag.as_deref(), etag) {
            return Ok(());
        }
        let (n, sha) = self.read_hash(rel, p, None).await?;
        if n != expect.size || sha != expect.sha256 {
            return Err(Error::env(format!(
                "S3 store {}: the uploaded {rel} reads back different from what was sent",
                self.url.url()
            ))
            .hint("the object storage corrupted or replaced the object; try again or use another store"));
        }
        Ok(())
    }

    /// Streams an object, hashing it, optionally into `dest`. Returns its size and SHA-256.
    async fn read_hash(
        &self,
        rel: &str,
        p: &ObjPath,
        mut dest: Option<&mut std::fs::File>,
    ) -> Result<(u64, String)> {
        let g = self
            .store
            .get(p)
            .await
            .map_err(|e| self.fail(&format!("cannot read {rel}"), &e))?;
        let mut s = g.into_stream();
        let mut sha = Sha256::new();
        let mut n = 0u64;
        while let Some(chunk) = s.next().await {
            let chunk = chunk.map_err(|e| self.fail(&format!("cannot read {rel}"), &e))?;
            sha2::Digest::update(&mut sha, &chunk);
            n += chunk.len() as u64;
            if let Some(d) = dest.as_deref_mut() {
                d.write_all(&chunk)
                    .map_err(|e| Error::env(format!("cannot write the download of {rel}: {e}")))?;
            }
        }
        Ok((n, hex::encode(sha2::Digest::finalize(sha))))
    }

    /// Streams the object `rel` into `w` (the WAL archive's reads: `w` decompresses and
    /// checks); `Ok(false)` when it does not exist. Nothing is held but one chunk.
    pub fn get_into(&self, rel: &str, w: &mut dyn Write) -> Result<bool> {
        let p = self.path(rel)?;
        self.rt.block_on(async {
            let g = match self.store.get(&p).await {
                Ok(g) => g,
                Err(object_store::Error::NotFound { .. }) => return Ok(false),
                Err(e) => return Err(self.fail(&format!("cannot read {rel}"), &e)),
            };
            let mut s = g.into_stream();
            while let Some(chunk) = s.next().await {
                let chunk = chunk.map_err(|e| self.fail(&format!("cannot read {rel}"), &e))?;
                w.write_all(&chunk).map_err(|e| {
                    Error::new(
                        Class::Check,
                        format!("{}: cannot unpack: {e}", self.url.key(rel)),
                    )
                })?;
            }
            Ok(true)
        })
    }

    /// Downloads `rel` into `dest` (temporary name, fsync, rename) and checks it against
    /// `expect`.
    pub fn download(&self, rel: &str, dest: &Path, expect: &FileEntry) -> Result<()> {
        let p = self.path(rel)?;
        let dir = dest.parent().unwrap_or(Path::new("."));
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
        let res = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .map_err(|e| io_err("cannot create", &tmp, e))?;
            let (n, sha) = self.rt.block_on(self.read_hash(rel, &p, Some(&mut f)))?;
            if n != expect.size || sha != expect.sha256 {
                return Err(Error::new(
                    Class::Check,
                    format!(
                        "S3 store {}: {rel} does not match bundle.json ({n} bytes, SHA-256 {sha}; expected {} bytes, {})",
                        self.url.url(),
                        expect.size,
                        expect.sha256
                    ),
                )
                .hint("the stored bundle is damaged: use another store's copy"));
            }
            f.sync_all().map_err(|e| io_err("cannot fsync", &tmp, e))?;
            std::fs::rename(&tmp, dest).map_err(|e| io_err("cannot rename into place", dest, e))
        })();
        if res.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        res
    }
}

/// Whether a server's ETag (quoted or not) is `expected`.
fn etag_is(answered: Option<&str>, expected: &str) -> bool {
    answered.is_some_and(|t| t.trim_matches('"').eq_ignore_ascii_case(expected))
}

/// Reads up to `n` bytes (fewer only at the end of the file).
fn read_chunk(f: &mut std::fs::File, n: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(n);
    Read::by_ref(f).take(n as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Refuses to upload a local file whose bytes are not what bundle.json says.
fn check_local(src: &Path, data: &[u8], expect: &FileEntry) -> Result<()> {
    if data.len() as u64 != expect.size || fsutil::sha256_hex(data) != expect.sha256 {
        return Err(Error::internal(format!(
            "{} changed since it was checksummed (its SHA-256 no longer matches bundle.json)",
            src.display()
        )));
    }
    Ok(())
}

/// A relative bundle path from a (remote) bundle.json that is safe to create below a
/// directory: no absolute path, no `..`, no empty component.
fn safe_rel(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('/')
        && name
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.starts_with(".tmp"))
}

/// Uploads a complete bundle from a local directory: every file of the manifest (each
/// verified), then `bundle.json` (the same bytes as in `from`) last.
pub fn upload_bundle(
    store: &S3Store,
    id: &str,
    from: &Path,
    manifest: &Manifest,
) -> Result<String> {
    let c = Client::open(store)?;
    let url = &store.url;
    let t0 = std::time::Instant::now();
    let mut bytes = 0u64;
    for (name, entry) in &manifest.files {
        c.upload_file(&format!("{id}/{name}"), &from.join(name), entry)?;
        bytes += entry.size;
    }
    let mpath = from.join(MANIFEST);
    let mbytes = std::fs::read(&mpath).map_err(|e| io_err("cannot read", &mpath, e))?;
    c.put_bytes(&format!("{id}/{MANIFEST}"), mbytes)?;
    tracing::info!(
        "uploaded {} objects ({bytes} bytes) to {} in {:.1}s, each verified",
        manifest.files.len() + 1,
        url.bundle_location(id),
        t0.elapsed().as_secs_f64()
    );
    Ok(url.bundle_location(id))
}

/// Downloads `id`'s bundle into `scratch/<id>`, checking every file against bundle.json
/// (size and SHA-256); bundle.json is written last.
pub fn fetch_bundle(store: &S3Store, id: &str, scratch: &Path) -> Result<PathBuf> {
    fetch_bundle_with(&Client::open(store)?, id, scratch)
}

/// [`fetch_bundle`] through an open client.
pub fn fetch_bundle_with(c: &Client, id: &str, scratch: &Path) -> Result<PathBuf> {
    crate::id::validate(id)?;
    let mbytes = c
        .get_small(
            &format!("{id}/{MANIFEST}"),
            crate::bundle::read::MAX_MANIFEST_BYTES,
        )?
        .ok_or_else(|| {
        Error::usage(format!(
            "store {} holds no complete bundle of backup {id} (no {})",
            c.url.url(),
            c.url.key(&format!("{id}/{MANIFEST}"))
        ))
        .hint("check the backup ID and the store (`pgbookend list --store URL`); a bundle without bundle.json is partial and unusable")
    })?;
    let manifest: Manifest = serde_json::from_slice(&mbytes).map_err(|e| {
        Error::new(
            Class::Check,
            format!(
                "{}{MANIFEST} does not parse: {e}",
                c.url.bundle_location(id)
            ),
        )
    })?;
    if manifest.id != id {
        return Err(Error::new(
            Class::Check,
            format!(
                "{}{MANIFEST} belongs to backup {}, not {id}",
                c.url.bundle_location(id),
                manifest.id
            ),
        ));
    }
    // Checked before anything it lists is downloaded: a hostile bundle.json must not
    // decide what (or how much) is fetched.
    if let Some(p) = crate::bundle::check::manifest_problems(&manifest).first() {
        return Err(Error::new(
            Class::Check,
            format!("{}{MANIFEST}: {}", c.url.bundle_location(id), p.message),
        )
        .hint(p.hint.clone()));
    }
    let own = Ownership::private();
    let dir = scratch.join(id);
    fsutil::remove_tree(&dir)?;
    if !scratch.exists() {
        std::fs::create_dir_all(scratch).map_err(|e| io_err("cannot create", scratch, e))?;
    }
    fsutil::ensure_dir(&dir, &own)?;
    for (name, entry) in &manifest.files {
        if !safe_rel(name) {
            return Err(Error::new(
                Class::Check,
                format!(
                    "{}{MANIFEST} lists an unsafe file name {name:?}",
                    c.url.bundle_location(id)
                ),
            ));
        }
        let dest = dir.join(name);
        if let Some(parent) = dest.parent() {
            if !parent.exists() {
                std::fs::create_dir_all(parent).map_err(|e| io_err("cannot create", parent, e))?;
            }
        }
        c.download(&format!("{id}/{name}"), &dest, entry)?;
    }
    fsutil::write_atomic(&dir.join(MANIFEST), &mbytes, &own)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_s3_urls() {
        let u = S3Url::parse("s3://my-bucket/a/b/").unwrap();
        assert_eq!(u.bucket, "my-bucket");
        assert_eq!(u.prefix, "a/b");
        assert_eq!(u.url(), "s3://my-bucket/a/b");
        assert_eq!(u.key("x/bundle.json"), "a/b/x/bundle.json");
        assert_eq!(u.bundle_location("x"), "s3://my-bucket/a/b/x/");
        let root = S3Url::parse("s3://bkt").unwrap();
        assert_eq!(root.prefix, "");
        assert_eq!(root.key("x"), "x");
        assert!(S3Url::parse("s3://AKIA:secret@bkt/p").is_err());
        assert!(S3Url::parse("s3://b/p").is_err(), "bucket too short");
        assert!(S3Url::parse("s3://bkt/a//b").is_err());
        assert!(S3Url::parse("s3://bkt/a/../b").is_err());
        let e = S3Url::parse("s3://key:verysecret@bkt/p").unwrap_err();
        assert!(!e.to_string().contains("verysecret"), "{e}");
    }

    #[test]
    fn reads_aws_shared_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("config"),
            "[default]\nregion = eu-west-1\n[profile other]\nregion = us-west-2\ns3 =\n  addressing_style = path\n  endpoint_url = http://127.0.0.1:9000\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("credentials"),
            "[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key = defaultsecret\n[other]\naws_access_key_id = AKIAOTHER\naws_secret_access_key = othersecret\naws_session_token = othertoken\n",
        )
        .unwrap();
        let cfg = d.path().join("config").display().to_string();
        let creds = d.path().join("credentials").display().to_string();
        let mk = |profile: Option<&'static str>| {
            let cfg = cfg.clone();
            let creds = creds.clone();
            move |k: &str| match k {
                "AWS_CONFIG_FILE" => Some(cfg.clone()),
                "AWS_SHARED_CREDENTIALS_FILE" => Some(creds.clone()),
                "AWS_PROFILE" => profile.map(String::from),
                _ => None,
            }
        };
        let r = resolve(&Settings::default(), None, &mk(None)).unwrap();
        assert_eq!(r.region, "eu-west-1");
        assert_eq!(r.endpoint, None);
        assert!(!r.path_style);
        assert_eq!(r.credentials.unwrap().access_key_id, "AKIADEFAULT");
        let r = resolve(&Settings::default(), None, &mk(Some("other"))).unwrap();
        assert_eq!(r.region, "us-west-2");
        assert_eq!(r.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert!(r.path_style);
        let c = r.credentials.unwrap();
        assert_eq!(c.session_token.as_deref(), Some("othertoken"));
        assert!(r.secrets.contains(&"othersecret".to_string()));
        assert!(format!("{c:?}").contains("redacted"));
        // Flags win over the files.
        let s = Settings {
            region: Some("ap-south-1".into()),
            path_style: Some(false),
            ..Default::default()
        };
        let r = resolve(&s, None, &mk(Some("other"))).unwrap();
        assert_eq!(r.region, "ap-south-1");
        assert!(!r.path_style);
        // A named profile that does not exist is an error.
        assert!(resolve(&Settings::default(), None, &mk(Some("nope"))).is_err());
    }

    #[test]
    fn environment_wins_over_files_and_is_scrubbed() {
        let env = |k: &str| match k {
            "AWS_ACCESS_KEY_ID" => Some("AKIAENVKEY".to_string()),
            "AWS_SECRET_ACCESS_KEY" => Some("envsecretvalue".to_string()),
            "AWS_ENDPOINT_URL" => Some("http://localhost:9000/".to_string()),
            "AWS_REGION" => Some("eu-central-1".to_string()),
            "HOME" => Some("/nonexistent".to_string()),
            _ => None,
        };
        let r = resolve(&Settings::default(), None, &env).unwrap();
        assert_eq!(r.endpoint.as_deref(), Some("http://localhost:9000"));
        assert!(r.path_style, "path style by default with an endpoint");
        assert_eq!(r.region, "eu-central-1");
        assert_eq!(
            scrub(&r.secrets, "key AKIAENVKEY secret envsecretvalue"),
            "key [redacted] secret [redacted]"
        );
        let only_one = |k: &str| match k {
            "AWS_ACCESS_KEY_ID" => Some("AKIAENVKEY".to_string()),
            _ => None,
        };
        assert!(resolve(&Settings::default(), None, &only_one).is_err());
        let bad = Settings {
            endpoint: Some("http://user:pw@host".into()),
            ..Default::default()
        };
        let e = resolve(&bad, None, &env).err().unwrap();
        assert!(!e.to_string().contains("pw@"), "{e}");
    }

    #[test]
    fn rejects_unsafe_names() {
        assert!(safe_rel("wal/000000010000000000000002.zst"));
        assert!(!safe_rel("../x"));
        assert!(!safe_rel("/etc/passwd"));
        assert!(!safe_rel("a//b"));
    }
}
