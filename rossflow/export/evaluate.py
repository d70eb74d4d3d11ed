"""A safe expression language for conditions (export evaluator, ``when`` gates).

Rossum's export evaluator runs ``eval(settings["condition"])`` inside a serverless function,
which the docs themselves call dangerous. We keep its ergonomics (``r.field.api1_status_code
!= '201'`` works verbatim) but never hand user text to ``eval``/``exec``/``compile``: the text
is parsed with ``ast.parse(mode="eval")`` and a small interpreter walks a whitelist of nodes.

Grammar (a subset of Python expressions)::

    expr       := or_expr ["if" or_expr "else" expr]
    or_expr    := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | comparison
    comparison := sum (("=="|"!="|"<"|"<="|">"|">="|"in"|"not in"|"is"|"is not") sum)*
    sum        := term (("+"|"-") term)*
    term       := unary (("*"|"/"|"%") unary)*
    unary      := ("-"|"+") unary | primary
    primary    := atom ("." NAME | "[" expr "]" | "(" args ")")*
    atom       := NAME | STRING | NUMBER | True | False | None | "[" exprs "]" | "(" exprs ")"

Names: ``r`` (``r.field.x``, ``r.responses``), ``field``, ``responses``, ``payload``,
``annotation``, ``document``, ``values``, ``references``. Calls: only the functions in
:data:`FUNCTIONS` and the string methods in :data:`STR_METHODS`. Attribute access works only
on these namespaces and on plain mappings (as key lookup) - never on Python objects - and any
name or attribute starting with ``_`` is rejected when the condition is compiled.
"""

from __future__ import annotations

import ast
import functools
import json
import operator
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import jmespath
import jmespath.exceptions

from rossflow.export.context import ExportContext, datapoint_value, iter_datapoints
from rossflow.export.errors import ConditionError, ConditionEvalError

__all__ = [
    "FUNCTIONS",
    "ROOT_NAMES",
    "STR_METHODS",
    "Condition",
    "FieldNamespace",
    "Namespace",
    "build_namespace",
    "compile_condition",
    "condition_or_none",
]

MAX_LENGTH = 4000
MAX_NODES = 300
MAX_SEQUENCE = 10_000

ROOT_NAMES = frozenset(
    {"r", "field", "responses", "payload", "annotation", "document", "values", "references"}
)
STR_METHODS = frozenset(
    {"lower", "upper", "strip", "lstrip", "rstrip", "startswith", "endswith", "isdigit"}
)


def _to_int(value: Any) -> int:
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            try:
                return int(Decimal(value.strip()))
            except InvalidOperation as exc:
                raise ValueError(f"int() cannot convert {value!r}") from exc
    return int(value)


def _to_float(value: Any) -> float:
    if isinstance(value, str):
        return float(value.strip().replace(" ", ""))
    return float(value)


def _to_str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _is_empty(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, (list, dict)) and not value)


def _jmespath(expression: str, data: Any) -> Any:
    try:
        return jmespath.search(expression, _plain(data))
    except jmespath.exceptions.JMESPathError as exc:
        raise ValueError(f"invalid JMESPath {expression!r}: {exc}") from exc


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "int": _to_int,
    "float": _to_float,
    "str": _to_str,
    "bool": bool,
    "len": len,
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "lower": lambda s: _to_str(s).lower(),
    "upper": lambda s: _to_str(s).upper(),
    "strip": lambda s: _to_str(s).strip(),
    "startswith": lambda s, prefix: _to_str(s).startswith(prefix),
    "endswith": lambda s, suffix: _to_str(s).endswith(suffix),
    "contains": lambda haystack, needle: needle in (haystack or ""),
    "is_empty": _is_empty,
    "default": lambda value, fallback: fallback if _is_empty(value) else value,
    "jmespath": _jmespath,
    "matches": lambda pattern, text: re.search(pattern, _to_str(text)) is not None,
}

_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
}
_BINOPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Mod: operator.mod,
}
_ALLOWED_NODES: tuple[type[ast.AST], ...] = (
    ast.Expression,
    ast.BoolOp,
    ast.And,
    ast.Or,
    ast.UnaryOp,
    ast.Not,
    ast.USub,
    ast.UAdd,
    ast.BinOp,
    ast.Compare,
    ast.IfExp,
    ast.Call,
    ast.Attribute,
    ast.Subscript,
    ast.Name,
    ast.Load,
    ast.Constant,
    ast.List,
    ast.Tuple,
    *_COMPARE.keys(),
    *_BINOPS.keys(),
)
_NODE_NAMES = {
    ast.Lambda: "lambda",
    ast.ListComp: "list comprehension",
    ast.SetComp: "set comprehension",
    ast.DictComp: "dict comprehension",
    ast.GeneratorExp: "generator expression",
    ast.NamedExpr: "assignment expression (:=)",
    ast.JoinedStr: "f-string",
    ast.Starred: "star expression",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.Pow: "** operator",
    ast.Dict: "dict literal",
    ast.Set: "set literal",
    ast.Slice: "slice",
}


