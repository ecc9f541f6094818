"""`sightline` commands of the optimize stage: export, predict, bench, distill."""
from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from sightline._cli.common import console, err_console, fail, print_json, refuse_empty_inputs

def expand_inputs(inputs: list[str]) -> list[Path]:
    """sightline.data.inputs.expand_inputs with its error as the command's one-line exit."""
    from sightline.data.inputs import expand_inputs as expand
    from sightline.errors import UserInputError

    refuse_empty_inputs(inputs, "image files, folders or quoted glob patterns")
    for item in inputs:  # a typo in a path is the user's to fix, not a prediction row to find later
        if not any(ch in str(item) for ch in "*?[") and not Path(item).exists():
            raise fail(f"input '{item}' does not exist; check the path (files, folders or quoted glob patterns).")
    try:
        return expand(inputs)
    except UserInputError as exc:
        raise fail(str(exc)) from None


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the root app."""

    @app.command("export")
    def export_cmd(
        run: Path = typer.Argument(..., help="RUN folder or bundle folder."),
        int8: bool = typer.Option(False, "--int8", help="Also write model.int8.onnx (static int8, calibrated on val)."),
        data: Path | None = typer.Option(None, "--data", help="Dataset (split layout); default: the one the run recorded."),
        quant_format: str = typer.Option("qdq", "--format", help="int8 graph format: qdq or qoperator."),
        as_json: bool = typer.Option(False, "--json", help="Print the export record as JSON."),
    ) -> None:
        """Export to ONNX (dynamic batch), check parity with PyTorch on val images, optionally quantize to int8."""
        from sightline.optimize.export import export

        if data is not None and not data.is_dir():
            raise fail(f"--data '{data}' is not a folder; pass the dataset in the split layout.")
        if quant_format != "qdq" and not int8:  # before the export's work, not silently ignored after it
            raise fail(f"--format {quant_format} is the int8 graph's format; add --int8 (or leave --format out).")
        with err_console.status("exporting to ONNX and checking parity..."):
            report = export(run, int8=int8, data_dir=data, quant_format=quant_format)
        if as_json:
            print_json(report)
            return
        p = report["parity"]
        console.print(escape(
            f"model.onnx written ({report['size_bytes'] / 1e6:.2f} MB, opset {report['opset']}); parity on "
            f"{p['n_images']} images from {p['source']}: max abs logit diff {p['max_abs_diff']:.2e}, "
            f"top-1 agreement {p['top1_agreement']:.3f}"
        ))
        if "int8" in report:
            q = report["int8"]
            t = q["test"]
            console.print(
                f"model.int8.onnx written ({q['size_bytes']['int8'] / 1e6:.2f} MB vs {q['size_bytes']['fp32'] / 1e6:.2f} MB); "
                f"{t['split']} ({t['n_images']} images): top-1 accuracy (before class thresholds) {t['fp32']['accuracy']:.4f} -> "
                f"{t['int8']['accuracy']:.4f}, "
                f"ECE {t['fp32']['ece']:.4f} -> {t['int8']['ece']:.4f}"
            )

    @app.command("predict")
    def predict_cmd(
        bundle: Path = typer.Argument(..., help="RUN or bundle folder (exported with `sightline export`)."),
        inputs: list[str] = typer.Argument(..., help="Image files, folders (searched recursively) or glob patterns."),
        int8: bool = typer.Option(False, "--int8", help="Use model.int8.onnx."),
        fmt: str = typer.Option("csv", "--format", help="csv or json."),
        out: Path | None = typer.Option(None, "--out", help="Write here instead of stdout."),
        batch_size: int = typer.Option(32, "--batch-size", min=1, help="Images per inference call."),
        features: Path | None = typer.Option(
            None, "--features", help="Also save each readable image's pooled features (from the same forward pass) "
            "to this .npz file: arrays `features` (N, D) and `filenames`."),
    ) -> None:
        """Predict a label for every image; unreadable files get a row with the error, never stop the batch."""
        import csv
        import io
        import json

        from sightline.bundle import load_bundle
        from sightline.data.inputs import shown_name
        from sightline.inference import open_engine
        from sightline.progress import rich_progress

        if fmt not in ("csv", "json"):
            raise fail(f"--format {fmt!r} is unknown; use csv or json.")
        if features is not None and features.suffix != ".npz":
            raise fail(f"--features {features} must name a .npz file, e.g. features.npz.")
        paths = expand_inputs(inputs)
        if not paths:
            shown = ", ".join(f"'{i}'" for i in inputs[:3]) + (f" and {len(inputs) - 3} more" if len(inputs) > 3 else "")
            raise fail(f"no image found in {shown} (images are decided by content or an image file name); "
                       "pass image files, folders that hold them, or glob patterns.")
        with open_engine(load_bundle(bundle), backend="onnx-int8" if int8 else "onnx") as engine:
            if features is not None:
                engine.require_features()
                width = engine.backend.feature_dim  # D, for a (0, D) file when no image is readable
            with rich_progress(console=err_console) as progress:
                rows = engine.predict_files(paths, batch_size=batch_size, keep_outputs=features is not None,
                                            progress=progress)
        if features is not None:
            import numpy as np

            kept = [r for r in rows if r.output is not None]
            # no readable image: still (0, D), so a reader stacking several files need not special-case it
            dim = kept[0].output.features.shape[1] if kept else (width or 0)
            matrix = np.concatenate([r.output.features for r in kept]) if kept else np.zeros((0, dim), np.float32)
            features.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(features, features=matrix.astype(np.float32),
                                filenames=np.array([shown_name(r.filename) for r in kept]))
            err_console.print(escape(f"features ({len(kept)} x {dim}, float32) of the readable images written to "
                                     f"{features}"))
        if fmt == "json":
            text = json.dumps([{**r.to_dict(), "filename": shown_name(r.filename),
                                "error": shown_name(r.error) if r.error else r.error} for r in rows], indent=2) + "\n"
        else:
            buf = io.StringIO()
            writer = csv.writer(buf)
            writer.writerow(["filename", "label", "confidence", "decision", "top_k", "error"])
            for r in rows:
                top = ";".join(f"{t['label']}:{t['confidence']:.4f}" for t in r.top_k)
                conf = f"{r.confidence:.6f}" if r.confidence is not None else ""
                writer.writerow([shown_name(r.filename), r.label or "", conf, r.decision or "", top,
                                 shown_name(r.error or "")])
            text = buf.getvalue()
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text)
            n_err = sum(r.error is not None for r in rows)
            err_console.print(escape(f"{len(rows)} rows ({n_err} unreadable) written to {out}"))
        else:
            typer.echo(text, nl=False)

    @app.command("bench")
    def bench_cmd(
        bundle: Path = typer.Argument(..., help="RUN or bundle folder (exported with `sightline export --int8`)."),
        images: Path | None = typer.Option(None, "--images", help="Folder of images to use (default: synthetic 640x480 JPEGs)."),
        batch_sizes: str = typer.Option("1,8,32", "--batch-sizes", help="Comma-separated batch sizes."),
        backends: str = typer.Option("torch,onnx,onnx-int8", "--backends", help="Any of torch, onnx, onnx-int8."),
        budget: float = typer.Option(4.0, "--budget", help="Seconds per backend and batch size."),
        threads: int | None = typer.Option(None, "--threads", min=1, help="Inference threads for every backend (default: all cores)."),
        as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
    ) -> None:
        """Decode / preprocess / inference / postprocess timings, p50/p95, images/s, size and peak memory."""
        from rich.table import Table

        from sightline.optimize.bench import bench

        try:
            sizes = tuple(int(b) for b in batch_sizes.split(",") if b.strip())
        except ValueError:
            raise fail(f"--batch-sizes '{batch_sizes}' must be integers separated by commas, e.g. 1,8,32.") from None
        if not budget > 0:  # a negative budget measured one pass and printed figures as if it were a run
            raise fail(f"--budget {budget:g} must be a positive number of seconds, e.g. 4.")
        blobs = None
        if images is not None:
            from sightline.data.images import load_image
            from sightline.data.inputs import shown_name
            from sightline.errors import ImageError, one_line

            files = expand_inputs([str(images)])  # 'x.jpg' that holds no image is tried, and said to be left out
            blobs, left_out = [], []
            for f in files:  # one that cannot be decoded would end the run, named '<uploaded bytes>'
                if len(blobs) == 256:
                    break
                try:
                    load_image(f, draft=(256, 256))
                except ImageError as exc:
                    left_out.append(shown_name(one_line(exc)))
                    continue
                blobs.append(f.read_bytes())
            if not blobs:
                raise fail(f"--images '{images}' holds no image that can be decoded"
                           + (f" ({len(left_out)} tried, e.g. {left_out[0]})." if left_out else "."))
            if left_out:
                err_console.print(escape(f"--images: {len(left_out)} file(s) left out, they cannot be decoded "
                                         f"(e.g. {left_out[0]})"), highlight=False, soft_wrap=True)
        from sightline.progress import rich_progress

        with rich_progress(console=err_console, enabled=not as_json) as progress:
            report = bench(
                bundle,
                images=blobs,
                batch_sizes=sizes,
                backends=[b.strip() for b in backends.split(",") if b.strip()],
                time_budget_s=budget,
                threads=threads,
                progress=progress,
            )
        if as_json:
            print_json(report)
            return
        table = Table(title=f"{report['architecture']} @ {report['input_size']} px, {report['images']['source']}")
        table.caption = "times in ms per batch (p50); MB: model file; RSS: peak resident memory growth, MB"
        for col in ("backend", "bs", "p50", "p95", "img/s", "decode", "prep", "infer", "post", "MB", "RSS"):
            table.add_column(col, justify="right", no_wrap=True)
        for backend, entry in report["results"].items():
            if "skipped" in entry:
                continue
            for b in sizes:
                r = entry[str(b)]
                s = r["stages_p50_ms"]
                table.add_row(
                    backend, str(b), f"{r['p50_ms']:.1f}", f"{r['p95_ms']:.1f}", f"{r['images_per_s']:.1f}",
                    f"{s['decode']:.1f}", f"{s['preprocess']:.1f}", f"{s['inference']:.1f}", f"{s['postprocess']:.2f}",
                    f"{entry['model_bytes'] / 1e6:.2f}", str(entry["peak_rss_delta_mb"]),
                )
        console.print(table)
        for backend, entry in report["results"].items():
            if "skipped" in entry:
                console.print(escape(f"{backend} skipped: {entry['skipped']}"))
        for backend, entry in report["results"].items():
            if "settings" in entry:
                console.print(f"{backend}: {entry['settings']}")
        if report.get("pipeline"):
            console.print(f"every backend: {report['pipeline']}")
        for key, value in report["speedup"].items():
            console.print(f"{key}: {value}x")

    @app.command("distill")
    def distill_cmd(
        run: Path = typer.Argument(..., help="Teacher RUN or bundle folder."),
        student: str = typer.Option(..., "--student", help="Student architecture, e.g. lite0 or tf_efficientnet_lite0."),
        data: Path | None = typer.Option(None, "--data", help="Dataset (split layout); default: the one the run recorded."),
        out: Path | None = typer.Option(None, "--out", help="Student RUN folder (default: RUN-distilled-STUDENT)."),
        input_size: int | None = typer.Option(None, "--input-size", help="Student input side in px (default: its own)."),
        epochs: int = typer.Option(12, "--epochs", min=1),
        temperature: float = typer.Option(2.0, "--temperature", help="Softening of the (calibrated) teacher's soft targets; higher passes on more of its ranking of the other classes."),
        alpha: float = typer.Option(0.7, "--alpha", help="Weight of the soft-target loss (1 - alpha on labels)."),
        weights: str = typer.Option("auto", "--weights", help="Student init: auto (ImageNet), none, or a file."),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Distil a trained teacher into a smaller/faster student; report accuracy and latency of both."""
        from sightline.bundle import load_bundle
        from sightline.optimize.export import recorded_data
        from sightline.train.distill import distill

        gone = None
        if data is None:
            data, gone = recorded_data(run, load_bundle(run))
        if data is None:
            raise fail(f"pass --data DATA (split layout): the run's dataset '{gone}' is not there any more." if gone
                       else "pass --data DATA (split layout): the run does not record where its dataset is.")
        if not data.is_dir():
            raise fail(f"--data '{data}' is not a folder; pass the dataset (split layout).")
        out = out or run.with_name(f"{run.name}-distilled-{student}")
        report = distill(run, data, out, student=student, input_size=input_size, epochs=epochs,
                         temperature=temperature, alpha=alpha, weights=weights, progress=not as_json)
        if as_json:
            print_json(report)
            return
        for role in ("teacher", "student"):
            r = report[role]
            console.print(
                f"{role:8} {r['architecture']} @ {r['input_size']} px: {r['split']} accuracy {r['accuracy']:.4f} "
                f"({r['n_images']} images), {r['params'] / 1e6:.2f} M params, eager CPU "
                f"{r['ms_per_image_batch1']:.1f} ms/img at batch 1, {r['ms_per_image_batch32']:.2f} ms/img at batch 32"
            )
        console.print(escape(f"student bundle: {report['run']}/bundle (export it with `sightline export {report['run']}`)"))
