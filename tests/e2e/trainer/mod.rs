//! The trainer binary on its own, as scripts/build-release.sh builds it for images: the CLI end
//! to end on synthetic data, and data-parallel ranks as processes. These live here rather than in
//! trainer/tests so that `cargo test --workspace` never builds a second trainer binary (with the
//! whole workspace's features) over target/release/trainer, the one the images carry.

mod cli;
mod common;
mod distributed;
