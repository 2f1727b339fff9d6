//! What the pipeline needs from the domain: the stage functions, generic so that this crate never depends on
//! parsing, dedup or the lake. `poslake` implements [`Stages`] for POS files.

use std::fmt::Debug;
use std::future::Future;

use futures::stream::BoxStream;

/// The domain's stages, called by the actors.
pub trait Stages: Send + Sync + Sized + 'static {
    /// A discovered file.
    type File: Clone + Debug + Send + Sync + 'static;
    /// Its bytes.
    type Fetched: Send + 'static;
    /// What parsing made of it: records, or a dead letter.
    type Parsed: Send + Sync + 'static;
    /// Parsed files with their keys checked and reserved, ready to write.
    type Batch: Send + Sync + 'static;
    /// What must be undone if a batch is abandoned (its key reservations).
    type BatchInfo: Clone + Send + Sync + 'static;
    type Error: std::error::Error + Send + Sync + 'static;

    /// Bytes the file holds, for flow control.
    fn size(file: &Self::File) -> u64;

    /// Streams the files to ingest (files already ingested are filtered out here).
    fn discover(&self) -> BoxStream<'static, Result<Self::File, Self::Error>>;

    fn fetch(&self, file: &Self::File) -> impl Future<Output = Result<Self::Fetched, Self::Error>> + Send;

    /// Bytes the fetched file takes once decompressed, for flow control: a file is let in by its listed size
    /// ([`Stages::size`]), and one whose text is larger (a compressed file) takes credit for that before it is parsed.
    fn text_size(&self, file: &Self::File, _fetched: &Self::Fetched) -> u64 {
        Self::size(file)
    }

    /// CPU-bound: called on a blocking thread, never on the async workers.
    fn parse(&self, file: &Self::File, fetched: Self::Fetched) -> Self::Parsed;

    /// Writes the raw file to the bronze archive.
    fn archive(&self, parsed: &Self::Parsed) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Records what the parsed file says about itself (vendor, site, transactions, error kind) on its span.
    fn annotate(_parsed: &Self::Parsed, _span: &tracing::Span) {}

    /// A file that a stage gave up on, as a dead letter of `kind` that flows on to be recorded.
    fn failed(
        &self,
        file: &Self::File,
        stage: &'static str,
        attempts: u32,
        kind: &'static str,
        reason: String,
    ) -> Self::Parsed;

    /// The dead-letter kind of an error a stage gave up on: `gave_up` (tries exhausted) unless the domain knows the
    /// error's own kind (a file refused before it was read, say).
    fn failure_kind(_error: &Self::Error) -> &'static str {
        "gave_up"
    }

    /// Checks the batch's keys against the dedup store and reserves the new ones. May wait (a dedup server that
    /// is unreachable holds the pipeline here); an error ends the run, with nothing of the batch reserved.
    fn dedup(&self, items: Vec<Self::Parsed>) -> impl Future<Output = Result<Self::Batch, Self::Error>> + Send;

    fn batch_info(batch: &Self::Batch) -> Self::BatchInfo;

    /// Writes the batch durably; the domain commits written data when it chooses (and at [`Stages::finish`]),
    /// marking keys committed only then. Called again with the same batch after a retryable error, so a write
    /// that may have left partial data must fail with a non-retryable error.
    fn write(&self, batch: &Self::Batch) -> impl Future<Output = Result<WriteReport, Self::Error>> + Send;

    /// Every file is written: commit what is still uncommitted. The run succeeds only if this does.
    fn finish(&self) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// The batch will not be written (its actor failed or it is retried): release what it reserved.
    fn abandon(&self, info: &Self::BatchInfo);

    /// Whether trying again may succeed.
    fn is_retryable(error: &Self::Error) -> bool;
}

/// What one committed batch held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteReport {
    pub files: u64,
    pub bytes: u64,
    pub transactions: u64,
    pub new_transactions: u64,
    pub duplicates: u64,
    /// Of the duplicates, those only probably seen (a Bloom positive), kept in quarantine.
    pub quarantined: u64,
    pub dead_letters: u64,
    /// Of the dead letters, files the next run takes again (their reads or archive writes kept failing).
    pub deferred: u64,
}

impl WriteReport {
    pub fn add(&mut self, other: &WriteReport) {
        self.files += other.files;
        self.bytes += other.bytes;
        self.transactions += other.transactions;
        self.new_transactions += other.new_transactions;
        self.duplicates += other.duplicates;
        self.quarantined += other.quarantined;
        self.dead_letters += other.dead_letters;
        self.deferred += other.deferred;
    }
}
