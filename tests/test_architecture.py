"""The layering rules of DESIGN.md, executable."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_COMMANDS = re.compile(r"\b(sbatch|squeue|scancel|scontrol|sinfo|srun|salloc)\b")


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def python_files(*parts: str) -> list[Path]:
    base = ROOT.joinpath(*parts)
    return sorted(base.rglob("*.py")) if base.exists() else []


def test_pure_packages_never_import_django_or_the_apps():
    offenders = []
    for pkg in (("trainer",), ("apps", "deid", "engine"), ("apps", "jobs", "schedulers")):
        for path in python_files(*pkg):
            bad = {
                m
                for m in imports_of(path)
                if m.split(".")[0] in {"django", "rest_framework", "channels", "celery"}
                or (m.startswith("apps.") and not m.startswith("apps." + ".".join(pkg[1:])))
            }
            if bad:
                offenders.append(f"{path.relative_to(ROOT)}: {sorted(bad)}")
    assert offenders == []


def test_core_imports_no_other_app():
    offenders = []
    for path in python_files("apps", "core"):
        bad = {
            m for m in imports_of(path) if m.startswith("apps.") and not m.startswith("apps.core")
        }
        if bad:
            offenders.append(f"{path.relative_to(ROOT)}: {sorted(bad)}")
    assert offenders == []


def test_only_the_scheduler_adapters_run_cluster_commands():
    offenders = []
    for path in python_files("apps"):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("apps/jobs/schedulers/") or "/migrations/" in rel:
            continue
        if CLUSTER_COMMANDS.search(path.read_text(encoding="utf-8")):
            offenders.append(rel)
    assert offenders == []


def test_only_monitoring_queries_prometheus():
    offenders = [
        path.relative_to(ROOT).as_posix()
        for path in python_files("apps")
        if not path.relative_to(ROOT).as_posix().startswith("apps/monitoring/")
        and "prometheus_api_client" in imports_of(path)
    ]
    assert offenders == []


# The names makemessages (xgettext) knows as translation calls; a string passed to any other
# name, such as ``gettext_lazy as _lazy``, is never extracted and never translated.
XGETTEXT_NAMES = {
    "_",
    "gettext",
    "gettext_lazy",
    "gettext_noop",
    "ngettext",
    "ngettext_lazy",
    "pgettext",
    "pgettext_lazy",
    "npgettext",
    "npgettext_lazy",
}


def test_translation_functions_are_imported_under_names_makemessages_extracts():
    offenders = []
    for path in python_files("apps") + python_files("controlplane"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "django.utils.translation":
                for alias in node.names:
                    name = alias.asname or alias.name
                    if alias.name in XGETTEXT_NAMES and name not in XGETTEXT_NAMES:
                        offenders.append(f"{path.relative_to(ROOT)}: {alias.name} as {name}")
    assert offenders == []
