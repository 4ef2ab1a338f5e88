//! Where the lake lives, and how every process reaches it.
//!
//! A lake is a local folder (`/data/lake`, `file:///data/lake`) or a folder
//! of an object store: `s3://bucket/prefix` (also `s3a://`), `gs://bucket/…`,
//! `az://container/…` (and `abfs[s]://`, `adl://`, `azure://`), or
//! `http(s)://host/…` (read-only WebDAV-style servers).
//!
//! Every process (scheduler, executors, the embedded shell) resolves store
//! URLs through one [`registry`]: the first time a plan names `s3://bucket`,
//! the process builds that store from **its own** environment and keeps it.
//! Credentials therefore never travel: plans carry `s3://bucket/key` paths,
//! and each host supplies its own keys. The variables read are the standard
//! ones of each service, all with their prefix:
//!
//! * S3: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//!   `AWS_REGION`, `AWS_ENDPOINT_URL` (S3-compatible servers), `AWS_ALLOW_HTTP`
//!   (`true` for a plain-HTTP endpoint), ...;
//! * Google Cloud Storage: `GOOGLE_SERVICE_ACCOUNT`,
//!   `GOOGLE_SERVICE_ACCOUNT_KEY`, `GOOGLE_APPLICATION_CREDENTIALS`, ...;
//! * Azure: `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`,
//!   `AZURE_STORAGE_SAS_KEY`, ...;
//! * HTTP: none (the `ALLOW_HTTP`-style switches of the client only).
//!
//! Instance credentials (EC2/ECS roles, GCE metadata, Azure managed identity)
//! are used where no key is given, as `object_store` does.
//!
//! The same settings may be given in the `[lake]` table of the config file
//! (`$LAKELINK_CONFIG`, else `~/.config/lakelink/lakelink.toml`), with
//! `object_store`'s lower-case names (`aws_access_key_id`, `aws_endpoint`,
//! `aws_allow_http`, `google_service_account`, `azure_storage_account_key`,
//! ...); a variable wins over the file. A file holding a key, secret, token
//! or password must not be readable by others (`chmod 600`).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use datafusion::common::{DataFusionError, Result};
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry, ObjectStoreUrl};
use object_store::ObjectStore;
use object_store::path::Path;
use url::Url;

/// The environment variable prefixes a store's settings are read from.
const ENV_PREFIXES: &[&str] = &["AWS_", "GOOGLE_", "AZURE_"];

/// The URL schemes served by a remote object store.
const REMOTE_SCHEMES: &[&str] = &["s3", "s3a", "gs", "az", "abfs", "abfss", "adl", "azure", "http", "https"];

/// A lake: the store holding it and its folder inside that store.
#[derive(Debug, Clone)]
pub struct LakeLocation {
    /// The store, as plans name it (`s3://bucket/`, `file:///`).
    pub store_url: ObjectStoreUrl,
    /// The lake's folder inside the store ("" for the store's root).
    pub prefix: Path,
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// The folder on this machine, for a local lake.
    pub local: Option<PathBuf>,
    /// How the lake was named, without credentials, for messages.
    shown: String,
}

