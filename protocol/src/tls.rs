//! TLS between LakeLink's processes and for their clients (rustls): the
//! certificate and key a process serves with, and the CA it checks its
//! peers' certificates against.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// A certificate chain and its private key (PEM files) to serve with.
#[derive(Debug, Clone)]
pub struct TlsIdentity {
    /// The certificate chain (PEM).
    pub cert: PathBuf,
    /// The private key (PEM).
    pub key: PathBuf,
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the TLS {what} {}: {e}", path.display()))
}

impl TlsIdentity {
    /// The PEM bytes of the chain and the key.
    pub fn pem(&self) -> Result<(Vec<u8>, Vec<u8>), String> {
        Ok((read(&self.cert, "certificate")?, read(&self.key, "key")?))
    }

    /// tonic's server configuration for this identity.
    pub fn server_config(&self) -> Result<ServerTlsConfig, String> {
        let (cert, key) = self.pem()?;
        Ok(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
    }
}

/// The CA (PEM) a process checks its peers' certificates against.
#[derive(Debug, Clone)]
pub struct TlsCa(pub PathBuf);

impl TlsCa {
    /// tonic's client configuration trusting this CA.
    pub fn client_config(&self) -> Result<ClientTlsConfig, String> {
        Ok(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&self.0, "CA certificate")?)))
    }

    /// `endpoint` speaking TLS, checking the peer against this CA.
    pub fn connect(&self, endpoint: Endpoint) -> Result<Endpoint, String> {
        endpoint.tls_config(self.client_config()?).map_err(|e| format!("TLS: {e}"))
    }
}
