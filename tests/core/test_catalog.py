"""The 简体中文 catalog: every message translated, none fuzzy, and the committed .mo compiled
from the committed .po (a forgotten ``make messages`` shows English in the Chinese UI)."""

from __future__ import annotations

import ast
import gettext
from pathlib import Path

CATALOG = Path(__file__).resolve().parents[2] / "locale" / "zh_Hans" / "LC_MESSAGES"


def entries(po: Path = CATALOG / "django.po") -> list[dict[str, object]]:
    """The .po's entries: context, id, plural id, strings, flags (obsolete ones left out)."""
    out: list[dict[str, object]] = []
    for block in po.read_text(encoding="utf-8").split("\n\n"):
        entry: dict[str, object] = {"flags": set(), "msgstr": {}}
        field = None
        for line in block.splitlines():
            if line.startswith("#~"):
                entry = {}
                break
            if line.startswith("#,"):
                entry["flags"] = {f.strip() for f in line[2:].split(",")}
                continue
            if line.startswith("#"):
                continue
            if line.startswith('"'):
                text = ast.literal_eval(line)
            else:
                keyword, _, rest = line.partition(" ")
                field, text = keyword, ast.literal_eval(rest)
            if field and field.startswith("msgstr"):
                index = int(field[7:-1]) if field != "msgstr" else 0
                strings = entry["msgstr"]
                strings[index] = strings.get(index, "") + text  # type: ignore[union-attr]
            elif field:
                entry[field] = str(entry.get(field, "")) + text
        if entry.get("msgid"):
            out.append(entry)
    return out


def test_every_message_is_translated_and_none_is_fuzzy():
    found = entries()
    assert len(found) > 500  # the parser read the catalog, not nothing
    untranslated = [e["msgid"] for e in found if not all(e["msgstr"].values())]
    fuzzy = [e["msgid"] for e in found if "fuzzy" in e["flags"]]
    assert untranslated == [] and fuzzy == []


def test_the_compiled_catalog_matches_its_source():
    with (CATALOG / "django.mo").open("rb") as handle:
        compiled = gettext.GNUTranslations(handle)
    stale = []
    for e in entries():
        msgid, strings = str(e["msgid"]), e["msgstr"]
        context = e.get("msgctxt")
        if "msgid_plural" in e:
            got = (
                compiled.npgettext(context, msgid, e["msgid_plural"], 1)
                if context
                else (compiled.ngettext(msgid, str(e["msgid_plural"]), 1))
            )
            want = strings[0]
        else:
            got = compiled.pgettext(context, msgid) if context else compiled.gettext(msgid)
            want = strings[0]
        if got != want:
            stale.append(msgid)
    assert stale == [], "run `make messages`"


def test_the_catalog_holds_every_message_of_the_sources(tmp_path, settings, monkeypatch):
    """What ``make messages`` would add is missing from the committed catalog: a string added
    without it would show in English in the Chinese UI. makemessages writes into the nearest
    locale folder above each source, so it runs on a copy of the sources, never on ours."""
    import shutil

    from django.core.management import call_command

    from tests.conftest import require_service

    require_service("xgettext", shutil.which("xgettext") is not None, "apt-get install gettext")
    root = CATALOG.parents[2]
    for part in ("apps", "controlplane", "templates"):
        shutil.copytree(root / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "locale" / "zh_Hans" / "LC_MESSAGES"
    target.mkdir(parents=True)
    shutil.copy(CATALOG / "django.po", target / "django.po")
    settings.LOCALE_PATHS = [tmp_path / "locale"]
    monkeypatch.chdir(tmp_path)
    call_command("makemessages", locale=["zh_Hans"], verbosity=0)

    def ids(po: Path) -> set[tuple[object, object]]:
        return {(e.get("msgctxt"), e["msgid"]) for e in entries(po)}

    missing = ids(target / "django.po") - ids(CATALOG / "django.po")
    assert missing == set(), "run `make messages` and translate the new strings"
