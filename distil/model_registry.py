"""Promoted models in the MLflow Model Registry: a model dir on object storage becomes a new
version of a registered model, with lineage tags, and takes an alias (``champion``); a
``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` URI resolves back to that model dir.

The registry holds the model's location, not a copy: the version's ``source`` is the committed
model dir (``s3://…``), whose manifest lists every file with its sha256, so what a consumer pulls
is checked exactly as with a plain URL. MLflow's server refuses a local path as a source unless it
lies in a run's artifact dir, so registering needs the model on shared storage (what a cluster
has anyway); a local dir is refused with that reason.

Unlike stage tracking (``distil.tracking``: a failing server costs a warning, never the stage),
registry calls fail loudly: promoting or resolving a model is the point of the call, and a
model that silently was not promoted, or a ``models:/`` URI scored with some other model, would be
worse than a stopped run.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from distil import storage, tracking

SCHEME = "models:/"
CHAMPION = "champion"
# MLflow's rules for an alias: letters, digits, '_' and '-', not starting with 'v<digits>'
_ALIAS = re.compile(r"[A-Za-z_][\w-]*")
_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))")


class RegistryError(RuntimeError):
    """A registry call that cannot be done, with what to do about it."""


@dataclass(frozen=True)
class ModelVersion:
    """One version of a registered model: where its files are and what it came from."""

    name: str
    version: str
    source: str  # the committed model dir the version points at
    run_id: str | None
    tags: Mapping[str, str]
    aliases: tuple[str, ...]

    @property
    def uri(self) -> str:
        return f"{SCHEME}{self.name}/{self.version}"


def is_registry_uri(url: str) -> bool:
    return url.startswith(SCHEME)


def parse_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` -> (NAME, ALIAS, None); ``models:/NAME/VERSION`` -> (NAME, None,
    VERSION); anything else is refused with the two shapes."""
    found = _URI.fullmatch(uri)
    if found is None:
        raise RegistryError(
            f"{uri!r} is not a registry URI: use models:/NAME@ALIAS (e.g. "
            f"models:/reviews-sentiment@{CHAMPION}) or models:/NAME/VERSION"
        )
    return found["name"], found["alias"], found["version"]


def _client(uri: str | None = None) -> Any:
    uri = uri or tracking.tracking_uri()
    if uri is None:
        raise RegistryError(
            f"the model registry is MLflow's: set {tracking.URI_ENV} (or --tracking-uri) to "
            "the tracking server, with its credentials in MLFLOW_TRACKING_USERNAME/PASSWORD"
        )
    return tracking.make_client(uri)


def _version(mv: Any) -> ModelVersion:
    return ModelVersion(
        name=mv.name,
        version=str(mv.version),
        source=mv.source,
        run_id=mv.run_id or None,
        tags=dict(mv.tags or {}),
        aliases=tuple(getattr(mv, "aliases", ()) or ()),
    )


def resolve(uri: str, tracking_uri: str | None = None) -> ModelVersion:
    """The version a ``models:/`` URI names now (an alias is followed at call time: a consumer
    records the version it got, since the alias may move later)."""
    name, alias, version = parse_uri(uri)
    client = _client(tracking_uri)
    from mlflow.exceptions import MlflowException

    try:
        mv = (
            client.get_model_version_by_alias(name, alias)
            if alias is not None
            else client.get_model_version(name, version)
        )
    except MlflowException as e:
        raise RegistryError(f"{uri}: {e.message}") from e
    return _version(mv)


def register(
    name: str,
    source: str,
    tags: Mapping[str, Any],
    alias: str | None = CHAMPION,
    run_id: str | None = None,
    tracking_uri: str | None = None,
) -> ModelVersion:
    """A new version of ``name`` (created if new) pointing at the committed model dir
    ``source``, with ``tags`` (lineage: fingerprints, run ids), then ``alias`` moved to it."""
    if storage.protocol_of(source) == "file":
        raise RegistryError(
            f"cannot register {source}: MLflow takes a local path as a model source only inside "
            "a run's artifact dir; put the model on shared storage (s3://…, gs://…) to register it"
        )
    if not storage.is_committed(source):
        raise RegistryError(f"cannot register {storage.redact(source)}: it is not committed")
    if alias is not None and (not _ALIAS.fullmatch(alias) or re.fullmatch(r"v\d+", alias)):
        raise RegistryError(f"alias {alias!r}: letters, digits, '_' and '-', not 'v<number>'")
    client = _client(tracking_uri)
    from mlflow.exceptions import MlflowException

    text_tags = {k: str(v) for k, v in tags.items() if v not in (None, "")}
    try:
        try:
            client.create_registered_model(name)
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        mv = client.create_model_version(name, source, run_id=run_id, tags=text_tags)
        if alias is not None:
            client.set_registered_model_alias(name, alias, mv.version)
        mv = client.get_model_version(name, mv.version)
    except MlflowException as e:
        raise RegistryError(f"registering {storage.redact(source)} as {name}: {e.message}") from e
    return _version(mv)
