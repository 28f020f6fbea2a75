"""Audit a model of your own: your architecture, your trained model and your labelled data in
place of a reference model of the suite.

>>> task = task_from_arrays(x_train, y_train, x_test, y_test)
>>> spec = model_spec("my_net", MyNet, task, victim=trained_net, epochs=20)
>>> report = run_audit(AuditConfig(model=spec, budgets=(1, 5)))

The audit scores classifiers: the model maps a batch of inputs to ``(batch, n_classes)``
logits, and every learner (the baseline B(x), the attacks, the twin that sets the cosine
noise floor) trains ``factory()`` networks with cross-entropy on your data.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from numbers import Integral
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import InvalidArgumentError, UnsupportedLayerError
from ..lock import lock_model
from ..lock.registry import find_locker, supported_layer_types
from .arguments import INTEGER, NUMBER, require_positive
from .data import Task, require_budget_room
from .suite import SUITE, ReferenceSpec


def _numbers(value: np.ndarray, what: str) -> np.ndarray:
    """``value`` in a form torch takes: in the machine's byte order, long doubles as float64
    (torch refused both with its own TypeError or ValueError); arrays of strings, objects or
    dates refused, saying how to make numbers of them."""
    if value.dtype.kind not in "biufc":
        fix = (
            "number the classes 0 … K-1, e.g. classes, y = np.unique(y, return_inverse=True)"
            if what.startswith("y")
            else "convert it to numbers, e.g. x.astype(np.float32) (a pandas frame: "
            "df.to_numpy(dtype=np.float32))"
        )
        raise InvalidArgumentError(f"{what} has numpy dtype {value.dtype}, not numbers: {fix}.")
    widest = {"f": np.dtype(np.float64), "c": np.dtype(np.complex128)}.get(value.dtype.kind)
    if widest is not None and value.dtype.itemsize > widest.itemsize:  # long double
        value = value.astype(widest)
    return np.ascontiguousarray(value.astype(value.dtype.newbyteorder("="), copy=False))


def _tensor(value: object, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(_numbers(value, what))
    raise InvalidArgumentError(
        f"{what} must be a numpy array or a torch tensor, but got {type(value).__name__}; "
        "np.asarray(...) makes one of a list, .to_numpy() of a pandas frame or column."
    )


_INTEGERS = (
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint8,
    torch.uint16,
    torch.uint32,
    torch.uint64,
)
"""What ``_inputs`` takes as integer ids (token ids are often stored as uint16)."""


def _inputs(value: object, what: str) -> torch.Tensor:
    """Float inputs as float32; integer ones (token ids) as int64."""
    x = _tensor(value, what)
    if x.is_floating_point():
        x = x.float()
        if not torch.isfinite(x).all():
            raise InvalidArgumentError(
                f"{what} holds NaN or infinite values; clean the data first."
            )
    elif x.dtype in _INTEGERS:
        wide, x = x.dtype == torch.uint64, x.long()
        if wide and (x < 0).any():  # wrapped round
            raise InvalidArgumentError(
                f"{what} holds integer ids of 2**63 or more, which int64 cannot hold; renumber "
                "them."
            )
    else:
        raise InvalidArgumentError(
            f"{what} must hold real numbers or integer ids, but has dtype {x.dtype}."
        )
    if x.dim() >= 2 and len(x) == 0:  # was told it lacked a sample axis
        raise InvalidArgumentError(f"{what} holds no samples (shape {tuple(x.shape)}).")
    if x.dim() < 2:
        raise InvalidArgumentError(
            f"{what} must have a sample axis first and at least one feature axis, but has shape "
            f"{tuple(x.shape)}."
        )
    return x


def _labels(value: object, what: str, n: int) -> torch.Tensor:
    y = _tensor(value, what)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise InvalidArgumentError(
            f"{what} must hold integer class indices, but has dtype {y.dtype}; convert with "
            "y.astype(np.int64) (or .long()) after checking the values are whole numbers."
        )
    if y.dim() != 1 or len(y) != n:
        raise InvalidArgumentError(
            f"{what} must be one class index per sample ({n} samples), but has shape "
            f"{tuple(y.shape)}."
        )
    return y.long()


def task_from_arrays(
    x_train: object,
    y_train: object,
    x_test: object,
    y_test: object,
    n_classes: int | None = None,
) -> Task:
    """A classification task from your arrays (numpy or torch): inputs with the samples first
    (floats become float32, integer ids int64), integer labels in ``[0, n_classes)``;
    ``n_classes`` defaults to the largest label + 1.

    The attacker's budgets are drawn from the training split and every accuracy is measured on
    the test split, so the test split should be data the model was not trained on.
    """
    xt, xs = _inputs(x_train, "x_train"), _inputs(x_test, "x_test")
    if xt.shape[1:] != xs.shape[1:] or xt.dtype != xs.dtype:
        raise InvalidArgumentError(
            f"x_train and x_test must have the same sample shape and kind, but have "
            f"{tuple(xt.shape[1:])} {xt.dtype} and {tuple(xs.shape[1:])} {xs.dtype}."
        )
    yt, ys = _labels(y_train, "y_train", len(xt)), _labels(y_test, "y_test", len(xs))
    largest = int(max(yt.max(), ys.max()))
    if n_classes is None:
        n_classes = largest + 1
    if not isinstance(n_classes, Integral) or isinstance(n_classes, bool) or n_classes < 2:
        raise InvalidArgumentError(f"n_classes must be an integer ≥ 2, but is {n_classes!r}.")
    n_classes = int(n_classes)  # numpy's too (y.max() + 1)
    if int(min(yt.min(), ys.min())) < 0 or largest >= n_classes:
        raise InvalidArgumentError(
            f"labels must lie in [0, {n_classes}), but range from "
            f"{int(min(yt.min(), ys.min()))} to {largest}."
        )
    return Task(xt, yt, xs, ys, n_classes)


def _digest(*tensors: torch.Tensor, text: str = "") -> str:
    h = hashlib.sha256(text.encode())
    for t in tensors:
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _code(model: nn.Module) -> str:
    """What the shapes do not say of an architecture: the module as printed (its layers and
    activations) and the source of its class (its ``forward``) where Python has it, except
    torch's own classes (``nn.Sequential``: the print says it all, and a torch upgrade would
    rename the cells)."""
    kind = type(model)
    source = f"{kind.__module__}.{kind.__qualname__}"
    if not kind.__module__.startswith("torch."):
        with contextlib.suppress(OSError, TypeError):  # a class defined interactively
            source = inspect.getsource(kind)
    return f"{model!r}|{source}"


def _require_cpu(model: nn.Module, what: str, fix: str) -> None:
    """The audit trains and attacks on the CPU, with the task's CPU tensors."""
    devices = {t.device.type for t in model.state_dict().values()} - {"cpu"}
    if devices:
        raise InvalidArgumentError(
            f"{what} tensors on {', '.join(sorted(devices))}: the audit runs on the CPU; {fix}."
        )


