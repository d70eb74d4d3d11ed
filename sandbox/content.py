"""Annotation content trees: building, value normalisation, updates, export/hook shapes.

Stored nodes already have Rossum's API shape (spec §8.1), including ``url`` with the ``@@BASE@@``
placeholder, so ``GET …/content`` is a text substitution. Node ids come from one global counter,
hence are unique per annotation (and across annotations).

Over 600 lines but one concept: the content tree. Building, updating (``operations`` and
``PATCH``) and exporting all walk the same node shapes and must agree on them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sandbox.util import PH, ApiError

Node = dict[str, Any]
Alloc = Callable[[], int]

_DATE_FORMATS = (
    "%Y-%m-%d",
    "%d.%m.%Y",
    "%d. %m. %Y",
    "%d/%m/%Y",
    "%Y/%m/%d",
    "%d-%m-%Y",
    "%Y.%m.%d",
    "%d %B %Y",
    "%d %b %Y",
    "%B %d, %Y",
    "%b %d, %Y",
    "%B %d %Y",
    "%b %d %Y",
    "%Y%m%d",
)


def parse_date(raw: str) -> str | None:
    """ISO date of ``raw`` (several common layouts, day-first), or None."""
    text = raw.strip().rstrip(".")
    if not text:
        return None
    if re.match(r"^\d{4}-\d{2}-\d{2}[T ]", text):
        text = text[:10]
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(text, fmt).date().isoformat()
        except ValueError:
            continue
    return None


def parse_number(raw: str) -> str | None:
    """Plain decimal string of ``raw`` ("1 210,50 EUR" -> "1210.50"), or None."""
    text = re.sub(r"[^\d,.\-]", "", raw.replace("\u2212", "-"))
    if not re.search(r"\d", text):
        return None
    negative = text.startswith("-") or raw.strip().startswith("(")
    text = text.replace("-", "")
    if "," in text and "." in text:
        dec = "," if text.rfind(",") > text.rfind(".") else "."
        text = text.replace("." if dec == "," else ",", "").replace(",", ".")
    elif "," in text:
        parts = text.split(",")
        text = "".join(parts) if len(parts) > 2 or len(parts[-1]) == 3 else ".".join(parts)
    elif text.count(".") > 1:
        text = text.replace(".", "")
    try:
        num = Decimal(text)
    except InvalidOperation:
        return None
    if negative:
        num = -num
    out = format(num, "f")
    return out


def schema_index(schema_content: list[Node]) -> dict[str, Node]:
    """schema_id -> schema node for every node in the tree."""
    out: dict[str, Node] = {}

    def walk(node: Node) -> None:
        out[node["id"]] = node
        children = node.get("children")
        if isinstance(children, dict):
            walk(children)
        elif isinstance(children, list):
            for child in children:
                walk(child)

    for section in schema_content:
        walk(section)
    return out


def normalize(snode: Node | None, value: str) -> tuple[str, str | None]:
    """(value, normalized_value) for a datapoint of the schema node's type."""
    kind = (snode or {}).get("type", "string")
    if value == "":
        return "", ""
    if kind == "date":
        return value, parse_date(value)
    if kind == "number":
        return value, parse_number(value)
    if kind == "enum":
        for opt in (snode or {}).get("options") or []:
            names = (str(opt.get("value")).lower(), str(opt.get("label")).lower())
            if value.strip().lower() in names:
                return str(opt["value"]), str(opt["value"])
        return value, value
    return value, value


def node_url(aid: int, nid: int) -> str:
    return f"{PH}/v1/annotations/{aid}/content/{nid}"


