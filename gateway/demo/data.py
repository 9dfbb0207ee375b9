"""Deterministic, realistic Chinese customer records for the demo legacy system.

Rules of this module:

- Pure: no I/O, no clock, no global ``random``. Everything comes from one
  ``random.Random(seed)``, so the same seed always yields the same records and the
  tests (and the masking presets' tests) can rely on them.
- Realistic enough to exercise masking: ID numbers follow GB 11643 (real region
  codes, birth date, gender parity, MOD 11-2 check), card numbers use real bank
  BIN prefixes and are Luhn-valid, balances are exact two-place decimals, account
  ids are wider than 64 bits, and about a third of the free-text remarks leak the
  customer's own phone or ID number.
- ``to_json_bytes`` is the legacy serializer: decimals and big integers go out as
  exact number text, Chinese as raw UTF-8, key order kept.
"""

from __future__ import annotations

import hashlib
import random
import string
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, ParamSpec

import orjson

Customer = dict[str, Any]
_P = ParamSpec("_P")

# Key order is part of the contract: the gateway must pass it through unchanged.
CUSTOMER_FIELDS: tuple[str, ...] = (
    "id", "customer_no", "name", "gender", "birth_date", "id_number", "phone", "email",
    "address", "bank_card", "balance", "txn_password", "password", "risk_level",
    "credit_limit", "branch", "accounts", "remarks", "created_at",
)  # fmt: skip

# Real GB/T 2260 county-level codes: code -> (province, city, district).
REGIONS: dict[str, tuple[str, str, str]] = {
    "110101": ("北京市", "北京市", "东城区"),
    "110105": ("北京市", "北京市", "朝阳区"),
    "110108": ("北京市", "北京市", "海淀区"),
    "120101": ("天津市", "天津市", "和平区"),
    "310104": ("上海市", "上海市", "徐汇区"),
    "310115": ("上海市", "上海市", "浦东新区"),
    "320102": ("江苏省", "南京市", "玄武区"),
    "320506": ("江苏省", "苏州市", "吴中区"),
    "330106": ("浙江省", "杭州市", "西湖区"),
    "350203": ("福建省", "厦门市", "思明区"),
    "370202": ("山东省", "青岛市", "市南区"),
    "420106": ("湖北省", "武汉市", "武昌区"),
    "430104": ("湖南省", "长沙市", "岳麓区"),
    "440106": ("广东省", "广州市", "天河区"),
    "440305": ("广东省", "深圳市", "南山区"),
    "500103": ("重庆市", "重庆市", "渝中区"),
    "510107": ("四川省", "成都市", "武侯区"),
    "610113": ("陕西省", "西安市", "雁塔区"),
}

STREETS: dict[str, tuple[str, ...]] = {
    "110101": ("东直门南大街", "王府井大街", "朝阳门北大街"),
    "110105": ("建国路", "东三环中路", "望京街"),
    "110108": ("中关村大街", "学院路", "知春路"),
    "120101": ("南京路", "滨江道"),
    "310104": ("漕溪北路", "肇嘉浜路", "衡山路"),
    "310115": ("世纪大道", "张杨路", "陆家嘴环路"),
    "320102": ("北京东路", "珠江路"),
    "320506": ("东吴北路", "宝带东路"),
    "330106": ("文三路", "天目山路", "古墩路"),
    "350203": ("鹭江道", "湖滨南路"),
    "370202": ("香港中路", "东海西路"),
    "420106": ("中北路", "武珞路"),
    "430104": ("麓山南路", "枫林三路"),
    "440106": ("天河路", "体育西路", "黄埔大道"),
    "440305": ("深南大道", "科苑路", "南海大道"),
    "500103": ("民族路", "中山四路"),
    "510107": ("人民南路四段", "科华北路", "武侯祠大街"),
    "610113": ("小寨东路", "长安南路", "科技路"),
}

# (BIN prefix, issuing bank, card length).
BANK_BINS: tuple[tuple[str, str, int], ...] = (
    ("622202", "中国工商银行", 19),
    ("621700", "中国建设银行", 19),
    ("622848", "中国农业银行", 19),
    ("621661", "中国银行", 19),
    ("622262", "交通银行", 19),
    ("621483", "招商银行", 16),
    ("622588", "招商银行", 16),
)

