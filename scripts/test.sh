#!/usr/bin/env bash
# Runs the whole test suite from nothing: creates the virtual environment, installs the project
# with its export and dev extras, then runs pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${TRANSXNET_VENV:-.venv}
[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install --quiet --upgrade pip
# Pin the CPU build first: a looser requirement can pull a multi-GB CUDA build.
"$py" -m pip install --quiet "torch==2.13.0"
"$py" -m pip install --quiet -e ".[export,dev]"
exec "$py" -m pytest "$@"
