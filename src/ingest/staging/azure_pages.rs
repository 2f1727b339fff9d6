//! The Azure listing, page by page. `object_store` lists a container well, but fails a whole page (up to 5,000
//! names) when one blob's name is not a path it can hold (an empty segment, `pos/a//b.xml`; a `.` or `..`
//! segment), and its listing ends there: one badly named blob would hold back every file listed after it, run after
//! run. So the pages are asked for here one at a time, through `object_store`. A page it fails so is asked again,
//! with the same marker, by a plain List Blobs request (signed by `object_store`'s own authorizer with its
//! credentials) and read name by name: a name `object_store` cannot address is listed as such (the caller refuses
//! it, a dead letter that names the blob), the others as `object_store` would list them, and the listing goes on
//! from that page's next marker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::azure::{AzureAuthorizer, AzureConfigKey, MicrosoftAzure, MicrosoftAzureBuilder};
use object_store::client::HttpRequestBody;
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path as StorePath;
use quick_xml::events::Event;

/// A blob as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listed {
    Blob {
        name: String,
        size: u64,
    },
    /// A name `object_store` cannot address, as the server wrote it, and why.
    Unaddressable {
        name: String,
        size: u64,
        reason: String,
    },
}

/// The pages of one container.
#[derive(Debug)]
pub struct AzurePages {
    store: Arc<MicrosoftAzure>,
    /// Where plain List Blobs requests go, and as which account: `None` for a location form this does not derive
    /// (a failed page then ends the listing with `object_store`'s error, as before).
    direct: Option<Direct>,
}

#[derive(Debug)]
struct Direct {
    /// `https://ACCOUNT.blob.core.windows.net/CONTAINER`, an endpoint's, or Azurite's `http://HOST:PORT/ACCOUNT/CONTAINER`.
    container_url: url::Url,
    account: String,
    http: reqwest::Client,
}

/// How long a plain request is retried (as `object_store`'s own default), and its pauses.
const RETRY_FOR: Duration = Duration::from_secs(180);
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl AzurePages {
    /// The pages of the container `builder` names (with the location's URL), listed through `store`, built from it.
    pub fn new(store: Arc<MicrosoftAzure>, builder: &MicrosoftAzureBuilder, url: &url::Url) -> Self {
        let direct = address(builder, url).and_then(|(container_url, account)| {
            let http = reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(REQUEST_TIMEOUT)
                .build()
                .inspect_err(|e| tracing::warn!(error = %e, "no HTTP client for reading Azure list pages by name"))
                .ok()?;
            Some(Direct { container_url, account, http })
        });
        AzurePages { store, direct }
    }

    /// Every blob under `prefix` (a folder: `pos/incoming`), page by page.
    pub fn list(self: Arc<Self>, prefix: Option<&StorePath>) -> BoxStream<'static, object_store::Result<Listed>> {
        // As `object_store` lists: below the folder, not names that merely start with it.
        let prefix = prefix.filter(|p| !p.as_ref().is_empty()).map(|p| format!("{}/", p.as_ref()));
        futures::stream::try_unfold(Some(None), move |next: Option<Option<String>>| {
            let (pages, prefix) = (self.clone(), prefix.clone());
            async move {
                let Some(token) = next else { return Ok::<_, object_store::Error>(None) };
                let (listed, token) = pages.page(prefix.as_deref(), token).await?;
                Ok(Some((futures::stream::iter(listed.into_iter().map(Ok)), token.map(Some))))
            }
        })
        .try_flatten()
        .boxed()
    }

    async fn page(
        &self,
        prefix: Option<&str>,
        token: Option<String>,
    ) -> object_store::Result<(Vec<Listed>, Option<String>)> {
        let options = PaginatedListOptions { page_token: token.clone(), ..Default::default() };
        match self.store.list_paginated(prefix, options).await {
            Ok(page) => {
                let listed =
                    page.result.objects.into_iter().map(|m| Listed::Blob { name: m.location.into(), size: m.size });
                Ok((listed.collect(), page.page_token))
            }
            Err(error @ object_store::Error::InvalidPath { .. }) => match &self.direct {
                Some(direct) => {
                    tracing::warn!(%error, "a staging list page holds a blob name the Azure client cannot address: reading that page name by name");
                    let body = direct.list_page(&self.store, prefix, token.as_deref()).await?;
                    read_page(&body, prefix.unwrap_or_default()).map_err(|reason| generic(reason.into()))
                }
                None => Err(error),
            },
            Err(error) => Err(error),
        }
    }
}

