"""`sightline train`, `sightline compare`, `sightline demo`: thin commands over sightline.train."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape

from sightline._cli.common import console, err_console, existing_path, fail, out_folder, print_json
from sightline.train.config import TrainConfig


def _default(field: str) -> str:
    """' (default X)' from TrainConfig, so --help states the value a run really gets. Parentheses, not brackets:
    rich reads '[...]' in help text as markup and drops it."""
    return f" (default {TrainConfig.model_fields[field].default})"


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the root app."""
    app.command("train")(train_cmd)
    app.command("lr-find")(lr_find_cmd)
    app.command("compare")(compare_cmd)
    app.command("demo")(demo_cmd)


def train_cmd(
    data: Path = typer.Argument(..., help="Dataset folder in the split layout (DATA/train, DATA/val[, DATA/test])."),
    out: Path = typer.Option(..., "--out", "-o", help="RUN folder to write (config, logs, checkpoint, bundle/)."),
    model: Optional[str] = typer.Option(None, help="timm architecture" + _default("model") +
                                        "; lite0/lite1/lite2 work offline."),
    weights: Optional[str] = typer.Option(None, help="'auto' (packaged ImageNet weights, else the "
                                          "hub; the default), 'none', or a .safetensors/.pth file."),
    epochs: Optional[int] = typer.Option(None, help="Maximum epochs; stops sooner when validation "
                                        "saturates" + _default("epochs") + "."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per batch" + _default("batch_size") + "."),
    input_size: Optional[str] = typer.Option(None, "--input-size", help="Input side in px, or 'auto' (default): "
                                             "the model's size, or a short probe when the images are smaller."),
    lr: Optional[str] = typer.Option(None, help="Peak learning rate of the head (default "
                                     "1e-3), or 'auto': a range test picks it (RUN/lr_find.png)."),
    freeze_epochs: Optional[int] = typer.Option(None, "--freeze-epochs", help="Train only the head first" +
                                                 _default("freeze_epochs") + "."),
    augment: Optional[str] = typer.Option(None, help="light | strong | none" + _default("augment") + "."),
    crop_pct: Optional[float] = typer.Option(None, "--crop-pct", help="Share of the image the center crop keeps "
                                             "(default: the model's; 1.0 for defects near the edge)."),
    balance: Optional[str] = typer.Option(None, help="auto | none | weights | sampler" + _default("balance") + "."),
    seed: Optional[int] = typer.Option(None, help="Random seed" + _default("seed") + "."),
    seeds: int = typer.Option(1, "--seeds", help="Train N seeds and report mean +- std of validation metrics."),
    time_budget: Optional[str] = typer.Option(None, "--time-budget", help="Wall-clock budget of the run (300, 90s, "
                                              "5m, 1h30m): epochs are planned from the first one to fit."),
    patience: Optional[int] = typer.Option(None, help="Stop after this many epochs without a better "
                                         "validation score" + _default("patience") + "."),
    cache_ram: Optional[str] = typer.Option(None, "--cache-ram", help="Memory for images decoded once: auto (a "
                                            "quarter of what is free; default), 25%, 2GB, 0 (disk only) or off."),
    max_time: Optional[float] = typer.Option(None, "--max-time", help="Hard wall-clock limit for fitting, seconds "
                                             "(stops mid-epoch; --time-budget plans instead)."),
    accelerator: Optional[str] = typer.Option(None, help="auto | cpu | gpu."),
    devices: Optional[str] = typer.Option(None, help="'auto', a count ('2') or ids ('0,1')."),
    num_nodes: Optional[int] = typer.Option(None, "--num-nodes", help="Machines for multi-node DDP."),
    strategy: Optional[str] = typer.Option(None, help="Lightning strategy: auto | ddp | ddp_spawn ..."),
    precision: Optional[str] = typer.Option(None, help="auto | 32-true | bf16-mixed | 16-mixed."),
    workers: Optional[int] = typer.Option(None, help="DataLoader worker processes."),
    config: Optional[Path] = typer.Option(None, "--config", help="A config.yaml (e.g. RUN/config.yaml) to start from."),
    sanity: bool = typer.Option(False, "--sanity", help="Only check: a few batches, then overfit 2 batches."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Fine-tune a pretrained timm model; keep the best checkpoint on validation; write RUN/bundle/."""
    import json

    from sightline.train.config import TrainConfig, load_config
    from sightline.train.fit import sanity_check, train, train_seeds

    existing_path(data, "dataset folder")
    out_folder(out)
    cfg = load_config(config) if config else TrainConfig()
    given = {"model": model, "weights": weights, "epochs": epochs, "batch_size": batch_size,
             "input_size": input_size, "lr": lr, "freeze_epochs": freeze_epochs, "augment": augment, "crop_pct": crop_pct,
             "balance": balance, "seed": seed, "max_time_s": max_time, "time_budget": time_budget,
             "patience": patience, "cache_ram": cache_ram, "accelerator": accelerator,
             "devices": devices, "num_nodes": num_nodes, "strategy": strategy, "precision": precision,
             "num_workers": workers}
    cfg = cfg.with_overrides(**{k: v for k, v in given.items() if v is not None})
    if seeds < 1:
        raise fail(f"--seeds {seeds}: use 1 or more.")

    if sanity:
        result = sanity_check(data, config=cfg)
        if json_out:
            print_json(result)
        else:
            verdict = "[green]passed[/]" if result["passed"] else "[red]FAILED[/]"
            console.print(f"sanity check {verdict}: 2 batches through train/val ran; overfitting {result['images']} "
                          f"images reached accuracy {result['accuracy']:.2f} in {result['steps']} steps "
                          f"(loss {result['loss_start']:.3f} -> {result['loss_end']:.3f}).")
        if not result["passed"]:
            raise typer.Exit(1)
        return
    if seeds > 1:
        summary = train_seeds(data, out, seeds=seeds, config=cfg, progress=not json_out)
        if json_out:
            print_json(summary)
            return
        acc, f1 = summary["accuracy"], summary["macro_f1"]
        console.print(escape(f"{seeds} seeds, val ({summary['n_images']} images): accuracy {acc['mean']:.4f} +- "
                             f"{acc['std']:.4f}, macro-F1 {f1['mean']:.4f} +- {f1['std']:.4f}  ({out / 'seeds.json'})"))
        return
    try:
        run = train(data, out, config=cfg, progress=not json_out)
    except KeyboardInterrupt as exc:  # Ctrl-C: what is left, in one line, and the shell's code for an interrupt
        what = str(exc) or "interrupted"  # fit_system says the epoch
        bundle, checkpoints, written = out / "bundle", out / "checkpoints", out / "config.yaml"
        if (bundle / "model.json").is_file():
            left = f"{bundle} was written"
        elif checkpoints.is_dir() and any(checkpoints.iterdir()):
            left = f"no bundle written, checkpoints so far in {checkpoints}"
        else:
            left = "nothing trained yet"
        again = (f"`sightline train {data} --out NEW --config {written}` starts again with the same settings"
                 if written.is_file() else "run the same command to start again")
        err_console.print(escape(f"{what}: {left}; {again}."), highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    metrics_path = run / "metrics.json"
    if not metrics_path.is_file():  # a non-zero DDP rank: rank 0 writes and reports
        return
    metrics = json.loads(metrics_path.read_text())
    if json_out:
        print_json({"run": str(run), "bundle": str(run / "bundle"), **metrics})
        return
    val = metrics["val"]
    console.print(f"val ({val['n_images']} images): accuracy {val['accuracy']:.4f}, macro-F1 {val['macro_f1']:.4f} "
                  f"(best epoch {metrics['best_epoch']}, {metrics['epochs_run']} epochs run, "
                  f"{metrics['fit_seconds']} s fitting, {metrics['run_seconds']} s in all)")
    console.print(escape(f"bundle: {run / 'bundle'}   logs: tensorboard --logdir {run / 'logs'}"))


def lr_find_cmd(
    data: Path = typer.Argument(..., help="Dataset folder in the split layout (DATA/train, DATA/val)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for lr_find.png and lr_find.json."),
    model: Optional[str] = typer.Option(None, help="timm architecture (default tf_efficientnet_lite0)."),
    weights: Optional[str] = typer.Option(None, help="'auto' (default), 'none', or a .safetensors/.pth file."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per batch (as you will train)."),
    input_size: Optional[str] = typer.Option(None, "--input-size", help="Input side in px, or 'auto' (default)."),
    steps: int = typer.Option(100, help="Training batches in the sweep at most (it stops when the loss diverges)."),
    min_lr: float = typer.Option(1e-6, "--min-lr", help="First learning rate of the sweep."),
    max_lr: float = typer.Option(1.0, "--max-lr", help="Last learning rate of the sweep."),
    config: Optional[Path] = typer.Option(None, "--config", help="A config.yaml to start from."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Learning-rate range test: the loss while the rate grows from --min-lr to --max-lr; a suggested --lr."""
    from sightline.train.config import TrainConfig, load_config
    from sightline.train.lr_find import find_lr

    existing_path(data, "dataset folder")
    out_folder(out)
    cfg = load_config(config) if config else TrainConfig()
    given = {"model": model, "weights": weights, "batch_size": batch_size, "input_size": input_size}
    cfg = cfg.with_overrides(**{k: v for k, v in given.items() if v is not None})
    finding = find_lr(data, out, config=cfg, steps=steps, min_lr=min_lr, max_lr=max_lr, progress=not json_out)
    if json_out:
        print_json(finding.to_dict())
        return
    console.print(f"suggested learning rate: {finding.suggestion:.2e} ({finding.rule}; {finding.steps} steps"
                  f"{', stopped when the loss diverged' if finding.diverged else ''})")
    console.print(escape(f"plot: {finding.plot}   train with: sightline train {data} --lr {finding.suggestion:.2e} ..."))


def compare_cmd(
    data: Path = typer.Argument(..., help="Dataset folder in the split layout."),
    models: str = typer.Option("lite0,lite1,lite2", help="Comma-separated timm architectures."),
    sample: Optional[int] = typer.Option(300, help="Stratified sample of training images (same for every model)."),
    epochs: int = typer.Option(5, help="Epochs per model (same budget for every model)."),
    input_size: Optional[int] = typer.Option(None, "--input-size", help="Input side in px (default: each model's)."),
    batch_size: int = typer.Option(32, "--batch-size"),
    weights: str = typer.Option("auto", help="'auto' or 'none' for every model."),
    out: Optional[Path] = typer.Option(None, "--out", help="Keep the runs here (default: a temporary folder)."),
    seed: int = typer.Option(0),
    json_out: bool = typer.Option(False, "--json", help="Print the table as JSON."),
) -> None:
    """Train several architectures on the same sample and budget; table of accuracy, size and CPU latency."""
    from rich.table import Table

    from sightline.train.compare import compare

    existing_path(data, "dataset folder")
    out_folder(out)
    names = [m.strip() for m in models.split(",") if m.strip()]
    if not names:
        raise fail("--models is empty; give names such as lite0,lite1.")
    result = compare(data, names, sample=sample, epochs=epochs, input_size=input_size, batch_size=batch_size,
                     weights=weights, out_dir=out, seed=seed, progress=not json_out)
    if json_out:
        print_json(result)
        return
    table = Table(title=f"val: {result['n_val']} images, train sample: {result['n_train']} images, {epochs} epochs")
    # The model name is what the table is about: never truncated; short headers keep 80 columns enough.
    name_width = max(len(row["model"]) for row in result["rows"])
    table.add_column("model", no_wrap=True, min_width=name_width)
    for col in ("val acc", "val F1", "params M", "MB", "CPU ms/img", "fit s"):
        table.add_column(col, justify="right")
    for row in result["rows"]:
        table.add_row(row["model"], f"{row['val_accuracy']:.3f}", f"{row['val_macro_f1']:.3f}",
                      f"{row['params_m']:.2f}", f"{row['size_mb']:.1f}", f"{row['cpu_ms_per_image']:.1f}",
                      f"{row['fit_seconds']:.0f}")
    console.print(table)
    console.print(f"recommendation: {result['recommendation']}")


def demo_cmd(
    out: Path = typer.Option(Path("demo-run"), "--out", help="Folder for the data, the run and the reports."),
    quick: bool = typer.Option(False, "--quick", help="Even smaller and faster (for tests)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the generated data, the split and the training."),
    serve: bool = typer.Option(False, "--serve", help="Then put the model in production: start the service and "
                               "web app, replay a stream that drifts and holds unknown images, print where the "
                               "review queue, the alert and the dashboard wait. On a finished demo folder it only "
                               "does this part."),
    host: str = typer.Option("127.0.0.1", "--host", help="With --serve: bind address."),
    port: int = typer.Option(8000, "--port", help="With --serve: port."),
) -> None:
    """The whole path on generated data: synth -> audit (with the label check; the demo then plays the reviewer
    and corrects only the wrong labels it planted, saying so) -> split -> train -> evaluate -> explain -> export,
    then where to look and how to serve it. Under 5 minutes on 2 CPU cores; nothing is downloaded."""
    from sightline.train.demo import run_demo

    finished = (out / "run" / "bundle" / "model.int8.onnx").is_file() and (out / "data" / "test").is_dir()
    if not (serve and finished):
        artifacts: dict[str, Any] = run_demo(out, quick=quick, seed=seed)
        console.print("\n[bold]demo finished[/]; open these:")
        for what, where in artifacts.items():
            console.print(escape(f"  {what:<14} {where}"))
        if not serve:
            console.print(f"\nnext, the model in production (drift, unknown images, review, retraining): "
                          f"[bold]sightline demo --serve --out {escape(str(out))}[/]", highlight=False)
            return
    from sightline.progress import rich_progress
    from sightline.serve.demo import DemoService, print_summary
    from sightline.train.demo import say

    say(f"starting the service on http://{host}:{port} (registry and database in {out / 'service'}) ...")
    with DemoService(out, host=host, port=port, seed=seed, say=say) as service:
        with rich_progress() as progress:
            summary = service.replay_stream(progress=progress)
        print_summary(summary, say)
        say("serving until Ctrl-C ...")
        try:
            service.wait()
        except KeyboardInterrupt:
            say("stopping the service ...")
