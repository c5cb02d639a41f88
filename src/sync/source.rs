//! The one interface every directory source implements, and the batch it
//! fills page by page.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;

use super::record::{Change, ExternalGroup, ExternalKey, ExternalUser, Kind, MemberRef, Members};
use super::SourceError;

/// What the runner asks of a source.
#[derive(Debug, Clone, Default)]
pub struct ReadRequest {
    /// Read everything in scope (a first sync or a periodic reconcile),
    /// ignoring `cursor`.
    pub full: bool,
    /// The cursor the last applied run returned (syncrepl cookie, highest
    /// `uSNChanged`, Graph deltaLink), if any.
    pub cursor: Option<String>,
}

/// What a finished read tells the runner.
#[derive(Debug, Clone, Default)]
pub struct ReadOutcome {
    /// Every user and group in scope was reported (as `User`/`Group` or
    /// `Present`): whatever this source synced before and did not report
    /// now is gone. A full read is complete; an incremental one may be too
    /// (syncrepl's present phase).
    pub complete: bool,
    /// The cursor to persist once this batch is applied, never before.
    pub cursor: Option<String>,
    /// Every base the read searched, including those that returned nothing,
    /// so an empty base that used to hold users is noticed.
    pub bases: Vec<String>,
}

/// A directory the sync runner can read.
///
/// A source must never report partial results as a success: if any page,
/// bind or request fails, `read` returns the error and the runner discards
/// the batch, so a failure can never cause a deletion.
pub trait Source: Send {
    /// Reads changes (or everything when `request.full`) into `batch`.
    fn read(
        &mut self,
        request: &ReadRequest,
        batch: &mut Batch,
    ) -> impl Future<Output = Result<ReadOutcome, SourceError>> + Send;
}

/// Changes gathered during one read, merged by key so a later page wins and
/// memory holds one record per entry, never the raw pages.
#[derive(Default)]
pub struct Batch {
    pub users: HashMap<ExternalKey, ExternalUser>,
    pub groups: HashMap<ExternalKey, GroupChange>,
    /// Keys reported deleted, with their kind when the protocol says it.
    pub deleted: HashMap<ExternalKey, Option<Kind>>,
    /// Keys reported present and unchanged.
    pub present: BTreeSet<ExternalKey>,
    /// Entries received so far (for progress display).
    pub received: u64,
    progress: Option<Box<dyn Fn(u64) + Send + Sync>>,
}

/// A group in a batch: its attributes, when some page carried them, and its
/// members as a whole list or as accumulated changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupChange {
    pub group: Option<ExternalGroup>,
    /// Member changes that arrived without the group's attributes (or
    /// after them), applied on top of `group.members`.
    pub added: BTreeSet<MemberRef>,
    pub removed: BTreeSet<MemberRef>,
}

impl GroupChange {
    /// Accumulates member changes; the later of an add and a remove of the
    /// same member wins.
    fn apply(&mut self, added: Vec<MemberRef>, removed: Vec<MemberRef>) {
        for m in added {
            self.removed.remove(&m);
            self.added.insert(m);
        }
        for m in removed {
            self.added.remove(&m);
            self.removed.insert(m);
        }
    }
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("users", &self.users.len())
            .field("groups", &self.groups.len())
            .field("deleted", &self.deleted.len())
            .field("present", &self.present.len())
            .finish()
    }
}

impl Batch {
    pub fn new() -> Self {
        Batch::default()
    }

    /// Calls `f` with the number of entries received, after every push.
    pub fn with_progress(mut self, f: impl Fn(u64) + Send + Sync + 'static) -> Self {
        self.progress = Some(Box::new(f));
        self
    }

    /// Adds one change; a later change to the same key replaces an earlier
    /// one, and member changes accumulate.
    pub fn push(&mut self, change: Change) {
        self.received += 1;
        match change {
            Change::User(u) => {
                self.deleted.remove(&u.key);
                self.users.insert(u.key.clone(), u);
            }
            Change::Group(mut g) => {
                self.deleted.remove(&g.key);
                let entry = self.groups.entry(g.key.clone()).or_insert(GroupChange {
                    group: None,
                    added: BTreeSet::new(),
                    removed: BTreeSet::new(),
                });
                match &mut g.members {
                    // A whole member list supersedes changes read before it.
                    Members::Full(_) => {
                        entry.added.clear();
                        entry.removed.clear();
                    }
                    // Member changes accumulate across pages (Graph repeats
                    // a group); the record keeps only the attributes.
                    Members::Delta { added, removed } => {
                        entry.apply(std::mem::take(added), std::mem::take(removed));
                    }
                }
                entry.group = Some(g);
            }
            Change::GroupMembers {
                key,
                added,
                removed,
            } => {
                self.groups
                    .entry(key)
                    .or_insert(GroupChange {
                        group: None,
                        added: BTreeSet::new(),
                        removed: BTreeSet::new(),
                    })
                    .apply(added, removed);
            }
            Change::Deleted { key, kind } => {
                if kind != Some(Kind::Group) {
                    self.users.remove(&key);
                }
                if kind != Some(Kind::User) {
                    self.groups.remove(&key);
                }
                self.present.remove(&key);
                self.deleted.insert(key, kind);
            }
            Change::Present { key } => {
                self.present.insert(key);
            }
        }
        if let Some(f) = &self.progress {
            f(self.received);
        }
    }
}
