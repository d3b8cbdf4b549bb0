"""The vLLM v1 KV connector: PrfaaS's transport between a vLLM prefill instance and a vLLM decode
instance (docs/vllm.md). The only package that imports vLLM; it runs in the vLLM environment
(`make vllm-env`), loaded by vLLM through `kv_connector_module_path = "prfaas.vllm.connector"`.

    params.py     the kv_transfer_params a router passes and gets back (standard library only)
    identity.py   the model's identity hash that manifests carry and consumers check
    blocks.py     which blocks carry a request's state; gather and scatter by block id
    worker.py     the worker side: KVSender / KVReceiver on a loop thread, sends and loads
    connector.py  PrfaasConnector (KVConnectorBase_V1 + SupportsHMA), the scheduler side

Nothing is imported here, so importing the package does not load vLLM.
"""
