"""Hot swap under load: `sightline serve --registry DIR --database URL --alias champion` (started by this script on
127.0.0.1 only, as its own process) answers N concurrent clients while the champion is promoted to a second
version and then rolled back, both with `Registry.promote` / `rollback` from this process (what `sightline registry
promote|rollback` does), so the server sees the moves only through the database.

Reported: requests and errors (target 0), the share of answers naming the registry version that produced them
(target 100 %), per move the time until the first answer from the new version and until the last answer from the
old one, and whether every request sent more than 5 s after the move was answered by the new version.

Versions: two hymenoptera-trained bundles when given (--bundle A --bundle-b B); with only --bundle, the second
version is a copy of A with another version string in model.json (a different content hash, the same weights);
--trial makes two tiny random-weight bundles (timm test_efficientnet) instead.

Full run:
    python benchmarks/hot_swap.py --bundle /tmp/hym-run/bundle --images /work/shared/data/hymenoptera/val
Quick check that it runs:
    python benchmarks/hot_swap.py --trial --quick
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import stop_process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_bundle(folder: Path, seed: int, version: str) -> Path:
    import torch

    from sightline.bundle import Bundle, Preprocessing
    from sightline.models.factory import create_model
    from sightline.optimize.export import export

    torch.manual_seed(seed)
    model = create_model("test_efficientnet", 2, weights="none")
    bundle = Bundle("test_efficientnet", ["ants", "bees"], Preprocessing(64), name="tiny", version=version)
    bundle.save(folder, model.state_dict())
    export(folder)
    return folder


def second_version(bundle: Path, folder: Path) -> Path:
    """A copy of `bundle` whose model.json names another version: another content hash, the same weights."""
    from sightline.bundle import resolve_bundle_dir

    src = resolve_bundle_dir(bundle)
    shutil.copytree(src, folder, ignore=shutil.ignore_patterns("*.db*", "images", "reference*"))
    meta = json.loads((folder / "model.json").read_text())
    meta["version"] = f"{meta['version']}-b"
    (folder / "model.json").write_text(json.dumps(meta, indent=2))
    return folder


def load_images(folder: Path | None, n: int) -> list[bytes]:
    if folder is None:
        import io

        import numpy as np
        from PIL import Image

        out = []
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(np.random.default_rng(i).integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(buf, "JPEG")
            out.append(buf.getvalue())
        return out
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]
    if not files:
        raise SystemExit(f"no .jpg/.png images under {folder}")
    return [p.read_bytes() for p in files]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bundle", type=Path, help="first version (champion at start): an exported RUN or bundle")
    ap.add_argument("--bundle-b", type=Path, help="second version; default a re-versioned copy of --bundle")
    ap.add_argument("--trial", action="store_true", help="two tiny random-weight bundles instead of --bundle")
    ap.add_argument("--images", type=Path, help="images to send (default: random 128x96 JPEGs)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--duration", type=float, default=40.0, help="seconds of load in all")
    ap.add_argument("--promote-at", type=float, default=8.0, help="seconds into the run")
    ap.add_argument("--rollback-at", type=float, default=24.0, help="seconds into the run")
    ap.add_argument("--poll", type=float, default=1.0, help="SIGHTLINE_REGISTRY_POLL_S of the server")
    ap.add_argument("--quick", action="store_true", help="short run: 20 s, promote at 3 s, roll back at 11 s")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    if args.quick:
        args.duration, args.promote_at, args.rollback_at = 20.0, 3.0, 11.0
    if not args.trial and args.bundle is None:
        ap.error("give --bundle (an exported bundle) or --trial")
    if not args.promote_at + 5 < args.rollback_at < args.duration - 5:
        ap.error("need promote-at + 5 < rollback-at < duration - 5")

    import httpx

    from sightline.loop.registry import Registry
    from sightline.storage.store import Store

    work = Path(tempfile.mkdtemp(prefix="sightline-hotswap-"))
    proc = None
    try:
        if args.trial:
            a, b = tiny_bundle(work / "a", 0, "1"), tiny_bundle(work / "b", 1, "2")
        else:
            a = args.bundle
            b = args.bundle_b or second_version(args.bundle, work / "b")
        url = f"sqlite:///{work / 'sightline.db'}"
        registry = Registry(url, root=work / "registry")
        v_old = registry.add(a, alias="champion", reason="hot-swap benchmark").version.ref
        v_new = registry.add(b, reason="hot-swap benchmark").version.ref
        store = Store(url)
        key = store.create_key("bench")
        store.close()
        blobs = load_images(args.images, 64)

        port = free_port()
        env = {**os.environ, "SIGHTLINE_REGISTRY_POLL_S": str(args.poll), "SIGHTLINE_RATE_LIMIT_PER_MINUTE": "0"}
        log_path = work / "server.log"
        cmd = [sys.executable, "-m", "sightline.cli", "serve", "--registry", str(work / "registry"), "--database", url,
               "--alias", "champion", "--port", str(port)]
        proc = subprocess.Popen(cmd, env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 180
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"server exited:\n{log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise SystemExit("server not ready after 180 s")
            time.sleep(0.3)

        results: list[tuple[float, float, int, str | None]] = []  # sent, answered (s since start), status, version
        lock = threading.Lock()
        t0 = time.monotonic()
        stop = threading.Event()

        def client(i: int) -> None:
            with httpx.Client(base_url=base, timeout=60) as c:
                j = i
                while not stop.is_set():
                    blob = blobs[j % len(blobs)]
                    j += args.clients
                    sent = time.monotonic() - t0
                    try:
                        r = c.post("/v1/predict", files=[("file", (f"{j}.jpg", blob))], headers={"X-API-Key": key})
                        version = r.json().get("model", {}).get("registry_version") if r.status_code == 200 else None
                        row = (sent, time.monotonic() - t0, r.status_code, version)
                    except httpx.HTTPError as exc:
                        row = (sent, time.monotonic() - t0, -1, type(exc).__name__)
                    with lock:
                        results.append(row)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        moves = []
        for at, action in ((args.promote_at, "promote"), (args.rollback_at, "rollback")):
            time.sleep(max(0.0, at - (time.monotonic() - t0)))
            t_move = time.monotonic() - t0
            if action == "promote":
                registry.promote(v_new, reason="hot-swap benchmark")
                moves.append((action, t_move, v_old, v_new))
            else:
                registry.rollback(reason="hot-swap benchmark")
                moves.append((action, t_move, v_new, v_old))
        time.sleep(max(0.0, args.duration - (time.monotonic() - t0)))
        stop.set()
        for t in threads:
            t.join(timeout=120)
        registry.close()

        n = len(results)
        errors = [r for r in results if r[2] != 200]
        named = [r for r in results if r[2] == 200 and r[3] in (v_old, v_new)]
        report = {"clients": args.clients, "duration_s": args.duration, "requests": n,
                  "requests_per_s": round(n / args.duration, 1), "errors": len(errors),
                  "error_kinds": sorted({f"{s} {v}" for _, _, s, v in errors})[:5],
                  "named_share": round(len(named) / n, 4) if n else 0.0, "versions": {"old": v_old, "new": v_new},
                  "moves": []}
        ends = [m[1] for m in moves[1:]] + [args.duration]
        for (action, t_move, old, new), end in zip(moves, ends):
            window = [r for r in results if t_move <= r[0] < end or (r[0] < t_move and r[1] >= t_move)]
            first_new = min((r[1] for r in window if r[3] == new), default=None)
            last_old = max((r[1] for r in window if r[3] == old), default=None)
            late = [r for r in window if r[0] > t_move + 5]
            report["moves"].append({
                "action": action, "from": old, "to": new, "at_s": round(t_move, 2),
                "first_new_answer_after_s": None if first_new is None else round(first_new - t_move, 2),
                "last_old_answer_after_s": None if last_old is None else round(max(0.0, last_old - t_move), 2),
                "requests_sent_after_move_plus_5s": len(late),
                "all_new_after_move_plus_5s": bool(late) and all(r[3] == new for r in late),
            })
        with open(log_path) as fh:
            report["server_swap_lines"] = [ln.strip() for ln in fh if "registry champion moved" in ln]
        print(json.dumps(report, indent=2))
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))
        ok = not errors and report["named_share"] == 1.0 and all(m["all_new_after_move_plus_5s"]
                                                                    for m in report["moves"])
        print("PASS" if ok else "FAIL", "(0 errors, every answer named, new version only after move + 5 s)")
    finally:
        stop_process(proc, timeout=40)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
