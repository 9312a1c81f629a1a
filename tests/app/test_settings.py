"""Settings come from TRANSXNET_* variables and bad values stop start-up with a clear message."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.settings import Settings, SettingsError, check_model_file, load_settings, usable_cores


def test_settings_read_prefixed_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRANSXNET_MAX_BATCH_SIZE", "4")
    monkeypatch.setenv("TRANSXNET_PROVIDERS", "cpu")
    monkeypatch.setenv("TRANSXNET_LOG_FORMAT", "json")
    settings = load_settings()
    assert (settings.max_batch_size, settings.providers, settings.log_format) == (4, "cpu", "json")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TRANSXNET_MAX_BATCH_SIZE", "0"),
        ("TRANSXNET_MAX_BATCH_SIZE", "many"),
        ("TRANSXNET_PROVIDERS", "gpu"),
        ("TRANSXNET_PORT", "70000"),
        ("TRANSXNET_REQUEST_TIMEOUT_S", "-1"),
        ("TRANSXNET_LOG_FORMAT", "xml"),
        ("TRANSXNET_JPEG_REDUCING_GAP", "-1"),
        ("TRANSXNET_JPEG_REDUCING_GAP", "nan"),
        ("TRANSXNET_MODEL_INSTANCES", "0"),
    ],
)
def test_invalid_value_gives_one_line_message_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    message = str(excinfo.value)
    assert variable in message
    assert repr(value) in message
    assert "\n" not in message


def test_request_larger_than_the_queue_is_refused_as_a_combination() -> None:
    with pytest.raises(SettingsError, match="TRANSXNET_MAX_QUEUE_SIZE"):
        load_settings(max_queue_size=8, max_images_per_request=32)


@pytest.mark.parametrize("gap", ["0.5", "0.999"])
def test_reducing_gap_below_one_is_refused_with_the_values_that_work(
    monkeypatch: pytest.MonkeyPatch, gap: str
) -> None:
    monkeypatch.setenv("TRANSXNET_JPEG_REDUCING_GAP", gap)
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    assert str(excinfo.value) == (
        "invalid settings: TRANSXNET_JPEG_REDUCING_GAP: a gap below 1 would upsample after decoding: "
        f"use 0 (pixel-exact) or a value >= 1 (2.0 is a good choice) (got {gap!r})"
    )


@pytest.mark.parametrize(("gap", "expected"), [("0", 0.0), ("1", 1.0), ("2.0", 2.0)])
def test_reducing_gap_accepts_off_and_values_from_one(
    monkeypatch: pytest.MonkeyPatch, gap: str, expected: float
) -> None:
    monkeypatch.setenv("TRANSXNET_JPEG_REDUCING_GAP", gap)
    assert load_settings().jpeg_reducing_gap == expected


@pytest.mark.parametrize(("cores", "expected"), [(1, 2), (2, 2), (4, 2), (6, 3), (8, 4), (64, 4)])
def test_default_preprocess_workers_are_half_the_cores_but_never_one(
    monkeypatch: pytest.MonkeyPatch, cores: int, expected: int
) -> None:
    monkeypatch.setattr("app.settings.usable_cores", lambda: cores)
    assert load_settings().resolved_preprocess_workers == expected
    assert load_settings(preprocess_workers=1).resolved_preprocess_workers == 1


@pytest.mark.parametrize(
    ("cores", "instances", "intra_op", "expected"),
    [
        (2, 1, 0, 0),  # one instance: ONNX Runtime's own default
        (2, 2, 0, 1),  # the cores shared out, so two runs do not oversubscribe two cores
        (8, 2, 0, 4),
        (2, 3, 0, 1),  # never below one thread
        (2, 2, 2, 2),  # an explicit value wins
    ],
)
def test_intra_op_threads_share_the_cores_among_model_instances(
    monkeypatch: pytest.MonkeyPatch, cores: int, instances: int, intra_op: int, expected: int
) -> None:
    monkeypatch.setattr("app.settings.usable_cores", lambda: cores)
    settings = load_settings(model_instances=instances, intra_op_threads=intra_op)
    assert settings.resolved_intra_op_threads == expected


@pytest.mark.parametrize(
    ("instances", "intra_op", "oversubscribed"), [(1, 4, False), (2, 0, False), (2, 1, False), (2, 2, True)]
)
def test_more_threads_than_cores_across_instances_is_flagged(
    monkeypatch: pytest.MonkeyPatch, instances: int, intra_op: int, oversubscribed: bool
) -> None:
    monkeypatch.setattr("app.settings.usable_cores", lambda: 2)
    settings = load_settings(model_instances=instances, intra_op_threads=intra_op)
    assert settings.oversubscribed is oversubscribed


def test_usable_cores_follow_the_affinity_mask() -> None:
    assert usable_cores() == len(os.sched_getaffinity(0)) >= 1


def test_missing_model_file_says_how_to_export_one(tmp_path: Path) -> None:
    missing = tmp_path / "nope.onnx"
    with pytest.raises(SettingsError) as excinfo:
        check_model_file(Settings(model_path=missing))
    assert f"python -m export --variant t --output {missing}" in str(excinfo.value)


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        ("200000 100000\n", 2),
        ("150000 100000\n", 2),
        ("50000 100000\n", 1),
        ("max 100000\n", None),
        ("junk", None),
    ],
)
def test_the_cgroup_cpu_quota_bounds_the_usable_cores(tmp_path, monkeypatch, cpu_max: str, expected) -> None:
    import app.settings as settings_module

    path = tmp_path / "cpu.max"
    path.write_text(cpu_max)
    monkeypatch.setattr(settings_module, "CGROUP_CPU_MAX", path)
    assert settings_module.cgroup_cpu_limit() == expected
    monkeypatch.setattr(settings_module.os, "sched_getaffinity", lambda pid: set(range(64)))
    assert usable_cores() == (64 if expected is None else expected)


def test_a_cgroup_v1_quota_is_read_too(tmp_path, monkeypatch) -> None:
    import app.settings as settings_module

    monkeypatch.setattr(settings_module, "CGROUP_CPU_MAX", tmp_path / "absent")
    (tmp_path / "quota").write_text("300000\n")
    (tmp_path / "period").write_text("100000\n")
    monkeypatch.setattr(settings_module, "CGROUP_V1_QUOTA", tmp_path / "quota")
    monkeypatch.setattr(settings_module, "CGROUP_V1_PERIOD", tmp_path / "period")
    assert settings_module.cgroup_cpu_limit() == 3


def test_the_memory_budget_must_hold_one_image_at_the_limits() -> None:
    # 20 MB of bytes and 8 bytes per pixel of 40 Mpixel: 340 MB, more than a 256 MiB budget.
    with pytest.raises(SettingsError, match="MAX_INFLIGHT_BYTES"):
        load_settings(max_inflight_bytes=256 * 2**20)
    assert load_settings().max_inflight_bytes == 512 * 2**20
    load_settings(max_inflight_bytes=256 * 2**20, max_image_pixels=20_000_000)  # 180 MB: fits
