"""A small exception tree. The CLI turns every `SightlineError` into one line and exit code 2; the API turns
them into 4xx answers (see `status_code`). Raise where the bad value enters, name it, say what to do."""
from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "SightlineError",
    "UserInputError",
    "ImageError",
    "NotAnImageError",
    "ImageTooLargeError",
    "CorruptImageError",
    "DatasetError",
    "ModelError",
    "BundleError",
    "SpecError",
    "one_line",
    "validation_message",
    "validation_error",
]


class SightlineError(Exception):
    """Base of every error a user can cause and fix. `status_code` is the HTTP status the API answers with."""

    status_code: int = 400


class UserInputError(SightlineError):
    """A bad argument, option or path given by the user."""


class ImageError(SightlineError):
    """An input file that cannot be used as an image."""

    status_code = 422


class NotAnImageError(ImageError):
    """The content is not one of the supported formats (JPEG, PNG, BMP, TIFF, WebP)."""

    status_code = 415


class ImageTooLargeError(ImageError):
    """The image header announces more pixels than the configured cap (decompression-bomb guard)."""

    status_code = 413


class CorruptImageError(ImageError):
    """A supported format whose data is truncated or corrupt."""

    status_code = 422


class DatasetError(SightlineError):
    """A dataset folder that does not follow the layout in DESIGN.md (missing, empty, one class, ...)."""


class ModelError(SightlineError):
    """An unknown architecture, weights that do not fit, or weights that cannot be found."""


class BundleError(SightlineError):
    """A bundle folder that is missing files or whose model.json is invalid."""


class SpecError(SightlineError):
    """An invalid problem definition (sightline.yaml)."""


def one_line(exc: BaseException) -> str:
    """The cause of an error in one line. A DataLoader worker re-raises our errors with the worker's traceback
    in the message ("Caught X in DataLoader worker ... Original Traceback ..."); its last line is the cause. Any
    other message keeps all of its text: ours with line breaks shown as \\n (they come from a name we quote: a
    file named with a line break is still named exactly), a library's lines joined by spaces (psycopg's
    "connection failed: ..." then "Is the server running ...?")."""
    text = str(exc)
    if "Traceback (most recent call last)" not in text:
        if isinstance(exc, SightlineError):
            return text.strip().replace("\r", "\\r").replace("\n", "\\n") or type(exc).__name__
        return " ".join(line.strip() for line in text.splitlines() if line.strip()) or type(exc).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    last = lines[-1]
    prefix = f"{type(exc).__module__}.{type(exc).__name__}: "
    return last[len(prefix):] if last.startswith(prefix) else last


# pydantic error types -> what is expected, in the words of our other messages ("must be ...").
_EXPECTED = {
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be text",
    "dict_type": "must be a mapping of key: value",
    "model_type": "must be a mapping of key: value",
    "model_attributes_type": "must be a mapping of key: value",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "missing": "is missing; add it",
}
_TYPE_ERRORS = {k for k in _EXPECTED if k.endswith(("_type", "_parsing", "_from_float"))} - {"model_type"}
_BOUNDS = {"greater_than_equal": ("ge", ">="), "greater_than": ("gt", ">"), "less_than_equal": ("le", "<="),
           "less_than": ("lt", "<")}
_MAX_SHOWN = 3  # errors spelled out in one message; the rest are counted


def validation_message(exc: Any, *, where: str, model: type | None = None, hint: str = "") -> str:
    """One line for a pydantic `ValidationError`: the file (or what was being read), the field path, the bad value
    and what is expected, e.g. ``sightline.yaml: targets[0].min=1.5 must be <= 1``.

    `where` names the source ("RUN/config.yaml", "sightline.yaml", "training config"). `model` (the pydantic model
    that was validated) lets an unknown key name the closest known one, an `X | None` field say "or null", and the
    branches of a union (`int | Literal["auto"]`) read as one field ("must be a whole number or 'auto'"). `hint` is
    appended after "; " (what to do when "must be ..." does not say it). Up to three errors are spelled out; the
    rest are counted."""
    found = [_Found.of(err, model) for err in exc.errors(include_url=False)]
    merged: list[_Found] = []
    for item in found:  # pydantic reports each branch of a union on its own; say them as one field
        if merged and item.branch and merged[-1].branch and merged[-1].path == item.path:
            merged[-1].problem += " or " + item.problem.removeprefix("must be ")
        else:
            merged.append(item)
    parts = [item.text() for item in merged[:_MAX_SHOWN]]
    if len(merged) > _MAX_SHOWN:
        parts.append(f"and {len(merged) - _MAX_SHOWN} more")
    text = f"{where}: {'; '.join(parts)}"
    if hint:
        text += f"; {hint}"
    text = " ".join(text.split())  # one line, whatever the values held
    return text if text.endswith((".", "?", "!")) else text + "."


def validation_error(exc: Any, *, where: str, cls: type[SightlineError] = UserInputError, model: type | None = None,
                     hint: str = "") -> SightlineError:
    """The SightlineError (`cls`) to raise for a pydantic `ValidationError`, with `validation_message`'s line:
    ``raise validation_error(exc, where=str(path), cls=SpecError, model=ProblemSpec) from None``."""
    return cls(validation_message(exc, where=where, model=model, hint=hint))


