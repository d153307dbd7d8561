"""Write prometheusrule.yaml: config/prometheus/alerts.yml wrapped into a PrometheusRule.

    python deploy/kubernetes/render_prometheusrule.py          # after editing alerts.yml
    python deploy/kubernetes/render_prometheusrule.py --check  # exit 1 if it is out of date

kustomize cannot put a file's YAML into a custom resource's `spec`: a configMapGenerator
makes it a string, a replacement copies that string as it is, and a patch must name its
object's kind, which Prometheus' rule file cannot carry (promtool refuses unknown keys). A
kustomize plugin could, but `kubectl apply -k` runs none. So the PrometheusRule is written by
this script, the rule file's lines verbatim (comments and all) under `spec:`, and
tests/unit/test_deploy.py checks that the rule kustomize renders has exactly alerts.yml's
groups. Standard library only.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ALERTS = HERE.parent.parent / "config" / "prometheus" / "alerts.yml"
TARGET = HERE / "prometheusrule.yaml"

HEADER = """\
# GENERATED from config/prometheus/alerts.yml by render_prometheusrule.py: edit alerts.yml,
# then run `python deploy/kubernetes/render_prometheusrule.py`. tests/unit/test_deploy.py
# fails when this file is out of date.
#
# The Prometheus Operator loads the rule when its Prometheus' ruleSelector matches these
# labels (kube-prometheus-stack's default wants `release: <its release name>`: add it with a
# kustomize `labels:` entry or a patch).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: wal2vec
  labels:
    app.kubernetes.io/name: wal2vec
spec:
"""


def render(alerts: str) -> str:
    """The PrometheusRule: HEADER, then the rule file from its first key on, indented by two
    (the file's own leading comments describe it as a file, so they are left out)."""
    lines = alerts.splitlines()
    start = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    body = [f"  {line}" if line.strip() else "" for line in lines[start:]]
    return HEADER + "\n".join(body) + "\n"


def main(argv: list[str]) -> int:
    expected = render(ALERTS.read_text(encoding="utf-8"))
    if argv[1:] == ["--check"]:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != expected:
            print(f"{TARGET} is out of date: run {Path(argv[0]).name}", file=sys.stderr)
            return 1
        return 0
    if argv[1:]:
        print(f"usage: {Path(argv[0]).name} [--check]", file=sys.stderr)
        return 2
    TARGET.write_text(expected, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
