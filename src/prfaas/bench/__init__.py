"""Benchmarks of the live system and of its transport.

    schedule.py       `prfaas bench system`'s seeded open-loop schedule (pure)
    loadgen.py        the runner that replays a schedule against a router (streamed requests,
                      egress sampling, timed actions)
    outcome.py        one request's result, read from its event stream (sans I/O)
    system.py         which deployment a system benchmark serves, and the run itself
    report.py         the live numbers against the simulator and the planner
    testbed_link.py   a running testbed's link: its egress counter, link drops replayed
    transport.py      `prfaas bench transport`: the project's transport against a raw socket
    shaper.py         an in-process shaped link (rate, latency, jitter, stalls) for tests

The top of the service stack below the CLI: may import every package but the CLI.
"""
