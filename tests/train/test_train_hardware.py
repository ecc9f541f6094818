"""The measured choice of precision and memory format (sightline.train.hardware) and how train() records it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from sightline.train import hardware
from sightline.train.hardware import Candidate, cpu_candidates, measure_cpu_settings

FP32, FP32_CL, BF16_CL = Candidate("32-true", False), Candidate("32-true", True), Candidate("bf16-mixed", True)


def test_candidates_keep_what_the_settings_fix() -> None:
    assert cpu_candidates(has_bf16=True) == [FP32, FP32_CL, BF16_CL]
    assert cpu_candidates(has_bf16=False) == [FP32, FP32_CL]  # emulated bf16 is never a candidate
    assert cpu_candidates(has_bf16=True, precision="32-true") == [FP32, FP32_CL]
    assert cpu_candidates(has_bf16=True, channels_last=True) == [FP32_CL, BF16_CL]
    assert cpu_candidates(has_bf16=True, channels_last=False) == [FP32, Candidate("bf16-mixed", False)]
    assert cpu_candidates(has_bf16=True, precision="bf16-mixed", channels_last=True) == [BF16_CL]


@pytest.mark.parametrize(("seconds", "chosen"), [
    ({"fp32 contiguous": 1.0, "fp32 channels-last": 0.95, "bf16 channels-last": 0.97}, FP32),  # within the margin
    ({"fp32 contiguous": 1.0, "fp32 channels-last": 0.8, "bf16 channels-last": 0.9}, FP32_CL),
    ({"fp32 contiguous": 1.0, "fp32 channels-last": 0.8, "bf16 channels-last": 0.4}, BF16_CL),
    ({"fp32 contiguous": 1.0, "fp32 channels-last": 1.3, "bf16 channels-last": 0.9}, BF16_CL),
])
def test_the_fastest_wins_only_by_the_margin(seconds, chosen, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(hardware, "_time_step", lambda model, opt, x, y, c: seconds[c.label])
    choice = measure_cpu_settings("test_efficientnet", 2, input_size=32, batch_size=4,
                                  candidates=[FP32, FP32_CL, BF16_CL], cache=tmp_path / "hw.json")
    assert choice.chosen == chosen and choice.seconds == seconds and not choice.cached


def test_a_probe_crowded_out_of_the_cpu_decides_its_run_but_is_not_cached(tmp_path: Path, monkeypatch) -> None:
    seconds = {"fp32 contiguous": 1.0, "fp32 channels-last": 0.5}
    monkeypatch.setattr(hardware, "_time_step", lambda model, opt, x, y, c: seconds[c.label])
    # over the timed steps the threads ran 1 s and waited 3 s for a core: other processes had the cores
    readings = iter([(5 * 10**9, 10**9), (6 * 10**9, 4 * 10**9)])
    monkeypatch.setattr(hardware, "scheduler_ns", lambda: next(readings))
    cache = tmp_path / "hw.json"
    choice = measure_cpu_settings("test_efficientnet", 2, input_size=32, batch_size=4, candidates=[FP32, FP32_CL],
                                  cache=cache)
    assert choice.chosen == FP32_CL and choice.busy and choice.waiting_share == 0.75
    assert "busy" in choice.describe() and "75%" in choice.describe() and "not cached" in choice.describe()
    assert not cache.exists()


def test_scheduler_statistics_count_this_process_threads() -> None:
    first = hardware.scheduler_ns()
    if first is None:
        pytest.skip("this kernel has no /proc/self/task/*/schedstat: every probe answer is cached")
    sum(i * i for i in range(200_000))  # a little CPU work
    second = hardware.scheduler_ns()
    assert second is not None and second[0] > first[0] and second[1] >= first[1]


def test_real_timing_is_cached_and_leaves_the_random_stream_alone(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(hardware, "BUSY_SHARE", 1.0)  # the suite's other worker may share the cores: cache anyway
    cache = tmp_path / "hw.json"
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    first = measure_cpu_settings("test_efficientnet", 3, input_size=32, batch_size=16,
                                 candidates=[FP32, FP32_CL], cache=cache)
    assert torch.equal(torch.rand(4), expected)  # the probe's random inputs came from a saved-and-restored stream
    assert set(first.seconds) == {"fp32 contiguous", "fp32 channels-last"}
    assert all(s > 0 for s in first.seconds.values()) and not first.cached
    (key, stored), = json.loads(cache.read_text()).items()
    assert "test_efficientnet | 32 px | batch 8" in key and stored["chosen"] == first.chosen.label
    again = measure_cpu_settings("test_efficientnet", 3, input_size=32, batch_size=16,
                                 candidates=[FP32, FP32_CL], cache=cache)
    assert again.cached and again.chosen == first.chosen and "cached" in again.describe()
    cache.write_text("{not json")  # a damaged cache is measured again and rewritten, not an error
    rebuilt = measure_cpu_settings("test_efficientnet", 3, input_size=32, batch_size=16,
                                   candidates=[FP32, FP32_CL], cache=cache)
    assert not rebuilt.cached and len(json.loads(cache.read_text())) == 1


def test_train_records_the_resolved_settings(tmp_path: Path, monkeypatch) -> None:
    from test_train_fit import TINY, make_data

    from sightline.train.fit import train

    monkeypatch.setenv("SIGHTLINE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(hardware, "BUSY_SHARE", 1.0)  # cached even when the suite's other worker shares the cores
    data = make_data(tmp_path / "data", splits={"train": 4, "val": 2})
    run = train(data, tmp_path / "run", progress=False, reference=False, **{**TINY, "epochs": 1, "channels_last": True})
    choice = json.loads((run / "metrics.json").read_text())["choices"]["hardware"]
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert choice["value"]["channels_last"] is True  # the caller's setting is kept; only the precision was timed
    assert choice["value"]["precision"] in ("32-true", "bf16-mixed")
    assert json.loads((run / "metrics.json").read_text())["precision"] == choice["value"]["precision"]
    # the files keep the hardware settings as given, so a retrain on another machine resolves them there
    assert resolved["precision"] == "auto" and resolved["channels_last"] is True
    assert any(line.startswith("# hardware: ") for line in (run / "config.yaml").read_text().splitlines())
    assert (tmp_path / "cache" / "hardware.json").is_file() or "only candidate" in choice["why"]
