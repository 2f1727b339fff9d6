//! Staging storage: where POS files arrive. A local folder by default (walked here, see [`local`]), or Azure Blob
//! Storage / ADLS Gen2 named by URL, through `object_store`. Listing is a stream (paged by the store, or walked a
//! folder at a time): the whole listing is never held in memory.

mod azure_pages;
mod local;

pub(crate) use azure_pages::AzurePages;
use azure_pages::Listed;

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt};

use super::location::{Location, LocationError};

/// A file found in staging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedFile {
    /// Path within the staging store.
    pub path: String,
    pub size: u64,
    /// Why the listing already knows this entry cannot be ingested (a name that is not UTF-8, a link out of
    /// staging, a FIFO): it is dead-lettered with this reason instead of being read.
    pub refused: Option<Refusal>,
    /// A dead letter taken again (`poslake replay`): the content hash it failed with, under which the bronze
    /// archive may hold it when staging no longer does (empty if it was refused before it was read).
    pub replay_of: Option<String>,
}

impl StagedFile {
    pub fn new(path: impl Into<String>, size: u64) -> Self {
        StagedFile { path: path.into(), size, refused: None, replay_of: None }
    }
}

/// An entry of the listing that is not a file poslake may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The dead letter's kind: `unusable_name`, `outside_staging`, `dangling_link`, `not_a_file`,
    /// `unreadable_folder`.
    pub kind: &'static str,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    #[error("staging {location}: {source}")]
    Store { location: String, source: object_store::Error },
    #[error("staging {location}: {reason} (staging is {})", super::location::FORMS)]
    Location { location: String, reason: String },
    #[error("staging {path}: {reason}")]
    Refused { path: String, kind: &'static str, reason: String },
    #[error("staging {path}: {size} bytes, over the limit of {limit} bytes; not read")]
    TooLarge { path: String, size: u64, limit: u64 },
    /// The file read is not the file listed: it was replaced since the listing (the next run lists it anew), or its
    /// name is one the object-store client cannot address and it reached another object (a blob name ending in
    /// `/` reads as the name without it).
    #[error(
        "staging {path}: listed with {listed} bytes, but {found} bytes are there now: changed since it was listed \
         (the next run takes it as it is then), or a blob whose name the client reads as another's; not taken"
    )]
    Changed { path: String, listed: u64, found: u64 },
    #[error("staging {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// The lake's own folders: its tables, its embedded dedup store, its commit intents.
const LAKE_OWN: [&str; 3] = ["warehouse", "dedup", "commits"];

/// The reason a local staging folder that does not exist is refused for.
const NO_SUCH_FOLDER: &str = "no such folder";

impl StagingError {
    /// A local staging folder that does not exist.
    pub fn is_missing_folder(&self) -> bool {
        matches!(self, StagingError::Location { reason, .. } if reason == NO_SUCH_FOLDER)
    }

    /// Nothing is there under that name (any more).
    pub fn is_not_found(&self) -> bool {
        match self {
            StagingError::Store { source: object_store::Error::NotFound { .. }, .. } => true,
            StagingError::Io { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
            _ => false,
        }
    }

    /// Storage errors are worth a retry (a network blip, a throttled request, a file still being written) except a
    /// missing object and what the listing or the size already ruled out.
    pub fn is_retryable(&self) -> bool {
        match self {
            StagingError::Location { .. }
            | StagingError::Refused { .. }
            | StagingError::TooLarge { .. }
            | StagingError::Changed { .. } => false,
            StagingError::Io { .. } | StagingError::Store { .. } => !self.is_not_found(),
        }
    }

    /// The dead letter's kind for a file refused before it was read; `None` for a failure worth retrying.
    pub fn refusal_kind(&self) -> Option<&'static str> {
        match self {
            StagingError::Refused { kind, .. } => Some(kind),
            StagingError::TooLarge { .. } => Some("too_large"),
            StagingError::Changed { .. } => Some("changed"),
            _ => None,
        }
    }
}