def new_datapoint(aid: int, nid: int, snode: Node, value: str = "", **extra: Any) -> Node:
    """Datapoint node in API shape; ``extra`` may set page, position, rir_confidence, sources."""
    val, norm = normalize(snode, value)
    page = extra.get("page")
    position = extra.get("position")
    found = value != ""
    return {
        "id": nid,
        "url": node_url(aid, nid),
        "content": {
            "value": val,
            "normalized_value": norm,
            "page": page,
            "position": position,
            "rir_text": value if found and extra.get("rir") else None,
            "rir_position": position if extra.get("rir") else None,
            "connector_text": None,
            "rir_confidence": extra.get("rir_confidence"),
        },
        "category": "datapoint",
        "schema_id": snode["id"],
        "validation_sources": list(extra.get("validation_sources") or []),
        "time_spent": 0,
        "time_spent_overall": 0,
        "hidden": bool(snode.get("hidden", False)),
    }


def new_tuple(aid: int, alloc: Alloc, tuple_snode: Node, cells: dict[str, dict[str, Any]]) -> Node:
    """Tuple node with one datapoint per schema child (``cells``: schema_id -> datapoint kwargs)."""
    nid = alloc()
    children = []
    for child in tuple_snode.get("children") or []:
        spec = dict(cells.get(child["id"]) or {})
        value = str(spec.pop("value", "") or "")
        children.append(new_datapoint(aid, alloc(), child, value, **spec))
    return {
        "id": nid,
        "url": node_url(aid, nid),
        "children": children,
        "category": "tuple",
        "schema_id": tuple_snode["id"],
        "validation_sources": [],
        "time_spent": 0,
        "time_spent_overall": 0,
        "hidden": bool(tuple_snode.get("hidden", False)),
    }


def empty_content(schema_content: list[Node], aid: int, alloc: Alloc) -> list[Node]:
    """Content skeleton of a freshly created annotation (empty values, no rows)."""

    def build(snode: Node) -> Node:
        cat = snode["category"]
        if cat == "datapoint":
            sources = [] if snode.get("rir_field_names") else ["non_required"]
            if snode.get("type") == "button":
                sources = ["NA"]
            leaf = new_datapoint(aid, alloc(), snode, "", validation_sources=sources)
            if snode.get("type") == "button":
                leaf["content"] = None
            return leaf
        nid = alloc()
        node: Node = {"id": nid, "url": node_url(aid, nid)}
        if cat == "multivalue":
            node.update(
                children=[],
                category="multivalue",
                schema_id=snode["id"],
                validation_sources=[],
                time_spent=0,
                time_spent_overall=0,
                hidden=bool(snode.get("hidden", False)),
                grid=None,
            )
        else:
            node.update(
                children=[build(c) for c in snode.get("children") or []],
                category=cat,
                schema_id=snode["id"],
            )
        return node

    return [build(s) for s in schema_content]


def iter_nodes(content: list[Node]) -> Iterator[tuple[Node, Node | None]]:
    """(node, parent) for every node, depth first."""
    stack: list[tuple[Node, Node | None]] = [(n, None) for n in reversed(content)]
    while stack:
        node, parent = stack.pop()
        yield node, parent
        for child in reversed(node.get("children") or []):
            stack.append((child, node))


def find_node(content: list[Node], nid: int) -> tuple[Node, Node | None] | None:
    for node, parent in iter_nodes(content):
        if node.get("id") == nid:
            return node, parent
    return None


def find_by_schema_id(content: list[Node], schema_id: str) -> Node | None:
    """First node with ``schema_id`` outside multivalues (header fields)."""
    for node, parent in iter_nodes(content):
        if node.get("schema_id") == schema_id and (parent is None or parent["category"] != "tuple"):
            return node
    return None


def _as_id(value: Any) -> int:
    if isinstance(value, bool):
        raise ApiError(400, "operation id must be an integer")
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise ApiError(400, f"invalid node id {value!r}") from exc


