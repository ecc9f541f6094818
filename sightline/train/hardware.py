"""Which numeric precision and memory format train fastest on this CPU, measured instead of guessed.

On CPUs with bf16 units (AMX, AVX512-BF16) bf16 autocast speeds up dense convolutions, but Lite0's depthwise
convolutions and elementwise layers are memory bound and pay for the casts: on a 2-core AMX Xeon (Sapphire Rapids),
one training step of Lite0 took 1.27x the time of fp32 channels-last at 224 px and 1.7x at 128 px, while ResNet-50
ran 2.2x faster in bf16 (CPU time per step, batch 16). Channels-last alone took fp32 Lite0 from 4.1 to 2.8 s a step
there, where on an AVX2 machine it did not pay. So `train` times a few steps of each candidate (fp32 contiguous,
fp32 channels-last, and bf16 channels-last where the CPU has bf16 units) on the run's own model, input size and
batch, once per machine, and keeps the answer in a small cache file.

The probe runs a freshly built model without pretrained weights on random inputs: what is timed is the arithmetic,
which the weights' values do not change. The fastest candidate wins only by a margin (`MARGIN`); within it the
simpler setting (fp32, then contiguous) is kept, so noise cannot flip the choice between runs. A probe that ran
on a busy CPU decides the run it is in but is not cached, so the next run measures again: on a 2-core machine with
a test suite running beside it, steps took 4-10 s instead of 0.45 s, and the cached choice was bf16 where the idle
machine's was not. Busy is read from the kernel's scheduler statistics (Linux /proc/self/task/*/schedstat): the
share of the probe's time its threads spent ready but waiting for a core, which other processes cause and a
many-core machine's idle threads do not (0.00-0.01 idle here, 0.5-0.8 beside two busy processes). Without those
statistics every answer is cached.
"""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Candidate", "HardwareChoice", "cache_path", "measure_cpu_settings", "cpu_candidates", "resolve_hardware",
           "scheduler_ns"]

MARGIN = 0.08  # a candidate must be this much faster (share of the step time) than a simpler one to be chosen
PROBE_BATCH = 8  # at most this many images a step (the run's batch when smaller): enough to fill 2-16 cores' units
TIMED_STEPS = 2  # timed steps per candidate, after one untimed (oneDNN builds its kernels on the first call)
BUSY_SHARE = 0.2  # above this share of its threads' time spent waiting for a core, the probe was crowded out


@dataclass(frozen=True)
class Candidate:
    precision: str  # Lightning precision: "32-true" or "bf16-mixed"
    channels_last: bool

    @property
    def label(self) -> str:
        kind = "bf16" if self.precision == "bf16-mixed" else "fp32"
        return f"{kind} {'channels-last' if self.channels_last else 'contiguous'}"


@dataclass
class HardwareChoice:
    """The chosen candidate, the seconds per step measured for each (best of the timed steps), whether the
    answer came from the cache file, and the share of the probe's thread time spent waiting for a core (None: not
    measured now, or no scheduler statistics)."""

    chosen: Candidate
    seconds: dict[str, float]
    cached: bool
    waiting_share: float | None = None

    @property
    def busy(self) -> bool:
        return self.waiting_share is not None and self.waiting_share > BUSY_SHARE

    def describe(self) -> str:
        times = ", ".join(f"{label} {s:.3g} s" for label, s in sorted(self.seconds.items(), key=lambda kv: kv[1]))
        note = "; measured before, cached" if self.cached else ""
        if self.busy:
            note = (f"; the CPU was busy (the probe's threads waited for a core {self.waiting_share:.0%} of the "
                    "time), so not cached: the next run measures again")
        return f"{self.chosen.label} (fastest of a step timed on this CPU: {times}{note})"


def cpu_candidates(*, has_bf16: bool, precision: str = "auto", channels_last: bool | None = None) -> list[Candidate]:
    """The settings to time, simplest first, keeping any the caller fixed (a precision or a memory format)."""
    precisions = ["32-true", "bf16-mixed"] if has_bf16 else ["32-true"]
    if precision != "auto":
        precisions = [precision]
    formats = [False, True] if channels_last is None else [channels_last]
    # bf16 only channels-last unless the caller fixed the format: oneDNN's bf16 convolution kernels want that layout
    # (the rule this replaced paired them too), and one candidate fewer is a shorter probe.
    return [Candidate(p, cl) for p in precisions for cl in formats
            if not (p == "bf16-mixed" and not cl and channels_last is None)]


def cache_path() -> Path:
    """$SIGHTLINE_CACHE_DIR/hardware.json, default ~/.cache/sightline/hardware.json (XDG_CACHE_HOME respected)."""
    root = os.environ.get("SIGHTLINE_CACHE_DIR")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sightline"
    return Path(root) / "hardware.json"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _key(model: str, input_size: int, batch: int, candidates: list[Candidate]) -> str:
    import torch

    labels = "+".join(c.label for c in candidates)
    return (f"{_cpu_name()} | threads {torch.get_num_threads()} | torch {torch.__version__} | {model} | "
            f"{input_size} px | batch {batch} | {labels}")


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # no cache yet, or a damaged one: measure again and rewrite it


