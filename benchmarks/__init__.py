"""Benchmark scripts: each runs TensorFlow with the settings of a `bloodcell` process."""

from cli.run_log import tensorflow_environment

tensorflow_environment()
