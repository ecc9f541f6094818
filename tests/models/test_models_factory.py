"""create_model: names, weights files, and one-line errors for weights that do not fit."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sightline.errors import ModelError
from sightline.models import pretrained
from sightline.models.factory import create_model, resolve_model_name

TINY = "test_efficientnet"


def _same_params(a: torch.nn.Module, b: torch.nn.Module, *, skip: str | None = None) -> bool:
    sb = b.state_dict()
    return all(torch.equal(v, sb[k]) for k, v in a.state_dict().items() if not (skip and k.startswith(skip)))


def test_none_gives_logits_of_the_right_shape() -> None:
    model = create_model(TINY, num_classes=4, weights="none").eval()
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 4)
    assert model.sightline_weights["source"].startswith("none")


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(ModelError, match=r"unknown model 'tf_efficientnet_lite9'.*tf_efficientnet_lite0"):
        create_model("tf_efficientnet_lite9", num_classes=2)
    assert resolve_model_name("lite1") == "tf_efficientnet_lite1"


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_file_round_trip(tmp_path: Path, suffix: str) -> None:
    source = create_model(TINY, num_classes=3, weights="none")
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    else:
        torch.save(source.state_dict(), path)
    loaded = create_model(TINY, num_classes=3, weights=path)
    assert _same_params(source, loaded)
    assert loaded.sightline_weights["notes"] == []


def test_lightning_checkpoint_prefix_is_stripped(tmp_path: Path) -> None:
    source = create_model(TINY, num_classes=2, weights="none")
    path = tmp_path / "last.ckpt"
    torch.save({"epoch": 3, "state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}}, path)
    assert _same_params(source, create_model(TINY, num_classes=2, weights=path))


def test_other_class_count_reinitialises_head_only(tmp_path: Path) -> None:
    source = create_model(TINY, num_classes=5, weights="none")
    path = tmp_path / "w.pth"
    torch.save(source.state_dict(), path)
    loaded = create_model(TINY, num_classes=2, weights=path)
    assert loaded.classifier.weight.shape[0] == 2
    assert _same_params(source, loaded, skip="classifier.")
    assert "re-initialised for 2 classes" in loaded.sightline_weights["notes"][0]


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pth"
    torch.save(create_model("test_resnet", num_classes=2).state_dict(), path)
    with pytest.raises(ModelError, match=r"does not fit this architecture: \d+ tensors missing.*first: missing"):
        create_model(TINY, num_classes=2, weights=path)


def test_shape_mismatch_names_the_first_tensor(tmp_path: Path) -> None:
    state = create_model(TINY, num_classes=2).state_dict()
    state["conv_stem.weight"] = torch.zeros(5, 3, 3, 3)
    path = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(ModelError, match=r"'conv_stem.weight' has shape \(5, 3, 3, 3\)"):
        create_model(TINY, num_classes=2, weights=path)


def test_position_mapping_refuses_other_tensor_count() -> None:
    model = create_model(TINY, num_classes=2)
    state = dict(list(model.state_dict().items())[:-3])
    with pytest.raises(ModelError, match="tensors but the model has"):
        pretrained.fit_state_dict(model, state, classifier="classifier", by_position=True, source="x")


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (b"not a tensor file", "w.pth", "cannot be read with weights_only=True"),
        (b"garbage", "w.safetensors", "not a readable .safetensors"),
        (b"{}", "w.json", "unknown type"),
    ],
)
def test_unreadable_weights_files(tmp_path: Path, content: bytes, name: str, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ModelError, match=message):
        create_model(TINY, num_classes=2, weights=path)


def test_missing_file_and_auto_without_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelError, match="neither 'auto', 'none' nor an existing file"):
        create_model(TINY, num_classes=2, weights="nowhere.pth")
    monkeypatch.setattr(pretrained, "hub_reachable", lambda timeout_s=2.0: False)
    with pytest.raises(ModelError, match=r"no pretrained weights for 'test_efficientnet'.*weights='none'"):
        create_model(TINY, num_classes=2, weights="auto")
