//! Group commit: a tenant's concurrent SCIM writes share one transaction
//! and one disk flush.
//!
//! Why: every commit waits for the disk (SQLite's WAL with
//! `synchronous=FULL`, PostgreSQL's WAL flush), and a tenant's writes are
//! serialised anyway (SQLite has one writer; on PostgreSQL each write's
//! derivation locks the tenant row until it commits). So a tenant's write
//! rate was bounded by flushes, not by work. Here each tenant has a lane: a
//! task that takes the writes queued for the tenant, runs each in its own
//! savepoint of one transaction, derives them all at once (one revision,
//! one recomputation of everyone they affected, one change event per user
//! naming the last write that affected that user), commits once, and only
//! then answers them all. A write that fails is rolled back to its
//! savepoint alone and answered at once; no write is acknowledged before
//! the commit that made it durable.
//!
//! The derivation is the batch's, not each write's, because on 2 cores the
//! statements (and the driver's thread hand-offs) of a derivation per
//! write cost more than the write itself. Its result is the same: the
//! derivation of a set of changes is exact for any set
//! (`tests/permissions_incremental.rs`), and no state between two writes
//! of one batch was ever visible to anyone.
//!
//! Batching needs no timer: while one batch commits, the next requests
//! queue, and the next batch takes all of them (up to [`MAX_BATCH`]). A
//! lone write commits at once, as before.
//!
//! A unit runs in the lane, not in the request's task: a client that goes
//! away mid-write cannot leave a half-written unit in a shared transaction.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use super::derive::{revision_of, UnitChanges};
use super::{App, Error, RequestContext, Result};
use crate::domain::{ChangeCause, TenantId};
use crate::store::WriteTx;

/// Writes per transaction at most: bounds how long one batch holds the
/// tenant (and, on SQLite, the writer) and how much one failed commit
/// turns away. Below 64 because each write is a PostgreSQL subtransaction
/// (its savepoint), and a backend caches 64 subtransaction ids: past that,
/// every snapshot taken anywhere in the cluster gets slower.
pub const MAX_BATCH: usize = 48;

/// Writes queued per tenant before submitters wait (back-pressure; the
/// HTTP layer's in-flight cap is lower still).
const QUEUE: usize = 512;

/// A lane with nothing to do for this long ends (a tenant that stopped
/// writing holds no task).
const IDLE: Duration = Duration::from_secs(60);

type Value = Box<dyn Any + Send>;
type Work = Box<dyn for<'a> FnOnce(&'a mut WriteTx) -> BoxFuture<'a, Result<Value>> + Send>;

/// One write waiting for its lane.
struct Unit {
    app: App,
    cause: ChangeCause,
    undo: Undo,
    work: Work,
    reply: oneshot::Sender<Result<Done>>,
}

/// How a failed unit is undone alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Undo {
    /// A savepoint in the database: for any unit.
    Savepoint,
    /// Nothing in the database: the unit runs one statement that either
    /// writes or refuses without an error inside the database (a user
    /// insert refused by `ON CONFLICT DO NOTHING`). Saves the SAVEPOINT
    /// round trip, a fifth of a PostgreSQL create. Should that statement
    /// fail in the database after all, the transaction may be unusable:
    /// the batch is not committed.
    OneStatement,
}

/// A committed unit's answer: what its work returned, and the tenant
/// revision its derivation reached.
struct Done {
    value: Value,
    revision: Option<i64>,
}

/// A unit that ran and waits for its batch's commit.
struct Ran {
    reply: oneshot::Sender<Result<Done>>,
    value: Value,
}

/// Batch sizes, for `/metrics`.
#[derive(Debug, Default)]
pub struct GroupCommitMetrics {
    pub batches: std::sync::atomic::AtomicU64,
    pub writes: std::sync::atomic::AtomicU64,
}

impl GroupCommitMetrics {
    /// `/metrics` lines: writes over batches is the mean batch size.
    pub fn text(&self) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        format!(
            "# HELP rolebridge_group_commit_batches_total SCIM write transactions committed by this process.\n\
             # TYPE rolebridge_group_commit_batches_total counter\n\
             rolebridge_group_commit_batches_total {}\n\
             # HELP rolebridge_group_commit_writes_total SCIM writes acknowledged after those commits.\n\
             # TYPE rolebridge_group_commit_writes_total counter\n\
             rolebridge_group_commit_writes_total {}\n",
            self.batches.load(Relaxed),
            self.writes.load(Relaxed),
        )
    }
}

