#!/usr/bin/env bash
# Runs the whole test suite from nothing: installs the Debian packages the tests drive, creates the
# virtual environment, installs the project with its export and dev extras, then runs pytest.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_system.sh
source scripts/_venv.sh "export,dev"
exec "$py" -m pytest "$@"
