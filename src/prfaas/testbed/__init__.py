"""The two-datacenter testbed: network namespaces joined by a shaped "WAN" veth, a deployment
launched inside them, and live link changes.

    layout.py       the pure plan: names, addresses, scaling, the topology it runs
    netns.py        kernel-shaped links between namespaces (veth + tc tbf), root only
    state.py        the run directory, its state file and the records of started processes
    network.py      the namespaces, the veth links, the WAN's tbf; a new rate told to the router
    supervisor.py   the process that runs the services in their namespaces; stopping them
    run.py          the commands: up, down, status, change_link

Sits above `prfaas.launch` (it launches a deployment); below the benchmarks.
"""