def _tensor_ids(model: nn.Module) -> set[int]:
    """The identities of the tensors training changes in ``model``: its parameters and its
    norm layers' running statistics. Other buffers are left out: a constant that every network
    registers (``register_buffer("scale", SCALE)`` of a module-level tensor) is shared by
    design, and training leaves it as it is."""
    stats = (
        t
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._NormBase)
        for t in m.buffers(recurse=False)
    )
    return {id(t) for t in (*model.parameters(), *stats)}


def _require_new_networks(fresh: nn.Module, factory, victim: object) -> None:
    """Refuse a ``factory`` that hands out one network (or one layer) again: every learner
    (the twin, B(x), each attack) trained that object in place, so they overwrote each other and
    a victim built by it (``lambda: net``) was retrained, the user's object changed."""
    second = factory()
    shared = _tensor_ids(fresh) & _tensor_ids(second) if isinstance(second, nn.Module) else set()
    of_victim = isinstance(victim, nn.Module) and bool(_tensor_ids(fresh) & _tensor_ids(victim))
    if second is fresh or shared or of_victim:
        what = "the victim's tensors" if of_victim else "the same tensors on every call"
        raise InvalidArgumentError(
            f"factory() must build a new, untrained network on each call, but it returns {what} "
            "(e.g. lambda: net, or layers built once outside it): the audit trains many "
            "networks from it in place, which would overwrite each other and your model; build "
            "the layers inside it (e.g. pass the class, or lambda: MyNet(...))."
        )


