"""Knowledge distillation: the loss against an independent formula, and a tiny teacher -> student run."""
from __future__ import annotations

import pytest
import torch

from sightline.bundle import load_bundle
from sightline.train.distill import kd_loss


def test_kd_loss_matches_the_formula():
    torch.manual_seed(0)
    s, t, y = torch.randn(6, 4), torch.randn(6, 4), torch.randint(0, 4, (6,))
    T, a = 3.0, 0.6
    p_t = torch.softmax(t / T, 1)
    kl = (p_t * (torch.log(p_t) - torch.log_softmax(s / T, 1))).sum(1).mean()
    ce = -torch.log_softmax(s, 1)[torch.arange(6), y].mean()
    assert kd_loss(s, t, y, temperature=T, alpha=a).item() == pytest.approx((a * T * T * kl + (1 - a) * ce).item(),
                                                                            rel=1e-5)
    assert kd_loss(t, t, y, temperature=T, alpha=1.0).item() == pytest.approx(0.0, abs=1e-6)
    # a calibrated teacher: its logits are divided by its fitted temperature before the softening
    c = 0.25
    assert kd_loss(s, t, y, temperature=T, alpha=a, teacher_calibration=c).item() == pytest.approx(
        kd_loss(s, t / c, y, temperature=T, alpha=a).item(), rel=1e-5)


def test_views_resize_and_renormalise_without_upscaling_the_student():
    from sightline.bundle import Preprocessing
    from sightline.train.distill import _View

    big = Preprocessing(64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    teacher = Preprocessing(64, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    student = Preprocessing(32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    pixels = torch.rand(2, 3, 64, 64)
    x = (pixels - 0.5) / 0.5
    to_teacher = _View(big, teacher)(x)  # same size: re-normalised only
    mean, std = torch.tensor(teacher.mean).view(1, 3, 1, 1), torch.tensor(teacher.std).view(1, 3, 1, 1)
    torch.testing.assert_close(to_teacher, (pixels - mean) / std, rtol=1e-5, atol=1e-5)
    to_student = _View(big, student)(x)  # same normalisation: a 2x downscale
    assert to_student.shape == (2, 3, 32, 32)
    assert _View(student, student)(to_student) is to_student
    # antialiased: a 1-pixel checkerboard averages out instead of aliasing into a pattern
    checker = ((torch.arange(64).view(1, -1) + torch.arange(64).view(-1, 1)) % 2 * 2.0 - 1).expand(1, 3, 64, 64)
    assert _View(big, student)(checker)[..., 1:-1, 1:-1].abs().max() < 1e-4


@pytest.mark.slow
def test_distill_cli_tiny(tmp_path, capsys, make_dataset):
    import json

    from sightline.cli import main
    from sightline.train.fit import train

    data = make_dataset(tmp_path / "data")
    # the teacher without the monitor's reference profile (distill never reads it; half of the teacher's CPU) and
    # with its precision and memory format as set, not timed on this CPU
    teacher = train(data, tmp_path / "teacher", model="test_efficientnet", weights="none", epochs=1,
                    input_size=48, batch_size=8, progress=False, num_workers=0, reference=False,
                    precision="32-true", channels_last=False)
    with pytest.raises(SystemExit) as exc:
        main(["distill", str(teacher), "--student", "test_resnet", "--input-size", "32", "--data", str(data),
              "--out", str(tmp_path / "student"), "--epochs", "1", "--weights", "none", "--json"])
    assert exc.value.code == 0
    report = json.loads(capsys.readouterr().out)
    for role, size in (("teacher", 48), ("student", 32)):
        r = report[role]
        assert r["input_size"] == size and r["split"] == "test" and r["n_images"] == 8
        assert 0 <= r["accuracy"] <= 1 and r["ms_per_image_batch1"] > 0
    student = load_bundle(tmp_path / "student")
    assert student.architecture == "test_resnet" and student.classes == ["dark", "light"]
    assert student.extra["distill"]["teacher_architecture"] == "test_efficientnet"
    assert "teacher" not in json.dumps(student.extra["train"])  # the teacher stays out of the student's config
    # the same Trainer set-up as `train`: its logs, its checkpoint, and the data folder export will look for
    assert (tmp_path / "student" / "logs" / "tensorboard").is_dir()
    assert (tmp_path / "student" / "checkpoints" / "best.ckpt").is_file()
    assert student.extra["train"]["data_dir"] == str(data.resolve())


@pytest.mark.parametrize("where", ["teacher", "teacher/bundle", "teacher/bundle/student"])
def test_distill_into_the_teachers_folder_is_refused(tmp_path, run_cli, make_dataset, where):
    """`--out RUN` (the teacher's own run) replaced the teacher's bundle with the student's without a word; `--out
    RUN/bundle` put a student bundle inside the teacher's."""
    from sightline.bundle import Bundle, Preprocessing
    from sightline.models.factory import create_model

    Bundle("test_efficientnet", ["a", "b"], Preprocessing(32)).save(
        tmp_path / "teacher" / "bundle", create_model("test_efficientnet", 2, weights="none").state_dict())
    before = (tmp_path / "teacher" / "bundle" / "model.json").read_bytes()
    make_dataset(tmp_path / "data")
    code, out = run_cli(["distill", str(tmp_path / "teacher"), "--student", "test_efficientnet", "--weights", "none",
                         "--data", str(tmp_path / "data"), "--out", str(tmp_path / where), "--epochs", "1"])
    assert code == 2 and "Traceback" not in out.err and len(out.err.strip().splitlines()) == 1
    assert "the teacher's" in out.err and "--out" in out.err
    assert (tmp_path / "teacher" / "bundle" / "model.json").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "teacher").iterdir()) == ["bundle"]



@pytest.mark.parametrize(("option", "value"), [("temperature", float("inf")), ("temperature", 0.0),
                                               ("alpha", float("nan"))])
def test_distill_refuses_a_temperature_or_alpha_out_of_range(tmp_path, option, value):
    """temperature=inf (`--temperature inf`) made the soft-target loss NaN from the first step: a student was trained
    and written on it, exit 0, without a word."""
    from sightline.errors import UserInputError
    from sightline.train.distill import distill

    with pytest.raises(UserInputError, match=rf"--{option} {value} must be|--temperature {value} a finite"):
        distill(tmp_path / "teacher", tmp_path / "data", tmp_path / "student", **{option: value})
    assert not (tmp_path / "student").exists()
