//! The Azure listing, page by page, read name by name. `object_store` lists a container well but judges names its
//! own way: it fails a whole page (up to 5,000 names) at a name that is not a path it can hold (an empty segment,
//! `pos/a//b.xml`; a `.` or `..` segment), and its listing ends there, so one badly named blob held back every file
//! listed after it; it strips a leading or trailing `/`, so that `/a.xml` is listed, and read, as another blob
//! `a.xml`; and it ignores a name the server percent-encoded. So the pages are asked for here, by plain List Blobs
//! requests sent through `object_store`'s own HTTP client (its proxy, TLS and timeout settings) and signed by its own
//! authorizer with its credentials, and each name is judged as the server wrote it: a name `object_store` cannot
//! address as written is listed as such (the caller refuses it: a dead letter that names the blob).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::azure::{AzureAuthorizer, AzureConfigKey, MicrosoftAzure, MicrosoftAzureBuilder};
use object_store::client::{
    ClientConfigKey, ClientOptions, HttpClient, HttpConnector, HttpRequestBody, ReqwestConnector,
};
use object_store::path::Path as StorePath;
use quick_xml::events::Event;

use crate::error_text::chain;

/// A blob as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listed {
    Blob {
        name: String,
        size: u64,
    },
    /// A name `object_store` cannot address as written, and why.
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
    /// Where the List Blobs requests go, and as whom: `None` for a location form this does not derive (Microsoft
    /// Fabric's endpoints), which `object_store` then lists its own way.
    direct: Option<Direct>,
}

#[derive(Debug)]
struct Direct {
    /// `https://ACCOUNT.blob.core.windows.net/CONTAINER`, an endpoint's, or Azurite's `http://HOST:PORT/ACCOUNT/CONTAINER`.
    container_url: url::Url,
    account: String,
    /// An anonymous (public) container: requests go unsigned, as `object_store`'s do.
    unsigned: bool,
    http: HttpClient,
}

/// Retries of one page, as `object_store`'s own defaults: at most this many, within this time, paused by full
/// jitter from 100 ms up to 15 s.
const MAX_RETRIES: u32 = 10;
const RETRY_FOR: Duration = Duration::from_secs(180);
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(15);

/// The Blob service version `object_store` 0.14 asks for.
const AZURE_VERSION: &str = "2023-11-03";

/// Every client setting `object_store` reads, so that these requests go out as its own do.
const CLIENT_KEYS: &[ClientConfigKey] = &[
    ClientConfigKey::AllowHttp,
    ClientConfigKey::AllowInvalidCertificates,
    ClientConfigKey::NoSystemCertificates,
    ClientConfigKey::ConnectTimeout,
    ClientConfigKey::Http1Only,
    ClientConfigKey::Http2KeepAliveInterval,
    ClientConfigKey::Http2KeepAliveTimeout,
    ClientConfigKey::Http2KeepAliveWhileIdle,
    ClientConfigKey::Http2MaxFrameSize,
    ClientConfigKey::Http2Only,
    ClientConfigKey::PoolIdleTimeout,
    ClientConfigKey::PoolMaxIdlePerHost,
    ClientConfigKey::ProxyUrl,
    ClientConfigKey::ProxyCaCertificate,
    ClientConfigKey::ProxyExcludes,
    ClientConfigKey::RandomizeAddresses,
    ClientConfigKey::ReadTimeout,
    ClientConfigKey::Timeout,
    ClientConfigKey::UserAgent,
];

