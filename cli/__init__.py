"""The `bloodcell` command: the top layer, over the pipelines and serving (see .importlinter)."""
