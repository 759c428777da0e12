"""The machinery around BentoML: connection deadlines and caps, the request guard, the lean
prediction route, the batching cap and bounded request metrics. service.py wires them in."""
