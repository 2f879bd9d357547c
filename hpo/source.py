"""Study and sweep files as text: where each value came from, and errors that point there.

A :class:`Source` is the top-level mapping of a YAML file together with the line of every
key (from the parser's marks), the plain text of every scalar, the paths that ``--set`` or
a matrix replaced, and the ``${VAR}`` templates that were expanded. With it, every problem
of a file is reported at once, one line each: ``file:line: field.path: message``.

Duplicate keys are problems here, not silently "the last one wins" as in ``safe_load``.
Every file (and ``--set`` value) is read with the safe loader within bounds: at most
``MAX_FILE_BYTES``, UTF-8, at most ``MAX_NODES`` values once aliases are expanded and
``MAX_DEPTH`` levels; anything beyond is one line naming the file, the line and the limit.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

from hpo.errors import ConfigError, FieldValueError

Key = tuple[str, ...]
# ``$${`` is a literal ``${``; ``${NAME}`` is an environment variable.
_ENV = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

# Study and sweep files are a few kB. These limits refuse hostile or mistaken files (an
# alias "billion laughs", a dataset given as the study) before they cost minutes and GBs,
# far above anything a real file reaches.
MAX_FILE_BYTES = 4 * 2**20
MAX_NODES = 100_000  # values (mappings, lists, scalars) once every alias is expanded
MAX_DEPTH = 100  # mappings and lists inside each other


@dataclass
class Source:
    """A YAML mapping plus where each of its keys and values came from.

    ``path`` is None for a study given as a Python mapping (:func:`mapping_source`): its
    problems name the field only.
    """

    path: str | None
    data: dict[str, Any]
    lines: dict[Key, int] = field(default_factory=dict)  # key path -> line of the key
    texts: dict[Key, str] = field(default_factory=dict)  # plain scalars as written
    overridden: set[Key] = field(default_factory=set)  # set by --set or a matrix
    retyped: dict[Key, str] = field(default_factory=dict)  # mapping -> its type before --set
    templates: dict[str, str] = field(default_factory=dict)  # dotted path -> "${VAR}/..."
    problems: list[ConfigError] = field(default_factory=list)
    # A mapping's keys in the order written (it has no lines to order its problems by).
    order: dict[Key, int] = field(default_factory=dict)

    def line_of(self, key: Key) -> int | None:
        """Line of ``key`` (or of its closest parent in the file); None if --set gave it."""
        if any(key[:i] in self.overridden for i in range(1, len(key) + 1)):
            return None
        for i in range(len(key), 0, -1):
            if key[:i] in self.lines:
                return self.lines[key[:i]]
        return None

    def problem(self, message: str, key: Key) -> ConfigError:
        """A ConfigError at ``key`` of this file."""
        return ConfigError(
            message, path=self.path, field=".".join(key) or None, line=self.line_of(key)
        )

    def in_order(self, problems: list[ConfigError]) -> list[ConfigError]:
        """``problems`` in the order of their fields in a mapping, as a file's are by line."""
        if not self.order:
            return problems
        last = len(self.order)

        def position(problem: ConfigError) -> int:
            key = tuple((problem.field or "").split("."))
            found = [self.order[key[:i]] for i in range(len(key), 0, -1) if key[:i] in self.order]
            return found[0] if found else last

        return sorted(problems, key=position)

    def locate(self, error: ConfigError) -> ConfigError:
        """``error`` with line numbers filled in for the problems that concern this file."""
        for problem in error.problems:
            if problem.path == self.path and problem.line is None and problem.field:
                problem.line = self.line_of(tuple(problem.field.split(".")))
        return error