impl LakeLocation {
    /// The lake named by `lake` (a local folder, `file://` or a store URL),
    /// its store built from this process's environment. Checks only that the
    /// name is usable; [`LakeLocation::check`] reaches the store.
    pub fn parse(lake: &str) -> Result<Self, String> {
        match lake.split_once("://") {
            None => Self::local(PathBuf::from(lake)),
            Some(("file", rest)) => Self::local(PathBuf::from(rest)),
            Some((scheme, _)) if REMOTE_SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()) => {
                let url = Url::parse(lake).map_err(|e| format!("not a valid URL: {e}"))?;
                if !url.username().is_empty() || url.password().is_some() {
                    return Err("credentials do not belong in the lake URL; set them in the environment \
                                (AWS_ACCESS_KEY_ID, ...)"
                        .into());
                }
                let store = registry().get_store(&url).map_err(|e| e.strip_backtrace())?;
                let store_url = ObjectStoreUrl::parse(&url[..url::Position::BeforePath])
                    .map_err(|e| format!("not a store URL: {}", e.strip_backtrace()))?;
                let prefix = Path::from_url_path(url.path()).map_err(|e| format!("not a valid path: {e}"))?;
                let shown = format!("{}{}", store_url.as_str(), prefix);
                Ok(Self { store_url, prefix, store, local: None, shown })
            }
            Some((scheme, _)) => Err(format!(
                "the '{scheme}://' scheme is not supported; use a local folder, file://, s3://, gs://, az:// or \
                 http(s)://"
            )),
        }
    }

    fn local(path: PathBuf) -> Result<Self, String> {
        let root = path.canonicalize().map_err(|e| e.to_string())?;
        if !root.is_dir() {
            return Err("not a folder".into());
        }
        let prefix = Path::from_absolute_path(&root).map_err(|e| e.to_string())?;
        let store_url = ObjectStoreUrl::local_filesystem();
        let store = registry().get_store(store_url.as_ref()).map_err(|e| e.strip_backtrace())?;
        let shown = root.display().to_string();
        Ok(Self { store_url, prefix, store, local: Some(root), shown })
    }

    /// Reaches the store once: a missing bucket, a wrong endpoint or refused
    /// credentials show here, at start, instead of at the first query.
    pub async fn check(&self) -> Result<(), String> {
        if self.local.is_some() {
            return Ok(());
        }
        self.store.list_with_delimiter(Some(&self.prefix)).await.map(|_| ()).map_err(|e| e.to_string())
    }

    /// The URL of the object or folder `path` of the store (a folder's ends
    /// with `/` when `folder`), as DataFusion's listing tables take it.
    pub fn url_of(&self, path: &Path, folder: bool) -> String {
        let mut url = format!("{}{}", self.store_url.as_str(), path);
        if folder && !url.ends_with('/') {
            url.push('/');
        }
        url
    }

    /// `path` as a user knows it: the local file, or the store URL.
    pub fn show(&self, path: &Path) -> String {
        match &self.local {
            Some(_) => format!("/{path}"),
            None => self.url_of(path, false),
        }
    }

    /// Whether the lake is on an object store rather than a local folder.
    pub fn is_remote(&self) -> bool {
        self.local.is_none()
    }
}

impl std::fmt::Display for LakeLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// The process's object stores: local files, and every remote store a plan
/// or the lake names, built on first use from the environment.
pub fn registry() -> Arc<dyn ObjectStoreRegistry> {
    static REGISTRY: OnceLock<Arc<dyn ObjectStoreRegistry>> = OnceLock::new();
    REGISTRY.get_or_init(|| Arc::new(LakeStores::default())).clone()
}

/// [`registry`]'s type: DataFusion's registry, which builds remote stores
/// it has not seen.
#[derive(Debug, Default)]
struct LakeStores {
    known: DefaultObjectStoreRegistry,
}

impl ObjectStoreRegistry for LakeStores {
    fn register_store(&self, url: &Url, store: Arc<dyn ObjectStore>) -> Option<Arc<dyn ObjectStore>> {
        self.known.register_store(url, store)
    }

    fn deregister_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        self.known.deregister_store(url)
    }

    fn get_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        if let Ok(store) = self.known.get_store(url) {
            return Ok(store);
        }
        if !REMOTE_SCHEMES.contains(&url.scheme()) {
            return self.known.get_store(url);
        }
        let store: Arc<dyn ObjectStore> = open_store(url)?.into();
        self.known.register_store(url, store.clone());
        Ok(store)
    }
}

/// The store serving `url`, configured by the config file's `[lake]` table
/// and this process's environment (which wins).
fn open_store(url: &Url) -> Result<Box<dyn ObjectStore>> {
    let file = file_settings().as_ref().map_err(|e| DataFusionError::Configuration(e.clone()))?;
    let env = std::env::vars().filter(|(key, _)| ENV_PREFIXES.iter().any(|p| key.starts_with(p)));
    let settings = file.iter().cloned().chain(env);
    let base = Url::parse(&url[..url::Position::BeforePath])
        .map_err(|e| DataFusionError::Configuration(format!("{url} is not a store URL: {e}")))?;
    object_store::parse_url_opts(&base, settings)
        .map(|(store, _)| store)
        .map_err(|e| DataFusionError::Configuration(format!("cannot open the object store {base}: {e}")))
}

