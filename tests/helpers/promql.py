"""A small reader of PromQL, enough to check the expressions in deploy/ without Prometheus
(promtool is not installed here): that each is well formed (balanced brackets, known
functions, label matchers of the form `name op "value"`, ranges that are durations) and
which metric names and label names it uses. It reads the subset of PromQL deploy/ uses and
refuses the rest rather than guess at it."""

from __future__ import annotations

import re
from dataclasses import dataclass

# Prometheus's functions (https://prometheus.io/docs/prometheus/latest/querying/functions/).
FUNCTIONS = frozenset({
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh",
    "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh",
    "count_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "deg",
    "delta", "deriv", "exp", "floor", "histogram_avg", "histogram_count",
    "histogram_fraction", "histogram_quantile", "histogram_stddev", "histogram_stdvar",
    "histogram_sum", "holt_winters", "hour", "idelta", "increase", "irate", "label_join",
    "label_replace", "last_over_time", "ln", "log10", "log2", "mad_over_time",
    "max_over_time", "min_over_time", "minute", "month", "pi", "predict_linear",
    "present_over_time", "quantile_over_time", "rad", "rate", "resets", "round", "scalar",
    "sgn", "sin", "sinh", "sort", "sort_by_label", "sort_by_label_desc", "sort_desc", "sqrt",
    "stddev_over_time", "stdvar_over_time", "sum_over_time", "tan", "tanh", "time",
    "timestamp", "vector", "year",
})
AGGREGATIONS = frozenset({"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
                          "count_values", "bottomk", "topk", "quantile"})
# Each takes a parenthesised list of label names (group_left / group_right may go without).
GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
OPERATOR_WORDS = frozenset({"and", "or", "unless", "bool", "atan2"})
LITERALS = frozenset({"inf", "nan"})
# Grafana fills these in before the query reaches Prometheus.
_DURATION = r"(?:(?:\d+(?:ms|[smhdwy]))+|\$__(?:rate_interval|interval|range)|\$\{__\w+\})"
_RANGE = re.compile(rf"\[\s*{_DURATION}\s*(?::\s*(?:{_DURATION})?\s*)?\]")

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\[\]]*\])
  | (?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<compare>=~|!~|!=|==|<=|>=|=)
  | (?P<op>[-+*/%^<>])
  | (?P<punct>[(){},])
""", re.X)


class PromQLError(ValueError):
    pass


@dataclass(frozen=True)
class Selector:
    metric: str
    labels: frozenset[str]  # the label names its matchers test


@dataclass(frozen=True)
class Expression:
    text: str
    selectors: tuple[Selector, ...]
    functions: frozenset[str]
    grouping: frozenset[str]  # labels named in by / without / on / ignoring / group_*

    @property
    def metrics(self) -> frozenset[str]:
        return frozenset(s.metric for s in self.selectors)


def tokens(text: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise PromQLError(f"unexpected {text[pos:pos + 20]!r} at {pos} in {text!r}")
        kind = m.lastgroup or ""
        if kind != "space":
            found.append((kind, m.group()))
        pos = m.end()
    return found


def parse(text: str) -> Expression:
    toks = tokens(text)
    if not toks:
        raise PromQLError("empty expression")
    selectors: list[Selector] = []
    functions: set[str] = set()
    grouping: set[str] = set()
    depth = 0
    i = 0

    def peek(at: int) -> tuple[str, str]:
        return toks[at] if at < len(toks) else ("end", "")

    def label_list(at: int) -> tuple[list[str], int]:
        """Label names in `( a, b )` from `at` (the opening paren); returns them and the index
        after the closing paren."""
        names: list[str] = []
        at += 1
        while peek(at) != ("punct", ")"):
            kind, value = peek(at)
            if kind != "ident":
                raise PromQLError(f"expected a label name, got {value!r} in {text!r}")
            names.append(value)
            at += 1
            if peek(at) == ("punct", ","):
                at += 1
        return names, at + 1

    def matchers(at: int) -> tuple[list[str], int]:
        """Label names in `{ a="x", b=~"y" }` from `at` (the brace)."""
        names: list[str] = []
        at += 1
        while peek(at) != ("punct", "}"):
            (k1, name), (k2, op), (k3, value) = peek(at), peek(at + 1), peek(at + 2)
            if k1 != "ident" or k2 != "compare" or op not in ("=", "!=", "=~", "!~") \
                    or k3 != "string":
                raise PromQLError(f"bad label matcher {name}{op}{value} in {text!r}")
            names.append(name)
            at += 3
            if peek(at) == ("punct", ","):
                at += 1
        return names, at + 1

    while i < len(toks):
        kind, value = toks[i]
        nxt = peek(i + 1)
        if kind == "range":
            if not _RANGE.fullmatch(value):
                raise PromQLError(f"{value} is not a range duration in {text!r}")
            i += 1
        elif kind == "ident" and value in GROUPING:
            if nxt == ("punct", "("):
                names, i = label_list(i + 1)
                grouping.update(names)
            elif value.startswith("group_"):
                i += 1
            else:
                raise PromQLError(f"{value} without a label list in {text!r}")
        elif kind == "ident" and value in AGGREGATIONS and nxt in (("ident", "by"),
                                                                     ("ident", "without")):
            functions.add(value)  # `sum by (a) (x)`: the modifier before the parentheses
            i += 1
        elif kind == "ident" and nxt == ("punct", "("):
            if value not in FUNCTIONS | AGGREGATIONS:
                raise PromQLError(f"unknown function {value}() in {text!r}")
            functions.add(value)
            i += 1
        elif kind == "ident" and value.lower() in OPERATOR_WORDS | LITERALS:
            i += 1
        elif kind == "ident":
            labels: list[str] = []
            i += 1
            if peek(i) == ("punct", "{"):
                labels, i = matchers(i)
            selectors.append(Selector(value, frozenset(labels)))
        elif (kind, value) == ("punct", "{"):
            raise PromQLError(f"a selector without a metric name in {text!r}")
        elif kind == "compare" and value == "=":
            raise PromQLError(f"a lone '=' in {text!r}")
        else:
            if value == "(":
                depth += 1
            elif value == ")":
                depth -= 1
                if depth < 0:
                    raise PromQLError(f"unbalanced ')' in {text!r}")
            elif value == "}":
                raise PromQLError(f"unbalanced '}}' in {text!r}")
            i += 1
    if depth:
        raise PromQLError(f"unbalanced '(' in {text!r}")
    if not selectors and not functions:
        raise PromQLError(f"no metric in {text!r}")
    return Expression(text, tuple(selectors), frozenset(functions), frozenset(grouping))


def exposed_names(family: str, kind: str) -> set[str]:
    """The series names Prometheus stores for a family of the text exposition format (as
    prometheus_client's parser names it: a counter's family `x` is exposed as `x_total`)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("", "_count", "_sum", "_created"),
        "info": ("_info",),
        "stateset": ("",),
        "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    }.get(kind, ("",))
    return {family + suffix for suffix in suffixes}
