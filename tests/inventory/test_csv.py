"""data_inventory.csv: exact round trip, all-or-nothing import with line-numbered errors, and
hostile input (formula injection, encodings, size)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps.audit.models import AuditEvent
from apps.inventory import csvfile, services
from apps.inventory.csvfile import InventoryCSVError
from apps.inventory.models import ConsentStatus, DataKind, DataSource

pytestmark = pytest.mark.django_db

HEADER = "source,type,avg_size_MB,estimated_count,owner,consent_status,notes\r\n"


def csv_bytes(*rows: str, bom: bool = False) -> bytes:
    text = HEADER + "".join(r + "\r\n" for r in rows)
    return ("\ufeff" if bom else "").encode() + text.encode("utf-8")


def do_import(data: bytes, **kwargs):
    return services.import_inventory_csv(data, acting_user=None, **kwargs)


def errors_of(data: bytes, **kwargs) -> list[str]:
    with pytest.raises(InventoryCSVError) as caught:
        do_import(data, **kwargs)
    return [str(e) for e in caught.value.errors]


def test_it_imports_the_seed_columns():
    result = do_import(
        csv_bytes(
            "CT scanner 3,DICOM,0.5,120000,Radiology,waived,export via PACS",
            "Ward notes,TEXT,0.004,2000000,Medical records,obtained,",
        )
    )
    assert len(result.created) == 2
    ct = DataSource.objects.get(source="CT scanner 3")
    assert (ct.type, ct.avg_size_mb, ct.estimated_count) == ("DICOM", Decimal("0.5"), 120000)
    assert (ct.owner, ct.consent_status, ct.notes) == ("Radiology", "waived", "export via PACS")


def test_the_export_round_trips_exactly():
    original = csv_bytes(
        'A,DICOM,12.5,3,Radiology,obtained,"multi\nline, with ""quotes"""',
        "B,ECG,100,0,'=SUM(A1),pending,'-5 mm lesion",
        "C,TEXT,0.001,7,病案科,unknown,中文备注",
        bom=True,
    )
    do_import(original)
    exported = services.export_inventory_csv()
    assert exported == original
    DataSource.objects.all().delete()
    do_import(exported)
    assert services.export_inventory_csv() == exported


safe_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=40
).map(str.strip)
notes_text = st.lists(safe_text, max_size=3).map("\n".join).map(str.strip)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    rows=st.lists(
        st.fixed_dictionaries(
            {
                "source": safe_text.filter(bool),
                "type": st.sampled_from(DataKind.values),
                "avg_size_mb": st.decimals(
                    min_value=0, max_value=Decimal("999999999.999"), places=3
                ),
                "estimated_count": st.integers(min_value=0, max_value=10**15),
                "owner": safe_text.filter(bool),
                "consent_status": st.sampled_from(ConsentStatus.values),
                "notes": notes_text,
            }
        ),
        max_size=5,
        unique_by=lambda r: r["source"],
    )
)
def test_any_data_map_survives_export_and_import(rows):
    DataSource.objects.all().delete()
    for row in rows:
        services.create_source(row, acting_user=None)
    exported = services.export_inventory_csv()
    before = list(DataSource.objects.order_by("source").values(*services.CSV_FIELDS))
    DataSource.objects.all().delete()
    do_import(exported)
    assert list(DataSource.objects.order_by("source").values(*services.CSV_FIELDS)) == before
    assert services.export_inventory_csv() == exported


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.fixed_dictionaries(
            {
                "source": safe_text.filter(bool),
                "type": st.sampled_from(DataKind.values),
                "avg_size_mb": st.decimals(
                    min_value=0, max_value=Decimal("999999999.999"), places=3
                ),
                "estimated_count": st.integers(min_value=0, max_value=10**17),
                "owner": safe_text.filter(bool),
                "consent_status": st.sampled_from(ConsentStatus.values),
                "notes": notes_text,
            }
        ),
        max_size=8,
        unique_by=lambda r: r["source"],
    )
)
def test_any_rows_render_and_parse_back_identically(rows):
    # The file level alone, without a database, so many more cases run.
    text = csvfile.decode(csvfile.render(rows))
    parsed = csvfile.parse(
        text, type_codes=set(DataKind.values), consent_codes=set(ConsentStatus.values)
    )
    assert [p.values for p in parsed] == rows


