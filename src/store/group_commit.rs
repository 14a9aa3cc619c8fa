//! Group commit, on both databases. A durable commit costs an fsync (3-4 ms on some machines),
//! so one commit per request caps SQLite at about 250 writes per second however many clients
//! wait, and costs PostgreSQL a WAL flush and a dozen round trips per request (every read
//! commits its access record). Instead one writer per process takes every write set
//! waiting in its queue, applies them in one transaction (all together, or, should that fail,
//! again with each change under its own savepoint: a failing write set is rolled back to its
//! savepoint and touches nobody else), commits once, and only then answers every request. Each answer therefore
//! means "durable", and many requests share one commit. A write set alone in its batch needs
//! no savepoint: its transaction is its own (see `commit_alone`).
//!
//! On SQLite the writer owns the only write connection. On PostgreSQL it has a pool of its own
//! (the pool replaces a connection lost to a server restart) and two lanes, each committing
//! its batch on a connection of the pool, the second beside the first only once enough work
//! waits ([`POSTGRES_WRITER_LANES`], [`Lanes::wait_for_turn`]); other replicas run writers of
//! their own, and PostgreSQL's locks order every lane's batches.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use sqlx::{AnyConnection, Executor};
use tokio::sync::{mpsc, oneshot, Mutex, Notify};
use tokio::task::JoinHandle;

use super::apply::{apply_write_set, apply_write_sets, check_write_set_settled, Absences};
use super::events::{add_events, any_topical};
use super::search::write_sets_with_matches;
use super::sqlite_checkpoint::Checkpointer;
use super::subscriptions::begin_reading_live_subscriptions;
use super::write_set::WriteSet;
use super::BackendKind;
use super::StoreError;

/// How many write sets share one commit at most. Bounded so one commit's latency stays small.
const MAX_BATCH: usize = 512;

/// Where a write set's outcome goes once its commit is durable (or has failed).
type Reply = oneshot::Sender<Result<(), StoreError>>;

/// Work other than a write set that must run on the write connection (claiming outbox rows,
/// recording delivery outcomes): it shares the batch's commit like a write set does.
pub(super) type Job =
    Box<dyn for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Result<(), StoreError>> + Send + 'static>;

enum Message {
    // Boxed: a write set is large, and the queue holds many messages.
    Write { write_set: Box<WriteSet>, reply: Reply, queued: Instant },
    Job { job: Job, reply: Reply },
}

impl Message {
    /// The write set it carries, if it is one.
    fn write_set(&self) -> Option<&WriteSet> {
        match self {
            Message::Write { write_set, .. } => Some(write_set),
            Message::Job { .. } => None,
        }
    }

    fn write_set_mut(&mut self) -> Option<&mut WriteSet> {
        match self {
            Message::Write { write_set, .. } => Some(write_set),
            Message::Job { .. } => None,
        }
    }

    fn into_reply(self) -> Reply {
        match self {
            Message::Write { reply, .. } | Message::Job { reply, .. } => reply,
        }
    }
}

/// Where the writer's transactions run.
pub(super) enum WriteConnection {
    /// SQLite's only write connection, and the WAL checkpoints that follow its commits.
    Sqlite { conn: Box<AnyConnection>, checkpointer: Checkpointer },
    /// The writer's own PostgreSQL pool, a connection per lane, each taken for a batch.
    Postgres(sqlx::AnyPool),
}

impl WriteConnection {
    fn kind(&self) -> BackendKind {
        match self {
            WriteConnection::Sqlite { .. } => BackendKind::Sqlite,
            WriteConnection::Postgres(_) => BackendKind::Postgres,
        }
    }

    /// Commits one batch on a connection of this kind, with the events its changes are for
    /// the live subscriptions (see `events`). Answers whether notifications were committed.
    async fn commit(&mut self, batch: Vec<Message>, settle_window: Duration) -> bool {
        let kind = self.kind();
        match self {
            WriteConnection::Sqlite { conn, checkpointer } => {
                let notified = commit_batch(conn, kind, batch, settle_window).await;
                checkpointer.committed();
                notified
            }
            WriteConnection::Postgres(pool) => match pool.acquire().await {
                Ok(mut conn) => commit_batch(&mut conn, kind, batch, settle_window).await,
                Err(e) => {
                    tracing::error!(error = %e, "the writer could not get a database connection");
                    answer_all(batch, &StoreError::from(e));
                    false
                }
            },
        }
    }