/// The `[lake]` table of the config file, read once; an error when the file
/// cannot be read, is not TOML, or lets others read the secrets it holds.
fn file_settings() -> &'static std::result::Result<Vec<(String, String)>, String> {
    static SETTINGS: OnceLock<std::result::Result<Vec<(String, String)>, String>> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        // The model settings' file (`[llm]`): one config file per process.
        let Some(path) = lakelink_model::config::config_file().filter(|p| p.exists()) else { return Ok(vec![]) };
        let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let private = || crate::cluster::others_may_open(&path).is_ok_and(|open| open.is_none());
        lake_table(&text, private).map_err(|e| format!("config file {}: {e}", path.display()))
    })
}

/// The settings of the `[lake]` table of `text`; `private` says whether the
/// file is readable by its owner only (asked only when a secret is there).
fn lake_table(text: &str, private: impl FnOnce() -> bool) -> std::result::Result<Vec<(String, String)>, String> {
    let doc: toml::Table = toml::from_str(text).map_err(|e| format!("not valid TOML: {e}"))?;
    let Some(lake) = doc.get("lake") else { return Ok(vec![]) };
    let table = lake.as_table().ok_or("[lake] must be a table")?;
    let settings: Vec<(String, String)> =
        table.iter().map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_string))).collect();
    let secret = |k: &str| ["key", "secret", "token", "password"].iter().any(|w| k.to_ascii_lowercase().contains(w));
    if settings.iter().any(|(k, _)| secret(k)) && !private() {
        return Err("[lake] holds a secret but others may read the file; chmod 600 it".into());
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_folders_and_file_urls_are_the_same_lake() {
        let dir = tempfile::tempdir().unwrap();
        let plain = LakeLocation::parse(dir.path().to_str().unwrap()).unwrap();
        let url = LakeLocation::parse(&format!("file://{}", dir.path().display())).unwrap();
        assert_eq!(plain.prefix, url.prefix);
        assert!(!plain.is_remote());
        assert_eq!(
            plain.url_of(&plain.prefix, true),
            format!("file://{}/", dir.path().canonicalize().unwrap().display())
        );
    }

    #[test]
    fn store_urls_name_bucket_and_prefix() {
        let lake = LakeLocation::parse("s3://bucket/some/lake").unwrap();
        assert!(lake.is_remote());
        assert_eq!(lake.store_url.as_str(), "s3://bucket/");
        assert_eq!(lake.prefix.as_ref(), "some/lake");
        assert_eq!(lake.to_string(), "s3://bucket/some/lake");
        assert_eq!(lake.url_of(&Path::from("some/lake/orders"), true), "s3://bucket/some/lake/orders/");
    }

    #[test]
    fn the_config_files_lake_table() {
        let text = "[llm]\nbackend = 'openai'\n[lake]\naws_endpoint = 'http://127.0.0.1:9000'\naws_allow_http = true\n";
        let settings = lake_table(text, || panic!("no secret: the mode is not asked")).unwrap();
        assert_eq!(
            settings,
            vec![
                ("aws_allow_http".to_string(), "true".to_string()),
                ("aws_endpoint".to_string(), "http://127.0.0.1:9000".to_string()),
            ]
        );
        let secret = "[lake]\naws_secret_access_key = 'abc'\n";
        assert!(lake_table(secret, || false).unwrap_err().contains("chmod 600"));
        assert_eq!(lake_table(secret, || true).unwrap().len(), 1);
        assert!(lake_table("lake = 3", || true).unwrap_err().contains("must be a table"));
        assert!(lake_table("", || true).unwrap().is_empty());
    }

    #[test]
    fn bad_lakes_are_clear_errors() {
        let err = LakeLocation::parse("ftp://host/lake").unwrap_err();
        assert!(err.contains("ftp://") && err.contains("s3://"), "{err}");
        let err = LakeLocation::parse("s3://AKIAEXAMPLE:secretvalue@bucket/lake").unwrap_err();
        assert!(err.contains("environment") && !err.contains("secretvalue"), "{err}");
        let err = LakeLocation::parse("/no/such/folder/anywhere").unwrap_err();
        assert!(err.contains("No such file"), "{err}");
    }
}