/// Each tenant's lane, created on its first write.
#[derive(Default)]
pub(super) struct Lanes {
    lanes: Mutex<HashMap<TenantId, mpsc::Sender<Unit>>>,
    pub(super) metrics: GroupCommitMetrics,
}

impl App {
    /// Runs `work` as one unit of the tenant's next group commit, undone
    /// alone (to its savepoint) when it fails; once its batch has been
    /// derived and committed, the caches are updated and `work`'s value is
    /// returned.
    pub(super) async fn write<T, F>(&self, ctx: &RequestContext, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&'a mut WriteTx) -> BoxFuture<'a, Result<T>> + Send + 'static,
    {
        self.write_undone_by(ctx, Undo::Savepoint, work).await
    }

    /// [`App::write`] for a unit that needs no savepoint (see [`Undo`]).
    pub(super) async fn write_undone_by<T, F>(
        &self,
        ctx: &RequestContext,
        undo: Undo,
        work: F,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&'a mut WriteTx) -> BoxFuture<'a, Result<T>> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let unit = Unit {
            app: self.clone(),
            cause: ctx.cause.clone(),
            undo,
            work: erase(work),
            reply,
        };
        self.lanes.submit(ctx.tenant, unit).await?;
        let done = answer.await.map_err(|_| {
            Error::Internal("the tenant's write lane stopped before answering".into())
        })??;
        if let Some(rev) = done.revision {
            ctx.written
                .fetch_max(rev, std::sync::atomic::Ordering::AcqRel);
        }
        done.value
            .downcast::<T>()
            .map(|v| *v)
            .map_err(|_| Error::Internal("a write unit answered with another type".into()))
    }
}

fn erase<T, F>(work: F) -> Work
where
    T: Send + 'static,
    F: for<'a> FnOnce(&'a mut WriteTx) -> BoxFuture<'a, Result<T>> + Send + 'static,
{
    Box::new(move |tx: &mut WriteTx| -> BoxFuture<'_, Result<Value>> {
        Box::pin(async move { work(tx).await.map(|v| Box::new(v) as Value) })
    })
}

impl Lanes {
    async fn submit(self: &Arc<Self>, tenant: TenantId, mut unit: Unit) -> Result<()> {
        // A send fails only when the lane has just ended (idle, or a panic):
        // the next try finds or starts a live one.
        for _ in 0..3 {
            let sender = {
                let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
                lanes
                    .entry(tenant)
                    .or_insert_with(|| {
                        let (sender, rx) = mpsc::channel(QUEUE);
                        tokio::spawn(lane(Arc::downgrade(self), tenant, rx));
                        sender
                    })
                    .clone()
            };
            match sender.send(unit).await {
                Ok(()) => return Ok(()),
                Err(mpsc::error::SendError(back)) => {
                    unit = back;
                    let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
                    if lanes.get(&tenant).is_some_and(|s| s.same_channel(&sender)) {
                        lanes.remove(&tenant);
                    }
                }
            }
        }
        Err(Error::Internal(format!(
            "tenant {tenant}'s write lane keeps stopping"
        )))
    }
}

/// A tenant's lane: one batch at a time, until idle.
async fn lane(lanes: Weak<Lanes>, tenant: TenantId, mut rx: mpsc::Receiver<Unit>) {
    loop {
        match tokio::time::timeout(IDLE, rx.recv()).await {
            Ok(Some(first)) => batch(tenant, first, &mut rx).await,
            Ok(None) => return,
            Err(_idle) => {
                if let Some(lanes) = lanes.upgrade() {
                    let mut map = lanes.lanes.lock().unwrap_or_else(|e| e.into_inner());
                    if !rx.is_empty() {
                        continue;
                    }
                    // No sender can be cloned from the map now; one cloned
                    // before may still send until the channel is closed, so
                    // what it sent is run below, not dropped.
                    map.remove(&tenant);
                }
                rx.close();
                while let Some(first) = rx.recv().await {
                    batch(tenant, first, &mut rx).await;
                }
                return;
            }
        }
    }
}

