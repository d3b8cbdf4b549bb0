"""The shipped `PrfaasConnector` with one test-only change: a transfer whose id starts with
`corrupt-` has its gathered blocks negated before they are sent (so the CRC covers the corrupted
bytes and the receiver accepts them). Every other transfer goes through the shipped code
unchanged. Loaded by the tests' producer with `kv_connector_module_path = "corrupting_connector"`.
"""

from __future__ import annotations

import torch

from prfaas.vllm.blocks import CacheLayer
from prfaas.vllm.connector import PrfaasConnector
from prfaas.vllm.worker import ProducerWorker, SendJob

CORRUPT_PREFIX = "corrupt-"


class CorruptingProducer(ProducerWorker):
    def gather(self, layer: CacheLayer, job: SendJob) -> tuple[list[int], torch.Tensor]:
        positions, blocks = super().gather(layer, job)
        if not job.transfer_id.startswith(CORRUPT_PREFIX):
            return positions, blocks
        if blocks.is_floating_point():
            return positions, -blocks - 1
        return positions, torch.bitwise_not(blocks)  # raw state pages: flip every bit


class CorruptingConnector(PrfaasConnector):
    producer_class = CorruptingProducer
