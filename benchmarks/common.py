"""Helpers the benchmark scripts share (`from common import ...`; a script's own folder is on sys.path when it
runs as `python benchmarks/NAME.py`): the bundle under test, stopping a server process, the PASS/FAIL lines."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any


def copy_bundle(source: Path | None, folder: Path, *, trial: bool) -> Any:
    """`source` (a RUN or bundle folder; its sightline.db* left behind) copied to `folder`, or with `trial` the trial
    bundle made there (Lite0 ImageNet backbone + untrained ants/bees head); exported to ONNX when it is not yet.
    Returns the loaded Bundle."""
    from sightline.bundle import load_bundle, resolve_bundle_dir
    from sightline.optimize.export import export

    if trial:
        from export_bench import trial_bundle

        trial_bundle(folder, ["ants", "bees"])
    else:
        shutil.copytree(resolve_bundle_dir(source), folder, ignore=shutil.ignore_patterns("sightline.db*"))
    bundle = load_bundle(folder)
    if not bundle.onnx_path.is_file():
        export(folder)
    return bundle


def stop_process(proc: subprocess.Popen | None, timeout: float) -> None:
    """SIGTERM `proc` if it still runs and wait up to `timeout` s for it; kill it when it does not stop by then."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


def print_targets(targets: dict[str, dict]) -> None:
    """One `PASS|FAIL name: value (target ...)` line per target on stderr."""
    for name, t in targets.items():
        print(f"{'PASS' if t['pass'] else 'FAIL'} {name}: {t['value']} (target {t['target']})", file=sys.stderr)