def _check_architecture(factory: Callable[[], nn.Module], victim: nn.Module | None) -> nn.Module:
    """``factory()`` (checked to build what ``victim`` is, when given)."""
    if isinstance(factory, nn.Module):  # callable: calling it ran its forward without input
        raise InvalidArgumentError(
            f"factory must build the untrained model (e.g. the class {type(factory).__name__}, "
            f"or lambda: {type(factory).__name__}(...)), but is a {type(factory).__name__} "
            "instance; pass your trained model as victim=."
        )
    fresh = factory()
    if not isinstance(fresh, nn.Module):
        raise InvalidArgumentError(
            f"factory() must return a torch.nn.Module, but returned {type(fresh).__name__}."
        )
    _require_new_networks(fresh, factory, victim)
    _require_cpu(  # the baseline and the attacks failed in torch after the victim's training
        fresh, "factory() builds", "build it there (no .cuda() or .to(device) in factory())"
    )
    if victim is None:
        return fresh
    if not isinstance(victim, nn.Module):
        raise InvalidArgumentError(
            f"victim must be a trained torch.nn.Module, but is {type(victim).__name__}."
        )
    _require_cpu(victim, "victim holds", "pass victim.cpu() (a copy is audited either way)")
    broken = [
        k
        for k, t in victim.state_dict().items()
        if t.is_floating_point() and not t.isfinite().all()
    ]
    if broken:  # its logits are NaN: the audit stopped in scipy after attacking it
        raise InvalidArgumentError(
            f"victim holds NaN or infinite weights ({', '.join(broken[:5])}): its training "
            "diverged; audit a model trained to finite weights."
        )
    state = fresh.state_dict()
    kinds = {  # float64 weights failed on the float32 inputs, in torch's words
        k: (t.dtype, state[k].dtype)
        for k, t in victim.state_dict().items()
        if k in state and t.dtype != state[k].dtype
    }
    if kinds:
        listed = ", ".join(f"{k} {v} (factory {f})" for k, (v, f) in list(kinds.items())[:5])
        raise InvalidArgumentError(
            f"victim holds tensors of another dtype than factory() builds: {listed}; the audit "
            "trains factory() networks on the task's float32 inputs: pass victim.float() (and "
            "build float32 layers in factory())."
        )
    built, given = _shapes(fresh), _shapes(victim)
    if built != given:
        differ = sorted(
            f"{k}: factory {built.get(k, 'missing')}, victim {given.get(k, 'missing')}"
            for k in set(built) | set(given)
            if built.get(k) != given.get(k)
        )
        raise InvalidArgumentError(
            "factory() must build the victim's architecture (the baseline and the attacks train "
            f"it from scratch), but their tensors differ: {'; '.join(differ[:5])}"
            + (f"; and {len(differ) - 5} more" if len(differ) > 5 else "")
        )
    return fresh


def _check_logits(model: nn.Module, task: Task) -> None:
    """The audit's accuracy is the argmax of ``(batch, n_classes)`` logits."""
    probe = task.x_test[:2]
    try:
        with torch.no_grad():
            out = copy.deepcopy(model).eval()(probe)  # your model keeps its mode
    except Exception as err:
        ids = (
            ""
            if probe.is_floating_point()
            else " (task_from_arrays keeps integer inputs as int64 ids, for an embedding; "
            "features stored as integers must be passed as floats: x.astype(np.float32))"
        )
        raise InvalidArgumentError(
            f"the model fails on two test samples of shape {tuple(probe.shape)}{ids}: {err}"
        ) from err
    want = (len(probe), task.n_classes)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InvalidArgumentError(
            f"the audit scores classifiers: the model must return logits of shape {want} for "
            f"two samples, but returned {got}.{_unseen_classes(task)}{_one_logit(out, task)}"
        )
    if not out.is_floating_point():  # cross-entropy trains on float logits
        raise InvalidArgumentError(
            f"the audit scores classifiers: the model must return floating-point logits, but "
            f"returned {out.dtype} values."
        )
    if not out.isfinite().all():  # a NaN stopped the audit in scipy after the attacks
        raise InvalidArgumentError(
            "the model returns NaN or infinite logits on two test samples: fix the model (or "
            "the data scale) so that it computes finite logits."
        )


def _one_logit(out: object, task: Task) -> str:
    """How to audit a binary classifier of one logit (trained with ``BCEWithLogitsLoss``)."""
    if task.n_classes != 2 or not isinstance(out, torch.Tensor) or out.numel() != 2:
        return ""
    return (
        " A binary classifier of one logit z can be audited through a wrapper module returning "
        "torch.cat([-z, z], dim=1) / 2 for z of shape (batch, 1) (softmax gives sigmoid(z) back), "
        "as factory and victim."
    )


