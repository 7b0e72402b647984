"""The policy: loading (YAML + JSON Schema, cached), profiles and their selection."""

from .load import load_policy, load_default  # noqa: F401
from .model import Policy, Profile  # noqa: F401
