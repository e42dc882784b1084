"""shardstream.LoadError: the one exception the fill core raises."""

from __future__ import annotations

from typing import Optional

try:  # code written for safetensors catches ours too
    from safetensors import SafetensorError as _SafetensorError

    _BASES: tuple = (ValueError, _SafetensorError)
except Exception:  # noqa: BLE001 - safetensors absent or broken: plain ValueError
    _BASES = (ValueError,)


class LoadError(*_BASES):  # type: ignore[misc]
    """A checkpoint or load that shardstream refuses.

    `str(error)` is the CLI's one-line message, ``FILE: tensor 'NAME': CAUSE (rule: RULE)``, or,
    where safe_open and load_file refuse what safetensors refuses (a closed handle, a missing
    tensor, a bad framework, device or slice), safetensors' own message.
    Attributes: `rule` (a stable token such as ``"data-offsets"``, ``"shape"``, ``"device"``,
    ``"cancelled"``), `file`, `tensor` and `offset` (None where unknown), `code` (the status code
    name) and `errno` (0 unless a system call failed). A subclass of `ValueError`, and of
    `safetensors.SafetensorError` when safetensors is importable.
    """

    def __init__(self, message: str, *, rule: str, file: Optional[str] = None,
                 tensor: Optional[str] = None, offset: Optional[int] = None,
                 code: str = "invalid-argument", errno: int = 0) -> None:
        super().__init__(message)
        self.rule = rule
        self.file = file
        self.tensor = tensor
        self.offset = offset
        self.code = code
        self.errno = errno


def _line(message: str, rule: str, file: Optional[str], tensor: Optional[str]) -> str:
    parts = []
    if file:
        parts.append(f"{file}: ")
    if tensor is not None:
        parts.append(f"tensor '{tensor}': ")
    parts.append(f"{message} (rule: {rule})")
    return "".join(parts)


def error(rule: str, message: str, *, file: Optional[str] = None, tensor: Optional[str] = None,
          offset: Optional[int] = None) -> LoadError:
    """A LoadError raised by the Python layers, worded as the core words its own."""
    return LoadError(_line(message, rule, file, tensor), rule=rule, file=file, tensor=tensor,
                     offset=offset)


def safetensors_error(text: str, *, rule: str, file: Optional[str] = None,
                      tensor: Optional[str] = None) -> LoadError:
    """A LoadError for a refusal that safetensors 0.8 makes too, worded as safetensors words it:
    `str(error) == text`, so code matching safetensors' messages keeps working. The file, tensor
    and rule stay in the attributes and, where Python has notes (3.11+), in the traceback as the
    CLI's line."""
    exc = LoadError(text, rule=rule, file=file, tensor=tensor)
    if hasattr(exc, "add_note") and (file or tensor is not None):
        exc.add_note(_line(text, rule, file, tensor))
    return exc


def _from_core(code: str, rule: str, message: str, path: str, tensor: str, offset, err: int,
               text: str) -> LoadError:
    return LoadError(text, rule=rule, file=path or None, tensor=tensor or None, offset=offset,
                     code=code, errno=err)