/// One transaction: `first`, then whatever is queued behind it.
async fn batch(tenant: TenantId, first: Unit, rx: &mut mpsc::Receiver<Unit>) {
    let app = first.app.clone();
    let began = async {
        let mut tx = app.store.begin_write().await?;
        tx.lock_tenant(tenant).await?;
        // A replica behind the store's newest mapping version catches up
        // before it derives (see `App::commit`); once per batch.
        let loaded = app.catch_up_mappings().await?;
        Ok::<_, Error>((tx, loaded))
    }
    .await;
    let (mut tx, loaded) = match began {
        Ok(began) => began,
        Err(e) => {
            let _ = first.reply.send(Err(e));
            return;
        }
    };
    let mut ran: Vec<Ran> = Vec::new();
    let mut units: Vec<UnitChanges> = Vec::new();
    let mut next = Some(first);
    let mut taken = 0;
    while let Some(unit) = next.take() {
        taken += 1;
        let Unit {
            cause,
            undo,
            work,
            reply,
            ..
        } = unit;
        let savepoint = match undo {
            Undo::OneStatement => tx.mark(),
            Undo::Savepoint => match tx.savepoint().await {
                Ok(s) => s,
                Err(e) => {
                    let e = Error::from(e);
                    abort(ran, &e);
                    let _ = reply.send(Err(e));
                    return;
                }
            },
        };
        tx.set_cause(cause.clone());
        match work(&mut tx).await {
            Ok(value) => {
                // Its savepoint stays open (see `WriteTx::savepoint`).
                drop(savepoint);
                ran.push(Ran { reply, value });
                // Its cause and what it changed, derived with the batch's
                // others.
                units.push((cause, tx.take_changes()));
            }
            Err(failed) if undo == Undo::OneStatement && failed.is_server_side() => {
                // Its one statement failed inside the database: nothing
                // says the transaction is still usable.
                abort(ran, &failed);
                let _ = reply.send(Err(failed));
                return;
            }
            Err(failed) => {
                let undone = tx.rollback_to(savepoint).await;
                let _ = reply.send(Err(failed));
                if let Err(e) = undone {
                    abort(ran, &Error::from(e));
                    return;
                }
            }
        }
        if taken < MAX_BATCH {
            next = rx.try_recv().ok();
        }
    }
    if ran.is_empty() {
        // Every unit failed and was undone: nothing to commit.
        return;
    }
    // One derivation for the batch (the transaction's cause is now the last
    // write's; each event names its own user's).
    let derived = match app.derive_batch(&mut tx, &loaded, &units).await {
        Ok(derived) => derived,
        Err(e) => return abort(ran, &e),
    };
    match tx.commit().await {
        Ok(revisions) => {
            let m = &app.lanes.metrics;
            m.batches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            m.writes
                .fetch_add(ran.len() as u64, std::sync::atomic::Ordering::Relaxed);
            // Every write of the batch reached the batch's revision; one
            // that changed nothing produced none.
            let revision = revision_of(&derived, tenant);
            let answers: Vec<_> = ran
                .into_iter()
                .zip(&units)
                .map(|(r, (_, written))| {
                    (r.reply, r.value, revision.filter(|_| !written.is_empty()))
                })
                .collect();
            // Caches first, answers after: a client that reads right after
            // its acknowledgement sees its write.
            app.committed(revisions, derived);
            for (reply, value, revision) in answers {
                let _ = reply.send(Ok(Done { value, revision }));
            }
        }
        Err(e) => abort(ran, &Error::from(e)),
    }
}

/// The batch's transaction failed as a whole: every unit that ran in it is
/// answered with an error, so none was acknowledged. The transaction is
/// rolled back (dropped); only a connection lost during COMMIT itself can
/// leave the outcome unknown, as for any single write.
fn abort(ran: Vec<Ran>, cause: &Error) {
    tracing::error!(error = %cause, writes = ran.len(), "a group commit failed; its writes were not acknowledged");
    for r in ran {
        let _ = r.reply.send(Err(Error::NotCommitted(cause.to_string())));
    }
}