    /// The connections of `lanes` lanes: on PostgreSQL each takes a connection of the
    /// writer's pool for each batch; SQLite's one write connection is one lane.
    fn lanes(self, lanes: usize) -> Vec<WriteConnection> {
        match self {
            WriteConnection::Sqlite { .. } => vec![self],
            WriteConnection::Postgres(pool) => {
                (0..lanes.max(1)).map(|_| WriteConnection::Postgres(pool.clone())).collect()
            }
        }
    }

    async fn close(self) {
        match self {
            WriteConnection::Sqlite { conn, checkpointer } => {
                drop(checkpointer);
                // The last connection to close checkpoints the log anyway.
                let _ = sqlx::Connection::close(*conn).await;
            }
            WriteConnection::Postgres(pool) => pool.close().await,
        }
    }
}

/// Answers every request of a batch that could not be committed (the database unavailable
/// stays that: see [`StoreError::for_each_request`]).
fn answer_all(batch: Vec<Message>, error: &StoreError) {
    for message in batch {
        let _ = message.into_reply().send(Err(error.for_each_request()));
    }
}

/// How many batches the writer has committed (or tried to), and how many write sets they held:
/// their ratio is the mean batch, what the group commit shares. And who is told how long each
/// write set waited and each batch took.
#[derive(Default)]
pub(super) struct CommitTotals {
    batches: AtomicU64,
    write_sets: AtomicU64,
    parallel_batches: AtomicU64,
    observer: OnceLock<Arc<dyn CommitObserver>>,
}

impl CommitTotals {
    fn observer(&self) -> Option<&dyn CommitObserver> {
        self.observer.get().map(|observer| &**observer)
    }

    /// Counts `batch`, begun at `began`, and tells the observer how long each of its write sets
    /// waited for it; answers how many write sets it holds.
    fn batch_began(&self, batch: &[Message], began: Instant) -> usize {
        let observer = self.observer();
        let mut write_sets = 0;
        for message in batch {
            if let Message::Write { queued, .. } = message {
                write_sets += 1;
                if let Some(observer) = observer {
                    observer.write_set_waited(began.saturating_duration_since(*queued));
                }
            }
        }
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.write_sets.fetch_add(write_sets as u64, Ordering::Relaxed);
        write_sets
    }
}

/// Told where a write's time goes in the group commit: the process's metrics implement it
/// (see [`super::Store::observe_commits`]). Called on the writer's task: it must be cheap.
pub trait CommitObserver: Send + Sync {
    /// A write set waited `waited` in the queue, from its request handing it over until a
    /// lane began the batch it is in: the wait for earlier batches to commit.
    fn write_set_waited(&self, waited: Duration);
    /// A batch of `write_sets` write sets took `took` from its beginning until every request
    /// of it was answered: the transaction, its commit and, where a part failed, the retries.
    fn batch_committed(&self, write_sets: usize, took: Duration);
}

/// What the group commit has committed so far in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommitTotals {
    /// Batches committed (or tried), each one transaction or, where nothing of it went
    /// together, a few.
    pub batches: u64,
    /// The write sets (changes and access records) they held: divided by the batches, the
    /// mean batch.
    pub write_sets: u64,
    /// Of the batches, those begun while another lane of the writer was committing (see
    /// [`POSTGRES_WRITER_LANES`]).
    pub parallel_batches: u64,
}

pub(super) struct GroupCommit {
    sender: mpsc::Sender<Message>,
    lanes: Arc<Lanes>,
    task: Mutex<Option<JoinHandle<()>>>,
    closed: tokio::sync::watch::Sender<bool>,
    totals: Arc<CommitTotals>,
}

/// How many batches the PostgreSQL writer may commit at once, each in a transaction of its own
/// on a connection of its own. One writer applies its batch in series, and between its
/// statements its backend waits on linkbridge and on the round trips: at 64 clients submitting
/// referrals a third of the machine sat idle while the writer's backend worked. A second lane
/// applies the next batch meanwhile (as another replica's writer would: PostgreSQL's locks
/// order the two, see `commit_batch`). SQLite has one write connection, so one lane.
pub(super) const POSTGRES_WRITER_LANES: usize = 2;