class Namespace:
    """Read-only attribute bag exposed to expressions (attribute == key lookup)."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = dict(data)

    def get(self, name: str) -> Any:
        """Value of ``name`` or ``None``."""
        return self._data.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._data

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JMESPath and JSON."""
        return {k: _plain(v) for k, v in self._data.items()}

    def __repr__(self) -> str:
        return f"Namespace({sorted(self._data)})"


class FieldNamespace(Namespace):
    """``r.field``: like txscript, a datapoint reads as a string and a missing one as ``""``.

    A column of a table (``r.field.item_amount_total``) reads as the list of its values.
    """

    def __init__(self, flat: Mapping[str, Any], columns: Mapping[str, list[Any]]) -> None:
        super().__init__(flat)
        self._columns = dict(columns)

    def get(self, name: str) -> Any:
        if name in self._data:
            return _field_value(self._data[name])
        if name in self._columns:
            return [_field_value(v) for v in self._columns[name]]
        return ""


def _field_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list):
        return [_field_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _field_value(v) for k, v in value.items()}
    return value if isinstance(value, str) else str(value)


def _plain(value: Any) -> Any:
    if isinstance(value, Namespace):
        return value.as_dict()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _reference_value(value: Any) -> Any:
    """Stored artefacts read as text (rendered files, reply bodies) or as plain data."""
    content = getattr(value, "content", None)
    if isinstance(content, bytes):
        text = getattr(value, "text", None)
        return text if isinstance(text, str) else content.decode("utf-8", "replace")
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def build_namespace(
    ctx: ExportContext,
    *,
    extra: Mapping[str, Any] | None = None,
    only: Collection[str] | None = None,
) -> dict[str, Any]:
    """Root names visible to conditions for one annotation.

    ``only``: just these root names (a compiled condition's :attr:`Condition.root_names`); the
    field lookups walk the whole content, which a condition on ``responses`` alone never needs.
    """

    def wanted(*names: str) -> bool:
        return only is None or any(name in only for name in names)

    names: dict[str, Any] = {}
    if wanted("field", "r"):
        flat = ctx.field
        columns: dict[str, list[Any]] = {}
        for node in iter_datapoints(ctx.content):
            sid = str(node.get("schema_id"))
            if sid not in flat:
                columns.setdefault(sid, []).append(datapoint_value(node))
        names["field"] = FieldNamespace(flat, columns)
    if wanted("responses", "r"):
        names["responses"] = {name: dict(rec) for name, rec in ctx.responses.items()}
    if wanted("r"):
        names["r"] = Namespace(
            {"field": names["field"], "responses": names["responses"], "payload": ctx.payload}
        )
    if wanted("payload"):
        names["payload"] = ctx.payload
    if wanted("annotation"):
        names["annotation"] = ctx.payload.get("annotation", {})
    if wanted("document"):
        names["document"] = ctx.payload.get("document", {})
    if wanted("values"):
        names["values"] = ctx.values
    if wanted("references"):
        names["references"] = {key: _reference_value(val) for key, val in ctx.references.items()}
    if only is not None:
        names = {key: value for key, value in names.items() if key in only}
    if extra:
        names.update(extra)
    return names


def _referenced_step(node: ast.AST) -> str | None:
    """``responses.X`` / ``responses['X']`` / ``r.responses.X`` -> ``X``."""
    if isinstance(node, (ast.Attribute, ast.Subscript)):
        base = node.value
        is_responses = (isinstance(base, ast.Name) and base.id == "responses") or (
            isinstance(base, ast.Attribute)
            and base.attr == "responses"
            and isinstance(base.value, ast.Name)
            and base.value.id == "r"
        )
        if not is_responses:
            return None
        if isinstance(node, ast.Attribute):
            return node.attr
        if isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
            return node.slice.value
    return None


def _referenced_field(node: ast.AST) -> str | None:
    if isinstance(node, ast.Attribute):
        base = node.value
        if isinstance(base, ast.Name) and base.id == "field":
            return node.attr
        if (
            isinstance(base, ast.Attribute)
            and base.attr == "field"
            and isinstance(base.value, ast.Name)
            and base.value.id == "r"
        ):
            return node.attr
    return None


