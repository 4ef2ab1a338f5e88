//! The cluster secret: what a scheduler and its executors present to each
//! other. The scheduler's cluster port (Ballista's scheduler protocol) and
//! every executor's data port admit a call only with it; clients never
//! have it (they read results from executors with one-time grants).
//!
//! The secret travels in the `user-agent` header of every internal call
//! (`lakelink-cluster/<secret>`): Ballista opens some of those connections
//! itself (shuffle reads, an executor's polls) and lets LakeLink set only
//! their endpoint, not their headers. Without TLS it crosses the network in
//! the clear, like any bearer token: run clusters on a private network or
//! with TLS.

use std::path::Path;

use tonic::metadata::MetadataMap;
use tonic::transport::Endpoint;

/// The environment variable a process reads the cluster secret from.
pub const SECRET_ENV: &str = "LAKELINK_CLUSTER_SECRET";

/// The file's permission bits when users other than its owner may open it;
/// `None` for a private file.
pub(crate) fn others_may_open(path: &Path) -> std::io::Result<Option<u32>> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
    Ok((mode & 0o077 != 0).then_some(mode))
}

/// Where a process looks for the cluster secret when it is given none:
/// `~/.config/lakelink/cluster.secret`.
pub fn default_file() -> Result<std::path::PathBuf, String> {
    // Not a shared folder such as /tmp, where another user could plant one.
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).ok_or_else(|| {
        format!(
            "HOME is not set, so there is no default cluster secret file: give --cluster-secret-file or {SECRET_ENV}"
        )
    })?;
    Ok(std::path::PathBuf::from(home).join(".config").join("lakelink").join("cluster.secret"))
}

/// How long an executor waits for the secret file to appear (its scheduler,
/// started moments before, may not have written it yet).
pub const SECRET_FILE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The cluster secret of this process: `LAKELINK_CLUSTER_SECRET`, else the
/// file given, else [`default_file`]; a scheduler (`create`) writes a new
/// secret there when there is none, an executor requires one.
pub fn resolve(file: Option<&Path>, create: bool) -> Result<ClusterSecret, String> {
    if let Ok(text) = std::env::var(SECRET_ENV) {
        return ClusterSecret::parse(&text).map_err(|e| format!("{SECRET_ENV}: {e}"));
    }
    let path = match file {
        Some(path) => path.to_path_buf(),
        None => default_file()?,
    };
    if create {
        let existed = path.exists();
        let secret = ClusterSecret::from_file_or_new(&path)?;
        if !existed {
            tracing::info!("wrote a new cluster secret to {}: give it to every executor", path.display());
        }
        Ok(secret)
    } else {
        let deadline = std::time::Instant::now() + SECRET_FILE_WAIT;
        while !path.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        if path.exists() {
            ClusterSecret::from_file(&path)
        } else {
            Err(format!(
                "no cluster secret: {} does not exist (waited {} s); give the scheduler's secret with \
                 --cluster-secret-file or {SECRET_ENV}",
                path.display(),
                SECRET_FILE_WAIT.as_secs()
            ))
        }
    }
}

/// The shortest secret accepted.
const MIN_LEN: usize = 16;

/// The secret a cluster's processes share.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret(String);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