def update_datapoint(node: Node, snode: Node | None, data: dict[str, Any], *, strict: bool) -> bool:
    """Apply an API update (content, hidden, validation_sources, options) to a datapoint.

    ``strict`` (bulk operations): value and normalized_value must agree, else nothing changes.
    Otherwise normalized_value is ignored when value is given (spec §8.1).
    """
    if node.get("category") != "datapoint":
        raise ApiError(400, "only datapoints can be updated")
    content = data.get("content")
    if content is not None and not isinstance(content, dict):
        raise ApiError(400, "content must be an object")
    content = content or {}
    if "value" in content or "normalized_value" in content:
        raw = content.get("value")
        norm_in = content.get("normalized_value")
        if raw is not None and not isinstance(raw, str | int | float):
            raise ApiError(400, "value must be a string")
        if raw is None:
            raw = "" if norm_in is None else str(norm_in)
        raw = str(raw)
        if len(raw) > 1500:
            raise ApiError(400, "value longer than 1500 characters")
        value, norm = normalize(snode, raw)
        if strict and raw and norm_in is not None and str(norm_in) != (norm or ""):
            return False
        node["content"] = node.get("content") or {}
        node["content"]["value"] = value
        node["content"]["normalized_value"] = norm
    for key in ("position", "page"):
        if key in content:
            node.setdefault("content", {})[key] = content[key]
    if "validation_sources" in data:
        if not isinstance(data["validation_sources"], list):
            raise ApiError(400, "validation_sources must be a list")
        node["validation_sources"] = data["validation_sources"]
    if "hidden" in data:
        node["hidden"] = bool(data["hidden"])
    if "options" in data:
        node["options"] = data["options"]
    for key in ("time_spent", "time_spent_overall"):
        if key in data and isinstance(data[key], int | float):
            node[key] = data[key]
    return True


def apply_operations(
    content: list[Node],
    operations: Any,
    sindex: dict[str, Node],
    aid: int,
    alloc: Alloc,
) -> list[int]:
    """Bulk update per spec §8.2 (replace/add/remove); returns the ids changed or created."""
    if not isinstance(operations, list):
        raise ApiError(400, "operations must be a list")
    updated: list[int] = []
    for op in operations:
        if not isinstance(op, dict) or op.get("op") not in ("replace", "add", "remove"):
            raise ApiError(400, f"invalid operation {op!r}")
        nid = _as_id(op.get("id"))
        found = find_node(content, nid)
        if found is None:
            raise ApiError(400, f"node {nid} not found")
        node, parent = found
        if op["op"] == "replace":
            value = op.get("value")
            if not isinstance(value, dict):
                raise ApiError(400, "replace value must be an object")
            if update_datapoint(node, sindex.get(node["schema_id"]), value, strict=True):
                updated.append(nid)
        elif op["op"] == "remove":
            if parent is None or parent.get("category") != "multivalue":
                raise ApiError(400, "only children of a multivalue can be removed")
            parent["children"] = [c for c in parent["children"] if c.get("id") != nid]
            updated.append(nid)
        else:
            updated += _add_row(node, op, sindex, aid, alloc)
    return updated


def _add_row(
    node: Node, op: dict[str, Any], sindex: dict[str, Node], aid: int, alloc: Alloc
) -> list[int]:
    if node.get("category") != "multivalue":
        raise ApiError(400, "add needs a multivalue id")
    mv_schema = sindex.get(node["schema_id"]) or {}
    child_schema = mv_schema.get("children") or {}
    default_sources = op.get("validation_sources")
    value = op.get("value")
    if child_schema.get("category") == "tuple":
        rows = value if isinstance(value, list) else None
        if rows is None:
            raise ApiError(400, "add value must be a list of datapoints for a table")
        cells: dict[str, dict[str, Any]] = {}
        for item in rows:
            if not isinstance(item, dict) or "schema_id" not in item:
                raise ApiError(400, "each added datapoint needs a schema_id")
            spec: dict[str, Any] = {}
            content = item.get("content") or {}
            spec["value"] = str(content.get("value", content.get("normalized_value", "")) or "")
            spec["page"] = content.get("page")
            spec["position"] = content.get("position")
            spec["validation_sources"] = item.get("validation_sources", default_sources or [])
            cells[item["schema_id"]] = spec
        for child in child_schema.get("children") or []:
            cells.setdefault(child["id"], {"validation_sources": default_sources or []})
        row = new_tuple(aid, alloc, child_schema, cells)
        node["children"].append(row)
        return [node["id"], row["id"], *[c["id"] for c in row["children"]]]
    if not isinstance(value, dict):
        raise ApiError(400, "add value must be an object for a simple multivalue")
    content = value.get("content") or {}
    dp = new_datapoint(
        aid,
        alloc(),
        child_schema,
        str(content.get("value", "") or ""),
        page=content.get("page"),
        position=content.get("position"),
        validation_sources=value.get("validation_sources", default_sources or []),
    )
    node["children"].append(dp)
    return [node["id"], dp["id"]]