def read_source(path: str | os.PathLike[str]) -> Source:
    """Read a YAML file's top-level mapping with the line of every key.

    Raises:
        ConfigError: the file is missing, a folder, over ``MAX_FILE_BYTES``, not UTF-8, not
            YAML, not a mapping, or expands (aliases) or nests beyond ``MAX_NODES`` or
            ``MAX_DEPTH``.
    """
    path = Path(path)
    text = _read_text(path)
    loader: _BoundedLoader | None = None
    try:
        loader = _BoundedLoader(text)
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except _TooLarge as e:
        raise ConfigError(e.message, path=str(path), line=e.mark.line + 1) from e
    except yaml.reader.ReaderError as e:  # a control character (a code point), before parsing
        line, at = _line_column(text, e.position)
        raise ConfigError(
            f"invalid YAML: control character #x{e.character:04x} (column {at}); remove it",
            path=str(path),
            line=line,
        ) from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        column = f" (column {mark.column + 1})" if mark else ""
        raise ConfigError(
            f"invalid YAML: {problem}{column}",
            path=str(path),
            line=mark.line + 1 if mark else None,
        ) from e
    finally:
        if loader is not None:
            loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping of study fields at the top level", path=str(path))
    source = Source(str(path), data)
    _walk(node, (), source)
    return source


def mapping_source(data: Any) -> Source:
    """A study given as a Python mapping, read as :func:`read_source` reads a file.

    The mapping is copied (``--set``-style overrides change the copy, never the caller's
    data); paths (``os.PathLike``) become their text and tuples lists, as YAML would
    give them. There is no file, so problems name the field without a file or line.

    Raises:
        ConfigError: ``data`` is not a mapping.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"expected a mapping of study fields (or a study file path), but got "
            f"{type(data).__name__}"
        )
    source = Source(None, _plain(data))
    _number_keys(source.data, (), source.order)
    return source


def _number_keys(data: Any, key: Key, order: dict[Key, int]) -> None:
    """Number every key path of ``data`` depth first: the order a YAML file's lines have."""
    items = data.items() if isinstance(data, dict) else enumerate(data)
    for name, value in items:
        child = (*key, str(name))
        order[child] = len(order)
        if isinstance(value, dict | list):
            _number_keys(value, child, order)


def _plain(value: Any) -> Any:
    """``value`` as the YAML loader would build it: dicts, lists, scalars (a deep copy)."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def yaml_text(value: Any) -> str:
    """``value`` as YAML text that reads back as the same value (for :func:`apply_override`)."""
    text = yaml.safe_dump(_plain(value), default_flow_style=True, width=10**9, sort_keys=False)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _read_text(path: Path) -> str:
    """The text of a study or sweep file, refused if it is no small UTF-8 file."""
    if path.is_dir():
        raise ConfigError("is a folder, not a file; name the YAML file in it", path=str(path))
    if not path.is_file():  # also a pipe or device, which could block or never end
        raise ConfigError("file not found; check the path", path=str(path))
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
            size = os.fstat(file.fileno()).st_size
    except OSError as e:
        raise ConfigError(f"cannot read the file: {e.strerror}", path=str(path)) from e
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(
            f"the file is over {MAX_FILE_BYTES // 2**20} MB ({size / 2**20:.1f} MB); "
            "study and sweep files are small: check that this is the right file",
            path=str(path),
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        line_start = data.rfind(b"\n", 0, e.start) + 1
        column = len(data[line_start : e.start].decode("utf-8")) + 1
        raise ConfigError(
            f"not UTF-8 text: byte 0x{data[e.start]:02x} at column {column} "
            f"(file offset {e.start}); save it as UTF-8",
            path=str(path),
            line=line,
        ) from e


def _line_column(text: str, position: int) -> tuple[int, int]:
    """1-based line and column of the character at ``position`` of ``text``."""
    line_start = text.rfind("\n", 0, position) + 1
    return text.count("\n", 0, position) + 1, position - line_start + 1


class _TooLarge(Exception):
    """A document that would expand or nest beyond the limits, at ``mark``."""

    def __init__(self, message: str, mark: yaml.Mark):
        self.message = message
        self.mark = mark
        super().__init__(message)


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader, refusing a document beyond ``MAX_NODES`` values or ``MAX_DEPTH`` levels.

    An alias is one node in the composed graph, but everything that walks the data (the
    line-number walk, ``${VAR}`` expansion, validation) visits its value once per alias:
    ten levels of ten aliases are 10**10 values. So each node's size once expanded is
    counted as it is composed, and the running total includes every alias at that size.
    """

    def __init__(self, text: str, *, what: str = "the file"):
        super().__init__(text)
        self._what = what
        self._sizes: dict[yaml.Node, int] = {}  # node -> values in it, aliases expanded
        self._total = 0
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        """Compose one node as the safe loader does, counting and limiting as it goes."""
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)
            if node not in self._sizes:  # its anchor is still being composed
                raise _TooLarge(
                    f"alias *{event.anchor} refers to a value that contains it; "
                    "study files are small: remove the recursive alias",
                    event.start_mark,
                )
            self._count(self._sizes[node], event.start_mark, alias=event.anchor)
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _TooLarge(
                f"values nested deeper than {MAX_DEPTH} levels "
                f"(column {event.start_mark.column + 1}); study files are small: flatten it",
                event.start_mark,
            )
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        else:
            children = []
        self._sizes[node] = 1 + sum(self._sizes[child] for child in children)
        self._count(1, event.start_mark)
        return node

    def _count(self, values: int, mark: yaml.Mark, alias: str | None = None) -> None:
        self._total += values
        if self._total <= MAX_NODES:
            return
        if alias is None:
            message = (
                f"{self._what} holds more than {MAX_NODES} YAML values; study files are small: "
                "check that this is the right file"
            )
        else:
            message = (
                f"alias *{alias} expands {self._what} beyond {MAX_NODES} YAML values; "
                "study files are small: remove the nested aliases"
            )
        raise _TooLarge(message, mark)