MOBILE_PREFIXES: tuple[str, ...] = tuple(
    [str(p) for p in range(130, 140)]
    + [str(p) for p in (150, 151, 152, 153, 155, 156, 157, 158, 159)]
    + [str(p) for p in range(180, 190)]
    + ["147", "166", "173", "177", "199"]
)

EMAIL_DOMAINS: tuple[str, ...] = (
    "qq.com", "163.com", "126.com", "sina.com", "gmail.com", "foxmail.com", "139.com",
)  # fmt: skip


def _pinyin_table(spec: str) -> tuple[tuple[str, str], ...]:
    return tuple((hanzi, roman) for hanzi, roman in (p.split(":") for p in spec.split()))


SURNAMES = _pinyin_table(
    "王:wang 李:li 张:zhang 刘:liu 陈:chen 杨:yang 黄:huang 赵:zhao 吴:wu 周:zhou "
    "徐:xu 孙:sun 马:ma 朱:zhu 胡:hu 郭:guo 何:he 林:lin 高:gao 罗:luo 郑:zheng "
    "梁:liang 谢:xie 宋:song 唐:tang 许:xu 韩:han 冯:feng 邓:deng 曹:cao 彭:peng "
    "曾:zeng 肖:xiao 田:tian 董:dong 潘:pan 袁:yuan 蔡:cai 蒋:jiang 余:yu 杜:du "
    "叶:ye 程:cheng 魏:wei 苏:su 吕:lv 丁:ding 沈:shen 姚:yao 陆:lu 钱:qian"
)
COMPOUND_SURNAMES = _pinyin_table(
    "欧阳:ouyang 司马:sima 诸葛:zhuge 上官:shangguan 东方:dongfang 慕容:murong"
)
GIVEN_MALE = _pinyin_table(
    "伟:wei 强:qiang 磊:lei 军:jun 洋:yang 勇:yong 杰:jie 涛:tao 明:ming 超:chao "
    "斌:bin 鹏:peng 辉:hui 刚:gang 健:jian 峰:feng 浩:hao 宇:yu 轩:xuan 博:bo "
    "文:wen 俊:jun 志:zhi 国:guo 建:jian 华:hua 平:ping 晨:chen 嘉:jia 子:zi"
)
GIVEN_FEMALE = _pinyin_table(
    "芳:fang 娜:na 敏:min 静:jing 丽:li 艳:yan 娟:juan 霞:xia 婷:ting 雪:xue "
    "颖:ying 琳:lin 慧:hui 佳:jia 欣:xin 怡:yi 悦:yue 蕾:lei 玲:ling 萍:ping "
    "倩:qian 晶:jing 梅:mei 红:hong 雅:ya 洁:jie 思:si 雨:yu 梓:zi 涵:han"
)

# "{phone}" / "{id_number}" placeholders make a remark leak the customer's own data.
LEAKY_REMARKS: tuple[str, ...] = (
    "客户来电 {phone} 咨询房贷",
    "客户本人持身份证 {id_number} 临柜办理挂失",
    "回访电话 {phone} 无人接听，下次再联系",
    "核实身份证号 {id_number} 与预留信息一致，已解除冻结",
    "客户要求将对账单短信发送至 {phone}",
)
PLAIN_REMARKS: tuple[str, ...] = (
    "VIP 客户，偏好上午电话联系",
    "风险测评已于柜面完成，客户确认知悉产品风险",
    "客户反映手机银行登录提示 <错误码 E102> & 无法转账",
    "已办理工资代发，关注理财到期提醒",
    "客户咨询大额存单利率，暂未购买",
    "地址变更已登记，新卡邮寄中",
)

_CN_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CN_ID_CHECK = "10X98765432"
_CST = timezone(timedelta(hours=8))
_LAST_DAY = date(2025, 12, 31)
_FIRST_BIRTH, _LAST_BIRTH = date(1950, 1, 1), date(2005, 12, 31)  # all adults by 2025


def cn_id_check_char(first17: str) -> str:
    """ISO 7064 MOD 11-2 check character for the first 17 digits of a GB 11643 ID."""
    if len(first17) != 17 or not (first17.isascii() and first17.isdigit()):
        raise ValueError("expected exactly 17 ASCII digits")
    total = sum(int(d) * w for d, w in zip(first17, _CN_ID_WEIGHTS, strict=True))
    return _CN_ID_CHECK[total % 11]


