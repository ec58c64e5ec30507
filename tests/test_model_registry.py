"""``distil.model_registry`` against the real MLflow server fixture (basic auth, artifacts on the
SeaweedFS fixture): committed model dirs on S3 become versions with lineage tags and an alias,
``models:/`` URIs resolve to them, and every call that cannot be done says why."""

from __future__ import annotations

import uuid

import pytest

from distil import model_registry, storage, tracking
from distil.model_registry import RegistryError

pytestmark = pytest.mark.slow  # a real MLflow server


def _model_dir(url: str, tag: str) -> str:
    storage.write_bytes(storage.join(url, "config.json"), f'{{"tag": "{tag}"}}'.encode())
    storage.commit(url, {"kind": "classifier", "files": [{"name": "config.json"}]})
    return url


@pytest.fixture
def tracked(mlflow_server, monkeypatch):
    for k, v in mlflow_server.env().items():
        monkeypatch.setenv(k, v)
    return mlflow_server


def test_versions_get_the_alias_and_models_uris_resolve_to_their_dirs(tracked, s3_url):
    name = f"reviews-{uuid.uuid4().hex[:6]}"
    first = _model_dir(f"{s3_url}/clf-a", "a")
    second = _model_dir(f"{s3_url}/clf-b", "b")
    lineage = {"distil.teacher_fingerprint": "t1", "distil.cache": "c1", "empty": ""}

    v1 = model_registry.register(name, first, lineage)
    assert (v1.version, v1.source, v1.aliases) == ("1", first, ("champion",))
    assert v1.tags == {"distil.teacher_fingerprint": "t1", "distil.cache": "c1"}
    assert model_registry.resolve(f"models:/{name}@champion").source == first

    v2 = model_registry.register(name, second, {"distil.cache": "c2"})
    assert v2.version == "2"
    now = model_registry.resolve(f"models:/{name}@champion")
    assert (now.version, now.source) == ("2", second)
    older = model_registry.resolve(f"models:/{name}/1")
    assert (older.source, older.aliases) == (first, ())  # the alias moved off version 1

    # registered without an alias: a new version, the champion stays where it was
    v3 = model_registry.register(name, first, {}, alias=None)
    assert v3.version == "3" and v3.aliases == ()
    assert model_registry.resolve(f"models:/{name}@champion").version == "2"


def test_calls_that_cannot_be_done_say_why(tracked, s3_url, tmp_path, monkeypatch):
    name = f"reviews-{uuid.uuid4().hex[:6]}"
    with pytest.raises(RegistryError, match="shared storage"):
        model_registry.register(name, str(tmp_path), {})
    with pytest.raises(RegistryError, match="not committed"):
        model_registry.register(name, f"{s3_url}/never-written", {})
    with pytest.raises(RegistryError, match="alias"):
        model_registry.register(name, _model_dir(f"{s3_url}/m", "m"), {}, alias="v2")
    with pytest.raises(RegistryError, match="models:/NAME@ALIAS"):
        model_registry.resolve(f"{name}@champion")
    with pytest.raises(RegistryError, match=f"models:/{name}@champion"):
        model_registry.resolve(f"models:/{name}@champion")  # nothing registered under it
    monkeypatch.delenv(tracking.URI_ENV)
    with pytest.raises(RegistryError, match=tracking.URI_ENV):
        model_registry.resolve(f"models:/{name}@champion")


@pytest.mark.parametrize(
    ("uri", "parts"),
    [
        ("models:/reviews@champion", ("reviews", "champion", None)),
        ("models:/reviews/12", ("reviews", None, "12")),
    ],
)
def test_uri_shapes(uri, parts):
    assert model_registry.parse_uri(uri) == parts
    assert model_registry.is_registry_uri(uri)


@pytest.mark.parametrize("uri", ["models:/reviews", "models:/reviews/latest", "s3://b/m"])
def test_other_shapes_are_refused(uri):
    with pytest.raises(RegistryError):
        model_registry.parse_uri(uri)
