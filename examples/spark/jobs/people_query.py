"""People query (the BigDL SimpleQuery example) as a plain PySpark job:
keep the people aged 20 to 40 and count them by job.

usage: spark-submit people_query.py IN OUT

IN is a CSV file with a header (name,age,job); OUT a directory that gets
CSV part files (job,count) with a header each, in no particular order. The same file runs on
plaintext in local mode and, unchanged, on sealed files in a cluster.
"""
import sys

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

if len(sys.argv) != 3:
    sys.exit("usage: people_query.py IN OUT")
src, dst = sys.argv[1], sys.argv[2]

spark = SparkSession.builder.appName("people-query").getOrCreate()
people = spark.read.csv(src, header=True, schema="name STRING, age INT, job STRING")
counts = (people.where((F.col("age") >= 20) & (F.col("age") <= 40))
          .groupBy("job").count())
counts.write.mode("overwrite").option("header", True).csv(dst)
spark.stop()
