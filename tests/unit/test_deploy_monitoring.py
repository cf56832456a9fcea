"""The Grafana dashboard (deploy/grafana/twinstream.json) and the Prometheus alert rules
(deploy/prometheus/alerts.yml) against the code: every query parses as PromQL, every metric and
label it names exists in the workers' or the API's registry, the dashboard has what Grafana needs
to import it, and every metric the code exports is on the dashboard."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import promql_parser
import pytest
import yaml

from api.metrics import ApiMetrics
from worker.metrics import WorkerMetrics

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "twinstream.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"

# Labels Prometheus adds to every scraped series, and the histogram bucket label.
TARGET_LABELS = {"instance", "job", "le"}
# Series Prometheus itself makes for every scrape target.
PROMETHEUS_SERIES = {"up": set()}
# Grafana's built-in interval variables, replaced by a duration before parsing.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def code_series() -> dict[str, set[str]]:
    """Every series name the code can export (``_total``, ``_bucket``... included) -> its labels.
    Read from the registries themselves, so a renamed metric fails this test."""
    worker = WorkerMetrics()
    worker.track_uncommitted(lambda: 0, lambda: 0)  # registered when a worker starts
    series: dict[str, set[str]] = {}
    for registry in (worker.registry, ApiMetrics().registry):
        # prometheus_client keeps no public name -> collector map; this one is what it checks
        # duplicates against, so it lists every sample name a collector produces.
        for name, collector in registry._names_to_collectors.items():
            series[name] = set(getattr(collector, "_labelnames", ()))
    return series


SERIES = code_series()
FAMILIES = {name for name in SERIES if not name.endswith("_created")}


def parse(expr: str):
    for variable, duration in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, duration)
    try:
        return promql_parser.parse(expr)
    except Exception as exc:  # the parser raises its own error types
        raise AssertionError(f"not valid PromQL: {expr!r}: {exc}") from exc


def walk(node, selectors: list, grouping: set[str]) -> None:
    """Collect (metric name, matcher labels) of every selector and the labels of every
    by/without/on/ignoring/group_left clause."""
    kind = type(node).__name__
    if kind == "VectorSelector":
        labels = {m.name for m in node.matchers.matchers}
        selectors.append((node.name, labels))
        return
    modifier = getattr(node, "modifier", None)
    if kind == "AggregateExpr" and modifier is not None and modifier.labels:
        grouping.update(modifier.labels)
    if kind == "BinaryExpr" and modifier is not None:
        if modifier.matching is not None:
            grouping.update(modifier.matching.labels or ())
        grouping.update(modifier.group_labels or ())
    for attr in ("lhs", "rhs", "expr", "vector_selector", "param"):
        child = getattr(node, attr, None)
        if child is not None and type(child).__module__ == "promql_parser":
            walk(child, selectors, grouping)
    for arg in getattr(node, "args", None) or ():
        walk(arg, selectors, grouping)


def check_expression(expr: str, where: str) -> set[str]:
    """Assert that ``expr`` parses and names only metrics and labels the code exports; return
    the metric families it reads."""
    selectors: list[tuple[str, set[str]]] = []
    grouping: set[str] = set()
    walk(parse(expr), selectors, grouping)
    assert selectors, f"{where}: {expr!r} reads no metric"
    known_labels = set(TARGET_LABELS)
    families = set()
    for name, labels in selectors:
        if name in PROMETHEUS_SERIES:
            known_labels |= labels
            continue
        assert name in SERIES, f"{where}: {name} is not a metric the code exports " \
                               f"(worker/metrics.py, api/metrics.py)"
        families.add(family_of(name))
        unknown = labels - SERIES[name] - TARGET_LABELS
        assert not unknown, f"{where}: {name} has no label {sorted(unknown)}"
        known_labels |= SERIES[name]
    unknown = grouping - known_labels
    assert not unknown, f"{where}: groups by {sorted(unknown)}, which no metric in {expr!r} has"
    return families


def family_of(series: str) -> str:
    return re.sub(r"_(total|bucket|sum|count)$", "", series)


# --- the dashboard -----------------------------------------------------------------------------

PANEL_TYPES = ["timeseries", "stat", "gauge", "bargauge", "table", "heatmap", "text", "row"]
DATASOURCE = {"type": "object", "required": ["type", "uid"],
              "properties": {"type": {"const": "prometheus"}, "uid": {"type": "string"}}}
# The part of Grafana's dashboard model (schemaVersion 39) an import relies on.
DASHBOARD_SCHEMA = {
    "type": "object",
    "required": ["title", "uid", "schemaVersion", "panels", "templating", "time"],
    "properties": {
        "title": {"type": "string", "minLength": 1},
        "uid": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,40}$"},
        "schemaVersion": {"type": "integer", "minimum": 36},
        "time": {"type": "object", "required": ["from", "to"]},
        "refresh": {"type": "string"},
        "templating": {"type": "object", "required": ["list"], "properties": {"list": {
            "type": "array", "items": {"type": "object", "required": ["name", "type"]}}}},
        "panels": {"type": "array", "minItems": 1, "items": {
            "type": "object",
            "required": ["id", "type", "title", "gridPos"],
            "properties": {
                "id": {"type": "integer", "minimum": 1},
                "type": {"enum": PANEL_TYPES},
                "title": {"type": "string", "minLength": 1},
                "gridPos": {"type": "object", "required": ["h", "w", "x", "y"],
                            "properties": {"h": {"type": "integer", "minimum": 1},
                                           "w": {"type": "integer", "minimum": 1,
                                                 "maximum": 24},
                                           "x": {"type": "integer", "minimum": 0,
                                                 "maximum": 23},
                                           "y": {"type": "integer", "minimum": 0}}},
                "datasource": DATASOURCE,
                "targets": {"type": "array", "items": {
                    "type": "object", "required": ["refId", "expr"],
                    "properties": {"refId": {"type": "string", "pattern": "^[A-Z]$"},
                                   "expr": {"type": "string", "minLength": 1},
                                   "datasource": DATASOURCE}}},
            },
            "if": {"properties": {"type": {"not": {"const": "row"}}}},
            "then": {"required": ["datasource", "targets", "fieldConfig"],
                     "properties": {"targets": {"minItems": 1}}},
        }},
    },
}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def data_panels(board: dict) -> list[dict]:
    return [p for p in board["panels"] if p["type"] != "row"]


def test_the_dashboard_loads_and_has_what_grafana_needs_to_import_it():
    board = dashboard()
    jsonschema.validate(board, DASHBOARD_SCHEMA)
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in data_panels(board):
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), f"{panel['title']}: refIds repeat"
        for source in [panel["datasource"], *(t.get("datasource") for t in panel["targets"])]:
            if source is not None:  # the panel's datasource is the dashboard variable
                assert source["uid"] == "${datasource}", panel["title"]


def test_dashboard_panels_do_not_overlap():
    taken: set[tuple[int, int]] = set()
    for panel in dashboard()["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, f"{panel['title']} runs past the 24 columns"
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                 for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_every_dashboard_query_reads_metrics_the_code_exports():
    for panel in data_panels(dashboard()):
        for target in panel["targets"]:
            check_expression(target["expr"], f"panel {panel['title']!r} {target['refId']}")


def test_every_metric_the_code_exports_is_on_the_dashboard():
    shown = set()
    for panel in data_panels(dashboard()):
        for target in panel["targets"]:
            shown |= check_expression(target["expr"], panel["title"])
    missing = {family_of(name) for name in FAMILIES} - shown
    assert not missing, f"metrics without a panel: {sorted(missing)}"


def test_the_dashboard_covers_what_operators_watch():
    titles = " / ".join(p["title"].lower() for p in data_panels(dashboard()))
    for topic in ("records per second", "lag per partition", "dead letters", "retries",
                  "healthy", "uncommitted", "durability", "step time", "requests per second",
                  "latency"):
        assert topic in titles, f"no panel about {topic}"


# --- the alert rules ---------------------------------------------------------------------------

def alert_rules() -> list[dict]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_alert_rules_are_well_formed_prometheus_rules():
    document = yaml.safe_load(ALERTS.read_text())
    assert document["groups"] and all(g["name"] and g["rules"] for g in document["groups"])
    names = [r["alert"] for r in alert_rules()]
    assert len(names) == len(set(names))
    for rule in alert_rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations",
                             "keep_firing_for"}, rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_every_alert_reads_metrics_the_code_exports():
    for rule in alert_rules():
        check_expression(rule["expr"], f"alert {rule['alert']}")


@pytest.mark.parametrize(("alert", "metric"), [
    ("TwinstreamConsumerLagGrowing", "twinstream_worker_consumer_lag"),
    ("TwinstreamDeadLettersRising", "twinstream_worker_dead_letters"),
    ("TwinstreamWorkerUnhealthy", "twinstream_worker_healthy"),
    ("TwinstreamLastCommitTooOld", "twinstream_worker_last_commit_age_seconds"),
    ("TwinstreamConsumerWithoutPartitions", "twinstream_worker_consumer_lag"),
])
def test_the_alerts_operators_need_are_there(alert, metric):
    rules = {r["alert"]: r for r in alert_rules()}
    assert alert in rules
    assert metric in check_expression(rules[alert]["expr"], alert)


# --- the checks themselves can fail ------------------------------------------------------------

@pytest.mark.parametrize(("expr", "complaint"), [
    ("sum(rate(twinstream_worker_record_total[5m]))", "not a metric the code exports"),
    ('twinstream_worker_dead_letters_total{reason="x"}', "has no label"),
    ("sum by (shard) (twinstream_worker_consumer_lag)", "groups by"),
    ("sum(rate(twinstream_worker_records_total[5m])", "not valid PromQL"),
    ("1 + 1", "reads no metric"),
])
def test_a_planted_mistake_is_caught(expr, complaint):
    with pytest.raises(AssertionError, match=complaint):
        check_expression(expr, "planted")


def test_a_planted_dashboard_mistake_is_caught():
    board = dashboard()
    del data_panels(board)[0]["targets"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(board, DASHBOARD_SCHEMA)