impl AzurePages {
    /// The pages of the container `builder` names (with the location's URL), for `store`, built from it.
    pub fn new(store: Arc<MicrosoftAzure>, builder: &MicrosoftAzureBuilder, url: &url::Url) -> Self {
        let direct = address(builder, url).and_then(|(container_url, account, emulator)| {
            let options = CLIENT_KEYS.iter().fold(ClientOptions::new(), |options, key| {
                match builder.get_config_value(&AzureConfigKey::Client(*key)) {
                    Some(value) => options.with_config(*key, value),
                    None => options,
                }
            });
            // As `object_store` does for the emulator, which speaks plain HTTP.
            let options = if emulator { options.with_allow_http(true) } else { options };
            let http = ReqwestConnector::default()
                .connect(&options)
                .inspect_err(
                    |e| tracing::warn!(error = %e, "no HTTP client for Azure list pages: object_store lists them"),
                )
                .ok()?;
            let unsigned = is_yes(builder.get_config_value(&AzureConfigKey::SkipSignature));
            Some(Direct { container_url, account, unsigned, http })
        });
        AzurePages { store, direct }
    }

    /// Every blob under `prefix` (a folder: `pos/incoming`), page by page.
    pub fn list(self: Arc<Self>, prefix: Option<&StorePath>) -> BoxStream<'static, object_store::Result<Listed>> {
        use object_store::ObjectStore;
        if self.direct.is_none() {
            let listed = self.store.list(prefix).map_ok(|m| Listed::Blob { name: m.location.into(), size: m.size });
            return listed.boxed();
        }
        // As `object_store` lists: below the folder, not names that merely start with it.
        let prefix = prefix.filter(|p| !p.as_ref().is_empty()).map(|p| format!("{}/", p.as_ref()));
        futures::stream::try_unfold(Some(None), move |next: Option<Option<String>>| {
            let (pages, prefix) = (self.clone(), prefix.clone());
            async move {
                let (Some(marker), Some(direct)) = (next, &pages.direct) else {
                    return Ok::<_, object_store::Error>(None);
                };
                let body = direct.list_page(&pages.store, prefix.as_deref(), marker.as_deref()).await?;
                let (listed, marker) =
                    read_page(&body, prefix.as_deref().unwrap_or_default()).map_err(|reason| generic(reason.into()))?;
                Ok(Some((futures::stream::iter(listed.into_iter().map(Ok)), marker.map(Some))))
            }
        })
        .try_flatten()
        .boxed()
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
            tries += 1;
            let error = match self.try_list_page(store, &url).await {
                Ok(body) => return Ok(body),
                Err(Attempt::Final(e)) => e,
                Err(Attempt::Retry(e)) => {
                    let pause = crate::backoff::full_jitter(BACKOFF_BASE, BACKOFF_CAP, tries);
                    if tries <= MAX_RETRIES && started.elapsed() + pause <= RETRY_FOR {
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                    e
                }
            };
            let tried = match tries {
                1 => "once".to_owned(),
                n => format!("{n} times in {:.0?}", started.elapsed()),
            };
            return Err(generic(format!("List Blobs, tried {tried}: {error}").into()));
        }
    }

    async fn try_list_page(&self, store: &MicrosoftAzure, url: &url::Url) -> Result<Bytes, Attempt> {
        let mut request = http::Request::get(url.as_str())
            .body(HttpRequestBody::from(Vec::new()))
            .map_err(|e| Attempt::Final(chain(&e)))?;
        if self.unsigned {
            // What the authorizer adds before it signs, as `object_store` sends its own unsigned requests: without a
            // version, Azure answers in an old one, with no `ResourceType` or `Encoded`.
            let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
            let headers = request.headers_mut();
            headers.insert(http::header::DATE, date.parse().map_err(|e| Attempt::Final(chain(&e)))?);
            headers.insert("x-ms-version", http::HeaderValue::from_static(AZURE_VERSION));
        } else {
            let credential = store.credentials().get_credential().await.map_err(|e| Attempt::Retry(chain(&e)))?;
            // The date, the API version and the credential: a key's signature, a token, or a SAS's query pairs.
            AzureAuthorizer::new(&credential, &self.account)
                .try_authorize(&mut request)
                .map_err(|e| Attempt::Final(chain(&e)))?;
        }
        // `object_store`'s client drops the URL (and so a SAS's signature) from its errors.
        let response = self.http.execute(request).await.map_err(|e| Attempt::Retry(chain(&e)))?;
        let status = response.status();
        let body = response.into_body().bytes().await.map_err(|e| Attempt::Retry(chain(&e)))?;
        if status.is_success() {
            return Ok(body);
        }
        let error = format!("the server answered {status}: {}", crate::error_text::azure_answer(&body));
        let transient = status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429;
        Err(if transient { Attempt::Retry(error) } else { Attempt::Final(error) })
    }
}

