"""Errors raised by the wire format.

ProtocolError
 ├── DecodeError              bytes that are not a well-formed message
 │    ├── UnsupportedVersionError   a magic/version prefix we do not speak
 │    ├── TruncatedError            the message ends before its fields do
 │    └── OversizedError            a message or field beyond its bound
 ├── InvalidFieldError        a value outside its domain (meter_id too long, u64 overflow)
 └── BadSignatureError        the signature does not verify against the key
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class: every failure of this package is one of these, never a foreign exception."""

    reason = "protocol_error"


class DecodeError(ProtocolError):
    reason = "malformed"


class UnsupportedVersionError(DecodeError):
    reason = "unsupported_version"


class TruncatedError(DecodeError):
    reason = "truncated"


class OversizedError(DecodeError):
    reason = "oversized"


class InvalidFieldError(ProtocolError):
    reason = "invalid_field"


class BadSignatureError(ProtocolError):
    reason = "bad_signature"
