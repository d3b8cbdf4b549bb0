"""PrfaaS: Prefill-as-a-Service for hybrid-attention models.

Long, uncached prefills run on a remote prefill cluster; the KV cache and recurrent state stream
over TCP to a local PD cluster that decodes. See docs/architecture.md for the map of the package.
"""

__version__ = "0.1.0"
