"""Router, prefill and decode services: thin glue around policy, engine and transport."""
