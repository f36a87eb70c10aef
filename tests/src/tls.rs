//! HTTPS for test servers: one test CA per test process (its PEM in a temp file, to hand to the
//! code under test as a CA bundle), certificates for `127.0.0.1`/`localhost`, and
//! [`serve_https`]/[`serve_http`], which run an axum `Router` on a free loopback port from a
//! background tokio runtime.
//!
//! ```no_run
//! let server = envbuild_e2e::tls::serve_https(axum::Router::new());
//! let ca = envbuild_e2e::tls::ca().pem_file(); // trust this, then talk to server.url
//! ```

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use axum::Router;
use rcgen::{CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The test CA of this process.
#[derive(Debug)]
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
    file: tempfile::NamedTempFile,
}

/// A certificate (PEM and DER) with its private key (PKCS#8 PEM).
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    pub key_pem: String,
    /// The key as PKCS#8 DER.
    pub key_der: Vec<u8>,
}

/// The process's test CA, made on first use.
pub fn ca() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(|| {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(DnType::CommonName, "envbuild test CA");
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("CA certificate");
        let pem = cert.pem();
        let file = tempfile::Builder::new()
            .prefix("envbuild-test-ca-")
            .suffix(".pem")
            .tempfile()
            .expect("temp file for the CA");
        std::fs::write(file.path(), &pem).expect("write CA PEM");
        TestCa {
            issuer: Issuer::new(params, key),
            pem,
            file,
        }
    })
}

impl TestCa {
    /// Path of the CA certificate (PEM): what `--ca-file`/`ENVBUILD_CA_FILE` should name.
    pub fn pem_file(&self) -> &Path {
        self.file.path()
    }

    /// The CA certificate (PEM).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A certificate signed by this CA for `names` (DNS names or IP addresses).
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        Leaf {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        }
    }

    /// A rustls server configuration for `127.0.0.1` and `localhost`.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let key = KeyPair::generate().expect("server key");
        let params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("server params");
        let cert = params.signed_by(&key, &self.issuer).expect("server cert");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .expect("server TLS config");
        Arc::new(config)
    }
}

/// The background runtime every test server of this process runs on.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("envbuild-test-server")
            .build()
            .expect("test server runtime")
    })
}

/// A running test server; stops accepting connections when dropped.
#[derive(Debug)]
pub struct Served {
    /// `https://127.0.0.1:PORT` or `http://127.0.0.1:PORT` (no trailing slash).
    pub url: String,
    pub addr: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Serves `router` over HTTPS (certificate from [`ca`]) on a free loopback port.
pub fn serve_https(router: Router) -> Served {
    serve(router, Some(ca().server_config()))
}

/// Serves `router` over plain HTTP on a free loopback port.
pub fn serve_http(router: Router) -> Served {
    serve(router, None)
}

fn serve(router: Router, tls: Option<Arc<rustls::ServerConfig>>) -> Served {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    std_listener.set_nonblocking(true).expect("nonblocking");
    let addr = std_listener.local_addr().expect("local addr");
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let scheme = if tls.is_some() { "https" } else { "http" };
    runtime().spawn(async move {
        let listener = tokio::net::TcpListener::from_std(std_listener).expect("tokio listener");
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        loop {
            let (tcp, _) = tokio::select! {
                _ = &mut stopped => return,
                r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
            };
            let router = router.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let service = hyper_util::service::TowerToHyperService::new(router);
                let http = hyper::server::conn::http1::Builder::new();
                match acceptor {
                    Some(a) => {
                        if let Ok(stream) = a.accept(tcp).await {
                            let _ = http
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                .await;
                        }
                    }
                    None => {
                        let _ = http
                            .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                            .await;
                    }
                }
            });
        }
    });
    Served {
        url: format!("{scheme}://{addr}"),
        addr,
        _stop: stop,
    }
}

/// Random URL-safe text (for tokens and secrets of the stand-ins).
pub fn random(bytes: usize) -> String {
    use base64::Engine as _;
    let mut buf = vec![0u8; bytes];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("/dev/urandom");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}
