#!/usr/bin/python3
"""Multi-party query on Spark (BigDL's MultiPartySparkQueryExample): join
party A's people with party B's incomes on name, keep ages 20 to 40, and
report per job the number of people and their mean income.

usage: multi_party.py PEOPLE INCOMES OUT

PEOPLE is party A's CSV (name,age,job) and INCOMES party B's (name,income),
each a file or a directory of CSV files with a header line
(examples/multi-party/gen_parties.py writes them). The result, ordered by
job, is written with a header as CSV to the directory OUT in one part file:
job,people,mean_income (mean_income rounded to cents). The same query as
examples/multi-party/app/join.py, which runs it with pandas.

The master and the configuration come from spark-submit.
"""
import sys

from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import IntegerType, LongType, StringType, StructField, StructType

PEOPLE = StructType([StructField("name", StringType()), StructField("age", IntegerType()),
                     StructField("job", StringType())])
INCOMES = StructType([StructField("name", StringType()), StructField("income", LongType())])


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    people_path, incomes_path, out = sys.argv[1:]
    spark = SparkSession.builder.appName("multi-party").getOrCreate()
    read = spark.read.options(header=True, mode="FAILFAST")
    people = read.schema(PEOPLE).csv(people_path)
    incomes = read.schema(INCOMES).csv(incomes_path)
    joined = people.join(incomes, "name", "inner")
    adults = joined.where((F.col("age") >= 20) & (F.col("age") <= 40))
    result = (adults.groupBy("job")
              .agg(F.count("name").alias("people"),
                   # The mean of whole numbers as a decimal: rounded half up
                   # to cents the same way however the sum was split.
                   F.round(F.avg(F.col("income").cast("decimal(20,0)")), 2).alias("mean_income"))
              .orderBy("job"))
    result.coalesce(1).write.mode("overwrite").option("header", True).csv(out)
    print("multi-party: %d x %d rows, %d matched, %d aged 20-40, %d jobs"
          % (people.count(), incomes.count(), joined.count(), adults.count(), result.count()),
          file=sys.stderr)
    spark.stop()


if __name__ == "__main__":
    main()
