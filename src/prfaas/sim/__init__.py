"""Discrete-event simulator of PrfaaS deployments; routes with the real prfaas.policy code."""
