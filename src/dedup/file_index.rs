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
    /// Spread over a cluster's primaries, the ticket the sync left in every group (see `RedisFiles::begin_sync`).
    ticket: Option<String>,
    /// The Redis pool's failed round trips when the sync began.
    failures: u64,
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

    /// Where the index lives, for messages: the Redis URL (without its password), or the embedded store.
    pub fn url(&self) -> String {
        match self.backing() {
            Ok(Backing::Redis(_, pool)) => pool.url().to_owned(),
            _ => "the embedded store".to_owned(),
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
    /// another, and the mark is not made, or does not vouch), and the round trips that had failed so far.
    pub async fn start_sync(&self, ledger: LedgerMark) -> Result<SyncMark, DedupError> {
        Ok(match self.backing()? {
            Backing::Redis(files, pool) => {
                let failures = pool.failures();
                let generation = Some(RedisFiles::generation(pool).await?);
                SyncMark { ledger, generation, ticket: files.begin_sync(pool).await?, failures }
            }
            Backing::Embedded(_) => SyncMark { ledger, generation: None, ticket: None, failures: 0 },
        })
    }

    /// Adds files (idempotent).
    pub async fn add(&self, ids: Vec<u128>) -> Result<(), DedupError> {
        match self.backing()? {
            Backing::Redis(files, pool) => files.add(pool, &ids, None).await.map(|_| ()),
            Backing::Embedded(store) => store.files_add(ids, None).await,
        }
    }

    /// Adds a sync's last files, then records that the index holds every ledger file up to the sync's snapshot.
    /// False if the server may have lost some of the sync's adds, so that the mark, made after, would vouch for files
    /// it no longer holds: a Redis round trip failed since the sync began (the server restarted, or a replica took
    /// over), the store's generation changed, or a group lost the sync's ticket (its primary was flushed). The
    /// caller adds the sync's files again, then marks again.
    pub async fn finish_sync(&self, ids: Vec<u128>, mark: &SyncMark) -> Result<bool, DedupError> {
        match (self.backing()?, mark.generation.as_deref()) {
            (Backing::Redis(files, pool), Some(generation)) => {
                let stands = files.add(pool, &ids, Some((mark.ledger, generation, mark.ticket.as_deref()))).await?;
                Ok(stands && pool.failures() == mark.failures)
            }
            (Backing::Redis(..), None) => {
                Err(DedupError::Config("a Redis file index's sync mark without a generation".into()))
            }
            (Backing::Embedded(store), _) => store.files_add(ids, Some(mark.ledger.snapshot_id)).await.map(|()| true),
        }
    }

    /// Which lake's ledger the index holds, and the highest ledger sequence number it was brought up to (`None`: a
    /// store no sync has recorded a lake in, before session 36 or new).
    pub async fn lake_record(&self) -> Result<Option<(String, i64)>, DedupError> {
        self.dedup.lake_record().await
    }

    /// Records that the index holds the ledger table `table` up to sequence number `sequence`; the table of another
    /// lake's ledger when the store holds that (see [`crate::dedup::Dedup::record_lake`]).
    pub async fn record_lake(&self, table: &str, sequence: i64) -> Result<Option<String>, DedupError> {
        self.dedup.record_lake(table, sequence).await
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
    /// [`Self::stats`] of `dedup`'s index without making it: `None` for the embedded store and for a Redis store
    /// whose index no worker has made yet.
    pub async fn stats_to_read(dedup: &Dedup) -> Result<Option<FileIndexStats>, DedupError> {
        let Some(pool) = dedup.redis_pool() else { return Ok(None) };
        match RedisFiles::open_to_read(pool).await? {
            Some(files) => Ok(Some(files.stats(pool).await?)),
            None => Ok(None),
        }
    }

    pub async fn stats(&self) -> Result<Option<FileIndexStats>, DedupError> {
        match self.backing()? {
            Backing::Redis(files, pool) => Ok(Some(files.stats(pool).await?)),
            Backing::Embedded(_) => Ok(None),
        }
    }
}
