#!/usr/bin/env bash
# The peer servers' environments for the server benchmark (bench_server.py, server_peers.py),
# created in DIR (default /tmp) with every version pinned:
#
#   DIR/mlserver-venv        Seldon MLServer 1.7.1 and ONNX Runtime (peers/mlserver.txt, a lock
#                            of every package; uvloop 0.21)
#   DIR/triton-venv          the nvidia-pytriton 0.7.0 wheel, for the tritonserver 2.51 binary,
#                            its Python backend and the backend's stubs it ships (no dependencies:
#                            nothing of pytriton's Python side runs)
#   DIR/triton-model-venv    numpy 1.26 and ONNX Runtime for Triton's Python-backend model.py,
#                            made with the Python whose libpython the backend stub links (the
#                            system's /usr/bin/python3.11 on Debian 12; see triton_peer.py)
#
# Usage: benchmarks/peers/setup.sh [DIR]
#   then: .venv/bin/python benchmarks/bench_server.py --peers-only --peers-dir DIR
# Environment: PYTHON (a Python 3.11 for the first two, default python3.11), SYSTEM_PYTHON
# (default /usr/bin/python3.11). Every install goes through the project's constraints.txt.
# Running it again installs into the existing environments (pip leaves pinned versions be).
# Not part of `make test`: the tests do not need the peers.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DIR=${1:-/tmp}
PYTHON=${PYTHON:-python3.11}
SYSTEM_PYTHON=${SYSTEM_PYTHON:-/usr/bin/python3.11}
CONSTRAINTS=$ROOT/constraints.txt
PYTRITON=nvidia-pytriton==0.7.0

die() {
    echo "setup.sh: $*" >&2
    exit 2
}

command -v "$PYTHON" >/dev/null || die "$PYTHON not found (expected a Python 3.11; set PYTHON=...)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' ||
    die "$PYTHON is not Python 3.11 (set PYTHON to a Python 3.11)"
[ -x "$SYSTEM_PYTHON" ] || die "$SYSTEM_PYTHON not found (expected the system's Python 3.11; set SYSTEM_PYTHON=...)"
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)

make_venv() { # PYTHON VENV
    if [ ! -x "$2/bin/python" ]; then
        echo "creating $2 ($("$1" -V))"
        "$1" -m venv "$2"
    else
        echo "installing into the existing $2"
    fi
}

# 1. MLServer
make_venv "$PYTHON" "$DIR/mlserver-venv"
"$DIR/mlserver-venv/bin/python" -m pip install -q --disable-pip-version-check \
    -c "$CONSTRAINTS" -r "$HERE/mlserver.txt"
"$DIR/mlserver-venv/bin/mlserver" --version

# 2. Triton: the binary from the pytriton wheel
make_venv "$PYTHON" "$DIR/triton-venv"
"$DIR/triton-venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps \
    -c "$CONSTRAINTS" "$PYTRITON"
TRITON=$DIR/triton-venv/lib/python3.11/site-packages/pytriton/tritonserver
STUB=$TRITON/python_backend_stubs/3.11/triton_python_backend_stub
[ -x "$TRITON/bin/tritonserver" ] || die "$TRITON/bin/tritonserver missing from $PYTRITON"
[ -x "$STUB" ] || die "$STUB missing from $PYTRITON"

# 3. Triton's model environment, on the Python the stub embeds
LIBPYTHON=$(ldd "$STUB" | awk '/libpython3\.11/ {print $3}')
[ -n "$LIBPYTHON" ] && [ "$LIBPYTHON" != "not" ] ||
    die "the Python backend stub finds no libpython3.11.so.1.0 (apt-get install libpython3.11)"
SYSTEM_LIB=$("$SYSTEM_PYTHON" -c 'import os, sysconfig as s; print(os.path.join(s.get_config_var("LIBDIR"), s.get_config_var("INSTSONAME")))')
[ "$(realpath "$LIBPYTHON")" = "$(realpath "$SYSTEM_LIB")" ] ||
    die "the stub links $LIBPYTHON but $SYSTEM_PYTHON's library is $SYSTEM_LIB; set SYSTEM_PYTHON to the Python that owns $LIBPYTHON"
make_venv "$SYSTEM_PYTHON" "$DIR/triton-model-venv"
"$DIR/triton-model-venv/bin/python" -m pip install -q --disable-pip-version-check \
    -c "$CONSTRAINTS" -r "$HERE/triton-model.txt"
"$DIR/triton-model-venv/bin/python" -c 'import numpy, onnxruntime; print("triton model env: numpy", numpy.__version__, "onnxruntime", onnxruntime.__version__)'

echo "peers ready in $DIR: .venv/bin/python benchmarks/bench_server.py --peers-only --peers-dir $DIR"
