"""`PrfaasConnector`: a vLLM v1 KV connector (with `SupportsHMA`) that moves a request's KV and
recurrent state from a prefill instance to a decode instance over the PrfaaS transport.

Loaded by vLLM through its KV-transfer config (docs/vllm.md has the command lines):

    {"kv_connector": "PrfaasConnector", "kv_connector_module_path": "prfaas.vllm.connector",
     "kv_role": "kv_producer" | "kv_consumer",
     "kv_connector_extra_config": {"token": "...", "kv_address": "0.0.0.0:15000", ...}}

`kv_connector_extra_config` keys (docs/vllm.md has the table): `token` (the transport's shared
secret; or the environment's PRFAAS_KV_TOKEN), `kv_address`, `load_timeout_s`,
`unclaimed_timeout_s` and `transfer_log`. vLLM makes one connector object in the scheduler and
one in each worker; this class holds the scheduler's bookkeeping here and the worker's transport
in `prfaas.vllm.worker`. The `kv_transfer_params` it reads and returns are `prfaas.vllm.params`'.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
    KVConnectorTransferResults,
    SupportsHMA,
)
from vllm.distributed.kv_transfer.kv_connector.v1.metrics import KVConnectorStats
from vllm.v1.kv_cache_interface import MambaSpec, SlidingWindowSpec

from prfaas.transport import TransportConfig
from prfaas.transport.sender import parse_address
from prfaas.types import LayerKind
from prfaas.vllm.blocks import CacheLayer, layer_number
from prfaas.vllm.identity import model_fingerprint, unsupported_parallelism
from prfaas.vllm.params import (
    ConsumerParams,
    ProducerParams,
    TransferParamsError,
    consumer_params,
    producer_params,
)
from prfaas.vllm.worker import (
    ConsumerWorker,
    LoadJob,
    ModelIdentity,
    ProducerWorker,
    SendJob,
    TransferCounters,
    TransferLog,
)

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.outputs import KVConnectorOutput
    from vllm.v1.request import Request

log = logging.getLogger(__name__)
DEFAULT_LOAD_TIMEOUT_S = 60.0
DEFAULT_UNCLAIMED_TIMEOUT_S = 120.0
TOKEN_ENV = "PRFAAS_KV_TOKEN"
P = TypeVar("P", ProducerParams, ConsumerParams)


@dataclass
class PrfaasConnectorMetadata(KVConnectorMetadata):  # type: ignore[misc]
    """Scheduler to worker, once per step: transfers to start sending, loads to wait for."""

    sends: list[SendJob] = field(default_factory=list)
    loads: list[LoadJob] = field(default_factory=list)


@dataclass
class PrfaasConnectorStats(KVConnectorStats):  # type: ignore[misc]
    """Counts since the last report (`num_sent`, `num_loaded`, `num_load_failures`, bytes)."""

    def reset(self) -> None:
        self.data: dict[str, int] = {}

    def aggregate(self, other: KVConnectorStats) -> KVConnectorStats:
        for name, value in other.data.items():
            self.data[name] = self.data.get(name, 0) + value
        return self

    def reduce(self) -> dict[str, int | float]:
        return dict(self.data)

    def is_empty(self) -> bool:
        return not any(self.data.values())


class PrfaasConnector(KVConnectorBase_V1, SupportsHMA):  # type: ignore[misc]
    """Producer on prefill instances, consumer on decode instances (kv_role)."""

    producer_class: type[ProducerWorker] = ProducerWorker  # the worker side of kv_producer

    def __init__(
        self, vllm_config: VllmConfig, role: KVConnectorRole, kv_cache_config: KVCacheConfig
    ) -> None:
        super().__init__(vllm_config, role, kv_cache_config)
        parallel = vllm_config.parallel_config
        refusal = unsupported_parallelism(
            int(parallel.tensor_parallel_size), int(parallel.pipeline_parallel_size)
        )
        if refusal is not None:
            raise ValueError(refusal)
        transfer = self._kv_transfer_config
        self._extra: dict[str, Any] = dict(transfer.kv_connector_extra_config or {})
        self._is_producer = bool(transfer.is_kv_producer)
        self._is_consumer = bool(transfer.is_kv_consumer)
        self._num_groups = len(kv_cache_config.kv_cache_groups)
        # scheduler side
        self._send_candidates: dict[str, tuple[Request, ProducerParams]] = {}
        self._sending: dict[str, ProducerParams] = {}  # send job issued, request not finished
        self._awaiting_ack: set[str] = set()  # finished, blocks held until the ACK
        self._new_sends: list[SendJob] = []
        self._new_loads: list[LoadJob] = []
        self._load_tried: set[str] = set()
        # worker side
        self._counters = TransferCounters()
        self._producer: ProducerWorker | None = None
        self._consumer: ConsumerWorker | None = None

    # ---- worker side ------------------------------------------------------------------------

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        identity = self._identity(kv_caches)
        config = TransportConfig(token=self._token(), deadline_s=self._load_timeout_s())
        transfer_log = TransferLog(self._extra.get("transfer_log"))
        if self._is_producer:
            self._producer = self.producer_class(
                identity, kv_caches, config, self._counters, transfer_log
            )
        if self._is_consumer:
            self._consumer = ConsumerWorker(
                identity,
                kv_caches,
                config,
                parse_address(str(self._extra.get("kv_address", "0.0.0.0:15000"))),
                self._load_timeout_s(),
                self._counters,
                transfer_log,
                float(self._extra.get("unclaimed_timeout_s", DEFAULT_UNCLAIMED_TIMEOUT_S)),
            )

    def start_load_kv(self, forward_context: ForwardContext, **kwargs: Any) -> None:
        meta = self._metadata()
        if self._producer is not None:
            self._producer.start(meta.sends)
        if self._consumer is not None:
            self._consumer.start(meta.loads)

    def _metadata(self) -> PrfaasConnectorMetadata:
        meta = self._get_connector_metadata()
        assert isinstance(meta, PrfaasConnectorMetadata)
        return meta

    def wait_for_layer_load(self, layer_name: str) -> None:
        return  # loads complete between steps (asynchronously), never inside a forward

    def save_kv_layer(
        self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: Any, **kwargs: Any
    ) -> None:
        if self._producer is not None:
            self._producer.start(self._metadata().sends)  # before the forward's first layer
            self._producer.save_layer(layer_name)

    def wait_for_save(self) -> None:
        if self._producer is not None and self.has_connector_metadata():
            self._producer.start(self._metadata().sends)
            self._producer.finish_step()

    def get_transfer_results(self, finished_req_ids: set[str]) -> KVConnectorTransferResults:
        results = KVConnectorTransferResults()
        if self._producer is not None:
            results.finished_sending = self._producer.finished_sending(finished_req_ids)
        if self._consumer is not None:
            results.finished_recving, results.failed_recving = self._consumer.poll()
        return results

    def get_kv_connector_stats(self) -> KVConnectorStats | None:
        counts = self._counters.take()
        return PrfaasConnectorStats(data=counts) if counts else None

    @classmethod
    def build_kv_connector_stats(
        cls, data: dict[str, Any] | None = None
    ) -> KVConnectorStats | None:
        return PrfaasConnectorStats(data=dict(data or {}))

    def shutdown(self) -> None:
        for worker in (self._producer, self._consumer):
            if worker is not None:
                worker.close()

    def _identity(self, kv_caches: dict[str, torch.Tensor]) -> ModelIdentity:
        model_config = self._vllm_config.model_config
        layers: dict[str, CacheLayer] = {}
        for group_index, group in enumerate(self._kv_cache_config.kv_cache_groups):
            spec = group.kv_cache_spec
            for name in group.layer_names:
                cache = kv_caches[name]
                layers[name] = CacheLayer(
                    name=name,
                    index=layer_number(name, len(layers)),
                    group=group_index,
                    kind=_layer_kind(spec),
                    block_size=int(spec.block_size),
                    window=int(getattr(spec, "sliding_window", 0) or 0),
                    block_shape=tuple(cache.shape[1:]),
                    dtype=str(cache.dtype).removeprefix("torch."),
                )
        num_blocks = self._kv_cache_config.num_blocks
        for name, cache in kv_caches.items():
            if cache.shape[0] != num_blocks:
                raise ValueError(
                    f"PrfaasConnector: layer {name}'s cache {tuple(cache.shape)} does not have "
                    f"its {num_blocks} blocks first; this layout is not supported"
                )
        fingerprint = model_fingerprint(model_config.model, model_config.revision)
        arch = str(getattr(model_config.hf_config, "model_type", ""))
        return ModelIdentity(arch, fingerprint, layers)

    def _token(self) -> str:
        token = self._extra.get("token") or os.environ.get(TOKEN_ENV)
        if not token:
            raise ValueError(
                f"PrfaasConnector needs the transport's shared secret: "
                f"kv_connector_extra_config.token or ${TOKEN_ENV}"
            )
        return str(token)

    def _load_timeout_s(self) -> float:
        return float(self._extra.get("load_timeout_s", DEFAULT_LOAD_TIMEOUT_S))

    # ---- scheduler side ---------------------------------------------------------------------

    def get_num_new_matched_tokens(
        self, request: Request, num_computed_tokens: int
    ) -> tuple[int | None, bool]:
        if not self._is_consumer or request.request_id in self._load_tried:
            return 0, False
        params = _consumer_params_of(request)
        if params is None:
            return 0, False
        mismatch = params.prompt_mismatch(list(request.prompt_token_ids or []))
        if mismatch is not None:
            log.warning("req_id=%s: not loading transfer %s: %s", request.request_id,
                        params.transfer_id, mismatch)  # fmt: skip
            return 0, False
        num_external = params.num_prompt_tokens - num_computed_tokens
        return (num_external, True) if num_external > 0 else (0, False)

    def update_state_after_alloc(
        self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int
    ) -> None:
        if self._is_producer:
            params = _producer_params_of(request)
            if params is not None:
                self._send_candidates[request.request_id] = (request, params)
        if self._is_consumer and num_external_tokens > 0:
            consumer = _consumer_params_of(request)
            assert consumer is not None  # get_num_new_matched_tokens found them
            self._load_tried.add(request.request_id)
            self._new_loads.append(
                LoadJob(
                    req_id=request.request_id,
                    transfer_id=consumer.transfer_id,
                    num_prompt_tokens=consumer.num_prompt_tokens,
                    num_hit_tokens=consumer.num_prompt_tokens - num_external_tokens,
                    block_ids=blocks.get_block_ids(),
                )
            )

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KVConnectorMetadata:
        scheduled = scheduler_output.num_scheduled_tokens
        for req_id, (request, params) in list(self._send_candidates.items()):
            num_tokens = scheduled.get(req_id, 0)
            if num_tokens and request.num_computed_tokens + num_tokens >= request.num_prompt_tokens:
                del self._send_candidates[req_id]
                self._sending[req_id] = params
                self._new_sends.append(self._send_job(request, params))
        meta = PrfaasConnectorMetadata(self._new_sends, self._new_loads)
        self._new_sends, self._new_loads = [], []
        return meta

    def _send_job(self, request: Request, params: ProducerParams) -> SendJob:
        assert self._kv_cache_manager is not None
        return SendJob(
            req_id=request.request_id,
            transfer_id=params.transfer_id,
            dest=params.remote_kv_address,
            num_prompt_tokens=request.num_prompt_tokens,
            block_ids=self._kv_cache_manager.get_block_ids(request.request_id),
        )

    def request_finished(
        self, request: Request, block_ids: list[int]
    ) -> tuple[bool, dict[str, Any] | None]:
        return self.request_finished_all_groups(request, (block_ids,))

    def request_finished_all_groups(
        self, request: Request, block_ids: tuple[list[int], ...]
    ) -> tuple[bool, dict[str, Any] | None]:
        req_id = request.request_id
        self._send_candidates.pop(req_id, None)
        self._load_tried.discard(req_id)
        params = self._sending.pop(req_id, None)
        if params is None:
            return False, None
        self._awaiting_ack.add(req_id)
        first = request.output_token_ids[0] if request.output_token_ids else None
        if first is None:
            return True, None
        returned = ConsumerParams(params.transfer_id, request.num_prompt_tokens, int(first))
        return True, returned.to_dict()

    def update_connector_output(self, connector_output: KVConnectorOutput) -> None:
        for req_id in connector_output.finished_sending or ():
            self._awaiting_ack.discard(req_id)

    def has_pending_push_work(self) -> bool:
        return bool(self._awaiting_ack or self._sending)

    def get_loaded_kv_cache_group_ids(self, request: Request) -> tuple[int, ...]:
        return tuple(range(self._num_groups))  # a transfer restores every group


def _layer_kind(spec: Any) -> LayerKind:
    if isinstance(spec, MambaSpec):
        backend = str(getattr(spec.mamba_type, "name", spec.mamba_type)).lower()
        return LayerKind.MAMBA if "mamba" in backend else LayerKind.LINEAR_ATTENTION
    if isinstance(spec, SlidingWindowSpec):
        return LayerKind.SLIDING_WINDOW
    return LayerKind.FULL_ATTENTION


def _producer_params_of(request: Request) -> ProducerParams | None:
    return _params_of(request, producer_params, "sending")


def _consumer_params_of(request: Request) -> ConsumerParams | None:
    return _params_of(request, consumer_params, "loading")


def _params_of(
    request: Request, parse: Callable[[dict[str, Any] | None], P | None], action: str
) -> P | None:
    """The request's parsed kv_transfer_params; malformed ones are logged and ignored."""
    try:
        return parse(request.kv_transfer_params)
    except TransferParamsError as exc:
        log.error("req_id=%s: not %s its KV: %s", request.request_id, action, exc)
        return None