def patch_tree(
    content: list[Node], tree: Any, sindex: dict[str, Node], aid: int, alloc: Alloc
) -> list[int]:
    """``PATCH …/content``: merge ``tree`` into content; nodes missing from it are preserved.

    Nodes are matched by ``id`` when given, otherwise header datapoints by ``schema_id``;
    rows without ids under a multivalue are appended.
    """
    if not isinstance(tree, list):
        raise ApiError(400, "content must be a list of sections")
    updated: list[int] = []

    def merge(incoming: Any, target_parent: Node | None) -> None:
        if not isinstance(incoming, dict):
            raise ApiError(400, "content nodes must be objects")
        target: Node | None = None
        if incoming.get("id") is not None:
            found = find_node(content, _as_id(incoming["id"]))
            if found is None:
                raise ApiError(400, f"node {incoming['id']} not found")
            target = found[0]
        elif incoming.get("schema_id"):
            if target_parent is not None and target_parent.get("category") == "multivalue":
                snode = sindex.get(str(incoming["schema_id"]))
                if snode is None:
                    raise ApiError(400, f"unknown schema_id {incoming['schema_id']!r}")
                cells = [
                    {"schema_id": c.get("schema_id"), "content": c.get("content") or {}}
                    for c in incoming.get("children") or []
                    if isinstance(c, dict)
                ]
                updated.extend(
                    _add_row(
                        target_parent,
                        {
                            "value": cells
                            if snode.get("category") == "tuple"
                            else {"content": incoming.get("content") or {}}
                        },
                        sindex,
                        aid,
                        alloc,
                    )
                )
                return
            target = find_by_schema_id(content, str(incoming["schema_id"]))
        if target is None:
            raise ApiError(400, "cannot match content node (need id or schema_id)")
        snode = sindex.get(target["schema_id"])
        if target.get("category") == "datapoint" and update_datapoint(
            target, snode, incoming, strict=False
        ):
            updated.append(target["id"])
        for child in incoming.get("children") or []:
            merge(child, target)

    for section in tree:
        merge(section, None)
    return updated


def export_value(node: Node, snode: Node | None) -> str:
    """Value as exported: ISO dates and plain decimals (normalized), raw text otherwise."""
    content = node.get("content") or {}
    kind = (snode or {}).get("type", "string")
    if kind in ("date", "number") and content.get("normalized_value"):
        return str(content["normalized_value"])
    return str(content.get("value") or "")


def export_tree(content: list[Node], sindex: dict[str, Node]) -> list[Node]:
    """Export/XML-like tree (spec §7): datapoints with ``can_export=false`` are omitted."""

    def conv(node: Node) -> Node | None:
        snode = sindex.get(node["schema_id"]) or {}
        cat = node["category"]
        if cat == "datapoint":
            if snode.get("can_export", True) is False:
                return None
            return {
                "category": "datapoint",
                "schema_id": node["schema_id"],
                "value": export_value(node, snode),
                "type": snode.get("type", "string"),
                "rir_confidence": (node.get("content") or {}).get("rir_confidence"),
            }
        children = [c for c in (conv(ch) for ch in node.get("children") or []) if c is not None]
        return {"category": cat, "schema_id": node["schema_id"], "children": children}

    return [n for n in (conv(s) for s in content) if n is not None]


def header_values(content: list[Node], sindex: dict[str, Node]) -> dict[str, str]:
    """schema_id -> exported value of every datapoint outside tables."""
    out: dict[str, str] = {}
    for node, parent in iter_nodes(content):
        if node["category"] == "datapoint" and (parent is None or parent["category"] != "tuple"):
            if parent is not None and parent["category"] == "multivalue":
                continue
            out.setdefault(node["schema_id"], export_value(node, sindex.get(node["schema_id"])))
    return out


