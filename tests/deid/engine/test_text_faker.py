"""Clinical text with PHI made by Faker (zh_CN, en_US): every generated value is removed, the
clinical content around it is kept, and jieba's person tags find names that have no cue."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
from faker import Faker
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from apps.deid.engine import PatientContext, ProjectKey, deidentify_text
from apps.deid.engine.text import is_valid_resident_id

KEY = ProjectKey(b"faker-tests-secret-0123456789abcdef")

# Clinical phrases, many of them starting with a character that is also a surname (白, 柴, 甘,
# 金, 华, 谷, 黄, 连, 房, 查, 左): the segmenter must leave them alone.
CLINICAL = [
    "血红蛋白 120 g/L",
    "EF 55%",
    "白蛋白 35 g/L",
    "甘精胰岛素 12U qn",
    "柴胡疏肝散 6g bid",
    "金水宝胶囊 3粒 tid",
    "华法林 3mg qd",
    "谷丙转氨酶 35 U/L",
    "黄芪注射液 20ml ivgtt",
    "连花清瘟胶囊 4粒 tid",
    "阵发性房颤",
    "查体：神清，精神可",
    "心电图示窦性心律",
    "左肺上叶见2.3cm×1.8cm结节",
    "冠状动脉造影示前降支狭窄70%",
    "肝脾肋下未触及",
    "双肺呼吸音清",
    "阿司匹林 100mg qd",
    "肌酐 88 μmol/L",
    "NYHA II级",
    "Hemoglobin 12.5 g/dL",
    "BP 135/80 mmHg",
    "metformin 500 mg bid",
    "Parkinson disease",
]


def fakers(seed: int) -> tuple[Faker, Faker]:
    zh, en = Faker("zh_CN"), Faker("en_US")
    zh.seed_instance(seed)
    en.seed_instance(seed)
    return zh, en


def clean(text: str, patient: str = "P-faker") -> str:
    return deidentify_text(
        text, key=KEY, context=PatientContext.build(KEY, patient_id=patient)
    ).text


def _date_forms(d: date) -> list[str]:
    return [
        f"{d.year}年{d.month}月{d.day}日",
        d.isoformat(),
        f"{d.year}/{d.month}/{d.day}",
        d.strftime("%m/%d/%Y"),
        d.strftime("%b %d, %Y").replace(" 0", " "),
        f"{d.day} {d.strftime('%B')} {d.year}",
    ]


def phi_items(zh: Faker, en: Faker) -> list[tuple[str, str]]:
    """(text to insert, secret that must not survive) for each kind of PHI Faker makes."""
    zh_name, en_name = zh.name(), f"{en.first_name()} {en.last_name()}"
    rid = zh.ssn()
    assert is_valid_resident_id(rid)
    mobile = zh.phone_number()
    us_phone = en.phone_number()
    ssn = en.ssn()
    email = en.email()
    zh_addr = zh.address().split(" ")[0]  # without the postcode
    en_addr = en.address().replace("\n", ", ")
    born = zh.date_between(date(1930, 1, 1), date(2024, 12, 31))
    seen = en.date_between(date(2010, 1, 1), date(2025, 12, 31))
    zh_date = _date_forms(born)[zh.random_int(0, 2)]
    en_date = _date_forms(seen)[en.random_int(3, 5)]
    us_digits = re.sub(r"\D", "", us_phone.split("x")[0])[-7:]
    return [
        (f"患者{zh_name}，", zh_name),
        (f"姓名：{zh.name()}  ", ""),
        (f"主治医师：{zh_name}。", zh_name),
        (f"Patient Name: {en_name}.", en_name),
        (f"Dr. {en_name} reviewed.", en_name),
        (f"身份证号：{rid}，", rid),
        (f"手机{mobile}，", mobile),
        (f"Phone {us_phone}.", us_digits),
        (f"SSN {ssn}.", ssn),
        (f"e-mail {email}.", email),
        (f"现住址：{zh_addr}。", zh_addr),
        (f"Address: {en_addr}.", en_addr.split(",")[0]),
        (f"出生日期：{zh_date}，", zh_date),
        (f"Seen on {en_date}.", en_date),
    ]


def _digits_left(secret: str, out: str) -> bool:
    """A phone's last 7 digits still readable in the output, whatever the separators."""
    return secret.isdigit() and secret in re.sub(r"\D", "", out)


