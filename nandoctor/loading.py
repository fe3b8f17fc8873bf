"""``_target_`` resolution, and building the patient from a config.

Three forms (SPEC section 1):
- ``package.module.Name``    importable dotted path
- ``package.module:Name``    the same, colon form
- ``relative/file.py:Name``  a Python file, relative to the config's folder

A class is instantiated with the block's other keys. A function is *called* for
``model`` and datasets (factories) and *bound* (``functools.partial``) for ``loss``
and ``train_step``. Everything that goes wrong here is a ``LoadError`` that says
which module or file was searched, which names it has, and what the user's own
code raised and where.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib
import importlib.util
import inspect
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from nandoctor.errors import ConfigError, LoadError, NandoctorError

_FILE_MODULES: dict[Path, Any] = {}


def _public_names(module) -> list[str]:
    return sorted(n for n in dir(module) if not n.startswith("_"))


def _missing_name_error(name: str, module, searched: str, key: str, where: str | None) -> LoadError:
    names = _public_names(module)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    shown = ", ".join(names[:25]) + (" ..." if len(names) > 25 else "")
    hint = (f"did you mean {' or '.join(repr(c) for c in close)}?" if close
            else "check the spelling of the name after the last '.' or ':'.")
    return LoadError(f"'{name}' was not found in {searched}, which defines: {shown or '(nothing public)'}.",
                     key=key, where=where, hint=hint)


def display_path(path) -> str:
    """A path relative to the working directory when it lies below it (shorter, and no machine paths
    end up in reports), else as it is."""
    library = library_path(str(path))
    if library != str(path):
        return library
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def _library_roots() -> tuple[str, ...]:
    """Folders whose files are never the user's code: nandoctor, torch, the standard library, site-packages."""
    import sysconfig

    import torch

    roots = {Path(__file__).resolve().parent, Path(torch.__file__).resolve().parent}
    roots.update(Path(sysconfig.get_paths()[k]).resolve() for k in ("stdlib", "platstdlib", "purelib", "platlib"))
    return tuple(str(r).replace("\\", "/") + "/" for r in roots)


def is_user_file(filename: str) -> bool:
    """True for the user's own source files (their model, dataset, loss), by where the file lies."""
    if filename.startswith("<"):
        return False
    fn = str(Path(filename).resolve()).replace("\\", "/")
    return not fn.startswith(_LIBRARY_ROOTS) and "/site-packages/" not in fn and "/dist-packages/" not in fn


def user_frame(exc: BaseException) -> str | None:
    """``file.py:LINE in func`` of the innermost frame in the user's own code (else the innermost frame)."""
    frames = traceback.extract_tb(exc.__traceback__)
    for fr in reversed(frames):
        if not is_user_file(fr.filename):
            continue
        return f"{display_path(fr.filename)}:{fr.lineno} in {fr.name}"
    return f"{display_path(frames[-1].filename)}:{frames[-1].lineno} in {frames[-1].name}" if frames else None


PATIENT_FILE = "patient.py"  # nandoctor's one interface to the user's objects (model, data, loss, optimizer, step)


def _in_nandoctor(filename: str) -> bool:
    return str(Path(filename).resolve()).replace("\\", "/").startswith(_NANDOCTOR_ROOT)


def raised_by_user(exc: BaseException) -> bool:
    """Did the user's set-up raise ``exc`` (their code, data, loss or optimizer), rather than nandoctor?

    Decided by where it was raised, not where it was caught: the innermost frame outside the
    libraries (torch, the standard library, site-packages) is the user's own file; or it is
    nandoctor's ``patient.py`` handing the user's objects to torch, which raised (a loss that
    meets labels out of range, a DataLoader that cannot collate the user's samples). A
    ``NandoctorError`` (bad input, explained) and errors that declare ``user_fault`` (a sample
    whose loading hung) are the user's too. Anything else raised inside nandoctor is nandoctor's.
    """
    if isinstance(exc, NandoctorError) or getattr(exc, "user_fault", False):
        return True
    frames = traceback.extract_tb(exc.__traceback__)
    for depth, fr in enumerate(reversed(frames)):
        if is_user_file(fr.filename):
            return True
        if _in_nandoctor(fr.filename):
            return depth > 0 and Path(fr.filename).name == PATIENT_FILE
    return False


