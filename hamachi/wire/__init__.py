"""Pure codecs: bytes <-> frozen dataclasses. No I/O, no clocks."""
