"""The two-datacenter testbed: network namespaces joined by a shaped "WAN" with a delay line, a
deployment launched inside them, and live link changes.

    layout.py          the pure plan: names, addresses, scaling, the topology it runs
    netns.py           kernel-shaped links between namespaces (veth, TUN, tc tbf), root only
    state.py           the run directory, its state file and the records of started processes
    network.py         the namespaces, the veth links, the WAN namespace routed through the
                       delay line's TUN, the WAN's tbf; new settings told to the delay line and
                       a new rate to the router
    delay_schedule.py  pure: the delay line's settings, hold times, no-reorder rule, loss, queue
    delayline.py       the delay line's process (TUN, heap of release times, control socket)
    probe.py           ICMP round trips and a TCP goodput loop across the WAN
    supervisor.py      the process that runs the services in their namespaces; stopping them
    run.py             the commands: up, down, status, change_link

Sits above `prfaas.launch` (it launches a deployment); below the benchmarks.
"""
