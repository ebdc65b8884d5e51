//! Records coming back: read back from a topic ([`Probe::arrived`]) or found in a sink
//! ([`Probe::found`]), each verified against what was sent and settled, or counted as what it
//! is (a duplicate, a late arrival, a foreign record); and the sink's polls.

use std::sync::atomic::Ordering;

use tokio::time::Instant;
use uuid::Uuid;

use super::tracker::{self, Lane, Stranger};
use super::{Ending, Events, Probe};
use crate::config::KafkaVerify;
use crate::outcome::{Event, Outcome, ReadAt, Seen, SinkError, SinkErrorKind, Stamps};
use crate::record::{self, ForeignReason, View};

/// A record read back or found: when, and the timestamps read with it.
struct Arrival<'s> {
    at: Instant,
    stamps: &'s Stamps,
}

/// What an arrival of an id the tracker does not know is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unknown {
    /// A record whose headers (or envelope) name this agent and probe: one of its own it
    /// forgot (a duplicate), or one it never sent (foreign, `unknown_id`); see
    /// [`tracker::Stranger`].
    Claimed,
    /// A sink's row that is not this probe's (a sink holds other rows too): ignored.
    Ignored,
}

impl Probe {
    /// An own record came back: verify it and settle its outcome or count the event. `stamps`:
    /// the timestamps read with it (the downstream record's), which split its latency.
    pub fn arrived(&self, view: &View, id: &Uuid, at: Instant, stamps: &Stamps) {
        let same_topic = self.same_topic;
        let seen = Seen::from(view);
        let arrival = Arrival { at, stamps };
        self.arrive(
            id,
            arrival,
            view.topic,
            seen,
            Unknown::Claimed,
            |expected| {
                if let Some(k) = self.config.verify.kafka().filter(|k| k.transformed()) {
                    record::verify_transformed(expected, view, &k.expect, self.shape())
                } else {
                    // On another topic the partition may differ; everything else must hold.
                    let copy = record::verify(expected, view, same_topic, self.shape());
                    match copy {
                        Err(why) if view.topic != self.config.topic => {
                            Err(record::Corruption::NotACopy {
                                topic: view.topic.to_string(),
                                why: Box::new(why),
                            })
                        }
                        other => other,
                    }
                }
            },
        );
    }