impl ClusterSecret {
    /// A new random secret (244 random bits).
    pub fn generate() -> Self {
        Self(format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple()))
    }

    /// A secret from text: at least 16 letters, digits, `-` or `_` (surrounding
    /// white space ignored), so it fits a header unchanged.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.len() < MIN_LEN {
            return Err(format!("the cluster secret must be at least {MIN_LEN} characters long"));
        }
        if !text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err("the cluster secret may hold only letters, digits, '-' and '_'".into());
        }
        Ok(Self(text.to_string()))
    }

    /// The secret in `path`, a file only its owner may read.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let open = others_may_open(path)
            .map_err(|e| format!("cannot read the cluster secret file {}: {e}", path.display()))?;
        if let Some(mode) = open {
            return Err(format!(
                "the cluster secret file {} may be read by other users (mode {mode:o}): `chmod 600` it",
                path.display()
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the cluster secret file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The secret in `path`, written there first (mode 0600, in a folder
    /// only this user may enter) when the file does not exist.
    pub fn from_file_or_new(path: &Path) -> Result<Self, String> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        if path.exists() {
            return Self::from_file(path);
        }
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let secret = Self::generate();
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| format!("cannot write the cluster secret file {}: {e}", path.display()))?;
        std::io::Write::write_all(&mut file, format!("{}\n", secret.0).as_bytes())
            .map_err(|e| format!("cannot write the cluster secret file {}: {e}", path.display()))?;
        Ok(secret)
    }

    /// The `user-agent` value that carries the secret.
    pub fn user_agent(&self) -> String {
        format!("lakelink-cluster/{}", self.0)
    }

    /// `endpoint`, presenting the secret on every call.
    pub fn present(&self, endpoint: Endpoint) -> Result<Endpoint, tonic::transport::Error> {
        endpoint.user_agent(self.user_agent())
    }

    /// Whether a call's headers present this secret.
    pub fn admits(&self, metadata: &MetadataMap) -> bool {
        let wanted = self.user_agent();
        metadata
            .get_all("user-agent")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(str::split_whitespace)
            .any(|token| constant_time_eq(token.as_bytes(), wanted.as_bytes()))
    }

    /// A tonic interceptor admitting only calls that present the secret.
    pub fn interceptor(
        &self,
    ) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone + use<> {
        let secret = self.clone();
        move |request: tonic::Request<()>| {
            if secret.admits(request.metadata()) { Ok(request) } else { Err(unauthenticated()) }
        }
    }
}

/// How a process of the cluster reaches the others: presenting the secret,
/// and speaking TLS (checking their certificates against `ca`) where the
/// cluster runs with TLS.
#[derive(Debug, Clone)]
pub struct ClusterLink {
    /// The cluster secret.
    pub secret: ClusterSecret,
    /// The CA of the other processes' certificates; `None`: plaintext.
    pub ca: Option<crate::tls::TlsCa>,
}

impl ClusterLink {
    /// A link without TLS.
    pub fn plain(secret: ClusterSecret) -> Self {
        Self { secret, ca: None }
    }

    /// `endpoint` as a member of the cluster reaches another: presenting
    /// the secret, and over TLS when the cluster has a CA. Ballista names
    /// its peers `http://`; under TLS the endpoint is made anew for
    /// `https://` (tonic speaks TLS only there) with Ballista's default
    /// client settings.
    pub fn endpoint(&self, endpoint: Endpoint) -> Result<Endpoint, String> {
        let endpoint = match &self.ca {
            Some(ca) => ca.connect(over_https(endpoint)?)?,
            None => endpoint,
        };
        self.secret.present(endpoint).map_err(|e| e.to_string())
    }

    /// [`Self::endpoint`] for Ballista's clients (its override hook).
    pub fn endpoint_override(&self) -> ballista_core::extension::EndpointOverrideFn {
        let link = self.clone();
        std::sync::Arc::new(move |endpoint| link.endpoint(endpoint).map_err(Into::into))
    }

    /// The URI scheme clients use for a member's data port.
    pub fn scheme(&self) -> &'static str {
        if self.ca.is_some() { "grpc+tls" } else { "grpc" }
    }
}

/// `endpoint` for `https://` at the same address.
fn over_https(endpoint: Endpoint) -> Result<Endpoint, String> {
    let uri = endpoint.uri();
    if uri.scheme_str() == Some("https") {
        return Ok(endpoint);
    }
    let authority = uri.authority().ok_or_else(|| format!("no host in the address {uri}"))?;
    let config = ballista_core::utils::GrpcClientConfig::default();
    ballista_core::utils::create_grpc_client_endpoint(format!("https://{authority}"), Some(&config))
        .map_err(|e| format!("invalid address {uri}: {e}"))
}

/// The refusal of a call without the cluster secret.
pub fn unauthenticated() -> tonic::Status {
    tonic::Status::unauthenticated(
        "this port serves the cluster's own processes: the call did not present the cluster secret",
    )
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_checked_and_only_the_exact_one_is_admitted() {
        assert!(ClusterSecret::parse("short").is_err());
        assert!(ClusterSecret::parse("has spaces in the secret!").is_err());
        let secret = ClusterSecret::parse(" 0123456789abcdef-_XYZ \n").unwrap();
        let mut m = MetadataMap::new();
        assert!(!secret.admits(&m));
        m.insert("user-agent", "lakelink-cluster/0123456789abcdef-_XYZ tonic/0.14".parse().unwrap());
        assert!(secret.admits(&m));
        let other = ClusterSecret::generate();
        assert!(!other.admits(&m));
        let mut near = MetadataMap::new();
        near.insert("user-agent", "lakelink-cluster/0123456789abcdef-_XY".parse().unwrap());
        assert!(!secret.admits(&near));
        assert!(!format!("{secret:?}").contains("0123"), "the secret shows in Debug");
    }

    #[test]
    fn a_missing_secret_file_is_written_privately_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conf").join("cluster.secret");
        let first = ClusterSecret::from_file_or_new(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(ClusterSecret::from_file_or_new(&path).unwrap(), first);
        assert_eq!(ClusterSecret::from_file(&path).unwrap(), first);
        // A copy others may read is refused, with the fix.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let refused = ClusterSecret::from_file(&path).unwrap_err();
        assert!(refused.contains("chmod 600") && refused.contains("644"), "{refused}");
    }
}
