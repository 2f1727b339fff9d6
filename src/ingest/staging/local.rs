//! A local staging folder, walked with `walkdir` and read with `std::fs`, rather than through `object_store`'s
//! local store: that store refuses names an object store cannot hold (a newline, bytes that are not UTF-8) by
//! failing the whole listing, percent-encodes others so that they are not found again when read, and follows
//! links anywhere. Here every entry is judged alone: a file poslake cannot or must not read is listed with a
//! [`Refusal`], becomes a dead letter with that reason, and the rest of the folder is ingested.

use std::io::Read;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::Stream;
use tokio::sync::mpsc;
use walkdir::{DirEntry, WalkDir};

use super::{Refusal, StagedFile, StagingError};

/// Entries walked ahead of the pipeline: the walk waits (on its blocking thread) once this many are unread, so a
/// folder of millions of files is never held in memory.
const AHEAD: usize = 1024;

/// Every entry under `root` (canonical) that is not hidden nor under one of the `exclude` folders, as the walk
/// finds them.
pub(super) fn list(root: PathBuf, exclude: Vec<PathBuf>) -> impl Stream<Item = StagedFile> + Send + 'static {
    let (tx, rx) = mpsc::channel(AHEAD);
    tokio::task::spawn_blocking(move || walk(&root, &exclude, &tx));
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|file| (file, rx)) })
}

fn walk(root: &Path, exclude: &[PathBuf], tx: &mpsc::Sender<StagedFile>) {
    let entries = WalkDir::new(root)
        .follow_links(false)
        .min_depth(1)
        .into_iter()
        // Hidden names are not descended into (an upload tool's `.tmp/`, a `.git/`), nor the excluded folders.
        .filter_entry(|e| {
            !e.file_name().as_encoded_bytes().starts_with(b".") && !exclude.iter().any(|x| x == e.path())
        });
    for entry in entries {
        let file = match entry {
            Ok(e) => match judge(root, &e) {
                Some(file) => file,
                None => continue,
            },
            // A folder (or entry) that cannot be read: recorded under its own path, and the walk goes on.
            Err(e) => {
                let path = e.path().map_or_else(|| ".".to_owned(), |p| relative(root, p));
                refused(path, 0, "unreadable_folder", format!("cannot be listed: {e}"))
            }
        };
        if tx.blocking_send(file).is_err() {
            // The run stopped listening (Ctrl-C, or a fatal error): stop walking.
            return;
        }
    }
}

/// What the listing says about one entry: a file to read, a refusal, or nothing (a folder, a manifest).
fn judge(root: &Path, e: &DirEntry) -> Option<StagedFile> {
    let kind = e.file_type();
    if kind.is_dir() || e.file_name().as_encoded_bytes().starts_with(b"manifest.") {
        return None;
    }
    let path = relative(root, e.path());
    if e.path().strip_prefix(root).ok().and_then(Path::to_str).is_none() {
        return Some(refused(
            path,
            0,
            "unusable_name",
            "the name is not valid UTF-8; rename the file to ingest it".into(),
        ));
    }
    if kind.is_symlink() {
        return match std::fs::canonicalize(e.path()) {
            Err(err) => {
                Some(refused(path, 0, "dangling_link", format!("a link whose target cannot be reached: {err}")))
            }
            Ok(target) if !target.starts_with(root) => Some(refused(
                path,
                0,
                "outside_staging",
                format!("a link to {}, outside staging: not followed", target.display()),
            )),
            Ok(target) => match std::fs::metadata(&target) {
                Ok(m) if m.is_file() => Some(StagedFile::new(path, m.len())),
                // A link to a folder of staging: its files are listed where they are.
                Ok(m) if m.is_dir() => None,
                Ok(_) => Some(refused(path, 0, "not_a_file", "a link to a FIFO, socket or device".into())),
                Err(err) => {
                    Some(refused(path, 0, "dangling_link", format!("a link whose target cannot be read: {err}")))
                }
            },
        };
    }
    if !kind.is_file() {
        return Some(refused(path, 0, "not_a_file", "a FIFO, socket or device, not a file".into()));
    }
    // A file removed since it was listed reads as missing later, and is dead-lettered then.
    let size = e.metadata().map_or(0, |m| m.len());
    Some(StagedFile::new(path, size))
}

fn refused(path: String, size: u64, kind: &'static str, reason: String) -> StagedFile {
    StagedFile { path, size, refused: Some(Refusal { kind, reason }), replay_of: None }
}

/// The path below `root`, with `/` between folders (a name that is not UTF-8 shown with replacement characters).
fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root).unwrap_or(path).to_string_lossy().into_owned()
}

/// The file at `path` below `root`, at most `limit` bytes. Checked again when opened, since the folder may have
/// changed since the listing: a link must still lead into staging, and only a regular file is read (opened
/// without blocking, so that a FIFO put in its place cannot hang the reader).
pub(super) async fn read(root: &Path, path: &str, limit: u64) -> Result<Bytes, StagingError> {
    let full = root.join(path);
    let (root, path) = (root.to_path_buf(), path.to_owned());
    let name = path.clone();
    tokio::task::spawn_blocking(move || {
        let io = |source: std::io::Error| StagingError::Io { path: path.clone(), source };
        let refuse = |kind: &'static str, reason: &str| StagingError::Refused {
            path: path.clone(),
            kind,
            reason: reason.to_owned(),
        };
        let target = std::fs::canonicalize(&full).map_err(io)?;
        if !target.starts_with(&root) {
            return Err(refuse("outside_staging", "a link out of staging: not followed"));
        }
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&target).map_err(io)?
        };
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(refuse("not_a_file", "not a regular file (a folder, FIFO, socket or device) when read"));
        }
        let mut bytes = Vec::with_capacity(meta.len().min(limit) as usize + 1);
        file.take(limit.saturating_add(1)).read_to_end(&mut bytes).map_err(io)?;
        if bytes.len() as u64 > limit {
            return Err(StagingError::TooLarge { path: path.clone(), size: bytes.len() as u64, limit });
        }
        Ok(Bytes::from(bytes))
    })
    .await
    .map_err(|e| StagingError::Io { path: name, source: std::io::Error::other(e) })?
}
