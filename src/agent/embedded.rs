//! Running on the embedded cluster: every cluster name pointed at it, and the topics the
//! probes need created on it.

use std::collections::{BTreeMap, BTreeSet};

use super::EMBEDDED_BROKERS;
use crate::config::{ClusterConfig, Config, Partitions};
use crate::embedded::EmbeddedCluster;

/// Every cluster name the probes use now means the embedded cluster.
pub(super) fn point_at_embedded(config: &mut Config, embedded: &EmbeddedCluster) {
    let names: BTreeSet<String> = config
        .probes
        .iter()
        .flat_map(|p| {
            let verify = p.verify.kafka().map(|v| v.cluster.clone());
            std::iter::once(p.cluster.clone()).chain(verify)
        })
        .chain(config.agent.clusters.keys().cloned())
        .collect();
    config.agent.clusters = names
        .into_iter()
        .map(|name| {
            let c = ClusterConfig {
                name: name.clone(),
                bootstrap_servers: embedded.bootstrap_servers().to_string(),
                properties: BTreeMap::new(),
                producer: BTreeMap::new(),
                consumer: BTreeMap::new(),
            };
            (name, c)
        })
        .collect();
}

/// The probe and verify topics, with enough partitions for every listed partition (at least
/// one per broker).
pub(super) fn create_embedded_topics(
    config: &Config,
    embedded: &EmbeddedCluster,
) -> Result<(), rdkafka::error::KafkaError> {
    let mut topics: BTreeMap<String, i32> = BTreeMap::new();
    for p in &config.probes {
        let needed = match &p.partitions {
            Partitions::All => EMBEDDED_BROKERS,
            Partitions::List(l) => (l.iter().max().copied().unwrap_or(0) + 1).max(EMBEDDED_BROKERS),
        };
        for t in std::iter::once(&p.topic).chain(p.verify.kafka().map(|v| &v.topic)) {
            let e = topics.entry(t.clone()).or_insert(needed);
            *e = (*e).max(needed);
        }
    }
    for (topic, partitions) in topics {
        embedded.create_topic(&topic, partitions, EMBEDDED_BROKERS)?;
    }
    Ok(())
}
