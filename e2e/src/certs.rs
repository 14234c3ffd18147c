//! Certificates for tests: a CA of the test's own, and leaf certificates it signs, each
//! naming one node (as a DNS SAN, which the controller checks against the node id).
//! Written as PEM files into the test's directory.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate and its key, as files.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A test CA.
pub struct Pki {
    dir: PathBuf,
    name: String,
    issuer: Issuer<'static, KeyPair>,
    /// The CA's certificate (PEM), for the other side to trust.
    pub ca: PathBuf,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").field("ca", &self.ca).finish()
    }
}

impl Pki {
    /// A new CA called `name`, its certificate written to `dir/<name>-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> anyhow::Result<Pki> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        let ca = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca, cert.pem())?;
        Ok(Pki {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            issuer: Issuer::new(params, key),
            ca,
        })
    }

    /// A certificate for `node` (its DNS SAN), signed by this CA, good for both ends of
    /// a TLS connection.
    pub fn issue(&self, node: &str) -> anyhow::Result<Leaf> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![node.to_string()])?;
        params.distinguished_name.push(DnType::CommonName, node);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer)?;
        let base = self.dir.join(format!("{}-{node}", self.name));
        let leaf = Leaf {
            cert: base.with_extension("crt"),
            key: base.with_extension("key"),
        };
        std::fs::write(&leaf.cert, cert.pem())?;
        std::fs::write(&leaf.key, key.serialize_pem())?;
        Ok(leaf)
    }
}
