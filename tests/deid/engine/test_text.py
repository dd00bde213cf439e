"""Clinical-text rule layer: identifiers removed, clinical content kept, masks consistent."""

from __future__ import annotations

import re
from dataclasses import fields
from datetime import date, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps.deid.engine import PatientContext, ProjectKey, deidentify_text
from apps.deid.engine.profile import TextSettings
from apps.deid.engine.text import Finding, is_valid_resident_id, resident_id_check_char
from apps.deid.engine.text.lexicon import AMBIGUOUS_SURNAMES, SINGLE_SURNAMES

KEY = ProjectKey(b"text-tests-secret-0123456789abcdef")


def clean(text: str, **kw) -> str:
    return deidentify_text(text, key=KEY, **kw).text


@pytest.mark.parametrize(
    ("text", "secret", "typ"),
    [
        ("身份证号：110105198003071234，", "110105198003071234", "RESIDENT_ID"),
        ("ID 11010519800307123X 复诊", "11010519800307123X", "RESIDENT_ID"),
        ("证件 110105 19800307 1234", "19800307", "RESIDENT_ID"),
        ("旧证号 110105800307123 作废", "110105800307123", "RESIDENT_ID"),
        ("手机13812345678联系", "13812345678", "PHONE"),
        ("电话：+86 138 1234 5678", "1234 5678", "PHONE"),
        ("座机 010-87654321 转 123", "87654321", "PHONE"),
        ("Tel: (415) 555-0123.", "555-0123", "PHONE"),
        ("Mail john.smith@example.com now", "john.smith@example.com", "EMAIL"),
        ("见 https://pacs.hosp.cn/view?id=123 。", "pacs.hosp.cn", "URL"),
        ("host 192.168.10.20 down", "192.168.10.20", "IP"),
        ("病历号：BL2023-00871", "BL2023-00871", "MEDICAL_ID"),
        ("住院号 ZY88123", "ZY88123", "MEDICAL_ID"),
        ("门诊号:MZ556677", "MZ556677", "MEDICAL_ID"),
        ("MRN: 448812", "448812", "MEDICAL_ID"),
        ("Accession No. RX99812", "RX99812", "MEDICAL_ID"),
        ("床号：23", "23", "BED"),
        ("现住12床", "12", "BED"),
        ("于2024年3月5日入院", "2024年3月5日", "DATE"),
        ("2024-03-05 复查", "2024-03-05", "DATE"),
        ("2024/3/5 复查", "2024/3/5", "DATE"),
        ("Seen 05/03/2024 in clinic", "05/03/2024", "DATE"),
        ("on Mar 5, 2024 the", "Mar 5, 2024", "DATE"),
        ("on 5 March 2024 the", "5 March 2024", "DATE"),
        ("DICOM 20240305 date", "20240305", "DATE"),
        ("3月5日出院", "3月5日", "DATE"),
        ("患者92岁", "92", "AGE"),
        ("a 95-year-old man", "95", "AGE"),
        ("家住北京市朝阳区建国路88号", "建国路88号", "ADDRESS"),
        ("地址：浙江省杭州市西湖区文三路100号3单元501室", "文三路", "ADDRESS"),
        ("lives at 221 Baker Street, London", "Baker Street", "ADDRESS"),
        ("转入北京协和医院治疗", "北京协和医院", "HOSPITAL"),
        (
            "seen at Massachusetts General Hospital today",
            "Massachusetts General Hospital",
            "HOSPITAL",
        ),
        ("收入心内科3病区", "心内科", "DEPARTMENT"),
        ("患者张伟，男，45岁", "张伟", "PERSON"),
        ("姓名：欧阳娜娜", "欧阳娜娜", "PERSON"),
        ("主治医师：李建国", "李建国", "PERSON"),
        ("请王主任会诊", "王", "PERSON"),
        ("Dr. Emily Chen reviewed", "Emily Chen", "PERSON"),
        ("Patient Name: John Smith", "John Smith", "PERSON"),
        ("Signed by: Mary Jones", "Mary Jones", "PERSON"),
    ],
)
def test_it_removes_each_identifier_kind(text: str, secret: str, typ: str) -> None:
    res = deidentify_text(text, key=KEY)
    assert secret not in res.text, res.text
    assert typ in res.counts, (res.counts, res.text)


CLINICAL = [
    "血红蛋白 120 g/L",
    "EF 55%",
    "ICD-10 I21.9",
    "阿司匹林 100mg qd",
    "左肺上叶见2.3cm×1.8cm结节",
    "肌酐 88 μmol/L",
    "血压 130/85 mmHg",
    "心率 72 次/分",
    "CT示右肾结石",
    "WBC 6.5×10^9/L",
    "LVEF 45%",
    "BMI 23.5 kg/m2",
    "术后第3天",
    "头孢曲松 2g ivgtt qd",
    "T 36.8℃",
    "HbA1c 7.2%",
    "心前区无隆起",
    "Troponin I 0.03 ng/mL",
    "metformin 500 mg bid",
    "no acute distress",
    "2型糖尿病",
    "NYHA II级",
]