def _walk(node: yaml.Node, key: Key, source: Source) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            name, line = key_node.value, key_node.start_mark.line + 1
            child = (*key, name)
            if name in seen:
                source.problems.append(
                    ConfigError(
                        f"duplicate key `{name}` (lines {seen[name]} and {line}); "
                        "keep one of them",
                        path=source.path,
                        field=".".join(child),
                        line=line,
                    )
                )
            seen[name] = line
            source.lines[child] = line
            _walk(value_node, child, source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            source.lines[(*key, str(i))] = item.start_mark.line + 1
            _walk(item, (*key, str(i)), source)
    elif isinstance(node, yaml.ScalarNode) and node.style is None:
        source.texts[key] = node.value


def _load_value(text: str) -> Any:
    """A ``--set`` value as YAML, bounded like a file (an alias bomb fits in one argument)."""
    loader = _BoundedLoader(text, what="the value")
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def apply_override(source: Source, override: str, *, what: str = "--set") -> None:
    """Set ``a.b.c=VALUE`` in place; VALUE is YAML, so ``sampler={type: random}`` works.

    Raises:
        ConfigError: not ``key=value``, or a path through something that is not a mapping.
    """
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{what} expects key.path=value, but got {override!r}", path=source.path)
    try:
        value = _load_value(text) if text.strip() else None
    except _TooLarge as e:
        raise ConfigError(f"{what} {key.strip()}: {e.message}", path=source.path) from e
    except yaml.YAMLError:
        value = text
    parts = _key_parts(source.data, key.strip().split("."))
    node = source.data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"{what} {key}: {where} is not a mapping", path=source.path)
        node = child
    last, path = parts[-1], tuple(parts)
    old = node.get(last)
    if last == "type" and isinstance(old, str) and old != value and len(node) > 1:
        source.retyped[path[:-1]] = old  # its other options were meant for the old type
    node[last] = value
    source.overridden.add(path)
    source.texts = {k: v for k, v in source.texts.items() if k[: len(path)] != path}
    if not isinstance(value, (dict, list)):
        source.texts[path] = text.strip()


# The fields of a search-space parameter (hpo.space): what follows its name in a --set path.
_PARAM_FIELDS = frozenset({"type", "low", "high", "log", "step", "choices"})


def _key_parts(data: dict[str, Any], parts: list[str]) -> list[str]:
    """An override's path as keys: a search-space name may hold dots (``adapter.r``).

    ``search_space.adapter.r.high`` is the field ``high`` of the parameter ``adapter.r``:
    the longest name the file already has, else the parts up to a parameter field.
    """
    if len(parts) < 2 or parts[0] != "search_space":
        return parts
    rest, space = parts[1:], data.get("search_space")
    names = space if isinstance(space, dict) else {}
    end = next((i for i in range(len(rest), 0, -1) if ".".join(rest[:i]) in names), None)
    if end is None:
        end = next((i for i, p in enumerate(rest) if i and p in _PARAM_FIELDS), len(rest))
    return [parts[0], ".".join(rest[:end]), *rest[end:]]


