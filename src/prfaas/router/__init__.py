"""The router (`prfaas router`): the deployment's OpenAI-compatible front door.

    app.py            the FastAPI app: routes, streaming relay, lifespan
    openai_api.py     request schemas and response bodies of the OpenAI API
    intake.py         API key, body checks, tokenizing, max_tokens bounds -> GenerateRequest
    dispatch.py       the policy's decision -> the instances; drives the prefill and decode jobs
    decision.py       one request's routing decision (frozen) and its trace (outcome, timings)
    monitor.py        the instances' polled stats and state; ClusterView / LinkView for the policy
    prefix_index.py   the global KV index: which instance caches which prefix (KV events)
    poller.py         the one polling loop: each instance's stats, then its KV events
    metrics.py        Prometheus metrics, named like vLLM's
    control_loop.py   the long-timescale controller fed with live measurements
    control_routes.py `/internal/control*`: the controller's state, ticks and link changes

No routing decision is made here: `prfaas.policy` makes them, the same code the simulator runs.
The router and the instances never import each other; they share only `prfaas.messages`, the
wire contract. May import `prfaas.service`, `prfaas.topology` and everything below them.
"""