class _Found:
    """One pydantic error, in our words: where (`path`), the value given, and what it must be (`problem`)."""

    def __init__(self, path: str, value: Any, problem: str, kind: str, *, branch: bool, nullable: bool) -> None:
        self.path, self.value, self.problem, self.kind = path, value, problem, kind
        self.branch = branch  # one branch of a union field
        self.nullable = nullable  # the field also takes None

    @classmethod
    def of(cls, err: Mapping[str, Any], model: type | None) -> _Found:
        loc, branch = _without_branch_tags(model, tuple(err.get("loc", ())))
        path = _path(loc)
        kind = str(err.get("type", ""))
        value = err.get("input")
        ctx = err.get("ctx") or {}
        if kind == "extra_forbidden":
            key = str(loc[-1]) if loc else "?"
            known = _known_keys(model, loc[:-1])
            close = _closest(key, known)
            if close:
                problem = f"is an unknown key; did you mean '{close}'?"
            else:
                problem = "is an unknown key" + (f"; known keys: {', '.join(known)}" if known else "")
        elif kind in _BOUNDS:
            name, sign = _BOUNDS[kind]
            bound = ctx.get(name)
            problem = f"must be {sign} {bound:g}" if isinstance(bound, float) else f"must be {sign} {bound}"
        elif kind == "literal_error":
            problem = f"must be {ctx.get('expected')}"
        elif kind in ("value_error", "assertion_error") and "error" in ctx:
            problem = str(ctx["error"])
        elif kind in _EXPECTED:
            problem = _EXPECTED[kind]
        else:  # pydantic's own words, in ours: "Input should be a valid date" -> "must be a valid date"
            msg = str(err.get("msg", kind))
            problem = msg.replace("Input should be", "must be", 1).removeprefix("Value error, ")
        return cls(path, value, problem, kind, branch=branch, nullable=_nullable(model, loc))

    def text(self) -> str:
        problem = self.problem
        if self.nullable and (self.branch or self.kind in _TYPE_ERRORS):
            problem += " or null"
        if self.kind == "extra_forbidden":
            return f"{self.path} {problem}"
        if self.kind == "missing" or not _is_scalar(self.value):  # a whole mapping as the "value" says nothing
            if not self.path:
                return problem
            said = self.kind in ("value_error", "assertion_error")  # a sentence about the whole part
            return f"{self.path}: {problem}" if said else f"{self.path} {problem}"
        return f"{self.path or 'value'}={_show(self.value)} {problem}"


def _without_branch_tags(model: type | None, loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], bool]:
    """`loc` without the names pydantic gives the branches of a union ('input_size', 'constrained-int') and
    whether it had one. Needs `model` to know where a union is."""
    kind: Any = model
    out: list[Any] = []
    branch = False
    for part in loc:
        if kind is not None and len(_branches(kind)) > 1:
            branch, kind = True, None  # this part names the branch; the path goes on inside it, untyped
            continue
        out.append(part)
        kind = _kind_at(kind, (part,)) if kind is not None else None
    return tuple(out), branch


def _branches(kind: Any) -> list[Any]:
    """The non-None members of a union type (after `Annotated`); [] when `kind` is not a union."""
    while typing.get_origin(kind) is typing.Annotated:
        kind = typing.get_args(kind)[0]
    if typing.get_origin(kind) not in (typing.Union, types.UnionType):
        return []
    return [a for a in typing.get_args(kind) if a is not type(None)]


def _path(loc: Sequence[Any]) -> str:
    """('targets', 0, 'min') -> 'targets[0].min'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _show(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _closest(key: str, known: list[str]) -> str | None:
    """The known name the user most likely meant: one that starts with what they wrote, else the nearest spelling."""
    starts = [k for k in known if k.startswith(key) or key.startswith(k + "_")]
    if starts:
        return starts[0]
    near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return near[0] if near else None


def _known_keys(model: type | None, loc: Sequence[Any]) -> list[str]:
    """The keys (aliases where set) of the pydantic model found at `loc` inside `model`; [] when not a model."""
    fields = getattr(_unwrap(_kind_at(model, loc)), "model_fields", None)
    return [f.alias or name for name, f in fields.items()] if isinstance(fields, dict) else []


def _nullable(model: type | None, loc: Sequence[Any]) -> bool:
    """Whether the field at `loc` inside `model` also takes None (`X | None`)."""
    kind = _kind_at(model, loc)
    while typing.get_origin(kind) is typing.Annotated:
        kind = typing.get_args(kind)[0]
    return typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in typing.get_args(kind)


def _kind_at(model: type | None, loc: Sequence[Any]) -> Any:
    """The declared type at `loc` (field names, dict keys, list indexes) inside the pydantic `model`; None when
    the path leaves what can be followed (unions of several types, unknown keys)."""
    kind: Any = model
    for part in loc:
        kind = _unwrap(kind)
        fields = getattr(kind, "model_fields", None)
        origin = typing.get_origin(kind)
        if isinstance(fields, dict):
            found = [f for name, f in fields.items() if (f.alias or name) == part]
            if not found:
                return None
            kind = found[0].annotation
        elif isinstance(origin, type) and issubclass(origin, (Mapping, Sequence)):
            args = [a for a in typing.get_args(kind) if a is not Ellipsis]
            if not args:
                return None
            kind = args[-1] if issubclass(origin, Mapping) else args[0]
        else:
            return None
    return kind


def _unwrap(kind: Any) -> Any:
    """`Annotated[X, ...]` -> X; `X | None` -> X."""
    while True:
        if typing.get_origin(kind) is typing.Annotated:
            kind = typing.get_args(kind)[0]
            continue
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if typing.get_origin(kind) in (typing.Union, types.UnionType) and len(args) == 1:
            kind = args[0]
            continue
        return kind