def expand_env(source: Source, *, keep: set[Key]) -> None:
    """Expand ``${VAR}`` in every string value; an unset variable is a problem at its field.

    Paths in ``keep`` (storage URLs, which may hold passwords) are checked but keep their
    ``${VAR}`` text: they are expanded only when the storage is opened. Expanded fields
    remember their template so the stored config shows ``${VAR}``, never a secret.
    """

    def expand(value: Any, key: Key) -> Any:
        if isinstance(value, dict):
            return {k: expand(v, (*key, str(k))) for k, v in value.items()}
        if isinstance(value, list):
            return [expand(v, (*key, str(i))) for i, v in enumerate(value)]
        if not isinstance(value, str) or "$" not in value:
            return value
        missing: list[str] = []

        def substitute(match: re.Match[str]) -> str:
            if match[1] is None:
                return "${"
            if match[1] not in os.environ:
                missing.append(match[1])
                return match[0]
            return os.environ[match[1]]

        expanded = _ENV.sub(substitute, value)
        for name in dict.fromkeys(missing):
            source.problems.append(
                source.problem(
                    f"environment variable {name} is not set; export it before running",
                    key,
                )
            )
        if key in keep or expanded == value:
            return value
        source.templates[".".join(key)] = value
        return expanded

    source.data = expand(source.data, ())


def name_as_written(source: Source, key: Key) -> None:
    """Take ``name: 2026`` or ``name: yes`` as the text the user wrote, not a number/bool."""
    value = source.data.get(key[0]) if len(key) == 1 else None
    if isinstance(value, (bool, int, float)) and key in source.texts:
        source.data[key[0]] = source.texts[key]


def validation_problems(
    error: ValidationError,
    raw: Any,
    *,
    model: type[BaseModel],
    path: str | None,
    prefix: Key = (),
    source: Source | None = None,
) -> list[ConfigError]:
    """Every pydantic error as a ConfigError with a dotted field path (and line)."""
    problems: list[ConfigError] = []
    suggested: set[Key] = set()
    stale: dict[Key, list[str]] = {}  # options left over after --set changed only `type`
    for item in error.errors():
        key = (*prefix, *_key(item["loc"], raw))
        cause = (item.get("ctx") or {}).get("error")
        if isinstance(cause, FieldValueError):  # a model validator naming one field
            problems.append(_at(str(cause), (*key, *cause.field.split(".")), path, source))
            continue
        if item["type"] == "extra_forbidden" and source and key[:-1] in source.retyped:
            stale.setdefault(key[:-1], []).append(key[-1])
            continue
        if item["type"] == "extra_forbidden":
            known = _known_fields(model, item["loc"][:-1])
            close = difflib.get_close_matches(key[-1], known, n=1, cutoff=0.6)
            suggested.update((*key[:-1], c) for c in close)
            message = _unknown_field(key[-1], known, close)
        else:
            message = _message(item)
        problems.append(_at(message, key, path, source))
    for parent, names in stale.items():
        assert source is not None  # only a Source records retyped mappings
        new_type, old_type = _get(source.data, parent).get("type"), source.retyped[parent]
        dotted = ".".join(parent)
        problems.append(
            source.problem(
                f"type `{new_type}` takes no option {', '.join(f'`{n}`' for n in names)} "
                f"(set for `{old_type}`); replace the whole mapping, e.g. "
                f"--set '{dotted}={{type: {new_type}}}' or `{dotted}: [{{type: {new_type}}}]` "
                "in a sweep matrix",
                parent,
            )
        )
    # "search_space: field required" says nothing new after "did you mean `search_space`?".
    return [p for p in problems if not _answered(p, suggested)]


def _answered(problem: ConfigError, suggested: set[Key]) -> bool:
    return problem.message.startswith("field required") and bool(
        problem.field and tuple(problem.field.split(".")) in suggested
    )


