//! envbuild: reproducible, daemonless container images for tch trainers, pushed to a registry
//! and run locally or on Azure ML. One module per part of the data's path; ARCHITECTURE.md at
//! the repository root has the map and the rules between them.

pub mod auth;
pub mod azureml;
pub mod blob;
pub mod build;
pub mod cache;
pub mod digest;
pub mod doctor;
pub mod engine;
pub mod error;
pub mod hosts;
pub mod http;
pub mod image;
pub mod jobio;
pub mod layer;
pub mod progress;
pub mod publish;
pub mod registry;
pub mod sbom;
pub mod snapshot;
pub mod spec;

/// The hint of `e` when its type is one of the library's errors that carry one
/// ([`error::Hint`]). Kept at the crate root, which may name every module, so that no module
/// has to know all the others.
pub fn hint_of(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    fn h<T: error::Hint + std::error::Error + 'static>(
        e: &(dyn std::error::Error + 'static),
    ) -> Option<String> {
        e.downcast_ref::<T>()
            .and_then(error::Hint::hint)
            .map(std::borrow::Cow::into_owned)
    }
    h::<error::Hinted>(e)
        .or_else(|| h::<registry::RegistryError>(e))
        .or_else(|| h::<auth::entra::EntraError>(e))
        .or_else(|| h::<auth::docker_config::ConfigError>(e))
        .or_else(|| h::<image::linkcheck::LinkError>(e))
        .or_else(|| h::<azureml::AzureError>(e))
        .or_else(|| h::<azureml::ArmFailure>(e))
        .or_else(|| h::<azureml::compute::ComputeError>(e))
        .or_else(|| h::<azureml::stage::StageError>(e))
        .or_else(|| h::<azureml::outputs::DownloadError>(e))
        .or_else(|| h::<snapshot::SnapshotError>(e))
        .or_else(|| h::<jobio::JobIoError>(e))
        .or_else(|| h::<blob::BlobError>(e))
        // Errors that wrap another transparently (its Display, its source): the wrapped
        // error is not in the chain, so they pass its hint on.
        .or_else(|| h::<build::BuildError>(e))
        .or_else(|| h::<publish::PublishError>(e))
        .or_else(|| h::<engine::image::EnsureError>(e))
        .or_else(|| h::<engine::local::LocalError>(e))
}
