"""VPSWeb's workflow input: its own language names only."""

from enum import Enum
from typing import Any

from pydantic import BaseModel


class Language(str, Enum):  # noqa: UP042 - as VPSWeb declares it
    ENGLISH = "English"
    CHINESE = "Chinese"
    POLISH = "Polish"


class TranslationInput(BaseModel):
    original_poem: str
    source_lang: Language
    target_lang: Language
    metadata: dict[str, Any] | None = None
