//! Staging storage: where POS files arrive. Local folders by default, through `object_store` so that Azure Blob /
//! ADLS slot in behind the same interface. Listing is a stream (paged by the store): the whole listing is never
//! held in memory.

use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt};

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
}

impl StagingError {
    /// Storage errors are worth a retry (a network blip, a throttled request) except a missing object.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, StagingError::Store { source: object_store::Error::NotFound { .. }, .. })
    }
}

/// Names the generator and operators leave beside the data; never POS files.
fn is_pos_file(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    !name.starts_with('.') && !name.starts_with("manifest.")
}

#[derive(Clone, Debug)]
pub struct Staging {
    store: Arc<dyn ObjectStore>,
    prefix: Option<StorePath>,
}

impl Staging {
    /// A local folder (created if absent).
    pub fn local(root: &std::path::Path) -> Result<Self, StagingError> {
        std::fs::create_dir_all(root).map_err(|e| StagingError::Store {
            location: root.display().to_string(),
            source: object_store::Error::Generic { store: "local", source: Box::new(e) },
        })?;
        let store = LocalFileSystem::new_with_prefix(root)
            .map_err(|source| StagingError::Store { location: root.display().to_string(), source })?;
        Ok(Staging { store: Arc::new(store), prefix: None })
    }

    /// Any object store (Azure, S3, memory), under an optional prefix.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: Option<&str>) -> Self {
        Staging { store, prefix: prefix.map(StorePath::from) }
    }

    /// Every POS file under the prefix, as the store lists them.
    pub fn list(&self) -> impl Stream<Item = Result<StagedFile, StagingError>> + Send + 'static {
        self.store.list(self.prefix.as_ref()).filter_map(|meta| async move {
            match meta {
                Ok(m) if is_pos_file(m.location.as_ref()) => {
                    Some(Ok(StagedFile { path: m.location.to_string(), size: m.size }))
                }
                Ok(_) => None,
                Err(source) => Some(Err(StagingError::Store { location: "listing".into(), source })),
            }
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
        let staging = Staging::local(dir.path()).expect("staging");
        let mut files: Vec<StagedFile> = staging.list().map(|r| r.expect("listed")).collect().await;
        files.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["a/b/one.xml", "two.xml.gz"]);
        assert_eq!(staging.get(&files[0]).await.expect("get").as_ref(), b"<x/>");
    }
}
