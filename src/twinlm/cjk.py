"""The Unicode blocks of Chinese and Japanese text, named once: fragments of regex character classes.

Modules combine them into the set they need (BERT's ideographs, ideographs plus punctuation, ...), so "what is a
Chinese character" has one definition.
"""

IDEOGRAPHS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # CJK Unified Ideographs, Extension A, Compatibility
# The supplementary-plane ideograph blocks BERT's _is_chinese_char isolates (Extensions B-E, Compatibility Supplement).
IDEOGRAPHS_SUPPLEMENTARY = "\U00020000-\U0002a6df\U0002a700-\U0002ceaf\U0002f800-\U0002fa1f"
ALL_SUPPLEMENTARY = "\U00020000-\U0002fa1f"  # the same planes, every block in them (Extension F included)
KANA = "\u3040-\u30ff"  # Hiragana and Katakana
CJK_PUNCTUATION = "\u3000-\u303f"  # CJK Symbols and Punctuation: 。，、「」 and the ideographic space
FULL_WIDTH = "\uff00-\uffef"  # Halfwidth and Fullwidth Forms: ！？（） and full-width letters
