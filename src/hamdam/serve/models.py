"""Which model ``hamdam serve`` loads: ``model_dir`` (a folder, or an MLflow registry URI such as
``models:/hamdam-companion@champion``), else the served model (``hamdam models``)."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from hamdam.errors import ModelLoadError
from hamdam.learning.champion import champion_dir
from hamdam.models.export import META_FILE, read_meta

log = logging.getLogger(__name__)


def resolve_model(cfg: DictConfig) -> Path:
    """The model folder to serve, checked (``hamdam.json`` against the allow-list) before the server
    starts: a wrong ``model_dir`` is a clear error, not a server that never becomes ready."""
    wanted = cfg.get("model_dir")
    if not wanted:
        folder = champion_dir(Path(cfg.paths.runs_dir))
    elif str(wanted).startswith("models:/"):
        folder = from_registry(str(wanted), cfg.tracking_uri, Path(cfg.paths.cache_dir) / "registry")
    else:
        folder = Path(wanted)
    if not (folder / META_FILE).is_file():
        raise ModelLoadError(
            f"model_dir={folder}: not a hamdam model folder (no {META_FILE}). Pass a model folder that "
            "`hamdam models` lists (or a run's model/ folder), or leave model_dir out to serve the served model."
        )
    read_meta(folder)
    return folder


def from_registry(uri: str, tracking_uri: str, cache: Path) -> Path:
    """The model folder a registry URI names: the training run's own folder when it is on this
    machine, else its ``model`` artifacts, fetched once into ``cache``."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    name, _, selector = uri.removeprefix("models:/").partition("@")
    version = None
    if not selector:
        name, _, version = name.partition("/")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        if selector:
            found = client.get_model_version_by_alias(name, selector)
        else:
            found = client.get_model_version(name, version)
    except MlflowException as err:
        raise ModelLoadError(
            f"model_dir={uri}: the MLflow registry at {tracking_uri} has no such model version ({err.message}). "
            "Write models:/NAME@ALIAS or models:/NAME/VERSION as `mlflow models` lists them, e.g. "
            "models:/hamdam-companion@champion after a round was promoted."
        ) from None
    local = client.get_run(found.run_id).data.tags.get("hamdam.model_dir")
    if local and (Path(local) / "hamdam.json").is_file():
        return Path(local)
    target = cache / f"{name}-v{found.version}"
    if not (target / "model" / "hamdam.json").is_file():
        import mlflow.artifacts

        log.info("fetching %s (run %s) into %s", uri, found.run_id, target)
        mlflow.artifacts.download_artifacts(
            run_id=found.run_id, artifact_path="model", dst_path=str(target), tracking_uri=tracking_uri
        )
    return target / "model"
