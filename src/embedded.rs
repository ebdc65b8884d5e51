//! The embedded cluster: librdkafka's in-process mock cluster, so the agent runs on a machine
//! with nothing installed. Produce, fetch, headers and metadata work; records never leave the
//! process. Also the fault injector of the tests (round-trip time, brokers down).
//!
//! `MockCluster` is not `Send`, so it lives on a thread of its own and is driven by messages.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

type Reply = mpsc::Sender<Result<(), KafkaError>>;

enum Command {
    CreateTopic {
        name: String,
        partitions: i32,
        replication: i32,
        reply: Reply,
    },
    RoundTripTime {
        broker: Option<i32>,
        delay: Duration,
        reply: Reply,
    },
    BrokerDown {
        broker: i32,
        reply: Reply,
    },
    BrokerUp {
        broker: i32,
        reply: Reply,
    },
    PartitionLeader {
        topic: String,
        partition: i32,
        broker: i32,
        reply: Reply,
    },
    RequestErrors {
        api: RDKafkaApiKey,
        errors: Vec<RDKafkaRespErr>,
        reply: Reply,
    },
    TopicError {
        topic: String,
        error: RDKafkaRespErr,
        reply: Reply,
    },
}

/// librdkafka's mock cluster, on a thread of its own.
pub struct EmbeddedCluster {
    bootstrap_servers: String,
    commands: Option<mpsc::Sender<Command>>,
    thread: Option<JoinHandle<()>>,
}

impl EmbeddedCluster {
    /// Starts a mock cluster of `brokers` brokers on loopback ports.
    pub fn start(brokers: i32) -> Result<Self, KafkaError> {
        let (commands, inbox) = mpsc::channel::<Command>();
        let (ready_tx, ready) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("embedded-kafka".into())
            .spawn(move || {
                let mock = match MockCluster::new(brokers) {
                    Ok(m) => m,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(mock.bootstrap_servers()));
                // Runs until the cluster handle is dropped (the sender closes).
                for cmd in inbox {
                    let (result, reply) = match cmd {
                        Command::CreateTopic {
                            name,
                            partitions,
                            replication,
                            reply,
                        } => (mock.create_topic(&name, partitions, replication), reply),
                        Command::RoundTripTime {
                            broker,
                            delay,
                            reply,
                        } => (
                            mock.broker_round_trip_time(broker.unwrap_or(-1), delay),
                            reply,
                        ),
                        Command::BrokerDown { broker, reply } => (mock.broker_down(broker), reply),
                        Command::BrokerUp { broker, reply } => (mock.broker_up(broker), reply),
                        Command::PartitionLeader {
                            topic,
                            partition,
                            broker,
                            reply,
                        } => (
                            mock.partition_leader(&topic, partition, Some(broker)),
                            reply,
                        ),
                        Command::RequestErrors { api, errors, reply } => {
                            mock.request_errors(api, &errors);
                            (Ok(()), reply)
                        }
                        Command::TopicError {
                            topic,
                            error,
                            reply,
                        } => (mock.topic_error(&topic, error), reply),
                    };
                    let _ = reply.send(result);
                }
            })
            .map_err(|_| KafkaError::MockCluster(rdkafka::types::RDKafkaErrorCode::Fail))?;
        let bootstrap_servers = ready
            .recv()
            .map_err(|_| KafkaError::MockCluster(rdkafka::types::RDKafkaErrorCode::Fail))??;
        Ok(EmbeddedCluster {
            bootstrap_servers,
            commands: Some(commands),
            thread: Some(thread),
        })
    }

    /// Its `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap_servers
    }

    fn call(&self, make: impl FnOnce(Reply) -> Command) -> Result<(), KafkaError> {
        let (reply, answer) = mpsc::channel();
        let gone = || KafkaError::MockCluster(rdkafka::types::RDKafkaErrorCode::Fail);
        self.commands
            .as_ref()
            .ok_or_else(gone)?
            .send(make(reply))
            .map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }

    /// Creates a topic (the mock has no admin API).
    pub fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication: i32,
    ) -> Result<(), KafkaError> {
        self.call(|reply| Command::CreateTopic {
            name: name.into(),
            partitions,
            replication,
            reply,
        })
    }

    /// Adds `delay` to every request to `broker` (all brokers when `None`).
    pub fn set_round_trip_time(
        &self,
        broker: Option<i32>,
        delay: Duration,
    ) -> Result<(), KafkaError> {
        self.call(|reply| Command::RoundTripTime {
            broker,
            delay,
            reply,
        })
    }

    /// Takes broker `broker` down (ids start at 1); leadership does not move.
    pub fn broker_down(&self, broker: i32) -> Result<(), KafkaError> {
        self.call(|reply| Command::BrokerDown { broker, reply })
    }

    /// Brings broker `broker` back.
    pub fn broker_up(&self, broker: i32) -> Result<(), KafkaError> {
        self.call(|reply| Command::BrokerUp { broker, reply })
    }

    /// Moves the leadership of a partition to `broker` (ids start at 1).
    pub fn set_partition_leader(
        &self,
        topic: &str,
        partition: i32,
        broker: i32,
    ) -> Result<(), KafkaError> {
        self.call(|reply| Command::PartitionLeader {
            topic: topic.into(),
            partition,
            broker,
            reply,
        })
    }

    /// The next `errors.len()` requests of this kind (on any broker) fail with these errors, in
    /// order.
    pub fn push_request_errors(
        &self,
        api: RDKafkaApiKey,
        errors: &[RDKafkaRespErr],
    ) -> Result<(), KafkaError> {
        self.call(|reply| Command::RequestErrors {
            api,
            errors: errors.to_vec(),
            reply,
        })
    }
}

impl EmbeddedCluster {
    /// Every metadata answer about `topic` carries `error` from now on (e.g.
    /// `RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED`: an ACL denying Describe);
    /// `RD_KAFKA_RESP_ERR_NO_ERROR` clears it.
    pub fn set_topic_error(&self, topic: &str, error: RDKafkaRespErr) -> Result<(), KafkaError> {
        self.call(|reply| Command::TopicError {
            topic: topic.into(),
            error,
            reply,
        })
    }
}

impl Drop for EmbeddedCluster {
    fn drop(&mut self) {
        self.commands.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