def test_clinical_content_survives() -> None:
    note = "。".join(CLINICAL)
    out = clean(note)
    kept = [p for p in CLINICAL if p in out]
    assert kept == CLINICAL, set(CLINICAL) - set(kept)


def test_findings_carry_types_and_positions_only() -> None:
    res = deidentify_text("患者张伟，手机13812345678。", key=KEY)
    assert {f.name for f in fields(Finding)} == {"type", "start", "end", "out_start", "out_end"}
    for f in res.findings:
        assert res.text[f.out_start : f.out_end].startswith("<")
    text = "患者张伟，手机13812345678。"
    assert [text[f.start : f.end] for f in res.findings] == ["张伟", "13812345678"]


def test_same_entity_same_mask_within_a_patient() -> None:
    ctx = PatientContext.build(KEY, patient_id="P1")
    out = clean("电话13812345678，备用电话138-1234-5678，另13900001111", context=ctx)
    masks = re.findall(r"<PHONE_[0-9a-f]+>", out)
    assert len(masks) == 3 and masks[0] == masks[1] != masks[2]


def test_known_identifiers_from_the_record_are_removed_everywhere() -> None:
    ctx = PatientContext.build(
        KEY, patient_id="X99812", names=["Zhang^Wei=张^伟"], identifiers=["RX-77"]
    )
    out = clean("zhang  wei (x99812) says 张伟 was seen. ref RX-77. Wei Zhang ok", context=ctx)
    for s in ("zhang", "wei", "x99812", "张伟", "RX-77", "Zhang"):
        assert s.lower() not in out.lower(), out


def test_dates_shift_like_the_dicom_dates_of_the_same_patient() -> None:
    ctx = PatientContext.build(KEY, patient_id="ZY1")
    shift = KEY.date_shift_days("ZY1")
    assert ctx.date_shift_days == shift < 0
    out = clean("2024年3月5日入院，2024-03-15出院", context=ctx)
    a = date(2024, 3, 5) + timedelta(days=shift)
    b = date(2024, 3, 15) + timedelta(days=shift)
    assert f"{a.year}年{a.month}月{a.day}日" in out
    assert b.isoformat() in out


def test_dates_are_masked_without_a_patient() -> None:
    assert "<DATE_" in clean("2024-03-05")


def test_surrogate_style_replaces_names_with_fake_names() -> None:
    res = deidentify_text("患者张伟，男，45岁", key=KEY, settings=TextSettings(style="surrogate"))
    assert "张伟" not in res.text and "<PERSON" not in res.text


def test_resident_id_checksum() -> None:
    assert resident_id_check_char("11010519491231002") == "X"
    assert is_valid_resident_id("11010519491231002X")
    assert not is_valid_resident_id("110105194912310021")


# -- property tests -------------------------------------------------------------------------
@st.composite
def resident_ids(draw: st.DrawFn) -> str:
    area = draw(st.integers(110000, 659999))
    born = draw(st.dates(date(1900, 1, 1), date(2024, 12, 31)))
    seq = draw(st.integers(0, 999))
    first = f"{area}{born:%Y%m%d}{seq:03d}"
    return first + resident_id_check_char(first)


filler = st.sampled_from([*CLINICAL, "患者", "复查", "，", "。", " ", "\n", "主诉："])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(filler, max_size=6), resident_ids(), st.lists(filler, max_size=6))
def test_checksum_valid_resident_ids_are_always_caught(before, rid, after) -> None:
    text = "".join(before) + rid + "".join(after)
    assert rid not in clean(text)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(filler, max_size=5),
    st.from_regex(r"1[3-9]\d{9}", fullmatch=True),
    st.sampled_from(["", " ", "-"]),
    st.sampled_from(["", "+86 ", "+86-", "0086"]),
)
def test_mobile_numbers_are_always_caught(parts, mobile, sep, prefix) -> None:
    shown = prefix + (mobile[:3] + sep + mobile[3:7] + sep + mobile[7:] if sep else mobile)
    text = "".join(parts) + "电话" + shown + "".join(parts)
    out = clean(text)
    assert mobile[3:7] + sep + mobile[7:] not in out


