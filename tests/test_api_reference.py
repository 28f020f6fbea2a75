"""The API reference pages document every public parameter with the code's defaults.

docs/api.md (protector) and docs/runtime.md (runtime) promise a reference of every public
parameter. These tests read the code's signatures with :func:`inspect.signature` and check each
page's section for them:

- every named parameter of every public method has an entry: a row of the section's parameter
  table when it has one, else a mention in a code span of the section (``name(param, ...)`` or
  `` `param` ``);
- every public method of the documented classes is in ENTRIES (or UNDOCUMENTED, with the
  reason), so a new method or parameter cannot ship undocumented;
- every name the packages export, every ExportFormat/ExportPlatform value and every protector
  error is named in its page;
- where the page states a default (a ``param=default`` in the heading's signature, or the
  default column of the table), it equals the code's default;
- a heading written as a full signature lists the code's parameters in the code's order, with
  ``*`` where the keyword-only ones start.
"""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import skprotect_pytorch
import skruntime
from skprotect_pytorch import Customer, ExportFormat, ExportPlatform
from skprotect_pytorch import errors as protect_errors
from skprotect_pytorch.protect import SkProtectorPyTorch
from skprotect_pytorch.quantization import quantize_original_onnx, quantize_protected_onnx
from skruntime import BackendOptions, LoadedModel, SkRuntime

DOCS = Path(__file__).resolve().parents[1] / "docs"
EMPTY = inspect.Parameter.empty
_DAY = 24 * 3600

# Defaults the pages state in words rather than as Python: the phrase and a check of the code's
# default. A new phrase must be added here, so that every stated default is checked.
PROSE_DEFAULTS: dict[str, Callable[[Any], bool]] = {
    "every supported layer": lambda f: callable(f) and f("fc", None) is True,
    "framework default": lambda d: d is None,
    "30 days": lambda d: d == 30 * _DAY,
    "1 day": lambda d: d == _DAY,
}

# Names the default expressions of the pages may use.
NAMESPACE: dict[str, Any] = {
    "Customer": Customer,
    "ExportFormat": ExportFormat,
    "ExportPlatform": ExportPlatform,
    **{f.name: f for f in ExportFormat},
}

# Public methods that are deliberately not in the reference, with the reason.
UNDOCUMENTED = {
    (SkProtectorPyTorch, "protect"): "removed in v0.1.0; migration.md names its replacement",
}


@dataclass(frozen=True)
class Entry:
    """Where one public callable is documented: the page and the start of its section's
    heading. ``name`` is empty when the heading is the callable's own signature (and the
    section's parameter table is its own); else it is the name under which the section of
    another callable describes it, e.g. ``formats`` in the section of ``SkRuntime(...)``."""

    obj: Callable[..., Any]
    page: str
    heading: str
    name: str = ""


ENTRIES: list[Entry] = [
    Entry(SkProtectorPyTorch, "api.md", "`SkProtectorPyTorch("),
    Entry(SkProtectorPyTorch.config_path, "api.md", "`SkProtectorPyTorch(", "config_path"),
    Entry(SkProtectorPyTorch.protect_new_model, "api.md", "`protect_new_model("),
    Entry(SkProtectorPyTorch.protect_updated_model, "api.md", "`protect_new_model("),
    Entry(SkProtectorPyTorch.migrate_configuration, "api.md", "`migrate_configuration("),
    Entry(SkProtectorPyTorch.update_customer, "api.md", "`update_customer("),
    Entry(Customer, "api.md", "`Customer("),
    Entry(Customer.to_dict, "api.md", "`Customer(", "to_dict"),
    Entry(quantize_protected_onnx, "api.md", "`quantize_protected_onnx("),
    Entry(quantize_original_onnx, "api.md", "`quantize_protected_onnx("),
    Entry(SkRuntime, "runtime.md", "`SkRuntime("),
    Entry(SkRuntime.models, "runtime.md", "`SkRuntime(", "models"),
    Entry(SkRuntime.formats, "runtime.md", "`SkRuntime(", "formats"),
    Entry(SkRuntime.close, "runtime.md", "`SkRuntime(", "close"),
    Entry(SkRuntime.load, "runtime.md", "`rt.load("),
    Entry(BackendOptions, "runtime.md", "`rt.load(", "BackendOptions"),
    Entry(LoadedModel.run, "runtime.md", "`LoadedModel`", "run"),
    Entry(LoadedModel.close, "runtime.md", "`LoadedModel`", "close"),
    Entry(LoadedModel.expected_inputs, "runtime.md", "`LoadedModel`", "expected_inputs"),
]


