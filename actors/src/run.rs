//! Running a pipeline to the end: spawn the supervisor, wait until every discovered file is committed or
//! dead-lettered (or the run fails), then stop every actor.

use std::sync::Arc;
use std::time::Duration;

use ractor::Actor;

use crate::progress::{Progress, Snapshot};
use crate::shared::{PipelineConfig, Shared};
use crate::stages::Stages;
use crate::supervisor::RootSupervisor;

/// How often work sent to an actor as it died is looked for and retried.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("could not start the pipeline: {0}")]
    Spawn(#[from] ractor::SpawnErr),
    #[error("the run failed: {reason}")]
    Failed { reason: String, progress: Box<Snapshot> },
}

/// Runs the stages over everything they discover. `progress` may be watched by the caller meanwhile.
pub async fn run<S: Stages>(
    stages: Arc<S>,
    config: PipelineConfig,
    progress: Arc<Progress>,
) -> Result<Snapshot, PipelineError> {
    let shared = Arc::new(Shared::new(stages, config, progress.clone()));
    let (supervisor, handle) = Actor::spawn(None, RootSupervisor::new(), shared.clone()).await?;
    while !progress.is_finished() && progress.fatal().is_none() {
        progress.wait(SWEEP_INTERVAL).await;
        shared.sweep().await;
        crate::metric::sample(&shared);
    }
    if progress.fatal().is_none()
        && let Err(e) = shared.stages.finish().await
    {
        progress.fail(format!("the final commit failed: {e}"));
    }
    shared.credits.close();
    supervisor.stop(None);
    let _ = handle.await;
    let snapshot = progress.snapshot();
    match progress.fatal() {
        Some(reason) => Err(PipelineError::Failed { reason, progress: Box::new(snapshot) }),
        None => Ok(snapshot),
    }
}
