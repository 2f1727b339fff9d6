//! The bronze archive of raw files: every file is written unchanged to
//! `bronze/raw/vendor=<dialect>/business_date=<date>/<name>`, atomically and only if absent. A different file of
//! the same name never overwrites the first: it is stored beside it under its content hash. The archive is in the
//! lake by default, or in a folder or an Azure container of its own (`archive`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::NaiveDate;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::location::{Location, LocationError, resolve};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive {location}: {source}")]
    Store { location: String, source: object_store::Error },
    #[error("archive {location}: {reason} (the archive is {})", super::location::FORMS)]
    Location { location: String, reason: String },
    /// Every name the file could go under holds other bytes: only names made to collide could do this.
    #[error("archive: {name} and the names made from its content hash all hold other files; not archived")]
    NoFreeName { name: String },
}

/// Where a file went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Archived {
    /// Written now.
    Written(String),
    /// The same content was already archived there (a retry or a re-send).
    AlreadyThere(String),
}

#[derive(Clone, Debug)]
pub struct Archive {
    store: Arc<dyn ObjectStore>,
    /// The location as the operator gave it, for messages.
    name: Arc<str>,
    at: ArchivedAt,
}

/// Where archived files lie, for a staging listing to leave them out: an archive placed inside staging must not
/// feed its own copies back in as new files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArchivedAt {
    /// `bronze/raw` under a local archive folder (canonical).
    Folder(PathBuf),
    /// `bronze/raw` under a prefix of an object store's container, named by the store's `Display` (which names the
    /// account and the container).
    Container { store: String, prefix: StorePath },
    /// A store no staging can share (a test's memory store).
    Elsewhere,
}

/// The archive's files lie below this, under the archive's root.
const RAW: &str = "bronze/raw";

/// What a store archive's first run writes to check that it may write (hidden from staging listings).
const MARKER: &str = "bronze/.poslake";

/// Longest archived file name once encoded: the store percent-encodes `%`, `#`, non-ASCII and more (`é` takes 6
/// bytes, a CJK character 9) and writes through a temporary name a few bytes longer, within a file system's 255.
const MAX_NAME_BYTES: usize = 200;

/// The name a file is archived under: its own, or, when that would be too long once encoded, as much of it as fits
/// followed by `~` and the content hash (which keeps it apart from any other cut the same way) and its extension.
fn archived_name(base: &str, hash: &str) -> String {
    let encoded = |s: &str| object_store::path::PathPart::from(s).as_ref().len();
    if encoded(base) <= MAX_NAME_BYTES {
        return base.to_owned();
    }
    // The extension, double ones (`.xml.gz`) included.
    let (stem, ext) = match base.match_indices('.').map(|(i, _)| i).find(|&dot| dot > 0 && base.len() - dot <= 12) {
        Some(dot) => base.split_at(dot),
        None => (base, ""),
    };
    let suffix = format!("~{}{ext}", short(hash));
    let room = MAX_NAME_BYTES.saturating_sub(encoded(&suffix));
    let mut cut = String::new();
    let mut used = 0;
    for c in stem.chars() {
        let mut buf = [0u8; 4];
        let n = encoded(c.encode_utf8(&mut buf));
        if used + n > room {
            break;
        }
        cut.push(c);
        used += n;
    }
    cut + &suffix
}

/// Where a file may be archived, in order: under its own name; when another file holds that name, under its short
/// hash and the name; and, should a file named so in staging hold that one too, under its whole hash and the name.
fn locations(vendor: &str, business_date: Option<NaiveDate>, name: &str, hash: &str) -> [String; 3] {
    let date = business_date.map_or_else(|| "unknown".to_owned(), |d| d.to_string());
    let base = name.rsplit('/').next().unwrap_or(name);
    let dir = format!("{RAW}/vendor={vendor}/business_date={date}");
    [
        format!("{dir}/{}", archived_name(base, hash)),
        format!("{dir}/{}", archived_name(&format!("{}.{base}", short(hash)), hash)),
        format!("{dir}/{}", archived_name(&format!("{hash}.{base}"), hash)),
    ]
}