def _at(message: str, key: Key, path: str | None, source: Source | None) -> ConfigError:
    if source is not None and source.path == path:
        return source.problem(message, key)
    return ConfigError(message, path=path, field=".".join(key) or None)


def _unknown_field(name: str, known: list[str], close: list[str]) -> str:
    if close:
        return f"unknown field `{name}`; did you mean `{close[0]}`?"
    if known:
        return f"unknown field `{name}`; remove it or use one of {', '.join(known)}"
    return f"unknown field `{name}`; remove it"


# How to fix what pydantic's common errors say, by error type; {got} is the value given.
_FIXES = {
    "greater_than": "got {got}; use a value above {gt}",
    "greater_than_equal": "got {got}; use {ge} or more",
    "less_than": "got {got}; use a value below {lt}",
    "less_than_equal": "got {got}; use {le} or less",
    "int_parsing": "got {got}; write a whole number, such as 8",
    "int_type": "got {got}; write a whole number, such as 8",
    "int_from_float": "got {got}; write a whole number, such as 8",
    "float_parsing": "got {got}; write a number, such as 0.1",
    "float_type": "got {got}; write a number, such as 0.1",
    "bool_parsing": "got {got}; write true or false",
    "bool_type": "got {got}; write true or false",
    "string_type": "got {got}; quote it to make it text",
    "literal_error": "got {got}",
    "enum": "got {got}",
    "list_type": "got {got}; write a list, such as [a, b]",
    "dict_type": "got {got}; write a mapping, such as {{key: value}}",
    "model_type": "got {got}; write a mapping, such as {{key: value}}",
    "model_attributes_type": "got {got}; write a mapping, such as {{key: value}}",
}


def _message(item: Any) -> str:
    message = str(item["msg"]).removeprefix("Value error, ")
    kind = item["type"]
    if kind == "missing":
        return "field required; add it"
    if kind == "union_tag_invalid":
        return message.replace("Input tag", "type").replace(" found using 'type'", "")
    if kind == "union_tag_not_found":
        return "needs a `type` key"
    fix = _FIXES.get(kind)
    if fix is None:
        return message
    got = repr(item.get("input"))
    got = got if len(got) <= 40 else got[:37] + "..."
    return f"{message}: " + fix.format(got=got, **(item.get("ctx") or {}))


def _get(data: Any, key: Key) -> Any:
    for part in key:
        data = data.get(part, {}) if isinstance(data, dict) else {}
    return data


def _key(loc: tuple[Any, ...], raw: Any) -> Key:
    """``loc`` as a key path of the file, without the tags pydantic adds for tagged unions."""
    parts: list[str] = []
    node = raw
    for item in loc:
        if isinstance(node, dict) and item not in node and node.get("type") == item:
            continue  # a union tag such as 'tpe' or 'float', not a key in the file
        parts.append(str(item))
        if isinstance(node, dict):
            node = node.get(item)
        elif isinstance(node, list) and isinstance(item, int) and item < len(node):
            node = node[item]
        else:
            node = None
    return tuple(parts)


def _known_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names a mapping at ``loc`` (a pydantic loc, tags included) may hold."""
    annotation: Any = model
    for item in loc:
        annotation = _child(annotation, item)
        if annotation is None:
            return []
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [
            f.alias or name
            for name, f in annotation.model_fields.items()
            if not f.exclude and name != "type"
        ]
    return []


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated and Optional around a type."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _child(annotation: Any, item: Any) -> Any:
    annotation = _unwrap(annotation)
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        for name, info in annotation.model_fields.items():
            if item in (name, info.alias):
                return info.annotation
        return None
    if origin is dict:
        return typing.get_args(annotation)[1]
    if origin is list:
        return typing.get_args(annotation)[0]
    if origin in (typing.Union, types.UnionType):  # a tagged union: ``item`` is the tag
        for member in typing.get_args(annotation):
            tag = getattr(member, "model_fields", {}).get("type")
            if tag is not None and typing.get_origin(tag.annotation) is Literal:
                if item in typing.get_args(tag.annotation):
                    return member
    return None