def _write_cache(path: Path, data: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError:
        pass  # a read-only home only costs the measurement again next time


def scheduler_ns() -> tuple[int, int] | None:
    """(running, waiting for a core) nanoseconds summed over this process's threads, from Linux's
    /proc/self/task/*/schedstat; None where the kernel does not provide them."""
    running = waiting = 0
    try:
        tasks = list(Path("/proc/self/task").iterdir())
    except OSError:
        return None
    for task in tasks:
        try:
            fields = (task / "schedstat").read_text().split()
            running, waiting = running + int(fields[0]), waiting + int(fields[1])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
    return (running, waiting) if running else None


def _time_step(model, optimizer, x, y, candidate: Candidate) -> float:
    import torch

    started = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=candidate.precision == "bf16-mixed"):
        loss = torch.nn.functional.cross_entropy(model(x).float(), y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def measure_cpu_settings(model_name: str, num_classes: int, *, input_size: int, batch_size: int,
                         candidates: list[Candidate], cache: Path | None = None) -> HardwareChoice:
    """Time one training step of `model_name` (forward, backward, AdamW) per candidate on random inputs of
    `input_size` px and return the fastest by `MARGIN` (the answer for this CPU, thread count, torch version,
    model, size and batch is cached in `cache`, default `cache_path()`). One candidate is returned untimed."""
    import torch

    from sightline.models.factory import create_model

    if len(candidates) == 1:
        return HardwareChoice(candidates[0], {}, cached=False)
    batch = max(2, min(batch_size, PROBE_BATCH))  # 2: BatchNorm refuses one image a batch in training mode
    cache = cache or cache_path()
    key = _key(model_name, input_size, batch, candidates)
    stored = _read_cache(cache).get(key)
    by_label = {c.label: c for c in candidates}
    if isinstance(stored, dict) and stored.get("chosen") in by_label and isinstance(stored.get("seconds"), dict):
        return HardwareChoice(by_label[stored["chosen"]], stored["seconds"], cached=True)

    rng_state = torch.random.get_rng_state()  # the probe must not change the run's random stream
    try:
        x = torch.randn(batch, 3, input_size, input_size)
        y = torch.arange(batch) % num_classes
        setups = {}  # one model and optimizer per memory format, so each is timed in its own layout throughout
        for channels_last in sorted({c.channels_last for c in candidates}):
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            model = create_model(model_name, num_classes, weights="none").to(memory_format=fmt).train()
            setups[channels_last] = (model, torch.optim.AdamW(model.parameters(), lr=1e-6),
                                     x.contiguous(memory_format=fmt))
        best: dict[str, float] = {}
        before = None
        for round_ in range(1 + TIMED_STEPS):  # candidates interleaved, so a burst of other load hits them all
            for c in candidates:
                model, optimizer, inputs = setups[c.channels_last]
                seconds = _time_step(model, optimizer, inputs, y, c)
                if round_ > 0:
                    best[c.label] = min(best.get(c.label, float("inf")), seconds)
            before = scheduler_ns() if round_ == 0 else before  # the timed rounds only
        after = scheduler_ns()
        del setups
    finally:
        torch.random.set_rng_state(rng_state)
    chosen = candidates[0]
    for c in candidates[1:]:
        if best[c.label] < best[chosen.label] * (1.0 - MARGIN):
            chosen = c
    seconds = {label: round(s, 4) for label, s in best.items()}
    waiting = None
    if before is not None and after is not None:
        ran, waited = after[0] - before[0], after[1] - before[1]
        waiting = round(waited / max(1, ran + waited), 3)
    choice = HardwareChoice(chosen, seconds, cached=False, waiting_share=waiting)
    if not choice.busy:
        data = _read_cache(cache)
        data[key] = {"chosen": chosen.label, "seconds": seconds}
        _write_cache(cache, data)
    return choice


def resolve_hardware(cfg: Any, num_classes: int, *, input_size: int) -> tuple[str, bool, str]:
    """(precision, channels_last, why) for a TrainConfig `cfg` whose precision may be "auto" and channels_last None:
    on one CPU process, timed (`measure_cpu_settings`); on CUDA, another accelerator or several processes, the
    hardware rules of `training_precision` / `use_channels_last`. Fixed settings are returned as they are."""
    from sightline.train.blocks import (cpu_has_bf16, single_process, training_precision, use_channels_last,
                                        uses_cuda)

    if cfg.precision != "auto" and cfg.channels_last is not None:
        return cfg.precision, cfg.channels_last, "as set"
    if uses_cuda(cfg) or cfg.accelerator not in ("auto", "cpu") or not single_process(cfg):
        why = "bf16 where the GPU supports it, channels-last on CUDA" if uses_cuda(cfg) else "the hardware rule"
        return training_precision(cfg), use_channels_last(cfg), why
    candidates = cpu_candidates(has_bf16=cpu_has_bf16(), precision=cfg.precision, channels_last=cfg.channels_last)
    choice = measure_cpu_settings(cfg.model, num_classes, input_size=input_size, batch_size=cfg.batch_size,
                                  candidates=candidates)
    why = choice.describe() if choice.seconds else "the only candidate the settings leave"
    return choice.chosen.precision, choice.chosen.channels_last, why