@settings(max_examples=150, deadline=None)
@given(
    st.dates(date(1930, 1, 1), date(2030, 12, 31)),
    st.sampled_from(
        ["{y}年{m}月{d}日", "{y}-{mm}-{dd}", "{y}/{m}/{d}", "{y}{mm}{dd}", "{b} {d}, {y}"]
    ),
    st.lists(filler, max_size=4),
)
def test_dates_are_always_replaced(dt, fmt, parts) -> None:
    shown = fmt.format(
        y=dt.year,
        m=dt.month,
        d=dt.day,
        mm=f"{dt.month:02d}",
        dd=f"{dt.day:02d}",
        b=dt.strftime("%b"),
    )
    text = "".join(parts) + shown + "".join(parts)
    ctx = PatientContext.build(KEY, patient_id="P-hyp")
    assert shown not in clean(text, context=ctx)


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(sorted(SINGLE_SURNAMES - AMBIGUOUS_SURNAMES)),
    st.text(alphabet="伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英", min_size=1, max_size=2),
    st.sampled_from(["患者", "姓名：", "家属", "主治医师：", "报告医师"]),
)
def test_names_after_context_words_are_caught(surname, given_name, cue) -> None:
    name = surname + given_name
    out = clean(f"{cue}{name}，男，45岁。")
    assert name not in out


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("向主任查房后指示：复查血常规", "向主任"),
        ("应主任会诊后认为：考虑肺栓塞", "应主任"),
        ("常主任查房：同意目前治疗", "常主任"),
        ("由常主任主刀，手术顺利", "常主任"),
        ("请向教授会诊", "向教授"),
        ("经时院长审核", "时院长"),
    ],
)
def test_a_function_word_surname_before_a_rank_title_is_a_name(text: str, name: str) -> None:
    res = deidentify_text(text, key=KEY)
    assert name not in res.text, res.text
    assert "PERSON" in res.counts


@pytest.mark.parametrize(
    "phrase",
    [
        "向医生咨询病情",  # a generic title after a preposition
        "应医生要求复查血常规",
        "和护士沟通后调整输液速度",
        "向主任汇报病情",  # a rank title, but what follows is what one does to the person
        "应主任要求加做心脏彩超",
        "查房时主任指示加强抗感染治疗",  # 时 ends 查房时; 查 and 房 are surnames too
        "上级医师查房后向主任汇报",
        "常规检查未见异常",
        "高血压3级，很高危",
        "治疗方案：继续抗感染治疗",
        "白蛋白 35 g/L",
    ],
)
def test_preposition_phrases_before_a_title_are_kept(phrase: str) -> None:
    res = deidentify_text(phrase, key=KEY)
    assert res.text == phrase, res.text
    assert "PERSON" not in res.counts


def test_a_name_introduced_with_a_cue_is_removed_where_it_recurs() -> None:
    out = clean(
        "患者张伟，男，45岁。张伟否认高血压病史。Patient: John Smith. John Smith denies pain."
    )
    assert "张伟" not in out and "John Smith" not in out
    assert "否认高血压病史" in out and "denies pain" in out


def test_a_cued_address_stops_at_the_next_field() -> None:
    out = clean("住址：北京市朝阳区建国路88号  诊断：冠心病，职业：退休")
    assert "建国路" not in out and "诊断：冠心病" in out and "职业：退休" in out


def test_reversible_tokens_are_stored_encrypted_when_a_vault_is_given() -> None:
    from apps.deid.engine import PseudonymVault, TextDeidentifier

    vault = PseudonymVault(b"t" * 32)
    res = TextDeidentifier(KEY, vault=vault).deidentify("患者张伟，手机13812345678")
    masks = re.findall(r"<[A-Z_]+_[0-9a-f]+>", res.text)
    assert [vault.reveal("text", m) for m in masks] == ["张伟", "13812345678"]
    assert "张伟".encode() not in b"".join(vault.store.values())


@st.composite
def phi_items(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["rid", "mobile", "date", "name", "mrn", "email"]))
    if kind == "rid":
        return draw(resident_ids())
    if kind == "mobile":
        return (
            "1" + draw(st.sampled_from("3589")) + draw(st.from_regex(r"[0-9]{9}", fullmatch=True))
        )
    if kind == "date":
        d = draw(st.dates(date(1990, 1, 1), date(2030, 12, 31)))
        return f"{d.year}年{d.month}月{d.day}日"
    if kind == "mrn":
        return "住院号：ZY" + draw(st.from_regex(r"[0-9]{6,8}", fullmatch=True))
    if kind == "email":
        return draw(st.from_regex(r"[a-z]{3,8}", fullmatch=True)) + "@hosp.cn"
    return (
        "患者"
        + draw(st.sampled_from("张王李刘陈杨赵周吴徐孙"))
        + draw(st.sampled_from(["伟", "芳", "建国", "秀英", "志强"]))
    )


@settings(max_examples=120, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(CLINICAL), phi_items()), min_size=1, max_size=6))
def test_phi_at_random_places_in_a_note_is_removed_and_clinical_text_kept(pairs) -> None:
    parts = []
    for clinical, phi in pairs:
        parts += [clinical, "，", phi, "。"]
    out = clean("".join(parts), context=PatientContext.build(KEY, patient_id="P-note"))
    for clinical, phi in pairs:
        secret = phi.split("：")[-1].removeprefix("患者")
        assert secret not in out, (secret, out)
        assert clinical in out, (clinical, out)