def _validate(tree: ast.Expression, text: str) -> tuple[frozenset[str], frozenset[str]]:
    nodes = list(ast.walk(tree))
    if len(nodes) > MAX_NODES:
        raise ConditionError(f"condition too complex ({len(nodes)} nodes > {MAX_NODES}): {text!r}")
    steps: set[str] = set()
    fields: set[str] = set()
    for node in nodes:
        if not isinstance(node, _ALLOWED_NODES):
            what = _NODE_NAMES.get(type(node), type(node).__name__)
            raise ConditionError(f"{what} is not allowed in conditions: {text!r}")
        if isinstance(node, ast.Name):
            if node.id.startswith("_"):
                raise ConditionError(f"name {node.id!r} is not allowed in conditions: {text!r}")
            if node.id not in ROOT_NAMES and node.id not in FUNCTIONS:
                raise ConditionError(
                    f"unknown name {node.id!r} in condition {text!r}; "
                    f"available: {', '.join(sorted(ROOT_NAMES))}"
                )
        elif isinstance(node, ast.Attribute):
            if node.attr.startswith("_"):
                raise ConditionError(
                    f"attribute {node.attr!r} is not allowed in conditions: {text!r}"
                )
        elif isinstance(node, ast.Constant):
            if not isinstance(node.value, (str, int, float, bool, type(None))):
                raise ConditionError(f"constant {node.value!r} is not allowed: {text!r}")
        elif (
            isinstance(node, ast.Subscript)
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
            and node.slice.value.startswith("_")
        ):
            raise ConditionError(f"key {node.slice.value!r} is not allowed: {text!r}")
        elif isinstance(node, ast.Call):
            _validate_call(node, text)
        step = _referenced_step(node)
        if step is not None:
            steps.add(step)
        fname = _referenced_field(node)
        if fname is not None:
            fields.add(fname)
    return frozenset(steps), frozenset(fields)


def _validate_call(node: ast.Call, text: str) -> None:
    if node.keywords:
        raise ConditionError(f"keyword arguments are not allowed in conditions: {text!r}")
    func = node.func
    if isinstance(func, ast.Name):
        if func.id not in FUNCTIONS:
            raise ConditionError(
                f"call of {func.id!r} is not allowed in conditions: {text!r}; "
                f"functions: {', '.join(sorted(FUNCTIONS))}"
            )
        if func.id == "matches":
            if not node.args or not (
                isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
            ):
                raise ConditionError(f"matches() needs a literal pattern: {text!r}")
            try:
                re.compile(node.args[0].value)
            except re.error as exc:
                raise ConditionError(f"invalid regex in matches(): {exc}: {text!r}") from exc
        if func.id == "jmespath" and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                try:
                    jmespath.compile(first.value)
                except jmespath.exceptions.JMESPathError as exc:
                    raise ConditionError(f"invalid JMESPath {first.value!r}: {exc}") from exc
        return
    if isinstance(func, ast.Attribute) and func.attr in STR_METHODS:
        return
    raise ConditionError(
        f"only whitelisted functions and string methods ({', '.join(sorted(STR_METHODS))}) "
        f"may be called: {text!r}"
    )


@dataclass(frozen=True)
class Condition:
    """A compiled, safe condition. Build with :func:`compile_condition`."""

    text: str
    tree: ast.Expression
    referenced_steps: frozenset[str]
    referenced_fields: frozenset[str]
    #: the root names (``field``, ``responses``, …) the expression reads
    root_names: frozenset[str] = frozenset(ROOT_NAMES)

    def evaluate(self, ctx: ExportContext | Mapping[str, Any]) -> bool:
        """Truth value of the condition for one annotation."""
        return bool(self.value(ctx))

    def value(self, ctx: ExportContext | Mapping[str, Any]) -> Any:
        """Raw value of the expression (useful for messages and debugging)."""
        names = ctx if isinstance(ctx, Mapping) else build_namespace(ctx, only=self.root_names)
        try:
            return _Interpreter(names, self.text).eval(self.tree.body)
        except ConditionEvalError:
            raise
        except RecursionError as exc:
            raise ConditionEvalError(f"condition {self.text!r} nests too deeply") from exc
        except Exception as exc:
            raise ConditionEvalError(
                f"condition {self.text!r} failed: {type(exc).__name__}: {exc}"
            ) from exc


@functools.lru_cache(maxsize=512)
def compile_condition(text: str) -> Condition:
    """Parse and validate ``text``; raises :class:`ConditionError` for anything not allowed.

    Cached: a pipeline evaluates the same few conditions for every document."""
    if not isinstance(text, str) or not text.strip():
        raise ConditionError("condition must be a non-empty string")
    if len(text) > MAX_LENGTH:
        raise ConditionError(f"condition longer than {MAX_LENGTH} characters")
    source = " ".join(text.strip().splitlines())
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        raise ConditionError(
            f"invalid condition {text!r}: {exc.msg} at column {exc.offset}"
        ) from exc
    except (RecursionError, MemoryError, ValueError) as exc:
        raise ConditionError(f"invalid condition {text!r}: too deeply nested") from exc
    steps, fields = _validate(tree, text)
    roots = frozenset(
        node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and node.id in ROOT_NAMES
    )
    return Condition(
        text=text, tree=tree, referenced_steps=steps, referenced_fields=fields, root_names=roots
    )


