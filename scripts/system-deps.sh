#!/usr/bin/env bash
# System packages the test suite uses, from Debian's archive:
#   espeak-ng   speaks "okay nabu" for the real wake-word test
#   postgresql  the fleet tests run the same suite on PostgreSQL as on SQLite (the fixture
#               starts its own server from these binaries; it fails if they are missing)
#   chromium    the fleet dashboard's browser tests (Playwright drives /usr/bin/chromium;
#               `playwright install` is never run; the tests fail if it is missing)
set -euo pipefail
missing=()
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
if ! command -v initdb >/dev/null 2>&1 && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    missing+=(postgresql)
fi
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    echo "installing ${missing[*]} (for the wake-word, fleet and dashboard tests)..."
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
    echo "warning: ${missing[*]} not installed and cannot be installed here;" \
         "the wake-word speech test will be skipped without espeak-ng, and the fleet" \
         "tests on PostgreSQL fail without postgresql, the dashboard's browser tests without" \
         "chromium (install them as root with apt-get)" >&2
fi