def library_path(filename: str) -> str:
    """An installed library's file relative to site-packages (``torch/nn/functional.py``): reports show no
    machine's folders; other files are left as they are."""
    fn = filename.replace("\\", "/")
    for marker in ("/site-packages/", "/dist-packages/"):
        if marker in fn:
            return fn.split(marker, 1)[1]
    return filename


def _load_file_module(file: Path, key: str, where: str | None):
    """Import a .py file by path, once per path (model and data may share one file)."""
    file = file.resolve()
    if file in _FILE_MODULES:
        return _FILE_MODULES[file]
    if not file.exists():
        raise LoadError(f"the file '{display_path(file)}' does not exist.", key=key, where=where,
                        hint="a 'file.py:Name' target is relative to the config file's folder.")
    digest = hashlib.sha1(str(file).encode()).hexdigest()[:8]
    mod_name = f"nandoctor_user_{file.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(mod_name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    folder = str(file.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # so the user's file can import its neighbours
    writes_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # no __pycache__ in the user's folder
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's module failed at import time
        sys.modules.pop(mod_name, None)
        raise LoadError(f"importing '{file.name}' raised {type(exc).__name__}: {exc}",
                        key=key, where=user_frame(exc) or where,
                        hint="fix the error in that file; it must import on its own.") from None
    finally:
        sys.dont_write_bytecode = writes_bytecode
    _FILE_MODULES[file] = module
    return module


def resolve_target(target: str, root: Path, key: str = "_target_", where: str | None = None) -> Any:
    """Turn a ``_target_`` string into the object it names."""
    target = target.strip()
    if ":" in target:
        left, name = target.rsplit(":", 1)
        if left.endswith(".py") or "/" in left or "\\" in left:
            module = _load_file_module(root / left, key, where)
            return _get_attr_path(module, name, f"the file '{display_path(root / left)}'", key, where)
        module = _import(left, key, where)
        return _get_attr_path(module, name, f"the module '{left}'", key, where)
    if target.endswith(".py"):
        raise LoadError(f"'{target}' names a file but not the object in it.", key=key, where=where,
                        hint=f"write '{target}:ClassName' with the class or function to use.")
    parts = target.split(".")
    # the longest importable prefix is the module; the rest are attributes
    last_error = None
    for i in range(len(parts) - 1, 0, -1):
        mod_path = ".".join(parts[:i])
        try:
            module = importlib.import_module(mod_path)
        except ModuleNotFoundError as exc:
            last_error = exc
            if exc.name and not mod_path.startswith(exc.name) and exc.name != mod_path:
                # the module exists but imports something missing
                raise LoadError(f"importing '{mod_path}' failed: {exc}.", key=key, where=where,
                                hint=f"install the package '{exc.name}' or fix that import.") from None
            continue
        except Exception as exc:
            raise LoadError(f"importing '{mod_path}' raised {type(exc).__name__}: {exc}", key=key,
                            where=user_frame(exc) or where, hint="fix the error in that module.") from None
        return _get_attr_path(module, ".".join(parts[i:]), f"the module '{mod_path}'", key, where)
    top = parts[0]
    raise LoadError(f"'{target}' does not resolve: no module named '{top}' can be imported"
                    f"{f' ({last_error})' if last_error else ''}.", key=key, where=where,
                    hint="use 'package.module.Name' for installed code, or 'file.py:Name' for a "
                         "file beside the config.")


def _import(mod_path: str, key: str, where: str | None):
    try:
        return importlib.import_module(mod_path)
    except ModuleNotFoundError as exc:
        raise LoadError(f"no module named '{exc.name or mod_path}' can be imported (searched sys.path).",
                        key=key, where=where,
                        hint="install it, or use 'file.py:Name' for a file beside the config.") from None
    except Exception as exc:
        raise LoadError(f"importing '{mod_path}' raised {type(exc).__name__}: {exc}", key=key,
                        where=user_frame(exc) or where, hint="fix the error in that module.") from None


