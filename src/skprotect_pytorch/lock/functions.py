"""The user's functions that a model's code may run, and the values they read besides their
arguments (closure variables, default arguments, the globals they name): where a forward finds
a tensor outside the model (:mod:`.outside`), and what a lambda that captured the model may
call (:mod:`.preflight`).  Torch's, NumPy's and Python's own functions are not followed: they
hold no tensor of the user's, and they use frames internally (``logging``, ``warnings``).
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Collection, Iterable, Iterator

import torch

from .coverage import plain_leaves

_LIBRARIES = frozenset({"torch", "numpy", *sys.stdlib_module_names})
"""Top-level packages whose functions are not followed: they hold no tensor of the user's."""


def user_code(module_name: str | None) -> bool:
    """Whether the module ``module_name`` is the user's (not a :data:`_LIBRARIES` one)."""
    return (module_name or "").partition(".")[0] not in _LIBRARIES


def user_functions(value: object) -> list[types.FunctionType]:
    """The functions of the user's code that ``value`` runs: itself (a function, a bound
    method's), or the methods of its class (a helper object, or a class); none of torch's,
    NumPy's or Python's own."""
    if isinstance(value, types.MethodType):
        value = value.__func__
    if isinstance(value, types.FunctionType):
        return [value] if user_code(value.__module__) else []
    if isinstance(value, types.ModuleType | torch.Tensor):
        return []
    cls = value if isinstance(value, type) else type(value)
    return [
        f
        for c in cls.__mro__
        if user_code(c.__module__)
        for f in vars(c).values()
        if isinstance(f, types.FunctionType)
    ]


def nested_codes(code: types.CodeType) -> Iterator[types.CodeType]:
    """``code`` and the code of every function (lambda, comprehension) nested in it."""
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from nested_codes(const)


def function_values(
    fn: types.FunctionType, skip: Collection[str] = ()
) -> Iterator[tuple[str, object]]:
    """The values ``fn`` reads besides its arguments, with their labels: its closure
    variables (``make.<locals>.Net.forward: V``) but those named in ``skip``, default arguments
    (``Net.forward: default W``) and the globals it or a comprehension or lambda in it names
    (``module.W``)."""
    code = fn.__code__
    for var, cell in zip(code.co_freevars, fn.__closure__ or (), strict=True):
        if var not in skip:
            with contextlib.suppress(ValueError):  # an empty cell
                yield f"{fn.__qualname__}: {var}", cell.cell_contents
    defaults = fn.__defaults__ or ()
    named = code.co_varnames[code.co_argcount - len(defaults) : code.co_argcount]
    kwdefaults = (fn.__kwdefaults__ or {}).items()
    for var, value in (*zip(named, defaults, strict=True), *kwdefaults):
        yield f"{fn.__qualname__}: default {var}", value
    module_name = fn.__globals__.get("__name__", "?")
    names = dict.fromkeys(name for c in nested_codes(code) for name in c.co_names)
    for var in names:
        if var in fn.__globals__:
            yield f"{module_name}.{var}", fn.__globals__[var]


def called_functions(
    functions: Iterable[types.FunctionType],
) -> Iterator[tuple[types.FunctionType, list[tuple[str, object]]]]:
    """Each of ``functions``, then each function of the user's that they may call through the
    values they read (:func:`function_values`: a module-level ``helper``, a helper object's
    methods), and so on, once, with the values it reads: searched lazily, so that a caller that
    found what it looked for stops early."""
    pending = dict.fromkeys(functions)
    done: set[types.FunctionType] = set()
    while pending:
        fn = next(iter(pending))
        del pending[fn]
        done.add(fn)
        values = list(function_values(fn))
        yield fn, values
        for _, value in values:
            for _, leaf in plain_leaves(value, ""):
                pending.update(dict.fromkeys(f for f in user_functions(leaf) if f not in done))
