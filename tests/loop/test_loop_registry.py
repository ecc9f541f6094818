"""The registry on SQLite and PostgreSQL: immutable versions (read-only copies whose hash is checked), promote /
rollback as a stack, an append-only log that the database itself defends, the challenge gate with --force, and
bad input that is one line and changes nothing. PostgreSQL: $SIGHTLINE_TEST_POSTGRES_URL or 127.0.0.1:5432/test
(trust auth), tables under a unique prefix dropped afterwards; skipped with the reason when unreachable."""
from __future__ import annotations

import json
import os
import shutil
import stat
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
import torch

from sightline._cli.common import run_command
from sightline.bundle import Bundle, load_bundle
from sightline.cli import app
from sightline.errors import UserInputError
from sightline.loop.content import bundle_hash
from sightline.loop.registry import Registry, current_user
from sightline.models.factory import create_model
from sightline.preprocessing import Preprocessing

POSTGRES = os.environ.get("SIGHTLINE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TEST_METRICS = {"split": "test", "n_images": 20, "accuracy": 0.9, "macro_f1": 0.88}


def _bundle(folder: Path, seed: int, **fields) -> Path:
    torch.manual_seed(seed)
    model = create_model("test_efficientnet", 2, weights="none")
    fields.setdefault("metrics", {"val": {"split": "val", "n_images": 8, "accuracy": 0.8}, "test": TEST_METRICS})
    Bundle("test_efficientnet", ["dark", "light"], Preprocessing(32), dataset_version=f"data{seed}",
           **fields).save(folder, model.state_dict())
    return folder


def _tiny_onnx() -> bytes:
    """A valid ONNX graph (one Identity node), for tests where a bundle's model.onnx only has to be there."""
    from onnx import TensorProto, helper

    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in "xy")
    return helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])) \
        .SerializeToString()


