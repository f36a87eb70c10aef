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
