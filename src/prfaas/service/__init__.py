"""What every HTTP service shares (the router and the instances alike).

    http.py     running an app under uvicorn with the request limits; error bodies; JSON posts
    limits.py   request limits: body size, slow clients, concurrency per key
    auth.py     the deployment token on the instances' `/internal/*` APIs
    text.py     tokenizer and chat template; incremental detokenization; stop strings

May import `prfaas.topology` and everything below it; never the router, an instance, a
launcher, the testbed or the benchmarks.
"""
