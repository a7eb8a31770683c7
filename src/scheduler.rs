//! The controller's scheduler: decides when each policy job runs and reports every decision.
//!
//! Job execution belongs to the caller, through an executor callback. This module decides when:
//!
//! - [`catch_up`] decides what to run after downtime: at most one run, for the most recent missed
//!   slot, and only while that slot is no older than the job's starting deadline. The other missed
//!   slots are counted and reported as skipped, never run.
//! - [`check_due`] keeps `visage-dr run --due` idempotent per slot, so a CronJob retried for a
//!   slot that already completed does not back up twice.
//! - [`Scheduler::run`] is the loop of `visage-dr serve`. It sleeps until the earliest next slot,
//!   fires the due jobs, skips a slot whose job is still running, applies reloaded job lists and
//!   stops on a shutdown signal.
//!
//! A *slot* is a fire time of a [`Schedule`], in UTC. Time comes from a [`Clock`], so tests drive
//! days of schedule under tokio's paused time with [`TokioClock`]. Decisions are sent as
//! [`Event`]s and logged with `tracing`, with the fields `job.name` and `job.slot`.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::{self, JoinError, JoinSet};

use crate::schedule::Schedule;

/// Number of missed slots counted one by one. Past this, [`catch_up`] extrapolates the count
/// from the spacing of the counted slots and marks it inexact. At this limit an every-minute
/// schedule has been down for about 69 days.
pub const MAX_COUNTED_SLOTS: u64 = 100_000;

/// Minimum lateness of a run, after its slot, for which the driver reports [`Event::CaughtUp`]
/// even when no slot was skipped.
pub const CATCH_UP_LATENESS: Duration = Duration::from_secs(60);

/// Maximum duration of one sleep of [`SystemClock`]. The clock rereads the wall clock after each sleep,
/// so a wall-clock step or a host suspend delays a fire by at most this much.
const SYSTEM_CLOCK_MAX_SLEEP: Duration = Duration::from_secs(60);

/// First batch size when counting missed slots. Batches double up to [`MAX_COUNT_BATCH`], so a
/// daily job that missed one slot costs one small search.
const FIRST_COUNT_BATCH: usize = 16;
const MAX_COUNT_BATCH: usize = 4096;

/// Message recorded for a run whose executor future panicked.
const PANICKED_MESSAGE: &str = "executor panicked";

/// Message recorded for a run abandoned at shutdown.
const ABANDONED_MESSAGE: &str = "abandoned at shutdown before it finished";

/// A boxed, sendable future, as returned by [`Clock::sleep_until`] and by executors.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Name of a job, unique within a job list, such as `postgres visage-db` or `prune`.
pub type JobName = String;

// Clocks.

/// Source of wall-clock time for the scheduler.
pub trait Clock: Send + Sync {
    /// Returns the current time.
    fn now(&self) -> DateTime<Utc>;

    /// Completes once [`Clock::now`] is at or after `deadline`, at once if it already is.
    fn sleep_until(&self, deadline: DateTime<Utc>) -> BoxFuture<'_, ()>;
}

/// The host's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    /// Sleeps in steps of at most 60 seconds and rereads the wall clock after each step. Tokio's
    /// timers follow the monotonic clock, which does not see wall-clock steps and, on Linux, does
    /// not advance while the host is suspended.
    fn sleep_until(&self, deadline: DateTime<Utc>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            loop {
                // `to_std` fails for a negative difference, which means the deadline has passed.
                let Ok(remaining) = (deadline - Utc::now()).to_std() else {
                    return;
                };
                if remaining.is_zero() {
                    return;
                }
                tokio::time::sleep(remaining.min(SYSTEM_CLOCK_MAX_SLEEP)).await;
            }
        })
    }
}

/// Wall-clock time derived from tokio's clock: a fixed UTC start plus the tokio time elapsed
/// since the clock was created.
///
/// Under tokio's paused time (`#[tokio::test(start_paused = true)]` or
/// `tokio::time::pause`), the runtime advances time to the next timer whenever every task is
/// idle, so a test covers days of schedule in milliseconds, and `tokio::time::advance` simulates
/// a host suspend. Copies share the same start and read the same time.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    start_utc: DateTime<Utc>,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// Creates a clock that reads `now` at this moment of tokio time.
    pub fn starting_at(now: DateTime<Utc>) -> TokioClock {
        TokioClock {
            start_utc: now,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = TimeDelta::from_std(self.start.elapsed()).unwrap_or(TimeDelta::MAX);
        self.start_utc
            .checked_add_signed(elapsed)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    fn sleep_until(&self, deadline: DateTime<Utc>) -> BoxFuture<'_, ()> {
        // A deadline before the start maps to the start, which has passed.
        let offset = (deadline - self.start_utc)
            .to_std()
            .unwrap_or(Duration::ZERO);
        match self.start.checked_add(offset) {
            Some(instant) => Box::pin(tokio::time::sleep_until(instant)),
            None => Box::pin(std::future::pending()),
        }
    }
}

// Catch-up after downtime.

/// Behaviour of a job that has never run, so there is no last slot to catch up from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FirstStart {
    /// Wait for the first slot after the start. No past slot runs.
    #[default]
    WaitForNextSlot,
    /// Run the most recent slot at or before the start at once, whatever its age.
    RunLatestSlot,
}

/// Consecutive slots that were missed and will not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SkippedSlots {
    /// Number of skipped slots, an estimate when `exact` is false.
    pub count: u64,
    /// False when more than [`MAX_COUNTED_SLOTS`] slots were skipped and `count` was
    /// extrapolated from the spacing of the first ones.
    pub exact: bool,
    /// Earliest skipped slot.
    pub first: DateTime<Utc>,
    /// Latest skipped slot.
    pub last: DateTime<Utc>,
}

/// Decision of [`catch_up`] or [`first_start`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CatchUp {
    /// Slot to run now, if any.
    pub run: Option<DateTime<Utc>>,
    /// Missed slots that will not run, if any.
    pub skipped: Option<SkippedSlots>,
    /// First slot after `now`, or after the last run's slot when that is later. `None` when the
    /// schedule has no slot within the next 400 years.
    pub next: Option<DateTime<Utc>>,
}

/// Decides what a job runs at `now`, given the slot of its last run.
///
/// The slots after `last_slot` up to and including `now` are missed. The most recent one runs
/// now if `now - slot <= deadline`, or always when `deadline` is `None`. Every other missed slot
/// is skipped, so a restart never starts a burst of runs. When even the most recent slot is too
/// old, all missed slots are skipped and the job waits for `next`.
///
/// `last_slot` need not be a slot of `schedule`, so it may come from an older schedule. A
/// `last_slot` after `now`, recorded before the wall clock was set back, means nothing is
/// missed, and `next` is then the first slot after `last_slot`. `last_slot == None` is a first
/// start and returns [`first_start`] with [`FirstStart::WaitForNextSlot`].
///
/// Skipped slots are counted by walking the schedule, up to [`MAX_COUNTED_SLOTS`].
pub fn catch_up(
    schedule: &Schedule,
    last_slot: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    deadline: Option<Duration>,
) -> CatchUp {
    let Some(last_slot) = last_slot else {
        return first_start(schedule, now, FirstStart::WaitForNextSlot);
    };

    let next = schedule.next_after(now.max(last_slot));
    let latest = match schedule.slot_at_or_before(now) {
        Some(latest) if latest > last_slot => latest,
        _ => {
            return CatchUp {
                run: None,
                skipped: None,
                next,
            }
        }
    };

    // `latest` is a slot after `last_slot`, so the first slot after `last_slot` exists.
    let first_missed = schedule.next_after(last_slot).unwrap_or(latest);
    let (before_latest, exact) = count_slots_between(schedule, last_slot, latest, first_missed);

    if is_within(now, latest, deadline) {
        let skipped = match before_latest {
            0 => None,
            count => Some(SkippedSlots {
                count,
                exact,
                first: first_missed,
                last: previous_slot(schedule, latest).unwrap_or(first_missed),
            }),
        };
        CatchUp {
            run: Some(latest),
            skipped,
            next,
        }
    } else {
        CatchUp {
            run: None,
            skipped: Some(SkippedSlots {
                count: before_latest.saturating_add(1),
                exact,
                first: first_missed,
                last: latest,
            }),
            next,
        }
    }
}

