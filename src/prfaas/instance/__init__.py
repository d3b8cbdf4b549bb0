"""The instances: a prefill instance, a decode instance and the convertible PD instance, each an
HTTP service around one engine.

    prefill.py          FCFS prefill jobs; layer-by-layer KV streaming to a decode instance
    decode.py           KV receiver, import, continuous decode batch, the failure policy
    pd.py               one engine that serves as PD prefill or PD decode and changes role
    service_base.py     what every role's service and app share (engine thread, metrics, app)
    worker.py           the engine thread (the event loop never touches the engine)
    engines.py          building the engine (torch or emulated) from the topology; rates
    kv_events.py        prefix-cache events for the router's global KV index
    prefix_transfer.py  moving a cached prefix between instances (holder sends, receiver imports)

Every service holds its engine as a `prfaas.engine.protocol.ServingEngine`. The instances never
import the router (they share only `prfaas.messages`). May import
`prfaas.service`, `prfaas.topology`, the engine, the transport and everything below them.
"""
