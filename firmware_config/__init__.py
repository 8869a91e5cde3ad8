"""firmware_config: meter profiles as data (profiles/<brand>-<model>.toml), their typed schema and the loader.

Pure: no I/O beyond reading the profile files. Field reference and the table of shipped profiles:
firmware_config/README.md. Raspberry Pi serial setup: firmware_config/pi/. Example configs: *.example.toml.
"""

from firmware_config.loader import PROFILES_DIR, get_profile, load_all, load_profile, parse_profile
from firmware_config.schema import (
    ENERGY_MEASUREMENTS,
    MEASUREMENTS,
    Fact,
    IdentifyRule,
    Profile,
    ProfileError,
    Rated,
    ReadPolicy,
    Register,
    SerialDefaults,
    SerialNumberRule,
    SunSpec,
    sentinel_raw,
    validate_profile,
)

__all__ = [
    "ENERGY_MEASUREMENTS",
    "MEASUREMENTS",
    "PROFILES_DIR",
    "Fact",
    "IdentifyRule",
    "Profile",
    "ProfileError",
    "Rated",
    "ReadPolicy",
    "Register",
    "SerialDefaults",
    "SerialNumberRule",
    "SunSpec",
    "get_profile",
    "load_all",
    "load_profile",
    "parse_profile",
    "sentinel_raw",
    "validate_profile",
]
