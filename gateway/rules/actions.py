"""Actions: what a rule does to a value the caller may not see in clear.

Rules of this module (the full table with examples is in ``docs/rules.md``):

* every action has a defined result for every JSON type and never raises;
* ``keep`` leaves the value; ``drop`` removes it (done by the walker, which owns
  the parent); ``redact`` gives :data:`MARKER` whatever the type;
* ``mask``, ``hash`` and ``round`` transform scalars; a structure (object or
  array) they cannot transform is replaced by :data:`MARKER` (fail closed);
  ``null`` stays ``null`` (nothing to hide);
* numbers under ``mask``/``hash`` are treated as their JSON text
  (``6222021234567890123`` masks like the string), and the result is a string;
  ``round`` keeps the type (int stays int when integral, Number stays Number);
* ``hash`` is HMAC-SHA256 with the rule set's key over the UTF-8 text, shown as
  ``h:`` + the first ``length`` hex digits (default 16). Equal texts give equal
  pseudonyms in every rule and policy, so records can still be joined.

Parsing is table driven (:data:`_PARSERS`); problems come back as
``(key path relative to the action, message)`` for the loader to place.
"""

from __future__ import annotations

import hashlib
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Context, Decimal, InvalidOperation
from typing import Any

from gateway.errors import KeyPath
from gateway.jsoncodec import Number
from gateway.rules.presets import PRESETS, MaskFn, generic

MARKER = "[REDACTED]"
HASH_PREFIX = "h:"
ACTION_NAMES = ("keep", "drop", "redact", "mask", "hash", "round")
Transform = Callable[[Any], Any]
Problem = tuple[KeyPath, str]

# Which audit counter an action feeds, and how strong it is when two rules select
# the same value (the stronger wins; see loader docs).
COUNTER = {
    "keep": "revealed",
    "drop": "dropped",
    "redact": "redacted",
    "hash": "hashed",
    "mask": "masked",
    "round": "masked",
}
SEVERITY = {"keep": 0, "round": 2, "mask": 2, "hash": 3, "redact": 4, "drop": 5}


@dataclass(frozen=True, slots=True)
class Action:
    """A parsed action. ``transform`` is None for ``keep`` and ``drop``."""

    kind: str
    text: str
    transform: Transform | None

    @property
    def counter(self) -> str:
        return COUNTER[self.kind]

    @property
    def severity(self) -> int:
        return SEVERITY[self.kind]


KEEP = Action("keep", "keep", None)
DROP = Action("drop", "drop", None)


# What the native pass (gateway.rules.native) needs to do a transform itself:
# ("redact",), ("hash", key, length) or ("mask", variant, first, last, char).
# A transform without an entry is called back as a Python function.
NativeSpec = tuple[Any, ...]
_NATIVE: weakref.WeakKeyDictionary[Transform, NativeSpec] = weakref.WeakKeyDictionary()


def native_spec(transform: Transform) -> NativeSpec | None:
    return _NATIVE.get(transform)


def _redact(v: Any) -> Any:
    return MARKER


_NATIVE[_redact] = ("redact",)


REDACT = Action("redact", "redact", _redact)


def _float_text(v: float) -> str | None:
    return repr(v) if v == v and v not in (float("inf"), float("-inf")) else None


def scalar_text(v: Any) -> str | None:
    """The JSON text a mask or hash works on: strings and numbers only."""
    t = type(v)
    if t is str:
        return v  # type: ignore[no-any-return]
    if t is int:
        return str(v)
    if t is Number:
        return v.text  # type: ignore[no-any-return]
    if t is float:
        return _float_text(v)
    return None


def mask_transform(fn: MaskFn) -> Transform:
    def transform(v: Any) -> Any:
        if type(v) is str:
            return fn(v)
        if v is None:
            return None
        text = scalar_text(v)
        return MARKER if text is None else fn(text)

    return transform


