#!/usr/bin/env bash
# System packages the test suite uses: espeak-ng speaks "okay nabu" for the real wake-word test.
set -euo pipefail
if command -v espeak-ng >/dev/null 2>&1; then
    exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    echo "installing espeak-ng (for the wake-word test)..."
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null
else
    echo "warning: espeak-ng is not installed and cannot be installed here;" \
         "the wake-word speech test will be skipped (install espeak-ng to run it)" >&2
fi
