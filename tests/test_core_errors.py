"""validation_message / validation_error: one line per pydantic ValidationError, naming source, field path, value
and what is expected, for any model (nested models, dict values, list items, aliases, Optional fields)."""
from __future__ import annotations

import re
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sightline.errors import SpecError, UserInputError, validation_error, validation_message


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_by_name=True, validate_by_alias=True)


class Leaf(_Strict):
    name: str
    class_name: str | None = Field(None, alias="class")
    share: Annotated[float, Field(ge=0, le=1)] = 0.5

    @model_validator(mode="after")
    def _named(self) -> Leaf:
        if self.name == "?":
            raise ValueError("give the leaf a real name")
        return self


class Root(_Strict):
    count: int | None = None
    size: Annotated[int, Field(ge=16)] | Literal["auto"] | None = "auto"
    leaves: list[Leaf] = []
    by_name: dict[str, Leaf] = {}


def _message(data: object, **kw: object) -> str:
    with pytest.raises(ValidationError) as info:
        Root.model_validate(data)
    return validation_message(info.value, where="f.yaml", model=Root, **kw)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"count": "many"}, "f.yaml: count='many' must be a whole number or null."),
        ({"leaves": [{"name": "a"}, {"name": "b", "share": 1.5}]}, "f.yaml: leaves[1].share=1.5 must be <= 1."),
        ({"by_name": {"x": {"name": "a", "share": -1}}}, "f.yaml: by_name.x.share=-1 must be >= 0."),
        ({"leaves": [{}]}, "f.yaml: leaves[0].name is missing; add it."),
        ({"leaves": [{"name": "?"}]}, "f.yaml: leaves[0]: give the leaf a real name."),
        ({"leaves": [{"name": "a", "clas": "c"}]}, "f.yaml: leaves[0].clas is an unknown key; did you mean 'class'?"),
        ({"cont": 1}, "f.yaml: cont is an unknown key; did you mean 'count'?"),
        ({"zzz": 1}, "f.yaml: zzz is an unknown key; known keys: count, size, leaves, by_name."),
        # a union reads as one field, not one error per branch
        ({"size": "big"}, "f.yaml: size='big' must be a whole number or 'auto' or null."),
        ({"size": 8}, "f.yaml: size=8 must be >= 16 or 'auto' or null."),
        ({"by_name": {"x": 3}}, "f.yaml: by_name.x=3 must be a mapping of key: value."),
        ({"leaves": {"a": 1}}, "f.yaml: leaves must be a list."),
        ("text", "f.yaml: value='text' must be a mapping of key: value."),
    ],
)
def test_message_names_field_path_value_and_expectation(data: object, expected: str) -> None:
    assert _message(data) == expected


def test_many_errors_stay_on_one_line_and_are_counted() -> None:
    bad = {"count": "x\ny", "leaves": [{"share": 2}, {"share": 3}, {"share": 4}]}
    text = _message(bad, hint="see the template")
    assert "\n" not in text and text.startswith("f.yaml: count='x\\ny' must be a whole number or null; ")
    assert re.search(r"; and \d more; see the template\.$", text)


def test_long_values_are_shortened() -> None:
    text = _message({"count": "x" * 200})
    assert "..." in text and len(text) < 120


def test_validation_error_is_the_requested_sightline_error() -> None:
    with pytest.raises(ValidationError) as info:
        Root.model_validate({"count": "x"})
    exc = validation_error(info.value, where="f.yaml", cls=SpecError, model=Root)
    assert isinstance(exc, SpecError) and str(exc) == "f.yaml: count='x' must be a whole number or null."
    assert isinstance(validation_error(info.value, where="options"), UserInputError)


def test_one_line_names_a_file_whose_name_holds_a_line_break() -> None:
    from sightline.errors import one_line

    # our own message quotes the name exactly, its line break shown as \n (the name's tail alone named nothing)
    assert one_line(UserInputError("cannot read /d/bad\nname.jpg: not an image")) == \
        "cannot read /d/bad\\nname.jpg: not an image"
    # a library's several lines are joined, none dropped
    assert one_line(OSError("connection failed: refused\n\tIs the server running?")) == \
        "connection failed: refused Is the server running?"
    # a DataLoader worker's re-raise: the cause is the traceback's last line
    worker = RuntimeError("Caught RuntimeError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                          "call last):\n  File \"x.py\", line 1\nbuiltins.RuntimeError: cannot decode a.jpg")
    assert one_line(worker) == "cannot decode a.jpg"
