//! A real registry (Debian's docker-registry, distribution 2.8) for the tests, with or without
//! token authentication.

use std::path::PathBuf;
use std::process::Command;

/// A real registry (Debian's docker-registry, distribution 2.8) on a free loopback port with a
/// temporary storage directory; stopped on drop.
#[derive(Debug)]
pub struct Registry {
    pub addr: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

/// distribution's token authentication (`auth.token`): the registry sends clients to `realm`
/// and accepts JWTs from `issuer` signed by a key whose certificate chains to a root in
/// `rootcertbundle`, for the service named by the registry's own address.
#[derive(Debug, Clone)]
pub struct TokenAuth {
    pub realm: String,
    pub issuer: String,
    pub rootcertbundle: PathBuf,
}

impl Registry {
    /// Starts an open registry, or one with htpasswd Basic auth for `user`/`password`.
    pub fn start(basic: Option<(&str, &str)>) -> Registry {
        Registry::launch(basic, None)
    }

    /// Starts a registry in token-auth mode (see [`TokenAuth`]).
    pub fn start_token(token: &TokenAuth) -> Registry {
        Registry::launch(None, Some(token))
    }

    fn launch(basic: Option<(&str, &str)>, token: Option<&TokenAuth>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        if let Some((user, password)) = basic {
            let hash = bcrypt::hash(password, 5).unwrap();
            std::fs::write(dir.path().join("htpasswd"), format!("{user}:{hash}\n")).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: envbuild-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            ));
        }
        if let Some(t) = token {
            config.push_str(&format!(
                "auth:\n  token:\n    realm: {}\n    service: {addr}\n    issuer: {}\n    rootcertbundle: {}\n",
                t.realm,
                t.issuer,
                t.rootcertbundle.display()
            ));
        }
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("registry.log")).unwrap())
            .spawn()
            .expect("docker-registry (Debian package docker-registry) starts");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "registry did not start on {addr}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Registry {
            addr,
            child,
            _dir: dir,
        }
    }
}

impl Registry {
    /// What the registry logged (errors only), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("registry.log")).unwrap_or_default()
    }

    /// The registry's storage directory (every blob and manifest it holds).
    pub fn storage(&self) -> PathBuf {
        self._dir.path().join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
