"""Starting a deployment: one process per service on this machine, or Ray actors across many.

    local.py          serve_instance / serve_router, and `prfaas up`'s child-process launcher
    ray_launcher.py   `prfaas up --ray` (the only module that imports Ray)
    ray_placement.py  placing a topology on Ray without Ray: resources, actors, checks
    status.py         `prfaas status`: instances, nodes, health, queues and links

Sits above the router and the instances (it starts them); below the testbed and benchmarks.
"""
