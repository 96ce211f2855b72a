#!/usr/bin/python3
"""Regenerates sparkcheck's fixtures: results as Spark 3.5 writes them.

usage: PYTHONPATH=<pyspark dir> JAVA_HOME=<jdk 17> gen.py TESTDATA_DIR

  ordered1/, ordered3/  one ordered result (payments per customer, ordered by
                        total descending, with ties) in 1 and in 3 part files,
                        from input in other partitions: ties in other orders
  sums1/, sums7/        sums of doubles over 1 and 7 partitions: the same
                        sums, added in other orders (last digits differ)
  empty/                an empty result: one part file with only a header
"""
import os
import sys

from pyspark.sql import SparkSession

out = sys.argv[1]
spark = (SparkSession.builder.master("local[2]").appName("sparkcheck-fixtures")
         .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "3")
         # Keep the 3 partitions of a sort: 3 part files.
         .config("spark.sql.adaptive.enabled", "false")
         .getOrCreate())


def write(df, name):
    df.write.mode("overwrite").option("header", True).csv(os.path.join(out, name))


payments = spark.range(0, 60).selectExpr(
    "id % 12 as customer",
    "concat('Customer ', cast(id % 12 as string), ', of town ', cast(id % 5 as string)) as name",
    "cast((id % 4) * 25 + 100 as decimal(15,2)) as amount")


def totals(df):
    return (df.groupBy("customer", "name").agg({"amount": "sum"})
            .withColumnRenamed("sum(amount)", "total")
            .orderBy("total", ascending=False))


write(totals(payments).coalesce(1), "ordered1")
# Other partitions: the ties come in another order.
write(totals(payments.repartition(5)), "ordered3")

values = spark.range(0, 20000).selectExpr("id % 4 as k", "1.0 / (id + 3) as x", "cast(id as double) * 0.1 as y")
for parts in (1, 7):
    sums = (values.repartition(parts).groupBy("k").agg({"x": "sum", "y": "sum"})
            .selectExpr("k", "`sum(x)` as sum_x", "`sum(y)` as sum_y").orderBy("k"))
    write(sums.coalesce(1), "sums%d" % parts)

write(totals(payments).where("total < 0").coalesce(1), "empty")
spark.stop()