def _postgres_or_skip() -> str:
    try:
        engine = sa.create_engine(POSTGRES, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # noqa: BLE001 - any failure to reach the server is a reason to skip
        pytest.skip(f"PostgreSQL at {POSTGRES} is unreachable ({type(exc).__name__}); set SIGHTLINE_TEST_POSTGRES_URL")
    return POSTGRES


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(request: pytest.FixtureRequest, tmp_path: Path):
    prefix = f"t{uuid.uuid4().hex[:10]}_"
    if request.param == "sqlite":
        (tmp_path / "state").mkdir()
        reg = Registry(f"sqlite:///{tmp_path / 'state' / 'sightline.db'}", prefix=prefix)
        assert reg.root == tmp_path / "state" / "registry"  # beside the database by default
        yield reg
        reg.close()
        return
    reg = Registry(_postgres_or_skip(), root=tmp_path / "registry", prefix=prefix)
    try:
        yield reg
    finally:
        with reg.engine.begin() as conn:
            for name in ("alias_log", "aliases", "challenges", "versions"):
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {prefix}{name} CASCADE"))
            conn.execute(sa.text(f"DROP FUNCTION IF EXISTS {prefix}append_only()"))
        reg.close()


@pytest.fixture(scope="module")
def _made(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("made")
    return [_bundle(root / f"b{i}" / "bundle", seed=i) for i in range(3)]


@pytest.fixture
def bundles(_made: list[Path], tmp_path: Path) -> list[Path]:
    """Three bundles of this test's own (tests write into them), copied from the module's: building a model and
    saving its weights was half of most tests here."""
    return [Path(shutil.copytree(b, tmp_path / f"b{i}" / "bundle")) for i, b in enumerate(_made)]


def _state(reg: Registry) -> tuple:
    """Everything a refused command must leave as it was."""
    return ([v.to_dict() for v in reg.versions()], {a: v.ref for a, v in reg.aliases().items()},
            [m.to_dict() for m in reg.history()])


def test_add_keeps_an_immutable_copy(registry: Registry, bundles: list[Path]) -> None:
    added = registry.add(bundles[0], by="ana", reason="first model")
    v = added.version
    assert added.created and v.ref == "v1" and (v.added_by, v.reason) == ("ana", "first model")
    assert v.bundle_hash == bundle_hash(bundles[0]) == bundle_hash(v.path)
    assert (v.dataset_version, v.test_metrics, v.classes) == ("data0", TEST_METRICS, ["dark", "light"])
    copy = Path(v.path)
    assert copy.parent == registry.root and sorted(p.name for p in copy.iterdir()) == ["model.json",
                                                                                        "weights.safetensors"]
    assert all(not p.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) for p in copy.iterdir())
    assert load_bundle(copy).load_model() is not None

    # The same content again: the same version, nothing copied.
    again = registry.add(bundles[0].parent)
    assert not again.created and again.version == v and len(registry.versions()) == 1

    # The source changes afterwards (evaluate rewrites the temperature): v1 does not; the new content is v2.
    b = load_bundle(bundles[0])
    b.temperature = 1.5
    b.write_json()
    assert registry.intact(registry.resolve("v1")) and registry.resolve("v1").bundle_hash == v.bundle_hash
    v2 = registry.add(bundles[0]).version
    assert v2.ref == "v2" and v2.bundle_hash == bundle_hash(bundles[0]) != v.bundle_hash
    assert registry.resolve(v2.bundle_hash[:8]) == v2 and registry.resolve("2") == v2

    # Someone forces a write into the copy: the registry notices.
    target = copy / "model.json"
    target.chmod(0o644)
    target.write_text(target.read_text().replace('"temperature": 1.0', '"temperature": 9.0'))
    assert not registry.intact(registry.resolve("v1"))


def test_a_hash_prefix_of_digits_only_is_still_a_hash_prefix(tmp_path: Path, bundles: list[Path],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """'04815841' was read as version number 4815841 and refused (a real hash in a PostgreSQL run)."""
    from sightline.loop import content

    digits = "04815841" + "a" * 56
    monkeypatch.setattr(content, "bundle_hash", lambda path: digits)
    with Registry(f"sqlite:///{tmp_path / 'digits.db'}") as reg:
        v = reg.add(bundles[0]).version
        assert reg.resolve("04815841") == reg.resolve("1") == reg.resolve("v1") == v
        with pytest.raises(UserInputError, match="unknown version '0481'"):
            reg.resolve("0481")  # too short for a prefix, and no version 481


def test_promote_rollback_and_the_append_only_log(registry: Registry, bundles: list[Path]) -> None:
    refs = [registry.add(b).version.ref for b in bundles]
    assert refs == ["v1", "v2", "v3"]
    registry.promote("v1", by="ana", reason="first")
    registry.promote("v2", reason="better on production")
    registry.promote("v3", alias="challenger", by="bo")
    registry.promote("v3", reason="even better")
    assert {a: v.ref for a, v in registry.aliases().items()} == {"champion": "v3", "challenger": "v3"}

    assert registry.rollback(by="cy", reason="alert").to_ref == "v2"
    assert registry.rollback().to_ref == "v1"
    before = _state(registry)
    with pytest.raises(UserInputError, match="cannot roll back champion: it points to v1 and was never promoted"):
        registry.rollback()
    assert _state(registry) == before

    moves = [(m.alias, m.action, m.from_ref, m.to_ref, m.by, m.reason) for m in registry.history()]
    me = current_user()
    assert moves == [
        ("champion", "promote", None, "v1", "ana", "first"),
        ("champion", "promote", "v1", "v2", me, "better on production"),
        ("challenger", "promote", None, "v3", "bo", None),
        ("champion", "promote", "v2", "v3", me, "even better"),
        ("champion", "rollback", "v3", "v2", "cy", "alert"),
        ("champion", "rollback", "v2", "v1", me, None),
    ]
    assert [m.to_ref for m in registry.history("challenger")] == ["v3"]
    assert all(not m.forced and m.challenge is None for m in registry.history())

    # Promoting again after rollbacks pushes onto the stack: a rollback then returns to v1.
    registry.promote("v3")
    assert registry.rollback().to_ref == "v1"

    # The database itself refuses to rewrite history or versions.
    log, versions = f"{registry.tables['log'].name}", f"{registry.tables['versions'].name}"
    before = _state(registry)
    for statement in (f"UPDATE {log} SET reason = 'nothing happened'", f"DELETE FROM {log}",
                      f"UPDATE {versions} SET bundle_hash = 'x'", f"DELETE FROM {versions} WHERE id = 3"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), registry.engine.begin() as conn:
            conn.execute(sa.text(statement))
    assert _state(registry) == before


def _challenge(champion: str, challenger: str, promote: bool, reason: str) -> dict:
    """What sightline.loop.challenge.challenge returns, the parts the registry keeps."""
    accuracy = {"champion": 0.9, "challenger": 0.8, "difference": -0.1, "low": -0.2, "high": 0.0, "level": 0.95,
                "n_resamples": 100, "n_images": 20}
    return {"champion": {"bundle_hash": champion}, "challenger": {"bundle_hash": challenger},
            "verdict": {"promote": promote, "reasons": [reason]}, "rule": {"max_test_drop": 0.01}, "data": "/d",
            "splits": {"test": {"n_images": 20, "accuracy": accuracy, "mcnemar": {"p_value": 0.03}}}}


def test_a_failed_challenge_blocks_promotion_unless_forced(registry: Registry, bundles: list[Path]) -> None:
    v1, v2 = (registry.add(b).version for b in bundles[:2])
    registry.promote(v1.ref)
    failed = registry.record_challenge(_challenge(v1.bundle_hash, v2.bundle_hash, False, "test accuracy fell"))
    before = _state(registry)
    with pytest.raises(UserInputError, match=r"v2 failed its last challenge .*\(test accuracy fell\); nothing "
                                             r"changed\. Pass --force"):
        registry.promote(v2.ref, reason="try")
    with pytest.raises(UserInputError, match="failed its last challenge"):
        registry.add(bundles[1], alias="champion")  # the same gate when adding with an alias
    assert _state(registry) == before
    # The gate is for the champion; the challenger alias takes any version.
    assert registry.promote(v2.ref, alias="challenger").to_ref == "v2"

    forced = registry.promote(v2.ref, force=True, by="ana", reason="hotfix, accepted risk")
    assert forced.forced and forced.challenge is not None
    assert (forced.challenge["id"], forced.challenge["promote"], forced.challenge["reasons"]) == (
        failed, False, ["test accuracy fell"])
    assert registry.history()[-1] == forced

    # A later passing challenge is the one that counts: no --force needed, and the log is not "forced".
    registry.rollback()
    passed = registry.record_challenge(_challenge(v1.bundle_hash, v2.bundle_hash, True, "better on production"))
    move = registry.promote(v2.ref)
    assert not move.forced and move.challenge is not None and move.challenge["id"] == passed
    assert registry.last_challenge(v2.bundle_hash)["summary"]["splits"]["test"]["mcnemar_p"] == 0.03


def test_bad_input_is_one_line_and_changes_nothing(registry: Registry, bundles: list[Path]) -> None:
    registry.add(bundles[0])
    registry.promote("v1")
    before = _state(registry)
    cases = [
        (lambda: registry.promote("v42"), r"unknown version 'v42' \(registered: v1\)"),
        (lambda: registry.promote("nonsense"), "unknown version 'nonsense'"),
        (lambda: registry.promote("v" + "9" * 23), "unknown version 'v9999"),  # overflowed the driver before
        (lambda: registry.resolve(f"v{2**31}"), f"unknown version 'v{2**31}'"),  # PostgreSQL's id column: 32-bit
        (lambda: registry.promote(str(2**63 - 2)), f"unknown version '{2**63 - 2}'"),
        (lambda: registry.promote("v\u00b2"), "unknown version 'v\u00b2'"),  # a digit to isdigit, not to int
        (lambda: registry.resolve("challenger"), "alias 'challenger' points to no version yet"),
        (lambda: registry.promote("v1", alias="production"), "unknown alias 'production'; use champion or challenger"),
        (lambda: registry.rollback(alias="prod"), "unknown alias 'prod'"),
        (lambda: registry.history("prod"), "unknown alias 'prod'"),
        (lambda: registry.promote("v1"), "v1 is already the champion; nothing changed"),
        (lambda: registry.rollback(alias="challenger"), "cannot roll back challenger: it is not set"),
        (lambda: registry.add(bundles[1], alias="prod"), "unknown alias 'prod'"),
    ]
    for call, message in cases:
        with pytest.raises(UserInputError, match=message) as info:
            call()
        assert "\n" not in str(info.value)
    assert _state(registry) == before
    assert sorted(p.name for p in registry.root.iterdir()) == [registry.resolve("v1").bundle_hash]


def test_a_version_whose_files_are_gone_is_not_promoted_until_added_again(registry: Registry,
                                                                          bundles: list[Path]) -> None:
    """Promoting a version whose copy was deleted succeeded: the service then kept its old model (or, restarted,
    did not start). Refused now, rollback too; adding the same bundle again restores the copy."""
    import shutil

    registry.add(bundles[0], alias="champion")
    v2 = registry.add(bundles[1]).version
    copy = Path(v2.path)
    copy.chmod(0o755)
    shutil.rmtree(copy)
    before = _state(registry)
    with pytest.raises(UserInputError, match=r"v2's files at .* are missing or changed; nothing changed") as info:
        registry.promote("v2")
    assert "\n" not in str(info.value) and _state(registry) == before

    again = registry.add(bundles[1])
    assert not again.created and again.restored and registry.intact(v2)  # before: "already registered", no more
    assert not registry.add(bundles[1]).restored
    registry.promote("v2")
    v1 = registry.resolve("v1")
    Path(v1.path).chmod(0o755)
    (Path(v1.path) / "model.json").chmod(0o644)
    (Path(v1.path) / "model.json").write_text("{}")
    before = _state(registry)
    with pytest.raises(UserInputError, match="v1's files at .* are missing or changed"):
        registry.rollback()
    assert _state(registry) == before


def test_replacing_a_damaged_copy_leaves_what_its_links_point_to_alone(tmp_path: Path, registry: Registry,
                                                                      bundles: list[Path]) -> None:
    """A copy someone changed is replaced when the bundle is added again; the files in it were made owner-only
    first with a chmod that follows symlinks, so a link put there changed the mode of its target elsewhere, and a
    folder put there lost its execute bit (for a non-root owner, the copy could then not be removed)."""
    v1 = registry.add(bundles[0]).version
    copy = Path(v1.path)
    copy.chmod(0o755)
    outside = tmp_path / "shared.txt"
    outside.write_text("not the registry's")
    outside.chmod(0o644)
    os.symlink(outside, copy / "notes.txt")
    (copy / "extra").mkdir()
    (copy / "extra" / "x").write_text("x")
    (copy / "model.json").chmod(0o644)
    (copy / "model.json").write_text("{}")
    assert not registry.intact(v1)
    assert registry.add(bundles[0]).restored and registry.intact(v1)
    assert stat.S_IMODE(outside.stat().st_mode) == 0o644 and outside.read_text() == "not the registry's"
    assert not (copy / "extra").exists() and not (copy / "notes.txt").is_symlink()


def test_fields_wider_than_their_columns_are_refused_before_anything_is_copied(registry: Registry,
                                                                              tmp_path: Path) -> None:
    """A model.json name over 200 characters, or --by over 200: PostgreSQL refused the row with a DataError
    traceback (after the bundle was copied); now one line, and nothing copied or recorded."""
    long_name = _bundle(tmp_path / "long" / "bundle", seed=0, name="n" * 201)
    with pytest.raises(UserInputError, match=r"model.json name is 201 characters long; the registry keeps at most 200"):
        registry.add(long_name)
    with pytest.raises(UserInputError, match="--by is 300 characters long"):
        registry.add(_bundle(tmp_path / "ok" / "bundle", seed=1), by="b" * 300)
    assert registry.versions() == [] and not (registry.root.exists() and any(registry.root.iterdir()))
    registry.add(tmp_path / "ok" / "bundle", alias="champion")
    with pytest.raises(UserInputError, match="--by is 300 characters long"):
        registry.promote("v1", alias="challenger", by="b" * 300)
    assert registry.history() and len(registry.history()) == 1


def test_cli_on_sqlite(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                       bundles: list[Path]) -> None:
    db = f"sqlite:///{tmp_path / 'sightline.db'}"

    def cli(*args: str) -> tuple[int, str, str]:
        code = run_command(app, ["registry", *args, "--database", db])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = cli("add", str(bundles[0]), "--alias", "champion", "--by", "[b]ana", "--reason", "first")
    assert code == 0 and "registered: v1" in out and "champion: (unset) -> v1" in out
    assert cli("add", str(bundles[1]))[0] == 0
    code, out, _ = cli("promote", "v2", "--reason", "wins on production", "--json")
    assert code == 0 and json.loads(out)["to_ref"] == "v2"
    code, out, _ = cli("list", "--json")
    assert [(v["ref"], v["aliases"]) for v in json.loads(out)] == [("v1", []), ("v2", ["champion"])]
    code, out, _ = cli("show", "champion", "--json")
    assert json.loads(out)["ref"] == "v2" and json.loads(out)["intact"] is True
    # --by and --reason are the user's text, printed through rich: "[/x]" was a MarkupError traceback (exit 1) after
    # the move was recorded, "[red]" vanished from the line
    code, out, err = cli("rollback", "--reason", "drift alert [/x]", "--by", "[red]ana")
    assert code == 0 and "by [red]ana: drift alert [/x]" in out, err
    code, out, _ = cli("history")
    assert "by [red]ana: drift alert [/x]" in out
    code, out, _ = cli("list")  # a table cell is markup too
    assert code == 0 and "[b]ana" in out
    code, out, _ = cli("history", "--json")
    assert [(m["action"], m["to_ref"], m["reason"]) for m in json.loads(out)] == [
        ("promote", "v1", "first"), ("promote", "v2", "wins on production"), ("rollback", "v1", "drift alert [/x]")]

    for args, message in ((("promote", "v9"), "unknown version 'v9'"), (("rollback",), "cannot roll back"),
                          (("promote", "v1", "--alias", "prod"), "unknown alias 'prod'"),
                          (("show", "v0"), "unknown version 'v0'")):
        code, out, err = cli(*args)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and message in err
    assert len(json.loads(cli("history", "--json")[1])) == 3

    monkeypatch.delenv("SIGHTLINE_DATABASE_URL", raising=False)
    assert run_command(app, ["registry", "list"]) == 2
    assert "no database: pass --database URL" in capsys.readouterr().err


def test_add_refuses_a_bundle_whose_version_is_not_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`"version": 3` in a hand-edited model.json was registered; the service it was promoted to then refused it."""
    folder = _bundle(tmp_path / "b", seed=0)
    meta = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**meta, "version": 3}))
    code = run_command(app, ["registry", "add", str(folder), "--database", f"sqlite:///{tmp_path / 'db.sqlite'}"])
    err = capsys.readouterr().err
    assert code == 2 and "model.json: version=3 must be non-empty text" in " ".join(err.split())
    assert "Traceback" not in err


def test_cli_warns_when_an_alias_moves_to_a_version_a_server_cannot_load(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str],
                                                                         bundles: list[Path]) -> None:
    # a retrained bundle registered before `sightline export`: the server following champion keeps the old model
    # (no model.onnx) while `registry show champion` names the new one; before, the promotion said nothing
    db = f"sqlite:///{tmp_path / 'sightline.db'}"
    (bundles[0] / "model.onnx").write_bytes(_tiny_onnx())  # only its presence matters here
    assert run_command(app, ["registry", "add", str(bundles[0]), "--alias", "champion", "--database", db]) == 0
    assert "warning" not in capsys.readouterr().err
    assert run_command(app, ["registry", "add", str(bundles[1]), "--database", db]) == 0
    assert run_command(app, ["registry", "promote", "v2", "--database", db]) == 0
    out, err = capsys.readouterr()
    assert "champion promote v1 -> v2" in out
    assert "warning: v2 has no model.onnx" in err and "keeps serving v1" in err and "sightline export" in err
    (bundles[2] / "model.onnx").write_bytes(_tiny_onnx())
    assert run_command(app, ["registry", "add", str(bundles[2]), "--alias", "champion", "--database", db]) == 0
    assert "warning" not in capsys.readouterr().err
    # the rollback meant to take v3 off the air leaves it serving
    assert run_command(app, ["registry", "rollback", "--database", db]) == 0
    err = capsys.readouterr().err
    assert "warning: v2 has no model.onnx" in err and "keeps serving v3" in err


def test_an_alias_does_not_move_to_a_version_with_other_classes(registry: Registry, bundles: list[Path],
                                                                tmp_path: Path) -> None:
    # before: a server following champion hot-swapped from dark/light to dark/bright without a word
    torch.manual_seed(5)
    other = tmp_path / "other" / "bundle"
    Bundle("test_efficientnet", ["dark", "bright"], Preprocessing(32), dataset_version="other").save(
        other, create_model("test_efficientnet", 2, weights="none").state_dict())
    registry.add(bundles[0], alias="champion")
    before = _state(registry)
    with pytest.raises(UserInputError, match=r"classes \['dark', 'bright'\], the champion v1 has"):
        registry.add(other, alias="champion")
    assert _state(registry) == before  # refused before anything was copied
    v2 = registry.add(other).version
    with pytest.raises(UserInputError, match="would answer with other labels; nothing changed"):
        registry.promote(v2.ref)
    assert registry.aliases()["champion"].ref == "v1"
    assert registry.promote(v2.ref, force=True).to_ref == v2.ref
    # the same classes in another order are the same classes
    registry.promote("v1", force=True)
    swapped = tmp_path / "swapped" / "bundle"
    Bundle("test_efficientnet", ["light", "dark"], Preprocessing(32), dataset_version="swapped").save(
        swapped, create_model("test_efficientnet", 2, weights="none").state_dict())
    assert registry.add(swapped, alias="champion").move is not None


def test_a_registry_folder_moved_with_its_database_serves_its_own_copies(tmp_path: Path, bundles: list[Path]) -> None:
    # the rows keep the absolute path a copy had when added; after `mv state elsewhere` every version read as
    # "missing or changed" (promote, rollback and `serve --registry` refused), and after a copy (`cp -a`) the new
    # registry silently served the old folder's files
    (tmp_path / "state").mkdir()
    with Registry(f"sqlite:///{tmp_path / 'state' / 'sightline.db'}") as reg:
        reg.add(bundles[0], alias="champion")
        reg.add(bundles[1])
    (tmp_path / "state").rename(tmp_path / "moved")
    with Registry(f"sqlite:///{tmp_path / 'moved' / 'sightline.db'}") as reg:
        champion = reg.resolve("champion")
        assert Path(champion.path).parent == tmp_path / "moved" / "registry"
        assert reg.intact(champion) and [Path(v.path).parent for v in reg.versions()] == [reg.root] * 2
        assert reg.promote("v2").to_ref == "v2" and reg.rollback().to_ref == "v1"


@pytest.mark.parametrize("damage", ["weights", "onnx"])
def test_a_bundle_with_damaged_files_is_not_registered(tmp_path: Path, bundles: list[Path], damage: str) -> None:
    # a truncated copy was registered as an immutable version (and made champion), which no server could load and
    # `challenge` / `retrain` refused; refused now, before anything is copied
    bundle = tmp_path / "damaged"
    shutil.copytree(bundles[0], bundle)
    if damage == "weights":
        data = (bundle / "weights.safetensors").read_bytes()
        (bundle / "weights.safetensors").write_bytes(data[: len(data) // 2])
    else:
        (bundle / "model.onnx").write_bytes(_tiny_onnx()[:-5])  # a graph cut short
    (tmp_path / "state").mkdir()
    with Registry(f"sqlite:///{tmp_path / 'state' / 'sightline.db'}") as reg:
        with pytest.raises(UserInputError, match="is damaged .* Nothing was added"):
            reg.add(bundle, alias="champion")
        assert reg.versions() == [] and not (tmp_path / "state" / "registry").exists()


def test_serve_refuses_a_champion_whose_copy_changed(tmp_path: Path, bundles: list[Path],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    # a registry copy changed after it was added (files made writable and replaced): `serve --registry` served the
    # changed files while /readyz and every answer named the registered version and hash
    (tmp_path / "state").mkdir()
    db = f"sqlite:///{tmp_path / 'state' / 'sightline.db'}"
    with Registry(db) as reg:
        copy = Path(reg.add(bundles[0], alias="champion").version.path)
    (copy / "model.json").chmod(stat.S_IRUSR | stat.S_IWUSR)
    meta = json.loads((copy / "model.json").read_text())
    (copy / "model.json").write_text(json.dumps({**meta, "temperature": 5.0}))
    assert run_command(app, ["serve", "--registry", str(tmp_path / "state" / "registry"), "--database", db]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "champion is v1, whose files at" in err and "missing or changed" in err, err


def test_cli_warns_when_the_new_version_lacks_the_int8_graph_the_old_one_had(tmp_path: Path, bundles: list[Path],
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    # a server run with --int8 refuses a version without model.int8.onnx and keeps the old model, while the
    # registry names the new one; the promotion said nothing since model.onnx was there
    db = f"sqlite:///{tmp_path / 'sightline.db'}"
    for b in bundles:
        (b / "model.onnx").write_bytes(_tiny_onnx())
    (bundles[0] / "model.int8.onnx").write_bytes(_tiny_onnx())
    assert run_command(app, ["registry", "add", str(bundles[0]), "--alias", "champion", "--database", db]) == 0
    assert run_command(app, ["registry", "add", str(bundles[1]), "--alias", "champion", "--database", db]) == 0
    err = capsys.readouterr().err
    assert "warning: v2 has no model.int8.onnx (which v1 has)" in err and "keeps serving v1" in err, err
    assert "sightline export --int8" in err
    assert run_command(app, ["registry", "add", str(bundles[2]), "--alias", "champion", "--database", db]) == 0
    assert "warning" not in capsys.readouterr().err  # v2 had none either: no --int8 server to speak of
