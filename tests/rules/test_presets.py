"""Mask presets: exact outputs for the values Chinese banks handle."""

from __future__ import annotations

import pytest

from gateway.rules.presets import PRESETS, generic, keep_ends, keep_ends_significant


def preset(name: str, first: int | None = None, last: int | None = None, char: str = "*") -> str:
    return name  # readability helper for parametrize ids


@pytest.mark.parametrize(
    ("name", "value", "masked"),
    [
        ("cn_id", "11010119900307123X", "110101********123X"),
        ("cn_id", "440305199205146670", "440305********6670"),
        ("cn_id", "110101900307123", "110101******123"),  # 15-digit first generation
        ("cn_id", "110101 19900307 123X", "110101 ******** 123X"),
        ("cn_id", "E1234567", "********"),  # too short to keep anything
        ("cn_phone", "13812345678", "138****5678"),
        ("cn_phone", "+86 138-1234-5678", "+86 138-****-5678"),
        ("cn_phone", "008613812345678", "0086138****5678"),
        ("cn_phone", "010-12345678", "010-****5678"),
        ("cn_phone", "1234567", "*******"),
        ("bank_card", "6222021234567890123", "622202*********0123"),
        ("bank_card", "6222 0212 3456 7890", "6222 02** **** 7890"),
        ("email", "zhangsan@example.com", "z*******@example.com"),
        ("email", "a@b.cn", "*@b.cn"),
        ("email", "first.last@x@corp.cn", "f***********@corp.cn"),
        ("email", "no-at-sign", "n*********"),
        ("cn_name", "张三", "张*"),
        ("cn_name", "王小明", "王**"),
        ("cn_name", "欧阳娜娜", "欧阳**"),
        ("cn_name", "司马懿", "司马*"),
        ("cn_name", "司马", "司*"),  # two characters: surname 司, given name 马
        ("cn_name", "阿卜杜拉·艾力", "阿***·**"),
        ("cn_name", "John Smith", "J*** S****"),
        ("cn_name", "", ""),
        ("address", "广东省深圳市南山区科技园科苑路15号", "广东省深圳市南山区*********"),
        ("address", "北京市朝阳区建国路88号", "北京市朝阳区******"),
        (
            "address",
            "新疆维吾尔自治区乌鲁木齐市天山区解放南路1号",
            "新疆维吾尔自治区乌鲁木齐市天山区******",
        ),
        ("address", "上海市浦东新区张江路", "上海市浦东新区***"),
        ("address", "广东省东莞市长安镇", "广东省东莞市***"),
        ("address", "东莞市锦厦小区5栋", "东莞市******"),
        ("address", "Room 5, Nanjing Rd", "******************"),
    ],
)
def test_preset(name: str, value: str, masked: str) -> None:
    assert PRESETS[name].build(None, None, "*")(value) == masked


def test_presets_count_characters_not_bytes() -> None:
    assert PRESETS["cn_name"].build(None, None, "*")("诸葛孔明") == "诸葛**"
    assert generic(1, 1, "*")("中文字符串") == "中***串"
    assert generic(0, 0, "＊")("𝄞𝄞") == "＊＊"


def test_overrides() -> None:
    assert PRESETS["cn_id"].build(None, 2, "#")("11010119900307123X") == "110101##########3X"
    assert PRESETS["cn_phone"].build(0, 4, "*")("13812345678") == "*******5678"
    assert PRESETS["email"].build(2, None, "*")("zhangsan@example.com") == "zh******@example.com"


def test_keep_ends_masks_everything_when_too_short() -> None:
    assert keep_ends("12345", 3, 4, "*") == "*****"
    assert keep_ends("1234567", 3, 4, "*") == "*******"
    assert keep_ends("12345678", 3, 4, "*") == "123*5678"
    assert keep_ends("abc", 0, 0, "*") == "***"
    assert keep_ends_significant("12 34", 1, 1, "*") == "1* *4"