/// Decides what a job that has never run does at `now`.
///
/// [`FirstStart::WaitForNextSlot`] runs nothing. [`FirstStart::RunLatestSlot`] runs the most
/// recent slot at or before `now`, with no starting deadline. Nothing is reported as skipped.
pub fn first_start(schedule: &Schedule, now: DateTime<Utc>, mode: FirstStart) -> CatchUp {
    let run = match mode {
        FirstStart::WaitForNextSlot => None,
        FirstStart::RunLatestSlot => schedule.slot_at_or_before(now),
    };
    CatchUp {
        run,
        skipped: None,
        next: schedule.next_after(now),
    }
}

/// Returns whether `slot` is at most `deadline` old at `now`. No deadline means any age.
fn is_within(now: DateTime<Utc>, slot: DateTime<Utc>, deadline: Option<Duration>) -> bool {
    let Some(deadline) = deadline else {
        return true;
    };
    match TimeDelta::from_std(deadline) {
        Ok(deadline) => now - slot <= deadline,
        // Longer than chrono can represent, which is longer than any age.
        Err(_) => true,
    }
}

/// Returns the slot before `slot`.
fn previous_slot(schedule: &Schedule, slot: DateTime<Utc>) -> Option<DateTime<Utc>> {
    schedule.slot_at_or_before(slot - TimeDelta::nanoseconds(1))
}

/// Counts the slots strictly between `after` and `before`, where `first` is the first slot after
/// `after`. Returns the count and whether it is exact.
///
/// Past [`MAX_COUNTED_SLOTS`] the rest is extrapolated at the mean spacing of the counted
/// slots. That is exact for evenly spaced schedules such as `*/5 * * * *`, and close for others
/// whose pattern repeats within the counted span.
fn count_slots_between(
    schedule: &Schedule,
    after: DateTime<Utc>,
    before: DateTime<Utc>,
    first: DateTime<Utc>,
) -> (u64, bool) {
    if first >= before {
        return (0, true);
    }

    let mut count: u64 = 0;
    let mut cursor = after;
    let mut batch_size = FIRST_COUNT_BATCH;
    loop {
        let batch = schedule.upcoming(cursor, batch_size);
        for &slot in &batch {
            if slot >= before {
                return (count, true);
            }
            count += 1;
            if count == MAX_COUNTED_SLOTS {
                return (
                    count + estimate_slots_between(count, first, slot, before),
                    false,
                );
            }
        }
        match batch.last() {
            Some(&last) if batch.len() == batch_size => cursor = last,
            // The 400-year search of `upcoming` ended before `before`.
            _ => return (count, true),
        }
        batch_size = (batch_size * 2).min(MAX_COUNT_BATCH);
    }
}

/// Estimates the slots strictly between `reached` and `before`, given that `counted` slots were
/// found from `first` to `reached`, both included.
fn estimate_slots_between(
    counted: u64,
    first: DateTime<Utc>,
    reached: DateTime<Utc>,
    before: DateTime<Utc>,
) -> u64 {
    let counted_span = i128::from((reached - first).num_milliseconds());
    let remaining_span = i128::from((before - reached).num_milliseconds());
    let intervals = i128::from(counted) - 1;
    if counted_span <= 0 || remaining_span <= 0 {
        return 0;
    }

    // Slots spaced `counted_span / intervals` apart, strictly inside an open interval of
    // length `remaining_span`: ceil(remaining / spacing) - 1.
    let numerator = remaining_span * intervals;
    let steps = (numerator + counted_span - 1) / counted_span;
    u64::try_from(steps - 1).unwrap_or(u64::MAX)
}

// Idempotency of `visage-dr run --due`.

/// Decision of [`check_due`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum DueCheck {
    /// `slot` has not completed: run the job and record `slot` when it succeeds.
    Due { slot: DateTime<Utc> },
    /// `slot` has completed already, so this start is a retry for the same slot.
    AlreadyDone { slot: DateTime<Utc> },
    /// No slot is due now. `next` is the first slot after `now`, `None` when the schedule has no
    /// slot within the next 400 years.
    NotDue { next: Option<DateTime<Utc>> },
}

/// Decides whether `visage-dr run --due` runs a job at `now`.
///
/// The candidate is the most recent slot at or before `now`. It is due when it is at most
/// `tolerance` old (use the CronJob's `startingDeadlineSeconds`; `None` accepts any age) and
/// `last_completed` is before it.
///
/// `last_completed` must be the *slot* of the last successful run, as returned in
/// [`DueCheck::Due`], not the time the run ended. A run that ends after the next slot would
/// otherwise mark that slot as done too.
pub fn check_due(
    schedule: &Schedule,
    now: DateTime<Utc>,
    last_completed: Option<DateTime<Utc>>,
    tolerance: Option<Duration>,
) -> DueCheck {
    let next = schedule.next_after(now);
    let Some(slot) = schedule.slot_at_or_before(now) else {
        return DueCheck::NotDue { next };
    };
    if !is_within(now, slot, tolerance) {
        return DueCheck::NotDue { next };
    }
    if last_completed.is_some_and(|completed| completed >= slot) {
        DueCheck::AlreadyDone { slot }
    } else {
        DueCheck::Due { slot }
    }
}

// Jobs, state and events.

/// A job that the driver fires at its schedule's slots.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Unique name within the job list.
    pub name: JobName,
    pub schedule: Schedule,
    /// Maximum age of a missed slot that still runs late, as in a CronJob's
    /// `startingDeadlineSeconds`. `None` runs the most recent missed slot whatever its age. A
    /// policy's calendar duration converts with [`crate::units::Duration::to_std`].
    pub starting_deadline: Option<Duration>,
    /// Behaviour when `last_slot` is `None`.
    pub first_start: FirstStart,
    /// Slot of the job's last run, as recorded in the repository. Read only when the driver has
    /// no state for the job: at start, and for a job that a reload adds.
    pub last_slot: Option<DateTime<Utc>>,
}

impl Job {
    /// Creates a job with no starting deadline, no recorded run and
    /// [`FirstStart::WaitForNextSlot`].
    pub fn new(name: impl Into<JobName>, schedule: Schedule) -> Job {
        Job {
            name: name.into(),
            schedule,
            starting_deadline: None,
            first_start: FirstStart::WaitForNextSlot,
            last_slot: None,
        }
    }
}

/// Outcome of a finished run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunResult {
    pub slot: DateTime<Utc>,
    /// Time the run ended, by the scheduler's clock.
    pub finished_at: DateTime<Utc>,
    /// Error message of a failed, panicked or abandoned run. `None` when the run succeeded.
    pub error: Option<String>,
}

/// The driver's state of one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobState {
    /// Slot of the run in flight, if any.
    pub running: Option<DateTime<Utc>>,
    /// Slot of the most recent run started, including one that is still in flight.
    pub last_slot: Option<DateTime<Utc>>,
    /// Outcome of the most recent finished run.
    pub last_result: Option<RunResult>,
    /// Next slot the driver will decide on. `None` when the schedule has no slot within the next
    /// 400 years.
    pub next_slot: Option<DateTime<Utc>>,
}

/// A run that was in flight when the shutdown signal came.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InFlightRun {
    pub job: JobName,
    pub slot: DateTime<Utc>,
}

/// Report that [`Scheduler::run`] returns after a shutdown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunReport {
    /// Final state of every job of the current job list, by name.
    pub jobs: BTreeMap<JobName, JobState>,
    /// Runs that finished while the driver waited for them after the shutdown signal.
    pub finished_after_shutdown: Vec<InFlightRun>,
    /// Runs still in flight when the shutdown grace period ended. Their futures were dropped,
    /// which cancels them at their next `.await`.
    pub abandoned: Vec<InFlightRun>,
}