def _get_attr_path(obj, dotted: str, searched: str, key: str, where: str | None):
    for part in dotted.split("."):
        if not hasattr(obj, part):
            raise _missing_name_error(part, obj, searched, key, where)
        obj = getattr(obj, part)
    return obj


def build(spec: dict, root: Path, key: str, *, bind: bool = False, where: str | None = None) -> Any:
    """Instantiate a class, call a factory (``bind=False``) or bind a function (``bind=True``)."""
    target = resolve_target(spec["_target_"], root, key=f"{key}._target_", where=where)
    kwargs = {k: v for k, v in spec.items() if k != "_target_"}
    if inspect.isclass(target):
        return call_user(target, kwargs, key, where)
    if not callable(target):
        if kwargs:
            raise LoadError(f"'{spec['_target_']}' is a {type(target).__name__}, which cannot take arguments.",
                            key=key, where=where, hint="name a class or a function.")
        return target
    if bind:
        return functools.partial(target, **kwargs) if kwargs else target
    return call_user(target, kwargs, key, where)


def call_user(fn: Callable, kwargs: dict, key: str, where: str | None) -> Any:
    """Call user code; an exception becomes a LoadError naming the user's message and line."""
    try:
        return fn(**kwargs)
    except NandoctorError as exc:  # already explained (e.g. nandoctor.datasets.CSVDataset naming a bad column)
        exc.where = exc.where or where
        exc.key = key
        raise
    except TypeError as exc:
        # the arguments in the config do not fit the signature
        try:
            sig = inspect.signature(fn)
            sig.bind(**kwargs)
        except (TypeError, ValueError):
            raise LoadError(f"the arguments {sorted(map(str, kwargs))} do not fit {getattr(fn, '__name__', fn)}"
                            f"{_safe_sig(fn)}: {exc}", key=key, where=where,
                            hint="make the keys under this block match the parameter names.") from None
        raise _raised(exc, fn, key, where) from None
    except Exception as exc:
        raise _raised(exc, fn, key, where) from None


def _safe_sig(fn) -> str:
    try:
        return str(inspect.signature(fn))
    except (TypeError, ValueError):
        return "(...)"


def _raised(exc: Exception, fn, key: str, where: str | None) -> LoadError:
    name = getattr(fn, "__qualname__", getattr(fn, "__name__", repr(fn)))
    return LoadError(f"building '{key}' with {name} raised {type(exc).__name__}: {exc}", key=key,
                     where=user_frame(exc) or where,
                     hint="the error comes from your own code at the line shown; fix it there and run again.")


def _config_relative(spec: dict, root: Path, key: str, where: str | None) -> dict:
    """Rewrite the keyword arguments a dataset class lists in ``config_paths`` relative to the config's folder."""
    target = resolve_target(spec["_target_"], root, key=f"{key}._target_", where=where)
    names = getattr(target, "config_paths", ())
    out = dict(spec)
    for name in names:
        value = out.get(name)
        if isinstance(value, str) and not Path(value).is_absolute():
            out[name] = str(root / value)
    return out


def _dataset(spec: dict, cfg, key: str):
    spec = _config_relative(spec, cfg.root, key, cfg.where(key))
    data = build(spec, cfg.root, key, where=cfg.where(key))
    if not hasattr(data, "__getitem__") or not hasattr(data, "__len__"):
        raise LoadError(f"'{key}' built a {type(data).__name__}, which is not a map-style dataset "
                        "(it needs __len__ and __getitem__).", key=key, where=cfg.where(key),
                        hint="return a torch.utils.data.Dataset (e.g. TensorDataset) from the factory.")
    try:
        n = len(data)
    except Exception as exc:
        raise LoadError(f"len() of '{key}' raised {type(exc).__name__}: {exc}", key=key,
                        where=user_frame(exc) or cfg.where(key), hint="fix __len__ in your dataset.") from None
    if n == 0:
        from nandoctor.errors import DataError
        raise DataError(f"the dataset '{key}' is empty (len() is 0).", key=key, where=cfg.where(key),
                        hint="check the path or split it reads; nandoctor needs at least one sample.")
    return data