/// A failed try, and whether another may succeed.
enum Attempt {
    Retry(String),
    Final(String),
}

fn generic(source: Box<dyn std::error::Error + Send + Sync>) -> object_store::Error {
    object_store::Error::Generic { store: "MicrosoftAzure", source }
}

/// A setting that is on, as `object_store` reads one.
fn is_yes(value: Option<String>) -> bool {
    value.is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "on" | "yes" | "y"))
}

/// The container's URL, the account, and whether it is the emulator, for the location forms `object_store` is given
/// here (see [`super::super::location::FORMS`]), the way its builder derives them; `None` for other forms.
fn address(builder: &MicrosoftAzureBuilder, url: &url::Url) -> Option<(url::Url, String, bool)> {
    let config = |key| builder.get_config_value(&key);
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
    if is_yes(config(AzureConfigKey::UseFabricEndpoint)) || container.contains('.') {
        return None;
    }
    let emulator = is_yes(config(AzureConfigKey::UseEmulator));
    let (mut base, account) = if emulator {
        let account = account.or_else(|| config(AzureConfigKey::AccountName)).unwrap_or("devstoreaccount1".into());
        let service = std::env::var("AZURITE_BLOB_STORAGE_URL").unwrap_or("http://127.0.0.1:10000".into());
        let mut base = url::Url::parse(&service).ok()?;
        base.path_segments_mut().ok()?.push(&account);
        (base, account)
    } else {
        let account = account.or_else(|| config(AzureConfigKey::AccountName))?;
        let service = config(AzureConfigKey::Endpoint).unwrap_or(format!("https://{account}.blob.core.windows.net"));
        (url::Url::parse(&service).ok()?, account)
    };
    // Joined as `object_store` joins them (an endpoint's trailing `/` makes an empty segment for both, so that the
    // listing fails as its reads would).
    base.path_segments_mut().ok()?.push(&container);
    Some((base, account, emulator))
}

