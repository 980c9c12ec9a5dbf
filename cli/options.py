"""Options and config loading shared by every `bloodcell` command."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from contracts.config import DEFAULT_CONFIG, Config, ConfigError, load_config

CONFIG_OPTION = typer.Option(DEFAULT_CONFIG, "--config", help="YAML config file.")
OVERRIDES_OPTION = typer.Option(None, "--set", help="Override a setting: section.field=value.")


def load_config_or_exit(path: Path, overrides: Optional[List[str]] = None) -> Config:
    """The config, or exit code 2 with the reason on stderr."""
    try:
        return load_config(path, list(overrides or []))
    except ConfigError as err:
        typer.echo(f"config error: {err}", err=True)
        raise typer.Exit(2) from err
