"""Language codes and names, normalised to the names VPSWeb uses ("English", "Chinese")."""

from __future__ import annotations

__all__ = ["LANGUAGES", "normalise_language"]

#: VPSWeb's language names, by ISO 639-1 code.
LANGUAGES: dict[str, str] = {
    "ar": "Arabic",
    "cs": "Czech",
    "da": "Danish",
    "de": "German",
    "el": "Greek",
    "en": "English",
    "es": "Spanish",
    "fi": "Finnish",
    "fr": "French",
    "he": "Hebrew",
    "hi": "Hindi",
    "hu": "Hungarian",
    "id": "Indonesian",
    "it": "Italian",
    "ja": "Japanese",
    "ko": "Korean",
    "nl": "Dutch",
    "no": "Norwegian",
    "pl": "Polish",
    "pt": "Portuguese",
    "ro": "Romanian",
    "ru": "Russian",
    "sv": "Swedish",
    "th": "Thai",
    "tr": "Turkish",
    "uk": "Ukrainian",
    "vi": "Vietnamese",
    "zh": "Chinese",
}

#: Region and script variants VPSWeb folds into one language (zh-CN, zh-Hans, zh-TW...).
_VARIANTS = {"zh": ("cn", "hans", "tw", "hant", "hk", "sg", "mo")}
_BY_NAME = {name.lower(): name for name in LANGUAGES.values()}


def normalise_language(value: str) -> str:
    """``"zh-Hans"`` -> ``"Chinese"``, ``"en"`` -> ``"English"``, ``"polish"`` -> ``"Polish"``.

    Raises ``ValueError`` naming the accepted forms for anything else.
    """
    cleaned = value.strip()
    lowered = cleaned.lower().replace("_", "-")
    if lowered in _BY_NAME:
        return _BY_NAME[lowered]
    code, _, variant = lowered.partition("-")
    if code in LANGUAGES and (
        not variant or variant in _VARIANTS.get(code, ()) or len(variant) == 2
    ):
        return LANGUAGES[code]
    raise ValueError(
        f"unknown language {value!r}: use a code such as en, zh-Hans, zh-CN, pl, or a name"
        f" such as English, Chinese, Polish (supported: {', '.join(sorted(LANGUAGES))})"
    )
