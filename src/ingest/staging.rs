//! Staging storage: where POS files arrive. A local folder by default, or Azure Blob Storage / ADLS Gen2 named by
//! URL, both through `object_store`. Listing is a stream (paged by the store): the whole listing is never held in
//! memory.

use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, ObjectStoreScheme};

/// A file found in staging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedFile {
    /// Path within the staging store.
    pub path: String,
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    #[error("staging {location}: {source}")]
    Store { location: String, source: object_store::Error },
    #[error(
        "staging {location}: {reason} (staging is a local folder, or Azure Blob Storage / ADLS Gen2 as \
         az://CONTAINER/PREFIX, abfss://FILESYSTEM@ACCOUNT.dfs.core.windows.net/PREFIX or \
         https://ACCOUNT.blob.core.windows.net/CONTAINER/PREFIX)"
    )]
    Location { location: String, reason: String },
}

impl StagingError {
    /// Storage errors are worth a retry (a network blip, a throttled request) except a missing object.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            StagingError::Store { source: object_store::Error::NotFound { .. }, .. } | StagingError::Location { .. }
        )
    }
}

/// Leaves out what the generator and operators put beside the data: `manifest.*` files, and anything hidden (a
/// name or a folder under the prefix starting with `.`, such as an upload tool's `.tmp/` or a `.git/`).
fn is_pos_file(path: &str, prefix: Option<&StorePath>) -> bool {
    let below = match prefix {
        Some(p) => path.strip_prefix(p.as_ref()).unwrap_or(path),
        None => path,
    };
    let name = below.rsplit('/').next().unwrap_or(below);
    !name.starts_with("manifest.") && !below.split('/').any(|segment| segment.starts_with('.'))
}

#[derive(Clone, Debug)]
pub struct Staging {
    store: Arc<dyn ObjectStore>,
    prefix: Option<StorePath>,
    /// The location as the operator gave it, for messages.
    name: Arc<str>,
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
        let refuse = |reason: String| StagingError::Location { location: location.to_owned(), reason };
        let url = url::Url::parse(location).map_err(|e| refuse(format!("not a URL: {e}")))?;
        let (scheme, prefix) = ObjectStoreScheme::parse(&url).map_err(|e| refuse(e.to_string()))?;
        match scheme {
            ObjectStoreScheme::Local => {
                let dir = url.to_file_path().map_err(|()| refuse("not a local path".into()))?;
                Self::local(&dir)
            }
            ObjectStoreScheme::MicrosoftAzure => {
                crate::install_tls_provider();
                let store = MicrosoftAzureBuilder::from_env()
                    .with_url(location)
                    .build()
                    .map_err(|source| StagingError::Store { location: location.to_owned(), source })?;
                let prefix = (!prefix.as_ref().is_empty()).then_some(prefix);
                Ok(Staging { store: Arc::new(store), prefix, name: location.into() })
            }
            other => Err(refuse(format!("{other:?} storage is not supported"))),
        }
    }

    /// A local folder (created if absent).
    pub fn local(root: &std::path::Path) -> Result<Self, StagingError> {
        std::fs::create_dir_all(root).map_err(|e| StagingError::Store {
            location: root.display().to_string(),
            source: object_store::Error::Generic { store: "local", source: Box::new(e) },
        })?;
        let store = LocalFileSystem::new_with_prefix(root)
            .map_err(|source| StagingError::Store { location: root.display().to_string(), source })?;
        Ok(Staging { store: Arc::new(store), prefix: None, name: root.display().to_string().into() })
    }

    /// Any object store (Azure, S3, memory), under an optional prefix.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: Option<&str>) -> Self {
        let name = format!("{store}/{}", prefix.unwrap_or_default()).into();
        Staging { store, prefix: prefix.map(StorePath::from), name }
    }

    /// Every POS file under the prefix, as the store lists them.
    pub fn list(&self) -> impl Stream<Item = Result<StagedFile, StagingError>> + Send + 'static {
        let name = self.name.clone();
        let prefix = self.prefix.clone();
        self.store.list(self.prefix.as_ref()).filter_map(move |meta| {
            futures::future::ready(match meta {
                Ok(m) if is_pos_file(m.location.as_ref(), prefix.as_ref()) => {
                    Some(Ok(StagedFile { path: m.location.to_string(), size: m.size }))
                }
                Ok(_) => None,
                Err(source) => Some(Err(StagingError::Store { location: format!("listing {name}"), source })),
            })
        })
    }

    pub async fn get(&self, file: &StagedFile) -> Result<Bytes, StagingError> {
        let path = StorePath::from(file.path.as_str());
        let get = self
            .store
            .get(&path)
            .await
            .map_err(|source| StagingError::Store { location: file.path.clone(), source })?;
        get.bytes().await.map_err(|source| StagingError::Store { location: file.path.clone(), source })
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
        // Hidden files and everything in hidden folders (uploads in progress, tools' state) are not POS files.
        std::fs::write(dir.path().join("a/.partial.xml"), b"<x/>").expect("write");
        std::fs::create_dir_all(dir.path().join(".tmp/c")).expect("mkdir");
        std::fs::write(dir.path().join(".tmp/c/three.xml"), b"<x/>").expect("write");
        let staging = Staging::local(dir.path()).expect("staging");
        let mut files: Vec<StagedFile> = staging.list().map(|r| r.expect("listed")).collect().await;
        files.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["a/b/one.xml", "two.xml.gz"]);
        assert_eq!(staging.get(&files[0]).await.expect("get").as_ref(), b"<x/>");
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
    }
}
