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
    if kind.is_dir() || e.file_name().to_str().is_some_and(super::is_manifest) {
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
        let file = match open_beneath(&root, &path) {
            Some(file) => file,
            None => {
                let target = std::fs::canonicalize(&full).map_err(io)?;
                if !target.starts_with(&root) {
                    return Err(refuse("outside_staging", "a link out of staging: not followed"));
                }
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&target).map_err(io)?
            }
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

/// Opens `path` below `root` for reading (without blocking) in one path walk that the kernel keeps below `root`
/// (`openat2` with `RESOLVE_BENEATH`): a link that stays in staging is followed, one that would leave it is refused
/// there. `canonicalize`, the other way to check that, reads every component's link (7 `readlink` calls a file in a
/// `site=…/date=…` layout). `None` whenever `openat2` does not open it (a kernel before 5.6, an absolute link, a link
/// out of staging, a missing file): the caller then judges the path with `canonicalize`, so verdicts do not change.
fn open_beneath(root: &Path, path: &str) -> Option<std::fs::File> {
    use std::ffi::CString;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;

    let root_c = CString::new(root.as_os_str().as_bytes()).ok()?;
    let path_c = CString::new(path.as_bytes()).ok()?;
    // SAFETY: a NUL-terminated path and plain flags; the descriptor returned is owned below.
    let dir = unsafe { libc::open(root_c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if dir < 0 {
        return None;
    }
    // SAFETY: `dir` is a descriptor this function just opened and nothing else owns.
    let dir = unsafe { OwnedFd::from_raw_fd(dir) };
    // SAFETY: `open_how` is plain integers, for which all zeros is valid (and what openat2 wants of unused fields).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2(2) with a valid directory descriptor, a NUL-terminated path, and a pointer to an `open_how`
    // of the size passed; it only reads them.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path_c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    Some(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::fs::symlink;

    use super::open_beneath;

    fn read(file: std::fs::File) -> String {
        let mut s = String::new();
        let mut file = file;
        file.read_to_string(&mut s).expect("read");
        s
    }

    /// A file, or a link that stays in staging, opens in one walk; a link out of staging, or an absolute one, is
    /// left to `canonicalize` (`None`), and so is a missing file.
    #[test]
    fn opens_below_the_root_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("staging");
        std::fs::create_dir_all(root.join("site=1")).expect("mkdir");
        std::fs::write(root.join("site=1/a.xml"), "inside").expect("write");
        std::fs::write(dir.path().join("secret.xml"), "outside").expect("write");
        symlink("a.xml", root.join("site=1/relative.xml")).expect("link");
        symlink("../../secret.xml", root.join("site=1/out.xml")).expect("link");
        symlink(root.join("site=1/a.xml"), root.join("site=1/absolute.xml")).expect("link");
        symlink("site=1", root.join("again")).expect("link");

        let open = |p: &str| open_beneath(&root, p);
        assert_eq!(open("site=1/a.xml").map(read).as_deref(), Some("inside"));
        assert_eq!(open("site=1/relative.xml").map(read).as_deref(), Some("inside"));
        assert_eq!(open("again/a.xml").map(read).as_deref(), Some("inside"), "a linked folder inside staging");
        assert!(open("site=1/out.xml").is_none(), "a link out of staging is not followed here");
        assert!(open("site=1/absolute.xml").is_none(), "an absolute link is left to canonicalize");
        assert!(open("site=1/missing.xml").is_none());
        assert!(open("../secret.xml").is_none());
    }
}
