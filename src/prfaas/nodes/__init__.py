"""The live services: thin glue between HTTP, the engine, the KV transport and the policy.

    topology.py       the topology file (TOML) -> frozen configs; topology_table.py reads typed
                      keys, topology_check.py is the schema and its cross-checks
    launcher.py       serve_instance / serve_router (one plain function per process), `prfaas up`
    router.py         OpenAI-compatible front door: route, relay tokens, metrics, the app
    intake.py         API key, body validation, tokenizing, max_tokens bounds -> GenerateRequest
    openai_api.py     request schemas and response bodies of the OpenAI API
    text.py           tokenizer and chat template on the router; incremental detokenization, stops
    dispatch.py       policy decision -> instances; drives the decode and prefill jobs
    monitor.py        polls instances' stats; ClusterView / LinkView for the policy
    prefill.py        prefill instance: FCFS jobs, layer-by-layer KV streaming to a decode instance
    decode.py         decode instance: KV receiver, import, continuous batch, failure policy
    worker.py         the engine thread every instance runs its engine on
    engines.py        engine construction (torch or emulated), prefill-rate estimates
    http.py, limits.py, router_metrics.py   uvicorn, errors, body limits, Prometheus metrics
    auth.py           the deployment token required on the instances' /internal/* APIs

No routing decision is made here: `prfaas.policy` makes them, the same code the simulator runs.
"""