/// The content hash as archived names carry it: its first 16 hex digits.
fn short(hash: &str) -> &str {
    &hash[..hash.len().min(16)]
}

impl Archive {
    /// The archive at `location` (a folder, or a URL as for staging: `az://CONTAINER/PREFIX`, …), or in the lake
    /// (`lake_root`) when none is given. A store is checked to be readable here, so that a missing container or a
    /// refused credential stops the run at its start, not as every file's archive copy failing.
    pub async fn open(location: Option<&Path>, lake_root: &Path) -> Result<Self, ArchiveError> {
        let Some(location) = location else { return Self::local(lake_root) };
        let name = location.display().to_string();
        match resolve(location) {
            Ok(Location::Folder(dir)) => Ok(Archive { name: name.into(), ..Self::local(&dir)? }),
            Ok(Location::Store { store, prefix, .. }) => {
                // Parts appended to the prefix as it was parsed (`StorePath::from` would encode it again).
                let raw = RAW.split('/').fold(prefix.clone().unwrap_or_default(), |p, part| p.join(part));
                let at = ArchivedAt::Container { store: store.to_string(), prefix: raw };
                let store: Arc<dyn ObjectStore> = match prefix {
                    Some(prefix) => Arc::new(PrefixStore::new(store, prefix)),
                    None => store,
                };
                let err = |source| ArchiveError::Store { location: name.clone(), source };
                // The top of the archive holds one folder (`bronze/`): one short page.
                store.list_with_delimiter(None).await.map_err(err)?;
                // And it must take writes: a credential that may list but not write would otherwise fail every
                // file's archive copy, one after another. A create-only marker, which a staging listing skips
                // (hidden), and which a credential that may create but not overwrite still passes.
                let marker = StorePath::from(MARKER);
                let opts = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
                match store.put_opts(&marker, PutPayload::from_static(b"poslake raw archive\n"), opts).await {
                    Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => {}
                    Err(source) => return Err(err(source)),
                }
                Ok(Archive { store, name: name.into(), at })
            }
            Err(LocationError::Refused(reason)) => Err(ArchiveError::Location { location: name, reason }),
            Err(LocationError::Store(source)) => Err(ArchiveError::Store { location: name, source }),
        }
    }

    /// An archive in a local folder, created if missing.
    pub fn local(root: &Path) -> Result<Self, ArchiveError> {
        let err = |source| ArchiveError::Store { location: root.display().to_string(), source };
        if root.as_os_str().is_empty() || root.exists() && !root.is_dir() {
            let reason = if root.as_os_str().is_empty() { "an empty path" } else { "not a folder" };
            return Err(ArchiveError::Location { location: root.display().to_string(), reason: reason.into() });
        }
        std::fs::create_dir_all(root)
            .map_err(|e| err(object_store::Error::Generic { store: "local", source: Box::new(e) }))?;
        // Canonical, as staging compares it with what it walks.
        let folder = std::fs::canonicalize(root)
            .map_err(|e| err(object_store::Error::Generic { store: "local", source: Box::new(e) }))?;
        Ok(Archive {
            store: Arc::new(LocalFileSystem::new_with_prefix(&folder).map_err(err)?),
            name: root.display().to_string().into(),
            at: ArchivedAt::Folder(folder.join(RAW)),
        })
    }