def _unseen_classes(task: Task) -> str:
    """Why the task may have more classes than the model's outputs: labels counted from 1 (or
    a test split with a label the training split lacks) make ``n_classes`` one too many."""
    unseen = sorted(set(range(task.n_classes)) - set(task.y_train.tolist()))
    if not unseen:
        return ""
    listed = ", ".join(map(str, unseen[:5])) + (", …" if len(unseen) > 5 else "")
    return (
        f" The task has {task.n_classes} classes (task_from_arrays: the largest label + 1 unless "
        f"n_classes is given), but no training sample has label {listed}: labels counted from "
        "1 must have 1 subtracted, and both splits must use the same labels."
    )


def _supported(module: nn.Module) -> bool:
    """Whether ``module`` is of a layer type the lock supports (used as it supports or not)."""
    try:
        return find_locker(module) is not None
    except UnsupportedLayerError:
        return True


def _check_lockable(model: nn.Module) -> None:
    """The audit locks every supported layer of ``model``: a model the lock cannot take was
    refused only after the victim and its twin were trained (a model without parameters in
    torch's optimiser), and told to check a ``layer_filter`` the audit does not have."""
    if not any(_supported(m) for m in model.modules()):
        names = ", ".join(t.__name__ for t in supported_layer_types())
        raise InvalidArgumentError(
            f"the model has no layer the lock supports ({names}), so the audit has nothing to "
            "lock or attack: every weight would ship in plaintext; build it from those layers."
        )
    try:
        lock_model(model, layer_filter=lambda name, m: True, secret_rng=np.random.default_rng(0))
    except UnsupportedLayerError as err:
        raise InvalidArgumentError(
            f"the lock refuses every layer of the model, so the audit has nothing to attack: {err}"
        ) from err


def model_spec(
    name: str,
    factory: Callable[[], nn.Module],
    task: Task,
    *,
    victim: nn.Module | None = None,
    epochs: int = 15,
    lr: float = 1e-3,
    batch_size: int = 128,
    description: str | None = None,
) -> ReferenceSpec:
    """A spec that audits your model: ``factory()`` builds the architecture untrained, ``task``
    holds your data (:func:`task_from_arrays`), ``victim`` is your trained model (``None``:
    the audit trains one with Adam at ``lr`` for ``epochs`` epochs of ``batch_size``).

    The twin (a second network trained the same way, whose weights set the noise floor of the
    cosine check) is always trained with these settings, so give the ones you trained with.
    ``AuditConfig.victim_epochs``, when set, overrides ``epochs``.
    """
    if not isinstance(name, str) or not name.strip():
        raise InvalidArgumentError(f"name must be a non-empty string, but is {name!r}.")
    if "\0" in name or len(name.encode()) > 200:  # the folder was refused as not writable
        raise InvalidArgumentError(
            f"name {name[:40]!r}… must be a folder name of at most 200 bytes without NUL: it "
            "names the audit's cell folder."
        )
    if Path(name).name != name or name == "..":  # it names the cell folder inside --cells
        raise InvalidArgumentError(
            f"name {name!r} must be one folder name, without '/' and not '.' or '..': it names "
            "the audit's cell folder."
        )
    if not callable(factory):
        raise InvalidArgumentError(
            f"factory must be a callable that builds the untrained model (e.g. the class), but "
            f"is {type(factory).__name__}."
        )
    if not isinstance(task, Task):
        raise InvalidArgumentError(
            f"task must be a Task (task_from_arrays), but is {type(task).__name__}."
        )
    if len(task.y_test.unique()) < 2:
        raise InvalidArgumentError(
            f"the test split holds only class {int(task.y_test[0])}: chance (always predicting "
            "it) is 100 % and no attack can score above it, so the gate would measure nothing; "
            "split the data at random (a data set sorted by label leaves one class at its end)."
        )
    require_budget_room(task)
    if len(task.y_train.unique()) < 2:
        raise InvalidArgumentError(
            f"the training split holds only class {int(task.y_train[0])}: the victim, the "
            "baseline and every attack would learn to predict it alone, and the gate would "
            "measure nothing; split the data at random."
        )
    require_positive(epochs, "epochs", INTEGER, "integer")
    require_positive(lr, "lr", NUMBER, "number")
    require_positive(batch_size, "batch_size", INTEGER, "integer")
    if description is not None and (not isinstance(description, str) or not description.strip()):
        raise InvalidArgumentError(
            f"description must be a non-empty string (the report's title) or None for the "
            f"default, but is {description!r}."
        )
    epochs, lr, batch_size = int(epochs), float(lr), int(batch_size)  # numpy scalars too
    fresh = _check_architecture(factory, victim)
    _check_logits(victim if victim is not None else fresh, task)
    _check_lockable(victim if victim is not None else fresh)
    if victim is not None:  # the weights fingerprinted are the ones audited, if you train on
        victim = copy.deepcopy(victim)
    arch = "; ".join(f"{k} {v}" for k, v in _shapes(fresh).items())
    fingerprint = _digest(
        task.x_train,
        task.y_train,
        task.x_test,
        task.y_test,
        *(() if victim is None else victim.state_dict().values()),
        text=f"{arch}|{_code(fresh)}|{task.n_classes}|lr {lr}|batch {batch_size}|"
        f"own victim {victim is not None}",
    )
    n_params = sum(p.numel() for p in fresh.parameters())
    return ReferenceSpec(
        name,
        description
        or (
            f"{name} ({type(fresh).__name__}, {n_params:,} parameters; your data: "
            f"{len(task.y_train):,} train / {len(task.y_test):,} test, {task.n_classes} classes)"
        ),
        _FixedTask(task),
        factory,
        victim_epochs=epochs,
        quick_epochs=epochs,
        victim_lr=lr,
        victim_batch=batch_size,
        victim=victim,
        fingerprint=fingerprint,
    )