def cn_id_valid(id_number: str) -> bool:
    """True for an 18-character GB 11643 ID with a real birth date and correct check.

    A lowercase ``x`` is accepted because legacy systems store both.
    """
    if len(id_number) != 18 or not (id_number[:17].isascii() and id_number[:17].isdigit()):
        return False
    try:
        date(int(id_number[6:10]), int(id_number[10:12]), int(id_number[12:14]))
    except ValueError:
        return False
    return cn_id_check_char(id_number[:17]) == id_number[17].upper()


def _luhn_sum(digits: str, double_first: bool) -> int:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if (i % 2 == 0) == double_first:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total


def luhn_check_digit(partial: str) -> str:
    """The digit that makes ``partial + digit`` pass the Luhn check."""
    if not partial or not (partial.isascii() and partial.isdigit()):
        raise ValueError("expected ASCII digits")
    return str(-_luhn_sum(partial, double_first=True) % 10)


def luhn_valid(number: str) -> bool:
    if len(number) < 2 or not (number.isascii() and number.isdigit()):
        return False
    return _luhn_sum(number, double_first=False) % 10 == 0


def region_branch(code: str) -> str:
    """Branch name for a region code, e.g. ``330106`` -> ``杭州西湖支行``."""
    _, city, district = REGIONS[code]
    short = district.removesuffix("新区").removesuffix("区")
    return f"{city.removesuffix('市')}{short}支行"


def branches() -> list[dict[str, Any]]:
    """One branch per region, fresh dicts each call."""
    return [
        {"code": f"B{code}", "name": region_branch(code), "province": p, "city": c, "district": d}
        for code, (p, c, d) in REGIONS.items()
    ]


def to_json_bytes(obj: Any) -> bytes:
    """Serialize like the legacy system: exact decimals and big ints, raw UTF-8."""
    return orjson.dumps(_exact_numbers(obj))


_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what orjson encodes natively


