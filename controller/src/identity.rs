//! Who a stream's peer is: with mTLS, the names in its client certificate (already
//! verified against `controller.tls.clientCa` by the TLS handshake). A stream is accepted
//! only from the node its certificate names: node id `N` needs a certificate valid for
//! DNS name `N`; a node id `N/anything` (one certificate shared by the pods of a
//! Deployment, each naming itself after the slash) needs one valid for `N`.
//!
//! Without TLS (a local stack on loopback) there is no identity and every node id is
//! taken as given.

use std::sync::Arc;

use rustls_pki_types::{CertificateDer, DnsName, ServerName};

/// The verified certificate chain of a stream's peer, if the connection is TLS.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    certs: Option<Arc<Vec<CertificateDer<'static>>>>,
}

/// Why a node id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("no client certificate")]
    NoCertificate,
    #[error("node id {0:?} is not a name a certificate can carry")]
    BadNodeId(String),
    #[error("the client certificate does not name node {0:?}")]
    NotNamed(String),
}

impl Peer {
    /// A peer without TLS: no identity to check.
    pub fn plaintext() -> Self {
        Peer { certs: None }
    }

    /// A TLS peer and its certificates (the leaf first), from tonic's
    /// `Request::peer_certs`; `tls` says whether the server requires TLS at all.
    pub fn new(tls: bool, certs: Option<Arc<Vec<CertificateDer<'static>>>>) -> Self {
        match (tls, certs) {
            (false, _) => Peer::plaintext(),
            (true, certs) => Peer {
                certs: Some(certs.unwrap_or_default()),
            },
        }
    }

    /// May this peer speak as `node`?
    ///
    /// # Errors
    /// [`Refused`], saying why not.
    pub fn check(&self, node: &str) -> Result<(), Refused> {
        let Some(certs) = &self.certs else {
            return Ok(()); // plaintext: nothing to check against
        };
        let leaf = certs.first().ok_or(Refused::NoCertificate)?;
        let name = node.split_once('/').map_or(node, |(n, _)| n);
        let dns = DnsName::try_from(name.to_string())
            .map_err(|_| Refused::BadNodeId(node.to_string()))?;
        let cert = webpki::EndEntityCert::try_from(leaf)
            .map_err(|_| Refused::NotNamed(node.to_string()))?;
        cert.verify_is_valid_for_subject_name(&ServerName::DnsName(dns))
            .map_err(|_| Refused::NotNamed(node.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_for(names: &[&str]) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().expect("key");
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.self_signed(&key).expect("cert").der().clone()
    }

    #[test]
    fn a_node_id_must_be_named_by_the_certificate() {
        let peer = Peer::new(
            true,
            Some(Arc::new(vec![cert_for(&["envoy-1", "holder-1"])])),
        );
        assert_eq!(peer.check("envoy-1"), Ok(()));
        assert_eq!(peer.check("holder-1"), Ok(()));
        assert_eq!(
            peer.check("envoy-2"),
            Err(Refused::NotNamed("envoy-2".into()))
        );
        assert!(matches!(
            peer.check("bad name!"),
            Err(Refused::BadNodeId(_))
        ));
    }

    #[test]
    fn a_shared_certificate_names_every_pod_after_the_slash() {
        let peer = Peer::new(true, Some(Arc::new(vec![cert_for(&["zenvoy-envoy"])])));
        assert_eq!(peer.check("zenvoy-envoy/proxy-7d9f-abcde"), Ok(()));
        assert!(peer.check("zenvoy-holder/proxy-7d9f-abcde").is_err());
    }

    #[test]
    fn tls_without_a_certificate_is_refused_and_plaintext_is_not_checked() {
        assert_eq!(
            Peer::new(true, None).check("envoy-1"),
            Err(Refused::NoCertificate)
        );
        assert_eq!(Peer::new(false, None).check("anyone"), Ok(()));
    }
}
