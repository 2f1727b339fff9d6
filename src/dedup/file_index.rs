//! The index of files the ledger holds, so that discovery skips files already ingested without holding every file
//! ever ingested in memory. It lives beside the keys: a keyspace of the embedded store's database, or hashes in
//! the Redis store's server ([`super::redis_files`]), where the workers that share a lake share it too.
//!
//! The ingest brings it up to the ledger's current snapshot at start (`ingest::LedgerIndex`); the index records
//! the snapshot it holds every ledger file of, so that the next start reads only what later snapshots added.

use std::sync::Arc;

use super::redis_files::{FileIndexStats, LedgerMark, RedisFiles, Vouch};
use super::redis_pool::RedisPool;
use super::{Dedup, DedupError, EmbeddedDedup};

/// The mark a sync makes once its files are added (see [`FileIndex::start_sync`]).
#[derive(Debug, Clone)]
pub struct SyncMark {
    pub ledger: LedgerMark,
    /// The Redis store's generation when the sync began.
    generation: Option<String>,
}

pub struct FileIndex {
    dedup: Arc<Dedup>,
    /// The Redis layout, when the store is a Redis one.
    redis: Option<RedisFiles>,
}

/// Where the index lives.
enum Backing<'a> {
    Embedded(&'a EmbeddedDedup),
    Redis(&'a RedisFiles, &'a RedisPool),
}

impl FileIndex {
    /// The index of the store's kind; `expected_files` sizes a Redis index when it is created.
    pub async fn open(dedup: Arc<Dedup>, expected_files: u64) -> Result<Self, DedupError> {
        let redis = match dedup.redis_pool() {
            Some(pool) => Some(RedisFiles::open(pool, expected_files).await?),
            None => None,
        };
        Ok(FileIndex { dedup, redis })
    }

    fn backing(&self) -> Result<Backing<'_>, DedupError> {
        match (&self.redis, self.dedup.redis_pool(), &*self.dedup) {
            (Some(files), Some(pool), _) => Ok(Backing::Redis(files, pool)),
            (_, _, Dedup::Embedded(store)) => Ok(Backing::Embedded(store)),
            // `open` makes the Redis layout for every Redis store.
            _ => Err(DedupError::Config("a Redis store without its file index layout".into())),
        }
    }

    /// The ledger snapshot the index holds every file of, if it knows one.
    pub async fn synced_to(&self) -> Result<Option<i64>, DedupError> {
        match self.backing()? {
            Backing::Redis(files, pool) => files.synced_to(pool).await,
            Backing::Embedded(store) => store.files_synced_to(),
        }
    }

    /// What a sync that brings the index up to `ledger` will mark: read before the sync's first add, so that in a
    /// Redis store the mark carries the generation its files were added under (a store that lost them since has
    /// another, and the mark is not made, or does not vouch).
    pub async fn start_sync(&self, ledger: LedgerMark) -> Result<SyncMark, DedupError> {
        let generation = match self.backing()? {
            Backing::Redis(_, pool) => Some(RedisFiles::generation(pool).await?),
            Backing::Embedded(_) => None,
        };
        Ok(SyncMark { ledger, generation })
    }

    /// Adds files, then records that the index holds every ledger file up to `synced_to`, if given.
    pub async fn add(&self, ids: Vec<u128>, synced_to: Option<&SyncMark>) -> Result<(), DedupError> {
        match self.backing()? {
            Backing::Redis(files, pool) => {
                let mark = match synced_to {
                    Some(SyncMark { ledger, generation: Some(g) }) => Some((*ledger, g.as_str())),
                    Some(SyncMark { generation: None, .. }) => {
                        return Err(DedupError::Config("a Redis file index's mark without a generation".into()));
                    }
                    None => None,
                };
                files.add(pool, &ids, mark).await
            }
            Backing::Embedded(store) => store.files_add(ids, synced_to.map(|m| m.ledger.snapshot_id)).await,
        }
    }

    /// Which of these files the index holds.
    pub async fn contain(&self, ids: Vec<u128>) -> Result<Vec<bool>, DedupError> {
        match self.backing()? {
            Backing::Redis(files, pool) => files.contain(pool, &ids).await,
            Backing::Embedded(store) => store.files_contain(ids).await,
        }
    }

    /// [`Self::contain`], and what vouches for the answers in a Redis store, which may lose its data while a run
    /// goes on (`None`: the embedded store, which does not).
    pub async fn contain_vouched(&self, ids: Vec<u128>) -> Result<(Vec<bool>, Option<Vouch>), DedupError> {
        match self.backing()? {
            Backing::Redis(files, pool) => {
                let (held, vouch) = files.contain_vouched(pool, &ids).await?;
                Ok((held, Some(vouch)))
            }
            Backing::Embedded(store) => Ok((store.files_contain(ids).await?, None)),
        }
    }

    /// The Redis index's size and design capacity (the embedded one is on disk and has none).
    pub async fn stats(&self) -> Result<Option<FileIndexStats>, DedupError> {
        match self.backing()? {
            Backing::Redis(files, pool) => Ok(Some(files.stats(pool).await?)),
            Backing::Embedded(_) => Ok(None),
        }
    }
}