def public_methods(cls: type) -> list[str]:
    """The public methods a class defines itself (not properties, not inherited ones)."""
    return [
        name
        for name, value in vars(cls).items()
        if not name.startswith("_") and inspect.isfunction(value)
    ]


def params(obj: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    """The parameters a caller names: not ``self``, not ``*args`` or ``**kwargs``."""
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return {
        name: p
        for name, p in inspect.signature(obj).parameters.items()
        if name != "self" and p.kind not in variadic
    }


def section(page: str, heading: str) -> tuple[str, str]:
    """The heading text and body of the section whose heading starts with ``heading``, up to
    the next heading of the same or a higher level (code blocks are not headings)."""
    lines = (DOCS / page).read_text().splitlines()
    in_code, found, level, body = False, None, 0, []
    for line in lines:
        if line.startswith("```"):
            in_code = not in_code
        match = None if in_code else re.match(r"(#+) (.*)", line)
        if found is None:
            if match and match.group(2).startswith(heading):
                found, level = match.group(2), len(match.group(1))
            continue
        if match and len(match.group(1)) <= level:
            break
        body.append(line)
    assert found is not None, f"docs/{page} has no section whose heading starts with {heading}"
    return found, "\n".join(body)


def cells(row: str) -> list[str]:
    """A markdown table row's cells; ``\\|`` is a pipe inside a cell."""
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", row.strip())[1:-1]]


def parameter_table(body: str) -> dict[str, list[str]]:
    """Rows of the section's own table headed ``| parameter | ...``: each parameter named in a
    row's first cell (`` `a`, `b` ``) → the row's other cells. Empty when there is none."""
    rows: dict[str, list[str]] = {}
    in_table = False
    for line in body.splitlines():
        if not line.startswith("|"):
            in_table = False
            continue
        row = cells(line)
        if row and row[0] == "parameter":
            in_table = True
        elif in_table and not set(row[0]) <= set("-: "):
            for name in re.findall(r"`(\w+)`", row[0]):
                rows[name] = row[1:]
    return rows


def code_spans(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", text)


def split_top(text: str) -> list[str]:
    """``text`` split at the commas outside brackets and quotes."""
    parts, depth, quote, current = [], 0, "", ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        current += char
    return [p for p in [*parts, current.strip()] if p]


def heading_signature(heading: str) -> list[tuple[str, str | None]] | None:
    """``[(name, default text or None), ...]`` (``*`` kept as a name) of a heading written as a
    full signature such as `` `f(a, *, b=1)` ``; None for `` `f(...)` `` or no signature."""
    match = re.match(r"`[\w.]+\(([^`]*)\)`", heading)
    if not match or match.group(1) == "...":
        return None
    out: list[tuple[str, str | None]] = []
    for part in split_top(match.group(1)):
        name, eq, default = part.partition("=")
        out.append((name.strip(), default.strip() if eq else None))
    return out


def evaluate(text: str) -> Any:
    """A default written in a page: a literal, a name of :data:`NAMESPACE`, an attribute, a
    call with literal arguments, or ``a | b``. Raises ``ValueError`` for anything else."""

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.List | ast.Tuple):
            return type(ast.literal_eval(node))(value(e) for e in node.elts)
        if isinstance(node, ast.Dict):
            return {value(k): value(v) for k, v in zip(node.keys, node.values, strict=True)}
        if isinstance(node, ast.Name) and node.id in NAMESPACE:
            return NAMESPACE[node.id]
        if isinstance(node, ast.Attribute):
            return getattr(value(node.value), node.attr)
        if isinstance(node, ast.Call) and not node.keywords:
            return value(node.func)(*map(value, node.args))
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            return value(node.left) | value(node.right)
        raise ValueError(f"cannot evaluate {ast.unparse(node)!r}")

    return value(ast.parse(text, mode="eval").body)


def default_problem(name: str, stated: str, code_default: Any) -> str | None:
    """What is wrong with a default the page states for ``name``, or None when it is right.

    ``stated`` is a table cell or a heading's ``=default``: "required" (then the code has no
    default, or the cell names it: "default is `None`"), a phrase of :data:`PROSE_DEFAULTS`, or
    code spans (or bare code) that all evaluate to the code's default."""
    if stated.startswith("required"):
        if code_default is EMPTY:
            return None
        named = re.search(r"default is `([^`]+)`", stated)
        if named and evaluate(named.group(1)) == code_default:
            return None
        return f"{name}: documented as required, but the code's default is {code_default!r}"
    if code_default is EMPTY:
        return f"{name}: the code has no default, but the page states {stated!r}"
    if stated in PROSE_DEFAULTS:
        ok = PROSE_DEFAULTS[stated](code_default)
        return None if ok else f"{name}: {stated!r} does not describe {code_default!r}"
    for text in code_spans(stated) or [stated]:
        try:
            documented = evaluate(text)
        except (ValueError, SyntaxError) as err:
            return f"{name}: default {stated!r} is neither Python nor in PROSE_DEFAULTS ({err})"
        if documented != code_default:
            return f"{name}: the page says {text}, the code's default is {code_default!r}"
    return None


def entry_id(entry: Entry) -> str:
    return f"{entry.page}:{entry.obj.__qualname__}"


def test_every_public_method_has_an_entry() -> None:
    """A public method added to a documented class fails here until it is in ENTRIES."""
    listed = {(e.obj.__qualname__.split(".")[0], e.obj.__name__) for e in ENTRIES}
    for cls in (SkProtectorPyTorch, Customer, SkRuntime, LoadedModel):
        for name in public_methods(cls):
            if (cls, name) not in UNDOCUMENTED:
                assert (cls.__name__, name) in listed, f"{cls.__name__}.{name} is not documented"


def undocumented(entry: Entry) -> list[str]:
    """The parameters of ``entry`` its section does not document.

    The section's own callable: a row of its parameter table, or (no table) a code span of the
    body naming the parameter; the heading's signature alone is not an entry. A method described
    in its class's section: a span of the body such as `` `formats(model_name)` ``."""
    _, body = section(entry.page, entry.heading)
    spans = code_spans(body)
    if not entry.name:
        if table := parameter_table(body):
            return [name for name in params(entry.obj) if name not in table]
        return [
            name
            for name in params(entry.obj)
            if not any(re.search(rf"\b{name}\b", span) for span in spans)
        ]
    signature = rf"\b{entry.name}\(([^)]*)\)"
    listed = {w for s in spans for m in re.finditer(signature, s) for w in re.findall(r"\w+", m[1])}
    return [name for name in params(entry.obj) if name not in listed]


@pytest.mark.parametrize("entry", ENTRIES, ids=entry_id)
def test_every_parameter_is_documented(entry: Entry) -> None:
    heading, body = section(entry.page, entry.heading)
    assert not entry.name or re.search(rf"`[^`]*\b{entry.name}\(", body), (
        f"docs/{entry.page} section {heading} does not describe {entry.name}()"
    )
    missing = undocumented(entry)
    assert not missing, f"docs/{entry.page} section {heading} does not document {missing}"


OWNERS = [e for e in ENTRIES if not e.name]


@pytest.mark.parametrize("entry", OWNERS, ids=entry_id)
def test_documented_defaults_match_the_code(entry: Entry) -> None:
    heading, body = section(entry.page, entry.heading)
    code = params(entry.obj)
    stated = [(n, d) for n, d in heading_signature(heading) or [] if d is not None]
    stated += [(n, row[0]) for n, row in parameter_table(body).items() if row]
    # a row of a section shared by two methods may be the other's own parameter (rotate_keys,
    # protect_updated_model's only): checked against that method, not this one
    others = {
        n
        for e in ENTRIES
        if not e.name and (e.page, e.heading) == (entry.page, entry.heading)
        for n in params(e.obj)
    }
    problems = [
        problem
        for name, text in stated
        if name in code or name not in others
        if (problem := default_problem(name, text, code[name].default if name in code else EMPTY))
    ]
    assert not problems, f"docs/{entry.page} section {heading}: {problems}"


def expected_signature(obj: Callable[..., Any]) -> list[str]:
    """The parameter names of ``obj`` as a heading writes them: ``*`` before keyword-only ones."""
    out: list[str] = []
    for name, p in params(obj).items():
        if p.kind is inspect.Parameter.KEYWORD_ONLY and "*" not in out:
            out.append("*")
        out.append(name)
    return out


def test_heading_signatures_follow_the_code() -> None:
    """A heading written as a full signature (not ``(...)``) lists the code's parameters."""
    checked, wrong = 0, []
    for entry in OWNERS:
        heading, _ = section(entry.page, entry.heading)
        signature = heading_signature(heading)
        if signature is None:
            continue  # `f(...)`: the section's table lists the parameters
        checked += 1
        if [name for name, _ in signature] != expected_signature(entry.obj):
            wrong.append(f"{heading} (code: {', '.join(expected_signature(entry.obj))})")
    assert checked >= 6, f"only {checked} signature headings found: has a heading changed form?"
    assert not wrong, wrong


def test_export_enums_and_errors_are_documented() -> None:
    """Every ExportFormat and ExportPlatform value, every error class and every name the
    package exports is in api.md."""
    _, protect = section("api.md", "`protect_new_model(")
    _, errors = section("api.md", "Errors")
    spans = " ".join(code_spans(protect))
    values = [v.name for v in [*ExportFormat, *ExportPlatform]]
    missing = [name for name in values if not re.search(rf"\b{name}\b", spans)]
    error_names = [
        name
        for name, value in vars(protect_errors).items()
        if isinstance(value, type) and issubclass(value, Exception) and not name.startswith("_")
    ]
    missing += [name for name in error_names if f"`{name}`" not in errors]
    every_span = " ".join(code_spans((DOCS / "api.md").read_text()))
    missing += [n for n in skprotect_pytorch.__all__ if not re.search(rf"\b{n}\b", every_span)]
    assert not missing, f"docs/api.md does not document {missing}"


def test_the_checks_catch_a_missing_parameter_and_a_wrong_default() -> None:
    """The helpers fail on what they are meant to catch (a check that cannot fail is none)."""
    table = parameter_table("| parameter | default | meaning |\n|---|---|---|\n| `a` | `1` | x |")
    assert table == {"a": ["`1`", "x"]}
    assert default_problem("a", "`1`", 1) is None
    assert "the code's default is 2" in str(default_problem("a", "`1`", 2))
    assert default_problem("f", "`ONNX | INDUCTOR_CPU`", ExportFormat.ONNX) is not None
    assert default_problem("c", '`Customer()` = `Customer(1, "")`', Customer()) is None
    assert default_problem("c", '`Customer(2, "")`', Customer()) is not None
    assert "required" in str(default_problem("t", "required", None))
    assert "PROSE_DEFAULTS" in str(default_problem("x", "some phrase", None))
    assert heading_signature('`f(a, *, b="x,y", c=None)`') == [
        ("a", None),
        ("*", None),
        ("b", '"x,y"'),
        ("c", "None"),
    ]


def test_runtime_exports_are_documented() -> None:
    """Every name skruntime exports (its errors, classes) is in runtime.md."""
    every_span = " ".join(code_spans((DOCS / "runtime.md").read_text()))
    exported = [n for n in skruntime.__all__ if not n.startswith("__")]
    missing = [n for n in exported if not re.search(rf"\b{n}\b", every_span)]
    assert not missing, f"docs/runtime.md does not document {missing}"
