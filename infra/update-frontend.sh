#!/usr/bin/env bash
# Re-fetch the front-end files from the npm registry (npm pack: no node_modules, no build) into
# safetynet/review/static/vendor/ and rewrite its README table. Usage: infra/update-frontend.sh
#
# The review app's own files (ECharts, htmx, Swagger UI for /api/docs) follow their major version.
# The Data Docs files (data-docs/) are the exact versions Great Expectations' page templates load
# from CDNs; quality/datadocs.py (_DOCS_ASSETS) maps each CDN URL to one of them, so change both together.
set -euo pipefail
cd "$(dirname "$0")/.."
out=safetynet/review/static/vendor
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

# one line per npm package: its spec, then "path in the package=path under vendor/" pairs
PACKAGES=(
  "echarts@5 dist/echarts.min.js=echarts.min.js LICENSE=LICENSE.echarts"
  "htmx.org@2 dist/htmx.min.js=htmx.min.js LICENSE=LICENSE.htmx"
  "swagger-ui-dist@5 swagger-ui-bundle.js=swagger-ui/swagger-ui-bundle.js swagger-ui.css=swagger-ui/swagger-ui.css
     favicon-32x32.png=swagger-ui/favicon-32x32.png oauth2-redirect.js=swagger-ui/oauth2-redirect.js
     LICENSE=swagger-ui/LICENSE"
  "bootstrap@4.3.1 dist/css/bootstrap.min.css=data-docs/bootstrap/bootstrap.min.css
     dist/js/bootstrap.min.js=data-docs/bootstrap/bootstrap.min.js LICENSE=data-docs/bootstrap/LICENSE"
  "@forevolve/bootstrap-dark@1.1.0 dist/css/bootstrap-prefers-dark.min.css=data-docs/bootstrap-dark/bootstrap-prefers-dark.min.css
     LICENSE=data-docs/bootstrap-dark/LICENSE"
  "bootstrap-table@1.19.1 dist/bootstrap-table.min.css=data-docs/bootstrap-table/bootstrap-table.min.css
     dist/bootstrap-table.min.js=data-docs/bootstrap-table/bootstrap-table.min.js
     dist/extensions/filter-control/bootstrap-table-filter-control.min.css=data-docs/bootstrap-table/bootstrap-table-filter-control.min.css
     dist/extensions/filter-control/bootstrap-table-filter-control.min.js=data-docs/bootstrap-table/bootstrap-table-filter-control.min.js
     LICENSE=data-docs/bootstrap-table/LICENSE"
  "bootstrap-datepicker@1.9.0 dist/css/bootstrap-datepicker.min.css=data-docs/bootstrap-datepicker/bootstrap-datepicker.min.css
     dist/js/bootstrap-datepicker.min.js=data-docs/bootstrap-datepicker/bootstrap-datepicker.min.js
     LICENSE=data-docs/bootstrap-datepicker/LICENSE"
  "jquery@3.7.1 dist/jquery.min.js=data-docs/jquery/jquery.min.js LICENSE.txt=data-docs/jquery/LICENSE.txt"
  "popper.js@1.12.9 dist/umd/popper.min.js=data-docs/popper.js/popper.min.js"
  "@fortawesome/fontawesome-free@6.6.0 css/all.min.css=data-docs/fontawesome/css/all.min.css
     webfonts/fa-brands-400.woff2=data-docs/fontawesome/webfonts/fa-brands-400.woff2
     webfonts/fa-regular-400.woff2=data-docs/fontawesome/webfonts/fa-regular-400.woff2
     webfonts/fa-solid-900.woff2=data-docs/fontawesome/webfonts/fa-solid-900.woff2
     webfonts/fa-v4compatibility.woff2=data-docs/fontawesome/webfonts/fa-v4compatibility.woff2
     LICENSE.txt=data-docs/fontawesome/LICENSE.txt"
  "vega@5 build/vega.min.js=data-docs/vega/vega.min.js"
  "vega-lite@5 build/vega-lite.min.js=data-docs/vega/vega-lite.min.js LICENSE=data-docs/vega/LICENSE.vega-lite"
  "vega-embed@6 build/vega-embed.min.js=data-docs/vega/vega-embed.min.js LICENSE=data-docs/vega/LICENSE.vega-embed"
)

rm -rf "$out/swagger-ui" "$out/data-docs"
rows=()
for line in "${PACKAGES[@]}"; do
  read -r -a parts <<< "${line//$'\n'/ }"
  spec=${parts[0]}
  (cd "$tmp" && rm -rf pkg ./*.tgz && npm pack --silent "$spec" >/dev/null && mkdir pkg && tar xzf ./*.tgz -C pkg --strip-components 1)
  read -r name version licence < <(node -e 'const p=require(process.argv[1]); console.log(p.name, p.version, p.license)' "$tmp/pkg/package.json")
  files=()
  for pair in "${parts[@]:1}"; do
    src=${pair%%=*}; dest=${pair#*=}
    mkdir -p "$(dirname "$out/$dest")"
    cp "$tmp/pkg/$src" "$out/$dest"
    files+=("\`$dest\`")
  done
  rows+=("| $(IFS=,; echo "${files[*]}" | sed 's/,/, /g') | \`$name@$version\` | $licence |")
done

{
  echo "# Front-end files, served locally (no CDN, no build step)"
  echo
  echo "Written by \`infra/update-frontend.sh\` (\`npm pack\` from the npm registry, files as released)."
  echo "The review app serves this directory under \`/static/vendor/\`: ECharts, htmx and Swagger UI"
  echo "(\`/api/docs\`). \`data-docs/\` holds what Great Expectations' Data Docs pages would load from"
  echo "CDNs; \`quality/datadocs.py\` copies it into every Data Docs site and points the pages at the copies."
  echo
  echo "| files | npm package | licence |"
  echo "| --- | --- | --- |"
  printf '%s\n' "${rows[@]}"
} > "$out/README.md"
echo "vendored into $out:"; printf '%s\n' "${rows[@]}"
