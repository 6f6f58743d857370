"""The canonical fields the validation report measures, and which vendor field feeds each.

A mapping declares, per canonical field, the vendor's dotted paths in the raw record
(`SourceMapping.field_sources`). Read backwards, that declaration attributes an error the
mapping raised on a vendor path (`totals.grand_total`, `lines.0.amount`) to the canonical
field it feeds (`total_amount`, `items[].total`). Nothing is guessed from key names: an issue
on a path the mapping does not declare stays unattributed, and the report names the fields
whose source is undeclared.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from connector.issues import Issue
from connector.mapping.kit import CANONICAL_FIELDS, SourceMapping, record_path

# The canonical record's fields, in contract order, as the report lists them.
FIELDS = CANONICAL_FIELDS
ITEM_FIELDS = tuple(f for f in FIELDS if f.startswith("items[]."))
_KNOWN = frozenset(FIELDS)
# A list index in either spelling: "lines.0.amount" (pydantic) or "lines[0].amount" (validation).
_INDEX = re.compile(r"\[\d*\]|\.\d+(?=\.|$)")


def normalized_path(path: str) -> str:
    """One spelling for declared and reported paths: every list index becomes "[]"."""
    return _INDEX.sub("[]", path.strip())


def _parent(path: str) -> str | None:
    """`lines[].amount` → `lines[]` → `lines` → None."""
    if path.endswith("[]"):
        return path[:-2]
    head, dot, _tail = path.rpartition(".")
    return head if dot else None


def declared_field_sources(
    mapping: SourceMapping, options: Mapping[str, Any] | None = None
) -> Mapping[str, tuple[str, ...]]:
    """A mapping's `field_sources`, or, for a mapping configured per source (the `rest`
    type's `fields:`), the real vendor paths of one source's options (`field_sources_for`)."""
    per_source = getattr(mapping, "field_sources_for", None)
    if options is not None and callable(per_source):
        found: Mapping[str, tuple[str, ...]] = per_source(options)
        return found
    return mapping.field_sources


@dataclass(frozen=True)
class FieldSources:
    """A mapping's `field_sources` with its reverse index (vendor path → canonical field)."""

    declared: Mapping[str, tuple[str, ...]]
    # Only paths inside the raw record: a policy link or a setting is never an error's path.
    by_vendor_path: Mapping[str, str]

    @classmethod
    def of(cls, mapping: SourceMapping, options: Mapping[str, Any] | None = None) -> FieldSources:
        found = declared_field_sources(mapping, options)
        declared = {name: tuple(paths) for name, paths in found.items()}
        index: dict[str, str] = {}
        # A vendor path feeding two fields (CitaBox's id is also the number of a draft) is
        # attributed to the field that normally reads it: first positions first.
        depth = max((len(paths) for paths in declared.values()), default=0)
        for position in range(depth):
            for name in FIELDS:
                paths = declared.get(name, ())
                where = record_path(paths[position]) if position < len(paths) else None
                if where is not None:
                    index.setdefault(normalized_path(where), name)
        # The list that holds the item fields' paths ("lines" of "lines[].amount") is the
        # vendor's items, unless the mapping declared "items" itself (already indexed above).
        for name in ITEM_FIELDS:
            for path in declared.get(name, ()):
                container = normalized_path(record_path(path) or "").rpartition("[]")[0]
                if container:
                    index.setdefault(container, "items")
                    index.setdefault(container + "[]", "items")
        return cls(declared, index)

    def undeclared(self) -> list[str]:
        """Canonical fields for which the mapping names no vendor source (an empty tuple is a
        declaration too: the vendor does not send the field)."""
        return [name for name in FIELDS if name not in self.declared]

    def vendor_fields_of(self, issue: Issue) -> tuple[str, ...]:
        """The canonical fields a mapping error on a vendor path is about, from the declaration:
        the declared path itself, a path inside it (`patient.refs[].number` under a declared
        `patient.refs`), or an object holding declared paths (a missing `patient` is about
        every field declared under it). Nothing when the path is not declared."""
        path = normalized_path(issue.path)
        if path in ("", "$"):
            return ()
        ancestor: str | None = path
        while ancestor is not None:
            found = self.by_vendor_path.get(ancestor)
            if found is not None:
                return (found,)
            ancestor = _parent(ancestor)
        prefixes = (path + ".", path + "[]")
        under = {
            name for vendor, name in self.by_vendor_path.items() if vendor.startswith(prefixes)
        }
        if "items" in under or under & set(ITEM_FIELDS):
            # Item fields are judged per item: a missing list is the items' problem alone.
            under = (under - set(ITEM_FIELDS)) | {"items"}
        return tuple(name for name in FIELDS if name in under)


def canonical_field(issue: Issue) -> str | None:
    """The canonical field an issue of a built invoice names (`items[2].total` → `items[].total`);
    None for paths outside the measured fields (`currency`, `paid_amount`, `$`)."""
    path = normalized_path(issue.path)
    return path if path in _KNOWN else None