/// How many resource writes must be waiting before a lane begins a batch beside one that is
/// committing. A second transaction costs a commit of its own and halves the batches: it pays
/// only where applying the waiting work outlasts that. Measured at 64 clients on PostgreSQL,
/// two lanes always taking what waits gave referral submissions (three resources each) a fifth
/// more, and took a tenth off status changes (one resource each) and polls (access records
/// only), whose batches are cheap to apply.
const WAITING_WRITES_FOR_ANOTHER_LANE: usize = 48;

/// What the writer's lanes share: the queue, and what decides when a lane may begin a batch
/// beside another (see [`Lanes::wait_for_turn`]).
struct Lanes {
    receiver: Mutex<mpsc::Receiver<Message>>,
    /// Lanes applying or committing a batch now.
    committing: AtomicUsize,
    /// The resource writes of the write sets in the queue.
    waiting_writes: AtomicUsize,
    /// Told whenever a write set is queued, a lane finishes a batch, or the writer stops.
    changed: Notify,
}

impl Lanes {
    /// Takes `message` out of the queue's count of waiting work.
    fn took(&self, message: &Message) {
        self.waiting_writes.fetch_sub(message.resource_writes(), Ordering::AcqRel);
    }

    /// Waits, holding the queue with the first message of a batch (of `taken` resource
    /// writes) taken, until this lane should begin the batch: at once when no other lane is
    /// committing, else once enough work waits for a transaction of its own
    /// ([`WAITING_WRITES_FOR_ANOTHER_LANE`]) or the other lane is done (its lane then waits
    /// in turn), or when the writer stops.
    async fn wait_for_turn(&self, taken: usize, closed: &tokio::sync::watch::Receiver<bool>) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the test, so that a change between the two is not missed.
            changed.as_mut().enable();
            let waiting = taken + self.waiting_writes.load(Ordering::Acquire);
            if self.committing.load(Ordering::Acquire) == 0
                || waiting >= WAITING_WRITES_FOR_ANOTHER_LANE
                || *closed.borrow()
            {
                return;
            }
            changed.await;
        }
    }
}

impl Message {
    /// The resource writes the message carries: the weight of the work it adds to a batch.
    fn resource_writes(&self) -> usize {
        self.write_set().map_or(0, |write_set| write_set.resources.len())
    }
}

impl GroupCommit {
    /// Starts the writer, with `lanes` lanes where the connection allows more than one (see
    /// [`POSTGRES_WRITER_LANES`]); `outbox_signal` is told whenever a commit has added
    /// notifications.
    pub(super) fn start(
        connection: WriteConnection,
        lanes: usize,
        settle_window: Duration,
        outbox_signal: Arc<Notify>,
    ) -> Self {
        let (sender, receiver) = mpsc::channel(4 * MAX_BATCH);
        let (closed, closed_rx) = tokio::sync::watch::channel(false);
        let totals = Arc::new(CommitTotals::default());
        let shared = Arc::new(Lanes {
            receiver: Mutex::new(receiver),
            committing: AtomicUsize::new(0),
            waiting_writes: AtomicUsize::new(0),
            changed: Notify::new(),
        });
        let lane_tasks: Vec<JoinHandle<WriteConnection>> = connection
            .lanes(lanes)
            .into_iter()
            .map(|connection| {
                tokio::spawn(run(
                    connection,
                    Arc::clone(&shared),
                    closed_rx.clone(),
                    settle_window,
                    Arc::clone(&totals),
                    Arc::clone(&outbox_signal),
                ))
            })
            .collect();
        // The connections close once every lane is done: on PostgreSQL they share a pool.
        let task = tokio::spawn(async move {
            for lane in lane_tasks {
                if let Ok(connection) = lane.await {
                    connection.close().await;
                }
            }
        });
        GroupCommit { sender, lanes: shared, task: Mutex::new(Some(task)), closed, totals }
    }

