//! The pipeline runtime with in-memory stages: every file is committed exactly once even when a parser and the
//! writer panic mid-work; credits bound what is in flight; a failing download ends as a dead letter.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use futures::stream::{self, BoxStream, StreamExt};
use poslake_actors::{FlowLimits, PipelineConfig, Progress, Stages, WriteReport, run};

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Fail(&'static str);

#[derive(Default)]
struct Memory {
    files: u32,
    /// Files whose first parse panics.
    panic_parse: HashSet<u32>,
    panicked: Mutex<HashSet<u32>>,
    /// The writer panics on its first batch.
    panic_write_once: bool,
    write_calls: AtomicU32,
    /// Files whose download always fails (not retryable).
    broken: HashSet<u32>,
    /// The listing ends this long after its last file (a slow last page).
    listing_tail: Duration,
    committed: Mutex<Vec<(u32, bool)>>,
    abandoned: AtomicU32,
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
    /// Each file's text is this many times its listed size (a compressed file); file 7's is 100 times more again.
    expand: u64,
    /// Files parsed and not yet written, at most at once.
    parsed_unwritten: AtomicU64,
    peak_parsed_unwritten: AtomicU64,
}

impl Stages for Memory {
    type File = u32;
    type Fetched = u32;
    type Parsed = (u32, bool);
    type Batch = Vec<(u32, bool)>;
    type BatchInfo = usize;
    type Error = Fail;

    fn size(_: &u32) -> u64 {
        1000
    }

    fn discover(&self) -> BoxStream<'static, Result<u32, Fail>> {
        let tail = self.listing_tail;
        let end = stream::once(tokio::time::sleep(tail)).filter_map(|_| async { None });
        stream::iter((0..self.files).map(Ok)).chain(end).boxed()
    }

    async fn fetch(&self, file: &u32) -> Result<u32, Fail> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.broken.contains(file) { Err(Fail("unreachable")) } else { Ok(*file) }
    }

    fn text_size(&self, file: &u32, _: &u32) -> u64 {
        match (self.expand, file) {
            (0, _) => Self::size(file),
            (x, 7) => Self::size(file) * x * 100,
            (x, _) => Self::size(file) * x,
        }
    }

    fn parse(&self, file: &u32, fetched: u32) -> (u32, bool) {
        let now = self.parsed_unwritten.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak_parsed_unwritten.fetch_max(now, Ordering::SeqCst);
        if self.panic_parse.contains(file) && self.panicked.lock().expect("lock").insert(*file) {
            panic!("injected parser panic on file {file}");
        }
        (fetched, false)
    }

    async fn archive(&self, _: &(u32, bool)) -> Result<(), Fail> {
        Ok(())
    }

    fn failed(&self, file: &u32, _: &'static str, _: u32, _: &'static str, _: String) -> (u32, bool) {
        (*file, true)
    }

    async fn dedup(&self, items: Vec<(u32, bool)>) -> Result<Vec<(u32, bool)>, Fail> {
        Ok(items)
    }

    fn batch_info(batch: &Vec<(u32, bool)>) -> usize {
        batch.len()
    }

    async fn write(&self, batch: &Vec<(u32, bool)>) -> Result<WriteReport, Fail> {
        if self.write_calls.fetch_add(1, Ordering::SeqCst) == 0 && self.panic_write_once {
            panic!("injected writer panic");
        }
        self.committed.lock().expect("lock").extend(batch.iter().copied());
        self.parsed_unwritten.fetch_sub(batch.iter().filter(|(_, dead)| !dead).count() as u64, Ordering::SeqCst);
        let dead = batch.iter().filter(|(_, d)| *d).count() as u64;
        Ok(WriteReport { files: batch.len() as u64, dead_letters: dead, ..WriteReport::default() })
    }

    async fn finish(&self) -> Result<(), Fail> {
        Ok(())
    }

    fn abandon(&self, _: &usize) {
        self.abandoned.fetch_add(1, Ordering::SeqCst);
    }

    fn is_retryable(_: &Fail) -> bool {
        false
    }
}

