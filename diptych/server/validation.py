"""Schema violations as OpenAI reports them: one message, the offending field in ``param``.

Pydantic locates an error inside a union with labels that are not fields: the branch's
type (``str``, ``list[...]``) and, for tagged unions, the tag (a content part's ``type``).
A client reads ``param`` as a path into what it sent, so those labels are dropped by
walking the path through the body itself.
"""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError

_LOCATION_KINDS = frozenset({"body", "query", "path", "header"})
_NOT_A_PATH = object()


def validation_error(exc: RequestValidationError) -> tuple[str, str | None, str]:
    """Message, param and code for a schema violation."""
    errors = exc.errors()
    if not errors:
        return "invalid request", None, "invalid_value"
    first = errors[0]
    # FastAPI reports unparsable JSON and a missing body as errors *at* the body, whose
    # location (a character offset, or nothing) is no parameter a client could fix.
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return f"the request body is not valid JSON ({detail})", None, "invalid_json"
    if first.get("type") == "missing" and tuple(first.get("loc", ())) == ("body",):
        return "the request body is missing; send a JSON object", None, "invalid_json"
    # Within a union every branch reports; the deepest error is in the branch the client meant.
    chosen = max(errors, key=lambda e: len(e.get("loc", ())))
    param = param_path(chosen.get("loc", ()), getattr(exc, "body", _NOT_A_PATH))
    message = str(chosen.get("msg", "invalid value"))
    if param:
        message = f"{param}: {message}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error(s))"
    return message, param, "invalid_value"


def param_path(loc: tuple[Any, ...] | list[Any], body: Any = _NOT_A_PATH) -> str | None:
    """``loc`` as a dotted path into ``body``, without pydantic's union labels."""
    parts = [p for p in loc if p not in _LOCATION_KINDS] if loc and loc[0] in _LOCATION_KINDS else list(loc)
    path: list[str] = []
    node = body
    tag_seen = False  # a part's tag comes once, before its fields
    for i, part in enumerate(parts):
        if isinstance(node, dict):
            # A tagged union's tag: the part's own "type" value. A field may share the tag's name
            # ({"type": "function", "function": …}); then the tag is the first of the two.
            is_field = part in node and (i + 1 == len(parts) or parts[i + 1] != part)
            if not tag_seen and node.get("type") == part and not is_field:
                tag_seen = True
                continue
            if part in node:
                path.append(str(part))
                node, tag_seen = node[part], False
                continue
            if _is_type_label(part):
                continue
            path.append(str(part))  # a missing or forbidden field: the path ends here
            node = _NOT_A_PATH
        elif isinstance(node, list) and isinstance(part, int):
            path.append(str(part))
            node, tag_seen = (node[part] if 0 <= part < len(node) else _NOT_A_PATH), False
        elif _is_type_label(part):
            continue
        else:
            path.append(str(part))
            node = _NOT_A_PATH
    return ".".join(path) or None


def _is_type_label(part: Any) -> bool:
    # Pydantic names union branches by their type: 'str', 'int', 'list[...]', 'function-after[...]'.
    return isinstance(part, str) and ("[" in part or part in {"str", "int", "float", "bool", "none", "list", "dict"})
