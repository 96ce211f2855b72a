// Package jvmtest holds black-box tests of Java workloads: they build the
// veil binary, build instances from the shipped snippet debian/openjdk-17
// (and a pip target directory of pyspark) and run the JVM inside veil run.
package jvmtest
