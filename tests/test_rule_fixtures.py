"""Every rule fixture (`tests/rules/*.toml`) through the real engine: each case fires or not as written,
its summary saying what the case lists (`summary_has`), its household's row holding what it lists
(`household_has`)."""

from __future__ import annotations

import pytest

from tests import rule_fixtures

FILES = sorted(rule_fixtures.FIXTURES.glob("*.toml"))


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_rule_fixture(path, tmp_path):
    fx = rule_fixtures.load(path)
    households: dict[str, dict] = {}
    fired = rule_fixtures.run(fx, tmp_path / "store", households).get(fx["rule"], {})
    for n, case in enumerate(fx["case"], 1):
        assert (f"FX{n:04d}" in fired) == case["fires"], case["name"]
        for text in case.get("summary_has", []):
            assert case["fires"], f"{case['name']}: summary_has on a case that does not fire"
            assert any(text in s for s in fired[f"FX{n:04d}"]), (case["name"], text, fired[f"FX{n:04d}"])
        for col, want in case.get("household_has", {}).items():
            assert households[f"FX{n:04d}"][col] == want, (case["name"], col, households[f"FX{n:04d}"][col], want)
