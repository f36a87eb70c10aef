//! What envbuild knows about particular registry hosts, in one place: which hosts are Azure
//! Container Registries (Entra ID by default), GHCR, Docker Hub's API host, loopback hosts
//! (plain HTTP), and the largest request each service takes. A top-level module rather than
//! part of `registry/`, because `auth`'s default policy (Entra for ACR) needs it and `registry`
//! needs `auth`.

/// Whether `registry` (host or host:port) is an Azure Container Registry, public or sovereign
/// cloud, where Microsoft Entra ID is the default authentication.
pub fn is_acr(registry: &str) -> bool {
    let host = host_of(registry);
    [".azurecr.io", ".azurecr.cn", ".azurecr.us"]
        .iter()
        .any(|s| host.ends_with(s))
}

/// Whether `host` (host or host:port) is this machine: reached over plain HTTP.
pub fn is_loopback(host: &str) -> bool {
    let h = host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    h == "localhost" || h.starts_with("127.") || h == "[::1]"
}

/// The host that serves the registry API: Docker Hub's references say `docker.io`, its API is
/// at `registry-1.docker.io`.
pub fn api_host(registry: &str) -> &str {
    if registry == "docker.io" {
        "registry-1.docker.io"
    } else {
        registry
    }
}

/// `http` for loopback hosts and those named insecure, else `https`.
pub fn scheme(api_host: &str, insecure: &[String]) -> &'static str {
    if is_loopback(api_host) || insecure.iter().any(|h| h == api_host) {
        "http"
    } else {
        "https"
    }
}

/// Blobs up to the chunk size go up in one request; larger ones in PATCHes of that size. The
/// default follows what each service accepts: ACR answers 413 to single requests over ~20 MB,
/// GHCR 416 to PATCH bodies over 4 MiB; elsewhere (ECR wants ≥ 5 MB, self-hosted distribution
/// anything) large chunks cost the fewest round trips and registry-side hash checkpoints.
pub fn default_chunk(registry: &str) -> u64 {
    if is_acr(registry) {
        16 << 20
    } else if host_of(registry) == "ghcr.io" {
        4 << 20
    } else {
        128 << 20
    }
}

fn host_of(registry: &str) -> &str {
    registry.split(':').next().unwrap_or(registry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_follow_each_services_limits() {
        assert_eq!(default_chunk("myacr.azurecr.io"), 16 << 20);
        assert_eq!(default_chunk("ghcr.io"), 4 << 20);
        assert_eq!(default_chunk("127.0.0.1:5000"), 128 << 20);
        assert_eq!(
            default_chunk("123456789012.dkr.ecr.eu-west-1.amazonaws.com"),
            128 << 20
        );
    }

    #[test]
    fn acr_and_loopback_hosts() {
        for acr in ["myacr.azurecr.io", "a.azurecr.cn:443", "gov.azurecr.us"] {
            assert!(is_acr(acr), "{acr}");
        }
        for other in ["ghcr.io", "azurecr.io.evil.com", "127.0.0.1:5000"] {
            assert!(!is_acr(other), "{other}");
        }
        assert!(
            is_loopback("127.0.0.1:5000")
                && is_loopback("localhost")
                && is_loopback("[::1]")
                && !is_loopback("myacr.azurecr.io")
        );
        assert_eq!(api_host("docker.io"), "registry-1.docker.io");
        assert_eq!(scheme("127.0.0.1:5000", &[]), "http");
        assert_eq!(scheme("reg.lan:5000", &["reg.lan:5000".into()]), "http");
        assert_eq!(scheme("myacr.azurecr.io", &[]), "https");
    }
}