class _FixedTask:
    """``make_task`` of a spec built on your data: there is one task, seed 0."""

    def __init__(self, task: Task) -> None:
        self.task = task

    def __call__(self, seed: int = 0) -> Task:
        if seed != 0:
            raise InvalidArgumentError(
                f"data_seed={seed} asks for another generated task, but this spec audits your "
                "own data, of which there is one: leave AuditConfig.data_seed at 0."
            )
        return self.task


def load_spec(text: str) -> ReferenceSpec:
    """The spec ``text`` names: a suite model (``mlp``), or ``FILE.py:NAME`` / ``module:NAME``
    where ``NAME`` is a :class:`ReferenceSpec` or a function that returns one."""
    if not isinstance(text, str):  # text.rpartition raised an AttributeError
        raise InvalidArgumentError(
            f"load_spec takes text: a suite name ({', '.join(SUITE)}), FILE.py:NAME or "
            f"module:NAME, but got {type(text).__name__} {text!r}."
        )
    if text in SUITE:
        return SUITE[text]
    where, sep, attr = text.rpartition(":")
    if not sep or not where or not attr:
        raise InvalidArgumentError(
            f"'{text}' is neither a reference model ({', '.join(SUITE)}) nor FILE.py:NAME or "
            "module:NAME naming a ReferenceSpec (skprotect_pytorch.audit.custom.model_spec)."
        )
    module = _import(where)
    if not hasattr(module, attr):
        raise InvalidArgumentError(f"{where} has no attribute '{attr}'.")
    value = getattr(module, attr)
    if callable(value) and not isinstance(value, ReferenceSpec):
        value = value()
    if not isinstance(value, ReferenceSpec):
        raise InvalidArgumentError(
            f"{text} must be a ReferenceSpec or a function returning one (build it with "
            f"skprotect_pytorch.audit.custom.model_spec), but is {type(value).__name__}."
        )
    return value


def _on_import_path(folder: Path) -> None:
    """Put ``folder`` first on Python's import path, where ``python FILE.py`` puts the file's
    folder and ``python -m`` the current one: the user's spec file imports the user's own
    packages beside it (``from my_project.model import MyNet``) without ``PYTHONPATH``."""
    entry = str(folder)
    if entry not in sys.path:
        sys.path.insert(0, entry)


def _import(where: str):
    """A module by file path (``*.py``, its folder on the import path) or by dotted name (the
    current folder on the import path); a clear error if it cannot load."""
    try:
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise InvalidArgumentError(f"{where} does not exist or is not a file.")
            _on_import_path(path.resolve().parent)
            digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]
            name = f"skprotect_audit_spec_{digest}"
            found = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(found)
            sys.modules[name] = module  # dataclasses and pickling look the module up
            try:
                found.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
            return module
        _on_import_path(Path.cwd())
        try:
            return importlib.import_module(where)
        except ModuleNotFoundError as err:
            if err.name is None or not f"{where}.".startswith(f"{err.name}."):
                raise  # a module your module imports: where it does is yours to see
            raise InvalidArgumentError(  # no traceback: it names the module alone
                f"loading {where} failed: {type(err).__name__}: {err}"
            ) from None
    except InvalidArgumentError:
        raise
    except Exception as err:  # the user's file: any error in it is theirs to see
        raise InvalidArgumentError(f"loading {where} failed: {type(err).__name__}: {err}") from err
