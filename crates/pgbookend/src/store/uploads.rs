//! Background uploads into one S3 store, for the built-in backup's objects: the copy's
//! workers queue an object and go back to compressing while a thread of the store's own
//! runtime uploads up to `in_flight` objects at once (the backup's `--jobs`), each
//! verified as [`Client::put_checked`] does. Queued and in-flight objects hold at most
//! [`BUDGET_BYTES`] (one object more when a single one is larger), so memory stays
//! bounded whatever the store's speed.
//!
//! Nothing is durable until [`Uploads::flush`] has returned `Ok`: it waits for every
//! queued object and returns the first failure. After a failure every later
//! [`Uploads::send`] fails at once, so the copy stops. [`Uploads::shutdown`] (also on
//! drop) waits for the objects in flight, so nothing lands in the store after it.

use super::s3::Client;
use crate::error::{Error, Result};
use std::sync::{Arc, Condvar, Mutex};

/// Bytes held by queued and in-flight objects.
pub const BUDGET_BYTES: usize = 16 << 20;

/// What is queued or in flight, and the first failure.
#[derive(Default)]
struct Pending {
    bytes: usize,
    count: usize,
    error: Option<Error>,
}

#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One object is done: gives back its bytes and records its failure.
    fn done(&self, len: usize, r: Result<()>) {
        let mut p = self.lock();
        p.bytes -= len;
        p.count -= 1;
        if let (Err(e), None) = (r, &p.error) {
            p.error = Some(e);
        }
        drop(p);
        self.changed.notify_all();
    }
}

/// Reports an object as done when dropped, also when its task panics or is cancelled.
struct Done {
    shared: Arc<Shared>,
    len: usize,
    result: Option<Result<()>>,
}

impl Drop for Done {
    fn drop(&mut self) {
        let r = self.result.take().unwrap_or(Ok(()));
        self.shared.done(self.len, r);
    }
}

struct Job {
    rel: String,
    data: Vec<u8>,
}

/// The uploader of one store.
pub struct Uploads {
    shared: Arc<Shared>,
    tx: Mutex<Option<tokio::sync::mpsc::UnboundedSender<Job>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Uploads {
    /// Starts the uploader thread of `client`, with up to `in_flight` uploads at once.
    /// While it runs, `client` must not be used from another thread (its runtime is this
    /// thread's).
    pub fn start(client: Arc<Client>, in_flight: usize) -> Result<Uploads> {
        let shared = Arc::new(Shared::default());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("s3-uploads".into())
            .spawn(move || run(client, in_flight.max(1), rx, sh))
            .map_err(|e| Error::internal(format!("cannot start the upload thread: {e}")))?;
        Ok(Uploads {
            shared,
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues `data` as `rel`, waiting while the budget is spent; fails at once when an
    /// earlier upload failed.
    pub fn send(&self, rel: &str, data: &[u8]) -> Result<()> {
        let mut p = self.shared.lock();
        loop {
            if let Some(e) = &p.error {
                return Err(e.clone());
            }
            if p.count == 0 || p.bytes + data.len() <= BUDGET_BYTES {
                break;
            }
            p = self
                .shared
                .changed
                .wait(p)
                .unwrap_or_else(|e| e.into_inner());
        }
        p.bytes += data.len();
        p.count += 1;
        drop(p);
        let job = Job {
            rel: rel.to_string(),
            data: data.to_vec(),
        };
        let sent = match &*self.tx.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(tx) => tx.send(job).is_ok(),
            None => false,
        };
        if !sent {
            self.shared.done(
                data.len(),
                Err(Error::internal("the upload thread is gone")),
            );
            return Err(Error::internal("the upload thread is gone"));
        }
        Ok(())
    }

    /// Waits until nothing is queued or in flight; the first failure, if any.
    pub fn flush(&self) -> Result<()> {
        let mut p = self.shared.lock();
        while p.count > 0 {
            p = self
                .shared
                .changed
                .wait(p)
                .unwrap_or_else(|e| e.into_inner());
        }
        match &p.error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Stops taking objects and waits for those queued and in flight to end.
    pub fn shutdown(&self) {
        drop(self.tx.lock().unwrap_or_else(|p| p.into_inner()).take());
        let t = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }
}

impl Drop for Uploads {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The upload thread: takes jobs until the sender is dropped, at most `in_flight` at
/// once, then waits for the last ones.
fn run(
    client: Arc<Client>,
    in_flight: usize,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Job>,
    shared: Arc<Shared>,
) {
    let c = client.clone();
    client.block_on(async move {
        let slots = Arc::new(tokio::sync::Semaphore::new(in_flight));
        let mut set = tokio::task::JoinSet::new();
        while let Some(job) = rx.recv().await {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            let (c, sh) = (c.clone(), shared.clone());
            set.spawn(async move {
                let mut guard = Done {
                    shared: sh,
                    len: job.data.len(),
                    result: Some(Err(Error::internal(format!(
                        "the upload of {} ended abnormally",
                        job.rel
                    )))),
                };
                guard.result = Some(c.put_checked(&job.rel, job.data).await);
                drop(slot);
            });
            while set.try_join_next().is_some() {}
        }
        while set.join_next().await.is_some() {}
    });
}
