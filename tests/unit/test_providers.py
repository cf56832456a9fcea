"""Accelerators: TWINSTREAM_MODEL_PROVIDERS parsed, resolved against onnxruntime, reported."""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort
import pytest

from tests.unit.test_runtime import GREY8, linear_encoder
from twinstream.errors import ConfigError
from twinstream.providers import CPU, SHORT_NAMES, choose_providers, parse_providers, short_name
from twinstream.runtime import Encoder
from twinstream.settings import load_settings


def missing_provider() -> str:
    """A short name whose provider this onnxruntime build does not have (CPU-only here)."""
    available = set(ort.get_available_providers())
    for name in ("openvino", "coreml", "qnn", "tensorrt", "rocm", "cuda"):
        if SHORT_NAMES[name] not in available:
            return name
    pytest.fail(f"every accelerator provider is available here: {sorted(available)}")


def test_short_and_full_names_parse_in_order_without_repeats():
    assert parse_providers("cuda,cpu") == ("CUDAExecutionProvider", CPU)
    assert parse_providers(" OpenVINO , CPUExecutionProvider, cpu ") == (
        "OpenVINOExecutionProvider", CPU)
    assert parse_providers("tensorrtexecutionprovider") == ("TensorrtExecutionProvider",)
    assert parse_providers("") == (CPU,)  # empty: CPU, not nothing


def test_an_unknown_provider_is_a_config_error_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown onnxruntime provider 'cudaa'.*did you mean "
                                          r"cuda\?"):
        parse_providers("cudaa,cpu")


def test_the_setting_is_checked_when_settings_load():
    assert load_settings({}).model.providers == "cpu"
    assert load_settings({"TWINSTREAM_MODEL_PROVIDERS": "cuda,cpu"}).model.providers == \
        "cuda,cpu"
    with pytest.raises(ConfigError, match="TWINSTREAM_MODEL_PROVIDERS: unknown"):
        load_settings({"TWINSTREAM_MODEL_PROVIDERS": "gpu"})


def test_missing_providers_fall_back_to_cpu_with_one_warning_line():
    choice = choose_providers(("CUDAExecutionProvider", CPU), [CPU])
    assert choice.providers == (CPU,)
    assert choice.missing == ("CUDAExecutionProvider",)
    assert "no CUDAExecutionProvider" in choice.warning and "running on CPU" in choice.warning
    assert "\n" not in choice.warning


def test_available_providers_keep_the_order_asked_and_cpu_is_always_there():
    available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", CPU]
    assert choose_providers(("CUDAExecutionProvider",), available).providers == (
        "CUDAExecutionProvider", CPU)
    assert choose_providers((CPU, "CUDAExecutionProvider"), available).providers == (
        CPU, "CUDAExecutionProvider")
    assert choose_providers(("CUDAExecutionProvider", CPU), available).warning is None


def test_encoder_reports_cpu_by_default_without_warnings(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="twinstream.runtime"):
        encoder = Encoder(linear_encoder(tmp_path / "m.onnx"), fallback=GREY8)
    assert encoder.provider == CPU and encoder.providers[-1] == CPU
    assert encoder.runtime_info()["provider_short"] == "cpu"
    assert encoder.warnings == [] and not caplog.records


def test_encoder_falls_back_to_cpu_and_says_so_once(tmp_path, caplog):
    name = missing_provider()
    with caplog.at_level(logging.WARNING, logger="twinstream.runtime"):
        encoder = Encoder(linear_encoder(tmp_path / "m.onnx"), fallback=GREY8,
                          providers=f"{name},cpu")
    assert encoder.provider == CPU  # what the session really runs on (session.get_providers)
    assert encoder.providers == tuple(encoder.session.get_providers())
    (record,) = caplog.records
    assert SHORT_NAMES[name] in record.getMessage() and "\n" not in record.getMessage()
    assert encoder.runtime_info()["warnings"] == encoder.warnings
    # and it still embeds
    out = encoder.embed_arrays(np.zeros((2, 1, 8, 8), np.float32) + 0.3)
    assert out.shape == (2, 4)


def test_short_name_for_people():
    assert short_name("CUDAExecutionProvider") == "cuda"
    assert short_name("SomethingNewExecutionProvider") == "SomethingNewExecutionProvider"
