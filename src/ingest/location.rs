//! Storage named by the operator: a local folder, or Azure Blob Storage / ADLS Gen2 by URL (`az://`, `abfss://`,
//! `https://ACCOUNT.blob.core.windows.net/…`, or `file://` for a folder). Staging and the raw archive name theirs
//! the same way.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::azure::MicrosoftAzureBuilder;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreScheme};

use super::staging::AzurePages;

/// What a location names.
pub enum Location {
    Folder(PathBuf),
    /// An object store, and the prefix under it (`None` for the container's root).
    Store {
        store: Arc<dyn ObjectStore>,
        prefix: Option<StorePath>,
        /// Azure's listing page by page, which survives blob names `object_store` cannot address.
        pages: Option<Arc<AzurePages>>,
    },
}

/// Why a location cannot be used: a reason for the operator, or the store's own error when building it.
pub enum LocationError {
    Refused(String),
    Store(object_store::Error),
}

/// The forms a location may take, for error messages.
pub const FORMS: &str = "a local folder, or Azure Blob Storage / ADLS Gen2 as az://CONTAINER/PREFIX, \
                         abfss://FILESYSTEM@ACCOUNT.dfs.core.windows.net/PREFIX or \
                         https://ACCOUNT.blob.core.windows.net/CONTAINER/PREFIX";

/// A location as written: a URL if it has a scheme (credentials for Azure from the `AZURE_*` environment
/// variables `object_store` reads: an account key, a SAS token, a service principal, a managed identity or the
/// Azure CLI; Azurite with `AZURE_STORAGE_USE_EMULATOR=true`), else a folder path.
pub fn resolve(location: &Path) -> Result<Location, LocationError> {
    let Some(url_text) = crate::config::staging_url(location) else {
        if let Some(scheme) = mistyped_scheme(location) {
            return Err(LocationError::Refused(format!(
                "starts like a URL ({scheme}:) without the // after its scheme; a folder of that name would be made \
                 here instead"
            )));
        }
        return Ok(Location::Folder(location.to_path_buf()));
    };
    let url = url::Url::parse(url_text).map_err(|e| LocationError::Refused(format!("not a URL: {e}")))?;
    let (scheme, prefix) = ObjectStoreScheme::parse(&url).map_err(|e| LocationError::Refused(e.to_string()))?;
    match scheme {
        ObjectStoreScheme::Local => {
            url.to_file_path().map(Location::Folder).map_err(|()| LocationError::Refused("not a local path".into()))
        }
        ObjectStoreScheme::MicrosoftAzure => {
            crate::install_tls_provider();
            let builder = MicrosoftAzureBuilder::from_env().with_url(url_text);
            let store = Arc::new(builder.clone().build().map_err(LocationError::Store)?);
            let pages = Arc::new(AzurePages::new(store.clone(), &builder, &url));
            let prefix = (!prefix.as_ref().is_empty()).then_some(prefix);
            Ok(Location::Store { store, prefix, pages: Some(pages) })
        }
        other => Err(LocationError::Refused(format!("{other:?} storage is not supported"))),
    }
}

/// The scheme of a path that begins like a URL with a mistyped separator (`az:/c/p`, `https:acct…`), which would
/// otherwise name a folder in the working directory.
fn mistyped_scheme(location: &Path) -> Option<&str> {
    let text = location.to_str()?;
    let (scheme, _) = text.split_once(':')?;
    let mut chars = scheme.chars();
    let is_scheme = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && !scheme.contains('.');
    is_scheme.then_some(scheme)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_with_a_mistyped_separator_is_not_taken_for_a_folder() {
        for typo in ["az:/archive/raw", "az:archive/raw", "https:/acct.blob.core.windows.net/c/p", "file:/data"] {
            let Err(LocationError::Refused(reason)) = resolve(Path::new(typo)) else { panic!("{typo} was taken") };
            assert!(reason.contains("without the //"), "{typo}: {reason}");
        }
        for folder in ["/data/archive", "archive", "./a:b", "/mnt/x:y", "2026-11-27T10:00"] {
            assert!(matches!(resolve(Path::new(folder)), Ok(Location::Folder(_))), "{folder}");
        }
    }
}
