"""Version of the engine's code (rules, table transcription, OCR handling).

Recorded next to the profile fingerprint in every result: the profile pins the settings, this
pins the code that interpreted them. Bump it whenever output bytes can change for the same
input and profile.
"""

from __future__ import annotations

ENGINE_VERSION = "1.0.0"