@pytest.mark.parametrize("seed", range(25))
def test_it_removes_every_kind_of_faker_phi_from_a_bilingual_note(seed: int) -> None:
    zh, en = fakers(seed)
    items = phi_items(zh, en)
    parts = []
    for i, (text, _) in enumerate(items):
        parts += [text, " ", CLINICAL[(seed + i) % len(CLINICAL)], "。"]
    note = "".join(parts)
    out = clean(note, patient=f"P{seed}")
    for _, secret in items:
        if secret:
            assert secret not in out, (secret, out)
            assert not _digits_left(secret, out), (secret, out)
    name_in_label = items[1][0].removeprefix("姓名：").strip()
    assert name_in_label not in out, out
    for i in range(len(items)):
        phrase = CLINICAL[(seed + i) % len(CLINICAL)]
        assert phrase in out, (phrase, out)


@st.composite
def faker_phi(draw: st.DrawFn) -> tuple[str, str]:
    zh, en = fakers(draw(st.integers(0, 10**6)))
    return draw(st.sampled_from([i for i in phi_items(zh, en) if i[1]]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.sampled_from(CLINICAL), faker_phi()), min_size=1, max_size=6),
    st.sampled_from(["，", "。", " ", "\n", "；"]),
)
# Found by CI on 2026-11-27: a surname that is also a word (高), a given name jieba makes a
# word of without tagging it, and a bare cue.
@example(pairs=[("血红蛋白 120 g/L", ("患者高东，", "高东"))], sep="，")
# Found by CI on 2026-11-28: jieba cuts a surname that is also a word off its given name
# when the given name is a word too (任|建平: 建平 is a place).
@example(pairs=[("血红蛋白 120 g/L", ("患者任建平，", "任建平"))], sep="，")
def test_faker_phi_inserted_at_random_places_in_notes_is_removed(pairs, sep) -> None:
    parts = []
    for clinical, (phi, _) in pairs:
        parts += [clinical, sep, phi, sep]
    out = clean("".join(parts))
    for clinical, (_, secret) in pairs:
        assert secret not in out, (secret, out)
        assert not _digits_left(secret, out), (secret, out)
        assert clinical in out, (clinical, out)


# -- the segmenter's person tags --------------------------------------------------------------
NO_CUE_TEMPLATES = [
    "今日由{name}陪同来诊，{clinical}。",
    "{name}签字同意手术，{clinical}。",
    "{clinical}，告知{name}病情及预后。",
    "{clinical}。{name}否认药物过敏史。",
]


def test_names_without_a_cue_are_found_by_the_segmenter() -> None:
    zh, _ = fakers(7)
    total = missed = 0
    for i in range(200):
        name = zh.name()
        tpl = NO_CUE_TEMPLATES[i % len(NO_CUE_TEMPLATES)]
        clinical = CLINICAL[i % len(CLINICAL)]
        out = clean(tpl.format(name=name, clinical=clinical))
        total += 1
        missed += name in out
        assert clinical in out, out
    # Measured 2026-11-28: 3/200 missed (曾想, 周想 签字…: 想 is not a common given-name
    # character; 告知都冬梅病情: an everyday-word surname and no slot word after the name);
    # 6/200 before the person-slot names (欧琴, 解建华, 由云丹丹陪同 were missed too). The
    # rules alone find none of the names after 由/告知 or before 签字 at a clause start.
    assert missed / total <= 0.02, f"{missed}/{total} names without a cue missed"