def table_rows(content: list[Node], sindex: dict[str, Node]) -> list[dict[str, str]]:
    """Rows (schema_id -> exported value) of all multivalue tables, in document order."""
    rows: list[dict[str, str]] = []
    for node, _parent in iter_nodes(content):
        if node["category"] != "multivalue":
            continue
        for child in node.get("children") or []:
            if child["category"] == "tuple":
                rows.append(
                    {
                        dp["schema_id"]: export_value(dp, sindex.get(dp["schema_id"]))
                        for dp in child.get("children") or []
                    }
                )
            elif child["category"] == "datapoint":
                sid = child["schema_id"]
                rows.append({sid: export_value(child, sindex.get(sid))})
    return rows


def flatten(content: list[Node], schema_ids: set[str] | None = None) -> list[Node]:
    """Flat node list for ``sideload=content`` (children replaced by their URLs)."""
    out: list[Node] = []
    for node, _parent in iter_nodes(content):
        if schema_ids is not None and node.get("schema_id") not in schema_ids:
            continue
        flat = {k: v for k, v in node.items() if k != "children"}
        if "children" in node:
            flat["children"] = [c["url"] for c in node["children"]]
        out.append(flat)
    return out


def build_filled(
    schema_content: list[Node],
    aid: int,
    alloc: Alloc,
    header: dict[str, tuple[str, str, float]],
    rows: list[dict[str, tuple[str, str, float]]],
) -> list[Node]:
    """Fast builder of a filled tree (bulk seeding): values are given as (value, normalized,
    rir_confidence) per schema id, already normalised, so no parsing happens here."""

    def dp(snode: Node, cell: tuple[str, str, float] | None, top: int, left: int) -> Node:
        nid = alloc()
        if cell is None:
            value, norm, conf, pos, page, sources = (
                "",
                "",
                None,
                None,
                None,
                ([] if snode.get("rir_field_names") else ["non_required"]),
            )
        else:
            value, norm, conf = cell
            pos, page, sources = [left, top, left + 130, top + 18], 1, ["score"]
        return {
            "id": nid,
            "url": f"{PH}/v1/annotations/{aid}/content/{nid}",
            "content": {
                "value": value,
                "normalized_value": norm,
                "page": page,
                "position": pos,
                "rir_text": value or None,
                "rir_position": pos,
                "connector_text": None,
                "rir_confidence": conf,
            },
            "category": "datapoint",
            "schema_id": snode["id"],
            "validation_sources": sources,
            "time_spent": 0,
            "time_spent_overall": 0,
            "hidden": bool(snode.get("hidden")),
        }

    line = [0]

    def build(snode: Node) -> Node:
        cat = snode["category"]
        if cat == "datapoint":
            line[0] += 1
            return dp(snode, header.get(snode["id"]), 60 + 22 * line[0], 60)
        nid = alloc()
        node: Node = {"id": nid, "url": f"{PH}/v1/annotations/{aid}/content/{nid}"}
        if cat == "multivalue":
            tuple_schema = snode.get("children") or {}
            children = []
            for row in rows:
                line[0] += 1
                tid = alloc()
                cells = [
                    dp(c, row.get(c["id"]), 60 + 22 * line[0], 60 + 140 * i)
                    for i, c in enumerate(tuple_schema.get("children") or [])
                ]
                children.append(
                    {
                        "id": tid,
                        "url": f"{PH}/v1/annotations/{aid}/content/{tid}",
                        "children": cells,
                        "category": "tuple",
                        "schema_id": tuple_schema["id"],
                        "validation_sources": [],
                        "time_spent": 0,
                        "time_spent_overall": 0,
                        "hidden": False,
                    }
                )
            node.update(
                children=children,
                category="multivalue",
                schema_id=snode["id"],
                validation_sources=[],
                time_spent=0,
                time_spent_overall=0,
                hidden=bool(snode.get("hidden")),
                grid=None,
            )
        else:
            node.update(
                children=[build(c) for c in snode.get("children") or []],
                category=cat,
                schema_id=snode["id"],
            )
        return node

    return [build(s) for s in schema_content]


