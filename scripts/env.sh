# Sourced by the other scripts (and by you: `. scripts/env.sh`) to build and run against the
# project's own libtorch: the venv's python first on PATH for tch's LIBTORCH_USE_PYTORCH=1, and
# libtorch's lib directory on LD_LIBRARY_PATH for the binaries and tests.
ENVBUILD_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export ENVBUILD_ROOT
export VIRTUAL_ENV="$ENVBUILD_ROOT/.venv"
case ":$PATH:" in *":$VIRTUAL_ENV/bin:"*) ;; *) export PATH="$VIRTUAL_ENV/bin:$PATH" ;; esac
export LIBTORCH_USE_PYTORCH=1
unset LIBTORCH
for d in "$VIRTUAL_ENV"/lib/python3*/site-packages; do ENVBUILD_SITE="$d"; done
export ENVBUILD_SITE
export ENVBUILD_TORCH_LIB="$ENVBUILD_SITE/torch/lib"
case ":${LD_LIBRARY_PATH:-}:" in
  *":$ENVBUILD_TORCH_LIB:"*) ;;
  *) export LD_LIBRARY_PATH="$ENVBUILD_TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;;
esac
# Reproducible binaries: the checkout and the cargo home are remapped in every path the
# compilers embed (panic locations, __FILE__ in libtorch's headers), so the trainer is the same
# bytes from any checkout path. Rust gets only the cargo-home remap: cargo hashes RUSTFLAGS into
# every crate's -C metadata, so a checkout-dependent flag would itself change the binary (and
# workspace crates are compiled with relative paths already). C/C++ flags are not hashed, but a
# change reruns the build scripts that read them: the checkout remap is in CXXFLAGS only, for
# the C++ that includes libtorch's headers from .venv (torch-sys, the trainer's c10d shim); the
# C crates (zstd, bzip2, ring, libdeflate) compile from the cargo home and OUT_DIR alone, so
# another checkout (the reproducibility test's) does not compile them again.
ENVBUILD_CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
export RUSTFLAGS="--remap-path-prefix=$ENVBUILD_CARGO_HOME=/cargo"
export CFLAGS="-ffile-prefix-map=$ENVBUILD_CARGO_HOME=/cargo"
export CXXFLAGS="-ffile-prefix-map=$ENVBUILD_ROOT=/envbuild $CFLAGS"