/// Leaves out what the generator and operators put beside the data: manifests ([`is_manifest`]), and anything hidden
/// (a name or a folder under the prefix starting with `.`, such as an upload tool's `.tmp/` or a `.git/`).
fn is_pos_file(path: &str, prefix: Option<&StorePath>) -> bool {
    let below = match prefix {
        Some(p) => path.strip_prefix(p.as_ref()).unwrap_or(path),
        None => path,
    };
    let name = below.rsplit('/').next().unwrap_or(below);
    // `.` and `..` are not hidden names but names the store cannot address: they are listed, and refused.
    let hidden = |segment: &str| segment.starts_with('.') && segment != "." && segment != "..";
    !is_manifest(name) && !below.split('/').any(hidden)
}

/// A manifest beside the data (the generator's `manifest.json` and `manifest.jsonl`, an operator's `manifest.csv`),
/// not a POS file. A `manifest.xml` or `manifest.*.gz` is read like any file: until session 32 every `manifest.*`
/// was skipped, so POS transactions in a file of that name were never seen (a hostile-input audit found it). Read,
/// it lands, or it is a dead letter with its reason (`unknown_dialect` for an XML listing of files).
fn is_manifest(name: &str) -> bool {
    let Some(ext) = name.strip_prefix("manifest.") else { return false };
    let ext = ext.to_ascii_lowercase();
    !(ext.ends_with("xml") || ext.ends_with("gz"))
}