impl Direct {
    /// One List Blobs page as the server writes it, retried while it fails for a reason worth a retry.
    async fn list_page(
        &self,
        store: &MicrosoftAzure,
        prefix: Option<&str>,
        marker: Option<&str>,
    ) -> object_store::Result<Bytes> {
        let mut url = self.container_url.clone();
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("restype", "container").append_pair("comp", "list");
            if let Some(prefix) = prefix {
                query.append_pair("prefix", prefix);
            }
            if let Some(marker) = marker {
                query.append_pair("marker", marker);
            }
        }
        let started = Instant::now();
        let mut tries = 0;
        loop {
            let error = match self.try_list_page(store, &url).await {
                Ok(body) => return Ok(body),
                Err(Attempt::Final(e)) => return Err(e),
                Err(Attempt::Retry(e)) => e,
            };
            tries += 1;
            let pause = crate::backoff::full_jitter(BACKOFF_BASE, BACKOFF_CAP, tries);
            if started.elapsed() + pause > RETRY_FOR {
                return Err(error);
            }
            tokio::time::sleep(pause).await;
        }
    }

    async fn try_list_page(&self, store: &MicrosoftAzure, url: &url::Url) -> Result<Bytes, Attempt> {
        let credential = store.credentials().get_credential().await.map_err(Attempt::Retry)?;
        let mut request = http::Request::get(url.as_str())
            .body(HttpRequestBody::from(Vec::new()))
            .map_err(|e| Attempt::Final(generic(e.into())))?;
        // The date, the API version and the credential: a key's signature, a token, or a SAS's query pairs.
        AzureAuthorizer::new(&credential, &self.account).try_authorize(&mut request).map_err(Attempt::Final)?;
        let response =
            self.http.get(request.uri().to_string()).headers(request.headers().clone()).send().await.map_err(|e| {
                Attempt::Retry(generic(format!("List Blobs: {}", without_query(&e.to_string())).into()))
            })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| Attempt::Retry(generic(e.into())))?;
        if status.is_success() {
            return Ok(body);
        }
        let error = generic(
            format!("List Blobs answered {status}: {}", String::from_utf8_lossy(&body[..body.len().min(500)])).into(),
        );
        let transient = status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429;
        Err(if transient { Attempt::Retry(error) } else { Attempt::Final(error) })
    }
}

enum Attempt {
    Retry(object_store::Error),
    Final(object_store::Error),
}

fn generic(source: Box<dyn std::error::Error + Send + Sync>) -> object_store::Error {
    object_store::Error::Generic { store: "MicrosoftAzure", source }
}

/// A request error's text without the URL's query, which holds a SAS token's signature when there is one.
fn without_query(text: &str) -> String {
    match text.find('?') {
        Some(at) => {
            let end = text[at..].find([' ', ')']).map_or(text.len(), |n| at + n);
            format!("{}{}", &text[..at], &text[end..])
        }
        None => text.to_owned(),
    }
}

/// The container's URL and the account, for the location forms `object_store` is given here (see
/// [`super::super::location::FORMS`]), the way its builder derives them; `None` for other forms.
fn address(builder: &MicrosoftAzureBuilder, url: &url::Url) -> Option<(url::Url, String)> {
    let config = |key| builder.get_config_value(&key);
    let yes = |key| config(key).is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes" | "on"));
    let host = url.host_str()?;
    let (container, account) = match url.scheme() {
        "az" | "azure" | "adl" | "abfs" | "abfss" if url.username().is_empty() => (host.to_owned(), None),
        "az" | "abfs" | "abfss" => {
            let (account, service) = host.split_once('.')?;
            matches!(service, "dfs.core.windows.net" | "blob.core.windows.net")
                .then(|| (url.username().to_owned(), Some(account.to_owned())))?
        }
        "https" => {
            let (account, service) = host.split_once('.')?;
            let container = url.path_segments()?.next().filter(|c| !c.is_empty())?;
            matches!(service, "dfs.core.windows.net" | "blob.core.windows.net")
                .then(|| (container.to_owned(), Some(account.to_owned())))?
        }
        _ => return None,
    };
    if yes(AzureConfigKey::UseFabricEndpoint) || container.contains('.') {
        return None;
    }
    let (mut base, account) = if yes(AzureConfigKey::UseEmulator) {
        let account = account.or_else(|| config(AzureConfigKey::AccountName)).unwrap_or("devstoreaccount1".into());
        let service = std::env::var("AZURITE_BLOB_STORAGE_URL").unwrap_or("http://127.0.0.1:10000".into());
        let mut base = url::Url::parse(&service).ok()?;
        base.path_segments_mut().ok()?.pop_if_empty().push(&account);
        (base, account)
    } else {
        let account = account.or_else(|| config(AzureConfigKey::AccountName))?;
        let service = config(AzureConfigKey::Endpoint).unwrap_or(format!("https://{account}.blob.core.windows.net"));
        (url::Url::parse(&service).ok()?, account)
    };
    base.path_segments_mut().ok()?.pop_if_empty().push(&container);
    Some((base, account))
}

