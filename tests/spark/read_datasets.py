"""Read published datasets with Spark local and print, per dataset, rows, columns and partitions as JSON.

Run by tests/test_readers.py with `.venv-spark/bin/python` (pyspark lives only there):

    python tests/spark/read_datasets.py ROOT DATASET [DATASET ...]

One local[1] session, loopback only, no UI; partition values typed from the path
(`snapshot_date=2026-11-01` → date, `version=1` → int). Column types are Spark's JSON form
(`DataType.jsonValue()`), mapped to Arrow by the test.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile


def main(root: str, datasets: list[str]) -> dict:
    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
    from pyspark.sql import SparkSession

    tmp = tempfile.mkdtemp(prefix="sn-spark-")
    spark = (SparkSession.builder.master("local[1]").appName("safetynet-reader-conformance")
             .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
             .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
             .config("spark.sql.shuffle.partitions", "1").config("spark.default.parallelism", "1")
             .config("spark.local.dir", f"{tmp}/local").config("spark.sql.warehouse.dir", f"{tmp}/warehouse")
             .config("spark.sql.session.timeZone", "UTC")
             .config("spark.driver.extraJavaOptions", f"-Djava.io.tmpdir={tmp}")
             .config("spark.sql.sources.partitionColumnTypeInference.enabled", "true")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    out = {}
    try:
        for name in datasets:
            base = f"{root}/{name}"
            df = spark.read.option("basePath", base).parquet(base)
            parts = sorted({(r["snapshot_date"].isoformat(), int(r["version"]))
                            for r in df.select("snapshot_date", "version").distinct().collect()})
            out[name] = {"rows": df.count(), "columns": [[f.name, f.dataType.jsonValue()] for f in df.schema.fields],
                         "partitions": parts, "spark": spark.version}
    finally:
        spark.stop()
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2:])))
