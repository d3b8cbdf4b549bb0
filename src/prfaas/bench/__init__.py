"""Benchmarks of the live system and of its transport.

    loadgen.py        `prfaas bench system`'s seeded open-loop schedule and its I/O runner
    system.py         which deployment a system benchmark serves, and the run itself
    report.py         the live numbers against the simulator and the planner
    testbed_link.py   a running testbed's link: its egress counter, link drops replayed
    transport.py      `prfaas bench transport`: the project's transport against a raw socket
    shaper.py         an in-process shaped link (rate, latency, jitter, stalls) for tests

The top of the service stack below the CLI: may import every package but the CLI.
"""