/// The blobs of one List Blobs page (`EnumerationResults`), and its next marker. Directories of a hierarchical
/// namespace and the prefix itself are left out, as `object_store` leaves them out.
fn read_page(body: &[u8], prefix: &str) -> Result<(Vec<Listed>, Option<String>), String> {
    let mut reader = quick_xml::Reader::from_reader(body);
    let mut path: Vec<Vec<u8>> = Vec::new();
    let mut text = String::new();
    let (mut listed, mut next_marker, mut complete) = (Vec::new(), None, false);
    // The blob being read: its name, whether the server percent-encoded it, its size, whether it is a directory.
    let (mut name, mut encoded, mut size, mut directory) = (String::new(), false, None::<u64>, false);
    loop {
        match reader.read_event().map_err(|e| format!("List Blobs answer at byte {}: {e}", reader.error_position()))? {
            Event::Start(e) => {
                if e.local_name().as_ref() == b"Name" {
                    encoded = e.try_get_attribute("Encoded").ok().flatten().is_some_and(|a| &*a.value == b"true");
                }
                path.push(e.local_name().as_ref().to_vec());
                text.clear();
            }
            Event::Text(t) => text.push_str(&t.decode().map_err(|e| format!("List Blobs answer: {e}"))?),
            Event::GeneralRef(r) => match r.resolve_char_ref() {
                Ok(Some(c)) => text.push(c),
                _ => {
                    let entity = r.decode().map_err(|e| format!("List Blobs answer: {e}"))?;
                    let resolved = quick_xml::escape::resolve_predefined_entity(&entity)
                        .ok_or_else(|| format!("List Blobs answer: unknown entity &{entity};"))?;
                    text.push_str(resolved);
                }
            },
            Event::End(_) => {
                let inner = path.pop().unwrap_or_default();
                let parent = path.last().map(Vec::as_slice);
                match (parent, inner.as_slice()) {
                    (Some(b"Blob"), b"Name") => name = std::mem::take(&mut text),
                    (Some(b"Properties"), b"Content-Length") => size = text.trim().parse().ok(),
                    (Some(b"Properties"), b"ResourceType") => directory = text.trim() == "directory",
                    (Some(b"EnumerationResults"), b"NextMarker") => {
                        next_marker = Some(std::mem::take(&mut text)).filter(|m| !m.is_empty())
                    }
                    (None, b"EnumerationResults") => complete = true,
                    (Some(b"Blobs"), b"Blob") => {
                        let raw = std::mem::take(&mut name);
                        let raw = match encoded {
                            true => percent_encoding::percent_decode_str(&raw).decode_utf8_lossy().into_owned(),
                            false => raw,
                        };
                        let size = size.take().ok_or_else(|| format!("List Blobs answer: blob {raw:?} has no size"))?;
                        if !std::mem::take(&mut directory) && raw.len() > prefix.len() {
                            listed.push(judge(raw, size));
                        }
                    }
                    _ => {}
                }
                text.clear();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    // A cut answer would end the listing early, leaving out the rest without a word.
    if !complete {
        return Err("List Blobs answer ends before its </EnumerationResults>".into());
    }
    Ok((listed, next_marker))
}

/// A name as `object_store` would list it, or why it cannot.
fn judge(name: String, size: u64) -> Listed {
    match StorePath::parse(&name) {
        Ok(path) => Listed::Blob { name: path.into(), size },
        Err(e) => Listed::Unaddressable { name, size, reason: unaddressable(&e) },
    }
}

/// Why a blob of a name `object_store` cannot parse is not read.
pub fn unaddressable(error: &object_store::path::Error) -> String {
    format!(
        "the Azure client cannot address this blob's name ({error}); rename the blob (a name with no empty, '.' or \
         '..' segment) and the next run takes it"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<EnumerationResults ServiceEndpoint="http://127.0.0.1:10000/devstoreaccount1" ContainerName="landing">
  <Prefix>pos/</Prefix><MaxResults>5000</MaxResults>
  <Blobs>
    <Blob><Name>pos/a.xml</Name><Properties><Content-Length>10</Content-Length></Properties></Blob>
    <Blob><Name>pos/a//b.xml</Name><Properties><Content-Length>20</Content-Length></Properties></Blob>
    <Blob><Name>pos/dir</Name><Properties><Content-Length>0</Content-Length><ResourceType>directory</ResourceType></Properties></Blob>
    <Blob><Name>pos/x/../y.xml</Name><Properties><Content-Length>30</Content-Length></Properties></Blob>
    <Blob><Name>pos/R&amp;D &#233;t&#xE9;.xml</Name><Properties><Content-Length>40</Content-Length></Properties></Blob>
    <Blob><Name Encoded="true">pos/bell%07.xml</Name><Properties><Content-Length>50</Content-Length></Properties></Blob>
    <Blob><Name>pos/</Name><Properties><Content-Length>0</Content-Length></Properties></Blob>
  </Blobs>
  <NextMarker>2!96!MDAwMDIzIXBvcy96Lnht</NextMarker>
</EnumerationResults>"#;

    #[test]
    fn a_page_is_read_name_by_name() {
        let (listed, next) = read_page(PAGE.as_bytes(), "pos/").expect("a page");
        assert_eq!(next.as_deref(), Some("2!96!MDAwMDIzIXBvcy96Lnht"));
        let names: Vec<_> = listed
            .iter()
            .map(|l| match l {
                Listed::Blob { name, size } => (name.as_str(), *size, true),
                Listed::Unaddressable { name, size, .. } => (name.as_str(), *size, false),
            })
            .collect();
        assert_eq!(
            names,
            [
                ("pos/a.xml", 10, true),
                ("pos/a//b.xml", 20, false),
                ("pos/x/../y.xml", 30, false),
                ("pos/R&D été.xml", 40, true),
                ("pos/bell\u{7}.xml", 50, false),
            ]
        );
        let Listed::Unaddressable { reason, .. } = &listed[1] else { panic!("{listed:?}") };
        assert!(reason.contains("empty path segment") && reason.contains("rename the blob"), "{reason}");
    }

    #[test]
    fn the_last_page_has_no_marker_and_a_broken_answer_is_an_error() {
        let last = PAGE.replace("<NextMarker>2!96!MDAwMDIzIXBvcy96Lnht</NextMarker>", "<NextMarker/>");
        assert_eq!(read_page(last.as_bytes(), "pos/").expect("a page").1, None);
        let sizeless = PAGE.replace("<Content-Length>10</Content-Length>", "");
        assert!(read_page(sizeless.as_bytes(), "pos/").expect_err("no size").contains("pos/a.xml"));
        assert!(read_page(b"<EnumerationResults><Blobs><Blob>", "").expect_err("cut").contains("ends before"));
        assert!(read_page(b"<EnumerationResults></Blobs>", "").is_err());
    }

    #[test]
    fn the_container_url_is_derived_as_object_store_derives_it() {
        let url = |s: &str| url::Url::parse(s).expect("url");
        let plain = MicrosoftAzureBuilder::new().with_account("acct");
        let (u, a) = address(&plain, &url("az://landing/pos")).expect("az");
        assert_eq!((u.as_str(), a.as_str()), ("https://acct.blob.core.windows.net/landing", "acct"));
        let (u, a) = address(&plain, &url("abfss://fs@other.dfs.core.windows.net/pos")).expect("abfss");
        assert_eq!((u.as_str(), a.as_str()), ("https://other.blob.core.windows.net/fs", "other"));
        let (u, _) = address(&plain, &url("https://other.blob.core.windows.net/c/pos")).expect("https");
        assert_eq!(u.as_str(), "https://other.blob.core.windows.net/c");
        let endpoint = plain.clone().with_endpoint("https://private.example.net/".into());
        let (u, _) = address(&endpoint, &url("az://landing/pos")).expect("endpoint");
        assert_eq!(u.as_str(), "https://private.example.net/landing");
        assert!(address(&MicrosoftAzureBuilder::new(), &url("az://landing/pos")).is_none(), "no account");
        assert!(address(&plain, &url("https://ws.dfs.fabric.microsoft.com/c/pos")).is_none(), "fabric");
    }

    #[test]
    fn a_request_error_is_told_without_its_query() {
        assert_eq!(
            without_query("error sending request for url (https://a.blob.core.windows.net/c?sig=SECRET&se=1)"),
            "error sending request for url (https://a.blob.core.windows.net/c)"
        );
        assert_eq!(without_query("connection refused"), "connection refused");
    }
}
