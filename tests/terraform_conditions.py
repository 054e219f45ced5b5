"""A Terraform condition (a variable's validation, a resource's precondition) evaluated for given variable
values, so a test checks what a module refuses rather than that some words are in it. It knows only what
these modules' conditions use: numbers, ``var.NAME``, arithmetic, comparisons, ``&&``, ``||``, ``floor()``."""

from __future__ import annotations

import math
import re

_VARIABLE = re.compile(r"\bvar\.([a-z][a-z0-9_]*)")
_LEFT_OVER = re.compile(r"[0-9.\s+\-*/<>=!()]*")


def holds(condition: str, values: dict[str, float]) -> bool:
    """Whether ``condition`` (as python-hcl2 gives it, ``${...}``) is true for ``values`` of its variables."""
    expression = condition.removeprefix("${").removesuffix("}")
    expression = _VARIABLE.sub(lambda m: repr(values[m.group(1)]), expression)
    expression = expression.replace("&&", " and ").replace("||", " or ")
    if not _LEFT_OVER.fullmatch(re.sub(r"\b(and|or|floor)\b", "", expression)):
        raise ValueError(f"a condition this helper cannot evaluate: {condition}")
    return bool(eval(expression, {"__builtins__": {}, "floor": math.floor}))  # only numbers and operators are left: checked above