def test_bad_rows_are_named_by_line_and_nothing_is_imported():
    data = csv_bytes(
        "Good,DICOM,1,1,Radiology,obtained,",
        "Bad type,XRAY,1,1,Radiology,obtained,",
        "Bad size,DICOM,-2,1,Radiology,obtained,",
        'Multi,TEXT,1,1,Records,obtained,"line one',
        'line two"',
        "Bad count,TEXT,1,1.5,Records,maybe,",
        "Short,TEXT,1",
        "Good,DICOM,1,1,Radiology,obtained,",
    )
    errors = errors_of(data)
    assert errors == [
        "line 3, column type: 'XRAY' is not one of AUDIO, DICOM, ECG, EEG, MIXED, TEXT, VIDEO, WSI",
        "line 4, column avg_size_MB: '-2' must be a finite number ≥ 0",
        "line 7, column estimated_count: '1.5' is not a whole number ≥ 0",
        "line 7, column consent_status: 'maybe' is not one of obtained, pending, unknown, "
        "waived, withdrawn",
        "line 8: has 3 fields; expected 7",
        "line 9, column source: duplicate of the source on line 2",
    ]
    assert DataSource.objects.count() == 0
    assert not AuditEvent.objects.filter(action__startswith="inventory.").exists()


def test_a_model_level_error_rolls_back_rows_already_saved(monkeypatch):
    DataSource.objects.create(source="Existing", type="DICOM", owner="Radiology")
    data = csv_bytes(
        "Existing,ECG,1,1,Cardiology,obtained,",
        "New,TEXT,1,1,Records,obtained,",
    )
    original_clean = DataSource.full_clean

    def failing_clean(self, *args, **kwargs):
        if self.source == "New":
            from django.core.exceptions import ValidationError

            raise ValidationError({"owner": ["refused by the model"]})
        return original_clean(self, *args, **kwargs)

    monkeypatch.setattr(DataSource, "full_clean", failing_clean)
    assert errors_of(data) == ["line 3, column owner: refused by the model"]
    assert DataSource.objects.get(source="Existing").type == "DICOM"
    assert not DataSource.objects.filter(source="New").exists()


def test_a_formula_cell_is_refused_with_its_line():
    errors = errors_of(csv_bytes("Lab,TEXT,1,1,=cmd|' /C calc'!A0,obtained,"))
    assert errors == [
        "line 2, column owner: starts with '=', which spreadsheets run as a formula; "
        "prefix it with an apostrophe (') to keep it as text"
    ]
    for cell in ("+1", "@SUM(1)", "-2+3"):
        assert errors_of(csv_bytes(f"Lab,TEXT,1,1,Owner,obtained,{cell}"))[0].startswith(
            "line 2, column notes: starts with"
        )


def test_export_neutralizes_formulas_and_import_restores_them():
    services.create_source(
        {"source": '=HYPERLINK("x")', "type": "TEXT", "owner": "@owner", "notes": "'quoted"},
        acting_user=None,
    )
    exported = services.export_inventory_csv()
    line = exported.decode("utf-8-sig").splitlines()[1]
    assert line.startswith('"\'=HYPERLINK(""x"")",')
    assert ",'@owner," in line and line.endswith(",''quoted")
    DataSource.objects.all().delete()
    do_import(exported)
    row = DataSource.objects.get()
    assert (row.source, row.owner, row.notes) == ('=HYPERLINK("x")', "@owner", "'quoted")