class _Interpreter:
    """Tree-walking evaluator over the nodes :func:`_validate` allows."""

    def __init__(self, names: Mapping[str, Any], text: str) -> None:
        self.names = names
        self.text = text

    def fail(self, reason: str) -> ConditionEvalError:
        return ConditionEvalError(f"condition {self.text!r}: {reason}")

    def eval(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id in self.names:
                return self.names[node.id]
            raise self.fail(f"name {node.id!r} is not available here")
        if isinstance(node, ast.BoolOp):
            if isinstance(node.op, ast.And):
                result: Any = True
                for value in node.values:
                    result = self.eval(value)
                    if not result:
                        return result
                return result
            result = False
            for value in node.values:
                result = self.eval(value)
                if result:
                    return result
            return result
        if isinstance(node, ast.UnaryOp):
            operand = self.eval(node.operand)
            if isinstance(node.op, ast.Not):
                return not operand
            if isinstance(node.op, ast.USub):
                return -operand
            return +operand
        if isinstance(node, ast.Compare):
            left = self.eval(node.left)
            for op, comparator in zip(node.ops, node.comparators, strict=True):
                right = self.eval(comparator)
                try:
                    ok = _COMPARE[type(op)](left, right)
                except TypeError as exc:
                    raise self.fail(
                        f"cannot compare {type(left).__name__} with {type(right).__name__} "
                        "(field values are text: wrap them in int() or float())"
                    ) from exc
                if not ok:
                    return False
                left = right
            return True
        if isinstance(node, ast.BinOp):
            left, right = self.eval(node.left), self.eval(node.right)
            if isinstance(node.op, ast.Mult) and (
                isinstance(left, (str, list, tuple)) or isinstance(right, (str, list, tuple))
            ):
                raise self.fail("repetition of text or lists with * is not allowed")
            result = _BINOPS[type(node.op)](left, right)
            if isinstance(result, (str, list, tuple)) and len(result) > MAX_SEQUENCE:
                raise self.fail("result too large")
            return result
        if isinstance(node, ast.IfExp):
            return self.eval(node.body) if self.eval(node.test) else self.eval(node.orelse)
        if isinstance(node, (ast.List, ast.Tuple)):
            return [self.eval(elt) for elt in node.elts]
        if isinstance(node, ast.Attribute):
            return self.attribute(self.eval(node.value), node.attr)
        if isinstance(node, ast.Subscript):
            return self.subscript(self.eval(node.value), self.eval(node.slice))
        if isinstance(node, ast.Call):
            return self.call(node)
        raise self.fail(f"unsupported expression {type(node).__name__}")  # pragma: no cover

    def attribute(self, obj: Any, name: str) -> Any:
        if obj is None:
            return None
        if isinstance(obj, Namespace):
            return obj.get(name)
        if isinstance(obj, Mapping):
            return obj.get(name)
        raise self.fail(f"cannot read attribute {name!r} of a {type(obj).__name__} value")

    def subscript(self, obj: Any, key: Any) -> Any:
        if obj is None:
            return None
        if isinstance(key, str) and key.startswith("_"):
            raise self.fail(f"key {key!r} is not allowed")
        if isinstance(obj, Namespace):
            return obj.get(str(key))
        if isinstance(obj, Mapping):
            return obj.get(key)
        if isinstance(obj, (list, tuple, str)):
            if not isinstance(key, int) or isinstance(key, bool):
                raise self.fail(f"list index must be an integer, not {type(key).__name__}")
            return obj[key] if -len(obj) <= key < len(obj) else None
        raise self.fail(f"cannot index a {type(obj).__name__} value")

    def call(self, node: ast.Call) -> Any:
        args = [self.eval(arg) for arg in node.args]
        func = node.func
        if isinstance(func, ast.Name):
            return FUNCTIONS[func.id](*args)
        assert isinstance(func, ast.Attribute)
        target = self.eval(func.value)
        if target is None:
            target = ""
        if not isinstance(target, str):
            raise self.fail(f".{func.attr}() works on text only, got {type(target).__name__}")
        method = getattr(str, func.attr)  # func.attr is in STR_METHODS (checked at compile)
        return method(target, *args)


def condition_or_none(text: str | None) -> Condition | None:
    """Compile an optional condition."""
    return compile_condition(text) if text else None
