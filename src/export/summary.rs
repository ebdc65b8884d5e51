//! Windowed quantiles as Prometheus summaries: `quantile` series plus `_sum` and `_count` of the
//! sliding window's samples. (A `quantile` label on a gauge is what `promtool check metrics`
//! rejects; a summary is what these values are.) Values are computed from the HDR histograms
//! before each scrape and set here.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{LabelPair, Metric, MetricFamily, MetricType, Quantile, Summary};

pub use crate::outcome::WindowValues;
use crate::stats::QUANTILES;

/// A summary family with one series per value of its labels (a probe, or a probe and a hop).
pub struct WindowSummary {
    desc: Desc,
    /// The label names, in the order of each series' values.
    labels: Vec<String>,
    values: Mutex<BTreeMap<Vec<String>, WindowValues>>,
}

impl WindowSummary {
    pub fn new(name: &str, help: &str, labels: &[&str]) -> Arc<Self> {
        let labels: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
        let desc = Desc::new(name.into(), help.into(), labels.clone(), Default::default())
            .expect("valid metric");
        Arc::new(WindowSummary {
            desc,
            labels,
            values: Mutex::new(BTreeMap::new()),
        })
    }

    /// The series with these label values (in the order of the labels).
    pub fn set(&self, label_values: &[String], v: WindowValues) {
        self.values
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(label_values.to_vec(), v);
    }
}

/// Registers the shared summary: the registry owns a handle, the probes keep another.
pub struct Registered(pub Arc<WindowSummary>);

impl Collector for Registered {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.0.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let values = self.0.values.lock().unwrap_or_else(|e| e.into_inner());
        let metrics = values
            .iter()
            .map(|(values, v)| {
                let mut labels: Vec<LabelPair> = self
                    .0
                    .labels
                    .iter()
                    .zip(values)
                    .map(|(name, value)| {
                        let mut label = LabelPair::default();
                        label.set_name(name.clone());
                        label.set_value(value.clone());
                        label
                    })
                    .collect();
                // In name order, as the other families are written.
                labels.sort_by(|a, b| a.name().cmp(b.name()));
                let mut s = Summary::default();
                s.set_sample_count(v.count);
                s.set_sample_sum(v.sum);
                let qs = v.quantiles.unwrap_or([f64::NAN; 6]);
                s.set_quantile(
                    QUANTILES
                        .iter()
                        .zip(qs)
                        .map(|(q, value)| {
                            let mut quantile = Quantile::default();
                            quantile.set_quantile(*q);
                            quantile.set_value(value);
                            quantile
                        })
                        .collect(),
                );
                let mut m = Metric::default();
                m.set_label(labels);
                m.set_summary(s);
                m
            })
            .collect();
        let mut family = MetricFamily::default();
        family.set_name(self.0.desc.fq_name.clone());
        family.set_help(self.0.desc.help.clone());
        family.set_field_type(MetricType::SUMMARY);
        family.set_metric(metrics);
        vec![family]
    }
}
