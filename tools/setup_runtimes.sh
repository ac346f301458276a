#!/usr/bin/env bash
# Install the runtimes the cross-runtime tests train on, beside the main environment:
#   - onnxruntime 1.19.2, the stock and the onnxruntime-training wheel, in .venv-ort1.19-stock and
#     .venv-ort1.19 (python -m tools.old_runtime_venv; it makes both)
#   - onnxruntime-node and onnxruntime-web under examples/ (npm, from the lock files)
#   - Debian's chromium for the browser test, and Node if absent (apt-get, when we are root)
# Without them those tests skip; with OPTGRAPH_REQUIRE_RUNTIMES=1 (as in CI) they fail.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {  # Debian packages, when missing and we may install them
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        [ -n "${APT_UPDATED:-}" ] || { apt-get update -qq && APT_UPDATED=1; }
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    fi
}

python3 -m tools.old_runtime_venv --runtime all
command -v npm >/dev/null || apt_install nodejs npm
for example in examples/node examples/web; do
    # --ignore-scripts: onnxruntime-node's install script downloads extra binaries; the CPU one ships in the package
    (cd "$example" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
done
command -v chromium >/dev/null || apt_install chromium
command -v chromium || echo "no chromium: the browser test will skip" >&2
