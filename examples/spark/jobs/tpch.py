#!/usr/bin/python3
"""TPC-H on Spark SQL: the specification's 22 queries over the 8 tables.

usage: tpch.py --data DIR --format parquet|csv --out DIR [--queries 1,3,6]

DIR holds one directory per table (region, nation, supplier, customer, part,
partsupp, orders, lineitem) of Parquet files or of CSV files with a header
line, as scripts/tpch-gen.sh writes them. Each table becomes a temporary
view with the specification's column types (identifiers bigint, decimals
decimal(15,2), dates date). Query N is the file tpch/qN.sql beside this
program; its result is written with a header as CSV to OUT/qN/ in one part
file, in the query's order. Each query prints `tpch qN SECONDS` and the run
ends with `tpch total SECONDS`.

The master and the configuration come from spark-submit (or the defaults of
a plain `python3 tpch.py`, which runs Spark in local mode).
"""
import argparse
import os
import sys
import time

from pyspark.sql import SparkSession
from pyspark.sql.types import (DateType, DecimalType, IntegerType, LongType,
                               StringType, StructField, StructType)

ID, INT, MONEY, DATE, TEXT = LongType(), IntegerType(), DecimalType(15, 2), DateType(), StringType()

TABLES = {
    "region": [("r_regionkey", ID), ("r_name", TEXT), ("r_comment", TEXT)],
    "nation": [("n_nationkey", ID), ("n_name", TEXT), ("n_regionkey", ID), ("n_comment", TEXT)],
    "supplier": [("s_suppkey", ID), ("s_name", TEXT), ("s_address", TEXT), ("s_nationkey", ID),
                 ("s_phone", TEXT), ("s_acctbal", MONEY), ("s_comment", TEXT)],
    "customer": [("c_custkey", ID), ("c_name", TEXT), ("c_address", TEXT), ("c_nationkey", ID),
                 ("c_phone", TEXT), ("c_acctbal", MONEY), ("c_mktsegment", TEXT), ("c_comment", TEXT)],
    "part": [("p_partkey", ID), ("p_name", TEXT), ("p_mfgr", TEXT), ("p_brand", TEXT), ("p_type", TEXT),
             ("p_size", INT), ("p_container", TEXT), ("p_retailprice", MONEY), ("p_comment", TEXT)],
    "partsupp": [("ps_partkey", ID), ("ps_suppkey", ID), ("ps_availqty", INT), ("ps_supplycost", MONEY),
                 ("ps_comment", TEXT)],
    "orders": [("o_orderkey", ID), ("o_custkey", ID), ("o_orderstatus", TEXT), ("o_totalprice", MONEY),
               ("o_orderdate", DATE), ("o_orderpriority", TEXT), ("o_clerk", TEXT), ("o_shippriority", INT),
               ("o_comment", TEXT)],
    "lineitem": [("l_orderkey", ID), ("l_partkey", ID), ("l_suppkey", ID), ("l_linenumber", INT),
                 ("l_quantity", MONEY), ("l_extendedprice", MONEY), ("l_discount", MONEY), ("l_tax", MONEY),
                 ("l_returnflag", TEXT), ("l_linestatus", TEXT), ("l_shipdate", DATE), ("l_commitdate", DATE),
                 ("l_receiptdate", DATE), ("l_shipinstruct", TEXT), ("l_shipmode", TEXT), ("l_comment", TEXT)],
}

QUERY_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tpch")


def query_numbers(text):
    try:
        numbers = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("queries are numbers 1 to 22 separated by commas: %r" % text)
    if not numbers or any(n < 1 or n > 22 for n in numbers):
        raise argparse.ArgumentTypeError("queries are numbers 1 to 22 separated by commas: %r" % text)
    return numbers


def read_query(n):
    path = os.path.join(QUERY_DIR, "q%d.sql" % n)
    with open(path) as f:
        text = f.read().strip()
    return text[:-1] if text.endswith(";") else text


def register(spark, data, fmt):
    for name, columns in TABLES.items():
        path = os.path.join(data, name)
        if not os.path.isdir(path):
            sys.exit("tpch: error: no directory %s for table %s (scripts/tpch-gen.sh writes one per table)"
                     % (path, name))
        schema = StructType([StructField(c, t, True) for c, t in columns])
        reader = spark.read.schema(schema)
        if fmt == "csv":
            # FAILFAST: a malformed line fails the query instead of
            # becoming a row of nulls.
            df = reader.options(header=True, sep=",", quote='"', escape='"', mode="FAILFAST").csv(path)
        else:
            df = reader.parquet(path)
        df.createOrReplaceTempView(name)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="directory with one directory per table")
    ap.add_argument("--format", required=True, choices=["parquet", "csv"])
    ap.add_argument("--out", required=True, help="directory for the results, OUT/qN/")
    ap.add_argument("--queries", type=query_numbers, default=list(range(1, 23)),
                    help="comma-separated query numbers (default: all 22)")
    a = ap.parse_args()
    queries = {n: read_query(n) for n in a.queries}

    spark = SparkSession.builder.appName("tpch").getOrCreate()
    register(spark, a.data, a.format)
    total = 0.0
    for n, sql in queries.items():
        start = time.time()
        # One part file; an ordered result (a sort or a top-n) keeps its
        # order through coalesce, which only concatenates partitions.
        (spark.sql(sql).coalesce(1).write.mode("overwrite")
         .option("header", True).csv(os.path.join(a.out, "q%d" % n)))
        took = time.time() - start
        total += took
        print("tpch q%d %.3f" % (n, took), flush=True)
    print("tpch total %.3f" % total, flush=True)
    spark.stop()


if __name__ == "__main__":
    main()