def hmac_sha256_hex(key: bytes) -> Callable[[bytes], str]:
    """HMAC-SHA256 (RFC 2104) with the key pads hashed once: ~3x faster than
    ``hmac.digest`` per call, and equal to it (tests compare the two)."""
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key.ljust(64, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def mac(msg: bytes) -> str:
        h = inner.copy()
        h.update(msg)
        o = outer.copy()
        o.update(h.digest())
        return o.hexdigest()

    return mac


def hash_transform(key: bytes, length: int) -> Transform:
    mac = hmac_sha256_hex(key)

    def digest(text: str) -> str:
        return HASH_PREFIX + mac(text.encode("utf-8", "surrogatepass"))[:length]

    def transform(v: Any) -> Any:
        if type(v) is str:
            return digest(v)
        if v is None:
            return None
        if type(v) is bool:
            return digest("true" if v else "false")
        text = scalar_text(v)
        return MARKER if text is None else digest(text)

    _NATIVE[transform] = ("hash", key, length)
    return transform


_NUMERIC_TEXT = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_CTX = Context(prec=200)


def round_transform(digits: int | None, step: Decimal | None, int_step: int | None) -> Transform:
    """Round half-up to ``digits`` places, or floor to a multiple of ``step``.

    ``int_step`` (an integer step written as such) takes a shortcut for ints
    and non-negative plain decimals; it gives the same text as the Decimal path.
    """
    quantum = Decimal(1).scaleb(-(digits or 0))

    def rnd(d: Decimal) -> Decimal:
        if step is not None:
            r = _CTX.multiply(_CTX.divide(d, step).to_integral_value(ROUND_FLOOR), step)
        else:
            r = d.quantize(quantum, ROUND_HALF_UP, _CTX)
        return r.copy_abs() if r.is_zero() else r

    def transform(v: Any) -> Any:
        t = type(v)
        try:
            if t is int:
                if int_step is not None:
                    return v // int_step * int_step
                r = rnd(Decimal(v))
                return int(r) if r == r.to_integral_value() else Number(format(r, "f"))
            if t is Number:
                text = v.text
                if int_step is not None:
                    whole, _, frac = text.partition(".")
                    if whole.isascii() and whole.isdigit() and (not frac or frac.isdigit()):
                        return Number(str(int(whole) // int_step * int_step))
                return Number(format(rnd(Decimal(text)), "f"))
            if t is float:
                ftext = _float_text(v)
                return MARKER if ftext is None else float(rnd(Decimal(ftext)))
            if t is str:
                return format(rnd(Decimal(v)), "f") if _NUMERIC_TEXT.fullmatch(v) else MARKER
        except (InvalidOperation, ValueError, OverflowError):
            return MARKER
        return None if v is None else MARKER

    return transform


# -- parsing ----------------------------------------------------------------------
def _nonneg_int(v: Any, lo: int, hi: int) -> bool:
    return type(v) is int and lo <= v <= hi


def _parse_simple(kind: str) -> Callable[[Any, bytes], tuple[Action | None, list[Problem]]]:
    def parse(opts: Any, key: bytes) -> tuple[Action | None, list[Problem]]:
        return None, [((kind,), f"{kind} takes no options; write `action: {kind}`")]

    return parse


_MASK_KEYS = ("preset", "keep_first", "keep_last", "char")


def _parse_mask(opts: Any, key: bytes) -> tuple[Action | None, list[Problem]]:
    short_form = isinstance(opts, str)
    if short_form:
        opts = {"preset": opts}
    if not isinstance(opts, dict):
        return None, [
            (("mask",), "expected a preset name or {preset, keep_first, keep_last, char}")
        ]
    problems: list[Problem] = []
    for k in opts:
        if k not in _MASK_KEYS:
            problems.append((("mask", str(k)), f"unknown key (allowed: {', '.join(_MASK_KEYS)})"))
    preset_name = opts.get("preset")
    first, last, char = opts.get("keep_first"), opts.get("keep_last"), opts.get("char", "*")
    for name, v in (("keep_first", first), ("keep_last", last)):
        if v is not None and not _nonneg_int(v, 0, 1000):
            problems.append((("mask", name), "must be an integer from 0 to 1000"))
    if not (isinstance(char, str) and len(char) == 1):
        problems.append((("mask", "char"), "must be a single character"))
    build: Callable[[int | None, int | None, str], MaskFn] = generic
    if preset_name is not None:
        preset = PRESETS.get(preset_name) if isinstance(preset_name, str) else None
        where: KeyPath = ("mask",) if short_form else ("mask", "preset")
        if preset is None:
            problems.append(
                (where, f"unknown preset {preset_name!r} (one of: {', '.join(PRESETS)})")
            )
        else:
            build = preset.build
            for name in ("keep_first", "keep_last"):
                if name in opts and name not in preset.overrides:
                    problems.append((("mask", name), f"preset {preset_name} does not take {name}"))
    elif first is None and last is None:
        problems.append((("mask",), "needs a preset or keep_first/keep_last"))
    if problems:
        return None, problems
    parts = ["mask"]
    if preset_name is not None:
        parts.append(str(preset_name))
    parts += [f"{k}={opts[k]}" for k in ("keep_first", "keep_last") if k in opts]
    if char != "*":
        parts.append(f"char={char!r}")
    fn = build(first, last, char)
    transform = mask_transform(fn)
    variant = _NATIVE_MASKS.get(preset_name)
    if variant is not None:
        kind, default_first, default_last = variant
        _NATIVE[transform] = (
            "mask",
            kind,
            default_first if first is None else first,
            default_last if last is None else last,
            char,
        )
    return Action("mask", " ".join(parts), transform), []


# Masks the native pass does itself: variant and default keep_first/keep_last
# (-1: cn_id decides by length). cn_name and address are called back.
_NATIVE_MASKS: dict[str | None, tuple[str, int, int]] = {
    None: ("ends", 0, 0),
    "cn_id": ("cn_id", -1, -1),
    "cn_phone": ("phone", 3, 4),
    "bank_card": ("sig", 6, 4),
    "email": ("email", 1, 0),
    "cn_name": ("cn_name", 0, 0),
    "address": ("address", 0, 0),
}


def _parse_hash(opts: Any, key: bytes) -> tuple[Action | None, list[Problem]]:
    length = 16
    problems: list[Problem] = []
    if opts is not None:
        if not isinstance(opts, dict) or set(opts) - {"length"}:
            return None, [(("hash",), "expected {length: N}")]
        length = opts.get("length", 16)
        if not _nonneg_int(length, 8, 64):
            problems.append((("hash", "length"), "must be an integer from 8 to 64"))
    if not key:
        problems.append(((), "hash needs a key, and the rule set was loaded without one"))
    if problems:
        return None, problems
    text = "hash" if length == 16 else f"hash length={length}"
    return Action("hash", text, hash_transform(key, length)), []


def _parse_round(opts: Any, key: bytes) -> tuple[Action | None, list[Problem]]:
    if opts is None:
        opts = {"digits": 0}
    elif type(opts) is int:
        opts = {"digits": opts}
    if not isinstance(opts, dict) or len(opts) != 1 or not set(opts) <= {"digits", "step"}:
        return None, [(("round",), "expected digits N, {digits: N} or {step: S}")]
    if "digits" in opts:
        digits = opts["digits"]
        if type(digits) is not int or not -18 <= digits <= 18:
            return None, [(("round", "digits"), "must be an integer from -18 to 18")]
        return Action("round", f"round digits={digits}", round_transform(digits, None, None)), []
    step = opts["step"]
    if type(step) not in (int, float) or not step > 0 or step == float("inf"):
        return None, [(("round", "step"), "must be a positive number")]
    int_step = step if type(step) is int else None
    transform = round_transform(None, Decimal(str(step)), int_step)
    if int_step is not None:
        _NATIVE[transform] = ("round_step", int_step)
    return Action("round", f"round step={step}", transform), []


_PARSERS: dict[str, Callable[[Any, bytes], tuple[Action | None, list[Problem]]]] = {
    "keep": _parse_simple("keep"),
    "drop": _parse_simple("drop"),
    "redact": _parse_simple("redact"),
    "mask": _parse_mask,
    "hash": _parse_hash,
    "round": _parse_round,
}
_BARE: dict[str, Callable[[bytes], tuple[Action | None, list[Problem]]]] = {
    "keep": lambda key: (KEEP, []),
    "drop": lambda key: (DROP, []),
    "redact": lambda key: (REDACT, []),
    "hash": lambda key: _parse_hash(None, key),
    "round": lambda key: _parse_round(None, key),
    "mask": lambda key: (None, [((), "mask needs a preset, e.g. {mask: cn_phone}")]),
}


def is_single_action(raw: Any) -> bool:
    """A string, or a one-key mapping whose key is an action name."""
    return isinstance(raw, str) or (
        isinstance(raw, dict) and len(raw) == 1 and next(iter(raw)) in ACTION_NAMES
    )


def parse_action(raw: Any, key: bytes) -> tuple[Action | None, list[Problem]]:
    """Parse one action (not a per-level map)."""
    if isinstance(raw, str):
        bare = _BARE.get(raw)
        if bare is None:
            return None, [((), f"unknown action {raw!r} (one of: {', '.join(ACTION_NAMES)})")]
        return bare(key)
    if isinstance(raw, dict) and len(raw) == 1:
        name, opts = next(iter(raw.items()))
        parser = _PARSERS.get(name)
        if parser is not None:
            return parser(opts, key)
    return None, [((), f"expected an action ({', '.join(ACTION_NAMES)}) or a per-level map")]
