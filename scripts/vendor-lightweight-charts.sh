#!/usr/bin/env bash
# Refreshes the dashboard's vendored chart library from the npm registry: its standalone production ES module
# (no dependencies to resolve), its licence, and a notice with the version and checksum. Needs npm.
# Usage: scripts/vendor-lightweight-charts.sh [VERSION]   (default: the version noted in the notice now)
set -euo pipefail
cd "$(dirname "$0")/.."
vendor=app/web/static/vendor
notice="$vendor/lightweight-charts.NOTICE"
version="${1:-$(sed -n 's/^version: //p' "$notice")}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "lightweight-charts@$version" >/dev/null && tar xzf "lightweight-charts-$version.tgz")
# .js, not .mjs: Python before 3.12 has no MIME type for .mjs, and browsers refuse modules served without one.
cp "$work/package/dist/lightweight-charts.standalone.production.mjs" "$vendor/lightweight-charts.js"
cp "$work/package/LICENSE" "$vendor/lightweight-charts.LICENSE"
cat > "$notice" <<NOTICE
TradingView Lightweight Charts(TM)
$(grep -o -m1 "Copyright (c) [0-9]* TradingView, Inc." "$vendor/lightweight-charts.js") https://www.tradingview.com/
Licensed under the Apache License 2.0 (lightweight-charts.LICENSE).

package: lightweight-charts
version: $version
file: dist/lightweight-charts.standalone.production.mjs -> lightweight-charts.js
sha256: $(sha256sum "$vendor/lightweight-charts.js" | cut -d' ' -f1)
refresh: scripts/vendor-lightweight-charts.sh [VERSION]  (or: make vendor-charts)
NOTICE
echo "vendored lightweight-charts $version into $vendor"
