"""Just enough PromQL reading to check what a query names: its metrics, their label matchers, the labels it
groups by and the functions it calls (used by the dashboard and alert tests; no PromQL is evaluated).

Grafana's template variables (``$sku``, ``${sku}``, ``$__rate_interval``) are accepted where Grafana
substitutes them: in label values and in range brackets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

FUNCTIONS = frozenset({
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh",
    "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh",
    "count_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "deg", "delta",
    "deriv", "exp", "floor", "histogram_avg", "histogram_count", "histogram_fraction",
    "histogram_quantile", "histogram_stddev", "histogram_stdvar", "histogram_sum", "holt_winters", "hour",
    "idelta", "increase", "irate", "label_join", "label_replace", "last_over_time", "ln", "log10", "log2",
    "mad_over_time", "max_over_time", "min_over_time", "minute", "month", "pi", "predict_linear",
    "present_over_time", "quantile_over_time", "rad", "rate", "resets", "round", "scalar", "sgn", "sin",
    "sinh", "sort", "sort_by_label", "sort_by_label_desc", "sort_desc", "sqrt", "stddev_over_time",
    "stdvar_over_time", "sum_over_time", "tan", "tanh", "time", "timestamp", "vector", "year"
})  # fmt: skip
AGGREGATIONS = frozenset({
    "avg", "bottomk", "count", "count_values", "group", "limit_ratio", "limitk", "max", "min", "quantile",
    "stddev", "stdvar", "sum", "topk"
})  # fmt: skip
# Followed by a parenthesised list of label names, not by an expression.
LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset"})

_QUOTED = r"""(?:"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)"""
_TOKEN = re.compile(
    rf"""
      (?P<space>\s+)
    | (?P<selector>(?P<metric>[A-Za-z_:][A-Za-z0-9_:]*)?\s*\{{(?P<matchers>(?:[^{{}}"'`]|{_QUOTED})*)\}})
    | (?P<string>{_QUOTED})
    | (?P<range>\[[^\]]*\])
    | (?P<duration>\d+(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*(?![A-Za-z0-9_]))
    | (?P<number>0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?![A-Za-z_]))
    | (?P<variable>\$\{{\w+(?::\w+)?\}}|\$\w+|\[\[\w+\]\])
    | (?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<operator>==|!=|>=|<=|=~|!~|[-+*/%^<>(),@])
    """,
    re.VERBOSE,
)
_MATCHER = re.compile(rf"\s*([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*({_QUOTED})\s*(?:,|$)")
_DURATION = r"(?:\d+(?:ms|[smhdwy]))+"
_RANGE = re.compile(rf"\[\s*(?:{_DURATION}|\$\{{?\w+\}}?)\s*(?::\s*(?:{_DURATION})?\s*)?\]")
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


class PromQLError(ValueError):
    """The expression is not one this reader understands (or not PromQL at all)."""


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str
    value: str

    @property
    def templated(self) -> bool:
        """True when Grafana fills the value in (``$sku``): only the label can be checked."""
        return "$" in self.value or "[[" in self.value

    def pattern(self) -> re.Pattern[str]:
        """The value as the anchored regex Prometheus uses for =~ and !~ (a template variable as .*)."""
        value = re.sub(r"\$\{\w+(?::\w+)?\}|\$\w+|\[\[\w+\]\]", ".*", self.value)
        return re.compile(f"^(?:{value})$")


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: tuple[Matcher, ...] = ()


@dataclass
class Query:
    selectors: list[Selector] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)  # labels named in by/without/on/ignoring/group_*
    functions: set[str] = field(default_factory=set)  # functions and aggregations called
    variables: set[str] = field(default_factory=set)  # Grafana variables used ($sku -> "sku")

    @property
    def metrics(self) -> set[str]:
        return {selector.metric for selector in self.selectors}


def _unquote(literal: str) -> str:
    body = literal[1:-1]
    return body if literal[0] == "`" else re.sub(r"\\(.)", r"\1", body)


def _variables(text: str) -> set[str]:
    return {next(name for name in found if name) for found in _VARIABLE.findall(text)}


