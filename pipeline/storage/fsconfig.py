"""fsspec options for the URLs in params (`data.storage_options`: an endpoint, a region, a profile's
name), applied in this process and in every process that works for it. Never credentials: those
come from the environment, a profile or fsspec's own configuration (params are recorded in dvc.lock)."""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import fsspec
from distributed.diagnostics.plugin import WorkerPlugin

_applied: dict[str, dict[str, Any]] = {}


def configure(options: Mapping[str, Mapping[str, Any]]) -> None:
    """Make `options` ({protocol: {option: value}}) fsspec's defaults for that protocol: in
    `fsspec.config.conf` for this process, and as `FSSPEC_<PROTOCOL>` (JSON) in its environment,
    which fsspec reads when it is imported in the processes this one starts (a local dask cluster's
    workers, DataLoader workers). The workers of a cluster started elsewhere get them from
    `WorkerOptions` (pipeline/parallel.py registers it)."""
    for protocol, values in options.items():
        merged = {**fsspec.config.conf.get(protocol, {}), **values}
        fsspec.config.conf[protocol] = merged
        os.environ[f"FSSPEC_{protocol.upper()}"] = json.dumps(merged)
        _applied[protocol] = dict(merged)


def configured() -> dict[str, dict[str, Any]]:
    """What `configure` applied in this process ({} when nothing)."""
    return {protocol: dict(values) for protocol, values in _applied.items()}


class WorkerOptions(WorkerPlugin):
    """Applies the options on every worker of a dask cluster, those that join later included."""

    name = "mscl-fsspec-options"

    def __init__(self, options: Mapping[str, Mapping[str, Any]]) -> None:
        self.options = {protocol: dict(values) for protocol, values in options.items()}

    def setup(self, worker: Any) -> None:
        configure(self.options)
