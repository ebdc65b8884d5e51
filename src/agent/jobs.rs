//! The jobs the probes name (`job`): one [`JobWatch`] and one poller per job, however many
//! probes name it; the first poll of each before any record is sent, so that `smoke` can
//! refuse to judge a pipeline whose job is not running.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::StartError;
use crate::config::{Config, JobConfig};
use crate::export::jobs::JobExport;
use crate::export::metrics::Metrics;
use crate::probe::JobWatch;
use crate::verify::flink::JobPoller;

/// Every job the probes name, by its `flink_job` label.
pub(super) struct Jobs {
    /// The job's configuration, its watch, and the probes naming it.
    by_name: BTreeMap<String, (JobConfig, Arc<JobWatch>, Vec<String>)>,
}

impl Jobs {
    /// The jobs of `config`'s probes. Two probes giving one name to two different jobs are
    /// refused: their series would be one.
    pub(super) fn of(config: &Config) -> Result<Jobs, StartError> {
        let mut by_name: BTreeMap<String, (JobConfig, Arc<JobWatch>, Vec<String>)> =
            BTreeMap::new();
        for p in &config.probes {
            let Some(job) = &p.job else { continue };
            match by_name.get_mut(&job.name) {
                Some((cfg, _, probes)) if cfg == job => probes.push(p.name.clone()),
                Some((_, _, probes)) => {
                    return Err(StartError::Sink {
                        probe: p.name.clone(),
                        error: format!(
                            "its `job` is named `{}` like probe {}'s, but is another job: give each its own `name`, or define it once in the agent file's `jobs` and name it there",
                            job.name, probes[0]
                        ),
                    });
                }
                None => {
                    let watch = Arc::new(JobWatch::new(&job.name, job.target()));
                    by_name.insert(job.name.clone(), (job.clone(), watch, vec![p.name.clone()]));
                }
            }
        }
        Ok(Jobs { by_name })
    }

    /// The watch of job `name`.
    pub(super) fn watch(&self, name: &str) -> Option<Arc<JobWatch>> {
        self.by_name.get(name).map(|(_, w, _)| Arc::clone(w))
    }

    pub(super) fn watches(&self) -> Vec<Arc<JobWatch>> {
        self.by_name
            .values()
            .map(|(_, w, _)| Arc::clone(w))
            .collect()
    }

    /// A poller per job, each polled once (all at once) before this returns; with the names
    /// of the probes each serves.
    pub(super) async fn pollers(
        &self,
        metrics: &Arc<Metrics>,
    ) -> Result<Vec<(Arc<JobPoller>, Vec<String>)>, StartError> {
        let mut pollers = Vec::new();
        for (name, (cfg, watch, probes)) in &self.by_name {
            let names: Vec<&str> = probes.iter().map(String::as_str).collect();
            let observer = Arc::new(JobExport::new(metrics, name, &names));
            let poller =
                JobPoller::new(cfg.clone(), Arc::clone(watch), observer).map_err(|error| {
                    StartError::Sink {
                        probe: probes[0].clone(),
                        error,
                    }
                })?;
            pollers.push((Arc::new(poller), probes.clone()));
        }
        let mut first = tokio::task::JoinSet::new();
        for (p, _) in &pollers {
            let p = Arc::clone(p);
            first.spawn(async move { p.poll_once().await });
        }
        while first.join_next().await.is_some() {}
        Ok(pollers)
    }
}
