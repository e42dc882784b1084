"""load_into: a checkpoint straight into a torch.nn.Module's parameters and persistent buffers."""

from __future__ import annotations

import re
import time
from typing import Any, Callable, Dict, List, Optional, Union

import torch

from . import _progress
from ._errors import error
from ._fill import (Checkpoint, LoadReport, PathLike, check_cuda, fill, open_checkpoint,
                    parse_device)


class _Slot:
    """One tensor identity of the module and every (module, attribute) that holds it."""

    def __init__(self, tensor: torch.Tensor, kind: str) -> None:
        self.tensor = tensor
        self.kind = kind  # "param" or "buffer"
        self.keys: List[str] = []     # as a parameter or persistent buffer
        self.np_keys: List[str] = []  # as a non-persistent buffer
        self.owners: list = []

    @property
    def persistent(self) -> bool:
        return bool(self.keys)


def _slots(module: torch.nn.Module) -> List[_Slot]:
    by_id: Dict[int, _Slot] = {}
    order: List[_Slot] = []
    for prefix, mod in module.named_modules(remove_duplicate=False):
        dot = f"{prefix}." if prefix else ""
        for kind, table in (("param", mod._parameters), ("buffer", mod._buffers)):
            for attr, t in table.items():
                if t is None:
                    continue
                slot = by_id.get(id(t))
                if slot is None:
                    slot = by_id[id(t)] = _Slot(t, kind)
                    order.append(slot)
                persistent = kind == "param" or attr not in mod._non_persistent_buffers_set
                (slot.keys if persistent else slot.np_keys).append(dot + attr)
                slot.owners.append((mod, attr, persistent))
    return order


def _map_keys(ck: Checkpoint, key_mapping: Optional[Dict[str, str]]) -> Dict[str, str]:
    """model key → checkpoint key, with transformers 5's key_mapping semantics: the patterns are
    applied in order to each checkpoint key, every one that matches rewrites its first match
    (so renamings may chain)."""
    out: Dict[str, str] = {}
    compiled = [(re.compile(p), r) for p, r in (key_mapping or {}).items()]
    for ck_key in ck.entries:
        key = ck_key
        for pattern, replacement in compiled:
            key = pattern.sub(replacement, key, count=1)
        if key in out:
            raise error("key-mapping", f"checkpoint keys '{out[key]}' and '{ck_key}' both map to "
                        f"'{key}'", file=ck.path)
        out[key] = ck_key
    return out


