"""The topology file's `[model]` table, read on its own (pass 1 of `load.py`): the served model
(a tiny preset or a checkpoint directory), dtype, seed, the emulated preset, time and payload
scales, and the per-hardware prefill latency curves.
"""

from __future__ import annotations

from prfaas.errors import UserError
from prfaas.topology.config import (
    DTYPES,
    ModelConfig,
)
from prfaas.topology.keys import (
    Table,
    resolve_path,
    show_value,
)

_MODEL = ModelConfig(name="")


def read_model(table: Table | None) -> ModelConfig:
    if table is None:
        return ModelConfig(name="")
    return ModelConfig(
        name=_model_name(table),
        dtype=table.choice("dtype", DTYPES, _MODEL.dtype),
        seed=table.integer("seed", _MODEL.seed, minimum=0),
        emulate=_emulated_model(table),
        time_scale=table.non_negative("time_scale", _MODEL.time_scale),
        payload_scale=_payload_scale(table),
        prefill_latency=_prefill_latency(table),
    )


def _prefill_latency(table: Table) -> tuple[tuple[str, str], ...]:
    """`prefill_latency`: an inline table of hardware preset -> latency spec of one prefill
    instance ("quadratic:a,b,c" or "profile:NAME|PATH"), as sorted (hardware, spec) pairs with
    the hardware in lower case and a profile file's path made absolute."""
    value = table.raw("prefill_latency", (dict,), 'a table of hardware = "latency spec"')
    pairs: dict[str, str] = {}
    for name, spec in (value or {}).items():
        key = f"prefill_latency.{name}"
        hardware = _known_hardware(table, key, name)
        checked = _prefill_latency_spec(table, key, spec)
        if hardware is None or checked is None:
            continue
        if hardware in pairs:
            table.fail(key, f"hardware {hardware!r} has a latency already")
            continue
        pairs[hardware] = checked
    return tuple(sorted(pairs.items()))


def _known_hardware(table: Table, key: str, name: str) -> str | None:
    """A hardware preset name in lower case (how instances name theirs), or None (reported)."""
    from prfaas.perf import get_hardware, list_hardware

    try:
        get_hardware(name)
    except UserError:
        known = ", ".join(h.lower() for h in list_hardware())
        table.fail(key, f"unknown hardware preset {name!r}; known: {known}")
        return None
    return name.strip().lower()


def _prefill_latency_spec(table: Table, key: str, spec: object) -> str | None:
    """A latency spec that resolves to a curve, with a relative profile path made absolute
    against the topology's directory; None (reported) otherwise."""
    from prfaas.perf.profile import PROFILE_PRESETS
    from prfaas.topology.derived import resolve_prefill_latency

    if not isinstance(spec, str):
        table.fail(key, f'must be a string ("quadratic:a,b,c" or "profile:NAME|PATH"), got '
                   f"{show_value(spec)}")  # fmt: skip
        return None
    kind, _, reference = spec.strip().partition(":")
    if kind == "profile" and reference and reference.strip().lower() not in PROFILE_PRESETS:
        spec = f"profile:{resolve_path(reference, table.base_dir)}"
    try:
        resolve_prefill_latency(spec)
    except UserError as exc:
        table.fail(key, str(exc))
        return None
    return spec.strip()


def _payload_scale(table: Table) -> float:
    """A fraction in (0, 1]: emulated payloads are shrunk, never inflated."""
    scale = table.positive("payload_scale", _MODEL.payload_scale)
    if scale > 1:
        table.fail("payload_scale", f"must be in (0, 1], got {scale:g}")
        return _MODEL.payload_scale
    return scale


def _model_name(table: Table) -> str:
    """A tiny preset name as is (presets win over directories of the same name), or the
    absolute path of a checkpoint directory holding a config.json."""
    from prfaas.engine.presets import PRESETS

    name = table.string("name", required=True)
    if not name or name in PRESETS:
        return name
    directory = resolve_path(name, table.base_dir)
    if not (directory / "config.json").is_file():
        table.fail(
            "name",
            f"missing checkpoint: {name!r} is neither a tiny preset ({', '.join(PRESETS)}) nor a "
            f"directory with a config.json ({directory})",
        )
        return name
    return str(directory)


def _emulated_model(table: Table) -> str:
    from prfaas.models import list_presets
    from prfaas.models.presets import preset_file_name

    name = table.string("emulate", _MODEL.emulate)
    if preset_file_name(name) is None:
        table.fail("emulate", f"unknown model preset {name!r}; known: {', '.join(list_presets())}")
    return name
