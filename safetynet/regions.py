"""Names of regions by statistical division code (county, street/town, community/village).

The reference table today is the demo county's region tree (`safetynet.synth.district`); a real
deployment replaces it with the 统计用区划代码 table of its province. Everything that shows a
region's name (the CLI's warning summary, the review app) asks here.
"""

from __future__ import annotations

from functools import cache


@cache
def region_names() -> dict[str, str]:
    """code → name for the county, its streets and their communities/villages."""
    from safetynet.synth.district import DISTRICT_CODE, region_tree

    out = {DISTRICT_CODE: "天心区"}
    for r in region_tree().table().to_pylist():
        out[r["region_code"]] = r["name"]
        out[r["street_code"]] = r["street_name"]
    return out
