//! envbuild: reproducible, daemonless container images for tch trainers, pushed to a registry
//! and run locally or on Azure ML. One module per step of the data's path (see the design).

pub mod azureml;
pub mod build;
pub mod cache;
pub mod compress;
pub mod credential;
pub mod digest;
pub mod docker_config;
pub mod engine;
pub mod image;
pub mod inspect;
pub mod layer;
pub mod linkcheck;
pub mod registry;
pub mod run;
pub mod spec;
