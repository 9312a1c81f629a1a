# Sourced by scripts/test.sh and scripts/serve.sh (from the repository root): creates the virtual
# environment if needed and installs the project with the extras given as $1; sets $py.
venv=${TRANSXNET_VENV:-.venv}
[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install --quiet --upgrade pip
# Pin the CPU build first: a looser requirement can pull a multi-GB CUDA build.
"$py" -m pip install --quiet "torch==2.13.0"
"$py" -m pip install --quiet -e ".[$1]"