@pytest.mark.parametrize(
    ("text", "name"),
    [
        # jieba tags these as something else or splits them; they fill a person slot exactly.
        ("曾刚签字同意手术。", "曾刚"),  # 曾刚/d
        ("包洋签字同意手术。", "包洋"),  # 包洋/ns
        ("温洁签字同意手术。", "温洁"),  # 温洁/a
        ("金志强签字同意手术。", "金志强"),  # 金志|强
        ("欧阳勇签字同意手术。", "欧阳勇"),  # 欧阳/ns 勇/n
        ("今日由万琴陪同来诊。", "万琴"),  # 万/m 琴/n
        ("今日由国建国陪同来诊。", "国建国"),  # an everyday-word surname, 建国/ns
        ("今日由高建军陪同来诊。", "高建军"),
        ("今日由罗兰英陪同来诊。", "罗兰英"),  # 罗兰/ns 英/j
        ("今日由余雪陪同来诊。", "余雪"),  # 由余雪/l
        ("常丹否认药物过敏史。", "常丹"),
        ("告知路冬梅。", "路冬梅"),
    ],
)
def test_names_in_a_person_slot_are_found_when_jieba_does_not_tag_them(text, name) -> None:
    res = deidentify_text(text, key=KEY)
    assert name not in res.text, res.text
    assert [text[f.start : f.end] for f in res.findings] == [name]


def test_a_name_found_in_a_slot_is_removed_where_it_recurs() -> None:
    out = clean("今日由包洋陪同来诊。包洋诉患者夜间咳嗽，白蛋白 35 g/L。")
    assert "包洋" not in out, out
    assert "诉患者夜间咳嗽" in out and "白蛋白 35 g/L" in out


# Phrases shaped like a person slot that hold no name: kin and helpers, everyday words, drugs.
NOT_NAMES = [
    "今日由家属陪同来诊",
    "由母亲陪同来诊",  # 母 is a surname, 母亲 a common word
    "由孙子陪同来诊",  # jieba tags 孙子 as a name
    "由孙女陪同复诊",
    "由司机陪同来院",
    "由师傅陪同来院",
    "由单位同事陪同",
    "由急诊收入院",
    "由门诊拟诊冠心病收入院",
    "今日由华西转入",
    "本人签字同意手术",
    "家属签字",
    "平安签字出院",
    "全家同意手术",
    "明确拒绝手术",
    "嘱平卧休息",  # jieba tags 平卧 as a name
    "丁香油外用",
    "调整为阿托伐他汀 20mg qn",
    "调整为阿昔洛韦。",
    "改为阿米卡星。",
    "常规检查未见异常",
    "高血压病史10年",
    "治疗方案：继续抗感染治疗",
    "白蛋白 35 g/L",
    "平素体健",
]


@pytest.mark.parametrize("phrase", NOT_NAMES)
def test_slot_shaped_clinical_phrases_are_kept(phrase: str) -> None:
    res = deidentify_text(phrase, key=KEY)
    assert res.text == phrase, res.text
    assert "PERSON" not in res.counts


def test_clinical_text_yields_no_person_from_the_segmenter() -> None:
    corpus = "。".join(CLINICAL) + (
        "。既往史：否认肝炎、结核等传染病史。家族史：父亲患高血压。"
        "予以抗血小板、调脂、稳定斑块等治疗，嘱低盐低脂饮食，定期复查。"
        "曲美他嗪，单硝酸异山梨酯，丹参多酚酸盐，王不留行，田七，石斛，车前子，葛根汤，桂枝汤，"
        "房室结，希氏束，二尖瓣，施万细胞，柯萨奇病毒，卵圆孔未闭，苏合香丸，甘露醇，鲁米那"
    )
    res = deidentify_text(corpus, key=KEY)
    assert "PERSON" not in res.counts, [corpus[f.start : f.end] for f in res.findings]
    assert res.text == corpus


def test_jieba_is_loaded_only_when_chinese_text_needs_it() -> None:
    code = (
        "import sys\n"
        "from apps.deid.engine import deidentify_text\n"
        "deidentify_text('MRN 448812, seen 2024-03-05 by Dr. Emily Chen')\n"
        "assert 'jieba' not in sys.modules\n"
        "deidentify_text('今日由刘洋陪同来诊')\n"
        "assert 'jieba' in sys.modules\n"
    )
    root = Path(__file__).resolve().parents[3]
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=root)