/// Whether `path` is `folder` or lies below it (as [`StorePath::prefix_matches`], for names it cannot parse too).
fn is_below(path: &str, folder: &StorePath) -> bool {
    let folder = folder.as_ref();
    folder.is_empty() || path.strip_prefix(folder).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[derive(Clone, Debug)]
pub struct Staging {
    source: Source,
    /// The location as the operator gave it, for messages.
    name: Arc<str>,
}

#[derive(Clone, Debug)]
enum Source {
    /// A local folder, walked and read with the file system's own calls: any file name works, links are not
    /// followed out of the folder, and a bad entry is refused alone instead of failing the listing.
    Local { root: PathBuf, exclude: Vec<PathBuf> },
    /// Any object store (Azure), under an optional prefix, less the `exclude` prefixes; for Azure, listed by
    /// `pages`.
    Store {
        store: Arc<dyn ObjectStore>,
        pages: Option<Arc<AzurePages>>,
        prefix: Option<StorePath>,
        exclude: Vec<StorePath>,
    },
    /// A local folder that no longer exists (a replay reads from the archive): nothing listed, nothing found.
    Gone,
}

impl Staging {
    /// Staging as the operator names it: a URL with a scheme (`az://`, `abfss://`, `https://…windows.net/…`,
    /// `file://`) or else a local folder.
    pub fn open(location: &std::path::Path) -> Result<Self, StagingError> {
        match crate::config::staging_url(location) {
            Some(url) => Self::from_url(url),
            None => Self::local(location),
        }
    }

    /// Azure Blob Storage or ADLS Gen2 (credentials from the `AZURE_*` environment variables `object_store`
    /// reads: an account key, a SAS token, a service principal, a managed identity or the Azure CLI; Azurite with
    /// `AZURE_STORAGE_USE_EMULATOR=true`), or a `file://` folder. The URL's path is the prefix listed.
    pub fn from_url(location: &str) -> Result<Self, StagingError> {
        match super::location::resolve(std::path::Path::new(location)) {
            Ok(Location::Folder(dir)) => Self::local(&dir),
            Ok(Location::Store { store, prefix, pages }) => Ok(Staging {
                source: Source::Store { store, pages, prefix, exclude: Vec::new() },
                name: location.into(),
            }),
            Err(LocationError::Refused(reason)) => {
                Err(StagingError::Location { location: location.to_owned(), reason })
            }
            Err(LocationError::Store(source)) => Err(StagingError::Store { location: location.to_owned(), source }),
        }
    }

    /// A local folder, which must exist: a missing one is more likely a typo or an unmounted volume than an
    /// empty staging area.
    pub fn local(root: &std::path::Path) -> Result<Self, StagingError> {
        let name = root.display().to_string();
        match std::fs::metadata(root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(StagingError::Location { location: name, reason: "not a folder".into() });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StagingError::Location { location: name, reason: NO_SUCH_FOLDER.into() });
            }
            Err(source) => return Err(StagingError::Io { path: name, source }),
        }
        // Canonical, so that a link's target can be checked against it.
        let root = std::fs::canonicalize(root).map_err(|source| StagingError::Io { path: name.clone(), source })?;
        Ok(Staging { source: Source::Local { root, exclude: Vec::new() }, name: name.into() })
    }

    /// A local staging folder that no longer exists, for a replay that may read every file from the archive.
    pub fn gone(location: &std::path::Path) -> Self {
        Staging { source: Source::Gone, name: location.display().to_string().into() }
    }

    /// Any object store (Azure, S3, memory), under an optional prefix.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: Option<&str>) -> Self {
        let name = format!("{store}/{}", prefix.unwrap_or_default()).into();
        let prefix = prefix.map(StorePath::from);
        Staging { source: Source::Store { store, pages: None, prefix, exclude: Vec::new() }, name }
    }

    /// Refuses a lake that is the staging folder itself: its own tables and archive would be listed as files to
    /// ingest, and leaving them out would leave out everything. (A lake inside staging is left out of the listing,
    /// see [`Staging::excluding`].)
    /// So is staging inside the lake's own folders ([`LAKE_OWN`]): their files would be listed as files to ingest and
    /// each made a dead letter. Another folder in the lake's (`LAKE/incoming`), or its raw archive (`bronze/`), may be
    /// staging.
    pub fn refuse_as_lake(&self, lake: &std::path::Path) -> Result<(), StagingError> {
        let Source::Local { root, .. } = &self.source else { return Ok(()) };
        match std::fs::canonicalize(lake) {
            Ok(lake) if lake == *root => Err(StagingError::Refused {
                path: self.name.to_string(),
                kind: "lake",
                reason: "is the lake folder too: give the lake a folder of its own, beside staging or inside it".into(),
            }),
            Ok(lake) if LAKE_OWN.iter().any(|own| root.starts_with(lake.join(own))) => Err(StagingError::Refused {
                path: self.name.to_string(),
                kind: "lake",
                reason: format!(
                    "lies inside the lake at {} (its tables, store or commits would be taken for POS files): give \
                     staging a folder of its own",
                    lake.display()
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Leaves `folder` (canonical) out of a local listing: the lake, when it lies inside staging.
    pub fn excluding(mut self, folder: &std::path::Path) -> Self {
        if let Source::Local { exclude, .. } = &mut self.source {
            exclude.push(folder.to_path_buf());
        }
        self
    }

    /// Leaves the archive's files out of the listing, when the archive lies inside staging (in the same folder, or
    /// in the same container below the staging prefix).
    pub fn excluding_archive(mut self, at: &super::archive::ArchivedAt) -> Self {
        use super::archive::ArchivedAt;
        match (&mut self.source, at) {
            (Source::Local { exclude, .. }, ArchivedAt::Folder(folder)) => exclude.push(folder.clone()),
            // Not when staging lies inside the archive's files (a lake rebuilt from its archive): that would leave
            // out everything.
            (
                Source::Store { store, exclude, prefix: staging, .. },
                ArchivedAt::Container { store: container, prefix },
            ) if store.to_string() == *container && !staging.as_ref().is_some_and(|s| s.prefix_matches(prefix)) => {
                exclude.push(prefix.clone());
            }
            _ => {}
        }
        self
    }

    /// Every POS file under the prefix, as the store lists them.
    pub fn list(&self) -> futures::stream::BoxStream<'static, Result<StagedFile, StagingError>> {
        match &self.source {
            Source::Local { root, exclude } => local::list(root.clone(), exclude.clone()).map(Ok).boxed(),
            Source::Gone => futures::stream::empty().boxed(),
            Source::Store { store, pages, prefix, exclude } => {
                let name = self.name.clone();
                let prefix = prefix.clone();
                let exclude = exclude.clone();
                // A prefix under which the store holds nothing at all is more likely a typo than an empty staging
                // area (a missing folder is an error for the same reason); a store has no folders to check, so it
                // is said once the listing ends.
                // Objects listed, and whether the listing failed (then the error says what happened, not this).
                let listed =
                    Arc::new((std::sync::atomic::AtomicU64::new(0), std::sync::atomic::AtomicBool::new(false)));
                let (counted, last_name) = (listed.clone(), name.clone());
                let nothing = futures::stream::once(async move {
                    let (count, failed) = &*counted;
                    if count.load(std::sync::atomic::Ordering::Relaxed) == 0
                        && !failed.load(std::sync::atomic::Ordering::Relaxed)
                    {
                        tracing::warn!(staging = %last_name, "staging holds no object under this prefix: is it the right one?");
                    }
                })
                .filter_map(|()| futures::future::ready(None));
                let blobs = match pages {
                    Some(pages) => pages.clone().list(prefix.as_ref()),
                    None => store
                        .list(prefix.as_ref())
                        .map(|meta| meta.map(|m| Listed::Blob { name: m.location.into(), size: m.size }))
                        .boxed(),
                };
                blobs
                    .inspect(move |blob| match blob {
                        Ok(_) => _ = listed.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                        Err(_) => listed.1.store(true, std::sync::atomic::Ordering::Relaxed),
                    })
                    .filter_map(move |blob| {
                        let taken = |path: &str| {
                            is_pos_file(path, prefix.as_ref()) && !exclude.iter().any(|x| is_below(path, x))
                        };
                        futures::future::ready(match blob {
                            Ok(Listed::Blob { name, size }) if taken(&name) => Some(Ok(StagedFile::new(name, size))),
                            Ok(Listed::Unaddressable { name, size, reason }) if taken(&name) => {
                                let refused = Some(Refusal { kind: "unusable_name", reason });
                                Some(Ok(StagedFile { refused, ..StagedFile::new(name, size) }))
                            }
                            Ok(_) => None,
                            Err(source) => {
                                Some(Err(StagingError::Store { location: format!("listing {name}"), source }))
                            }
                        })
                    })
                    .chain(nothing)
                    .boxed()
            }
        }
    }

    /// The file's bytes, refusing (without reading it) a file the listing refused or one larger than `limit`.
    /// Whether a local staging folder holds an entry whose name, made UTF-8 with U+FFFD for the bytes that are not,
    /// is `path`'s (a name that is not UTF-8, as the ledger keeps it). A folder on the way that is itself such a name
    /// cannot be followed: then it answers yes.
    pub fn holds_lossy(&self, path: &str) -> bool {
        let Source::Local { root, .. } = &self.source else { return true };
        let (folder, name) = path.rsplit_once('/').unwrap_or(("", path));
        if folder.contains('\u{FFFD}') {
            return true;
        }
        match std::fs::read_dir(root.join(folder)) {
            Ok(entries) => entries.flatten().any(|e| e.file_name().to_string_lossy() == name),
            Err(_) => false,
        }
    }

    /// Whether staging holds anything under `path` (a file, or any entry a listing would name).
    pub async fn holds(&self, path: &str) -> Result<bool, StagingError> {
        match &self.source {
            Source::Local { root, .. } => Ok(std::fs::symlink_metadata(root.join(path)).is_ok()),
            Source::Gone => Ok(false),
            Source::Store { store, .. } => {
                let Ok(location) = StorePath::parse(path) else { return Ok(false) };
                match store.head(&location).await {
                    Ok(_) => Ok(true),
                    Err(object_store::Error::NotFound { .. }) => Ok(false),
                    Err(source) => Err(StagingError::Store { location: path.to_owned(), source }),
                }
            }
        }
    }

    pub async fn get(&self, file: &StagedFile, limit: u64) -> Result<Bytes, StagingError> {
        if let Some(r) = &file.refused {
            return Err(StagingError::Refused { path: file.path.clone(), kind: r.kind, reason: r.reason.clone() });
        }
        if file.size > limit {
            return Err(StagingError::TooLarge { path: file.path.clone(), size: file.size, limit });
        }
        let bytes = match &self.source {
            Source::Local { root, .. } => local::read(root, &file.path, limit).await?,
            Source::Gone => {
                return Err(StagingError::Io {
                    path: file.path.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("{} no longer exists", self.name),
                    ),
                });
            }
            Source::Store { store, .. } => {
                // A name the client cannot read as written (a replay takes the listing's refusals again).
                azure_pages::address_of(&file.path).map_err(|why| StagingError::Refused {
                    path: file.path.clone(),
                    kind: "unusable_name",
                    reason: azure_pages::unaddressable(&why),
                })?;
                // An empty file needs no GET (the parser refuses it as `empty`).
                if file.size == 0 {
                    return Ok(Bytes::new());
                }
                // The listing's location string is already encoded: parse it as it is, never encode it again.
                let path = StorePath::parse(&file.path)
                    .map_err(|e| StagingError::Store { location: file.path.clone(), source: e.into() })?;
                let get = store
                    .get(&path)
                    .await
                    .map_err(|source| StagingError::Store { location: file.path.clone(), source })?;
                // Judged by the size the store answers with, before the body is read: a blob that grew past the
                // limit since the listing is never held in memory.
                let found = get.meta.size;
                if found > limit {
                    return Err(StagingError::TooLarge { path: file.path.clone(), size: found, limit });
                }
                if found != file.size {
                    return Err(StagingError::Changed { path: file.path.clone(), listed: file.size, found });
                }
                get.bytes().await.map_err(|source| StagingError::Store { location: file.path.clone(), source })?
            }
        };
        // What was read is what the ledger will say was taken: its size is the listing's (both reads keep to the
        // limit themselves).
        match bytes.len() as u64 {
            n if n != file.size => Err(StagingError::Changed { path: file.path.clone(), listed: file.size, found: n }),
            _ => Ok(bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lists_pos_files_and_skips_manifests() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("a/b")).expect("mkdir");
        std::fs::write(dir.path().join("a/b/one.xml"), b"<x/>").expect("write");
        std::fs::write(dir.path().join("two.xml.gz"), b"gz").expect("write");
        std::fs::write(dir.path().join("manifest.json"), b"{}").expect("write");
        std::fs::write(dir.path().join("a/manifest.csv"), b"a,b").expect("write");
        std::fs::write(dir.path().join("a/manifest.xml"), b"<x/>").expect("write");
        // Hidden files and everything in hidden folders (uploads in progress, tools' state) are not POS files.
        std::fs::write(dir.path().join("a/.partial.xml"), b"<x/>").expect("write");
        std::fs::create_dir_all(dir.path().join(".tmp/c")).expect("mkdir");
        std::fs::write(dir.path().join(".tmp/c/three.xml"), b"<x/>").expect("write");
        let staging = Staging::local(dir.path()).expect("staging");
        let mut files: Vec<StagedFile> = staging.list().map(|r| r.expect("listed")).collect().await;
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let listed: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(listed, ["a/b/one.xml", "a/manifest.xml", "two.xml.gz"], "XML is read whatever its name");
        assert_eq!(staging.get(&files[0], 1 << 20).await.expect("get").as_ref(), b"<x/>");
    }

    /// Names an object store cannot hold are files like any other here; what must not be read is refused alone,
    /// with a reason, and the rest is listed and read.
    #[tokio::test]
    async fn odd_names_links_and_fifos_are_judged_one_by_one() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("dïr")).expect("mkdir");
        for name in ["ünïcødé 日本 €.xml", "a%b#c?[1]~.xml", "new\nline.xml", "dïr/plain.xml"] {
            std::fs::write(root.join(name), name).expect("write");
        }
        std::fs::write(root.join(std::ffi::OsStr::from_bytes(b"bad\xff\xfe.xml")), "x").expect("write");
        std::fs::write(outside.path().join("secret.xml"), "secret").expect("write");
        std::os::unix::fs::symlink(outside.path().join("secret.xml"), root.join("out.xml")).expect("link");
        std::os::unix::fs::symlink(root.join("dïr/plain.xml"), root.join("in.xml")).expect("link");
        std::os::unix::fs::symlink(root.join("gone.xml"), root.join("dangling.xml")).expect("link");
        std::os::unix::fs::symlink("..", root.join("dïr/loop")).expect("link");
        let fifo = std::ffi::CString::new(root.join("pipe.xml").as_os_str().as_bytes()).expect("path");
        // SAFETY: a valid NUL-terminated path; mkfifo only creates a file system entry.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0, "mkfifo");

        let staging = Staging::local(root).expect("staging");
        let mut files: Vec<StagedFile> = staging.list().map(|r| r.expect("listed")).collect().await;
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let judged: Vec<(&str, Option<&str>)> =
            files.iter().map(|f| (f.path.as_str(), f.refused.as_ref().map(|r| r.kind))).collect();
        assert_eq!(
            judged,
            [
                ("a%b#c?[1]~.xml", None),
                ("bad\u{fffd}\u{fffd}.xml", Some("unusable_name")),
                ("dangling.xml", Some("dangling_link")),
                ("dïr/plain.xml", None),
                ("in.xml", None),
                ("new\nline.xml", None),
                ("out.xml", Some("outside_staging")),
                ("pipe.xml", Some("not_a_file")),
                ("ünïcødé 日本 €.xml", None),
            ]
        );
        for f in &files {
            let got = staging.get(f, 1 << 20).await;
            match &f.refused {
                None => {
                    let want = if f.path == "in.xml" { "dïr/plain.xml" } else { f.path.as_str() };
                    assert_eq!(got.expect("read").as_ref(), want.as_bytes(), "{}", f.path);
                }
                Some(r) => {
                    let err = got.expect_err("refused");
                    assert_eq!(err.refusal_kind(), Some(r.kind));
                    assert!(!err.is_retryable());
                }
            }
        }
        // Over the limit is refused from the listed size, without reading.
        let plain = files.iter().find(|f| f.path == "dïr/plain.xml").expect("listed");
        let err = staging.get(plain, 3).await.expect_err("over the limit");
        assert_eq!(err.refusal_kind(), Some("too_large"));
    }

    /// A file read is the file listed, or it is not taken: replaced since the listing (locally, or in a store), or
    /// a blob whose name the client reads as another's. One that grew past the limit is refused from the size the
    /// store answers with, before its body is read.
    #[tokio::test]
    async fn a_file_that_changed_since_it_was_listed_is_not_taken() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.xml"), b"<x/>").expect("write");
        let local = Staging::local(dir.path()).expect("staging");
        let listed: Vec<StagedFile> = local.list().map(|r| r.expect("listed")).collect().await;
        std::fs::write(dir.path().join("a.xml"), b"<x>longer</x>").expect("rewrite");
        let err = local.get(&listed[0], 1 << 20).await.expect_err("changed");
        assert!(matches!(err, StagingError::Changed { listed: 4, found: 13, .. }), "{err}");
        assert_eq!((err.refusal_kind(), err.is_retryable()), (Some("changed"), false));

        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let put = |name: &str, bytes: &'static [u8]| {
            let store = store.clone();
            let path = StorePath::from(name);
            async move { store.put(&path, bytes.into()).await.expect("put") }
        };
        put("pos/a.xml", b"<x/>").await;
        put("pos/b.xml", b"<y/>").await;
        let staging = Staging::new(store.clone(), Some("pos"));
        let mut listed: Vec<StagedFile> = staging.list().map(|r| r.expect("listed")).collect().await;
        listed.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(staging.get(&listed[1], 1 << 20).await.expect("unchanged").as_ref(), b"<y/>");
        put("pos/a.xml", b"<x>other</x>").await;
        let err = staging.get(&listed[0], 1 << 20).await.expect_err("changed");
        assert!(matches!(err, StagingError::Changed { listed: 4, found: 12, .. }), "{err}");
        put("pos/b.xml", &[b' '; 4096]).await;
        let err = staging.get(&listed[1], 1024).await.expect_err("grown past the limit");
        assert!(matches!(err, StagingError::TooLarge { size: 4096, limit: 1024, .. }), "{err}");

        // An empty object is empty without a GET: a folder marker, listed under a name it cannot be read by, is
        // refused by the parser once (as `empty`) rather than not found by every run.
        put("pos/dir", b"").await;
        let marker = StagedFile::new("pos/dir", 0);
        store.delete(&StorePath::from("pos/dir")).await.expect("delete");
        assert!(staging.get(&marker, 1 << 20).await.expect("empty").is_empty());
    }

    /// A lake kept inside its staging folder is left out of the listing.
    #[tokio::test]
    async fn the_excluded_folder_is_not_listed() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("lake/bronze")).expect("mkdir");
        std::fs::write(dir.path().join("lake/bronze/a.xml"), "<x/>").expect("write");
        std::fs::write(dir.path().join("b.xml"), "<x/>").expect("write");
        let lake = std::fs::canonicalize(dir.path().join("lake")).expect("canonical");
        let staging = Staging::local(dir.path()).expect("staging").excluding(&lake);
        let files: Vec<String> = staging.list().map(|r| r.expect("listed").path).collect().await;
        assert_eq!(files, ["b.xml"]);
    }

    /// A missing folder is an error (a typo, an unmounted volume), not an empty staging area.
    #[test]
    fn a_missing_folder_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Staging::local(&dir.path().join("typo")).expect_err("missing");
        assert!(err.to_string().contains("no such folder"), "{err}");
        std::fs::write(dir.path().join("file"), "x").expect("write");
        let err = Staging::local(&dir.path().join("file")).expect_err("a file");
        assert!(err.to_string().contains("not a folder"), "{err}");
    }

    /// Under a prefix, only the part below it counts: a prefix of its own may have any name.
    #[test]
    fn hidden_is_judged_below_the_prefix() {
        let prefix = StorePath::from(".incoming/pos");
        assert!(is_pos_file(".incoming/pos/site=1/a.xml", Some(&prefix)));
        assert!(!is_pos_file(".incoming/pos/.tmp/a.xml", Some(&prefix)));
        assert!(!is_pos_file(".incoming/pos/site=1/manifest.json", Some(&prefix)));
        assert!(!is_pos_file("site=1/.a.xml", None));
        assert!(is_pos_file("site=1/a.manifest.xml", None));
        assert!(is_pos_file("site=1/manifest.xml", None), "XML is read, whatever its name");
        assert!(is_pos_file("site=1/manifest.XML.GZ", None));
        assert!(is_pos_file("site=1/manifest.gz", None));
        assert!(!is_pos_file("manifest.jsonl", None));
        assert!(!is_pos_file("site=1/manifest.csv", None));
    }
}
