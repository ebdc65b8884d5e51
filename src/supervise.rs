//! Supervision of the agent's long-lived tasks (verifiers, sink pollers, discovery, send loops).
//!
//! A task that panics, or ends while it should still be running, would otherwise leave its
//! probes silently unverified: every later record `lost`, `/healthz` still 200. [`supervise`]
//! runs the task, and when it dies reports why (the caller logs it with the probes, counts it and
//! marks them unready), waits a backoff (1 s, doubling up to 30 s, back to 1 s once a run lasted
//! a minute) and starts it again from its factory, until told to stop.
//!
//! This module knows nothing of probes or metrics: the caller passes what to do with each
//! [`TaskEvent`].

use std::any::Any;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// First pause before a restart.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest pause before a restart.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A run at least this long resets the backoff: the task was healthy, the failure is new.
pub const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// What happened to a supervised task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskEvent {
    /// It panicked or ended unexpectedly. `restart_in`: when it is started again (`None`: the
    /// agent is stopping, so it is not).
    Down {
        why: String,
        restart_in: Option<Duration>,
    },
    /// It was started again after being down.
    Restarted,
}

/// Whether a task may end on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ends {
    /// Only when stopped (a verifier, a poller): ending before is a failure.
    WhenStopped,
    /// When its work is done (a send loop that finished its plan and drained).
    WhenDone,
}

/// Runs the task `start` makes until it ends as `ends` allows; restarts it after a panic or an
/// unexpected end, reporting each through `report`. Never restarts once `stop` is cancelled.
pub async fn supervise<F, Fut>(
    ends: Ends,
    stop: CancellationToken,
    report: impl Fn(TaskEvent) + Send,
    mut start: F,
) where
    F: FnMut() -> Fut + Send,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut backoff = BACKOFF_MIN;
    loop {
        let began = Instant::now();
        let why = match tokio::spawn(start()).await {
            Ok(()) if ends == Ends::WhenDone || stop.is_cancelled() => return,
            Ok(()) => "ended while it should still be running".to_string(),
            Err(e) if e.is_panic() => format!("panicked: {}", panic_message(&e.into_panic())),
            Err(e) => format!("was cancelled: {e}"),
        };
        if stop.is_cancelled() {
            report(TaskEvent::Down {
                why,
                restart_in: None,
            });
            return;
        }
        if began.elapsed() >= HEALTHY_RUN {
            backoff = BACKOFF_MIN;
        }
        report(TaskEvent::Down {
            why,
            restart_in: Some(backoff),
        });
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => return,
        }
        report(TaskEvent::Restarted);
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// The message a panic carried (`panic!("...")` gives a `&str` or a `String`).
fn panic_message(payload: &Box<dyn Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Events with the (paused) time they happened at, in ms since the start.
    type Log = Arc<Mutex<Vec<(u128, TaskEvent)>>>;

    fn recorder(t0: Instant) -> (Log, impl Fn(TaskEvent) + Send) {
        let log: Log = Arc::default();
        let l = Arc::clone(&log);
        (log, move |e| {
            l.lock().unwrap().push((t0.elapsed().as_millis(), e));
        })
    }

    fn down(why: &str, restart_in: u64) -> TaskEvent {
        TaskEvent::Down {
            why: why.into(),
            restart_in: Some(Duration::from_secs(restart_in)),
        }
    }

    /// Supervises, until `stop`, a task whose run number `n` (from 0) is `body(n, stop)`:
    /// the events reported, the runs started, and the supervisor.
    fn supervised<Fut>(
        stop: &CancellationToken,
        body: impl Fn(u32, CancellationToken) -> Fut + Send + 'static,
    ) -> (Log, Arc<AtomicU32>, tokio::task::JoinHandle<()>)
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (log, report) = recorder(Instant::now());
        let runs = Arc::new(AtomicU32::new(0));
        let (r, s) = (Arc::clone(&runs), stop.clone());
        let start = move || body(r.fetch_add(1, Ordering::SeqCst), s.clone());
        let supervisor = tokio::spawn(supervise(Ends::WhenStopped, stop.clone(), report, start));
        (log, runs, supervisor)
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_restarted_with_backoff_until_it_runs() {
        let stop = CancellationToken::new();
        let (log, runs, supervisor) = supervised(&stop, |n, stop| async move {
            if n < 3 {
                panic!("bad input number {n}");
            }
            stop.cancelled().await; // the fourth run is healthy
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        stop.cancel();
        supervisor.await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 4);
        assert_eq!(
            *log.lock().unwrap(),
            [
                (0, down("panicked: bad input number 0", 1)),
                (1000, TaskEvent::Restarted),
                (1000, down("panicked: bad input number 1", 2)),
                (3000, TaskEvent::Restarted),
                (3000, down("panicked: bad input number 2", 4)),
                (7000, TaskEvent::Restarted),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_early_end_is_a_failure_unless_the_task_may_finish() {
        let t0 = Instant::now();
        let stop = CancellationToken::new();
        let (log, runs, supervisor) = supervised(&stop, |_, _| async {});
        tokio::time::sleep(Duration::from_millis(3500)).await;
        stop.cancel();
        supervisor.await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 3, "at 0, 1 and 3 s");
        assert_eq!(
            log.lock().unwrap()[0],
            (0, down("ended while it should still be running", 1))
        );

        let (log, report) = recorder(t0);
        let done = supervise(Ends::WhenDone, CancellationToken::new(), report, || async {
        });
        tokio::time::timeout(Duration::from_secs(1), done)
            .await
            .expect("a finished task is not restarted");
        assert!(log.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_restarted_once_stopped_and_a_long_run_resets_the_backoff() {
        let stop = CancellationToken::new();
        let (log, runs, supervisor) = supervised(&stop, |n, _| async move {
            // fails at once, then after 2 minutes of healthy running
            if n == 1 {
                tokio::time::sleep(Duration::from_secs(120)).await;
            }
            panic!("run {n}");
        });
        tokio::time::sleep(Duration::from_secs(121) + Duration::from_millis(500)).await;
        stop.cancel();
        supervisor.await.unwrap();
        assert_eq!(
            *log.lock().unwrap(),
            [
                (0, down("panicked: run 0", 1)),
                (1000, TaskEvent::Restarted),
                (121_000, down("panicked: run 1", 1)),
            ],
            "the second failure waits 1 s again, and stopping during the wait restarts nothing"
        );
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }
}
