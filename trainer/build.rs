//! Compiles csrc/dist.cpp, the trainer's door to libtorch's c10d (TCPStore, ProcessGroupGloo),
//! against the headers of the very libtorch that torch-sys links (it reports the lib directory
//! as DEP_TCH_LIBTORCH_LIB; the headers sit beside it in ../include). The symbols it calls are
//! libtorch_cpu's, which tch already links.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=csrc");
    let lib = PathBuf::from(
        std::env::var_os("DEP_TCH_LIBTORCH_LIB")
            .expect("torch-sys reports DEP_TCH_LIBTORCH_LIB (tch = 0.24 with LIBTORCH_USE_PYTORCH=1 or LIBTORCH)"),
    );
    let include = lib
        .parent()
        .expect("libtorch's lib has a parent")
        .join("include");
    cc::Build::new()
        .cpp(true)
        .file("csrc/dist.cpp")
        // Gloo's names only (libtorch ships c10d's headers, not Gloo's): see csrc/gloo/decls.h.
        .include("csrc")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .define("USE_C10D_GLOO", None)
        .define("USE_DISTRIBUTED", None)
        // The torch 2.x wheels are built with the C++11 string ABI; a mismatch fails at link
        // time (std::__cxx11::basic_string in every mangled name), never silently.
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .flag("-std=c++17")
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false)
        .compile("envbuild_dist");
}