    /// Tells `observer` from now on how long write sets wait and batches take. Only the first
    /// observer is kept: a process has one set of metrics.
    pub(super) fn observe(&self, observer: Arc<dyn CommitObserver>) {
        let _ = self.totals.observer.set(observer);
    }

    /// What the writer has committed so far.
    pub(super) fn totals(&self) -> GroupCommitTotals {
        GroupCommitTotals {
            batches: self.totals.batches.load(Ordering::Relaxed),
            write_sets: self.totals.write_sets.load(Ordering::Relaxed),
            parallel_batches: self.totals.parallel_batches.load(Ordering::Relaxed),
        }
    }

    pub(super) async fn submit(&self, write_set: WriteSet) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        let resource_writes = write_set.resources.len();
        self.lanes.waiting_writes.fetch_add(resource_writes, Ordering::AcqRel);
        let message = Message::Write { write_set: Box::new(write_set), reply, queued: Instant::now() };
        if self.sender.send(message).await.is_err() {
            self.lanes.waiting_writes.fetch_sub(resource_writes, Ordering::AcqRel);
            return Err(StoreError::WriterGone);
        }
        self.lanes.changed.notify_waiters();
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Runs `job` on the write connection, in its own savepoint of the next shared commit;
    /// returns once that commit is durable.
    pub(super) async fn run(&self, job: Job) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.sender.send(Message::Job { job, reply }).await.map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Lets the writer finish what is queued, then stops it.
    pub(super) async fn shutdown(&self) {
        let _ = self.closed.send(true);
        self.lanes.changed.notify_waiters();
        if let Some(task) = self.task.lock().await.take() {
            let _ = task.await;
        }
    }
}

/// One lane of the writer: takes what waits in the queue (while it holds the queue, no other
/// lane takes any), commits it, and again; returns its connection once the writer stops.
async fn run(
    mut connection: WriteConnection,
    lanes: Arc<Lanes>,
    mut closed: tokio::sync::watch::Receiver<bool>,
    settle_window: Duration,
    totals: Arc<CommitTotals>,
    outbox_signal: Arc<Notify>,
) -> WriteConnection {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let mut receiver = lanes.receiver.lock().await;
        let stopping = tokio::select! {
            biased;
            received = receiver.recv() => match received {
                Some(message) => {
                    lanes.took(&message);
                    batch.push(message);
                    false
                }
                None => break,
            },
            _ = closed.changed() => true,
        };
        if let Some(first) = batch.first() {
            lanes.wait_for_turn(first.resource_writes(), &closed).await;
        }
        // When stopping, everything already queued goes in this last batch.
        let stopping = stopping || *closed.borrow();
        while stopping || batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(message) => {
                    lanes.took(&message);
                    batch.push(message);
                }
                Err(_) => break,
            }
        }
        drop(receiver);
        if !batch.is_empty() {
            if lanes.committing.fetch_add(1, Ordering::AcqRel) > 0 {
                totals.parallel_batches.fetch_add(1, Ordering::Relaxed);
            }
            let began = Instant::now();
            let write_sets = totals.batch_began(&batch, began);
            let notified = connection.commit(std::mem::take(&mut batch), settle_window).await;
            if let Some(observer) = totals.observer() {
                observer.batch_committed(write_sets, began.elapsed());
            }
            lanes.committing.fetch_sub(1, Ordering::AcqRel);
            lanes.changed.notify_waiters();
            if notified {
                outbox_signal.notify_one();
            }
        }
        if stopping {
            break;
        }
    }
    connection
}

