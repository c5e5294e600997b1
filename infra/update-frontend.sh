#!/usr/bin/env bash
# Re-fetch the review app's front-end files from the npm registry (npm pack: no node_modules,
# no build) into safetynet/review/static/vendor/. Usage: infra/update-frontend.sh [echarts@X] [htmx.org@Y]
set -euo pipefail
cd "$(dirname "$0")/.."
out=safetynet/review/static/vendor
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "${1:-echarts@5}" "${2:-htmx.org@2}" >/dev/null && for f in *.tgz; do mkdir "${f%.tgz}" && tar xzf "$f" -C "${f%.tgz}" --strip-components 1; done)
cp "$tmp"/echarts-*/dist/echarts.min.js "$tmp"/htmx.org-*/dist/htmx.min.js "$out/"
cp "$tmp"/echarts-*/LICENSE "$out/LICENSE.echarts"; cp "$tmp"/htmx.org-*/LICENSE "$out/LICENSE.htmx"
ls "$tmp" | grep -v tgz
