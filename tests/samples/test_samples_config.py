"""``distil data samples``' config: its packaged YAML and its flags."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from distil.config import load_config
from distil.samples.config import SamplesConfig


def test_the_packaged_yaml_loads_and_flags_override():
    assert load_config(SamplesConfig, "prepare/samples").output == ".distil/samples"
    assert load_config(SamplesConfig, "prepare/samples", force=True).force is True


def test_an_unknown_brown_grouping_is_refused():
    with pytest.raises(ValidationError, match="brown_group"):
        SamplesConfig(output="o", brown_group="genre")
