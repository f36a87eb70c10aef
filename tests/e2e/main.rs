//! End-to-end tests with the real parts: the release trainer linked against real libtorch,
//! skopeo, umoci, the Docker engine, a real registry, and the Azure stand-ins. One test binary;
//! one module per capability.

mod auth;
mod azure;
mod azure_spec;
mod blob;
mod build;
mod cli;
mod code;
mod code_azure;
mod compute;
mod hostile;
mod mlflow;
mod python;
mod ranks;
mod registry;
mod run;
mod sweep;
mod trainer;
mod transfer;