def _names(keys: List[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_into(module: torch.nn.Module, checkpoint: Union[PathLike, Checkpoint], *,
              device: Union[None, str, int, torch.device] = None, strict: bool = True,
              key_mapping: Optional[Dict[str, str]] = None,
              reinit: Optional[Callable[[torch.nn.Module], object]] = None,
              progress: _progress.ProgressArg = None, process_group: Any = None,
              shard: Any = None) -> LoadReport:
    """Fills `module`'s parameters and persistent buffers from a checkpoint, in place: no
    intermediate dict, no second copy.

    Tensors on the meta device are first materialised on `device`, uninitialised, one new tensor
    per original tensor identity, so tied weights stay tied and are read once (`device=None` with
    meta tensors: LoadError rule "device"). Tensors already on a device are filled where they are.
    Non-persistent buffers are left to `reinit(module)`, called after the load (a meta module with
    non-persistent buffers and no `reinit`: rule "reinit"). `key_mapping`: regex → replacement
    applied to checkpoint keys, as in transformers. `strict` refuses missing, unexpected and
    mismatched keys (rule "strict") before any data is read; otherwise what fits is loaded and the
    rest listed in the report. Dtypes that differ are cast (floating point).

    `process_group`, `shard`: as in fill(); a sharded key's parameter has this rank's part's
    shape. A refusal on any rank ends the load on every rank (rule "distributed")."""
    if process_group is None:
        if shard is not None:
            raise error("option", "shard= needs process_group=")
        return _load_into(module, checkpoint, device, strict, key_mapping, reinit, progress,
                          None, None)
    from . import _distributed

    with _distributed.preparing(process_group):
        return _load_into(module, checkpoint, device, strict, key_mapping, reinit, progress,
                          process_group, shard)


def _load_into(module: torch.nn.Module, checkpoint: Union[PathLike, Checkpoint],
               device: Union[None, str, int, torch.device], strict: bool,
               key_mapping: Optional[Dict[str, str]],
               reinit: Optional[Callable[[torch.nn.Module], object]],
               progress: _progress.ProgressArg, process_group: Any, shard: Any) -> LoadReport:
    t0 = time.perf_counter()
    ck = open_checkpoint(checkpoint)
    target_device = parse_device(device) if device is not None else None
    slots = _slots(module)
    mapped = _map_keys(ck, key_mapping)

    missing: List[str] = []
    mismatched: List[str] = []
    tied: List[List[str]] = []
    non_persistent: List[str] = []
    used = set()
    plan = []  # (slot, checkpoint key)
    for slot in slots:
        if not slot.persistent:
            non_persistent.extend(slot.np_keys)
            continue
        if len(slot.keys) > 1:
            tied.append(list(slot.keys))
        present = [k for k in slot.keys if k in mapped]
        for k in present:
            used.add(k)
        if not present:
            missing.extend(slot.keys)
            continue
        e = ck.entry(mapped[present[0]])
        shape = e.torch_layout()[1]
        if shard is not None:
            from . import _distributed

            spec = _distributed.shard_of(shard, e.name, process_group)
            shape = _distributed.shard_shape(spec, shape, e.name, ck.file_of(e))
        if tuple(slot.tensor.shape) != shape:
            mismatched.append(present[0])
            continue
        plan.append((slot, mapped[present[0]]))
    unexpected = [mapped[k] for k in mapped if k not in used]
    if strict and (missing or unexpected or mismatched):
        parts = []
        if missing:
            parts.append(f"missing keys: {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_names(unexpected)}")
        if mismatched:
            parts.append("mismatched shapes: " + _names(
                [f"{k} (checkpoint {list(ck.entries[mapped[k]].torch_layout()[1])}, module "
                 f"{list(_find(slots, k).tensor.shape)})" for k in mismatched]))
        raise error("strict", "; ".join(parts) + " (strict=False loads what fits)", file=ck.path)

    meta = [s for s in slots if s.tensor.is_meta]
    if meta and target_device is None:
        raise error("device", "the module has tensors on the meta device: pass device= to "
                    f"materialise them (e.g. {(meta[0].keys or meta[0].np_keys)[0]})")
    if any(not s.persistent for s in meta) and reinit is None:
        raise error("reinit", "non-persistent buffers on the meta device need reinit(module) "
                    f"to compute them: {_names([k for s in meta if not s.persistent for k in s.np_keys])}")
    for s in slots:
        if s.persistent and not s.tensor.is_meta and target_device is not None \
                and not _same_device(s.tensor.device, target_device):
            raise error("device", f"'{s.keys[0]}' is on {s.tensor.device}, not {target_device}: "
                        "load onto a meta module or move it first")
    t_plan = time.perf_counter()

    for s in meta:
        if target_device.type == "cuda":
            check_cuda(target_device)
        fresh = torch.empty(s.tensor.shape, dtype=s.tensor.dtype, device=target_device)
        if s.kind == "param":
            fresh = torch.nn.Parameter(fresh, requires_grad=s.tensor.requires_grad)
        for mod, attr, _ in s.owners:
            (mod._parameters if s.kind == "param" else mod._buffers)[attr] = fresh
        s.tensor = fresh
    t_mat = time.perf_counter()

    fill_targets = [(ck_key, None, slot.tensor.detach()) for slot, ck_key in plan]
    report = fill(ck, fill_targets, progress=progress, process_group=process_group, shard=shard)
    t_read = time.perf_counter()
    if reinit is not None:
        reinit(module)
    t_end = time.perf_counter()
    report.stages = ([("plan", t_plan - t0), ("materialize", t_mat - t_plan)] + report.stages
                     + [("reinit", t_end - t_read)])
    report.seconds = t_end - t0
    report.missing = missing
    report.unexpected = unexpected
    report.mismatched = mismatched
    report.tied = tied
    report.non_persistent = non_persistent
    return report


def _same_device(have: torch.device, want: torch.device) -> bool:
    if have.type != want.type:
        return False
    return want.index is None or have.index == want.index


def _find(slots: List[_Slot], key: str) -> _Slot:
    return next(s for s in slots if key in s.keys)