fn config() -> PipelineConfig {
    PipelineConfig {
        downloaders: 4,
        parsers: 2,
        archivers: 2,
        batch_files: 16,
        flush_interval: Duration::from_millis(20),
        limits: FlowLimits { max_files: 8, max_bytes: 1 << 20 },
        backoff: Duration::from_millis(1),
        ..PipelineConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_file_commits_once_despite_parser_and_writer_panics() {
    let stages = Arc::new(Memory {
        files: 200,
        panic_parse: [3, 77, 150].into_iter().collect(),
        panic_write_once: true,
        ..Memory::default()
    });
    let progress = Arc::new(Progress::default());
    let snapshot = tokio::time::timeout(Duration::from_secs(60), run(stages.clone(), config(), progress))
        .await
        .expect("finishes")
        .expect("succeeds");

    let mut ids: Vec<u32> = stages.committed.lock().expect("lock").iter().map(|(id, _)| *id).collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..200).collect::<Vec<_>>(), "each file exactly once");
    assert_eq!(snapshot.done, 200);
    assert_eq!(snapshot.discovered, 200);
    assert!(snapshot.restarts >= 4, "three parser panics and one writer panic: {snapshot:?}");
    // The batch being written and any queued behind it in the failed writer's mailbox are abandoned.
    assert!(stages.abandoned.load(Ordering::SeqCst) >= 1, "the failed writer's batch was abandoned");
    assert!(stages.peak_in_flight.load(Ordering::SeqCst) <= 8, "credits bound the files in flight");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_download_is_dead_lettered_and_the_rest_lands() {
    let stages = Arc::new(Memory { files: 50, broken: [7].into_iter().collect(), ..Memory::default() });
    let progress = Arc::new(Progress::default());
    let snapshot = run(stages.clone(), config(), progress).await.expect("succeeds");
    let committed = stages.committed.lock().expect("lock").clone();
    assert_eq!(committed.len(), 50);
    assert_eq!(committed.iter().filter(|(_, dead)| *dead).map(|(id, _)| *id).collect::<Vec<_>>(), vec![7]);
    assert_eq!(snapshot.totals.dead_letters, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_staging_area_finishes_at_once() {
    let stages = Arc::new(Memory::default());
    let snapshot = run(stages, config(), Arc::new(Progress::default())).await.expect("succeeds");
    assert_eq!((snapshot.discovered, snapshot.done), (0, 0));
}

/// The last partial batch goes as soon as the run's last file reaches the batcher, not at the flush timer's next
/// tick: with a timer of an hour the run still ends (the timeout fails the test if it waits for the tick).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_partial_batch_is_written_without_waiting_for_the_timer() {
    // Then with the listing ending 300 ms after its last file: the files all reach the batcher while it is still
    // open, so only the discoverer, once it ends, can tell the batcher they were the last.
    for listing_tail in [Duration::ZERO, Duration::from_millis(300)] {
        let stages = Arc::new(Memory { files: 5, listing_tail, ..Memory::default() });
        let hourly = PipelineConfig { flush_interval: Duration::from_secs(3600), ..config() };
        let snapshot =
            tokio::time::timeout(Duration::from_secs(60), run(stages.clone(), hourly, Arc::new(Progress::default())))
                .await
                .unwrap_or_else(|_| panic!("waited for the flush timer (listing tail {listing_tail:?})"))
                .expect("succeeds");
        assert_eq!((snapshot.discovered, snapshot.done), (5, 5));
        assert_eq!(stages.committed.lock().expect("lock").len(), 5);
    }
}

/// When the credits let in fewer files than a batch holds, a batch goes as soon as every file in flight has reached
/// the batcher: nothing else can join it until it is written. With a timer of an hour the run still ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_cannot_grow_is_written_without_waiting_for_the_timer() {
    // Bounded by files, then by bytes (files of 1,000 bytes, 3 KiB: the next file holds a file slot while it
    // waits for bytes, and must not count as on its way).
    for limits in [FlowLimits { max_files: 3, max_bytes: 1 << 20 }, FlowLimits { max_files: 32, max_bytes: 3 << 10 }] {
        let stages = Arc::new(Memory { files: 40, ..Memory::default() });
        let narrow = PipelineConfig { flush_interval: Duration::from_secs(3600), limits, ..config() };
        let snapshot =
            tokio::time::timeout(Duration::from_secs(60), run(stages.clone(), narrow, Arc::new(Progress::default())))
                .await
                .unwrap_or_else(|_| panic!("waited for the flush timer ({limits:?})"))
                .expect("succeeds");
        assert_eq!((snapshot.discovered, snapshot.done), (40, 40));
        assert_eq!(stages.committed.lock().expect("lock").len(), 40);
        assert!(stages.peak_in_flight.load(Ordering::SeqCst) <= 3, "credits bound the files in flight");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_request_drains_what_is_in_flight_and_ends_cleanly() {
    // Also with files that wait for credit for their text (gzip files) when the stop comes.
    for expand in [0, 50] {
        let limits = FlowLimits { max_files: 8, max_bytes: 200_000 };
        drains(Arc::new(Memory { files: 100_000, expand, ..Memory::default() }), PipelineConfig { limits, ..config() })
            .await;
    }
}

async fn drains(stages: Arc<Memory>, config: PipelineConfig) {
    let progress = Arc::new(Progress::default());
    let run = tokio::spawn(run(stages.clone(), config, progress.clone()));
    while progress.snapshot().done < 20 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    progress.request_stop();
    let snapshot =
        tokio::time::timeout(Duration::from_secs(30), run).await.expect("drains").expect("join").expect("ok");
    let committed = stages.committed.lock().expect("lock").len() as u64;
    assert!(snapshot.discovered < 100_000, "discovery stopped early");
    assert_eq!(committed, snapshot.discovered, "every file taken in was committed, none half-done");
    assert_eq!(snapshot.done, snapshot.discovered);
}

/// A file let in by its listed size whose text is far larger (a gzip file) takes credit for its text before it is
/// parsed: files of 1,000 bytes that expand to 50,000, under a budget of 200,000 bytes, are parsed and held at most
/// four at a time, where the file slots alone would let in 32. One whose text is larger than the whole budget passes
/// alone, and the run ends: downloaders waiting for credit hold none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_whose_text_outgrows_its_size_takes_credit_for_its_text() {
    let stages = Arc::new(Memory { files: 60, expand: 50, ..Memory::default() });
    let limits = FlowLimits { max_files: 32, max_bytes: 200_000 };
    let snapshot = tokio::time::timeout(
        Duration::from_secs(60),
        run(stages.clone(), PipelineConfig { limits, ..config() }, Arc::new(Progress::default())),
    )
    .await
    .expect("no deadlock")
    .expect("succeeds");
    assert_eq!((snapshot.discovered, snapshot.done), (60, 60));
    assert_eq!(stages.committed.lock().expect("lock").len(), 60);
    let peak = stages.peak_parsed_unwritten.load(Ordering::SeqCst);
    assert!((1..=4).contains(&peak), "at most 200,000 bytes of text parsed and unwritten: {peak} files of 50,000");
}
