"""Where hamdam's configs are found: inside the package, with a workspace's own ``conf/`` first.

The configs ship inside the package (Hydra's ``pkg://hamdam.conf``), so an installed wheel runs
anywhere. A workspace (the directory hamdam runs in, made by ``hamdam init``, or a checkout) may
hold its own ``conf/``: its files come first in Hydra's search path, so
``conf/experiment/mine.yaml`` adds an experiment and ``conf/train.yaml`` replaces the package's.
A checkout's ``conf/`` is the package's own (an editable install) and is searched once.

Hydra's ``hydra.searchpath`` can only add sources after the primary one, hence a search-path
plugin; the CLI registers ``WorkspaceConf`` for its own process rather than leaving it under
``hydra_plugins/`` for discovery, which would reach every Hydra app in the environment.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.plugins import Plugins
from hydra.plugins.search_path_plugin import SearchPathPlugin

PACKAGE_CONF = "pkg://hamdam.conf"


def package_conf() -> Path:
    return Path(str(importlib.resources.files("hamdam.conf")))


def workspace_conf() -> Path | None:
    """The ``conf/`` of the directory hamdam runs in, unless it is the package's own."""
    conf = (Path.cwd() / "conf").resolve()
    return conf if conf.is_dir() and conf != package_conf().resolve() else None


def config_file(name: str) -> Path:
    """A config file as Hydra finds it: the workspace's ``conf/NAME`` if it has one, else the package's."""
    workspace = workspace_conf()
    if workspace is not None and (workspace / name).exists():
        return workspace / name
    return package_conf() / name


class WorkspaceConf(SearchPathPlugin):
    """Puts the workspace's ``conf/`` before the package's configs, where they are searched."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        workspace = workspace_conf()
        if workspace is not None and any(e.path == PACKAGE_CONF for e in search_path.get_path()):
            search_path.prepend(provider="hamdam-workspace", path=f"file://{workspace}")


def register() -> None:
    Plugins.instance().register(WorkspaceConf)