    /// Settles (or counts) an arrival under the lock and reports it after: `seen` is where (at
    /// which offset) it was read back, `topic` the topic its outcome is reported under, and
    /// `unknown` what an id the tracker does not know is.
    fn arrive<'a>(
        &self,
        id: &Uuid,
        arrival: Arrival<'_>,
        topic: &'a str,
        seen: Seen<'a>,
        unknown: Unknown,
        check: impl FnOnce(&record::Expected) -> Result<(), record::Corruption>,
    ) {
        let at = arrival.at;
        let mut events = Events::new();
        {
            let mut core = self.lock();
            // Order is judged among the records that came the same way (see `Lane`).
            let lane = match (self.config.verify.ordered(), seen.partition) {
                (false, _) => Lane::Unordered,
                (true, Some(p)) => Lane::Partition(p),
                (true, None) => Lane::Sink,
            };
            match core.tracker.arrive(id, at, seen.offset, lane, check) {
                Some(tracker::Arrival::Final {
                    mut finished,
                    reordered,
                }) => {
                    finished.read = seen
                        .partition
                        .zip(seen.offset)
                        .map(|(partition, offset)| ReadAt { partition, offset });
                    if finished.outcome == Outcome::Ok
                        && let Some(n) = core.hops.tally(arrival.stamps)
                    {
                        let missing = Event::TimestampMissing {
                            field: n.field,
                            name: n.name.clone(),
                            records: n.missing,
                            why: n.last_missing.clone().unwrap_or_default(),
                        };
                        self.emit(&mut events, missing);
                    }
                    if let Some(latency) = finished.latency {
                        finished.hops = Some(self.hop_plan.split(
                            finished.acked_after,
                            latency,
                            finished.scheduled_at_ns,
                            arrival.stamps,
                        ));
                    }
                    let end = Ending::of(finished, &core, topic, reordered);
                    self.settle(&mut core, &mut events, at, end)
                }
                Some(tracker::Arrival::Duplicate { partition }) => {
                    let duplicate = Event::Duplicate {
                        seen,
                        id: *id,
                        partition: Some(partition),
                        forgotten: false,
                    };
                    self.emit(&mut events, duplicate)
                }
                Some(tracker::Arrival::Late { latency, partition }) => {
                    let late = Event::Late {
                        seen,
                        id: *id,
                        latency,
                        partition,
                    };
                    self.emit(&mut events, late)
                }
                None if unknown == Unknown::Ignored => return,
                None => match core.tracker.stranger(id) {
                    Stranger::Forgotten => {
                        let duplicate = Event::Duplicate {
                            seen,
                            id: *id,
                            partition: None,
                            forgotten: true,
                        };
                        self.emit(&mut events, duplicate);
                    }
                    Stranger::NeverSent => {
                        self.foreign.fetch_add(1, Ordering::Relaxed);
                        let foreign = Event::Foreign {
                            seen,
                            reason: ForeignReason::UnknownId,
                        };
                        self.emit(&mut events, foreign);
                    }
                },
            }
            self.publish(&mut core, &mut events);
        }
        self.report(events);
    }

    /// The pipeline's own format of this probe's records (`None`: the envelope).
    pub fn shape(&self) -> Option<&record::shape::Shape> {
        self.config.record.as_deref()
    }

    /// Whether records read back can carry their id only in their key or value: a pipeline's
    /// output (ids found per `id_from`), or records in the pipeline's own format.
    pub fn ids_in_values(&self) -> bool {
        self.config
            .verify
            .kafka()
            .is_some_and(KafkaVerify::transformed)
            || self.shape().is_some()
    }

    /// The id a record read back carries without the slo-probe headers: per `id_from` for a
    /// pipeline's output, else from the key or id field of the probe's own format.
    pub fn record_id(&self, view: &View) -> Option<Uuid> {
        let kafka = self.config.verify.kafka();
        if let Some(from) = kafka.and_then(|k| k.id_from.as_ref()) {
            return record::transformed_id(view, from);
        }
        if kafka.is_some_and(KafkaVerify::transformed) {
            return None;
        }
        self.shape()?.record_id(view.key, view.value)
    }

    /// Records in flight that the broker acknowledged: what a sink poller looks for.
    pub fn pending_ids(&self) -> Vec<Uuid> {
        self.lock().tracker.acked_ids()
    }

    /// Resolves when the broker acknowledged a record since the last call (or now, if it did
    /// before anyone waited); never for a probe that does not poll a sink.
    pub async fn acknowledged(&self) {
        match &self.acknowledged {
            Some(acknowledged) => acknowledged.notified().await,
            None => std::future::pending().await,
        }
    }

    /// A sink poller found the record with this id, as `doc` (a row as a JSON object, or a
    /// document) with the timestamps it carries (`stamps`), in the poll that started `at`:
    /// settle it after checking its content. Ids this probe does not know are ignored (a sink
    /// holds other rows too).
    pub fn found(&self, id: &Uuid, at: Instant, doc: &serde_json::Value, stamps: &Stamps) {
        let seen = Seen::sink(&self.verify_topic);
        let topic = &self.config.topic;
        let arrival = Arrival { at, stamps };
        self.arrive(id, arrival, topic, seen, Unknown::Ignored, |expected| {
            let expect = self.config.verify.sink().map_or(&[][..], |s| &s.expect);
            record::check_expectations(expected, doc, expect, self.shape())
        });
    }

    /// A sink poll of `sink` for `pending` records ended, or failed with `error`; `failures`
    /// in a row (this one included when it failed, those before it when it succeeded).
    pub fn sink_polled(
        &self,
        sink: &'static str,
        pending: usize,
        result: Result<(), &SinkError>,
        failures: u32,
    ) {
        let error = result.err();
        let mut events = Events::new();
        {
            let mut core = self.lock();
            core.sink.polls += 1;
            if let Some(e) = error {
                core.sink.errors += 1;
                core.sink.last_error = Some(format!("{}: {}", e.kind.as_str(), e.message));
            }
            // Refused and accepted again under the lock, so that no deadline is applied
            // between a refusal and the probe knowing of it.
            let refused = error
                .filter(|e| e.kind == SinkErrorKind::Refused)
                .map(|e| e.message.clone());
            let was = self.progress.borrow().refused.is_some();
            if refused.is_some() || was {
                self.progress.send_if_modified(|p| {
                    let changed = p.refused != refused;
                    p.refused = refused;
                    changed
                });
            }
            let polled = Event::SinkPolled {
                sink,
                pending,
                error,
                failures,
            };
            self.emit(&mut events, polled);
        }
        self.report(events);
    }

    /// Whether this probe sent the record with this id (in flight or recently finished).
    pub fn knows(&self, id: &Uuid) -> bool {
        self.lock().tracker.knows(id)
    }

    /// A record on the probe's verify topic that is not a probe record.
    pub fn foreign(&self, view: &View, reason: ForeignReason) {
        self.foreign.fetch_add(1, Ordering::Relaxed);
        let event = Event::Foreign {
            seen: Seen::from(view),
            reason,
        };
        self.observer.count(&event);
        self.observer.report(&event);
    }
}
