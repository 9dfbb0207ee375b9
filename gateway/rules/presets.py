"""Mask presets: how each kind of Chinese customer datum is partially shown.

Every preset works on characters (Unicode code points), never bytes, and
replaces each hidden character by one mask character (default ``*``), so the
masked value keeps its length. A value too short to keep anything safely is
masked completely. The security team's reference with examples is
``docs/rules.md``; the tests in ``tests/rules/test_presets.py`` pin each one.

| preset | shows | example |
| --- | --- | --- |
| ``cn_id`` | first 6 (issuing area), last 4 (sequence, check digit) | ``110101********123X`` |
| ``cn_phone`` | first 3 and last 4 digits; ``+86``/``0086`` prefix kept | ``138****5678`` |
| ``bank_card`` | first 6 (BIN) and last 4 | ``622202*********0123`` |
| ``email`` | first character of the local part and the whole domain | ``z*******@example.com`` |
| ``cn_name`` | the surname (compound surnames such as 欧阳 kept whole) | ``欧阳**`` |
| ``address`` | province / city / district, by suffix | ``广东省深圳市南山区*****`` |

``cn_id``, ``cn_phone`` and ``bank_card`` count only significant characters:
spaces and hyphens stay where they are and are not counted
(``6222 0212 3456 7890`` -> ``6222 02** **** 7890``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

MaskFn = Callable[[str], str]
_SEPARATORS = frozenset(" -")


def keep_ends(s: str, first: int, last: int, char: str) -> str:
    """Show ``first`` leading and ``last`` trailing characters; mask all when too short."""
    n = len(s)
    if n <= first + last:
        return char * n
    tail = s[n - last :] if last else ""
    return s[:first] + char * (n - first - last) + tail


def keep_ends_significant(s: str, first: int, last: int, char: str) -> str:
    """Like :func:`keep_ends`, but spaces and hyphens are kept in place and not counted."""
    if " " not in s and "-" not in s:
        return keep_ends(s, first, last, char)
    sig = [i for i, c in enumerate(s) if c not in _SEPARATORS]
    n = len(sig)
    hidden = sig if n <= first + last else sig[first : n - last]
    out = list(s)
    for i in hidden:
        out[i] = char
    return "".join(out)


def cn_id(first: int | None, last: int | None, char: str) -> MaskFn:
    def mask(s: str) -> str:
        keep_last = last
        if keep_last is None:
            significant = len(s)
            if " " in s or "-" in s:
                significant -= s.count(" ") + s.count("-")
            keep_last = 3 if significant == 15 else 4
        return keep_ends_significant(s, 6 if first is None else first, keep_last, char)

    return mask


def _fixed_ends(default_first: int, default_last: int) -> Callable[..., MaskFn]:
    def build(first: int | None, last: int | None, char: str) -> MaskFn:
        f = default_first if first is None else first
        la = default_last if last is None else last
        return lambda s: keep_ends_significant(s, f, la, char)

    return build


_PHONE_PREFIX = re.compile(r"(?:\+86|0086)[ -]?")


def cn_phone(first: int | None, last: int | None, char: str) -> MaskFn:
    f = 3 if first is None else first
    la = 4 if last is None else last

    def mask(s: str) -> str:
        m = _PHONE_PREFIX.match(s)
        if m is None:
            return keep_ends_significant(s, f, la, char)
        return m.group() + keep_ends_significant(s[m.end() :], f, la, char)

    return mask


def email(first: int | None, last: int | None, char: str) -> MaskFn:
    f = 1 if first is None else first

    def mask(s: str) -> str:
        at = s.rfind("@")
        if at < 0:
            return keep_ends(s, f, 0, char)
        local = s[:at]
        return keep_ends(local, f, 0, char) + s[at:]

    return mask


# 复姓 (compound surnames), simplified and traditional forms.
_COMPOUND_TEXT = """
欧阳 太史 端木 上官 司马 东方 独孤 南宫 万俟 闻人 夏侯 诸葛 尉迟 公羊 赫连 澹台 皇甫
宗政 濮阳 公冶 太叔 申屠 公孙 慕容 仲孙 钟离 长孙 宇文 司徒 鲜于 司空 闾丘 子车 亓官
司寇 巫马 公西 颛孙 壤驷 公良 漆雕 乐正 宰父 谷梁 拓跋 夹谷 轩辕 令狐 段干 百里 呼延
东郭 南门 羊舌 微生 公户 公玉 公仪 梁丘 公仲 公上 公门 公山 公坚 左丘 公伯 西门 公祖
第五 公乘 贯丘 公皙 南荣 东里 东宫 仲长 子书 子桑 即墨 达奚 褚师 歐陽 司馬 諸葛 東方
獨孤 南宮 聞人 尉遲 皇甫 濮陽 鍾離 長孫 鮮于 閭丘 顓孫 壤駟 樂正 穀梁 軒轅 令狐 呼延
東郭 西門 東里
"""
COMPOUND_SURNAMES = frozenset(_COMPOUND_TEXT.split())
_NAME_SEPARATORS = frozenset(" ·•・.-")


def _is_cjk(c: str) -> bool:
    return "\u3400" <= c <= "\u9fff" or "\U00020000" <= c <= "\U0003134f"


_NAME_SEP_RE = re.compile("[ ·•・.-]")


def cn_name(first: int | None, last: int | None, char: str) -> MaskFn:
    def mask(s: str) -> str:
        if not s:
            return s
        if _is_cjk(s[0]) or any(_is_cjk(c) for c in s):
            surname = 2 if len(s) >= 3 and s[:2] in COMPOUND_SURNAMES else 1
            rest = s[surname:]
            if _NAME_SEP_RE.search(rest) is None:
                return s[:surname] + char * len(rest)
            return s[:surname] + "".join(c if c in _NAME_SEPARATORS else char for c in rest)
        # Latin script: keep the initial of each word ("John Smith" -> "J*** S****").
        out = []
        prev_sep = True
        for c in s:
            if c in _NAME_SEPARATORS:
                out.append(c)
                prev_sep = True
            else:
                out.append(c if prev_sep else char)
                prev_sep = False
        return "".join(out)

    return mask


# Administrative units, recognised by suffix at the start of the address. Names
# may not contain digits, blanks or street-level characters (路, 号, 镇 ...).
_UNIT = r"[^\s\d0-9０-９省市区县旗镇乡村路街道巷号弄栋楼室单元幢座层#,，]"
_ADMIN = re.compile(
    rf"(?P<prov>{_UNIT}{{2,8}}?(?:省|自治区|特别行政区)|北京市|天津市|上海市|重庆市)?"
    rf"(?P<city>{_UNIT}{{1,8}}?(?:市|自治州|地区|盟))?"
    rf"(?P<dist>{_UNIT}{{1,8}}?(?:区|县|市|旗))?"
)
# A "district" ending like this is a housing estate, campus or park, not a district.
_NOT_DISTRICT = ("小区", "社区", "园区", "校区", "景区", "厂区", "营区", "街区", "片区", "新村")


def address(first: int | None, last: int | None, char: str) -> MaskFn:
    def mask(s: str) -> str:
        m = _ADMIN.match(s)
        end = 0
        if m is not None:
            end = m.end()
            dist = m.group("dist")
            if dist is not None and dist.endswith(_NOT_DISTRICT):
                end = m.start("dist")
        return s[:end] + char * (len(s) - end)

    return mask


@dataclass(frozen=True, slots=True)
class Preset:
    """A mask preset: its builder and which ``keep_*`` overrides it accepts."""

    build: Callable[[int | None, int | None, str], MaskFn]
    overrides: frozenset[str]


PRESETS: dict[str, Preset] = {
    "cn_id": Preset(cn_id, frozenset({"keep_first", "keep_last"})),
    "cn_phone": Preset(cn_phone, frozenset({"keep_first", "keep_last"})),
    "bank_card": Preset(_fixed_ends(6, 4), frozenset({"keep_first", "keep_last"})),
    "email": Preset(email, frozenset({"keep_first"})),
    "cn_name": Preset(cn_name, frozenset()),
    "address": Preset(address, frozenset()),
}


def generic(first: int | None, last: int | None, char: str) -> MaskFn:
    f = 0 if first is None else first
    la = 0 if last is None else last
    return lambda s: keep_ends(s, f, la, char)
