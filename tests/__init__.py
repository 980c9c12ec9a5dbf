"""The test suite runs TensorFlow with the settings of a `bloodcell` process (imported before any test module)."""

from cli.run_log import tensorflow_environment

tensorflow_environment()
