#!/usr/bin/env bash
# The dashboard's browser test (tests/dashboard/dashboard.mjs): builds the workspace, the fake
# driver and the C test programs, then loads `vgpu exporter`'s page in headless Chromium while
# real test processes fill the regions it watches. Needs node/npm; installs Chromium if missing.
# The screenshot goes to $DASHBOARD_SCREENSHOT (default target/ci-artifacts/dashboard.png).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

if [ ! -x /usr/bin/chromium ]; then
    echo "== installing chromium"
    sudo_=""
    [ "$(id -u)" = 0 ] || sudo_=sudo
    $sudo_ apt-get update -qq
    $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
/usr/bin/chromium --version

echo "== npm ci (tests/dashboard)"
(cd tests/dashboard && npm ci --no-audit --no-fund --loglevel=error)

echo "== build (debug, as cargo test builds it)"
target=${CARGO_TARGET_DIR:-target}
cargo build --workspace --quiet
profile="$target/debug"
sh crates/fakegpu/make-driver-dir.sh "$profile" "$profile/e2e/driver"
sh tests/c/build.sh "$profile/e2e/driver" "$profile/e2e/bin"

echo "== dashboard in headless chromium"
VGPU_PROFILE_DIR="$profile" node tests/dashboard/dashboard.mjs
echo "== dashboard test passed in $((SECONDS - start)) s"
