# Sourced by scripts/test.sh: installs the Debian packages the tests drive when they are missing, so
# the test command works from nothing. Where apt-get cannot run (not root, no sudo) it says so once
# and the tests that need a package skip with the reason; as root a failed install stops the run.
system_packages=(
    chromium       # the real-browser tests of /demo and /docs (Playwright drives it)
    docker-compose # renders compose.yaml offline (no Docker engine needed)
    libb64-0d      # Triton's perf_analyzer (shipped in the tritonclient wheel) links it
    strace         # tests/deploy: what the Kubernetes container writes (its root filesystem is read-only)
)
missing=()
for package in "${system_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        sudo -n apt-get update -qq
        sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    else
        echo "scripts/test.sh: cannot install ${missing[*]} (not root, no sudo): the tests that need them skip" >&2
    fi
fi
