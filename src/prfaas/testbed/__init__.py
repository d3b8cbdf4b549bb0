"""The two-datacenter testbed: network namespaces joined by a shaped "WAN" veth, a deployment
launched inside them, and live link changes.

    layout.py   the pure plan: names, addresses, scaling, the topology it runs
    netns.py    kernel-shaped links between namespaces (veth + tc tbf), root only
    run.py      the I/O: namespaces and link, the supervisor of its services, its state file

Sits above `prfaas.launch` (it launches a deployment); below the benchmarks.
"""
