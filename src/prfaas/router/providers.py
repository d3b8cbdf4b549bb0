"""The live router's choice among several prefill providers (prfaas clusters): the offers that
`prfaas.policy.providers.choose_provider` compares, built from the monitor's views and the
topology.

For a long request that the route rule would offload to one or more providers, each such
provider becomes a `ProviderOffer`: its price per GPU-hour (`[[clusters]] price_per_gpu_hour`),
the GPUs, the prefill curve (`topology.derived.prefill_curve_of`) and the queued prefill
seconds of the instance the request would run on there (its `ClusterView` entry), and its link:
the wire rate, path (RTT, loss, payload efficiency) and price per GB of the provider's link
(`Topology.link_of`), and the backlog's drain time from the monitor's `LinkView`. The PD
cluster's prefill is the `LocalOption`, priced and timed the same way on its chosen prefill
instance (the decode instance when the PD cluster has no prefill instance: it prefills
colocated, with no prefill queue).

The choice runs in the model's units, as the controller does: the queues, drain times and RTT the
router measures in wall seconds are divided by `time_scale`, the wire rate becomes real bytes per
modelled second (`ModelConfig.model_bytes_per_s`), and KV sizes are the model's real bytes, so
that costs are those of the deployment an emulation stands for. `[policy] ttft_target_s` is the
deployment's own (wall) seconds, converted the same way; with `time_scale` 1 (real engines)
nothing changes.
"""

from __future__ import annotations

from prfaas.policy import LinkView
from prfaas.policy.providers import LocalOption, ProviderChoice, ProviderOffer, choose_provider
from prfaas.policy.throughput import LatencyCurve, SizeCurve
from prfaas.topology import ClusterConfig, InstanceConfig, Topology
from prfaas.topology.derived import kv_bytes_curve, model_link_path, prefill_curve_of


class ProviderQuoter:
    """Builds the offers of one request and asks the policy which provider (or local) wins."""

    def __init__(self, topology: Topology) -> None:
        target_s = topology.policy.ttft_target_s
        if target_s is None:
            raise ValueError("several providers need [policy] ttft_target_s")
        self.topology = topology
        self.ttft_target_s = topology.model.model_seconds(target_s)  # in the model's seconds
        self.kv_bytes: SizeCurve = kv_bytes_curve(topology)
        self._curves: dict[tuple[str, int], LatencyCurve] = {}

    def _curve(self, instance: InstanceConfig) -> LatencyCurve:
        key = (instance.hardware, instance.num_gpus)
        if key not in self._curves:
            self._curves[key] = prefill_curve_of(self.topology, *key)
        return self._curves[key]

    def offer(
        self, provider: ClusterConfig, instance: InstanceConfig, queue_s: float, link: LinkView
    ) -> ProviderOffer:
        """`provider` for a request that would prefill on `instance`, `queue_s` wall seconds of
        prefill queued there, over the link as `link` sees it."""
        model = self.topology.model
        price = provider.price_per_gpu_hour
        assert price is not None  # the topology's checks require it with several providers
        return ProviderOffer(
            name=provider.name,
            price_per_gpu_hour=price,
            gpus_per_instance=instance.num_gpus,
            t_prefill_s=self._curve(instance),
            queue_s=model.model_seconds(queue_s),
            # the wire's rate: the offer's path takes the payload efficiency and loss off it
            link_bytes_per_s=model.model_bytes_per_s(
                self.topology.link_of(provider.name).bytes_per_s
            ),
            path=model_link_path(self.topology, provider.name),
            price_per_gb=self.topology.link_of(provider.name).price_per_gb or 0.0,
            link_backlog_s=model.model_seconds(link.drain_s()),
        )

    def local(self, pd: ClusterConfig, instance: InstanceConfig, queue_s: float) -> LocalOption:
        """The PD cluster's prefill on `instance`, `queue_s` wall seconds queued there."""
        price = pd.price_per_gpu_hour
        assert price is not None
        return LocalOption(
            price_per_gpu_hour=price,
            gpus_per_instance=instance.num_gpus,
            t_prefill_s=self._curve(instance),
            queue_s=self.topology.model.model_seconds(queue_s),
        )

    def prefill_wall_s(self, instance: InstanceConfig, num_tokens: int) -> float:
        """Predicted wall seconds of prefilling `num_tokens` on `instance` (its curve, scaled)."""
        return self.topology.model.wall_seconds(self._curve(instance)(num_tokens))

    def choose(
        self, offers: list[ProviderOffer], local: LocalOption, num_tokens: int
    ) -> ProviderChoice:
        """The cheapest offer meeting the TTFT target for `num_tokens` computed tokens whose KV
        crosses the link, else local (`choose_provider`)."""
        kv_bytes = self.kv_bytes(num_tokens)
        return choose_provider(offers, local, num_tokens, kv_bytes, self.ttft_target_s)
