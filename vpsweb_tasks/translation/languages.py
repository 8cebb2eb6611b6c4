"""Language codes and names, normalised to the names VPSWeb uses ("English", "Chinese").

Chinese keeps its script: ``zh-Hans``, ``zh-CN``, ``zh-SG`` and plain ``zh`` are VPSWeb's
"Chinese" (simplified characters, as its UI maps Chinese to zh-CN), while ``zh-Hant``,
``zh-TW``, ``zh-HK`` and ``zh-MO`` are "Traditional Chinese", which is what the prompts
say. VPSWeb's own workflow knows "Chinese" only: :func:`vpsweb_language` gives the name it
accepts and :func:`script_of` the script to pass along.
"""

from __future__ import annotations

__all__ = [
    "LANGUAGES",
    "TRADITIONAL_CHINESE",
    "normalise_language",
    "script_of",
    "vpsweb_language",
]

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

#: Chinese in traditional characters (VPSWeb's "Chinese" is simplified).
TRADITIONAL_CHINESE = "Traditional Chinese"

#: Names beyond LANGUAGES' values (lower case) and the name each stands for.
_ALIASES = {
    "simplified chinese": "Chinese",
    "chinese (simplified)": "Chinese",
    "traditional chinese": TRADITIONAL_CHINESE,
    "chinese (traditional)": TRADITIONAL_CHINESE,
}
_BY_NAME = {name.lower(): name for name in LANGUAGES.values()} | _ALIASES
#: Subtags of a Chinese tag: its script, or regions whose script is traditional.
_SIMPLIFIED_SCRIPT = "hans"
_TRADITIONAL_SCRIPT = "hant"
_TRADITIONAL_REGIONS = frozenset({"tw", "hk", "mo"})
_SIMPLIFIED_REGIONS = frozenset({"cn", "sg", "my"})


def _chinese(subtags: list[str]) -> str | None:
    """The name of a ``zh`` tag's subtags (the script wins over the region), None if a
    subtag is unknown."""
    known = {_SIMPLIFIED_SCRIPT, _TRADITIONAL_SCRIPT} | _TRADITIONAL_REGIONS | _SIMPLIFIED_REGIONS
    if any(tag not in known for tag in subtags):
        return None
    if _SIMPLIFIED_SCRIPT in subtags:
        return "Chinese"
    if _TRADITIONAL_SCRIPT in subtags or _TRADITIONAL_REGIONS.intersection(subtags):
        return TRADITIONAL_CHINESE
    return "Chinese"


def normalise_language(value: str) -> str:
    """``"zh-Hans"`` -> ``"Chinese"``, ``"zh-TW"`` -> ``"Traditional Chinese"``, ``"en"`` ->
    ``"English"``, ``"polish"`` -> ``"Polish"``.

    Raises ``ValueError`` naming the accepted forms for anything else.
    """
    lowered = value.strip().lower().replace("_", "-")
    if lowered in _BY_NAME:
        return _BY_NAME[lowered]
    code, *subtags = lowered.split("-")
    if code == "zh":
        found = _chinese(subtags)
        if found is not None:
            return found
    elif code in LANGUAGES and (not subtags or (len(subtags) == 1 and len(subtags[0]) == 2)):
        return LANGUAGES[code]
    raise ValueError(
        f"unknown language {value!r}: use a code such as en, zh-Hans, zh-Hant, zh-CN, zh-TW,"
        f" pl, or a name such as English, Chinese, Traditional Chinese, Polish (supported:"
        f" {', '.join(sorted(LANGUAGES))})"
    )


def vpsweb_language(name: str) -> str:
    """The name VPSWeb's own models accept for a normalised name ("Traditional Chinese"
    is its "Chinese"; see :func:`script_of`)."""
    return "Chinese" if name == TRADITIONAL_CHINESE else name


def script_of(name: str) -> str | None:
    """The script a normalised name implies beyond VPSWeb's name: ``"traditional"`` for
    Traditional Chinese, ``"simplified"`` for Chinese, None for other languages."""
    if name == TRADITIONAL_CHINESE:
        return "traditional"
    if name == "Chinese":
        return "simplified"
    return None
