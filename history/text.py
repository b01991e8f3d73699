"""Text that is not valid Unicode, and JSON nested too deep: decided once, where it comes in. No Flask import.

A Python string can hold a lone surrogate (JSON's ``"\\ud800"``, or a file name's undecodable bytes read
with surrogateescape) that UTF-8 cannot encode: stored, it would break every page that shows it. So:
- request input (JSON bodies, forms, imports) holding one is refused, naming the field (``find_invalid``);
- text from elsewhere that we only report (ComfyUI's answers, names of files on disk) is repaired: each
  lone surrogate becomes U+FFFD (``repair``);
- rendering repairs whatever a store written before these rules may still hold (``repair`` again).
Every walk here is iterative, so a value nested deeper than the interpreter's recursion limit cannot
raise RecursionError in it.
"""
from __future__ import annotations

import json
import re

from markupsafe import Markup

# Deeper than any record or request of ours (a scenes list is 3 levels): refused before it is stored,
# so no later json.dumps or template walks into Python's recursion limit.
MAX_DEPTH = 32
REPLACEMENT = "\ufffd"
SURROGATE = re.compile("[\ud800-\udfff]")


class InvalidText(ValueError):
    """Input that is not valid Unicode text or nests too deep; ``field`` names where, ``str()`` says what."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def is_valid(value: str) -> bool:
    """Whether a string can be written as UTF-8 (it holds no lone surrogate)."""
    return value.isascii() or SURROGATE.search(value) is None


def repair_text(value: str) -> str:
    """The string with each lone surrogate replaced by U+FFFD (the same object when there is none)."""
    if is_valid(value):
        return value
    return SURROGATE.sub(REPLACEMENT, value)


def find_invalid(value, name: str = "", max_depth: int = MAX_DEPTH) -> InvalidText | None:
    """The first problem in a JSON-like value (a lone surrogate in a key or string, or nesting deeper
    than ``max_depth``), named by its path from ``name`` (``params.scenes[0].prompt``; the value itself
    is "body"); None when it is clean."""
    stack = [(value, name, 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, str):
            if not is_valid(item):
                return InvalidText(where or "body", "is not valid Unicode text (it holds a lone surrogate); send UTF-8")
        elif isinstance(item, (dict, list)):
            if depth >= max_depth:
                return InvalidText(where or "body", f"nests deeper than {max_depth} levels")
            if isinstance(item, dict):
                for key, child in item.items():
                    key_text = key if isinstance(key, str) else str(key)
                    path = f"{where}.{key_text}" if where else key_text
                    if not is_valid(key_text):
                        return InvalidText(repair_text(path), "is not a valid Unicode name")
                    stack.append((child, path, depth + 1))
            else:
                stack.extend((child, f"{where}[{index}]", depth + 1) for index, child in enumerate(item))
    return None


def check(value, name: str = "", max_depth: int = MAX_DEPTH):
    """Return ``value`` when find_invalid finds nothing in it; raise its InvalidText otherwise."""
    problem = find_invalid(value, name, max_depth)
    if problem is not None:
        raise problem
    return value


def repair(value):
    """A JSON-like value with every lone surrogate (in keys and strings) replaced by U+FFFD."""
    if isinstance(value, str):
        return repair_text(value)
    if not isinstance(value, (dict, list)):
        return value
    # Rebuilt iteratively (depth-first, children after parents) so no depth can exhaust the stack.
    root = {} if isinstance(value, dict) else []
    stack = [(value, root)]
    while stack:
        source, target = stack.pop()
        items = source.items() if isinstance(source, dict) else enumerate(source)
        for key, child in items:
            if isinstance(child, (dict, list)):
                copy = {} if isinstance(child, dict) else []
                stack.append((child, copy))
            else:
                copy = repair_text(child) if isinstance(child, str) else child
            if isinstance(target, dict):
                target[repair_text(key) if isinstance(key, str) else key] = copy
            else:
                target.append(copy)
    return root


def loads(data, name: str = "", max_depth: int = MAX_DEPTH):
    """Parse request JSON and check it (find_invalid); raise ValueError when it is not JSON, InvalidText when
    it nests too deep or holds text that is not valid Unicode."""
    try:
        value = json.loads(data)
    except RecursionError:
        # The C parser gives up at the interpreter's recursion limit (about 1,000 levels).
        raise InvalidText(name or "body", f"nests deeper than {max_depth} levels") from None
    return check(value, name, max_depth)


def printable(value):
    """What a template prints, repaired (Jinja's ``finalize``): no stored value can make a page fail to encode.

    Markup stays Markup; any other object is printed as its str(), as Jinja would, repaired.
    """
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if hasattr(value, "__html__"):
        html = value.__html__()
        return value if is_valid(html) else Markup(repair_text(html))
    return repair_text(value if isinstance(value, str) else str(value))


def whole_number(raw: str, max_digits: int = 9) -> int | None:
    """``raw`` as a whole number when it is 1 to ``max_digits`` ASCII digits, else None.

    str.isdigit() also accepts '²' and '①', which int() refuses, and int() refuses more than 4,300 digits:
    a query value is checked here instead, so neither can become a 500.
    """
    if not isinstance(raw, str) or not 0 < len(raw) <= max_digits or not raw.isascii() or not raw.isdigit():
        return None
    return int(raw)