/// Answers whether notifications were committed.
async fn commit_batch(
    conn: &mut AnyConnection,
    kind: BackendKind,
    batch: Vec<Message>,
    settle_window: Duration,
) -> bool {
    // A batch of one, and on PostgreSQL a batch of which nothing goes together, commits each of
    // its messages in a transaction of its own: no savepoint, and no outer transaction that
    // would commit nothing (on PostgreSQL each is a round trip).
    if batch.len() == 1 || (kind == BackendKind::Postgres && !some_go_together(&batch)) {
        let mut notified = false;
        for message in batch {
            notified |= commit_alone(conn, kind, message, settle_window).await;
        }
        return notified;
    }
    let Some(batch) = begin(conn, kind, batch, Events::ToAdd).await else { return false };
    let mut outcomes: Vec<(Reply, Result<(), StoreError>)> = Vec::with_capacity(batch.len());
    let mut applied = Vec::new();
    let (writes, jobs): (Vec<Message>, Vec<Message>) =
        batch.into_iter().partition(|message| matches!(message, Message::Write { .. }));
    // Every write set at once first, under no savepoint: a savepoint makes SQLite copy each
    // page it changes (a tenth of the writer's time) and costs PostgreSQL two round trips and
    // a subtransaction, to undo what, nearly always, nothing needs undone.
    let (writes, absences) = refuse_matched(conn, writes, &mut outcomes).await;
    let rest = match apply_write_sets(conn, &write_sets_of(&writes), settle_window, absences).await {
        Ok(()) => {
            applied_all(writes, &mut outcomes, &mut applied);
            jobs
        }
        // Something of it failed (a version conflict, a taken conditional key, a late write):
        // none of it is kept, and the batch goes again in parts, so that the failure is
        // answered to its own request alone. The access records together (they cannot
        // conflict), under a savepoint; every change on its own.
        Err(e) => {
            tracing::debug!(error = %e, "the batch did not apply at once; again, in parts");
            let batch: Vec<Message> = writes.into_iter().chain(jobs).collect();
            let Some(batch) = restart(conn, kind, batch).await else { return false };
            apply_access_records_together(conn, batch, settle_window, &mut outcomes, &mut applied).await
        }
    };
    match kind {
        BackendKind::Sqlite => {
            for message in rest {
                apply_one(conn, message, settle_window, &mut outcomes, &mut applied).await;
            }
            finish(conn, outcomes, &applied, settle_window).await
        }
        // What applied commits now, and each write set or job left over commits in a
        // transaction of its own. Another replica's writer holds row locks of its own batch:
        // one by one inside this transaction, an earlier write set's locks would be held while
        // a later one waits, and two batches could wait on each other (PostgreSQL breaks such
        // a deadlock only after a second, and the waits pushed writes past the settle window).
        BackendKind::Postgres => {
            let mut notified = finish(conn, outcomes, &applied, settle_window).await;
            for message in rest {
                notified |= commit_alone(conn, kind, message, settle_window).await;
            }
            notified
        }
    }
}

/// Answers the write sets among `writes` that a live resource now matches where they require
/// none ([`super::NoMatchRequired`]) with `ConditionalClaimTaken` (their requests search and
/// plan again), so that the rest can still go in together; returns the rest. Should the
/// searches fail, every write set stays, to run its own on the way in.
async fn refuse_matched(
    conn: &mut AnyConnection,
    writes: Vec<Message>,
    outcomes: &mut Vec<(Reply, Result<(), StoreError>)>,
) -> (Vec<Message>, Absences) {
    let matched = match write_sets_with_matches(conn, &write_sets_of(&writes)).await {
        Ok(matched) => matched,
        Err(e) => {
            tracing::debug!(error = %e, "the batch's conditional creates could not be searched together");
            return (writes, Absences::Untested);
        }
    };
    if matched.is_empty() {
        return (writes, Absences::TestedInThisTransaction);
    }
    let mut kept = Vec::with_capacity(writes.len());
    for (position, message) in writes.into_iter().enumerate() {
        if matched.binary_search(&position).is_ok() {
            outcomes.push((message.into_reply(), Err(StoreError::ConditionalClaimTaken)));
        } else {
            kept.push(message);
        }
    }
    (kept, Absences::TestedInThisTransaction)
}

/// Records the write sets among `messages` as applied, each with a successful outcome to send
/// once the commit is durable.
fn applied_all(
    messages: Vec<Message>,
    outcomes: &mut Vec<(Reply, Result<(), StoreError>)>,
    applied: &mut Vec<WriteSet>,
) {
    for message in messages {
        if let Message::Write { write_set, reply, .. } = message {
            applied.push(*write_set);
            outcomes.push((reply, Ok(())));
        }
    }
}

/// The write sets among `messages`.
fn write_sets_of(messages: &[Message]) -> Vec<&WriteSet> {
    messages.iter().filter_map(Message::write_set).collect()
}

