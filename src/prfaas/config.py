"""Component configs: one frozen dataclass per component, cheap checks in __post_init__ only.

Layer 0: standard library only. Resolution that touches disk or network lives with the component.
"""

from __future__ import annotations
