"""CsvStats: a summary of a CSV file, column by column.

Numbers get count, min, max, mean and median; other columns get the number
of distinct values and the most common ones. The file is read with Python's
own `open`, so it is reachable only if it lies inside the calling pod's scope:
the host preopens exactly those directories, and nothing else exists for
this component.
"""

import csv
import json
import os
import statistics
from collections import Counter

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import context, types

SCHEMA = {
    "type": "object",
    "properties": {
        "path": {"type": "string", "description": "CSV file; relative paths start at the pod's working directory"},
        "delimiter": {"type": "string", "minLength": 1, "maxLength": 1, "description": "Default: guessed"},
        "max_rows": {"type": "integer", "minimum": 1, "description": "Rows to read at most (default 100000)"},
    },
    "required": ["path"],
    "additionalProperties": False,
}


def fail(error):
    return Err(error)


def denied_by_rules(path, pod):
    """Whether a deny rule takes all access to `path` away. The preopens
    cannot express deny rules inside an allowed tree, so a tool that opens
    paths the model names checks them itself."""
    for rule in pod.deny:
        if rule.permission != context.Permission.READ:
            continue
        target = rule.target.rstrip("/") or "/"
        inside = path == target or path.startswith(target + "/")
        if inside and (rule.recursive or path == target or os.path.dirname(path) == target):
            return True
    return False


def number(text):
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and abs(value) != float("inf") else None


def describe_column(name, values):
    present = [v for v in values if v.strip() != ""]
    line = f"{name}: {len(present)} values"
    if len(present) < len(values):
        line += f", {len(values) - len(present)} empty"
    numbers = [number(v) for v in present]
    if present and all(n is not None for n in numbers):
        mean = statistics.fmean(numbers)
        line += (
            f", numeric: min {min(numbers):g}, max {max(numbers):g}, "
            f"mean {mean:.6g}, median {statistics.median(numbers):g}"
        )
    elif present:
        counts = Counter(present)
        # Sorted by hand: componentize-py bundles the modules the app imports,
        # and Counter.most_common imports heapq lazily.
        top = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:3]
        common = ", ".join(f"{v!r} ×{n}" for v, n in top)
        line += f", {len(counts)} distinct, most common: {common}"
    return line


class Tool(exports.Tool):
    def describe(self):
        return [
            types.ToolInfo(
                name="CsvStats",
                description=(
                    "Summarises a CSV file: row count, and per column the number of values, "
                    "min/max/mean/median for numbers, distinct and most common values for text."
                ),
                input_schema=json.dumps(SCHEMA),
            )
        ]

    def call(self, tool, input):
        if tool != "CsvStats":
            raise fail(types.ToolError_InvalidInput(f"this plugin has no tool `{tool}`"))
        try:
            args = json.loads(input)
            path = args["path"]
            assert isinstance(path, str) and path
        except (ValueError, KeyError, TypeError, AssertionError):
            raise fail(types.ToolError_InvalidInput('give {"path": "file.csv"}'))
        max_rows = args.get("max_rows", 100_000)
        pod = context.pod()
        path = os.path.realpath(os.path.join(pod.working_dir, path))
        if denied_by_rules(path, pod):
            raise fail(types.ToolError_PermissionDenied(f"{path}: a deny rule of this pod covers it"))
        try:
            with open(path, newline="", encoding="utf-8", errors="replace") as file:
                sample = file.read(64 * 1024)
                file.seek(0)
                delimiter = args.get("delimiter")
                if not delimiter:
                    try:
                        delimiter = csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
                    except csv.Error:
                        delimiter = ","
                reader = csv.reader(file, delimiter=delimiter)
                header = next(reader, None)
                if header is None:
                    raise fail(types.ToolError_InvalidInput(f"{path} is empty"))
                columns = [[] for _ in header]
                rows = 0
                for row in reader:
                    if rows == max_rows:
                        break
                    rows += 1
                    for i, column in enumerate(columns):
                        column.append(row[i] if i < len(row) else "")
        except FileNotFoundError:
            raise fail(types.ToolError_NotFound(f"{path} does not exist, or lies outside this pod's scope"))
        except (PermissionError, IsADirectoryError) as e:
            raise fail(types.ToolError_PermissionDenied(f"{path}: {e.strerror}"))
        except OSError as e:
            raise fail(types.ToolError_Failed(f"{path}: {e}"))
        lines = [describe_column(name or f"column {i + 1}", column) for i, (name, column) in enumerate(zip(header, columns))]
        cut = f" (stopped at {max_rows})" if rows == max_rows else ""
        summary = f"{path}: {rows} rows{cut}, {len(header)} columns, delimiter {delimiter!r}"
        return types.ToolOutput(summary=summary, content="\n".join(lines))
