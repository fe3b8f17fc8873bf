"""YAML config -> validated ``Config``.

The schema is SPEC section 1. Validation happens before anything is imported or
trained: a missing file, a YAML syntax error, a missing required key and an
unknown key are all ``ConfigError`` with the file and line and a hint.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nandoctor.errors import ConfigError

# The schema: key -> required?  ``data`` has its own block below.
TOP_KEYS = {
    "model": True,        # nn.Module class or factory
    "data": True,         # train (+ val) datasets and loader settings
    "loss": True,         # nn.Module class or callable(outputs, targets)
    "optimizer": True,    # torch.optim class; params injected
    "train_step": False,  # fn(model, batch, loss_fn, optimizer) -> loss
    "seed": False,        # int, default 0
    "device": False,      # auto | cpu | cuda | cuda:N
    # the training set-ups people use (0.2): each changes how the probes train, as the user's loop does
    "scheduler": False,   # torch.optim.lr_scheduler class (or callable(optimizer, **kw)); optimizer injected
    "precision": False,   # fp32 (default) | bf16 | fp16: autocast as the user trains
    "grad_scaler": False,  # fp16 only: torch.amp.GradScaler, default true
    "grad_clip": False,   # clip_grad_norm_ max norm, a positive number
    "accumulate": False,  # gradient accumulation: the optimizer steps every N batches
}
DATA_KEYS = {
    "train": True,
    "val": False,
    "batch_size": False,   # default 32
    "shuffle": False,      # default true
    "drop_last": False,    # default false: the DataLoader keeps the epoch's last, smaller batch
    "num_workers": False,  # default 0
    "collate_fn": False,   # a function (bound) or class passed to the DataLoader
}
TARGET_BLOCKS = ("model", "loss", "optimizer", "train_step", "scheduler")
PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULER_INTERVALS = ("step", "epoch")  # how often the user calls scheduler.step()

DEFAULT_BATCH_SIZE = 32
DEFAULT_SEED = 0
DEFAULT_PRECISION = "fp32"
DEFAULT_INTERVAL = "step"
MAX_SEED = 2 ** 32 - 1  # numpy's and torch's seeds both take it (torch overflows past 2**64)


@dataclass
class Config:
    """A validated config. ``*_spec`` are raw ``{'_target_': ..., **kwargs}`` mappings."""

    path: Path
    model_spec: dict
    train_spec: dict
    loss_spec: dict
    optimizer_spec: dict
    val_spec: dict | None = None
    train_step_spec: dict | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    shuffle: bool = True
    drop_last: bool = False
    num_workers: int = 0
    seed: int = DEFAULT_SEED
    device: str = "auto"
    collate_spec: dict | None = None      # data.collate_fn
    scheduler_spec: dict | None = None    # without 'interval'
    scheduler_interval: str = DEFAULT_INTERVAL
    precision: str = DEFAULT_PRECISION
    grad_scaler: bool = True
    grad_clip: float | None = None
    accumulate: int = 1
    lines: dict[str, int] = field(default_factory=dict)
    given: str = ""  # the path as the user typed it (shown in reports)

    @property
    def root(self) -> Path:
        """The folder relative file targets and data paths are resolved against."""
        return self.path.parent

    def where(self, key: str) -> str:
        """``config.yaml, line 7`` for a dotted key, or just the file."""
        line = self.lines.get(key)
        from nandoctor.loading import display_path
        return f"{display_path(self.path)}, line {line}" if line else display_path(self.path)


def _line_map(node: yaml.Node, prefix: str = "", out: dict | None = None, seen: set | None = None) -> dict[str, int]:
    """Dotted key -> 1-based line of that key, from a composed YAML node tree. Each node is read once:
    aliases (``*name``) point back at nodes already read, so a "billion laughs" file stays linear."""
    out = {} if out is None else out
    seen = set() if seen is None else seen
    if isinstance(node, yaml.MappingNode) and id(node) not in seen:
        seen.add(id(node))
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            out.setdefault(key, key_node.start_mark.line + 1)
            _line_map(value_node, key + ".", out, seen)
    return out


def _recursive(value: Any, key: str, cfg_path: Path, lines: dict, ancestors: tuple = (),
               done: set | None = None) -> None:
    """A ConfigError naming the key whose value contains itself (``&a [*a]``): nothing could use it.
    A block shared by aliases is walked once."""
    done = set() if done is None else done
    if not isinstance(value, (dict, list)) or id(value) in done:
        return
    if any(value is a for a in ancestors):
        where = f"{cfg_path}, line {lines[key]}" if key in lines else str(cfg_path)
        raise ConfigError(f"'{key}' contains itself (a YAML anchor used inside its own value).", where=where,
                          hint="write the value out, or point the alias at another block.")
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for k, v in items:
        _recursive(v, f"{key}.{k}" if key else str(k), cfg_path, lines, ancestors + (value,), done)
    done.add(id(value))


def _did_you_mean(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def _check_keys(block: dict, schema: dict, prefix: str, cfg_path: Path, lines: dict) -> None:
    for key in block:
        if key not in schema:
            dotted = f"{prefix}{key}"
            line = lines.get(dotted)
            where = f"{cfg_path}, line {line}" if line else str(cfg_path)
            raise ConfigError(
                f"unknown config key '{dotted}'.{_did_you_mean(str(key), schema)}",
                where=where,
                hint=f"the keys allowed here are: {', '.join(schema)}.",
            )
    for key, required in schema.items():
        if required and key not in block:
            parent = prefix.rstrip(".") or "the top level"
            raise ConfigError(
                f"the required key '{prefix}{key}' is missing (in {parent}).",
                where=str(cfg_path),
                hint=_REQUIRED_HINTS.get(f"{prefix}{key}", "add it; see configs/ for examples."),
            )


_REQUIRED_HINTS = {
    "model": "add 'model:' with '_target_: your_file.py:YourNet' (an nn.Module class or a factory).",
    "data": "add 'data:' with a 'train:' dataset, e.g. '_target_: your_file.py:make_dataset'.",
    "data.train": "add 'train:' under 'data:' naming a map-style Dataset or a factory of one.",
    "loss": "add 'loss:' with e.g. '_target_: torch.nn.CrossEntropyLoss'.",
    "optimizer": "add 'optimizer:' with e.g. '_target_: torch.optim.Adam' and 'lr: 1.0e-3'.",
}


def _target_block(value: Any, key: str, cfg_path: Path, lines: dict) -> dict:
    """A block that names an object: a mapping with ``_target_`` (or a bare string)."""
    if isinstance(value, str):
        return {"_target_": value}
    where = f"{cfg_path}, line {lines[key]}" if key in lines else str(cfg_path)
    if not isinstance(value, dict):
        raise ConfigError(f"'{key}' must be a mapping with a '_target_', not {type(value).__name__}.",
                          where=where, hint=f"write '{key}:' then an indented '_target_: module.Name'.")
    if "_target_" not in value:
        raise ConfigError(f"'{key}' has no '_target_'.", where=where,
                          hint="name the class or function, e.g. '_target_: torch.optim.Adam' or "
                               "'_target_: net.py:Net' for a file beside the config.")
    if not isinstance(value["_target_"], str) or not value["_target_"].strip():
        raise ConfigError(f"'{key}._target_' must be a non-empty string.", where=where,
                          hint="use 'package.module.Name', 'package.module:Name' or 'file.py:Name'.")
    for arg in value:
        if not isinstance(arg, str) or not arg.isidentifier():
            raise ConfigError(f"'{key}' has the key {arg!r}, which cannot be a keyword argument.", where=where,
                              hint="the keys beside '_target_' are passed as keyword arguments: use parameter names.")
    return dict(value)


def load_config(path: str | Path) -> Config:
    """Read and validate a config file. Raises ``ConfigError`` with file/line and a hint."""
    cfg_path = Path(path)
    if not cfg_path.exists():
        raise ConfigError(f"config file '{cfg_path}' does not exist.",
                          hint="check the path; example configs live in the configs/ folder.")
    if cfg_path.is_dir():
        raise ConfigError(f"'{cfg_path}' is a folder, not a config file.",
                          hint="pass the YAML file itself, e.g. configs/classification.yaml.")
    cfg_path = cfg_path.resolve()
    try:
        text = cfg_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the config file: {exc}.", where=str(cfg_path),
                          hint="make sure it is a readable UTF-8 text file.") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = (f"{cfg_path}, line {mark.line + 1}, column {mark.column + 1}" if mark
                 else str(cfg_path))
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"YAML syntax error: {problem}.", where=where,
                          hint="check the indentation and the ':' after each key at that line.") from None
    if raw is None:
        raise ConfigError("the config file is empty.", where=str(cfg_path),
                          hint="start from one of the example configs in configs/.")
    if not isinstance(raw, dict):
        raise ConfigError(f"the config must be a mapping of keys, not a {type(raw).__name__}.",
                          where=str(cfg_path), hint="start from one of the example configs in configs/.")
    lines = _line_map(node) if node is not None else {}

    # 1. keys
    _check_keys(raw, TOP_KEYS, "", cfg_path, lines)
    _recursive(raw, "", cfg_path, lines)
    for key, required in TOP_KEYS.items():
        if required and raw[key] is None:
            where = f"{cfg_path}, line {lines[key]}" if key in lines else str(cfg_path)
            raise ConfigError(f"the required key '{key}' is empty (null).", where=where,
                              hint=_REQUIRED_HINTS.get(key, "give it a value; see configs/ for examples."))
    data = raw["data"]
    if not isinstance(data, dict):
        raise ConfigError("'data' must be a mapping with a 'train' dataset.",
                          where=f"{cfg_path}, line {lines.get('data', '?')}",
                          hint="write 'data:' then an indented 'train:' block with a '_target_'.")
    _check_keys(data, DATA_KEYS, "data.", cfg_path, lines)

    # 2. object blocks
    specs = {k: _target_block(raw[k], k, cfg_path, lines) for k in TARGET_BLOCKS if raw.get(k) is not None}
    train_spec = _target_block(data["train"], "data.train", cfg_path, lines)
    val_spec = _target_block(data["val"], "data.val", cfg_path, lines) if data.get("val") is not None else None
    collate_spec = (_target_block(data["collate_fn"], "data.collate_fn", cfg_path, lines)
                    if data.get("collate_fn") is not None else None)

    # 3. scalars
    def scalar(value, key, kind, check, hint):
        if isinstance(value, bool) and kind is not bool or not isinstance(value, kind) or not check(value):
            where = f"{cfg_path}, line {lines[key]}" if key in lines else str(cfg_path)
            raise ConfigError(f"'{key}' has the value {value!r}, which is not allowed.", where=where, hint=hint)
        return value

    batch_size = scalar(data.get("batch_size", DEFAULT_BATCH_SIZE), "data.batch_size", int,
                        lambda v: v >= 1, "use a whole number of samples per batch, 1 or more.")
    shuffle = scalar(data.get("shuffle", True), "data.shuffle", bool, lambda v: True, "use true or false.")
    drop_last = scalar(data.get("drop_last", False), "data.drop_last", bool, lambda v: True,
                       "use true when your DataLoader is built with drop_last=True (the epoch's last, smaller "
                       "batch is skipped), false (the default) when it keeps it.")
    num_workers = scalar(data.get("num_workers", 0), "data.num_workers", int, lambda v: v >= 0,
                         "use 0 (load in the main process) or a positive number of workers.")
    seed = scalar(raw.get("seed", DEFAULT_SEED), "seed", int, lambda v: 0 <= v <= MAX_SEED,
                  f"use a whole number from 0 to {MAX_SEED}.")
    device = scalar(str(raw.get("device", "auto")), "device", str,
                    lambda v: v in ("auto", "cpu", "cuda", "mps") or v.startswith("cuda:"),
                    "use auto, cpu, cuda or cuda:N.")

    # 4. the training set-up (0.2)
    interval = DEFAULT_INTERVAL
    scheduler_spec = specs.get("scheduler")
    if scheduler_spec is not None:
        interval = scalar(scheduler_spec.pop("interval", DEFAULT_INTERVAL), "scheduler.interval", str,
                          lambda v: v in SCHEDULER_INTERVALS,
                          "use 'step' when you call scheduler.step() after every optimizer step, 'epoch' when "
                          "you call it once per pass over the training set.")
    precision = scalar(raw.get("precision", DEFAULT_PRECISION), "precision", str, lambda v: v in PRECISIONS,
                       "use fp32 (no autocast), bf16 or fp16 (torch.autocast with that dtype).")
    grad_scaler = scalar(raw.get("grad_scaler", True), "grad_scaler", bool, lambda v: True,
                         "use true or false (it only matters with precision: fp16).")
    grad_clip = raw.get("grad_clip")
    if grad_clip is not None:
        grad_clip = float(scalar(grad_clip, "grad_clip", (int, float), lambda v: v > 0 and v == v and v != float("inf"),
                                 "give the max_norm you pass to clip_grad_norm_, a positive number such as 1.0; "
                                 "leave the key out for no clipping."))
    accumulate = scalar(raw.get("accumulate", 1), "accumulate", int, lambda v: v >= 1,
                        "give the number of batches whose gradients add up before each optimizer step: "
                        "a whole number, 1 (no accumulation) or more.")

    return Config(path=cfg_path, model_spec=specs["model"], train_spec=train_spec, loss_spec=specs["loss"],
                  optimizer_spec=specs["optimizer"], val_spec=val_spec, train_step_spec=specs.get("train_step"),
                  batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, num_workers=num_workers, seed=seed,
                  device=device,
                  collate_spec=collate_spec, scheduler_spec=scheduler_spec, scheduler_interval=interval,
                  precision=precision, grad_scaler=grad_scaler, grad_clip=grad_clip, accumulate=accumulate,
                  lines=lines, given=str(path))
