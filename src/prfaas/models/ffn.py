"""MLP and MoE blocks of one layer: dense, routed-total and routed-active parameter counts.

Owns which layers are MoE (`first_k_dense_replace`, `moe_layer_freq`, `decoder_sparse_step`,
`mlp_only_layers`), the expert-count keys of the different families and shared experts.
"""

from __future__ import annotations

from dataclasses import dataclass

from prfaas.errors import UserError
from prfaas.models.config_access import Config, first_int, get_int


@dataclass(frozen=True, slots=True)
class Ffn:
    """Parameter counts of one layer's MLP / MoE block."""

    dense: int = 0  # always-active weights (dense MLP, shared experts, router)
    routed_total: int = 0  # all routed experts
    routed_active: int = 0  # routed experts one token uses

    @property
    def is_moe(self) -> bool:
        return self.routed_total > 0


def num_routed_experts(cfg: Config) -> int:
    return first_int(cfg, ("num_experts", "n_routed_experts", "num_local_experts"))


def experts_per_token(cfg: Config) -> int:
    return first_int(cfg, ("num_experts_per_tok", "num_experts_per_token", "experts_per_token"))


def _is_moe_layer(cfg: Config, index: int) -> bool:
    if not num_routed_experts(cfg) or index in (cfg.get("mlp_only_layers") or ()):
        return False
    if index < get_int(cfg, "first_k_dense_replace", 0):
        return False
    freq = cfg.get("moe_layer_freq")
    if isinstance(freq, list):
        return bool(freq[index])
    if isinstance(freq, int) and freq > 1:
        return index % freq == 0
    step = get_int(cfg, "decoder_sparse_step", 1)
    return (index + 1) % step == 0


def _shared_expert_inter(cfg: Config) -> int:
    explicit = first_int(
        cfg, ("shared_expert_intermediate_size", "moe_shared_expert_intermediate_size")
    )
    if explicit:
        return explicit
    num_shared = first_int(cfg, ("n_shared_experts", "num_shared_experts"))
    return num_shared * get_int(cfg, "moe_intermediate_size", 0)


def ffn_params(cfg: Config, index: int, *, moe: bool | None = None) -> Ffn:
    """Dense MLP or MoE of one layer. `moe` forces the choice (pattern-driven families)."""
    hidden = get_int(cfg, "hidden_size")
    mats = 2 if cfg.get("mlp_hidden_act") == "relu2" else 3  # relu2 MLPs have no gate matrix
    is_moe = _is_moe_layer(cfg, index) if moe is None else moe
    if not is_moe and cfg.get("intermediate_size") is None and cfg.get("total_params"):
        return Ffn()  # a config that states its parameter counts instead of its MLP shapes
    if not is_moe:
        return Ffn(dense=mats * hidden * get_int(cfg, "intermediate_size"))
    experts, top_k = num_routed_experts(cfg), experts_per_token(cfg)
    if not experts or not top_k:
        raise UserError("MoE config lacks the number of experts or experts per token")
    expert_inter = first_int(cfg, ("moe_intermediate_size", "intermediate_size"))
    latent = first_int(cfg, ("moe_latent_size", "routed_expert_hidden_size"))
    width = latent or hidden
    per_expert = mats * width * expert_inter
    dense = hidden * experts + mats * hidden * _shared_expert_inter(cfg)
    if latent:
        dense += 2 * hidden * latent  # projections into and out of the expert latent space
    return Ffn(dense=dense, routed_total=experts * per_expert, routed_active=top_k * per_expert)
