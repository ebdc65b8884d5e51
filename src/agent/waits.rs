//! What `smoke` waits for while an agent runs: every probe's partitions found, a sink's answer
//! refused, a job the probes name ended.

use std::time::Duration;

use std::collections::BTreeMap;

use super::{Agent, cluster};

impl Agent {
    /// Waits until every probe found its partitions; on timeout returns each probe still
    /// without them, with the last error.
    pub async fn wait_discovered(&self, bound: Duration) -> Result<(), Vec<(String, String)>> {
        let wait_all = async {
            for p in &self.probes {
                let mut rx = p.progress();
                // Err only if the probe is gone, which cannot happen while the agent lives.
                let _ = rx.wait_for(|s| !s.partitions.is_empty()).await;
            }
        };
        if tokio::time::timeout(bound, wait_all).await.is_ok() {
            return Ok(());
        }
        // Which clusters' bootstrap hosts do not resolve: named first, as the cause.
        let mut dns: BTreeMap<String, Option<String>> = BTreeMap::new();
        for p in &self.probes {
            let c = cluster(&self.config, &p.config.cluster);
            if p.progress().borrow().partitions.is_empty() && !dns.contains_key(&c.name) {
                let servers = c.bootstrap_servers.clone();
                let why = tokio::task::spawn_blocking(move || crate::kafka::unresolvable(&servers))
                    .await
                    .ok()
                    .flatten();
                dns.insert(c.name.clone(), why);
            }
        }
        Err(self
            .probes
            .iter()
            .filter_map(|p| {
                let s = p.progress().borrow().clone();
                s.partitions.is_empty().then(|| {
                    let error = s.discovery_error.unwrap_or_else(|| {
                        let c = cluster(&self.config, &p.config.cluster);
                        let why = dns.get(&c.name).cloned().flatten().unwrap_or_else(|| {
                            format!("no answer within {}", humantime::format_duration(bound))
                        });
                        format!(
                            "cannot reach cluster {} ({}): {why}",
                            c.name, c.bootstrap_servers,
                        )
                    });
                    (p.name().to_string(), error)
                })
            })
            .collect())
    }

    /// Resolves when a probe's sink answers its query in a way the probe cannot verify (a
    /// configuration mistake found after start): the probe's name and why, located.
    pub async fn wait_refused(&self) -> (String, String) {
        // One waiter per probe; the first to see a refusal answers (the rest are aborted when
        // the set is dropped).
        let mut waits = tokio::task::JoinSet::new();
        for p in &self.probes {
            let (mut rx, name) = (p.progress(), p.name().to_string());
            waits.spawn(async move {
                let why = rx
                    .wait_for(|s| s.refused.is_some())
                    .await
                    .map(|s| s.refused.clone().unwrap_or_default());
                match why {
                    Ok(why) => (name, why),
                    Err(_) => std::future::pending().await,
                }
            });
        }
        match waits.join_next().await {
            Some(Ok(found)) => found,
            _ => std::future::pending().await,
        }
    }

    /// Resolves when a job the probes name has ended (`FAILED`, `CANCELED`, `FINISHED`,
    /// `SUSPENDED`): its name, and its state and last exception.
    pub async fn wait_job_ended(&self) -> (String, String) {
        let mut waits = tokio::task::JoinSet::new();
        for j in &self.jobs {
            let (mut rx, name) = (j.now(), j.name.clone());
            waits.spawn(async move {
                let ended = rx
                    .wait_for(|n| n.state().is_some_and(|s| s.is_terminal()))
                    .await
                    .map(|n| n.describe());
                match ended {
                    Ok(why) => (name, why),
                    Err(_) => std::future::pending().await,
                }
            });
        }
        match waits.join_next().await {
            Some(Ok(found)) => found,
            _ => std::future::pending().await,
        }
    }
}