    /// An archive in any object store (for tests: memory).
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        let name = store.to_string().into();
        Archive { store, name, at: ArchivedAt::Elsewhere }
    }

    /// The location as the operator gave it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the archived files lie.
    pub fn archived_at(&self) -> &ArchivedAt {
        &self.at
    }

    /// Archives `bytes` (with BLAKE3 `hash`) of the file at staging path `name`.
    pub async fn put(
        &self,
        vendor: &str,
        business_date: Option<NaiveDate>,
        name: &str,
        hash: &str,
        bytes: bytes::Bytes,
    ) -> Result<Archived, ArchiveError> {
        // Same name, other content: keep both, the second under its hash.
        for location in locations(vendor, business_date, name, hash) {
            match self.create(&location, bytes.clone()).await? {
                true => return Ok(Archived::Written(location)),
                false if self.same_content(&location, hash).await? => return Ok(Archived::AlreadyThere(location)),
                false => {}
            }
        }
        Err(ArchiveError::NoFreeName { name: name.to_owned() })
    }

    /// The archived copy of a file the parser refused (those are archived with vendor and date `unknown`), if the
    /// archive holds one with this content hash.
    pub async fn find_refused(&self, name: &str, hash: &str) -> Result<Option<bytes::Bytes>, ArchiveError> {
        if hash.is_empty() {
            return Ok(None);
        }
        for location in locations("unknown", None, name, hash) {
            let err = |source| ArchiveError::Store { location: location.clone(), source };
            let got = match self.store.get(&StorePath::from(location.as_str())).await {
                Ok(got) => got,
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(err(e)),
            };
            let bytes = got.bytes().await.map_err(err)?;
            if blake3::hash(&bytes).to_hex().as_str() == hash {
                return Ok(Some(bytes));
            }
        }
        Ok(None)
    }

    /// Creates the object if absent; false if something is already there.
    async fn create(&self, location: &str, bytes: bytes::Bytes) -> Result<bool, ArchiveError> {
        let opts = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        match self.store.put_opts(&StorePath::from(location), PutPayload::from(bytes), opts).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(source) => Err(ArchiveError::Store { location: location.to_owned(), source }),
        }
    }

    async fn same_content(&self, location: &str, hash: &str) -> Result<bool, ArchiveError> {
        let err = |source| ArchiveError::Store { location: location.to_owned(), source };
        let existing = self.store.get(&StorePath::from(location)).await.map_err(err)?.bytes().await.map_err(err)?;
        Ok(blake3::hash(&existing).to_hex().as_str() == hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn never_overwrites_a_different_file_of_the_same_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = Archive::local(dir.path()).expect("archive");
        let d = NaiveDate::from_ymd_opt(2026, 1, 5);
        let a = bytes::Bytes::from_static(b"first");
        let b = bytes::Bytes::from_static(b"second");
        let ha = blake3::hash(&a).to_hex().to_string();
        let hb = blake3::hash(&b).to_hex().to_string();
        let first = archive.put("arts-poslog", d, "x/f.xml", &ha, a.clone()).await.expect("put");
        assert_eq!(first, Archived::Written("bronze/raw/vendor=arts-poslog/business_date=2026-01-05/f.xml".into()));
        let again = archive.put("arts-poslog", d, "x/f.xml", &ha, a).await.expect("put again");
        assert!(matches!(again, Archived::AlreadyThere(_)));
        let other = archive.put("arts-poslog", d, "y/f.xml", &hb, b).await.expect("put other");
        let Archived::Written(path) = other else { panic!("second content must be written: {other:?}") };
        assert_ne!(path, "bronze/raw/vendor=arts-poslog/business_date=2026-01-05/f.xml");
        let kept = std::fs::read(dir.path().join("bronze/raw/vendor=arts-poslog/business_date=2026-01-05/f.xml"))
            .expect("read");
        assert_eq!(kept, b"first");
        assert_eq!(std::fs::read(dir.path().join(&path)).expect("read"), b"second");
    }

    /// A refused file is found again by its name and content hash, whichever of the two names it went under.
    #[tokio::test]
    async fn a_refused_file_is_found_by_name_and_hash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = Archive::local(dir.path()).expect("archive");
        let (a, b) = (bytes::Bytes::from_static(b"<broken"), bytes::Bytes::from_static(b"<broken too"));
        let (ha, hb) = (blake3::hash(&a).to_hex().to_string(), blake3::hash(&b).to_hex().to_string());
        archive.put("unknown", None, "s1/t.xml", &ha, a.clone()).await.expect("put");
        archive.put("unknown", None, "s2/t.xml", &hb, b.clone()).await.expect("put");
        assert_eq!(archive.find_refused("s1/t.xml", &ha).await.expect("find"), Some(a));
        assert_eq!(archive.find_refused("s2/t.xml", &hb).await.expect("find"), Some(b));
        let other = blake3::hash(b"other").to_hex().to_string();
        assert_eq!(archive.find_refused("s1/t.xml", &other).await.expect("find"), None);
        assert_eq!(archive.find_refused("s1/t.xml", "").await.expect("find"), None);
        assert_eq!(archive.find_refused("s1/u.xml", &ha).await.expect("find"), None);
    }

    /// A file whose own name and short-hash name both hold other files (a staging file named after another's hash)
    /// goes under its whole hash, and is found there again.
    #[tokio::test]
    async fn a_file_whose_hash_name_is_taken_goes_under_its_whole_hash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = Archive::local(dir.path()).expect("archive");
        let (x, y, z) = (b"x".as_slice(), b"y".as_slice(), b"z".as_slice());
        let h = |b: &[u8]| blake3::hash(b).to_hex().to_string();
        let put = |name: String, b: &'static [u8]| {
            let archive = archive.clone();
            async move { archive.put("unknown", None, &name, &h(b), bytes::Bytes::from_static(b)).await.expect("put") }
        };
        put("a/f.xml".into(), x).await;
        // A staging file named as `y`'s short-hash name would be, holding other bytes.
        put(format!("b/{}.f.xml", short(&h(y))), z).await;
        let Archived::Written(at) = put("c/f.xml".into(), y).await else { panic!("y must be written") };
        assert!(at.ends_with(&format!("/{}.f.xml", h(y))), "{at}");
        assert_eq!(std::fs::read(dir.path().join(&at)).expect("read"), y);
        assert!(matches!(put("c/f.xml".into(), y).await, Archived::AlreadyThere(p) if p == at));
        assert_eq!(archive.find_refused("c/f.xml", &h(y)).await.expect("find"), Some(bytes::Bytes::from_static(y)));
    }

    #[test]
    fn a_local_archive_must_be_a_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("file");
        std::fs::write(&file, "x").expect("write");
        for (path, reason) in [(file.as_path(), "not a folder"), (Path::new(""), "an empty path")] {
            let err = Archive::local(path).expect_err("refused").to_string();
            assert!(err.contains(reason), "{err}");
        }
    }

    /// Names that grow past a file system's 255 bytes once encoded are cut and carry the content hash: they are
    /// archived, each content under a name of its own.
    #[tokio::test]
    async fn long_encoded_names_are_cut_and_kept_apart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = Archive::local(dir.path()).expect("archive");
        let d = NaiveDate::from_ymd_opt(2026, 1, 5);
        for name in ["売上日報".repeat(7) + ".xml", "é".repeat(120) + ".xml", "#".repeat(240) + ".xml.gz"] {
            let mut written = Vec::new();
            for content in [&b"one"[..], &b"two"[..]] {
                let hash = blake3::hash(content).to_hex().to_string();
                let got = archive.put("arts-poslog", d, &name, &hash, bytes::Bytes::copy_from_slice(content)).await;
                let Ok(Archived::Written(path)) = got else { panic!("{name}: {got:?}") };
                let on_disk = std::fs::read_dir(dir.path().join(&path).parent().expect("dir"))
                    .expect("list")
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().len())
                    .max()
                    .unwrap_or(0);
                assert!(on_disk <= MAX_NAME_BYTES + 16, "{name}: a {on_disk}-byte file name");
                written.push(path);
            }
            assert_ne!(written[0], written[1], "{name}");
            let ext = if name.ends_with(".gz") { ".xml.gz" } else { ".xml" };
            assert!(written[0].ends_with(ext), "{name}: keeps its extension");
        }
        assert_eq!(archived_name("short.xml", "abc"), "short.xml");
    }
}