def _exact_numbers(obj: Any) -> Any:
    # orjson raises on ints outside 64 bits before consulting `default=`, so both
    # big ints and Decimals are swapped for pre-rendered fragments up front.
    if isinstance(obj, dict):
        return {k: _exact_numbers(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_exact_numbers(v) for v in obj]
    if isinstance(obj, Decimal):
        if not obj.is_finite():
            raise ValueError(f"JSON has no number for {obj}")
        return orjson.Fragment(format(obj, "f"))
    if isinstance(obj, int) and not isinstance(obj, bool) and not _INT_MIN <= obj <= _INT_MAX:
        return orjson.Fragment(str(obj))
    return obj


def _random_date(rng: random.Random, start: date, end: date) -> date:
    return date.fromordinal(rng.randint(start.toordinal(), end.toordinal()))


def _add_years(d: date, years: int) -> date:
    try:
        return d.replace(year=d.year + years)
    except ValueError:  # 29 February
        return d.replace(year=d.year + years, day=28)


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def _money(rng: random.Random, scale: float) -> Decimal:
    cents = min(int(rng.lognormvariate(0, 1.6) * scale * 100), 99_999_999_99)
    return Decimal(cents).scaleb(-2)  # keeps exactly two places, e.g. 1024.50


def _card_number(rng: random.Random) -> str:
    prefix, _, length = rng.choice(BANK_BINS)
    partial = prefix + _digits(rng, length - len(prefix) - 1)
    return partial + luhn_check_digit(partial)


def _unique(seen: set[str], make: Callable[_P, str], *args: _P.args, **kw: _P.kwargs) -> str:
    value = make(*args, **kw)
    while value in seen:
        value = make(*args, **kw)
    seen.add(value)
    return value


def _id_number(rng: random.Random, code: str, birth: date, male: bool) -> str:
    # Odd sequence = male, even = female (GB 11643 §4.3).
    seq = rng.randrange(1, 1000, 2) if male else rng.randrange(2, 1000, 2)
    first17 = f"{code}{birth:%Y%m%d}{seq:03d}"
    return first17 + cn_id_check_char(first17)


def _phone(rng: random.Random) -> str:
    return rng.choice(MOBILE_PREFIXES) + _digits(rng, 8)


def _customer_no(rng: random.Random) -> str:
    return "C" + _digits(rng, 10)


def _name(rng: random.Random, male: bool) -> tuple[str, str, str]:
    """(Chinese name of 2–3 characters, surname pinyin, given-name pinyin)."""
    given_pool = GIVEN_MALE if male else GIVEN_FEMALE
    if rng.random() < 0.04:
        surname, given = rng.choice(COMPOUND_SURNAMES), [rng.choice(given_pool)]
    else:
        surname = rng.choice(SURNAMES)
        given = rng.sample(given_pool, 2 if rng.random() < 0.6 else 1)
    name = surname[0] + "".join(h for h, _ in given)
    return name, surname[1], "".join(p for _, p in given)


def _email(rng: random.Random, surname: str, given: str, birth: date) -> str:
    domain = rng.choice(EMAIL_DOMAINS)
    if domain == "qq.com" and rng.random() < 0.5:
        return f"{rng.randint(10_000_000, 2_999_999_999)}@qq.com"  # QQ number as address
    local = rng.choice(
        (
            f"{surname}{given}{rng.randint(1, 999)}",
            f"{surname}{given}{birth.year}",
            f"{surname}.{given[0]}{birth:%m%d}",
        )
    )
    return f"{local}@{domain}"


def _address(rng: random.Random, code: str) -> str:
    province, city, district = REGIONS[code]
    head = province if province == city else province + city  # municipalities
    street = rng.choice(STREETS[code])
    number, building, room = rng.randint(1, 999), rng.randint(1, 20), rng.randint(1, 32)
    return f"{head}{district}{street} {number} 号 {building} 幢 {room * 100 + rng.randint(1, 6)} 室"


def _password(rng: random.Random) -> str:
    plain = "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(8))
    if rng.random() < 0.6:  # unsalted MD5, as such systems really store them
        return hashlib.md5(plain.encode(), usedforsecurity=False).hexdigest()
    return plain


def _accounts(rng: random.Random, since: date) -> list[dict[str, Any]]:
    accounts = []
    for _ in range(rng.choice((1, 1, 2, 2, 3))):
        currency = "USD" if rng.random() < 0.15 else "CNY"
        accounts.append(
            {
                # Always > 2**64, so clients that parse into 64-bit ints would corrupt it.
                "account_id": rng.randrange(2 * 10**19, 10**20),
                "number": _card_number(rng),
                "type": rng.choice(("储蓄", "储蓄", "信用", "理财")),
                "currency": currency,
                "balance": _money(rng, 3_000 if currency == "USD" else 30_000),
                "opened": _random_date(rng, since, _LAST_DAY).isoformat(),
            }
        )
    return accounts


def generate_customers(count: int = 500, seed: int = 20261124) -> list[Customer]:
    """``count`` customers with ids 1..count; identical output for the same seed."""
    rng = random.Random(seed)
    codes = sorted(REGIONS)
    all_branches = [region_branch(c) for c in codes]
    seen_no: set[str] = set()
    seen_id: set[str] = set()
    seen_phone: set[str] = set()
    customers: list[Customer] = []
    for cid in range(1, count + 1):
        male = rng.random() < 0.5
        name, surname_py, given_py = _name(rng, male)
        code = rng.choice(codes)
        birth = _random_date(rng, _FIRST_BIRTH, _LAST_BIRTH)
        id_number = _unique(seen_id, _id_number, rng, code, birth, male)
        phone = _unique(seen_phone, _phone, rng)
        created_day = _random_date(rng, max(_add_years(birth, 18), date(2008, 1, 1)), _LAST_DAY)
        created = datetime(
            created_day.year, created_day.month, created_day.day,
            rng.randint(8, 18), rng.randrange(60), rng.randrange(60), tzinfo=_CST,
        )  # fmt: skip
        leaky = rng.random() < 1 / 3
        template = rng.choice(LEAKY_REMARKS if leaky else PLAIN_REMARKS)
        customer: Customer = {
            "id": cid,
            "customer_no": _unique(seen_no, _customer_no, rng),
            "name": name,
            "gender": "男" if male else "女",
            "birth_date": birth.isoformat(),
            "id_number": id_number,
            "phone": phone,
            "email": _email(rng, surname_py, given_py, birth),
            "address": _address(rng, code),
            "bank_card": _card_number(rng),
            "balance": _money(rng, 50_000),
            "txn_password": _digits(rng, 6),
            "password": _password(rng),
            "risk_level": f"R{rng.randint(1, 5)}",
            "credit_limit": rng.randrange(0, 200_001, 5_000),
            "branch": region_branch(code) if rng.random() < 0.8 else rng.choice(all_branches),
            "accounts": _accounts(rng, created_day),
            "remarks": template.format(phone=phone, id_number=id_number),
            "created_at": created.isoformat(),
        }
        customers.append(customer)
    return customers
