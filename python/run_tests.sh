#!/usr/bin/env bash
# The Python package's tests (CI runs this after `cargo test`): installs the package from this checkout
# into a virtual environment under target/ (pip builds the extension with maturin), then runs pytest.
# The tests compare against the CLI binary `cargo test` built (target/debug/servesim), or SERVESIM_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=target/python-venv
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q ".[test]"
export SERVESIM_BIN=${SERVESIM_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/debug/servesim}
# From python/tests, so that `import servesim` finds the installed package, not python/servesim.
cd python/tests && "../../$VENV/bin/python" -m pytest -q -p no:cacheprovider .