def _matchers(text: str, expr: str) -> tuple[Matcher, ...]:
    """The matchers between a selector's braces."""
    found, position = [], 0
    while text[position:].strip():
        match = _MATCHER.match(text, position)
        if match is None:
            raise PromQLError(f"cannot read the label matchers {{{text}}} in {expr!r}")
        found.append(Matcher(match.group(1), match.group(2), _unquote(match.group(3))))
        position = match.end()
    return tuple(found)


def _tokens(expr: str) -> list[re.Match[str]]:
    tokens, position = [], 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None:
            raise PromQLError(f"unexpected {expr[position : position + 20]!r} in {expr!r}")
        if match.lastgroup != "space":
            tokens.append(match)
        position = match.end()
    return tokens


def parse(expr: str) -> Query:
    """Reads one PromQL expression; raises PromQLError on anything it does not understand."""
    tokens = _tokens(expr)
    query = Query()
    depth = 0
    i = 0
    while i < len(tokens):
        token = tokens[i]
        kind, text = token.lastgroup, token.group()
        after = tokens[i + 1].group() if i + 1 < len(tokens) else ""
        if kind == "variable":
            query.variables |= _variables(text)
        elif kind == "range":
            if not _RANGE.fullmatch(text):
                raise PromQLError(f"bad range {text} in {expr!r}")
            query.variables |= _variables(text)
        elif kind == "selector":
            metric = token.group("metric")
            matchers = _matchers(token.group("matchers"), expr)
            if metric is None:  # {__name__="..."}
                metric = next((m.value for m in matchers if m.label == "__name__" and m.op == "="), None)
                if metric is None:
                    raise PromQLError(f"a selector without a metric name in {expr!r}")
                matchers = tuple(m for m in matchers if m.label != "__name__")
            query.selectors.append(Selector(metric, matchers))
            query.variables |= {name for m in matchers for name in _variables(m.value)}
        elif kind == "name" and text in LABEL_LISTS:
            close = next((j for j in range(i + 1, len(tokens)) if tokens[j].group() == ")"), None)
            if after != "(" or close is None:
                raise PromQLError(f"{text} needs a label list in {expr!r}")
            labels = [t.group() for t in tokens[i + 2 : close] if t.group() != ","]
            if any(not re.fullmatch(r"[A-Za-z_]\w*", label) for label in labels):
                raise PromQLError(f"{text}({', '.join(labels)}) must list label names in {expr!r}")
            query.grouping |= set(labels)
            i = close
        elif kind == "name" and (after == "(" or (text in AGGREGATIONS and after in ("by", "without"))):
            if text not in FUNCTIONS and text not in AGGREGATIONS:
                raise PromQLError(f"unknown function {text}() in {expr!r}")
            query.functions.add(text)
        elif kind == "name" and text not in KEYWORDS:
            query.selectors.append(Selector(text))
        elif text == "(":
            depth += 1
        elif text == ")":
            depth -= 1
            if depth < 0:
                raise PromQLError(f"unbalanced ) in {expr!r}")
        i += 1
    if depth != 0:
        raise PromQLError(f"unbalanced ( in {expr!r}")
    if not query.selectors:
        raise PromQLError(f"no metric in {expr!r}")
    return query


_LABEL_VALUES = re.compile(r"\s*label_values\(\s*(?P<selector>.+?)\s*,\s*(?P<label>[A-Za-z_]\w*)\s*\)\s*")


def label_values(text: str) -> tuple[Query, str]:
    """Grafana's variable query ``label_values(selector, label)``: (the selector as a Query, the label).
    The one-argument form (any metric) is refused: it names no metric that could be checked."""
    match = _LABEL_VALUES.fullmatch(text)
    if match is None:
        raise PromQLError(f"{text!r} is not label_values(metric, label)")
    return parse(match.group("selector")), match.group("label")


def legend_labels(legend: str) -> set[str]:
    """The labels a Grafana legend format shows (``{{sku}} {{ state }}``)."""
    return set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
