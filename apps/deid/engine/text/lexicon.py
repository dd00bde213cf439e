"""Word lists for the rule layer: surnames, context cues, department stems, English titles.

Kept as data so a site can extend them without touching the rules. No model, no download.
"""

from __future__ import annotations

# The most frequent Chinese surnames (single characters, roughly the top 200 by population,
# plus the common two-character surnames). Coverage of these covers >95% of the population.
SINGLE_SURNAMES = frozenset(
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任"
    "沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向"
    "汤常温康施文牛樊葛邢安齐易乔伍庞颜倪庄聂章鲁岳翟殷詹申欧耿关兰焦俞左柳甘祝包宁尚符舒阮柯纪梅童凌毕单"
    "季裴霍涂成苗谷盛曲翁冉骆蓝路游辛靳管柴蒙鲍华喻祁蒲房滕屈饶解牟艾尤阳时穆农司卓古吉缪简车项连芦麦褚娄"
    "窦戚岑景党宫费卜冷晏席卫米柏宗瞿桂全佟应臧闵苟邬边卞姬师和仇栾隋商刁沙荣巫寇桑郎甄丛仲虞敖巩明佘池查"
    "麻苑迟邝"
)
COMPOUND_SURNAMES = frozenset(
    [
        "欧阳",
        "司马",
        "上官",
        "诸葛",
        "东方",
        "皇甫",
        "尉迟",
        "公孙",
        "慕容",
        "长孙",
        "宇文",
        "司徒",
        "夏侯",
        "轩辕",
        "令狐",
        "端木",
        "独孤",
        "南宫",
        "西门",
        "百里",
    ]
)

# Words that introduce a person's name in Chinese notes (患者 张三 / 姓名：李四 / 家属王五).
ZH_NAME_CUES = (
    "患者姓名",
    "病人姓名",
    "家属姓名",
    "联系人姓名",
    "姓名",
    "患者",
    "病人",
    "患儿",
    "家属",
    "联系人",
    "主治医师",
    "住院医师",
    "主任医师",
    "副主任医师",
    "报告医师",
    "审核医师",
    "申请医师",
    "检查医师",
    "记录医师",
    "签名医师",
    "医师",
    "医生",
    "护士",
    "技师",
    "签名",
    "签字",
    "记录者",
    "记录人",
    "配偶",
    "丈夫",
    "妻子",
    "父亲",
    "母亲",
    "之子",
    "之女",
    "儿子",
    "女儿",
    "监护人",
    "代理人",
)
# Titles that follow a surname (王医生, 李主任).
ZH_NAME_TITLES = (
    "医生",
    "医师",
    "大夫",
    "主任",
    "护士长",
    "护士",
    "教授",
    "先生",
    "女士",
    "小姐",
    "老师",
    "同志",
    "院长",
    "师傅",
)
# Characters that rarely end a Chinese given name but often follow one in notes; used to stop
# a greedy two-character given name from eating the next word (张伟男 -> 张伟 + 男).
ZH_NAME_STOP = frozenset("男女岁于在因以和与及等的了是为，,。、：:；; \t\n（()）")

EN_TITLES = ("Mr", "Mrs", "Ms", "Miss", "Dr", "Prof", "Mx", "Sir", "Madam")
EN_NAME_CUES = (
    "Patient Name",
    "Patient name",
    "Name",
    "Patient",
    "Pt",
    "Physician",
    "Referring physician",
    "Attending",
    "Signed by",
    "Signed",
    "Reported by",
    "Dictated by",
    "Transcribed by",
    "Verified by",
    "Contact",
    "Next of kin",
    "Mother",
    "Father",
    "Spouse",
    "Guardian",
)
EN_NAME_SUFFIXES = ("MD", "M.D.", "RN", "DO", "PhD", "NP", "PA")

# Department stems (…科); matched only as whole department names.
DEPARTMENT_STEMS = (
    "心血管内",
    "心内",
    "心外",
    "心胸外",
    "胸外",
    "神经内",
    "神经外",
    "神经",
    "呼吸内",
    "呼吸",
    "消化内",
    "消化",
    "肾内",
    "肾脏内",
    "内分泌",
    "血液",
    "肿瘤",
    "放疗",
    "骨",
    "普外",
    "普通外",
    "肝胆外",
    "胃肠外",
    "泌尿外",
    "泌尿",
    "妇产",
    "妇",
    "产",
    "儿",
    "新生儿",
    "眼",
    "耳鼻喉",
    "耳鼻咽喉",
    "口腔",
    "皮肤",
    "急诊",
    "放射",
    "影像",
    "超声",
    "检验",
    "病理",
    "麻醉",
    "康复",
    "中医",
    "感染",
    "风湿免疫",
    "老年",
    "全",
    "重症医学",
    "核医学",
    "介入",
    "营养",
    "精神",
    "心理",
    "烧伤",
    "整形",
    "乳腺外",
    "甲状腺外",
    "血管外",
    "内",
    "外",
)
# Organisation suffixes (…医院, …卫生院).
ORG_SUFFIXES_ZH = (
    "人民医院",
    "中心医院",
    "中医医院",
    "中医院",
    "附属医院",
    "妇幼保健院",
    "儿童医院",
    "肿瘤医院",
    "专科医院",
    "医院",
    "卫生院",
    "卫生服务中心",
    "医疗中心",
    "诊所",
    "门诊部",
    "医学院",
    "疾控中心",
)