class _Hole:
    """Placeholder used while building a :class:`TreeTemplate` (JSON value or in-string text)."""

    def __init__(self, template: TreeTemplate, key: tuple[Any, ...]) -> None:
        self.key = key
        self.template = template

    def __format__(self, spec: str) -> str:
        return self.template.hole("R", self.key)

    def __bool__(self) -> bool:
        return True


class TreeTemplate:
    """JSON text of a filled content tree with holes for ids and values.

    Bulk seeding of 10,000 annotations spends most of its time building and serialising dicts;
    every seeded tree with the same filled header fields and number of rows has the same shape,
    so it is serialised once and later trees are rendered with one ``%`` formatting.
    """

    _HOLE_RE = re.compile(r'"@@J(\d+)@@"|@@R(\d+)@@')

    def __init__(
        self, schema_content: list[Node], header_ids: list[str], n_rows: int, row_ids: list[str]
    ) -> None:
        import json

        self.header_ids = list(header_ids)
        self.row_ids = list(row_ids)
        self.keys: list[tuple[Any, ...]] = []
        offsets = iter(range(1_000_000))
        aid = _Hole(self, ("aid",))

        def alloc() -> Any:
            return _Hole(self, ("node", next(offsets)))

        header = {sid: tuple(_Hole(self, ("h", sid, f)) for f in range(3)) for sid in header_ids}
        rows = [
            {sid: tuple(_Hole(self, ("r", i, sid, f)) for f in range(3)) for sid in row_ids}
            for i in range(n_rows)
        ]
        tree = build_filled(schema_content, aid, alloc, header, rows)  # type: ignore[arg-type]
        text = json.dumps(tree, default=lambda h: self.hole("J", h.key))
        self.node_count = next(offsets)
        parts = self._HOLE_RE.split(text)
        # split() yields: text, J-group, R-group, text, J-group, R-group, ...
        fragments = parts[0::3]
        keys = [
            self.keys[int(j if j is not None else r)]
            for j, r in zip(parts[1::3], parts[2::3], strict=True)
        ]
        hpos = {sid: i for i, sid in enumerate(self.header_ids)}
        rpos = {sid: i for i, sid in enumerate(self.row_ids)}
        base_h = 1 + self.node_count
        base_r = base_h + 3 * len(self.header_ids)
        self.index: list[int] = []
        for key in keys:
            if key[0] == "aid":
                self.index.append(0)
            elif key[0] == "node":
                self.index.append(1 + key[1])
            elif key[0] == "h":
                self.index.append(base_h + 3 * hpos[key[1]] + key[2])
            else:
                self.index.append(base_r + 3 * (key[1] * len(self.row_ids) + rpos[key[2]]) + key[3])
        self.format = "%s".join(f.replace("%", "%%") for f in fragments)

    def hole(self, kind: str, key: tuple[Any, ...]) -> str:
        self.keys.append(key)
        return f"@@{kind}{len(self.keys) - 1}@@"

    def render(
        self,
        aid: int,
        first_node: int,
        header: dict[str, tuple[str, str, float]],
        rows: list[dict[str, tuple[str, str, float]]],
    ) -> str:
        """JSON text of the filled tree for annotation ``aid`` with node ids from ``first_node``."""
        from json.encoder import encode_basestring_ascii as enc

        vec = [str(aid)]
        vec += [str(n) for n in range(first_node, first_node + self.node_count)]
        for sid in self.header_ids:
            value, norm, conf = header[sid]
            vec += (enc(value), enc(norm), repr(conf))
        for row in rows:
            for sid in self.row_ids:
                value, norm, conf = row[sid]
                vec += (enc(value), enc(norm), repr(conf))
        return self.format % tuple([vec[i] for i in self.index])