/// Rolls back the open transaction and begins another for `batch`; if it cannot, answers each
/// of its requests so and returns nothing to apply.
async fn restart(conn: &mut AnyConnection, kind: BackendKind, batch: Vec<Message>) -> Option<Vec<Message>> {
    if let Err(e) = conn.execute("ROLLBACK").await {
        tracing::error!(error = %e, "the writer could not roll back a batch");
        answer_all(batch, &StoreError::from(e));
        return None;
    }
    begin(conn, kind, batch, Events::Added).await
}

/// Whether the batch holds two write sets at least, which one transaction could apply together.
fn some_go_together(batch: &[Message]) -> bool {
    batch.iter().filter_map(Message::write_set).nth(1).is_some()
}

/// Commits one write set or job in a transaction of its own, without a savepoint: should it
/// fail, rolling the transaction back undoes its work and nobody else's. Answers whether
/// notifications were committed.
async fn commit_alone(conn: &mut AnyConnection, kind: BackendKind, message: Message, settle_window: Duration) -> bool {
    let Some(message) = begin(conn, kind, vec![message], Events::ToAdd).await.and_then(|mut alone| alone.pop()) else {
        return false;
    };
    let (reply, outcome, write_set) = apply_message(conn, message, settle_window).await;
    match outcome {
        Ok(()) => {
            let applied: Vec<WriteSet> = write_set.into_iter().map(|ws| *ws).collect();
            finish(conn, vec![(reply, Ok(()))], &applied, settle_window).await
        }
        Err(e) => {
            let _ = conn.execute("ROLLBACK").await;
            let _ = reply.send(Err(e));
            false
        }
    }
}

/// Whether [`begin`] adds the events of a batch's changes to their write sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Events {
    /// Not yet: the transaction begins with a read of the live subscriptions.
    ToAdd,
    /// Already, by the transaction this one replaces (see [`restart`]).
    Added,
}

/// Begins a transaction for `batch` and, where `events` asks and some write is of a topic's
/// type, adds the events of its changes for the subscriptions live as it begins (see
/// `events`), in the same round trip; if it cannot, answers each of its requests so and
/// returns nothing to apply.
async fn begin(
    conn: &mut AnyConnection,
    kind: BackendKind,
    mut batch: Vec<Message>,
    events: Events,
) -> Option<Vec<Message>> {
    let statement = match kind {
        // Takes the write lock at once: a deferred transaction could fail to upgrade.
        BackendKind::Sqlite => "BEGIN IMMEDIATE",
        BackendKind::Postgres => "BEGIN",
    };
    let begun = if events == Events::ToAdd && any_topical(batch.iter().filter_map(Message::write_set)) {
        match begin_reading_live_subscriptions(conn, statement).await {
            Ok(subscriptions) => {
                add_events(&subscriptions, batch.iter_mut().filter_map(Message::write_set_mut));
                Ok(())
            }
            Err(e) => {
                // The transaction may have begun before the read failed.
                let _ = conn.execute("ROLLBACK").await;
                Err(e)
            }
        }
    } else {
        conn.execute(statement).await.map(|_| ()).map_err(StoreError::from)
    };
    match begun {
        Ok(()) => Some(batch),
        Err(e) => {
            tracing::error!(error = %e, "the writer could not begin a transaction");
            answer_all(batch, &e);
            None
        }
    }
}

/// Applies a write set, or runs a job, in the open transaction: its reply, its outcome, and the
/// write set (which the settle window is checked on again before COMMIT).
async fn apply_message(
    conn: &mut AnyConnection,
    message: Message,
    settle_window: Duration,
) -> (Reply, Result<(), StoreError>, Option<Box<WriteSet>>) {
    match message {
        Message::Write { write_set, reply, .. } => {
            let outcome = apply_write_set(conn, &write_set, settle_window).await;
            (reply, outcome, Some(write_set))
        }
        Message::Job { job, reply } => (reply, job(conn).await, None),
    }
}

