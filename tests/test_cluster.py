"""``init_ray`` address handling: every form a user puts in RAY_ADDRESS either resolves to
something ``ray.init`` accepts or fails with the fix in the message (no Ray started here)."""

from __future__ import annotations

import pytest

from distil.cluster import RayAddressError, resolve_address


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, None),
        ("", None),
        ("local", None),
        ("auto", "auto"),
        ("10.0.0.5:6379", "10.0.0.5:6379"),
        ("ray://head:10001", "ray://head:10001"),
    ],
)
def test_addresses_ray_accepts_pass_through(monkeypatch, given, expected):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_address(given) == expected


def test_ray_address_variable_is_the_default(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert resolve_address(None) == "10.0.0.5:6379"
    monkeypatch.setenv("RAY_ADDRESS", "")
    assert resolve_address(None) is None


def test_remote_job_api_url_is_refused_with_the_fix(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "http://ray-head.example:8265")
    with pytest.raises(RayAddressError) as e:
        resolve_address(None)
    msg = str(e.value)
    assert "job-API URL" in msg and "ray job submit --address http://ray-head.example:8265" in msg


def test_loopback_job_api_url_without_a_cluster_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("DISTIL_HOME", str(tmp_path))  # no local stack state here
    monkeypatch.setattr("ray._private.services.find_gcs_addresses", lambda: [])
    with pytest.raises(RayAddressError, match="no Ray cluster on this machine"):
        resolve_address("http://127.0.0.1:59999")


def test_a_word_is_not_an_address():
    with pytest.raises(RayAddressError, match="expected host:port"):
        resolve_address("myhead")