/// The blobs of one List Blobs page (`EnumerationResults`), and its next marker. Directories of a hierarchical
/// namespace and folder markers (an empty blob whose name ends in `/`, the prefix's own included) are left out.
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
                        let folder_marker = size == 0 && raw.ends_with('/');
                        // The prefix's own name is a folder marker, or (with bytes) a blob to refuse, not to skip.
                        let below = raw.len() > prefix.len() || size > 0;
                        if !std::mem::take(&mut directory) && !folder_marker && below {
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

/// A name as `object_store` addresses it, or why it cannot address it as written.
fn judge(name: String, size: u64) -> Listed {
    match address_of(&name) {
        Ok(()) => Listed::Blob { name, size },
        Err(why) => Listed::Unaddressable { reason: unaddressable(&why), name, size },
    }
}

/// Whether `object_store` reads `name` as that very blob: it refuses some names, and reads a name with a leading or
/// trailing `/` as the name without it (another blob, or none).
pub fn address_of(name: &str) -> Result<(), String> {
    match StorePath::parse(name) {
        Ok(path) if path.as_ref() == name => Ok(()),
        Ok(path) if path.as_ref().is_empty() => Err("it is only '/'".into()),
        Ok(path) => Err(format!("it begins or ends with '/', and would be read as the blob {:?}", path.as_ref())),
        Err(e) => Err(e.to_string()),
    }
}

/// Why a blob whose name `object_store` cannot address is not read.
pub fn unaddressable(why: &str) -> String {
    format!(
        "the Azure client cannot address this blob's name ({why}); rename the blob (no empty, '.' or '..' segment, \
         no control character, no '/' at either end) and the next run takes it"
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
    <Blob><Name>pos/folder/</Name><Properties><Content-Length>0</Content-Length></Properties></Blob>
    <Blob><Name>pos/trail.xml/</Name><Properties><Content-Length>60</Content-Length></Properties></Blob>
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
                ("pos/trail.xml/", 60, false),
            ]
        );
        let Listed::Unaddressable { reason, .. } = &listed[1] else { panic!("{listed:?}") };
        assert!(reason.contains("empty path segment") && reason.contains("rename the blob"), "{reason}");
        let Listed::Unaddressable { reason, .. } = &listed[5] else { panic!("{listed:?}") };
        assert!(reason.contains(r#"read as the blob "pos/trail.xml""#), "{reason}");
    }

    #[test]
    fn the_prefix_own_name_is_a_folder_marker_or_a_blob_to_refuse() {
        let page = |size| {
            format!(
                "<EnumerationResults><Blobs><Blob><Name>pos/</Name><Properties><Content-Length>{size}</Content-Length>\
                 </Properties></Blob></Blobs><NextMarker/></EnumerationResults>"
            )
        };
        assert_eq!(read_page(page(0).as_bytes(), "pos/").expect("a page").0, []);
        let (listed, _) = read_page(page(7).as_bytes(), "pos/").expect("a page");
        assert!(matches!(&listed[..], [Listed::Unaddressable { name, size: 7, .. }] if name == "pos/"), "{listed:?}");
        assert!(is_yes(Some("Y".into())) && is_yes(Some("on".into())) && !is_yes(Some("n".into())) && !is_yes(None));
    }

    #[test]
    fn a_name_is_addressable_only_as_written() {
        for name in ["a.xml", "pos/x y/R&D.xml", "pos/%41.xml", "pos/..x/.y"] {
            assert_eq!(address_of(name), Ok(()), "{name}");
        }
        for name in ["/a.xml", "a.xml/", "/", "a//b.xml", "a/./b", "a/../b", "a/b\u{1}"] {
            assert!(address_of(name).is_err(), "{name}");
        }
        assert_eq!(address_of("/").expect_err("root"), "it is only '/'");
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
        let (u, a, _) = address(&plain, &url("az://landing/pos")).expect("az");
        assert_eq!((u.as_str(), a.as_str()), ("https://acct.blob.core.windows.net/landing", "acct"));
        let (u, a, _) = address(&plain, &url("abfss://fs@other.dfs.core.windows.net/pos")).expect("abfss");
        assert_eq!((u.as_str(), a.as_str()), ("https://other.blob.core.windows.net/fs", "other"));
        let (u, _, _) = address(&plain, &url("https://other.blob.core.windows.net/c/pos")).expect("https");
        assert_eq!(u.as_str(), "https://other.blob.core.windows.net/c");
        let endpoint = plain.clone().with_endpoint("https://private.example.net/".into());
        let (u, _, emulator) = address(&endpoint, &url("az://landing/pos")).expect("endpoint");
        assert!(!emulator);
        assert_eq!(u.as_str(), "https://private.example.net/landing");
        // An endpoint's trailing `/` is kept, as `object_store` keeps it: its reads and this listing address the
        // same (wrong) place, so that the listing fails at once.
        let trailing = plain.clone().with_endpoint("https://private.example.net/acct/".into());
        let (u, _, _) = address(&trailing, &url("az://landing/pos")).expect("endpoint");
        assert_eq!(u.as_str(), "https://private.example.net/acct//landing");
        assert!(address(&MicrosoftAzureBuilder::new(), &url("az://landing/pos")).is_none(), "no account");
        assert!(address(&plain, &url("https://ws.dfs.fabric.microsoft.com/c/pos")).is_none(), "fabric");
    }
}