/// A decision of the driver, sent to the events channel and logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The executor was called for `slot`.
    Fired { job: JobName, slot: DateTime<Utc> },
    /// `slot` did not run because the run for slot `running` was still in flight.
    SkippedOverlap {
        job: JobName,
        slot: DateTime<Utc>,
        running: DateTime<Utc>,
    },
    /// Missed slots that will not run, after downtime, a host suspend or a late wake-up.
    MissedSlots {
        job: JobName,
        count: u64,
        /// False when `count` is an estimate, see [`SkippedSlots::exact`].
        exact: bool,
        first: DateTime<Utc>,
        last: DateTime<Utc>,
    },
    /// `slot` is fired late: after `skipped` missed slots, or [`CATCH_UP_LATENESS`] or more after
    /// its time. [`Event::Fired`] follows.
    CaughtUp {
        job: JobName,
        slot: DateTime<Utc>,
        skipped: u64,
    },
    /// The run for `slot` ended. `error` is `None` exactly when `ok` is true.
    Finished {
        job: JobName,
        slot: DateTime<Utc>,
        ok: bool,
        error: Option<String>,
    },
    /// The run for `slot` was cancelled when the shutdown grace period ended.
    Abandoned { job: JobName, slot: DateTime<Utc> },
    /// A reloaded job list took effect.
    Reloaded { jobs: usize },
    /// A reloaded job list was invalid, and the previous list stays in effect.
    ReloadRejected { error: String },
}

/// Errors in a job list given to [`Scheduler::run`] or sent as a reload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobListError {
    #[error("job {index} of the list has an empty name: give every job a unique name")]
    EmptyName { index: usize },

    #[error("job name `{name}` appears more than once in the list: job names must be unique")]
    DuplicateName { name: JobName },

    #[error("job `{name}` has a starting deadline of zero, so a slot would run only if the scheduler woke at its exact instant: set a deadline of a few seconds or more, or none")]
    ZeroDeadline { name: JobName },
}

