//! The root supervisor of one run. It spawns every stage actor linked to itself and owns this policy:
//!
//! ```text
//! RootSupervisor
//! ├── Discoverer            failure: fatal (re-listing would re-feed files already in flight)
//! ├── Downloader × N        failure: restart; the file it held is retried
//! ├── Parser × cores        failure: restart; the file it held is retried
//! ├── Archiver × N          failure: restart; the file it held is retried
//! ├── DedupBatcher          failure: restart; its pending files are retried
//! └── IcebergWriter         failure: restart; its batch's reservations are released, its files retried
//! ```
//!
//! A file is tried `max_attempts` times, then dead-lettered. An actor restarted more than `max_restarts` times
//! fails the run.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::archiver::Archiver;
use crate::dedup_batcher::DedupBatcher;
use crate::discoverer::{Discoverer, DiscovererMsg};
use crate::downloader::Downloader;
use crate::parser::Parser;
use crate::shared::Shared;
use crate::stages::Stages;
use crate::writer::IcebergWriter;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Discoverer,
    Downloader(usize),
    Parser(usize),
    Archiver(usize),
    Batcher,
    Writer,
}

impl Role {
    fn stage(self) -> &'static str {
        match self {
            Role::Discoverer => "discover",
            Role::Downloader(_) => "download",
            Role::Parser(_) => "parse",
            Role::Archiver(_) => "archive",
            Role::Batcher => "dedup",
            Role::Writer => "write",
        }
    }
}

/// The supervisor takes no messages of its own: it only reacts to its children.
pub enum SupervisorMsg {}

pub struct RootSupervisor<S>(PhantomData<S>);

impl<S> RootSupervisor<S> {
    pub(crate) fn new() -> Self {
        RootSupervisor(PhantomData)
    }
}

pub struct SupervisorState<S: Stages> {
    shared: Arc<Shared<S>>,
    roles: HashMap<ActorId, Role>,
    restarts: HashMap<Role, u32>,
}

impl std::hash::Hash for Role {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            Role::Downloader(i) | Role::Parser(i) | Role::Archiver(i) => i.hash(state),
            _ => {}
        }
    }
}

impl<S: Stages> Actor for RootSupervisor<S> {
    type Msg = SupervisorMsg;
    type State = SupervisorState<S>;
    type Arguments = Arc<Shared<S>>;

    async fn pre_start(
        &self,
        me: ActorRef<Self::Msg>,
        shared: Arc<Shared<S>>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = SupervisorState { shared, roles: HashMap::new(), restarts: HashMap::new() };
        let c = &state.shared.config;
        let mut roles = vec![Role::Writer, Role::Batcher];
        roles.extend((0..c.archivers.max(1)).map(Role::Archiver));
        roles.extend((0..c.parsers.max(1)).map(Role::Parser));
        roles.extend((0..c.downloaders.max(1)).map(Role::Downloader));
        roles.push(Role::Discoverer);
        for role in roles {
            spawn(&me.get_cell(), &mut state, role).await?;
        }
        Ok(state)
    }

    async fn post_start(&self, _: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        let discoverer = state.shared.discoverer.pick().ok_or("no discoverer")?;
        discoverer.send_message(DiscovererMsg::Start).map_err(|e| format!("starting discovery: {e}"))?;
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (cell, reason.unwrap_or_else(|| "stopped".into())),
            _ => return Ok(()),
        };
        let Some(role) = state.roles.remove(&cell.get_id()) else { return Ok(()) };
        let shared = state.shared.clone();
        tracing::warn!(stage = role.stage(), %reason, "actor failed");
        if role == Role::Discoverer {
            shared.progress.fail(format!("the discoverer failed: {reason}"));
            return Ok(());
        }
        let count = state.restarts.entry(role).or_insert(0);
        *count += 1;
        if *count > shared.config.max_restarts {
            shared.progress.fail(format!("{} actor failed {} times; last: {reason}", role.stage(), count));
            return Ok(());
        }
        shared.progress.restarted();
        metrics::counter!(crate::metric::RESTARTS, "actor" => role.stage()).increment(1);
        // Restart first, so that the retried files find a live pool.
        spawn(&me.get_cell(), state, role).await?;
        // Everything it held, being handled or still in its mailbox, is retried. Sends may wait for a replacement
        // actor, so they run off the supervisor's own loop. Later registrations under the dead actor (sends that
        // raced its death) are swept up by the run's sweeper.
        shared.mark_dead(cell.get_id());
        let held = shared.take_all(cell.get_id());
        let stage = role.stage();
        tokio::spawn(async move {
            for h in held {
                shared.retry_held(h, stage, reason.clone()).await;
            }
        });
        Ok(())
    }
}

async fn spawn<S: Stages>(
    me: &ActorCell,
    state: &mut SupervisorState<S>,
    role: Role,
) -> Result<(), ActorProcessingErr> {
    let shared = state.shared.clone();
    let id = match role {
        Role::Discoverer => {
            let (a, _) = Actor::spawn_linked(None, Discoverer::new(), shared.clone(), me.clone()).await?;
            shared.discoverer.set(0, a.clone());
            a.get_id()
        }
        Role::Downloader(i) => {
            let (a, _) = Actor::spawn_linked(None, Downloader::new(), shared.clone(), me.clone()).await?;
            shared.downloaders.set(i, a.clone());
            a.get_id()
        }
        Role::Parser(i) => {
            let (a, _) = Actor::spawn_linked(None, Parser::new(), shared.clone(), me.clone()).await?;
            shared.parsers.set(i, a.clone());
            a.get_id()
        }
        Role::Archiver(i) => {
            let (a, _) = Actor::spawn_linked(None, Archiver::new(), shared.clone(), me.clone()).await?;
            shared.archivers.set(i, a.clone());
            a.get_id()
        }
        Role::Batcher => {
            let (a, _) = Actor::spawn_linked(None, DedupBatcher::new(), shared.clone(), me.clone()).await?;
            shared.batcher.set(0, a.clone());
            a.get_id()
        }
        Role::Writer => {
            let (a, _) = Actor::spawn_linked(None, IcebergWriter::new(), shared.clone(), me.clone()).await?;
            shared.writer.set(0, a.clone());
            a.get_id()
        }
    };
    state.roles.insert(id, role);
    Ok(())
}
