#!/usr/bin/python3
"""Several jobs of this directory in one Spark application: one driver and
one set of executors for all of them, instead of a start-up per job.

usage: batch.py JOB [ARGS...] [-- JOB [ARGS...]]...

Each JOB names a program beside this one (JOB.py: people_query,
multi_party, tpch); it runs as it would on its own, as __main__ with ARGS
as its arguments, one after the other in the order given. Their
SparkSession.builder...getOrCreate() gets the batch's session, and their
spark.stop() leaves it running for the next job; the batch stops it at the
end. The job files are not changed: the same file runs alone or here.

On standard output the batch prints `batch: N JOB start`, then
`batch: N JOB done SECONDS` or `batch: N JOB failed: ERROR` (N counts from
1). It stops at the first job that fails and exits 1.
"""
import os
import re
import runpy
import sys
import time
import traceback

from pyspark.sql import SparkSession

HERE = os.path.dirname(os.path.abspath(__file__))


def split(args):
    """The jobs of the command line: [(name, path, args)], or exit."""
    jobs, cur = [], []
    for a in args + ["--"]:
        if a != "--":
            cur.append(a)
            continue
        if not cur:
            sys.exit("batch: error: an empty job (two -- in a row, or -- first or last)\n" + __doc__)
        name = cur[0]
        path = os.path.join(HERE, name + ".py")
        if not re.fullmatch(r"[a-z0-9_]+", name) or name == "batch" or not os.path.isfile(path):
            sys.exit("batch: error: no job %s beside batch.py" % name)
        jobs.append((name, path, cur[1:]))
        cur = []
    return jobs


def main():
    jobs = split(sys.argv[1:])
    spark = SparkSession.builder.appName("batch").getOrCreate()
    stop = SparkSession.stop
    SparkSession.stop = lambda self: None
    status = 0
    try:
        for n, (name, path, args) in enumerate(jobs, 1):
            print("batch: %d %s start" % (n, name), flush=True)
            start = time.time()
            sys.argv = [path] + args
            try:
                runpy.run_path(path, run_name="__main__")
            except SystemExit as e:
                if e.code not in (None, 0):
                    print("batch: %d %s failed: exit %s" % (n, name, e.code), flush=True)
                    status = 1
                    break
            except Exception as e:  # the job's error ends the batch
                traceback.print_exc()
                print("batch: %d %s failed: %s" % (n, name, str(e).splitlines()[0] if str(e) else type(e).__name__),
                      flush=True)
                status = 1
                break
            print("batch: %d %s done %.3f" % (n, name, time.time() - start), flush=True)
    finally:
        SparkSession.stop = stop
        spark.stop()
    sys.exit(status)


if __name__ == "__main__":
    main()
