"""`bench/build.py`'s store: every feed's truth written as its clean file, sorted by the feed's key,
with DuckDB's sort capped (`SORT_MEMORY`: at 10 M persons it spills rather than doubling the 8 GB
employment feed) and each feed's table not kept once written."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from safetynet.demo.synth import generate
from safetynet.intake.clean import clean_path
from schemas.registry import contracts

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_build", ROOT / "bench" / "build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_prepare_writes_every_feed_sorted_by_its_key_under_a_small_cap(tmp_path, monkeypatch):
    bench = _bench()
    monkeypatch.setattr(bench, "SORT_MEMORY", "16MB")  # a cap is set (DuckDB's default is 80 % of the machine)
    facts = bench.prepare(3000, str(tmp_path))
    truth = generate(persons=3000, seed=20261101)
    total = 0
    for fid, c in contracts().items():
        got = pq.read_table(tmp_path / clean_path(c))
        want = truth.table(fid)
        total += got.num_rows
        assert got.schema.equals(want.schema), fid
        keys = [(k, "ascending") for k in c.key]
        assert got.equals(got.take(pc.sort_indices(got, sort_keys=keys))), f"{fid} not sorted by {c.key}"
        assert got.equals(want.take(pc.sort_indices(want, sort_keys=keys))), fid
    assert facts == total > 0


def test_a_repeated_measurement_reports_the_median_run_every_runs_seconds_and_the_highest_rss(monkeypatch):
    """`median_of`: the run of the median seconds (its flags and counts with it), every run's seconds in
    order, and the highest peak RSS of the runs — not the median run's."""
    bench = _bench()
    runs = iter([{"seconds": 4.4, "peak_rss_mb": 1400.0, "flags": ["a"]},
                 {"seconds": 3.8, "peak_rss_mb": 1500.0, "flags": ["b"]},
                 {"seconds": 4.1, "peak_rss_mb": 1450.0, "flags": ["c"]}])
    monkeypatch.setattr(bench, "measure", lambda fn, *args: next(runs))
    got = bench.median_of(3, None)
    assert got["seconds"] == 4.1 and got["flags"] == ["c"]
    assert got["runs"] == [4.4, 3.8, 4.1] and got["peak_rss_mb"] == 1500.0
    assert bench._runs(got) == " (median of 4.4, 3.8, 4.1)"
    one = iter([{"seconds": 2.0, "peak_rss_mb": 10.0}])
    monkeypatch.setattr(bench, "measure", lambda fn, *args: next(one))
    single = bench.median_of(1, None)
    assert single["seconds"] == 2.0 and bench._runs(single) == ""
