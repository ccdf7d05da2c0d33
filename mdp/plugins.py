"""The plug-in point for custom processors.

A plug-in is a class with a ``name`` (lower-case letters, digits and ``_``), the ``events`` (vendor event
types) it wants, and ``process(events) -> iterable of Publish | Store``. It is named in ``MDP_PLUGINS``
either by an entry point of the group ``mdpipe.processors`` (``momentum``) or as ``module:Class``, and is
built with ``Class(settings)`` when its ``__init__`` takes an argument (``MdpSettings``), else ``Class()``.

What it returns goes through ``lua/plugin.lua`` in the same Redis transaction as the built-in processors:
``Publish`` is sent on ``signals.<name>`` or ``signals.<name>.<anything>`` in the MDC envelope with its
own ``seq``; ``Store`` writes ``<prefix>:signal:<name>:<key>``. A plug-in that raises is logged and
counted; the built-in processors' work on the same message goes on.

Plug-ins keep their own state in memory. Queues have one active consumer, so one replica sees all of a
queue's events; a replica taking over starts from scratch (see ``momentum`` for the pattern).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Protocol

import orjson

from mdc.names import CHANNEL_RE, SIGNALS

from .fold import Folded

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "mdpipe.processors"
_NAME = re.compile(r"[a-z0-9_]{1,40}")
_KEY = re.compile(r"[A-Za-z0-9.:/_^-]{1,200}")


@dataclass(frozen=True, slots=True)
class Publish:
    channel: str  # signals.<plugin> or signals.<plugin>.<suffix>
    type: str
    ts: int  # event time, ms
    data: Any


@dataclass(frozen=True, slots=True)
class Store:
    key: str
    value: Any
    ttl_s: int = 86_400


class Plugin(Protocol):
    name: str
    events: frozenset[str]

    def process(self, events: list[dict[str, Any]]) -> Iterable[Publish | Store]: ...


class PluginError(Exception):
    """A plug-in named in MDP_PLUGINS cannot be loaded; the message says why."""


def load(names: list[str], settings: object) -> list[Plugin]:
    plugins = []
    for name in names:
        cls = _resolve(name)
        try:
            takes_settings = len(inspect.signature(cls).parameters) > 0
            plugin = cls(settings) if takes_settings else cls()
        except Exception as exc:
            raise PluginError(f"plug-in {name}: cannot be built: {exc}") from None
        if not isinstance(getattr(plugin, "name", None), str) or not _NAME.fullmatch(plugin.name):
            raise PluginError(f"plug-in {name}: name must match [a-z0-9_]{{1,40}}")
        if not callable(getattr(plugin, "process", None)) or not isinstance(
            getattr(plugin, "events", None), frozenset
        ):
            raise PluginError(f"plug-in {name}: needs events (a frozenset) and process()")
        plugins.append(plugin)
    return plugins


def _resolve(name: str) -> type:
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise PluginError(f"plug-in {name}: {exc}") from None
    found = entry_points(group=ENTRY_POINT_GROUP, name=name)
    if not found:
        raise PluginError(f"plug-in {name}: no entry point of that name in group {ENTRY_POINT_GROUP}")
    return next(iter(found)).load()


class PluginFold:
    """Runs one plug-in on its events and turns its outputs into ``plugin.lua`` records."""

    kind = "plugin"

    def __init__(self, plugin: Plugin) -> None:
        self.plugin = plugin
        self.errors = 0
        self._namespace = f"{SIGNALS}.{plugin.name}"

    def fold(self, events: list[dict[str, Any]]) -> Folded:
        out = Folded(self.kind, events=len(events))
        try:
            outputs = list(self.plugin.process(events))
        except Exception:
            self.errors += 1
            log.exception("plug-in failed on a batch", extra={"plugin": self.plugin.name})
            return out
        for item in outputs:
            try:
                out.records.append(self._record(item))
            except (ValueError, TypeError, orjson.JSONEncodeError) as exc:
                self.errors += 1
                log.warning("plug-in output refused", extra={"plugin": self.plugin.name, "error": str(exc)})
        return out

    def _record(self, item: Publish | Store) -> list[Any]:
        if isinstance(item, Publish):
            ns = self._namespace
            if not (item.channel == ns or item.channel.startswith(ns + ".")) or not CHANNEL_RE.fullmatch(
                item.channel
            ):
                raise ValueError(f"channel {item.channel[:80]!r} is outside {ns}")
            if not _NAME.fullmatch(item.type) or type(item.ts) is not int:
                raise ValueError("type must match [a-z0-9_]+ and ts be an integer")
            return ["pub", item.channel, item.type, item.ts, orjson.dumps(item.data).decode()]
        if isinstance(item, Store):
            if not _KEY.fullmatch(item.key) or type(item.ttl_s) is not int or item.ttl_s <= 0:
                raise ValueError("store key must match [A-Za-z0-9.:/_^-]+ and ttl_s be a positive integer")
            return ["set", f"{self.plugin.name}:{item.key}", orjson.dumps(item.value).decode(), item.ttl_s]
        raise TypeError(f"not a Publish or Store: {type(item).__name__}")
