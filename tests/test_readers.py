"""Reader conformance (issue #12): every published dataset reads the same in each downstream engine.

The published layout is Hive style, the partition columns only in the path::

    <dataset>/snapshot_date=YYYY-MM-DD/version=N/part-00000.parquet            (and identified/<dataset>/...)

Each engine — pyarrow.dataset, pandas (pyarrow backend), Polars, DuckDB and Spark (local) — reads
every dataset of a published snapshot, and must give the files' row count (and the manifest's),
the files' columns plus `snapshot_date` (date32) and `version` (int32) last, and the files' types:
money decimal128 with its precision and scale, dates date32 (also inside structs: warnings.facts.date).
Types are compared after mapping to Arrow; only representation variants that carry the same values
are treated as equal (string / large_string / string_view, list / large_list / list_view, the
name and nullability of nested fields, dictionary encoding).

The read calls below, with their explicit partition types, are the ones the README documents
(a reader left to infer them takes `snapshot_date` for a string in pyarrow, pandas and Polars).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from tests.review_support import FIRST

DATASETS = ["monitoring/person", "monitoring/household", "warnings",
            "identified/monitoring/person", "identified/warnings"]
PARTITIONS = pa.schema([("snapshot_date", pa.date32()), ("version", pa.int32())])
ENGINES = ["pyarrow", "pandas", "polars", "duckdb", "spark"]


@dataclass(frozen=True)
class Published:
    root: Path               # store root in the Hive layout
    manifest: dict | None    # the snapshot's current manifest, if the store has one


def _manifest(store_root: Path, day: dt.date) -> dict | None:
    """The current manifest of `day`: `_catalog/snapshots/D.json` is the pointer to `D/vN.json`
    (or, in a store from before versions, the manifest itself). None if there is none."""
    pointer = store_root / "_catalog" / "snapshots" / f"{day.isoformat()}.json"
    if not pointer.exists():
        return None
    p = json.loads(pointer.read_text())
    if "datasets" in p:
        return p
    target = store_root / p["manifest"]
    return json.loads(target.read_text()) if target.exists() else None


@pytest.fixture(scope="module")
def pub(published) -> Published:
    root = Path(published.dir)
    return Published(root, _manifest(root, FIRST))


def _parts(root: Path, dataset: str) -> list[Path]:
    return sorted((root / dataset).glob("snapshot_date=*/version=*/*.parquet"))


def _expected(pub: Published, dataset: str) -> tuple[int, list[tuple[str, pa.DataType]], set]:
    """From the files themselves: rows, columns (the file's, then the partition columns), and the
    (snapshot_date, version) pairs the paths name."""
    parts = _parts(pub.root, dataset)
    schema = pq.read_schema(parts[0])
    rows = sum(pq.read_metadata(p).num_rows for p in parts)
    pairs = set()
    for p in parts:
        m = re.search(r"snapshot_date=(\d{4}-\d{2}-\d{2})/version=(\d+)/", p.as_posix())
        pairs.add((dt.date.fromisoformat(m.group(1)), int(m.group(2))))
    return rows, [(f.name, f.type) for f in schema] + [(f.name, f.type) for f in PARTITIONS], pairs


# ---- the readers: each returns (rows, [(column, Arrow type)], {(snapshot_date, version)}) ----

@dataclass
class Read:
    rows: int
    columns: list[tuple[str, pa.DataType]]
    partitions: set


def _pairs(dates, versions) -> set:
    return {(d, int(v)) for d, v in zip(dates, versions, strict=False)}


def read_pyarrow(root: Path, dataset: str, _spark=None) -> Read:
    dset = ds.dataset(root / dataset, format="parquet",
                      partitioning=ds.partitioning(PARTITIONS, flavor="hive"))
    t = dset.to_table()
    return Read(t.num_rows, [(f.name, f.type) for f in t.schema],
                _pairs(t["snapshot_date"].to_pylist(), t["version"].to_pylist()))


def read_pandas(root: Path, dataset: str, _spark=None) -> Read:
    import pandas as pd

    df = pd.read_parquet(root / dataset, partitioning=ds.partitioning(PARTITIONS, flavor="hive"),
                         dtype_backend="pyarrow")
    cols = []
    for name, dtype in df.dtypes.items():
        assert isinstance(dtype, pd.ArrowDtype), f"pandas: {name} is {dtype!r}, not an ArrowDtype"
        cols.append((name, dtype.pyarrow_dtype))
    return Read(len(df), cols, _pairs(df["snapshot_date"], df["version"]))


def read_polars(root: Path, dataset: str, _spark=None) -> Read:
    import polars as pl

    lf = pl.scan_parquet(f"{root}/{dataset}/**/*.parquet", hive_partitioning=True,
                         hive_schema={"snapshot_date": pl.Date, "version": pl.Int32})
    t = lf.collect().to_arrow()
    return Read(t.num_rows, [(f.name, f.type) for f in t.schema],
                _pairs(t["snapshot_date"].to_pylist(), t["version"].to_pylist()))


def read_duckdb(root: Path, dataset: str, _spark=None) -> Read:
    import duckdb

    glob = f"{root}/{dataset}/**/*.parquet".replace("'", "''")
    con = duckdb.connect()
    try:
        t = con.sql(f"SELECT * FROM read_parquet('{glob}', hive_partitioning = true, "
                    "hive_types = {'snapshot_date': DATE, 'version': INTEGER})").to_arrow_table()
    finally:
        con.close()
    return Read(t.num_rows, [(f.name, f.type) for f in t.schema],
                _pairs(t["snapshot_date"].to_pylist(), t["version"].to_pylist()))


def read_spark(root: Path, dataset: str, spark: dict) -> Read:
    """From the Spark run of the module (`spark` fixture: tests/spark/read_datasets.py in .venv-spark)."""
    got = spark[dataset]
    return Read(got["rows"], [(name, spark_to_arrow(t)) for name, t in got["columns"]],
                {(dt.date.fromisoformat(d), v) for d, v in got["partitions"]})


_SPARK_SIMPLE = {"string": pa.string(), "binary": pa.binary(), "boolean": pa.bool_(), "byte": pa.int8(),
                 "short": pa.int16(), "integer": pa.int32(), "long": pa.int64(), "float": pa.float32(),
                 "double": pa.float64(), "date": pa.date32(), "timestamp": pa.timestamp("us", tz="UTC"),
                 "timestamp_ntz": pa.timestamp("us")}


def spark_to_arrow(t) -> pa.DataType:
    """A Spark SQL type, in its JSON form (`DataType.jsonValue()`), as the Arrow type it stands for
    (an unmapped type fails the test)."""
    if isinstance(t, str):
        if t in _SPARK_SIMPLE:
            return _SPARK_SIMPLE[t]
        m = re.fullmatch(r"decimal\((\d+),\s*(\d+)\)", t)
        if m:
            return pa.decimal128(int(m.group(1)), int(m.group(2)))
    elif t.get("type") == "array":
        return pa.list_(spark_to_arrow(t["elementType"]))
    elif t.get("type") == "struct":
        return pa.struct([pa.field(f["name"], spark_to_arrow(f["type"])) for f in t["fields"]])
    elif t.get("type") == "map":
        return pa.map_(spark_to_arrow(t["keyType"]), spark_to_arrow(t["valueType"]))
    raise TypeError(f"no Arrow type for Spark's {t!r}")


READERS = {"pyarrow": read_pyarrow, "pandas": read_pandas, "polars": read_polars, "duckdb": read_duckdb,
           "spark": read_spark}


# ---- Spark: one local session for the module, loopback only, no UI ----

def _java_major() -> int | None:
    java = (Path(os.environ["JAVA_HOME"]) / "bin" / "java") if os.environ.get("JAVA_HOME") else shutil.which("java")
    if not java or not Path(java).exists():
        return None
    out = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=60).stderr
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2)) if major == 1 else major  # "1.8" is Java 8


SPARK_PYTHON = Path(os.environ.get("SAFETYNET_SPARK_PYTHON", Path(__file__).resolve().parents[1] / ".venv-spark/bin/python"))


@pytest.fixture(scope="module")
def spark(pub) -> dict:
    """Every dataset read once by Spark local, in its own venv (pyspark never enters the hub's: with it
    importable, great_expectations imports it in every process): `make test` installs .venv-spark."""
    if not SPARK_PYTHON.exists():
        pytest.skip(f"Spark reader: {SPARK_PYTHON} missing (`make spark` installs it; it needs Java 17+)")
    major = _java_major()
    if major is None:
        pytest.skip("Spark reader: no Java runtime (java on PATH or JAVA_HOME); Spark 4 needs Java 17 or newer")
    if major < 17:
        pytest.skip(f"Spark reader: Java {major} found; Spark 4 needs Java 17 or newer")
    script = Path(__file__).parent / "spark" / "read_datasets.py"
    r = subprocess.run([str(SPARK_PYTHON), str(script), str(pub.root), *DATASETS], capture_output=True, text=True,
                       timeout=600, env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"})
    assert r.returncode == 0, f"Spark reader failed:\n{r.stderr[-3000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---- comparison ----

def normalise(t: pa.DataType) -> pa.DataType:
    """The Arrow type up to representation: string/large_string/string_view, binary variants,
    list/large_list/list_view, dictionary encoding, nested field names and nullability. Decimal
    precision/scale, date32 vs date64, integer widths and timestamp units are kept."""
    if pa.types.is_dictionary(t):
        return normalise(t.value_type)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return pa.binary()
    if (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_list_view(t)
            or pa.types.is_large_list_view(t)):
        return pa.list_(normalise(t.value_type))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(t.field(i).name, normalise(t.field(i).type)) for i in range(t.num_fields)])
    if pa.types.is_map(t):
        return pa.map_(normalise(t.key_type), normalise(t.item_type))
    return t


def _leaves(t: pa.DataType, path: str = ""):
    """(dotted path, type) of every nested leaf: list items as `[]`, struct fields by name."""
    t = normalise(t)
    if pa.types.is_list(t):
        yield from _leaves(t.value_type, f"{path}[]")
    elif pa.types.is_struct(t):
        for i in range(t.num_fields):
            yield from _leaves(t.field(i).type, f"{path}.{t.field(i).name}")
    else:
        yield path, t


@pytest.fixture(scope="module")
def reads(pub):
    """Each engine's read of each dataset, made once (the Spark session only when a Spark test asks)."""
    cache: dict[tuple[str, str], Read] = {}

    def get(engine: str, dataset: str, spark_session=None) -> Read:
        if (engine, dataset) not in cache:
            cache[engine, dataset] = READERS[engine](pub.root, dataset, spark_session)
        return cache[engine, dataset]

    return get


def test_layout_is_hive_with_partitions_only_in_the_path(pub):
    """Every published dataset, one file per (snapshot_date, version), neither column in the file."""
    found = sorted({p.parent.relative_to(pub.root).as_posix() for p in pub.root.glob("**/snapshot_date=*")
                    if p.is_dir()})
    assert found == sorted(DATASETS), "datasets published in the Hive layout"
    for dataset in DATASETS:
        parts = _parts(pub.root, dataset)
        assert len(parts) == 1, f"{dataset}: one file for the one published version: {parts}"
        date_dir, version_dir = parts[0].parent.parent.name, parts[0].parent.name
        assert date_dir == f"snapshot_date={FIRST.isoformat()}" and parts[0].name == "part-00000.parquet", parts
        if pub.manifest is not None:
            assert version_dir == f"version={pub.manifest['version']}", f"{dataset}: not the manifest's version"
        names = pq.read_schema(parts[0]).names
        assert not set(PARTITIONS.names) & set(names), f"{dataset}: a partition column inside the file: {names}"
    if pub.manifest is not None:
        assert pub.manifest.get("partitioning", {"snapshot_date": "date32[day]", "version": "int32"}) == \
            {"snapshot_date": "date32[day]", "version": "int32"}


def test_published_types(pub):
    """What the engines are held to: money decimal128(14,2) or (16,2), dates date32 — in structs too."""
    for dataset in DATASETS:
        _, cols, _ = _expected(pub, dataset)
        types = dict(cols)
        assert types["snapshot_date"] == pa.date32() and types["version"] == pa.int32()
        leaves = [leaf for name, t in cols for leaf in _leaves(t, name)]
        assert any(pa.types.is_decimal(t) for _, t in leaves) or dataset.endswith("warnings"), dataset
        for path, t in leaves:
            if pa.types.is_decimal(t):
                assert (t.bit_width, t.scale) == (128, 2) and t.precision in (14, 16), f"{dataset} {path}: {t}"
            assert not pa.types.is_date64(t), f"{dataset} {path}: {t}"
            if path.endswith(("_date", ".date")) or path in ("snapshot_date",):
                assert t == pa.date32(), f"{dataset} {path}: {t}"
        if dataset.endswith("warnings"):
            facts = normalise(types["facts"])
            assert pa.types.is_list(facts) and facts.value_type.field("date").type == pa.date32(), facts
            assert normalise(types["top_signals"]) == pa.list_(pa.string())
        else:
            assert types["income_monthly"] == pa.decimal128(14, 2)


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("engine", ENGINES)
def test_engine_reads_dataset(engine, dataset, pub, reads, request):
    spark_session = request.getfixturevalue("spark") if engine == "spark" else None  # (Spark's results)
    rows, columns, pairs = _expected(pub, dataset)
    got = reads(engine, dataset, spark_session)

    # rows: the files', and the manifest's when the store has one
    assert got.rows == rows, f"{engine} {dataset}: {got.rows} rows, the files hold {rows}"
    if pub.manifest is not None:
        name = dataset.removeprefix("identified/")
        assert got.rows == pub.manifest["datasets"][name]["rows"], f"{engine} {dataset}: manifest row count"

    # columns: the files' in order, then snapshot_date, version — each once (no partition column
    # read twice, or once from the file and once from the path with another type)
    names = [n for n, _ in got.columns]
    assert len(names) == len(set(names)), f"{engine} {dataset}: duplicate columns {names}"
    assert names == [n for n, _ in columns], f"{engine} {dataset}: columns differ"

    # partition columns exactly (not just after normalising), and the values the path names
    types = dict(got.columns)
    assert types["snapshot_date"] == pa.date32(), f"{engine} {dataset}: snapshot_date is {types['snapshot_date']}"
    assert types["version"] == pa.int32(), f"{engine} {dataset}: version is {types['version']}"
    assert got.partitions == pairs, f"{engine} {dataset}: partition values {got.partitions} ≠ {pairs}"

    # every column's type, leaf by leaf: decimals with their precision and scale, date32 in structs
    for (name, want), (_, have) in zip(columns, got.columns, strict=False):
        want_leaves, have_leaves = list(_leaves(want, name)), list(_leaves(have, name))
        assert have_leaves == want_leaves, f"{engine} {dataset}: {name} is {have}, the file has {want}"
    if dataset.endswith("warnings"):
        facts = normalise(types["facts"])
        assert facts.value_type.field("date").type == pa.date32(), f"{engine}: facts.date is not a date: {facts}"
