"""Names and shapes every layer shares (feature keys, signatures, artifact layouts, config, run summary).

The bottom layer: it imports nothing from the project (see .importlinter)."""
