"""KV transport: sans-IO wire format and transfer state machine, plus the asyncio TCP adapter."""
