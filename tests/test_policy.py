"""Policy parameters: shipped files load, a missing region is a clear error, bad files list every problem."""

from __future__ import annotations

import subprocess
import sys

import pytest

from quality import policy


def test_shipped_demo_policy_loads_with_its_version():
    p = policy.for_region("430103001001", 2026)
    assert p.version == "430103-2026.1" and len(p.checksum) == 16
    assert p.low_income_line(urban=True) == pytest.approx(1.5 * p.standards.urban_dibao)
    assert p.params()["medical_burden_oop_12m"] > 0 and "C" in p.params()["serious_illness_prefixes"]


def test_a_region_without_parameters_is_a_clear_error():
    with pytest.raises(policy.PolicyError, match=r"no policy parameters for region 431302 and year 2026.*policy init"):
        policy.for_region("431302001", 2026)


def test_invalid_file_reports_every_problem(tmp_path):
    f = tmp_path / "x.toml"
    f.write_text('[policy]\nregion_code = "4301"\nregion_name = "某区"\nyear = 2026\nversion = "v"\n'
                 '[standards]\nurban_dibao = -5\nrural_dibao = 600\n[thresholds]\nincome_drop_ratio = 1.7\n'
                 'dangerous_house_ratings = ["E"]\nduplicate_enrolment_categories = ["低保", "五保"]\nsurprise = 1\n',
                 encoding="utf-8")
    with pytest.raises(policy.PolicyError) as e:
        policy.load(f)
    msg = str(e.value)
    for part in ("policy.region_code", "standards.urban_dibao", "thresholds.income_drop_ratio",
                 "thresholds.dangerous_house_ratings", "thresholds.duplicate_enrolment_categories", "五保",
                 "thresholds.surprise"):
        assert part in msg, msg


@pytest.mark.slow
def test_init_writes_a_complete_file_that_loads(tmp_path):
    out = tmp_path / "431302-2026.toml"
    r = subprocess.run([sys.executable, "-m", "safetynet.cli", "policy", "init", "--region", "431302", "--year", "2026",
                        "--urban-dibao", "700", "--rural-dibao", "560", "--name", "娄底市娄星区", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    p = policy.for_region("431302", 2026, directory=tmp_path)
    assert (p.standards.urban_dibao, p.standards.rural_dibao) == (700.0, 560.0)
    assert p.thresholds == policy.Thresholds() and p.version == "431302-2026.1"
    r = subprocess.run([sys.executable, "-m", "safetynet.cli", "policy", "init", "--region", "431302", "--year", "2026",
                        "--urban-dibao", "700", "--rural-dibao", "560", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 2 and "exists" in r.stdout + r.stderr
