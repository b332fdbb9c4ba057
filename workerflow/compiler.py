"""Compiling a flow: turn nested flows into one dependency graph of atoms and validate it.

Compilation runs before any task does and fails with a :class:`~workerflow.errors.CompilationError`
that names the problem: a missing input (task and names), a cycle (the tasks in it), a name several
tasks provide where it is not clear which one is meant, a name used twice.

The result is a list of :class:`Node` (tasks and retry controllers) with successor and predecessor
lists, and for every input of every node the node whose result feeds it (or the initial store).

How a consumer's input is resolved: starting from the flow holding it and moving outwards, a
``LinearFlow`` offers the nearest earlier item providing the name, a ``GraphFlow`` the one other
item providing it (and orders that item first), an ``UnorderedFlow`` nothing, and a flow's retry
controller its own value; when no flow offers the name the initial store does. Edges are made
between whole items (an item that is a flow starts after the item it needs has wholly finished),
which keeps every flow with a retry controller self-contained: nothing outside it consumes a partial
result of it.
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from workerflow.errors import (
    AmbiguousProvider,
    CompilationError,
    CyclicDependency,
    DuplicateName,
    MissingInput,
)
from workerflow.flow import Flow, GraphFlow, Item, LinearFlow, UnorderedFlow
from workerflow.retry import Retry
from workerflow.task import Task

__all__ = ["STORE", "Binding", "CompiledFlow", "Node", "Scope", "compile_flow"]

#: ``Binding.source`` of a value read from the initial store.
STORE = -1

Kind = Literal["linear", "unordered", "graph"]


@dataclass(frozen=True, slots=True)
class Binding:
    """One keyword argument of a node: where its value comes from."""

    param: str
    name: str  # the stored name
    source: int  # provider node index, or STORE
    position: int  # index into the provider's result when it provides several names, else -1
    optional: bool


@dataclass(eq=False)
class Scope:
    """The atoms governed by one retry controller (the root scope has none)."""

    controller: int | None
    parent: Scope | None
    members: list[int] = field(default_factory=list)  # every node inside, nested ones too

    def chain(self) -> Iterable[Scope]:
        """This scope and its enclosing ones, innermost first."""
        scope: Scope | None = self
        while scope is not None:
            yield scope
            scope = scope.parent


@dataclass(eq=False, slots=True)
class Node:
    """A task or retry controller in the compiled graph."""

    index: int
    name: str
    atom: Task | Retry
    scope: Scope  # the innermost scope this node is a member of
    controls: Scope | None = None  # for a retry controller: the scope it governs
    successors: list[int] = field(default_factory=list)
    predecessors: list[int] = field(default_factory=list)
    bindings: tuple[Binding, ...] = ()
    inject: dict[str, Any] = field(default_factory=dict)
    provides: tuple[str, ...] = ()
    has_revert: bool = False


@dataclass(eq=False)
class CompiledFlow:
    """A validated flow, ready for an engine."""

    name: str
    nodes: list[Node]
    root: Scope
    by_name: dict[str, Node]


@dataclass(eq=False)
class _FlowInfo:
    flow: Flow
    kind: Kind
    parent: _FlowInfo | None
    position: int  # index of this flow among its parent's items
    items: list[_FlowInfo | Node] = field(default_factory=list)
    providers: dict[str, list[int]] = field(default_factory=dict)  # name -> item indexes
    retry_node: Node | None = None
    item_edges: set[tuple[int, int]] = field(default_factory=set)


def _kind(flow: Flow) -> Kind:
    if isinstance(flow, GraphFlow):
        return "graph"
    if isinstance(flow, UnorderedFlow):
        return "unordered"
    if isinstance(flow, LinearFlow):
        return "linear"
    raise CompilationError(f"{flow!r}: unknown flow kind {type(flow).__name__}")


class _Compiler:
    def __init__(self, flow: Flow, store_names: Collection[str]) -> None:
        self.flow = flow
        self.store_names = store_names
        self.nodes: list[Node] = []
        self.names: set[str] = set()
        self.seen: set[int] = set()
        self.root = Scope(None, None)
        self.locations: list[tuple[_FlowInfo | None, int]] = []  # per node: where it sits

    # -- structure -----------------------------------------------------------------------------

    def claim(self, name: str, obj: object) -> None:
        if name in self.names or id(obj) in self.seen:
            raise DuplicateName(name)
        self.names.add(name)
        self.seen.add(id(obj))

    def add_node(
        self, atom: Task | Retry, name: str, scope: Scope, where: tuple[_FlowInfo | None, int]
    ) -> Node:
        node = Node(len(self.nodes), name, atom, scope)
        if isinstance(atom, Task):
            node.provides = atom.provides_names
            node.inject = dict(atom.inject or {})
            node.has_revert = atom.has_revert
        else:
            node.provides = atom.provides_names
        self.nodes.append(node)
        self.locations.append(where)
        return node

    def build(self, flow: Flow, parent: _FlowInfo | None, position: int, scope: Scope) -> _FlowInfo:
        self.claim(flow.name, flow)
        info = _FlowInfo(flow, _kind(flow), parent, position)
        inner = scope
        if flow.retry is not None:
            retry = flow.retry
            name = retry.name or f"{flow.name}.retry"
            self.claim(name, retry)
            # A controller reads its inputs from outside its flow, like the flow itself would.
            where = (parent, position) if parent is not None else (None, -1)
            info.retry_node = self.add_node(retry, name, scope, where)
            inner = Scope(info.retry_node.index, scope)
            info.retry_node.controls = inner
        for index, item in enumerate(flow.items):
            if isinstance(item, Flow):
                sub = self.build(item, info, index, inner)
                info.items.append(sub)
                names: Iterable[str] = sub.providers.keys()
                if sub.retry_node is not None:
                    names = [*names, *sub.retry_node.provides]
            else:
                self.claim(item.name, item)
                node = self.add_node(item, item.name, inner, (info, index))
                info.items.append(node)
                names = node.provides
            for name in set(names):
                info.providers.setdefault(name, []).append(index)
        return info

    # -- dataflow ------------------------------------------------------------------------------

    def provider_within(self, item: _FlowInfo | Node, name: str, consumer: str) -> Node:
        while isinstance(item, _FlowInfo):
            indexes = item.providers.get(name)
            if not indexes:
                assert item.retry_node is not None
                return item.retry_node
            if item.kind != "linear" and len(indexes) > 1:
                raise AmbiguousProvider(name, self.describe(item, indexes), consumer)
            item = item.items[indexes[-1]]
        return item

    def describe(self, info: _FlowInfo, indexes: Iterable[int]) -> list[str]:
        out = []
        for i in indexes:
            item = info.items[i]
            out.append(item.name if isinstance(item, Node) else item.flow.name)
        return out

    def resolve(self, node: Node, name: str) -> Node | None:
        """The node providing ``name`` to ``node``, or None for the initial store."""
        info, index = self.locations[node.index]
        while info is not None:
            indexes = info.providers.get(name, ())
            found: int | None = None
            if info.kind == "linear":
                at = bisect.bisect_left(indexes, index)
                if at > 0:
                    found = indexes[at - 1]
            elif info.kind == "graph":
                others = [i for i in indexes if i != index]
                if len(others) > 1:
                    raise AmbiguousProvider(name, self.describe(info, others), node.name)
                if others:
                    found = others[0]
                    info.item_edges.add((found, index))
            if found is not None:
                return self.provider_within(info.items[found], name, node.name)
            if info.retry_node is not None and name in info.retry_node.provides:
                return info.retry_node
            index = info.position
            info = info.parent
        return None

    def bind(self, node: Node) -> None:
        atom = node.atom
        if isinstance(atom, Task):
            inputs = atom.inputs
            wanted = [(p, n, False) for p, n in inputs.required.items()]
            wanted += [(p, n, True) for p, n in inputs.optional.items()]
        else:
            wanted = [(p, n, False) for p, n in atom.inputs.items()]
        bindings = []
        missing = []
        for param, name, optional in wanted:
            provider = self.resolve(node, name)
            if provider is not None:
                position = provider.provides.index(name) if len(provider.provides) > 1 else -1
                bindings.append(Binding(param, name, provider.index, position, optional))
            elif name in self.store_names:
                bindings.append(Binding(param, name, STORE, -1, optional))
            elif not optional:
                missing.append(name)
        if missing:
            raise MissingInput(node.name, missing)
        node.bindings = tuple(bindings)

    # -- edges ---------------------------------------------------------------------------------

    def connect(self, before: list[int], after: list[int]) -> None:
        nodes = self.nodes
        for a in before:
            successors = nodes[a].successors
            for b in after:
                successors.append(b)
                nodes[b].predecessors.append(a)

    def wire(self, info: _FlowInfo) -> tuple[list[int], list[int]]:
        """Add the edges inside ``info``; return its entry and exit nodes."""
        ends = [
            self.wire(item) if isinstance(item, _FlowInfo) else ([item.index], [item.index])
            for item in info.items
        ]
        entries: list[int] = []
        exits: list[int] = []
        if info.kind == "linear":
            for item_entries, item_exits in ends:
                if not item_entries:
                    continue
                if exits:
                    self.connect(exits, item_entries)
                else:
                    entries = item_entries
                exits = item_exits
        elif info.kind == "unordered":
            for item_entries, item_exits in ends:
                entries += item_entries
                exits += item_exits
        else:
            edges = set(info.item_edges)
            assert isinstance(info.flow, GraphFlow)
            for before, after in info.flow.links:
                edges.add((self.item_index(info, before), self.item_index(info, after)))
            has_in = {b for _, b in edges}
            has_out = {a for a, _ in edges}
            for a, b in sorted(edges):
                self.connect(ends[a][1], ends[b][0])
            for i, (item_entries, item_exits) in enumerate(ends):
                if i not in has_in:
                    entries += item_entries
                if i not in has_out:
                    exits += item_exits
        if info.retry_node is not None:
            controller = info.retry_node.index
            self.connect([controller], entries)
            entries = [controller]
            if not exits:
                exits = [controller]
        return entries, exits

    def item_index(self, info: _FlowInfo, item: Item) -> int:
        for index, candidate in enumerate(info.flow.items):
            if candidate is item:
                return index
        name = item.name
        raise CompilationError(
            f"flow {info.flow.name!r} links {name!r}, which is not one of its items"
        )

    def check_cycles(self) -> None:
        nodes = self.nodes
        indegree = [len(n.predecessors) for n in nodes]
        ready = [n.index for n in nodes if not indegree[n.index]]
        done = 0
        while ready:
            i = ready.pop()
            done += 1
            for j in nodes[i].successors:
                indegree[j] -= 1
                if not indegree[j]:
                    ready.append(j)
        if done == len(nodes):
            return
        # Every node left has a predecessor left, so walking predecessors must revisit one.
        left = {i for i, d in enumerate(indegree) if d > 0}
        path: list[int] = []
        on_path: dict[int, int] = {}
        i = min(left)
        while i not in on_path:
            on_path[i] = len(path)
            path.append(i)
            i = next(p for p in nodes[i].predecessors if p in left)
        cycle = path[on_path[i] :][::-1]
        raise CyclicDependency([nodes[c].name for c in [*cycle, cycle[0]]])

    def run(self) -> CompiledFlow:
        info = self.build(self.flow, None, -1, self.root)
        for node in self.nodes:
            self.bind(node)
        self.wire(info)
        self.check_cycles()
        for node in self.nodes:
            for scope in node.scope.chain():
                scope.members.append(node.index)
        return CompiledFlow(self.flow.name, self.nodes, self.root, {n.name: n for n in self.nodes})


def compile_flow(flow: Flow, store_names: Collection[str] = ()) -> CompiledFlow:
    """Validate ``flow`` against the names the store will hold and build its dependency graph."""
    if not isinstance(flow, Flow):
        raise TypeError(f"an engine runs a Flow, not {flow!r}")
    return _Compiler(flow, store_names).run()