/// Applies one write set or job under a savepoint of its own: kept if it succeeds, undone
/// without touching the rest of the transaction if it fails.
async fn apply_one(
    conn: &mut AnyConnection,
    message: Message,
    settle_window: Duration,
    outcomes: &mut Vec<(Reply, Result<(), StoreError>)>,
    applied: &mut Vec<WriteSet>,
) {
    let (reply, outcome) = match conn.execute("SAVEPOINT write_set").await {
        Ok(_) => {
            let (reply, done, write_set) = apply_message(conn, message, settle_window).await;
            let outcome = end_savepoint(conn, done).await;
            if outcome.is_ok() {
                applied.extend(write_set.map(|ws| *ws));
            }
            (reply, outcome)
        }
        Err(e) => (message.into_reply(), Err(e.into())),
    };
    outcomes.push((reply, outcome));
}

/// Commits the open transaction and answers each request with its outcome once it is durable;
/// answers whether notifications were committed.
async fn finish(
    conn: &mut AnyConnection,
    outcomes: Vec<(Reply, Result<(), StoreError>)>,
    applied: &[WriteSet],
    settle_window: Duration,
) -> bool {
    // Again just before COMMIT (see `service::search`): if the batch took so long that one of
    // its writes is now older than the settle window allows, none of it commits; every
    // request of the batch is answered SettleWindowPassed and may retry.
    if let Err(late) = applied.iter().try_for_each(|ws| check_write_set_settled(ws, settle_window)) {
        let _ = conn.execute("ROLLBACK").await;
        let late_by_ms = match late {
            StoreError::SettleWindowPassed { late_by_ms } => late_by_ms,
            _ => 0,
        };
        for (reply, outcome) in outcomes {
            let answer = outcome.and(Err(StoreError::SettleWindowPassed { late_by_ms }));
            let _ = reply.send(answer);
        }
        return false;
    }
    match conn.execute("COMMIT").await {
        Ok(_) => {
            for (reply, outcome) in outcomes {
                let _ = reply.send(outcome);
            }
            applied.iter().any(|ws| !ws.notifications.is_empty())
        }
        Err(e) => {
            tracing::error!(error = %e, "the writer's commit failed");
            let _ = conn.execute("ROLLBACK").await;
            let error = StoreError::from(e);
            for (reply, _) in outcomes {
                let _ = reply.send(Err(error.for_each_request()));
            }
            false
        }
    }
}

/// Applies the batch's access records (the write sets of reads and searches) as one, under a
/// savepoint: should that fail (a write too late for the settle window), nothing of it is kept
/// and they stay in the batch, to go one by one. Returns the messages still to apply.
async fn apply_access_records_together(
    conn: &mut AnyConnection,
    batch: Vec<Message>,
    settle_window: Duration,
    outcomes: &mut Vec<(Reply, Result<(), StoreError>)>,
    applied: &mut Vec<WriteSet>,
) -> Vec<Message> {
    const SAVEPOINT: &str = "access_records";
    let (chosen, rest): (Vec<Message>, Vec<Message>) = batch
        .into_iter()
        .partition(|message| matches!(message, Message::Write { write_set, .. } if write_set.is_audit_only()));
    if chosen.len() < 2 {
        return chosen.into_iter().chain(rest).collect();
    }
    let done = match conn.execute(format!("SAVEPOINT {SAVEPOINT}").as_str()).await {
        Ok(_) => {
            let done = apply_write_sets(conn, &write_sets_of(&chosen), settle_window, Absences::Untested).await;
            end_savepoint_named(conn, SAVEPOINT, done).await
        }
        Err(e) => Err(e.into()),
    };
    match done {
        Ok(()) => {
            applied_all(chosen, outcomes, applied);
            rest
        }
        Err(e) => {
            tracing::debug!(error = %e, "access records did not apply together; one by one");
            chosen.into_iter().chain(rest).collect()
        }
    }
}

/// Ends the savepoint each write set or job runs under: kept if it succeeded; otherwise what
/// it did is undone and nobody else's work in the batch is touched.
async fn end_savepoint(conn: &mut AnyConnection, outcome: Result<(), StoreError>) -> Result<(), StoreError> {
    end_savepoint_named(conn, "write_set", outcome).await
}