def build_patient(cfg, *, device: str | None = None, seed: int | None = None):
    """Load every object a config names into a ``Patient``. Nothing is trained here."""
    import torch
    from torch import nn

    from nandoctor.patient import Patient, preserved_rng, resolve_device

    root = cfg.root
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))  # user modules may import their neighbours by name
    seed = cfg.seed if seed is None else seed
    from nandoctor.config import MAX_SEED
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        from nandoctor.errors import ConfigError
        raise ConfigError(f"the seed {seed!r} is not allowed.", key="--seed",
                          hint=f"use a whole number from 0 to {MAX_SEED}.")
    try:  # a device the machine lacks is said before anything is imported
        resolved_device = resolve_device(device or cfg.device)
    except NandoctorError as exc:
        exc.key, exc.where = ("--device", None) if device else ("device", cfg.where("device"))
        raise

    # 1. the model: resolve once, and check that it builds
    model_target = resolve_target(cfg.model_spec["_target_"], root, "model._target_", cfg.where("model"))
    model_kwargs = {k: v for k, v in cfg.model_spec.items() if k != "_target_"}
    if not callable(model_target):
        raise LoadError(f"'{cfg.model_spec['_target_']}' is not a class or a function.", key="model",
                        where=cfg.where("model"), hint="name an nn.Module subclass or a factory returning one.")

    def model_factory():
        return call_user(model_target, model_kwargs, "model", cfg.where("model"))

    with preserved_rng():
        torch.manual_seed(seed)
        probe_model = model_factory()
        if not isinstance(probe_model, nn.Module):
            raise LoadError(f"'model' built a {type(probe_model).__name__}, not a torch.nn.Module.", key="model",
                            where=cfg.where("model"), hint="return the nn.Module from your factory.")
        if model_factory() is probe_model:
            # a factory that hands out one shared instance: probes would train the user's own model,
            # so they get copies of a snapshot taken now, before anything trained
            import copy
            pristine = copy.deepcopy(probe_model)
            model_factory = lambda: copy.deepcopy(pristine)  # noqa: E731

    # 2. data
    with preserved_rng():
        torch.manual_seed(seed)
        train = _dataset(cfg.train_spec, cfg, "data.train")
        val = _dataset(cfg.val_spec, cfg, "data.val") if cfg.val_spec else None

    # 3. loss and step (bound, not called)
    loss_fn = build(cfg.loss_spec, root, "loss", bind=True, where=cfg.where("loss"))
    if not callable(loss_fn):
        raise LoadError(f"'loss' is a {type(loss_fn).__name__}, which cannot be called.", key="loss",
                        where=cfg.where("loss"), hint="name an nn.Module loss class or a function.")
    step = (build(cfg.train_step_spec, root, "train_step", bind=True, where=cfg.where("train_step"))
            if cfg.train_step_spec else None)

    # 4. optimizer: a class whose params we inject
    opt_cls = resolve_target(cfg.optimizer_spec["_target_"], root, "optimizer._target_", cfg.where("optimizer"))
    opt_kwargs = {k: v for k, v in cfg.optimizer_spec.items() if k != "_target_"}
    if not (isinstance(opt_cls, type) and issubclass(opt_cls, torch.optim.Optimizer)):
        raise LoadError(f"'{cfg.optimizer_spec['_target_']}' is not a torch.optim.Optimizer class.",
                        key="optimizer", where=cfg.where("optimizer"),
                        hint="name the class, e.g. torch.optim.SGD; nandoctor passes the parameters itself.")
    try:
        opt_cls([nn.Parameter(torch.zeros(1))], **opt_kwargs)
    except Exception as exc:
        raise LoadError(f"{opt_cls.__name__} does not accept the settings {opt_kwargs}: {exc}", key="optimizer",
                        where=cfg.where("optimizer"), hint="fix the keys under 'optimizer:'.") from None

    # 5. the training set-up: collate_fn (bound, like loss), scheduler (a factory of the optimizer)
    collate = (build(cfg.collate_spec, root, "data.collate_fn", bind=True, where=cfg.where("data.collate_fn"))
               if cfg.collate_spec else None)
    if collate is not None and not callable(collate):
        raise LoadError(f"'data.collate_fn' is a {type(collate).__name__}, which cannot be called.",
                        key="data.collate_fn", where=cfg.where("data.collate_fn"),
                        hint="name a function that takes a list of samples and returns a batch.")
    scheduler = (scheduler_factory(cfg, opt_cls([nn.Parameter(torch.zeros(1))], **opt_kwargs))
                 if cfg.scheduler_spec else None)

    return Patient(model_factory=model_factory, train_data=train, val_data=val, loss_fn=loss_fn,
                   optimizer_cls=opt_cls, optimizer_kwargs=opt_kwargs, train_step=step,
                   batch_size=cfg.batch_size, shuffle=cfg.shuffle, drop_last=cfg.drop_last,
                   num_workers=cfg.num_workers, seed=seed,
                   device=resolved_device, name=cfg.path.stem,
                   loss_name=_name_of(loss_fn), model_name=type(probe_model).__name__,
                   collate_fn=collate, scheduler=scheduler, scheduler_interval=cfg.scheduler_interval,
                   precision=cfg.precision, grad_scaler=cfg.grad_scaler, grad_clip=cfg.grad_clip,
                   accumulate=cfg.accumulate, source={"config": str(cfg.path)})


