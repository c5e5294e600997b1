"""The synthetic district's region tree and the vocabularies people and facts are drawn from.

长沙市天心区 (430103): 14 streets (街道) with 12-digit statistical division codes
`430103 + street (3) + community/village (3)`: communities 001–099 (社区), villages 2xx (村) in the
southern streets that still have villages (先锋, 黑石铺, 大托铺, 暮云, 南托). Names are plausible,
not an official list. Everything here is fixed data: the seed never changes the region tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import pyarrow as pa

DISTRICT_CODE = "430103"
PROVINCE_CITY_DISTRICT = "湖南省长沙市天心区"

#: (street name, communities, villages) in street-code order 001…014.
STREETS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("坡子街街道", ("西牌楼", "太平街", "坡子街", "沙河", "碧湘", "登仁桥"), ()),
    ("城南路街道", ("天心阁", "白沙井", "东瓜山", "城南路", "燕子岭", "劳动西路"), ()),
    ("裕南街街道", ("长坡", "宝塔山", "新桥", "石子冲", "向东南"), ()),
    ("金盆岭街道", ("天剑", "夏家冲", "赤岭", "金盆岭", "许家冲", "仰天湖"), ()),
    ("新开铺街道", ("新开铺", "豹子岭", "天心", "桂井", "西湖", "五凌"), ()),
    ("青园街道", ("青园", "井湾子", "园艺", "友谊", "新天", "枫园"), ()),
    ("桂花坪街道", ("桂花坪", "杉木冲", "新安", "长沙湾", "二里牌", "桂花"), ()),
    ("赤岭路街道", ("赤岭路", "新路", "南湖", "白沙路", "书院路"), ()),
    ("先锋街道", ("先锋", "新港", "丽发", "金桂", "工农桥", "湘府"), ("高塘", "新塘")),
    ("黑石铺街道", ("黑石铺", "披塘", "新港湾", "南湖港", "金坡"), ("双丰", "披塘")),
    ("大托铺街道", ("大托", "新港镇", "桂湘", "新大地", "黄合"), ("黄合", "大托", "新港")),
    ("文源街道", ("文源", "金盆", "红星", "中意", "新天村", "金桂苑"), ()),
    ("暮云街道", ("暮云", "莲华", "高云", "许兴", "暮云新城", "云塘", "南湖路"), ("许兴", "高云", "莲华", "暮云", "东林")),
    ("南托街道", ("南托岭", "沿江", "滨洲", "桐溪", "南托"), ("牛角塘", "桐溪", "大塘", "兴马洲", "滨洲")),
)
#: Streets transferred from 长沙县 in 2015: older residents carry 430121 ID numbers.
TRANSFERRED_STREETS = ("暮云街道", "南托街道")

ROADS = ("书院路", "韶山南路", "芙蓉南路", "劳动西路", "新开铺路", "友谊路", "白沙路", "天心路", "城南西路",
         "湘府西路", "暮云大道", "南湖路", "中意一路", "中意二路", "桂花路", "青园路", "赤岭路", "新韶东路",
         "猴子石路", "披塘路", "大托路", "先锋路", "金盆岭路", "坡子街", "解放西路", "黄兴南路", "西湖路",
         "木莲冲路", "新姚南路", "雀园路", "南二环", "铁道路", "天剑路", "豹子岭路", "融城路", "云塘路")

#: (ID-number region prefix, weight) of people born elsewhere in Hunan.
BIRTH_PREFIXES: tuple[tuple[str, float], ...] = (
    ("430102", 4), ("430105", 3), ("430111", 4), ("430112", 2), ("430121", 4), ("430181", 3),
    ("430182", 3), ("430203", 1), ("430302", 1), ("430321", 2), ("430381", 2), ("430421", 2),
    ("430521", 2), ("430621", 2), ("430721", 1), ("430902", 1), ("430921", 2), ("431021", 1),
    ("431102", 1), ("431202", 1), ("431302", 2), ("431321", 2), ("431382", 2), ("433101", 1),
)
#: Prefix used only for people outside the register (outside owners, records the truth never holds).
OUTSIDE_PREFIXES = ("430104", "430124", "440305", "420106", "360102", "430602")

SURNAMES: tuple[tuple[str, float], ...] = (
    ("刘", 8), ("李", 7), ("陈", 6), ("王", 6), ("张", 5), ("周", 4), ("彭", 3), ("谭", 3), ("罗", 3),
    ("唐", 3), ("黄", 3), ("曾", 3), ("易", 2), ("邓", 3), ("胡", 3), ("杨", 3), ("吴", 2), ("赵", 2),
    ("肖", 2), ("何", 2), ("欧阳", 1), ("龙", 1), ("廖", 2), ("贺", 2), ("蒋", 2), ("文", 1), ("田", 1),
    ("朱", 2), ("袁", 1), ("谢", 2), ("姚", 1), ("邹", 1), ("汤", 1), ("向", 1), ("颜", 1), ("卢", 1),
    ("熊", 1), ("钟", 1), ("许", 1), ("郭", 1), ("孙", 1), ("夏", 1), ("龚", 1), ("严", 1),
    ("苏", 1), ("戴", 1), ("莫", 1), ("雷", 1), ("段", 1), ("毛", 1), ("石", 1), ("范", 1), ("万", 1),
)
GIVEN_MALE = tuple("伟强军勇杰涛斌超明刚平辉鹏华飞鑫波宇浩凯健俊帆帅旭宁龙林洋磊国建志文海东峰成康星光天德正"
                   "湘岳衡嘉博睿轩泽宏毅祥立锋兵武松柏贵生福")
GIVEN_FEMALE = tuple("芳娟敏静丽艳娜秀英霞玲燕红梅琳婷雪慧莉萍倩颖琴兰凤洁晶欣佳怡悦婧璐湘蓉菊桂香琼莹丹"
                     "霏妍雯蕾薇嫣瑶岚")

HOSPITALS = ("中南大学湘雅医院", "中南大学湘雅二医院", "中南大学湘雅三医院", "湖南省人民医院", "长沙市中心医院",
             "长沙市第一医院", "长沙市第三医院", "长沙市第四医院", "湖南省肿瘤医院", "湖南中医药大学第一附属医院",
             "湖南省儿童医院", "湖南省妇幼保健院", "长沙市天心区人民医院", "天心区暮云街道社区卫生服务中心",
             "天心区坡子街街道社区卫生服务中心", "天心区青园街道社区卫生服务中心", "天心区南托街道社区卫生服务中心",
             "长沙市口腔医院", "湖南航天医院", "长沙市第八医院")

#: (ICD-10 code, name, serious-illness flag, inpatient share, mean total cost outpatient, inpatient, weight <60, weight 60+)
DIAGNOSES: tuple[tuple[str, str, bool, float, float, float, float, float], ...] = (
    ("J06.9", "急性上呼吸道感染", False, 0.01, 180, 3500, 30, 12),
    ("J20.9", "急性支气管炎", False, 0.05, 260, 5200, 10, 8),
    ("I10", "特发性(原发性)高血压", False, 0.03, 320, 6800, 6, 22),
    ("E11.9", "2型糖尿病不伴有并发症", False, 0.05, 380, 8200, 4, 14),
    ("K29.7", "胃炎", False, 0.03, 240, 5600, 8, 6),
    ("K21.9", "胃食管反流病", False, 0.02, 300, 6000, 3, 3),
    ("M54.5", "腰痛", False, 0.02, 260, 7000, 5, 6),
    ("M17.9", "膝关节病", False, 0.10, 350, 32000, 1, 5),
    ("J18.9", "肺炎", False, 0.45, 600, 9800, 3, 5),
    ("N39.0", "泌尿道感染", False, 0.08, 280, 6200, 3, 3),
    ("I25.1", "动脉硬化性心脏病", False, 0.25, 520, 21000, 1, 6),
    ("H25.9", "老年性白内障", False, 0.60, 400, 7600, 0.2, 3),
    ("K80.2", "胆囊结石不伴有胆囊炎", False, 0.55, 420, 16000, 1.5, 2),
    ("S82.2", "胫骨骨干骨折", False, 0.70, 900, 28000, 0.8, 0.8),
    ("O80.0", "自然分娩", False, 0.95, 500, 6500, 1, 0),
    ("E78.5", "高脂血症", False, 0.01, 260, 5000, 2, 5),
    ("K35.8", "急性阑尾炎", False, 0.90, 600, 12000, 0.8, 0.2),
    ("I48", "心房颤动和扑动", False, 0.35, 650, 26000, 0.2, 2),
    ("J44.9", "慢性阻塞性肺病", False, 0.35, 480, 13000, 0.3, 3),
    ("N18.3", "慢性肾脏病3期", False, 0.10, 560, 11000, 0.2, 1),
    ("K74.6", "肝硬化", False, 0.35, 700, 24000, 0.15, 0.4),
    ("C34.9", "支气管或肺恶性肿瘤", True, 0.70, 2800, 56000, 0.08, 0.5),
    ("C50.9", "乳房恶性肿瘤", True, 0.65, 2600, 48000, 0.08, 0.2),
    ("C16.9", "胃恶性肿瘤", True, 0.70, 2400, 52000, 0.04, 0.2),
    ("C22.0", "肝细胞癌", True, 0.75, 3000, 61000, 0.04, 0.15),
    ("N18.5", "慢性肾脏病5期", True, 0.20, 5200, 26000, 0.04, 0.15),
    ("Z49.1", "体外透析", True, 0.05, 4800, 18000, 0.04, 0.15),
    ("I63.9", "脑梗死", True, 0.85, 900, 32000, 0.05, 0.6),
    ("I21.9", "急性心肌梗死", True, 0.95, 1200, 58000, 0.03, 0.3),
    ("D61.9", "再生障碍性贫血", True, 0.50, 2200, 42000, 0.01, 0.02),
    ("F20.9", "精神分裂症", True, 0.30, 600, 15000, 0.06, 0.04),
    ("G35", "多发性硬化", True, 0.40, 1800, 36000, 0.01, 0.01),
)

EMPLOYER_STEMS = ("鑫盛", "华创", "远景", "湘江", "麓山", "岳麓", "天成", "金霞", "星城", "芙蓉", "长岭", "新湘",
                  "明德", "嘉和", "恒通", "宏达", "博远", "中南", "楚天", "南粤", "云帆", "信达", "锦程", "隆平",
                  "东方", "盛世", "联创", "同心", "万家", "和美", "润泽", "华湘", "顺达", "聚力", "通程", "湘辉")
EMPLOYER_TRADES = ("建筑工程", "物业管理", "餐饮管理", "商贸", "科技", "物流", "医药连锁", "家政服务", "汽车销售",
                   "电子商务", "食品", "装饰工程", "人力资源", "机电设备", "文化传媒", "教育咨询", "环保科技", "超市")
EMPLOYER_PUBLIC = ("长沙市天心区人民政府坡子街街道办事处", "长沙市天心区教育局", "长沙市天心区城市管理和综合执法局",
                   "湖南省长沙市天心区人民医院", "长沙市天心区第一中学", "长沙市公共交通集团有限责任公司",
                   "国网湖南省电力有限公司长沙供电分公司", "长沙市天心区青园小学", "湖南师范大学附属中学",
                   "长沙银行股份有限公司天心支行")

INSURANCE_SETS = (("养老", "医疗", "失业", "工伤", "生育"), ("养老", "医疗", "失业", "工伤"), ("养老", "医疗"),
                  ("养老", "医疗", "工伤"))

#: Unified social credit code (GB 32100-2015) alphabet and weights; organisation code (GB 11714) weights.
_USCC_ALPHA = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_USCC_W = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)
_ORG_W = (3, 7, 9, 10, 5, 8, 4, 2)


def credit_code(reg_prefix: str, body8: str) -> str:
    """An 18-character unified social credit code with valid GB 11714 and GB 32100 check characters.

    `reg_prefix` is the 2-char registration-authority/type code (e.g. "91" = enterprise) plus the
    6-digit region code; `body8` 8 characters of the organisation code (digits / upper letters).
    """
    vals = [_USCC_ALPHA.index(c) if c in _USCC_ALPHA else int(c, 36) for c in body8]
    org_check = 11 - sum(v * w for v, w in zip(vals, _ORG_W, strict=True)) % 11
    org = body8 + ("X" if org_check == 10 else "0" if org_check == 11 else str(org_check))
    s17 = reg_prefix + org
    total = sum(_USCC_ALPHA.index(c) * w for c, w in zip(s17, _USCC_W, strict=True))
    return s17 + _USCC_ALPHA[(31 - total % 31) % 31]


@dataclass(frozen=True)
class RegionTree:
    """Arrays over the villages and communities (index = region id used everywhere)."""

    code: np.ndarray  # '<U12'
    name: tuple[str, ...]  # 西牌楼社区, 黄合村 …
    street: np.ndarray  # index into STREETS
    village: np.ndarray  # bool
    weight: np.ndarray  # relative population

    @property
    def street_names(self) -> tuple[str, ...]:
        return tuple(s[0] for s in STREETS)

    def table(self) -> pa.Table:
        sn = self.street_names
        return pa.table({
            "region_code": pa.array(self.code.tolist(), pa.string()),
            "name": pa.array(list(self.name), pa.string()),
            "street_code": pa.array([c[:9] for c in self.code.tolist()], pa.string()),
            "street_name": pa.array([sn[s] for s in self.street.tolist()], pa.string()),
            "kind": pa.array(["村" if v else "社区" for v in self.village.tolist()], pa.string()),
        })


@cache
def region_tree() -> RegionTree:
    codes, names, streets, village, weight = [], [], [], [], []
    for si, (_, comms, vills) in enumerate(STREETS):
        for ci, c in enumerate(comms):
            codes.append(f"{DISTRICT_CODE}{si + 1:03d}{ci + 1:03d}")
            names.append(c + "社区")
            streets.append(si)
            village.append(False)
            # deterministic variation of community size (0.6–1.4)
            weight.append(0.6 + ((si * 31 + ci * 17) % 9) / 10)
        for vi, v in enumerate(vills):
            codes.append(f"{DISTRICT_CODE}{si + 1:03d}{201 + vi:03d}")
            names.append(v + "村")
            streets.append(si)
            village.append(True)
            weight.append(0.35 + ((si + vi * 7) % 4) / 10)
    return RegionTree(np.array(codes), tuple(names), np.array(streets, np.int16), np.array(village, bool),
                      np.array(weight, float))