async fn end_savepoint_named(
    conn: &mut AnyConnection,
    name: &str,
    outcome: Result<(), StoreError>,
) -> Result<(), StoreError> {
    match outcome {
        Ok(()) => {
            conn.execute(format!("RELEASE {name}").as_str()).await?;
            Ok(())
        }
        Err(e) => {
            conn.execute(format!("ROLLBACK TO {name}").as_str()).await?;
            conn.execute(format!("RELEASE {name}").as_str()).await?;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::ResourceId;
    use crate::domain::resource_type::ResourceType;
    use crate::store::write_set::VisibilityGrant;

    fn message(write_set: WriteSet) -> Message {
        Message::Write { write_set: Box::new(write_set), reply: oneshot::channel().0, queued: Instant::now() }
    }

    fn access_record() -> Message {
        message(WriteSet::default())
    }

    fn change() -> Message {
        let grant = VisibilityGrant {
            resource_type: ResourceType::Patient,
            id: ResourceId::generate(),
            key: "org:GP1".to_owned(),
        };
        message(WriteSet { grants: vec![grant], ..Default::default() })
    }

    fn idle_lanes() -> Arc<Lanes> {
        let (_, receiver) = mpsc::channel(1);
        Arc::new(Lanes {
            receiver: Mutex::new(receiver),
            committing: AtomicUsize::new(0),
            waiting_writes: AtomicUsize::new(0),
            changed: Notify::new(),
        })
    }

    /// Starts a lane waiting for its turn with a first write set of `taken` resource writes.
    fn waiting_lane(lanes: &Arc<Lanes>, taken: usize, closed: &tokio::sync::watch::Sender<bool>) -> JoinHandle<()> {
        let (lanes, closed) = (Arc::clone(lanes), closed.subscribe());
        tokio::spawn(async move { lanes.wait_for_turn(taken, &closed).await })
    }

    async fn still_waiting(lane: &JoinHandle<()>) -> bool {
        tokio::time::sleep(Duration::from_millis(30)).await;
        !lane.is_finished()
    }

    async fn begins(lane: JoinHandle<()>) {
        tokio::time::timeout(Duration::from_secs(5), lane).await.expect("the lane begins").expect("the lane ran");
    }

    #[tokio::test]
    async fn a_lane_begins_at_once_when_no_other_lane_is_committing() {
        let (lanes, (closed, _)) = (idle_lanes(), tokio::sync::watch::channel(false));
        begins(waiting_lane(&lanes, 1, &closed)).await;
    }

    #[tokio::test]
    async fn a_lane_beside_a_committing_one_waits_until_enough_work_waits() {
        let (lanes, (closed, _)) = (idle_lanes(), tokio::sync::watch::channel(false));
        lanes.committing.store(1, Ordering::Release);
        lanes.waiting_writes.store(WAITING_WRITES_FOR_ANOTHER_LANE - 4, Ordering::Release);
        let lane = waiting_lane(&lanes, 3, &closed);
        assert!(still_waiting(&lane).await, "one write short of a batch of its own, it waits");
        lanes.waiting_writes.fetch_add(1, Ordering::AcqRel);
        lanes.changed.notify_waiters();
        begins(lane).await;
    }

    #[tokio::test]
    async fn a_lane_beside_a_committing_one_begins_when_that_one_is_done_or_the_writer_stops() {
        let (lanes, (closed, _)) = (idle_lanes(), tokio::sync::watch::channel(false));
        lanes.committing.store(1, Ordering::Release);
        let lane = waiting_lane(&lanes, 1, &closed);
        assert!(still_waiting(&lane).await, "one write waits for the committing lane");
        lanes.committing.store(0, Ordering::Release);
        lanes.changed.notify_waiters();
        begins(lane).await;

        lanes.committing.store(1, Ordering::Release);
        let lane = waiting_lane(&lanes, 1, &closed);
        assert!(still_waiting(&lane).await);
        closed.send(true).expect("the lane listens");
        lanes.changed.notify_waiters();
        begins(lane).await;
    }

    #[test]
    fn write_sets_go_together_two_at_least_of_any_kind() {
        assert!(some_go_together(&[access_record(), change()]));
        assert!(some_go_together(&[access_record(), access_record()]));
        assert!(some_go_together(&[change(), access_record(), change()]));
        assert!(!some_go_together(&[change()]));
    }
}
