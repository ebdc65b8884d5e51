//! A probe whose Avro records take their schema id from a Schema Registry: the id resolved
//! before anything is sent, or asked for until the registry answers (`run`).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::StartError;
use crate::probe::Probe;
use crate::probe::task::Plan;
use crate::registry::{Registry, RegistryError};

/// Resolves the schema id of a probe whose Avro records take it from a Schema Registry, before
/// anything is sent. `smoke` cannot run without it (a start error, exit 2); `run` starts anyway
/// and returns the registry to keep asking (each failure counted), its records failing
/// `send_failed` (reason `format`) until the id is known.
pub(super) async fn schema_id(
    probe: &Arc<Probe>,
    plan: Plan,
) -> Result<Option<Arc<Registry>>, StartError> {
    let (Some(cfg), Some(avro)) = (
        &probe.config.schema_registry,
        probe.shape().and_then(|s| s.avro()),
    ) else {
        return Ok(None);
    };
    let failed = |error: String| StartError::Registry {
        probe: probe.name().to_string(),
        error,
    };
    let registry = Arc::new(Registry::new(cfg).map_err(failed)?);
    match ask(probe, &registry, avro).await {
        Ok(()) => Ok(None),
        Err(e) if plan != Plan::Forever => Err(failed(format!(
            "cannot get the schema id of its records (subject `{}`): {e}",
            cfg.subject
        ))),
        Err(_) => Ok(Some(registry)),
    }
}

/// Asks the registry for the probe's schema id once: sets it, or reports why not.
async fn ask(
    probe: &Probe,
    registry: &Registry,
    avro: &crate::record::avro::AvroFormat,
) -> Result<(), RegistryError> {
    match registry.schema_id(&avro.text).await {
        Ok(id) => {
            avro.set_schema_id(id);
            tracing::info!(
                probe = probe.name(),
                registry = registry.url(),
                schema_id = id,
                "schema id resolved: records are sent from now on"
            );
            Ok(())
        }
        Err(e) => {
            probe.registry_failed(e.kind(), &e.to_string(), "schema_id");
            Err(e)
        }
    }
}

/// Asks the registry for a probe's schema id until it answers (backoff 1 s to 30 s) or the
/// agent stops.
pub(super) async fn keep_asking(
    probe: Arc<Probe>,
    registry: Arc<Registry>,
    stop: CancellationToken,
) {
    let Some(avro) = probe.shape().and_then(|s| s.avro()) else {
        return;
    };
    let mut wait = Duration::from_secs(1);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
        if ask(&probe, &registry, avro).await.is_ok() {
            return;
        }
        wait = (wait * 2).min(Duration::from_secs(30));
    }
}