/// Checks that names are non-empty and unique and that no starting deadline is zero.
fn validate_jobs(jobs: &[Job]) -> Result<(), JobListError> {
    let mut seen = std::collections::HashSet::new();
    for (index, job) in jobs.iter().enumerate() {
        if job.name.is_empty() {
            return Err(JobListError::EmptyName { index });
        }
        if !seen.insert(job.name.as_str()) {
            return Err(JobListError::DuplicateName {
                name: job.name.clone(),
            });
        }
        if job
            .starting_deadline
            .is_some_and(|deadline| deadline.is_zero())
        {
            return Err(JobListError::ZeroDeadline {
                name: job.name.clone(),
            });
        }
    }
    Ok(())
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Logs `event` with tracing at the level its decision deserves.
fn log_event(event: &Event) {
    match event {
        Event::Fired { job, slot } => {
            tracing::info!(job.name = %job, job.slot = %rfc3339(*slot), "job fired");
        }
        Event::SkippedOverlap { job, slot, running } => {
            tracing::warn!(
                job.name = %job,
                job.slot = %rfc3339(*slot),
                running_slot = %rfc3339(*running),
                "slot skipped because the previous run of the job is still in flight"
            );
        }
        Event::MissedSlots {
            job,
            count,
            exact,
            first,
            last,
        } => {
            tracing::warn!(
                job.name = %job,
                job.slot = %rfc3339(*last),
                count,
                exact,
                first = %rfc3339(*first),
                last = %rfc3339(*last),
                "missed slots skipped; they will not run"
            );
        }
        Event::CaughtUp { job, slot, skipped } => {
            tracing::info!(
                job.name = %job,
                job.slot = %rfc3339(*slot),
                skipped,
                "running a missed slot late"
            );
        }
        Event::Finished {
            job,
            slot,
            error: None,
            ..
        } => {
            tracing::info!(job.name = %job, job.slot = %rfc3339(*slot), "job finished");
        }
        Event::Finished {
            job,
            slot,
            error: Some(error),
            ..
        } => {
            tracing::error!(job.name = %job, job.slot = %rfc3339(*slot), error = %error, "job failed");
        }
        Event::Abandoned { job, slot } => {
            tracing::warn!(
                job.name = %job,
                job.slot = %rfc3339(*slot),
                "run abandoned: still in flight when the shutdown grace period ended"
            );
        }
        Event::Reloaded { jobs } => {
            tracing::info!(jobs, "job list reloaded");
        }
        Event::ReloadRejected { error } => {
            tracing::error!(error = %error, "reloaded job list rejected; the previous list stays in effect");
        }
    }
}

// The driver.

/// The driver of `visage-dr serve`, configured with its optional channels before
/// [`Scheduler::run`].
#[derive(Debug, Default)]
pub struct Scheduler {
    events: Option<mpsc::UnboundedSender<Event>>,
    reload: Option<mpsc::Receiver<Vec<Job>>>,
    shutdown_grace: Option<Duration>,
}

impl Scheduler {
    /// Creates a driver without an events channel or reload channel, which waits without a time
    /// limit for runs in flight at shutdown.
    pub fn new() -> Scheduler {
        Scheduler::default()
    }

    /// Sends every [`Event`] to `events` as well as logging it. A closed receiver is ignored.
    pub fn events(mut self, events: mpsc::UnboundedSender<Event>) -> Scheduler {
        self.events = Some(events);
        self
    }

    /// Receives replacement job lists from `reload`. A valid list takes effect at once, and a job
    /// whose name was in the previous list keeps its state. The driver stops listening when
    /// every sender is dropped.
    pub fn reload(mut self, reload: mpsc::Receiver<Vec<Job>>) -> Scheduler {
        self.reload = Some(reload);
        self
    }

    /// Limits the wait for runs in flight after the shutdown signal, by the driver's clock.
    /// Runs still in flight then are abandoned.
    pub fn shutdown_grace(mut self, grace: Duration) -> Scheduler {
        self.shutdown_grace = Some(grace);
        self
    }

    /// Fires `jobs` at their slots through `executor` until `shutdown` becomes true or its
    /// sender is dropped.
    ///
    /// The executor is called on the driver's task, so it should only build the future and
    /// leave the work to it. Each run is spawned as a tokio task, so the executor's future must be
    /// `'static`. A job
    /// whose previous run is in flight skips its slot with [`Event::SkippedOverlap`], and a
    /// panic in the executor's future counts as a failed run. At start, and when a reload adds
    /// a job, a job with a [`Job::last_slot`] catches up with [`catch_up`] and one without
    /// follows [`Job::first_start`].
    ///
    /// After the shutdown signal no job fires. The driver waits for runs in flight, for at
    /// most the [`Scheduler::shutdown_grace`] if one is set, then abandons the rest and returns.
    ///
    /// # Errors
    ///
    /// Returns [`JobListError`] without firing anything when `jobs` is invalid. An invalid
    /// reloaded list is reported as [`Event::ReloadRejected`] instead.
    pub async fn run<C, E>(
        self,
        jobs: Vec<Job>,
        clock: C,
        executor: E,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<RunReport, JobListError>
    where
        C: Clock,
        E: Fn(JobName, DateTime<Utc>) -> BoxFuture<'static, Result<(), String>> + Send + Sync,
    {
        validate_jobs(&jobs)?;
        tracing::info!(jobs = jobs.len(), "scheduler started");

        let mut driver = Driver {
            clock,
            executor,
            events: self.events,
            jobs: Vec::new(),
            tracked: HashMap::new(),
            runs: JoinSet::new(),
            in_flight: HashMap::new(),
        };
        let now = driver.clock.now();
        driver.install(jobs, now);

        let mut reload = self.reload;
        loop {
            let now = driver.clock.now();
            driver.decide_due(now);

            let wake_at = driver.earliest_wake();
            let sleep = async {
                match wake_at {
                    Some(t) => driver.clock.sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let wake = tokio::select! {
                biased;
                _ = shutdown_requested(&mut shutdown) => Wake::Shutdown,
                Some(joined) = driver.runs.join_next_with_id(), if !driver.runs.is_empty() => {
                    Wake::RunEnded(joined)
                }
                message = receive_reload(&mut reload) => match message {
                    Some(jobs) => Wake::Reload(jobs),
                    None => Wake::ReloadClosed,
                },
                () = sleep => Wake::Timer,
            };

            match wake {
                Wake::Shutdown => break,
                Wake::RunEnded(joined) => {
                    driver.record_run_end(joined);
                }
                Wake::Reload(jobs) => driver.reload(jobs),
                Wake::ReloadClosed => {
                    tracing::info!("reload channel closed; the job list stays as it is");
                    reload = None;
                }
                Wake::Timer => {}
            }
        }

        Ok(driver.shut_down(self.shutdown_grace).await)
    }
}

/// Reason the driver's loop woke up.
enum Wake {
    Shutdown,
    RunEnded(Result<(task::Id, Result<(), String>), JoinError>),
    Reload(Vec<Job>),
    ReloadClosed,
    Timer,
}

/// Completes when the shutdown value is true or its sender is dropped.
async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    // An error means the sender was dropped, and no one can request a shutdown any more.
    let _ = shutdown.wait_for(|&stop| stop).await;
}

/// Receives the next reloaded job list, or never completes when there is no reload channel.
async fn receive_reload(reload: &mut Option<mpsc::Receiver<Vec<Job>>>) -> Option<Vec<Job>> {
    match reload {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

/// The driver's bookkeeping for one job.
#[derive(Debug)]
struct Tracked {
    state: JobState,
    /// Every slot up to this instant has been fired or skipped. `None` until a first start
    /// with [`FirstStart::RunLatestSlot`] is decided.
    decided_through: Option<DateTime<Utc>>,
    /// When the driver next decides on the job: `state.next_slot`, or the start for a pending
    /// first start.
    wake_at: Option<DateTime<Utc>>,
}

struct Driver<C, E> {
    clock: C,
    executor: E,
    events: Option<mpsc::UnboundedSender<Event>>,
    /// The current job list, in the order given.
    jobs: Vec<Job>,
    /// State by job name: every job of `jobs`, and removed jobs whose run is still in flight.
    tracked: HashMap<JobName, Tracked>,
    runs: JoinSet<Result<(), String>>,
    in_flight: HashMap<task::Id, InFlightRun>,
}

impl<C, E> Driver<C, E>
where
    C: Clock,
    E: Fn(JobName, DateTime<Utc>) -> BoxFuture<'static, Result<(), String>> + Send + Sync,
{
    fn emit(&self, event: Event) {
        log_event(&event);
        if let Some(events) = &self.events {
            // A dropped receiver only means no one is listening.
            let _ = events.send(event);
        }
    }

    /// Makes `jobs` the job list. Jobs already tracked keep their state and get their next slot
    /// from their new schedule. New jobs start from [`Job::last_slot`] or [`Job::first_start`].
    fn install(&mut self, jobs: Vec<Job>, now: DateTime<Utc>) {
        for job in &jobs {
            match self.tracked.get_mut(&job.name) {
                Some(tracked) => {
                    if let Some(decided_through) = tracked.decided_through {
                        let next = job.schedule.next_after(decided_through);
                        tracked.state.next_slot = next;
                        tracked.wake_at = next;
                    }
                }
                None => {
                    let tracked = new_tracked(job, now);
                    self.tracked.insert(job.name.clone(), tracked);
                }
            }
        }

        // Forget removed jobs, except those with a run in flight: their run's end is still
        // recorded, and they keep overlap protection if a later reload adds them back.
        self.tracked.retain(|name, tracked| {
            tracked.state.running.is_some() || jobs.iter().any(|job| &job.name == name)
        });
        self.jobs = jobs;
    }

    fn reload(&mut self, jobs: Vec<Job>) {
        if let Err(error) = validate_jobs(&jobs) {
            self.emit(Event::ReloadRejected {
                error: error.to_string(),
            });
            return;
        }
        let count = jobs.len();
        let now = self.clock.now();
        self.install(jobs, now);
        self.emit(Event::Reloaded { jobs: count });
    }

    fn earliest_wake(&self) -> Option<DateTime<Utc>> {
        self.jobs
            .iter()
            .filter_map(|job| self.tracked.get(&job.name)?.wake_at)
            .min()
    }

    /// Decides, in job-list order, on every job whose wake time has come.
    fn decide_due(&mut self, now: DateTime<Utc>) {
        for index in 0..self.jobs.len() {
            let name = &self.jobs[index].name;
            let is_due = self
                .tracked
                .get(name)
                .and_then(|tracked| tracked.wake_at)
                .is_some_and(|wake_at| wake_at <= now);
            if is_due {
                self.decide(index, now);
            }
        }
    }

    /// Fires or skips the missed slots of `self.jobs[index]` up to `now`.
    fn decide(&mut self, index: usize, now: DateTime<Utc>) {
        let job = &self.jobs[index];
        let Some(tracked) = self.tracked.get(&job.name) else {
            return;
        };
        let decision = match tracked.decided_through {
            Some(decided_through) => catch_up(
                &job.schedule,
                Some(decided_through),
                now,
                job.starting_deadline,
            ),
            None => first_start(&job.schedule, now, job.first_start),
        };
        let running = tracked.state.running;
        let name = job.name.clone();

        if let Some(skipped) = decision.skipped {
            self.emit(Event::MissedSlots {
                job: name.clone(),
                count: skipped.count,
                exact: skipped.exact,
                first: skipped.first,
                last: skipped.last,
            });
        }

        if let Some(slot) = decision.run {
            match running {
                Some(running) => self.emit(Event::SkippedOverlap {
                    job: name.clone(),
                    slot,
                    running,
                }),
                None => {
                    let is_late = TimeDelta::from_std(CATCH_UP_LATENESS)
                        .is_ok_and(|lateness| now - slot >= lateness);
                    if decision.skipped.is_some() || is_late {
                        self.emit(Event::CaughtUp {
                            job: name.clone(),
                            slot,
                            skipped: decision.skipped.map_or(0, |skipped| skipped.count),
                        });
                    }
                    self.fire(name.clone(), slot);
                }
            }
        }

        if decision.next.is_none() {
            tracing::warn!(job.name = %name, "schedule has no slot in the next 400 years; the job will not fire again");
        }
        if let Some(tracked) = self.tracked.get_mut(&name) {
            tracked.decided_through = Some(tracked.decided_through.map_or(now, |t| t.max(now)));
            tracked.state.next_slot = decision.next;
            tracked.wake_at = decision.next;
        }
    }

    /// Calls the executor for `slot` and spawns its future.
    fn fire(&mut self, name: JobName, slot: DateTime<Utc>) {
        self.emit(Event::Fired {
            job: name.clone(),
            slot,
        });
        if let Some(tracked) = self.tracked.get_mut(&name) {
            tracked.state.running = Some(slot);
            tracked.state.last_slot = Some(slot);
        }
        let run = (self.executor)(name.clone(), slot);
        let handle = self.runs.spawn(run);
        self.in_flight
            .insert(handle.id(), InFlightRun { job: name, slot });
    }

    /// Records the end of a run and returns which run it was.
    fn record_run_end(
        &mut self,
        joined: Result<(task::Id, Result<(), String>), JoinError>,
    ) -> Option<InFlightRun> {
        let (id, outcome) = match joined {
            Ok((id, outcome)) => (id, outcome),
            Err(error) if error.is_panic() => (error.id(), Err(PANICKED_MESSAGE.to_owned())),
            Err(error) => (error.id(), Err("run was cancelled".to_owned())),
        };
        let run = self.in_flight.remove(&id)?;
        let error = outcome.err();
        let finished_at = self.clock.now();

        if let Some(tracked) = self.tracked.get_mut(&run.job) {
            tracked.state.running = None;
            tracked.state.last_result = Some(RunResult {
                slot: run.slot,
                finished_at,
                error: error.clone(),
            });
        }
        if !self.jobs.iter().any(|job| job.name == run.job) {
            self.tracked.remove(&run.job);
        }

        self.emit(Event::Finished {
            job: run.job.clone(),
            slot: run.slot,
            ok: error.is_none(),
            error,
        });
        Some(run)
    }

    /// Waits for the runs in flight, for at most `grace`, abandons the rest and reports.
    async fn shut_down(mut self, grace: Option<Duration>) -> RunReport {
        tracing::info!(
            runs_in_flight = self.runs.len(),
            grace_seconds = grace.map(|grace| grace.as_secs_f64()),
            "scheduler stopping"
        );
        let deadline = grace.and_then(|grace| {
            let grace = TimeDelta::from_std(grace).ok()?;
            self.clock.now().checked_add_signed(grace)
        });

        let mut finished_after_shutdown = Vec::new();
        while !self.runs.is_empty() {
            let sleep = async {
                match deadline {
                    Some(t) => self.clock.sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let joined = tokio::select! {
                biased;
                Some(joined) = self.runs.join_next_with_id() => joined,
                () = sleep => break,
            };
            if let Some(run) = self.record_run_end(joined) {
                finished_after_shutdown.push(run);
            }
        }

        // Runs that ended at the same instant as the grace period count as finished.
        while let Some(joined) = self.runs.try_join_next_with_id() {
            if let Some(run) = self.record_run_end(joined) {
                finished_after_shutdown.push(run);
            }
        }

        let mut abandoned: Vec<InFlightRun> = self.in_flight.drain().map(|(_, run)| run).collect();
        abandoned.sort_by(|a, b| (a.slot, &a.job).cmp(&(b.slot, &b.job)));
        // Aborts the remaining tasks and waits until their futures are dropped.
        self.runs.shutdown().await;
        let finished_at = self.clock.now();
        for run in &abandoned {
            if let Some(tracked) = self.tracked.get_mut(&run.job) {
                tracked.state.running = None;
                tracked.state.last_result = Some(RunResult {
                    slot: run.slot,
                    finished_at,
                    error: Some(ABANDONED_MESSAGE.to_owned()),
                });
            }
            self.emit(Event::Abandoned {
                job: run.job.clone(),
                slot: run.slot,
            });
        }

        let jobs = self
            .jobs
            .iter()
            .filter_map(|job| {
                let tracked = self.tracked.get(&job.name)?;
                Some((job.name.clone(), tracked.state.clone()))
            })
            .collect();
        tracing::info!(
            finished = finished_after_shutdown.len(),
            abandoned = abandoned.len(),
            "scheduler stopped"
        );
        RunReport {
            jobs,
            finished_after_shutdown,
            abandoned,
        }
    }
}

/// Creates the bookkeeping for a job the driver has no state for.
fn new_tracked(job: &Job, now: DateTime<Utc>) -> Tracked {
    let state = JobState {
        running: None,
        last_slot: job.last_slot,
        last_result: None,
        next_slot: None,
    };
    let mut tracked = Tracked {
        state,
        decided_through: None,
        wake_at: None,
    };
    match (job.last_slot, job.first_start) {
        (Some(last_slot), _) => {
            // When a slot was missed, its wake time has passed, so the first decision catches up.
            let next = job.schedule.next_after(last_slot);
            tracked.decided_through = Some(last_slot);
            tracked.state.next_slot = next;
            tracked.wake_at = next;
        }
        (None, FirstStart::WaitForNextSlot) => {
            let next = job.schedule.next_after(now);
            tracked.decided_through = Some(now);
            tracked.state.next_slot = next;
            tracked.wake_at = next;
        }
        (None, FirstStart::RunLatestSlot) => {
            tracked.state.next_slot = job.schedule.next_after(now);
            tracked.wake_at = Some(now);
        }
    }
    tracked
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    fn utc(year: i32, month: u32, day: u32, hour: u32, minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(year, month, day, hour, minute, 0)
            .unwrap()
    }

    fn utc_s(
        year: i32,
        month: u32,
        day: u32,
        hour: u32,
        minute: u32,
        second: u32,
    ) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(year, month, day, hour, minute, second)
            .unwrap()
    }

    fn schedule(expr: &str, tz: &str) -> Schedule {
        Schedule::parse(expr, tz).unwrap().0
    }

    const HOUR: Duration = Duration::from_secs(3600);

    // catch_up

    #[test]
    fn catch_up_every_minute_after_downtime() {
        let every_minute = schedule("*/1 * * * *", "UTC");
        let decision = catch_up(
            &every_minute,
            Some(utc(2026, 2, 1, 8, 29)),
            utc_s(2026, 2, 1, 10, 21, 30),
            None,
        );
        assert_eq!(decision.run, Some(utc(2026, 2, 1, 10, 21)));
        assert_eq!(
            decision.skipped,
            Some(SkippedSlots {
                count: 111,
                exact: true,
                first: utc(2026, 2, 1, 8, 30),
                last: utc(2026, 2, 1, 10, 20),
            })
        );
        assert_eq!(decision.next, Some(utc(2026, 2, 1, 10, 22)));
    }

    #[test]
    fn catch_up_daily_within_deadline() {
        let daily = schedule("0 2 * * *", "UTC");
        let decision = catch_up(
            &daily,
            Some(utc(2026, 1, 1, 2, 0)),
            utc(2026, 1, 4, 5, 0),
            Some(6 * HOUR),
        );
        assert_eq!(decision.run, Some(utc(2026, 1, 4, 2, 0)));
        assert_eq!(
            decision.skipped,
            Some(SkippedSlots {
                count: 2,
                exact: true,
                first: utc(2026, 1, 2, 2, 0),
                last: utc(2026, 1, 3, 2, 0),
            })
        );
        assert_eq!(decision.next, Some(utc(2026, 1, 5, 2, 0)));
    }

    #[test]
    fn catch_up_daily_past_deadline() {
        let daily = schedule("0 2 * * *", "UTC");
        let decision = catch_up(
            &daily,
            Some(utc(2026, 1, 1, 2, 0)),
            utc(2026, 1, 4, 5, 0),
            Some(HOUR),
        );
        assert_eq!(decision.run, None);
        assert_eq!(
            decision.skipped,
            Some(SkippedSlots {
                count: 3,
                exact: true,
                first: utc(2026, 1, 2, 2, 0),
                last: utc(2026, 1, 4, 2, 0),
            })
        );
        assert_eq!(decision.next, Some(utc(2026, 1, 5, 2, 0)));
    }

    #[test]
    fn catch_up_deadline_is_inclusive() {
        let daily = schedule("0 2 * * *", "UTC");
        let last = Some(utc(2026, 1, 3, 2, 0));
        let at_deadline = catch_up(&daily, last, utc(2026, 1, 4, 3, 0), Some(HOUR));
        assert_eq!(at_deadline.run, Some(utc(2026, 1, 4, 2, 0)));
        assert_eq!(at_deadline.skipped, None);

        let past_deadline = catch_up(&daily, last, utc_s(2026, 1, 4, 3, 0, 1), Some(HOUR));
        assert_eq!(past_deadline.run, None);
        assert_eq!(past_deadline.skipped.map(|skipped| skipped.count), Some(1));
    }

    #[test]
    fn catch_up_nothing_missed() {
        let daily = schedule("0 2 * * *", "UTC");
        let decision = catch_up(
            &daily,
            Some(utc(2026, 1, 4, 2, 0)),
            utc(2026, 1, 4, 5, 0),
            None,
        );
        assert_eq!(
            decision,
            CatchUp {
                run: None,
                skipped: None,
                next: Some(utc(2026, 1, 5, 2, 0)),
            }
        );
    }

    #[test]
    fn catch_up_last_slot_after_now() {
        // The wall clock was set back after the 01-05 slot ran.
        let daily = schedule("0 2 * * *", "UTC");
        let decision = catch_up(
            &daily,
            Some(utc(2026, 1, 5, 2, 0)),
            utc(2026, 1, 4, 5, 0),
            None,
        );
        assert_eq!(
            decision,
            CatchUp {
                run: None,
                skipped: None,
                next: Some(utc(2026, 1, 6, 2, 0)),
            }
        );
    }

    #[test]
    fn catch_up_counts_repeated_hour() {
        // Berlin's 2026-10-25 has 25 hours, so an hourly job misses 25 slots that day.
        let hourly = schedule("0 * * * *", "Europe/Berlin");
        let decision = catch_up(
            &hourly,
            Some(utc(2026, 10, 24, 21, 0)),
            utc_s(2026, 10, 25, 23, 0, 10),
            None,
        );
        assert_eq!(decision.run, Some(utc(2026, 10, 25, 23, 0)));
        let skipped = decision.skipped.unwrap();
        assert_eq!(skipped.count, 25);
        assert_eq!(skipped.first, utc(2026, 10, 24, 22, 0));
        assert_eq!(skipped.last, utc(2026, 10, 25, 22, 0));
    }

    #[test]
    fn catch_up_estimates_past_count_limit() {
        // 365 days of an every-minute schedule miss 525,600 slots. The latest runs and the other
        // 525,599 are skipped, a count that extrapolation reproduces exactly for evenly spaced slots.
        let every_minute = schedule("*/1 * * * *", "UTC");
        let decision = catch_up(
            &every_minute,
            Some(utc(2025, 2, 1, 0, 0)),
            utc(2026, 2, 1, 0, 0),
            Some(HOUR),
        );
        assert_eq!(decision.run, Some(utc(2026, 2, 1, 0, 0)));
        let skipped = decision.skipped.unwrap();
        assert!(!skipped.exact);
        assert_eq!(skipped.count, 525_599);
        assert_eq!(skipped.first, utc(2025, 2, 1, 0, 1));
        assert_eq!(skipped.last, utc(2026, 1, 31, 23, 59));
    }

    #[test]
    fn catch_up_counts_exactly_at_limit() {
        let every_minute = schedule("*/1 * * * *", "UTC");
        let last = utc(2026, 1, 1, 0, 0);
        let now = last + TimeDelta::minutes(MAX_COUNTED_SLOTS as i64);
        let decision = catch_up(&every_minute, Some(last), now, None);
        let skipped = decision.skipped.unwrap();
        assert_eq!(skipped.count, MAX_COUNTED_SLOTS - 1);
        assert!(skipped.exact);
    }

    #[test]
    fn first_start_waits_for_next_slot() {
        let daily = schedule("0 2 * * *", "UTC");
        let now = utc(2026, 1, 4, 5, 0);
        let expected = CatchUp {
            run: None,
            skipped: None,
            next: Some(utc(2026, 1, 5, 2, 0)),
        };
        assert_eq!(catch_up(&daily, None, now, Some(6 * HOUR)), expected);
        assert_eq!(
            first_start(&daily, now, FirstStart::WaitForNextSlot),
            expected
        );
    }

    #[test]
    fn first_start_runs_latest_slot() {
        let daily = schedule("0 2 * * *", "UTC");
        let decision = first_start(&daily, utc(2026, 1, 4, 5, 0), FirstStart::RunLatestSlot);
        assert_eq!(decision.run, Some(utc(2026, 1, 4, 2, 0)));
        assert_eq!(decision.skipped, None);
        assert_eq!(decision.next, Some(utc(2026, 1, 5, 2, 0)));
    }

    // check_due

    #[test]
    fn check_due_is_idempotent_per_slot() {
        let daily = schedule("0 2 * * *", "UTC");
        let tolerance = Some(Duration::from_secs(600));

        let before_first = check_due(&daily, utc(2026, 1, 4, 1, 59), None, tolerance);
        assert_eq!(
            before_first,
            DueCheck::NotDue {
                next: Some(utc(2026, 1, 4, 2, 0))
            }
        );

        let started = utc_s(2026, 1, 4, 2, 0, 7);
        let first_try = check_due(&daily, started, None, tolerance);
        assert_eq!(
            first_try,
            DueCheck::Due {
                slot: utc(2026, 1, 4, 2, 0)
            }
        );

        let retry = check_due(
            &daily,
            utc(2026, 1, 4, 2, 5),
            Some(utc(2026, 1, 4, 2, 0)),
            tolerance,
        );
        assert_eq!(
            retry,
            DueCheck::AlreadyDone {
                slot: utc(2026, 1, 4, 2, 0)
            }
        );

        let next_day = check_due(
            &daily,
            utc(2026, 1, 5, 2, 1),
            Some(utc(2026, 1, 4, 2, 0)),
            tolerance,
        );
        assert_eq!(
            next_day,
            DueCheck::Due {
                slot: utc(2026, 1, 5, 2, 0)
            }
        );
    }

    #[test]
    fn check_due_past_tolerance() {
        let daily = schedule("0 2 * * *", "UTC");
        let late = check_due(
            &daily,
            utc(2026, 1, 4, 2, 11),
            None,
            Some(Duration::from_secs(600)),
        );
        assert_eq!(
            late,
            DueCheck::NotDue {
                next: Some(utc(2026, 1, 5, 2, 0))
            }
        );

        let no_tolerance = check_due(&daily, utc(2026, 1, 4, 23, 0), None, None);
        assert_eq!(
            no_tolerance,
            DueCheck::Due {
                slot: utc(2026, 1, 4, 2, 0)
            }
        );
    }

    // Clocks

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let start = utc(2026, 2, 1, 10, 0);
        let clock = TokioClock::starting_at(start);
        assert_eq!(clock.now(), start);

        clock.sleep_until(utc(2026, 2, 3, 10, 0)).await;
        assert_eq!(clock.now(), utc(2026, 2, 3, 10, 0));

        clock.sleep_until(start).await;
        assert_eq!(clock.now(), utc(2026, 2, 3, 10, 0));
    }

    #[tokio::test]
    async fn system_clock_past_deadline_returns_at_once() {
        let clock = SystemClock;
        let before = Utc::now();
        let now = clock.now();
        assert!(now >= before);

        let sleep = clock.sleep_until(now - TimeDelta::seconds(5));
        let finished = tokio::time::timeout(Duration::from_secs(5), sleep).await;
        assert!(finished.is_ok());
    }

    #[tokio::test]
    async fn system_clock_sleeps_until_deadline() {
        let clock = SystemClock;
        let deadline = clock.now() + TimeDelta::milliseconds(20);
        clock.sleep_until(deadline).await;
        assert!(clock.now() >= deadline);
    }

    // The driver

    /// Calls recorded by a test executor: job name and slot.
    type Calls = Arc<Mutex<Vec<(JobName, DateTime<Utc>)>>>;

    /// Returns an executor that records each call and then works for `work` of tokio time.
    fn recording_executor(
        calls: Calls,
        work: Duration,
    ) -> impl Fn(JobName, DateTime<Utc>) -> BoxFuture<'static, Result<(), String>> + Send + Sync
    {
        move |name, slot| {
            calls.lock().unwrap().push((name, slot));
            Box::pin(async move {
                tokio::time::sleep(work).await;
                Ok(())
            })
        }
    }

    /// A spawned driver and the ends of its channels.
    struct Running {
        clock: TokioClock,
        shutdown: watch::Sender<bool>,
        reload: mpsc::Sender<Vec<Job>>,
        events: mpsc::UnboundedReceiver<Event>,
        task: tokio::task::JoinHandle<Result<RunReport, JobListError>>,
    }

    impl Running {
        /// Sends the shutdown signal and returns the report and every event.
        async fn stop(mut self) -> (RunReport, Vec<Event>) {
            self.shutdown.send(true).unwrap();
            let report = self.task.await.unwrap().unwrap();
            let mut events = Vec::new();
            while let Some(event) = self.events.recv().await {
                events.push(event);
            }
            (report, events)
        }
    }

    fn spawn_driver<E>(
        start: DateTime<Utc>,
        jobs: Vec<Job>,
        executor: E,
        grace: Option<Duration>,
    ) -> Running
    where
        E: Fn(JobName, DateTime<Utc>) -> BoxFuture<'static, Result<(), String>>
            + Send
            + Sync
            + 'static,
    {
        let clock = TokioClock::starting_at(start);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (reload, reload_rx) = mpsc::channel(4);
        let (events_tx, events) = mpsc::unbounded_channel();
        let mut scheduler = Scheduler::new().events(events_tx).reload(reload_rx);
        if let Some(grace) = grace {
            scheduler = scheduler.shutdown_grace(grace);
        }
        let task = tokio::spawn(scheduler.run(jobs, clock, executor, shutdown_rx));
        Running {
            clock,
            shutdown,
            reload,
            events,
            task,
        }
    }

    fn fired(job: &str, slot: DateTime<Utc>) -> Event {
        Event::Fired {
            job: job.to_owned(),
            slot,
        }
    }

    fn finished_ok(job: &str, slot: DateTime<Utc>) -> Event {
        Event::Finished {
            job: job.to_owned(),
            slot,
            ok: true,
            error: None,
        }
    }

    fn fired_slots(events: &[Event]) -> Vec<(JobName, DateTime<Utc>)> {
        events
            .iter()
            .filter_map(|event| match event {
                Event::Fired { job, slot } => Some((job.clone(), *slot)),
                _ => None,
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn driver_catches_up_at_start() {
        let mut job = Job::new("bucket uploads", schedule("*/1 * * * *", "UTC"));
        job.last_slot = Some(utc(2026, 2, 1, 8, 29));
        let calls = Calls::default();
        let running = spawn_driver(
            utc_s(2026, 2, 1, 10, 21, 30),
            vec![job],
            recording_executor(calls.clone(), Duration::from_secs(10)),
            None,
        );

        running
            .clock
            .sleep_until(utc_s(2026, 2, 1, 10, 22, 30))
            .await;
        let (report, events) = running.stop().await;

        let name = "bucket uploads";
        assert_eq!(
            events,
            vec![
                Event::MissedSlots {
                    job: name.to_owned(),
                    count: 111,
                    exact: true,
                    first: utc(2026, 2, 1, 8, 30),
                    last: utc(2026, 2, 1, 10, 20),
                },
                Event::CaughtUp {
                    job: name.to_owned(),
                    slot: utc(2026, 2, 1, 10, 21),
                    skipped: 111,
                },
                fired(name, utc(2026, 2, 1, 10, 21)),
                finished_ok(name, utc(2026, 2, 1, 10, 21)),
                fired(name, utc(2026, 2, 1, 10, 22)),
                finished_ok(name, utc(2026, 2, 1, 10, 22)),
            ]
        );
        assert_eq!(calls.lock().unwrap().len(), 2);
        assert_eq!(report.jobs[name].last_slot, Some(utc(2026, 2, 1, 10, 22)));
        assert_eq!(report.jobs[name].next_slot, Some(utc(2026, 2, 1, 10, 23)));
    }

    #[tokio::test(start_paused = true)]
    async fn driver_first_start_waits() {
        let job = Job::new("prune", schedule("*/5 * * * *", "UTC"));
        let calls = Calls::default();
        let running = spawn_driver(
            utc_s(2026, 2, 1, 10, 21, 30),
            vec![job],
            recording_executor(calls.clone(), Duration::ZERO),
            None,
        );

        running.clock.sleep_until(utc(2026, 2, 1, 10, 27)).await;
        let (_, events) = running.stop().await;

        assert_eq!(
            events,
            vec![
                fired("prune", utc(2026, 2, 1, 10, 25)),
                finished_ok("prune", utc(2026, 2, 1, 10, 25)),
            ]
        );
        assert_eq!(
            *calls.lock().unwrap(),
            vec![("prune".to_owned(), utc(2026, 2, 1, 10, 25))]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn driver_first_start_runs_latest_slot() {
        let mut job = Job::new("prune", schedule("*/5 * * * *", "UTC"));
        job.first_start = FirstStart::RunLatestSlot;
        let running = spawn_driver(
            utc_s(2026, 2, 1, 10, 21, 30),
            vec![job],
            recording_executor(Calls::default(), Duration::ZERO),
            None,
        );

        running.clock.sleep_until(utc(2026, 2, 1, 10, 24)).await;
        let (_, events) = running.stop().await;

        assert_eq!(
            events,
            vec![
                Event::CaughtUp {
                    job: "prune".to_owned(),
                    slot: utc(2026, 2, 1, 10, 20),
                    skipped: 0,
                },
                fired("prune", utc(2026, 2, 1, 10, 20)),
                finished_ok("prune", utc(2026, 2, 1, 10, 20)),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn driver_skips_overlapping_slot() {
        let job = Job::new("verification", schedule("*/1 * * * *", "UTC"));
        let calls = Calls::default();
        let running = spawn_driver(
            utc(2026, 2, 1, 10, 0),
            vec![job],
            recording_executor(calls.clone(), Duration::from_secs(90)),
            None,
        );

        running
            .clock
            .sleep_until(utc_s(2026, 2, 1, 10, 3, 30))
            .await;
        let (report, events) = running.stop().await;

        let name = "verification";
        assert_eq!(
            events,
            vec![
                fired(name, utc(2026, 2, 1, 10, 1)),
                Event::SkippedOverlap {
                    job: name.to_owned(),
                    slot: utc(2026, 2, 1, 10, 2),
                    running: utc(2026, 2, 1, 10, 1),
                },
                finished_ok(name, utc(2026, 2, 1, 10, 1)),
                fired(name, utc(2026, 2, 1, 10, 3)),
                finished_ok(name, utc(2026, 2, 1, 10, 3)),
            ]
        );
        assert_eq!(
            *calls.lock().unwrap(),
            vec![
                (name.to_owned(), utc(2026, 2, 1, 10, 1)),
                (name.to_owned(), utc(2026, 2, 1, 10, 3)),
            ]
        );
        assert_eq!(
            report.finished_after_shutdown,
            vec![InFlightRun {
                job: name.to_owned(),
                slot: utc(2026, 2, 1, 10, 3),
            }]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn driver_shutdown_waits_for_run() {
        let job = Job::new("postgres visage-db", schedule("0 3 * * *", "UTC"));
        let running = spawn_driver(
            utc(2026, 2, 1, 2, 59),
            vec![job],
            recording_executor(Calls::default(), Duration::from_secs(600)),
            None,
        );

        running.clock.sleep_until(utc(2026, 2, 1, 3, 1)).await;
        let clock = running.clock;
        let (report, events) = running.stop().await;

        let name = "postgres visage-db";
        assert_eq!(clock.now(), utc(2026, 2, 1, 3, 10));
        assert_eq!(
            events.last(),
            Some(&finished_ok(name, utc(2026, 2, 1, 3, 0)))
        );
        assert_eq!(
            report.finished_after_shutdown,
            vec![InFlightRun {
                job: name.to_owned(),
                slot: utc(2026, 2, 1, 3, 0),
            }]
        );
        assert!(report.abandoned.is_empty());
        let state = &report.jobs[name];
        assert_eq!(state.running, None);
        assert_eq!(
            state.last_result,
            Some(RunResult {
                slot: utc(2026, 2, 1, 3, 0),
                finished_at: utc(2026, 2, 1, 3, 10),
                error: None,
            })
        );
    }

    /// Sets its flag when dropped.
    struct DropFlag(Arc<AtomicBool>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn driver_shutdown_abandons_after_grace() {
        let completed = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicBool::new(false));
        let executor = {
            let completed = completed.clone();
            let dropped = dropped.clone();
            move |_: JobName, _: DateTime<Utc>| -> BoxFuture<'static, Result<(), String>> {
                let completed = completed.clone();
                let guard = DropFlag(dropped.clone());
                Box::pin(async move {
                    let _guard = guard;
                    tokio::time::sleep(Duration::from_secs(600)).await;
                    completed.store(true, Ordering::SeqCst);
                    Ok(())
                })
            }
        };
        let job = Job::new("postgres visage-db", schedule("0 3 * * *", "UTC"));
        let running = spawn_driver(
            utc(2026, 2, 1, 2, 59),
            vec![job],
            executor,
            Some(Duration::from_secs(30)),
        );

        running.clock.sleep_until(utc(2026, 2, 1, 3, 1)).await;
        let clock = running.clock;
        let (report, events) = running.stop().await;

        let name = "postgres visage-db";
        assert_eq!(clock.now(), utc_s(2026, 2, 1, 3, 1, 30));
        assert_eq!(
            report.abandoned,
            vec![InFlightRun {
                job: name.to_owned(),
                slot: utc(2026, 2, 1, 3, 0),
            }]
        );
        assert!(report.finished_after_shutdown.is_empty());
        assert_eq!(
            events.last(),
            Some(&Event::Abandoned {
                job: name.to_owned(),
                slot: utc(2026, 2, 1, 3, 0),
            })
        );
        assert!(dropped.load(Ordering::SeqCst));
        assert!(!completed.load(Ordering::SeqCst));
        let result = report.jobs[name].last_result.clone().unwrap();
        assert_eq!(result.error.as_deref(), Some(ABANDONED_MESSAGE));
    }

    #[tokio::test(start_paused = true)]
    async fn driver_shutdown_when_idle_is_immediate() {
        let job = Job::new("prune", schedule("0 3 * * *", "UTC"));
        let running = spawn_driver(
            utc(2026, 2, 1, 12, 0),
            vec![job],
            recording_executor(Calls::default(), Duration::ZERO),
            None,
        );

        let clock = running.clock;
        let (report, events) = running.stop().await;

        assert_eq!(clock.now(), utc(2026, 2, 1, 12, 0));
        assert!(events.is_empty());
        assert_eq!(report.jobs["prune"].next_slot, Some(utc(2026, 2, 2, 3, 0)));
    }

    #[tokio::test(start_paused = true)]
    async fn driver_reload_keeps_state() {
        let prune = Job::new("prune", schedule("0 3 * * *", "UTC"));
        let running = spawn_driver(
            utc(2026, 2, 1, 0, 0),
            vec![prune],
            recording_executor(Calls::default(), Duration::from_secs(60)),
            None,
        );
        running.clock.sleep_until(utc(2026, 2, 1, 4, 0)).await;

        // Without the kept state, RunLatestSlot would fire the 01-31 05:00 slot at once.
        let mut new_prune = Job::new("prune", schedule("0 5 * * *", "UTC"));
        new_prune.first_start = FirstStart::RunLatestSlot;
        let verification = Job::new("verification", schedule("30 4 * * *", "UTC"));
        running
            .reload
            .send(vec![new_prune, verification])
            .await
            .unwrap();

        running.clock.sleep_until(utc(2026, 2, 1, 4, 45)).await;
        let (report, events) = running.stop().await;

        assert!(events.contains(&Event::Reloaded { jobs: 2 }));
        assert_eq!(
            fired_slots(&events),
            vec![
                ("prune".to_owned(), utc(2026, 2, 1, 3, 0)),
                ("verification".to_owned(), utc(2026, 2, 1, 4, 30)),
            ]
        );
        let prune = &report.jobs["prune"];
        assert_eq!(prune.last_slot, Some(utc(2026, 2, 1, 3, 0)));
        assert_eq!(
            prune.last_result.as_ref().map(|result| result.slot),
            Some(utc(2026, 2, 1, 3, 0))
        );
        assert_eq!(prune.next_slot, Some(utc(2026, 2, 1, 5, 0)));
        assert_eq!(report.jobs.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn driver_rejects_invalid_reload() {
        let prune = Job::new("prune", schedule("0 3 * * *", "UTC"));
        let running = spawn_driver(
            utc(2026, 2, 1, 0, 0),
            vec![prune.clone()],
            recording_executor(Calls::default(), Duration::ZERO),
            None,
        );
        running.clock.sleep_until(utc(2026, 2, 1, 1, 0)).await;

        let mut later = prune.clone();
        later.schedule = schedule("0 5 * * *", "UTC");
        running.reload.send(vec![later, prune]).await.unwrap();

        running.clock.sleep_until(utc(2026, 2, 1, 3, 30)).await;
        let (_, events) = running.stop().await;

        assert_eq!(
            events.first(),
            Some(&Event::ReloadRejected {
                error:
                    "job name `prune` appears more than once in the list: job names must be unique"
                        .to_owned()
            })
        );
        assert_eq!(
            fired_slots(&events),
            vec![("prune".to_owned(), utc(2026, 2, 1, 3, 0))]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn driver_rejects_invalid_job_list() {
        let prune = Job::new("prune", schedule("0 3 * * *", "UTC"));
        let (_shutdown, shutdown_rx) = watch::channel(false);
        let result = Scheduler::new()
            .run(
                vec![prune.clone(), prune],
                TokioClock::starting_at(utc(2026, 2, 1, 0, 0)),
                recording_executor(Calls::default(), Duration::ZERO),
                shutdown_rx,
            )
            .await;
        assert_eq!(
            result.unwrap_err(),
            JobListError::DuplicateName {
                name: "prune".to_owned()
            }
        );

        let mut zero = Job::new("prune", schedule("0 3 * * *", "UTC"));
        zero.starting_deadline = Some(Duration::ZERO);
        assert_eq!(
            validate_jobs(&[zero]),
            Err(JobListError::ZeroDeadline {
                name: "prune".to_owned()
            })
        );
        let unnamed = Job::new("", schedule("0 3 * * *", "UTC"));
        assert_eq!(
            validate_jobs(&[unnamed]),
            Err(JobListError::EmptyName { index: 0 })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn driver_records_failed_and_panicked_runs() {
        let executor =
            |name: JobName, _: DateTime<Utc>| -> BoxFuture<'static, Result<(), String>> {
                Box::pin(async move {
                    match name.as_str() {
                        "failing" => Err("repository locked by another process".to_owned()),
                        _ => panic!("executor bug"),
                    }
                })
            };
        let jobs = vec![
            Job::new("failing", schedule("0 3 * * *", "UTC")),
            Job::new("panicking", schedule("0 3 * * *", "UTC")),
        ];
        let running = spawn_driver(utc(2026, 2, 1, 2, 0), jobs, executor, None);

        running.clock.sleep_until(utc(2026, 2, 1, 4, 0)).await;
        let (report, events) = running.stop().await;

        let slot = utc(2026, 2, 1, 3, 0);
        assert!(events.contains(&Event::Finished {
            job: "failing".to_owned(),
            slot,
            ok: false,
            error: Some("repository locked by another process".to_owned()),
        }));
        assert!(events.contains(&Event::Finished {
            job: "panicking".to_owned(),
            slot,
            ok: false,
            error: Some(PANICKED_MESSAGE.to_owned()),
        }));
        assert_eq!(report.jobs["panicking"].running, None);
        assert_eq!(
            report.jobs["failing"].next_slot,
            Some(utc(2026, 2, 2, 3, 0))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn driver_suspend_skips_slot_past_deadline() {
        let mut job = Job::new("postgres visage-db", schedule("0 2 * * *", "UTC"));
        job.starting_deadline = Some(HOUR);
        let running = spawn_driver(
            utc(2026, 1, 4, 0, 0),
            vec![job],
            recording_executor(Calls::default(), Duration::ZERO),
            None,
        );
        running.clock.sleep_until(utc(2026, 1, 4, 1, 0)).await;

        // The host sleeps from 01:00 to 05:00, over the 02:00 slot.
        tokio::time::advance(4 * HOUR).await;
        running.clock.sleep_until(utc(2026, 1, 4, 5, 30)).await;
        let (report, events) = running.stop().await;

        assert_eq!(
            events,
            vec![Event::MissedSlots {
                job: "postgres visage-db".to_owned(),
                count: 1,
                exact: true,
                first: utc(2026, 1, 4, 2, 0),
                last: utc(2026, 1, 4, 2, 0),
            }]
        );
        assert_eq!(
            report.jobs["postgres visage-db"].next_slot,
            Some(utc(2026, 1, 5, 2, 0))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn driver_fires_daily_once_across_dst() {
        let job = Job::new(
            "postgres visage-db",
            schedule("30 2 * * *", "Europe/Berlin"),
        );
        let berlin = chrono_tz::Europe::Berlin;
        let windows = [
            (
                utc(2026, 3, 27, 12, 0),
                utc(2026, 4, 1, 0, 0),
                vec![
                    utc(2026, 3, 28, 1, 30),
                    // 02:30 does not exist on 03-29, so the slot fires at 03:00 CEST.
                    utc(2026, 3, 29, 1, 0),
                    utc(2026, 3, 30, 0, 30),
                    utc(2026, 3, 31, 0, 30),
                ],
            ),
            (
                utc(2026, 10, 23, 12, 0),
                utc(2026, 10, 28, 0, 0),
                vec![
                    utc(2026, 10, 24, 0, 30),
                    // 02:30 occurs twice on 10-25, and only the first occurrence (CEST) fires.
                    utc(2026, 10, 25, 0, 30),
                    utc(2026, 10, 26, 1, 30),
                    utc(2026, 10, 27, 1, 30),
                ],
            ),
        ];

        for (start, end, expected) in windows {
            let running = spawn_driver(
                start,
                vec![job.clone()],
                recording_executor(Calls::default(), Duration::from_secs(300)),
                None,
            );
            running.clock.sleep_until(end).await;
            let (_, events) = running.stop().await;

            let slots: Vec<DateTime<Utc>> = fired_slots(&events)
                .into_iter()
                .map(|(_, slot)| slot)
                .collect();
            assert_eq!(slots, expected, "from {start}");

            let mut local_dates: Vec<_> = slots
                .iter()
                .map(|slot| slot.with_timezone(&berlin).date_naive())
                .collect();
            local_dates.dedup();
            assert_eq!(local_dates.len(), slots.len(), "from {start}");
        }
    }

    #[test]
    fn events_serialize_with_tag() {
        let event = Event::MissedSlots {
            job: "prune".to_owned(),
            count: 3,
            exact: true,
            first: utc(2026, 1, 2, 2, 0),
            last: utc(2026, 1, 4, 2, 0),
        };
        let json = serde_json::to_string(&event).unwrap();
        assert_eq!(
            json,
            r#"{"event":"missed_slots","job":"prune","count":3,"exact":true,"first":"2026-01-02T02:00:00Z","last":"2026-01-04T02:00:00Z"}"#
        );
    }
}