def scheduler_factory(cfg, trial_optimizer) -> Callable:
    """``optimizer -> scheduler`` from the config's ``scheduler`` block, checked once on ``trial_optimizer``.

    The target is a ``torch.optim.lr_scheduler`` class or any callable taking the optimizer first; the
    block's other keys (``interval`` aside) are its keyword arguments. A target that cannot be called, that
    raises when built, or that builds something without ``step()`` is a ``ConfigError`` naming the key.
    """
    spec, where = cfg.scheduler_spec, cfg.where("scheduler")
    target = resolve_target(spec["_target_"], cfg.root, key="scheduler._target_", where=where)
    kwargs = {k: v for k, v in spec.items() if k != "_target_"}
    name = getattr(target, "__name__", spec["_target_"])
    if not callable(target):
        raise ConfigError(f"'scheduler._target_' names {spec['_target_']!r}, a {type(target).__name__}, "
                          "which cannot be called with the optimizer.", where=where, key="scheduler",
                          hint="name a torch.optim.lr_scheduler class (e.g. torch.optim.lr_scheduler.StepLR) "
                               "or a function fn(optimizer, ...) that returns a scheduler.")
    try:
        built = target(trial_optimizer, **kwargs)
    except Exception as exc:
        args = ", ".join(["optimizer", *(f"{k}={v!r}" for k, v in kwargs.items())])
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(f"building the scheduler {name}({args}) raised {type(exc).__name__}: {first}",
                          where=where, key="scheduler",
                          hint=f"fix the keys under 'scheduler:' so they fit {name}{_safe_sig(target)}; the optimizer "
                               "is passed first by nandoctor, and 'interval' is read by nandoctor itself.") from None
    if not callable(getattr(built, "step", None)):
        raise ConfigError(f"the scheduler target {name} returned a {type(built).__name__}, which has no step() method.",
                          where=where, key="scheduler",
                          hint="return the scheduler object (e.g. torch.optim.lr_scheduler.LambdaLR(optimizer, ...)).")
    return functools.partial(target, **kwargs) if kwargs else target


def _name_of(fn) -> str:
    if isinstance(fn, functools.partial):
        fn = fn.func
    return type(fn).__name__ if not (inspect.isfunction(fn) or inspect.isbuiltin(fn)) else fn.__name__


_LIBRARY_ROOTS = _library_roots()
_NANDOCTOR_ROOT = str(Path(__file__).resolve().parent).replace("\\", "/") + "/"