def test_a_utf8_bom_is_accepted():
    do_import(csv_bytes("CT,DICOM,1,1,放射科,obtained,", bom=True))
    assert DataSource.objects.get().owner == "放射科"


def test_gb18030_is_read_when_chosen_and_named_when_not():
    data = (HEADER + "心电室,心电图,0.2,500,心内科,已同意,十二导联\r\n").encode("gb18030")
    errors = errors_of(data)
    assert errors == [
        "line 2: not valid UTF-8 at byte 68; it reads as GB18030 (Excel on Chinese Windows): "
        "choose that encoding"
    ]
    do_import(data, encoding="gb18030")
    row = DataSource.objects.get()
    assert (row.source, row.type, row.consent_status, row.notes) == (
        "心电室",
        "ECG",
        "obtained",
        "十二导联",
    )


def test_other_encodings_and_binary_are_refused_clearly():
    utf16 = (HEADER + "A,TEXT,1,1,B,obtained,\r\n").encode("utf-16")
    assert errors_of(utf16) == [
        "line 1: file is UTF-16; save it as CSV UTF-8 (or GB18030) and retry"
    ]
    assert "not valid UTF-8" in errors_of(b"\xff\xd8\xff\xe0 binary \xc3\x28")[0]
    assert errors_of(b"PK\x03\x04\x00\x00")[0] == (
        "line 0: file contains NUL bytes; it is not a CSV"
    )


def test_an_oversized_file_is_refused_before_parsing():
    big = csv_bytes(*["x"] * 10) + b"," * (csvfile.MAX_BYTES + 1)
    assert errors_of(big)[0].startswith("line 0: file is over the limit")


def test_the_header_must_be_exactly_the_seed_columns():
    data = b"source,type,size,count,owner,consent,notes\r\nA,TEXT,1,1,B,obtained,\r\n"
    assert errors_of(data)[0].startswith(
        "line 1: header must be exactly "
        "source,type,avg_size_MB,estimated_count,owner,consent_status,notes"
    )
    assert errors_of(b"") == ["line 1: file is empty"]


def test_an_import_updates_existing_rows_and_audits_each_change():
    DataSource.objects.create(source="CT", type="DICOM", owner="Radiology", raw_root="/data/ct")
    result = do_import(
        csv_bytes("CT,DICOM,2,10,Radiology,obtained,", "MR,DICOM,3,5,Radiology,pending,")
    )
    assert (len(result.created), len(result.updated)) == (1, 1)
    assert DataSource.objects.get(source="CT").raw_root == "/data/ct"  # not a CSV column
    actions = list(AuditEvent.objects.order_by("seq").values_list("action", flat=True))
    assert actions == [
        "inventory.source_updated",
        "inventory.source_created",
        "inventory.csv_imported",
    ]
    again = do_import(
        csv_bytes("CT,DICOM,2,10,Radiology,obtained,", "MR,DICOM,3,5,Radiology,pending,")
    )
    assert again.unchanged == 2 and not again.created and not again.updated


def test_the_command_exports_and_imports(tmp_path):
    from io import StringIO

    from django.core.management import CommandError, call_command

    services.create_source(
        {"source": "CT", "type": "DICOM", "owner": "Radiology"}, acting_user=None
    )
    path = tmp_path / "data_inventory.csv"
    call_command("inventory_csv", "export", str(path))
    assert path.read_bytes() == services.export_inventory_csv()
    DataSource.objects.all().delete()
    out = StringIO()
    call_command("inventory_csv", "import", str(path), stdout=out)
    assert out.getvalue().strip() == "imported: 1 added, 0 updated, 0 unchanged"
    path.write_bytes(csv_bytes("MR,XRAY,1,1,Radiology,obtained,"))
    err = StringIO()
    with pytest.raises(CommandError, match="refused: 1 problem"):
        call_command("inventory_csv", "import", str(path), stderr=err)
    assert err.getvalue().startswith("line 2, column type: 'XRAY' is not one of")
