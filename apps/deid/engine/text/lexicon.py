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
    # Less frequent surnames (seen in the register and in generated test names).
    "亓仝冀冼匡卿厉奚嵇扈揭昝晁晋朴束杭栗檀洪浦湛漆燕狄禹粟羊胥芮茅茹荆萧蔺衡裘诸谈谌赖赫辜逯邰邸"
    "郁郜鄢阎阙阚雍鞠鹿储况冶勾尉屠帅廉慕戎楚班傅尧"
    "皮"
    # Surnames that are also everyday or drug-name characters (listed in AMBIGUOUS_SURNAMES).
    "丰乌乐云井亢伊伏但位信修元公初利劳区南印危原呼哈国奉官宣容宾宿富封居展巴干平幸强惠戈战支敬"
    "斯普智权来植楼母海满玉盖盘相祖索练花衣计豆那都门闭闻阴阿隆鲜薄皮"
)
# Surnames that are also everyday words, or start drug names (阿司匹林, 伊曲康唑): trusted only
# after an explicit "label：" (姓名：于洋), never after a bare cue or from the segmenter alone.
AMBIGUOUS_SURNAMES = frozenset(
    "于和向时明成安全应常单查解车路连关方文白黄高康任师商易齐宁冷伍尚万能"
    "丰乌乐云井亢伊伏但位信修元公初利劳区南印危原呼哈国奉官宣容宾宿富封居展巴干平幸强惠戈战支敬"
    "斯普智权来植楼母海满玉盖盘相祖索练花衣计豆那都门闭闻阴阿隆鲜薄皮"
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


# --- guards on the segmenter's person tags (text/segmenter.py) ---------------------------
def _words(*lines: str) -> frozenset[str]:
    return frozenset(w for line in lines for w in line.split())


# Clinical words that start with a surname and that jieba may tag ``nr``: herbs, drugs,
# eponyms, anatomy, places that name diseases. Measured on the bench notes and the tests.
SEGMENTER_NOT_NAMES = _words(
    "柴胡 田七 石斛 乔木 武田 孔径 葛根 麻黄 麻黄汤 桂枝",
    "桂枝汤 苏合香 苏木 施万 柯萨奇 甘精 甘草 甘油 谷丙",
    "谷草 谷维素 鲁米 鲁米那 连花 连花清 金银花 金水宝",
    "金葡菌 杜仲 杜冷丁 秦艽 丁香 何首乌 陈皮 夏枯草",
    "蒲公英 牛黄 牛膝 柏子仁 桑叶 桑白皮 桑寄生 熊胆 雷尼",
    "艾司 艾灸 沙丁 吉非 曲美 曲马多 莫西 莫沙",
    "华法林 潘托 米索 霍奇金 韦格纳 孟鲁 谷氨 毛细 龙胆",
    "邢台 骆驼 管型 房颤 房室 房间隔 包虫 卫生 钟乳石",
    "钟表 冯氏 蒋氏 柯氏 杜氏 史氏 洪氏 胡氏 贺氏 童氏",
    "苗勒 田纳西 丹参 党参 沈阳 武汉 南京 杭州 郑州 贵阳",
    "温州 常州 汤剂 邵阳 岳阳 岳母 姜黄 姜汤 钱币 姚明",
    "严重 严格 严密 江湖 石膏 石灰 骨质 郝氏 邱氏 盛情",
    "景天 顾虑 梁柱 窦性 窦房 窦道 尹氏 苟且 阮氏 符合",
    "季节 宫颈 宫腔 宫缩 宫内 平卧 丁香油",
    "阿托 阿卡 阿莫 阿奇 阿昔 阿米 阿替 阿哌 阿普 阿仑 阿法",
    # kin and helpers that come with a patient (由孙子陪同来诊), tagged as names by jieba
    "孙子 孙女 孙儿 孙媳 司机 师傅 房东",
)
# Characters that are not part of a given name but often end a clinical word (柴胡汤, 窦性,
# 病史, 冯氏).
SEGMENTER_NOT_NAME_CHARS = frozenset(
    "氏汤丸散膏片胶素酸醇钠钾钙霉菌苷酮胺酯液剂粉碱脂糖肽性体段史科院室部区床号楼级期型度次天"
    "月年日病症炎瘤癌痛血尿便肝肾肺脾胃肠脑管腔膜囊核瓣脉见示呈伴约予"
)
# A next word starting with one of these makes the tagged word part of a drug or herb name.
SEGMENTER_SUFFIX_CHARS = frozenset("汤丸散膏片胶颗素酸醇钠钾钙霉菌苷酮胺酯液剂粉碱肽氏")
# Words that take a person right before a name (由刘洋陪同, 告知王芳) ...
SEGMENTER_NAME_BEFORE = _words(
    "由 请 与 和 及 同 给 向 对 经 据 嘱 让 叫 找 告知 联系 通知 陪同 探视 致电 转告 委托 见",
    "系 为 是 即 其妻 其夫 其子 其女 之妻 之夫 之子 之女",
)
# ... and words that follow one (刘洋陪同, 王芳签字, 张伟否认).
SEGMENTER_NAME_AFTER = (
    "陪同",
    "陪护",
    "签字",
    "签名",
    "书写",
    "审核",
    "记录",
    "查房",
    "会诊",
    "诉",
    "自诉",
    "主诉",
    "否认",
    "表示",
    "同意",
    "拒绝",
    "要求",
    "来诊",
    "就诊",
    "来院",
    "入院",
    "出院",
    "转入",
    "转出",
    "复诊",
    "随访",
    "告知",
    "联系",
    "电话",
    "手机",
    "代诉",
    "家属",
    "系",
    "为",
    "是",
    "之",
    "的",
    "先生",
    "女士",
    "同志",
    "老人",
    "今日",
    "因",
    "于",
    "在",
    "已",
    "现",
    "曾",
    "病情",
    "目前",
)

# --- names in a person slot without a person tag (text/segmenter.py, ``slot_person_spans``) --
# Characters common in Chinese given names (general knowledge of naming, not drawn from any
# generator). A word that jieba tags as something else (曾刚 an adverb, 包洋 a place, 金志|强
# split) is taken as a name only when it is a surname followed by one or two of these, it
# fills a person slot exactly (below), and it is not a common dictionary word (平安, 孙子).
# Clinical characters (素, 炎, 天 and SEGMENTER_NOT_NAME_CHARS) are left out.
GIVEN_NAME_CHARS = frozenset(
    # more often in men's names
    "伟刚勇毅俊峰强军平保东文辉力明永健世广志义兴良海山仁波宁贵福生龙元全国胜学祥才发武新"
    "利清飞彬富顺信杰涛昌成康星光达安岩中茂进林有坚和彪博诚先敬震振壮会思群豪邦承乐绍功松"
    "善厚庆磊民友裕河哲江超浩亮政谦奇固之翰朗伯宏言若鸣朋斌梁栋维启克伦翔旭鹏泽晨辰士以建"
    "家致树德行泰盛雄琛钧冠策腾楠榕风航弘坤畅鑫宇轩涵梓睿凯锋铭杨帆宾"
    # more often in women's names
    "秀娟英华慧巧美娜静淑惠珠翠雅芝玉萍红娥玲芬芳燕彩春冬菊兰凤洁梅琳云莲真环雪荣爱妹霞香"
    "莺媛艳瑞凡佳嘉琼勤珍贞莉桂娣叶璐娅琦晶妍茜秋珊莎锦黛青倩婷姣婉娴瑾颖露瑶怡婵雁蓓仪荷"
    "丹蓉眉君琴蕊薇菁梦岚婕馨韵艺咏卿聪澜纯毓悦昭冰爽琬茗羽希欣滢馥筠柔竹凝晓欢霄枫芸菲寒"
    "伊亚宜可舒影丽阳妮宝初程鸿桦剑娇宽灵琪晴容烁唯威雯萱彦雨洋忠宗曼紫逸贤蝶菡小金银玮珂莹"
)
# A person slot: the clause start or one of these words right before the name ...
SLOT_NAME_BEFORE = _words(
    "由 请 告知 通知 联系 委托 致电 转告 探视 其妻 其夫 其子 其女 之妻 之夫 之子 之女"
)
# ... and one of these right after it (a narrower list than SEGMENTER_NAME_AFTER: verbs whose
# subject is a person, never 的, 是, 在, 因 ...). After a word of SLOT_NAME_BEFORE the clause
# end closes the slot too (告知王芳。).
SLOT_NAME_AFTER = _words(
    "陪同 陪护 签字 签名 代诉 自诉 否认 表示 同意 拒绝 要求 来诊 就诊 来院 复诊"
)

# --- a function-word surname before a rank title (text/rules.py) ---------------------------
# 向主任查房后, 由常主任主刀: a surname that is also a preposition or adverb (向, 应, 常, 时 ...)
# is a name before a rank title when the title is followed by something the person does and
# nothing but the clause start or one of ZH_RANK_TITLE_BEFORE stands before it. A generic title
# (医生, 护士) after such a word stays a preposition phrase: 向医生咨询, 应医生要求.
ZH_RANK_TITLES = ("主任", "教授", "院长", "护士长")
ZH_RANK_TITLE_BEFORE = ("由", "请", "经", "邀请")
ZH_RANK_TITLE_ACTS = (
    "查房",
    "会诊",
    "主刀",
    "指示",
    "指出",
    "认为",
    "审阅",
    "阅片",
    "查看",
    "看过",
    "诊视",
    "亲自",
    "带领",
    "主持",
    "签字",
    "审核",
    "考虑",
)
