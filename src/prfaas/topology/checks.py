"""Pass 2 of reading a topology: cross-checks of the topology as a whole (unique names and
addresses, what each cluster holds, what the deployment and the `[controller]` need). Each
problem is added to the shared `Problems`, one line naming its key.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prfaas.topology.config import (
    ClusterConfig,
    ControllerSettings,
    InstanceConfig,
    PolicyConfig,
    RouterConfig,
)
from prfaas.topology.keys import Problems, parse_host_port
from prfaas.types import DeploymentKind

WILDCARD_HOSTS = ("0.0.0.0", "::")  # a bind address on every interface names no one machine


def check_topology(
    problems: Problems,
    router: RouterConfig,
    policy: PolicyConfig,
    controller: ControllerSettings,
    clusters: Sequence[ClusterConfig],
    *,
    has_prefix_cache: bool = False,
    is_auto_threshold: bool = False,
) -> None:
    """Every cross-check, in order; problems are added, not raised."""
    _check_names(problems, clusters)
    _check_addresses(problems, router, clusters)
    _check_clusters(problems, clusters)
    _check_links(problems, clusters)
    _check_providers(problems, policy, controller, clusters, is_auto_threshold)
    _check_deployment(problems, policy, clusters)
    _check_controller(problems, controller, policy, clusters)
    _check_vllm(problems, controller, clusters, has_prefix_cache)


def _instance_keys(clusters: Sequence[ClusterConfig]) -> Iterable[tuple[str, InstanceConfig]]:
    """(key path, instance) of every instance, e.g. ("clusters[1].instances[0]", ...)."""
    for ci, cluster in enumerate(clusters):
        for ii, instance in enumerate(cluster.instances):
            yield f"clusters[{ci}].instances[{ii}]", instance


def _report_duplicates(problems: Problems, items: Iterable[tuple[str, object]], what: str) -> None:
    """One problem per (key, value) whose value an earlier key already has."""
    first: dict[object, str] = {}
    for key, value in items:
        if value in first:
            problems.add(key, f"duplicate {what} (also at {first[value]})")
        else:
            first[value] = key


def _check_names(problems: Problems, clusters: Sequence[ClusterConfig]) -> None:
    cluster_names = ((f"clusters[{i}].name", c.name) for i, c in enumerate(clusters))
    _report_duplicates(problems, cluster_names, "cluster name")
    instance_names = ((f"{key}.name", i.name) for key, i in _instance_keys(clusters))
    _report_duplicates(problems, instance_names, "instance name")


def _endpoint(address: str) -> tuple[str, int]:
    """An address as compared for duplicates: host case-folded, port as a number."""
    host, port = parse_host_port(address)
    return host.lower(), port


def _check_addresses(
    problems: Problems, router: RouterConfig, clusters: Sequence[ClusterConfig]
) -> None:
    """Every HTTP and KV endpoint, the router's included, is distinct; so is every `kv_listen`
    bound on a named host (not its own instance's `kv`, which it may equal)."""
    endpoints = [("router.http", router.http)]
    for key, instance in _instance_keys(clusters):
        endpoints.append((f"{key}.http", instance.http))
        if instance.kv is not None:
            endpoints.append((f"{key}.kv", instance.kv))
        if instance.kv_listen is not None and _is_distinct_bind(instance):
            endpoints.append((f"{key}.kv_listen", instance.kv_listen))
    items = ((key, _endpoint(address)) for key, address in endpoints)
    _report_duplicates(problems, items, "address")


def _is_distinct_bind(instance: InstanceConfig) -> bool:
    """Whether the instance's `kv_listen` is an endpoint of its own for the duplicate check: set,
    not its `kv` again, and on a named host (a wildcard bind names no machine, so two of them,
    e.g. one per machine behind NAT, do not clash as far as the file can tell)."""
    listen = instance.kv_listen
    if listen is None or instance.kv is None:
        return False
    host, _ = _endpoint(listen)
    return _endpoint(listen) != _endpoint(instance.kv) and host not in WILDCARD_HOSTS


def _check_clusters(problems: Problems, clusters: Sequence[ClusterConfig]) -> None:
    """A PD cluster decodes, a PrfaaS cluster only prefills, and there is a PD cluster."""
    for ci, cluster in enumerate(clusters):
        if cluster.kind == "pd" and not cluster.by_role("decode"):
            problems.add(f"clusters[{ci}].instances", "a pd cluster needs a decode instance")
        if cluster.kind != "prfaas":
            continue
        for ii, instance in enumerate(cluster.instances):
            if instance.role == "decode":
                problems.add(
                    f"clusters[{ci}].instances[{ii}].role",
                    "a prfaas cluster only prefills; decode instances belong in a pd cluster",
                )
    if clusters and not any(c.kind == "pd" for c in clusters):
        problems.add("clusters", "no cluster of kind 'pd': a topology needs one to decode")


def _check_links(problems: Problems, clusters: Sequence[ClusterConfig]) -> None:
    """A `[clusters.link]` is one provider's own link to the PD cluster: a pd cluster has none,
    and the one prfaas cluster of a topology with a single provider uses the top-level `[link]`."""
    num_providers = sum(c.kind == "prfaas" for c in clusters)
    for ci, cluster in enumerate(clusters):
        if cluster.link is None:
            continue
        if cluster.kind == "pd":
            problems.add(
                f"clusters[{ci}].link",
                f"pd cluster {cluster.name!r} has no link of its own: the prfaas clusters' links "
                "lead to it",
            )
        elif num_providers == 1:
            problems.add(
                f"clusters[{ci}].link",
                f"cluster {cluster.name!r} is the only prfaas cluster: write its link as the "
                "top-level [link] ([clusters.link] is for several providers)",
            )


def _check_providers(
    problems: Problems,
    policy: PolicyConfig,
    controller: ControllerSettings,
    clusters: Sequence[ClusterConfig],
    is_auto_threshold: bool,
) -> None:
    """Several prfaas clusters (providers): the router sends each long request to the cheapest
    provider that meets `[policy] ttft_target_s` (`prfaas.policy.providers`), so every cluster
    needs a price and the policy a target; Eq. 7 ("auto") and the controller model one
    provider and one link, so the threshold is a number and there is no `[controller]`."""
    num_providers = sum(c.kind == "prfaas" for c in clusters)
    if num_providers < 2:
        return
    why = f"with {num_providers} prfaas clusters (providers)"
    for ci, cluster in enumerate(clusters):
        if cluster.price_per_gpu_hour is None:
            problems.add(
                f"clusters[{ci}].price_per_gpu_hour",
                f"missing: {why}, cluster {cluster.name!r} needs a price (the router picks the "
                "cheapest provider that meets the TTFT target, else local prefill)",
            )
    if policy.ttft_target_s is None:
        problems.add(
            "policy.ttft_target_s",
            f"missing: {why}, each long request goes to the cheapest provider whose predicted "
            "TTFT meets this target",
        )
    if is_auto_threshold:
        problems.add(
            "policy.threshold",
            f'"auto" (Eq. 7) models one prfaas cluster and one link: {why}, give a number of '
            "tokens",
        )
    if policy.deployment != DeploymentKind.PRFAAS:
        problems.add(
            "policy.deployment",
            f"{why}, the deployment is 'prfaas', not {policy.deployment!r}",
        )
    if controller.enabled:
        problems.add(
            "controller",
            f"the controller adapts one prfaas cluster and one link: {why}, leave [controller] out",
        )


def _check_deployment(
    problems: Problems, policy: PolicyConfig, clusters: Sequence[ClusterConfig]
) -> None:
    """PrfaaS and naive deployments prefill remotely; homogeneous prefills on PD."""
    kind = policy.deployment
    needs_prfaas = kind in (DeploymentKind.PRFAAS, DeploymentKind.NAIVE)
    if needs_prfaas and not any(c.kind == "prfaas" for c in clusters):
        problems.add("policy.deployment", f"deployment {kind!r} needs a cluster of kind 'prfaas'")
    pd_prefill = [i for c in clusters if c.kind == "pd" for i in c.by_role("prefill")]
    if kind == DeploymentKind.HOMOGENEOUS and not pd_prefill:
        problems.add(
            "policy.deployment", f"deployment {kind!r} needs a prefill instance in a pd cluster"
        )


def _check_controller(
    problems: Problems,
    controller: ControllerSettings,
    policy: PolicyConfig,
    clusters: Sequence[ClusterConfig],
) -> None:
    """The controller converts PD instances: each needs a KV receiver; it adapts PrfaaS-PD only."""
    if not controller.enabled:
        return
    if policy.deployment != DeploymentKind.PRFAAS:
        problems.add("controller", f"only a 'prfaas' deployment adapts, not {policy.deployment!r}")
    for key, instance in _instance_keys(clusters):
        cluster = next(c for c in clusters if c.name == instance.cluster)
        if cluster.kind == "pd" and instance.kv is None:
            problems.add(
                f"{key}.kv", "with [controller], every PD instance needs kv (it may change role)"
            )


def _check_vllm(
    problems: Problems,
    controller: ControllerSettings,
    clusters: Sequence[ClusterConfig],
    has_prefix_cache: bool,
) -> None:
    """vLLM instances talk to vLLM instances only (their KV goes through vLLM's connector); the
    controller's role changes and the router's prefix index drive PrfaaS instances, not vLLM
    servers (vLLM keeps its own prefix cache)."""
    engines = {i.engine == "vllm" for _, i in _instance_keys(clusters)}
    if engines == {True, False}:
        problems.add("clusters", 'engine = "vllm" needs every instance of the topology on vLLM')
    if True in engines and controller.enabled:
        problems.add("controller", 'the controller does not drive engine = "vllm" instances yet')
    if True in engines and has_prefix_cache:
        problems.add("prefix_cache", 'engine = "vllm" instances keep vLLM\'s own prefix cache')
